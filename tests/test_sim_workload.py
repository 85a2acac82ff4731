"""Workloads: the synthetic generator's options, the JSON/YAML workload file and its errors, SWF traces."""

from __future__ import annotations

import itertools
import json
import math
import statistics
from pathlib import Path

import pytest

from farmhand.core.frames import block_task_count
from farmhand.sim.workload import (
    GeneratorOptions,
    WorkloadError,
    generate,
    load_workload_file,
    parse_swf,
    read_swf,
    swf_machine_size,
)

# ------------------------------------------------------------------------------------------------ synthetic


def test_generator_shapes_jobs_tasks_blocks_users() -> None:
    wl = generate(GeneratorOptions(jobs=30, tasks=10, blocks=3, users=4, renders=7), seed=5)
    assert len(wl.jobs) == 30
    assert wl.renders is not None and len(wl.renders) == 7
    for job in wl.jobs:
        sizes = [block_task_count(b) for b in job.spec.blocks]
        assert sizes == [4, 3, 3]
        assert job.spec.user in {f"user0{i}" for i in range(4)}
        assert 0 <= job.spec.priority <= 199
        assert [len(d) if isinstance(d, tuple) else d for d in job.durations] == sizes
    assert wl.task_count() == 300
    assert wl.scenario["source"] == "synthetic" and wl.scenario["jobs"] == 30


def test_generator_is_deterministic_per_seed() -> None:
    a = generate(GeneratorOptions(jobs=20, tasks=5), seed=1)
    b = generate(GeneratorOptions(jobs=20, tasks=5), seed=1)
    c = generate(GeneratorOptions(jobs=20, tasks=5), seed=2)
    assert a.jobs == b.jobs and a.renders == b.renders
    assert a.jobs != c.jobs


def test_arrivals_all_poisson_burst() -> None:
    all_at_once = generate(GeneratorOptions(jobs=10, tasks=1, arrival="all"), seed=1)
    assert {j.submit_at for j in all_at_once.jobs} == {0.0}
    burst = generate(GeneratorOptions(jobs=10, tasks=1, arrival="burst", burst_size=4, burst_every=100.0), seed=1)
    assert [j.submit_at for j in burst.jobs] == [0.0] * 4 + [100.0] * 4 + [200.0] * 2
    poisson = generate(GeneratorOptions(jobs=4000, tasks=1, arrival="poisson", rate=2.0), seed=1)
    times = [j.submit_at for j in poisson.jobs]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert times == sorted(times) and times[0] == 0.0
    assert statistics.fmean(gaps) == pytest.approx(0.5, rel=0.06)
    assert statistics.stdev(gaps) == pytest.approx(0.5, rel=0.08)  # exponential: sd = mean


def test_rate_derived_from_load() -> None:
    options = GeneratorOptions(jobs=10, tasks=10, renders=50, mean=(60.0,), load=0.5)
    # 50 slots at speed 1 offer 50 capacity-s/s; a job brings 10 x 60 capacity-s
    assert options.arrival_rate() == pytest.approx(0.5 * 50 / 600)


def test_duration_kinds_per_block() -> None:
    wl = generate(
        GeneratorOptions(jobs=200, tasks=30, blocks=3, duration=("fixed", "exp", "lognormal"),
                         mean=(10.0, 20.0, 30.0), sigma=(0.0, 0.0, 0.8)),
        seed=3,
    )
    fixed = {j.durations[0] for j in wl.jobs}
    assert fixed == {10.0}
    exp = [d for j in wl.jobs for d in j.durations[1]]
    logn = [d for j in wl.jobs for d in j.durations[2]]
    assert statistics.fmean(exp) == pytest.approx(20.0, rel=0.05)
    assert statistics.stdev(exp) == pytest.approx(20.0, rel=0.08)
    assert statistics.fmean(logn) == pytest.approx(30.0, rel=0.05)
    assert statistics.stdev([math.log(d) for d in logn]) == pytest.approx(0.8, rel=0.05)


def test_dependency_shapes() -> None:
    chain = generate(GeneratorOptions(jobs=1, tasks=9, blocks=3, deps="chain"), seed=1).jobs[0].spec
    assert [b.depends_on for b in chain.blocks] == [(), ("b0",), ("b1",)]
    frames = generate(GeneratorOptions(jobs=1, tasks=9, blocks=3, deps="frames"), seed=1).jobs[0].spec
    assert [b.depends_on_frames for b in frames.blocks] == [(), ("b0",), ("b1",)]
    none = generate(GeneratorOptions(jobs=1, tasks=9, blocks=3), seed=1).jobs[0].spec
    assert all(not b.depends_on and not b.depends_on_frames for b in none.blocks)


def test_tag_and_capacity_mixes_and_speeds() -> None:
    wl = generate(
        GeneratorOptions(jobs=400, tasks=2, renders=40, tags=(("gpu", 0.25, 0.1),), capacity=((1, 3.0), (4, 1.0)),
                         speeds=((1.0, 1.0), (2.0, 1.0))),
        seed=4,
    )
    assert wl.renders is not None
    assert sum(1 for r in wl.renders if "gpu" in r.tags) == 10
    assert {r.capacity for r in wl.renders} == {4}  # the largest capacity a task takes
    assert {r.speed for r in wl.renders} == {1.0, 2.0}
    needing = sum(1 for j in wl.jobs if "gpu" in j.spec.tags)
    assert 20 <= needing <= 65
    caps = [b.capacity for j in wl.jobs for b in j.spec.blocks]
    assert set(caps) == {1, 4}
    assert 0.65 <= caps.count(1) / len(caps) <= 0.85


def test_user_priorities_and_weights() -> None:
    wl = generate(GeneratorOptions(jobs=5, tasks=1, users=3, user_priorities=(10, 200), user_weights=(1.0, 3.0)),
                  seed=1)
    assert {u: (s.priority, s.weight) for u, s in wl.users.items()} == {
        "user00": (10, 1.0), "user01": (200, 3.0), "user02": (10, 1.0)
    }


def test_generator_option_problems_are_listed_together() -> None:
    with pytest.raises(WorkloadError) as err:
        generate(GeneratorOptions(jobs=0, tasks=2, blocks=3, arrival="sometimes", duration=("weird",),
                                  capacity=((2, 1.0),), render_capacity=1, tags=(("gpu", 0.0, 0.5),)))
    text = "\n".join(err.value.problems)
    for expected in ("--jobs", "--blocks", "--arrival", "--duration", "--render-capacity", "--tags"):
        assert expected in text


# ------------------------------------------------------------------------------------------------ workload file


def _job(name: str = "j", frames: int = 3, **extra: object) -> dict[str, object]:
    return {"name": name, "blocks": [{"name": "r", "command": "x {frame}", "frames": {"first": 1, "last": frames}}],
            **extra}


def write(tmp_path: Path, data: object, name: str = "wl.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data) if name.endswith(".json") else str(data))
    return path


def test_workload_file_json(tmp_path: Path) -> None:
    path = write(tmp_path, {
        "renders": [{"name": "a", "tags": ["gpu"], "capacity": 2, "max_tasks": 2, "memory_mb": 10, "speed": 2.0}],
        "users": {"ann": {"priority": 120, "weight": 2}},
        "jobs": [
            {"submit_at": 5, "job": _job("one", user="ann"), "durations": {"r": 10}},
            {"job": _job("two", frames=2), "durations": {"r": [1, 2.5]}},
        ],
    })
    wl = load_workload_file(path)
    assert [j.submit_at for j in wl.jobs] == [5.0, 0.0]
    assert wl.jobs[0].durations == (10.0,)
    assert wl.jobs[1].durations == ((1.0, 2.5),)
    assert wl.renders is not None and wl.renders[0].speed == 2.0 and wl.renders[0].tags == frozenset({"gpu"})
    assert wl.users["ann"].priority == 120 and wl.users["ann"].weight == 2.0
    assert wl.scenario == {"source": "workload", "file": str(path)}


def test_workload_file_yaml(tmp_path: Path) -> None:
    path = tmp_path / "wl.yaml"
    path.write_text(
        "jobs:\n"
        "  - submit_at: 1.5\n"
        "    job:\n"
        "      name: y\n"
        "      blocks:\n"
        "        - {name: r, command: 'x', frames: {first: 1, last: 2}}\n"
        "    durations: {r: 4}\n"
    )
    wl = load_workload_file(path)
    assert wl.renders is None
    assert wl.jobs[0].submit_at == 1.5 and wl.jobs[0].durations == (4.0,)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"jobs": []}, "jobs: must have at least one job"),
        ({}, "jobs: is required"),
        ({"jobs": [], "extra": 1}, "extra: unknown key"),
        ({"jobs": [{"job": _job(), "durations": {}}]}, "jobs[0].durations.r: is required"),
        ({"jobs": [{"job": _job(), "durations": {"r": [1, 2]}}]},
         "jobs[0].durations.r: must have one duration per task: 3 (got 2)"),
        ({"jobs": [{"job": _job(), "durations": {"r": 1, "zz": 2}}]}, "jobs[0].durations.zz: no block 'zz'"),
        ({"jobs": [{"job": _job(), "durations": {"r": -1}}]}, "jobs[0].durations.r: must be >= 0"),
        ({"jobs": [{"job": _job(), "durations": {"r": [1, "x", 2]}}]}, "jobs[0].durations.r[1]: must be a number"),
        ({"jobs": [{"submit_at": -3, "job": _job(), "durations": {"r": 1}}]},
         "jobs[0].submit_at: must be a number >= 0"),
        ({"jobs": [{"job": _job(), "durations": {"r": 1}, "when": 3}]}, "jobs[0].when: unknown key"),
        ({"jobs": [{"durations": {"r": 1}}]}, "jobs[0].job: is required"),
        ({"jobs": [{"job": {"name": "j", "blocks": [{"name": "r", "command": "x",
                                                      "frames": {"first": 5, "last": 1}}]}, "durations": {"r": 1}}]},
         "jobs[0].job: blocks[0].frames.last: must be >= first"),
        ({"jobs": [{"job": _job(depends_on_jobs=[2]), "durations": {"r": 1}}]},
         "jobs[0].job.depends_on_jobs[0]: no job with id 2"),
        ({"renders": [{"name": "a", "capacity": 0}], "jobs": [{"job": _job(), "durations": {"r": 1}}]},
         "renders[0].capacity: must be an integer >= 1"),
        ({"renders": [{"name": "a", "speed": 0}], "jobs": [{"job": _job(), "durations": {"r": 1}}]},
         "renders[0].speed: must be a number > 0"),
        ({"renders": [{"name": "a"}, {"name": "a"}], "jobs": [{"job": _job(), "durations": {"r": 1}}]},
         "renders[1].name: must be unique"),
        ({"renders": [{"name": "a"}], "jobs": [{"job": _job(tags=["gpu"]), "durations": {"r": 1}}]},
         "jobs[0].job.blocks[0]: no render can run it"),
        ({"users": {"ann": {"priority": 300}}, "jobs": [{"job": _job(), "durations": {"r": 1}}]},
         "users.ann.priority: must be an integer 0-255"),
    ],
)
def test_workload_file_errors_name_file_and_field(tmp_path: Path, data: object, expected: str) -> None:
    path = write(tmp_path, data)
    with pytest.raises(WorkloadError) as err:
        load_workload_file(path)
    assert any(line.startswith(f"{path}: ") and expected in line for line in err.value.problems), err.value.problems


def test_a_users_bad_priority_and_bad_weight_are_both_reported(tmp_path: Path) -> None:
    path = write(tmp_path, {"users": {"ann": {"priority": 300, "weight": -1}},
                            "jobs": [{"job": _job(), "durations": {"r": 1}}]})
    with pytest.raises(WorkloadError) as err:
        load_workload_file(path)
    assert [line.split(": ", 2)[1] for line in err.value.problems] == ["users.ann.priority", "users.ann.weight"]


def test_workload_file_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"jobs": [\n  {"job": 1,}\n]}')
    with pytest.raises(WorkloadError) as err:
        load_workload_file(path)
    assert err.value.problems[0].startswith(f"{path}:2:")
    missing = tmp_path / "missing.yaml"
    with pytest.raises(WorkloadError, match="cannot read"):
        load_workload_file(missing)


# ------------------------------------------------------------------------------------------------ SWF

SWF = """\
; Version: 2.2
; Computer: a test machine
; MaxJobs: 5
; MaxProcs: 64
;
; comment lines are ignored
1    0  10  100  8  -1 -1  8  200 -1 1  3 1 1 1 1 -1 -1
2    5   0   50 -1  -1 -1 16  100 -1 1  4 1 1 1 1 -1 -1

3   20   0   30  4  -1 -1  4  100 -1 5  3 1 1 1 1 -1 -1
4   30   0   -1  4  -1 -1  4  100 -1 5  3 1 1 1 1 -1 -1
5   40   0   -1  4  -1 -1  4  100 -1 1  3 1 1 1 1 -1 -1
6   50   0   60 -1  -1 -1 -1  100 -1 0 -1 1 1 1 1 -1 -1
"""


def test_swf_rows_become_one_task_jobs() -> None:
    wl = parse_swf(SWF.splitlines(), where="t.swf")
    assert [j.spec.name for j in wl.jobs] == ["swf1", "swf2"]
    one, two = wl.jobs
    assert (one.submit_at, one.durations, one.spec.blocks[0].capacity, one.spec.user) == (0.0, (100.0,), 8, "user3")
    # allocated processors unknown: the requested ones
    assert (two.submit_at, two.durations, two.spec.blocks[0].capacity, two.spec.user) == (5.0, (50.0,), 16, "user4")
    assert all(j.task_count() == 1 for j in wl.jobs)
    assert wl.scenario["header"]["MaxProcs"] == "64"
    assert swf_machine_size(wl) == 64
    assert wl.scenario["rows_skipped_cancelled_or_failed"] == 3
    assert wl.scenario["rows_skipped_unknown_run_time"] == 1


def test_swf_cancelled_rows_can_be_kept() -> None:
    wl = parse_swf(SWF.splitlines(), where="t.swf", cancelled="keep")
    names = [j.spec.name for j in wl.jobs]
    assert names == ["swf1", "swf2", "swf3", "swf4", "swf6"]
    by_name = {j.spec.name: j for j in wl.jobs}
    assert by_name["swf3"].durations == (30.0,)
    assert by_name["swf4"].durations == (0.0,)  # cancelled before it ran: no time
    assert by_name["swf6"].spec.blocks[0].capacity == 1  # no processor count at all
    assert by_name["swf6"].spec.user == "unknown"
    assert wl.scenario["rows_skipped_unknown_run_time"] == 1  # swf5: completed, run time unknown


def test_swf_malformed_lines_are_reported_with_their_numbers(tmp_path: Path) -> None:
    text = SWF + "7 60 0 10 1\n8 70 0 ten 1 -1 -1 1 1 -1 1 1 1 1 1 1 -1 -1\n9 -5 0 1 1 -1 -1 1 1 -1 1 1 1 1 1 1 -1 -1\n"
    text += "10 80 0 1 0.5 -1 -1 1 1 -1 1 1 1 1 1 1 -1 -1\n11 90 0 1 -1 -1 -1 2.5 1 -1 1 1 1 1 1 1 -1 -1\n"
    path = tmp_path / "bad.swf"
    path.write_text(text)
    with pytest.raises(WorkloadError) as err:
        read_swf(path)
    assert err.value.problems == [
        f"{path}:14: expected 18 fields, got 5",
        f"{path}:15: field 4 (run time): not a number (got 'ten')",
        f"{path}:16: field 2 (submit time): must be >= 0 (got -5)",
        # a fraction of a processor would become a task of capacity 0 (or a silently rounded one)
        f"{path}:17: field 5 (allocated processors): must be a whole number of processors (got 0.5)",
        f"{path}:18: field 8 (requested processors): must be a whole number of processors (got 2.5)",
    ]


def test_swf_bad_option_and_empty_trace(tmp_path: Path) -> None:
    path = tmp_path / "t.swf"
    path.write_text("; only a header\n")
    with pytest.raises(WorkloadError, match="no replayable job rows"):
        read_swf(path)
    with pytest.raises(WorkloadError, match="--swf-cancelled"):
        read_swf(path, cancelled="maybe")


def test_swf_max_jobs_takes_the_first_by_submission() -> None:
    wl = parse_swf(SWF.splitlines(), cancelled="keep", max_jobs=2)
    assert [j.spec.name for j in wl.jobs] == ["swf1", "swf2"]
