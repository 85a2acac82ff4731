"""A mutation check of the scheduling core: do the tests catch what they claim?

Each mutation below is a precise text replacement in one file of ``core/`` (it must apply exactly once), a
deliberate, plausible bug: a capacity off by one, a dependency released early, a report from the wrong render
trusted, a policy reversed. For each, the script builds a copy of the package in a temporary directory (never
touching this tree), applies the mutation, and runs the tests meant to catch it with ``pytest -x``. It prints a
table (mutation, the first test that failed, or SURVIVED) and exits 1 if any mutation survives.

Run it before resolving an issue that touches ``core/`` (it is not part of the default CI run)::

    .venv/bin/python tools/mutants.py            # every mutation, two at a time
    .venv/bin/python tools/mutants.py fairshare  # only those whose name contains "fairshare"
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: the subpackages pyproject's package-dir maps into ``farmhand`` (``farmhand.core`` is ``core/``, ...)
SUBPACKAGES = ("core", "actors", "transport", "sim", "workers")
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis", ".pytest_cache")

PROPERTY = "tests/property/test_scheduling_properties.py"
SOLVER = "tests/test_solver.py"
POLICIES = "tests/test_policies.py"
STARVATION = "tests/test_starvation.py"
JOB = "tests/test_job.py"
RESTORE = "tests/test_job_restore.py"
REGISTRY = "tests/test_registry.py"
UNIT = (SOLVER, POLICIES, STARVATION, JOB, RESTORE, REGISTRY)


@dataclass(frozen=True)
class Mutation:
    """One deliberate bug: replace ``old`` (found exactly once in ``path``) with ``new``; ``tests`` must fail."""

    name: str
    path: str
    old: str
    new: str
    tests: Sequence[str] = (*UNIT, PROPERTY)


MUTATIONS: tuple[Mutation, ...] = (
    # ------------------------------------------------------------------ the solver: capacity, memory, the ledger
    Mutation(
        "first-eligible-capacity-off-by-one", "core/solver.py",
        "if needs.capacity > free_cap or needs.memory_mb > free_mem:",
        "if needs.capacity > free_cap + 1 or needs.memory_mb > free_mem:",
        (PROPERTY,),
    ),
    Mutation(
        "first-eligible-memory-slack", "core/solver.py",
        "or needs.memory_mb > free_mem:\n                    if self.reserve_after_s",
        "or needs.memory_mb > free_mem + 500:\n                    if self.reserve_after_s",
    ),
    Mutation(
        "release-forgets-memory", "core/solver.py",
        "render.free_mem += memory\n        render.free_tasks += 1\n        render.runs.discard(run_id)",
        "render.free_tasks += 1\n        render.runs.discard(run_id)",
    ),
    Mutation(
        "release-forgets-task-slot", "core/solver.py",
        "render.free_tasks += 1\n        render.runs.discard(run_id)",
        "render.runs.discard(run_id)",
    ),
    Mutation(
        "declined-dispatch-keeps-capacity", "core/solver.py",
        "render = self._release(msg.reply_to, ctx.now)",
        "render = self.renders.get(msg.render)",
    ),
    Mutation(
        "offline-render-keeps-its-runs", "core/solver.py",
        "for run_id in self.runs_on(render):\n            self._release(run_id, ctx.now)\n        del self.renders",
        "del self.renders",
    ),
    Mutation(
        "dispatch-keeps-exhausted-entry-indexed", "core/solver.py",
        "if entry.ready - (entry.sent - entry.handled) <= 0:",
        "if entry.ready - (entry.sent - entry.handled) < 0:",
    ),
    # ------------------------------------------------------------------ the solver: caps, tags, masks, avoidance
    Mutation(
        "per-render-block-cap-off-by-one", "core/solver.py",
        ") >= needs.max_per_render:",
        ") > needs.max_per_render:",
    ),
    Mutation(
        "per-render-job-cap-off-by-one", "core/solver.py",
        "render.per_job.get(entry.job.job_id, 0) < job_cap",
        "render.per_job.get(entry.job.job_id, 0) <= job_cap",
    ),
    Mutation(
        "hosts-exclude-ignored", "core/solver.py",
        "host_allowed(render.name, needs.hosts_mask, needs.hosts_exclude)",
        "host_allowed(render.name, needs.hosts_mask, None)",
    ),
    Mutation(
        "tags-compared-by-count", "core/solver.py",
        "[ts for ts in self._tagsets if ts <= render.tags]",
        "[ts for ts in self._tagsets if len(ts) <= len(render.tags)]",
    ),
    Mutation(
        "avoid-render-forgotten", "core/solver.py",
        "entry.avoid.add(msg.render)",
        "entry.avoid.discard(msg.render)",
    ),
    # ------------------------------------------------------------------ the starvation guard
    Mutation(
        "guard-never-holds", "core/solver.py",
        "if self.reserve_after_s is not None and self._may_hold(entry, render):",
        "if False and self._may_hold(entry, render):",
    ),
    Mutation(
        "guard-holds-without-waiting", "core/solver.py",
        "return self._now - entry.blocked_since >= after and entry.holds < entry.effective_ready",
        "return entry.holds < entry.effective_ready",
    ),
    Mutation(
        "guard-holds-one-render-too-many", "core/solver.py",
        "return self._now - entry.blocked_since >= after and entry.holds < entry.effective_ready",
        "return self._now - entry.blocked_since >= after and entry.holds <= entry.effective_ready",
    ),
    # ------------------------------------------------------------------ the solver: the render a run belongs to
    Mutation(
        "claim-refused-frees-another-render", "core/solver.py",
        "if run is not None and run[0].name == msg.render:",
        "if run is not None:",
    ),
    Mutation(
        "contested-render-filled", "core/solver.py",
        "if not render.online or render.paused or render.contested:",
        "if not render.online or render.paused:",
    ),
    Mutation(
        "contest-settled-by-another-render", "core/solver.py",
        "if slot is None or (render_name is not None and slot.name != render_name):",
        "if slot is None:",
    ),
    # ------------------------------------------------------------------ the job: dependencies, caps, retries
    Mutation(
        "frame-dependencies-ignored-on-release", "core/job.py",
        "if task.state == WAITING and task.unmet == 0:",
        "if task.state == WAITING:",
    ),
    Mutation(
        "block-dependency-released-one-task-early", "core/job.py",
        "if block.unfinished == 0:\n            for d_index in block.down_blocks:\n                down = ",
        "if block.unfinished <= 1:\n            for d_index in block.down_blocks:\n                down = ",
    ),
    Mutation(
        "retries-one-short", "core/job.py",
        "if task.failures <= spec.retries:",
        "if task.failures < spec.retries:",
    ),
    Mutation(
        "job-running-cap-off-by-one", "core/job.py",
        "count = min(count, cap - self.running)",
        "count = min(count, cap + 1 - self.running)",
    ),
    Mutation(
        "block-running-cap-off-by-one", "core/job.py",
        "count = min(count, cap - block.running)",
        "count = min(count, cap + 1 - block.running)",
    ),
    Mutation(
        "needs-drop-tags", "core/job.py",
        "block.index, s.capacity, s.memory_mb, s.tags, s.hosts_mask",
        "block.index, s.capacity, s.memory_mb, frozenset(), s.hosts_mask",
    ),
    Mutation(
        "needs-drop-memory", "core/job.py",
        "block.index, s.capacity, s.memory_mb, s.tags, s.hosts_mask",
        "block.index, s.capacity, 0, s.tags, s.hosts_mask",
    ),
    Mutation(
        "depend-mask-ignores-user", "core/registry.py",
        "e.user == msg.user and not e.done and rx.fullmatch(e.name)",
        "not e.done and rx.fullmatch(e.name)",
    ),
    # ------------------------------------------------------------------ the job: stale reports, the render of a run
    Mutation(
        "finished-from-another-render-trusted", "core/job.py",
        "if live.render != msg.render:  # a report from a render the run is not on",
        "if False:  # a report from a render the run is not on",
    ),
    Mutation(
        "lost-from-another-render-trusted", "core/job.py",
        "if live is None or live.render != msg.render:  # a render that never held the run cannot lose it",
        "if live is None:  # a render that never held the run cannot lose it",
    ),
    Mutation(
        "reclaim-by-another-render-accepted", "core/job.py",
        "if live.render != msg.render:\n                # only the render the run was assigned to",
        "if False:\n                # only the render the run was assigned to",
    ),
    Mutation(
        "stale-run-lost-requeues-the-task", "core/job.py",
        "current = self._current(live.block, live.task, msg.run_id)\n"
        "        self._close_run(msg.run_id, \"lost\", ctx)",
        "current = (self.blocks[live.block], self.blocks[live.block].tasks[live.task])\n"
        "        self._close_run(msg.run_id, \"lost\", ctx)",
        (PROPERTY,),
    ),
    Mutation(
        "killed-run-late-done-recorded-done", "core/job.py",
        "if not current:\n            state = \"killed\"",
        "if False:\n            state = \"killed\"",
        (PROPERTY,),
    ),
    Mutation(
        "restore-forgets-frame-dependents", "core/job.py",
        "for d_index, j in block.frame_down.get(task.index, ()):\n            self.blocks[d_index].tasks[j].unmet -= 1",
        "for d_index, j in block.frame_down.get(task.index, ()):\n            pass",
    ),
    Mutation(
        "restore-done-as-skipped", "core/job.py",
        "DONE if snap.state == \"done\" else SKIPPED",
        "SKIPPED",
    ),
    # ------------------------------------------------------------------ policies
    Mutation(
        "fifo-reversed", "core/policies.py",
        "return (job.submit_time, job.seq)",
        "return (-job.submit_time, job.seq)",
        (PROPERTY,),
    ),
    Mutation(
        "priority-reversed", "core/policies.py",
        "oldest job\"\n\n    def job_key(self, job: JobView) -> tuple[Any, ...]:\n        return (-job.priority,",
        "oldest job\"\n\n    def job_key(self, job: JobView) -> tuple[Any, ...]:\n        return (job.priority,",
        (PROPERTY,),
    ),
    Mutation(
        "fairshare-counts-tasks-not-capacity", "core/policies.py",
        "math.pow(1.1, user.priority) / (user.running_capacity + 1)",
        "math.pow(1.1, user.priority) / (user.running_tasks + 1)",
        (POLICIES,),
    ),
    Mutation(
        "fairshare-ignores-user-priority", "core/policies.py",
        "math.pow(1.1, user.priority) / (user.running_capacity + 1)",
        "math.pow(1.1, 99) / (user.running_capacity + 1)",
        (PROPERTY,),
    ),
    Mutation(
        "weighted-reversed", "core/policies.py",
        "return (load, user.seq)",
        "return (-load, user.seq)",
        (PROPERTY,),
    ),
    Mutation(
        "weighted-usage-blind", "core/policies.py",
        "load = (user.running_capacity + self.usage_at(user, now) * self._rate) / weight",
        "load = user.running_capacity / weight",
        (PROPERTY,),
    ),
    Mutation(
        "weighted-weight-blind", "core/policies.py",
        "weight = user.weight if user.weight > 0 else 1e-9",
        "weight = 1.0",
        (PROPERTY,),
    ),
)


@dataclass
class Outcome:
    """What the tests made of one mutation."""

    mutation: Mutation
    caught_by: str | None
    seconds: float
    output: str = ""


def build_copy(dest: Path) -> None:
    """An importable copy of the project at ``dest``: ``dest/pkg/farmhand`` (with the subpackages pyproject maps
    into it), ``dest/tests`` and ``dest/pyproject.toml`` (pytest's settings)."""
    pkg = dest / "pkg" / "farmhand"
    shutil.copytree(ROOT / "farmhand", pkg, ignore=IGNORE)
    for name in SUBPACKAGES:
        shutil.copytree(ROOT / name, pkg / name, ignore=IGNORE)
    shutil.copytree(ROOT / "tests", dest / "tests", ignore=IGNORE)
    shutil.copy2(ROOT / "pyproject.toml", dest / "pyproject.toml")
    (dest / "tests" / "conftest.py").write_text(CONFTEST)


#: in the copy only: hypothesis reports the first failing example without shrinking it (a mutant needs no
#: minimal example, and shrinking can take minutes); the header names the farmhand a run imports
CONFTEST = """
import farmhand.core.job
from hypothesis import Phase, settings

settings.register_profile("mutants", phases=(Phase.explicit, Phase.reuse, Phase.generate))
settings.load_profile("mutants")


def pytest_report_header(config):
    return f"farmhand.core.job: {farmhand.core.job.__file__}"
"""


def source_path(copy: Path, path: str) -> Path:
    """Where ``path`` (as in this tree, e.g. ``core/job.py``) lives in a copy."""
    return copy / "pkg" / "farmhand" / path


def check_applies(mutation: Mutation) -> None:
    """The mutation's text occurs exactly once in this tree's file (else the list is stale)."""
    text = (ROOT / mutation.path).read_text()
    count = text.count(mutation.old)
    if count != 1:
        raise SystemExit(f"mutation {mutation.name}: its text occurs {count} times in {mutation.path}, not once")


def pytest_command(copy: Path, tests: Sequence[str]) -> list[str]:
    return [
        sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
        f"--rootdir={copy}", "-c", str(copy / "pyproject.toml"), *(str(copy / t) for t in tests),
    ]


def environment(copy: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(copy / "pkg")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def verify_copy_is_imported(copy: Path) -> str:
    """The copy's ``farmhand`` shadows the editable install: the file a run imports is in the copy."""
    out = subprocess.run(
        [sys.executable, "-c", "import farmhand.core.job as j; print(j.__file__)"],
        cwd=copy, env=environment(copy), capture_output=True, text=True, check=True,
    ).stdout.strip()
    if not Path(out).resolve().is_relative_to(copy.resolve()):
        raise SystemExit(f"the copy is not what runs import: farmhand.core.job is {out}")
    return out


FAILED = re.compile(r"^FAILED (\S+?)(?: - |$)", re.MULTILINE)


def run_one(mutation: Mutation, base: Path, work: Path) -> Outcome:
    copy = work / mutation.name
    shutil.copytree(base, copy)
    target = source_path(copy, mutation.path)
    target.write_text(target.read_text().replace(mutation.old, mutation.new, 1))
    started = time.monotonic()
    proc = subprocess.run(
        pytest_command(copy, mutation.tests), cwd=copy, env=environment(copy), capture_output=True, text=True,
    )
    seconds = time.monotonic() - started
    output = proc.stdout + proc.stderr
    shutil.rmtree(copy, ignore_errors=True)
    if proc.returncode == 0:
        return Outcome(mutation, None, seconds, output)
    found = FAILED.search(output)
    caught = found.group(1).split("::", 1)[-1] if found else f"pytest exit {proc.returncode}"
    if found is None and "error" in output.lower():
        caught = f"error (exit {proc.returncode})"
    return Outcome(mutation, caught, seconds, output)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("only", nargs="*", help="run only the mutations whose name contains one of these")
    parser.add_argument("-j", "--jobs", type=int, default=2, help="mutations run at once (at most 2)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the run of the tests on the unmutated copy")
    parser.add_argument("-v", "--verbose", action="store_true", help="show pytest's output for survivors")
    args = parser.parse_args(argv)
    names = [m.name for m in MUTATIONS]
    if len(names) != len(set(names)):
        raise SystemExit("two mutations share a name")
    for mutation in MUTATIONS:
        check_applies(mutation)
    chosen = [m for m in MUTATIONS if not args.only or any(word in m.name for word in args.only)]
    jobs = max(1, min(args.jobs, 2))
    with tempfile.TemporaryDirectory(prefix="farmhand-mutants-") as tmp:
        work = Path(tmp)
        base = work / "base"
        build_copy(base)
        print(f"runs import farmhand.core.job from {verify_copy_is_imported(base)}")
        if not args.no_baseline:
            tests = sorted({t for m in chosen for t in m.tests})
            proc = subprocess.run(pytest_command(base, tests), cwd=base, env=environment(base),
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stdout[-4000:] + proc.stderr[-2000:])
                raise SystemExit("the tests fail on the unmutated copy: fix that first")
            print(f"baseline: the tests pass on the unmutated copy ({len(tests)} files)")
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            outcomes = list(pool.map(lambda m: run_one(m, base, work), chosen))
    width = max(len(m.name) for m in chosen)
    print(f"\n{'mutation':<{width}}  {'seconds':>7}  caught by")
    for o in outcomes:
        print(f"{o.mutation.name:<{width}}  {o.seconds:7.1f}  {o.caught_by or 'SURVIVED'}")
    survivors = [o for o in outcomes if o.caught_by is None]
    if args.verbose:
        for o in survivors:
            print(f"\n--- {o.mutation.name}\n{o.output[-3000:]}")
    print(f"\n{len(outcomes) - len(survivors)} of {len(outcomes)} mutations caught")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
