"""The SQLite store: jobs committed before acceptance, farm events applied in order, restore, the run log export,
users with hashed tokens, and durability after ``kill -9`` of the writing process."""

from __future__ import annotations

import csv
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import msgspec
import pytest

from farmhand.actors.runtime import PykkaRuntime
from farmhand.core.messages import (
    AvoidRender,
    JobDetail,
    JobQuery,
    JobStateChanged,
    JobUpdated,
    RenderInfo,
    RenderOffline,
    RenderOnline,
    RunRecord,
    TaskChanged,
    TaskSnapshot,
)
from farmhand.core.policies import Fifo
from farmhand.core.records import CSV_COLUMNS
from farmhand.core.registry import Registry
from farmhand.core.runtime import EVENTS, REGISTRY, SOLVER
from farmhand.core.solver import Solver
from farmhand.core.spec import parse_job
from farmhand.output import write_tasks_csv
from farmhand.server import restore_jobs
from farmhand.store import Store, StoreError, hash_token


def spec(name: str = "shot", **extra: object):  # type: ignore[no-untyped-def]
    return parse_job({
        "name": name,
        "blocks": [
            {"name": "sim", "command": "sim {frame}", "frames": {"first": 1, "last": 3}},
            {"name": "render", "command": ["r", "{first}"], "frames": {"first": 1, "last": 3},
             "depends_on_frames": ["sim"]},
        ],
        **extra,
    })


def record(job_id: int, task: str, start: float, attempt: int = 1, state: str = "done") -> RunRecord:
    return RunRecord(0, job_id, "shot", "ann", "sim", task, task, "r1", attempt, state, 10.0, 11.0, start, start + 2.5)


def changed(job_id: int, block: int, task: int, state: str, **kw: object) -> TaskChanged:
    return TaskChanged(0, job_id, TaskSnapshot(block, task, state, **kw), 50.0)  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = Store(tmp_path / "db" / "farm.db")
    yield s
    s.close()


def test_a_job_is_committed_when_added(store: Store, tmp_path: Path) -> None:
    job_id = store.add_job(spec(), "ann", 123.5, 6)
    assert job_id == 1 and store.add_job(spec("two"), "bob", 124.0, 6) == 2
    other = sqlite3.connect(tmp_path / "db" / "farm.db")  # another connection sees it: committed
    assert other.execute("SELECT id, name, user, state, submit_time FROM jobs ORDER BY id").fetchall() == [
        (1, "shot", "ann", "active", 123.5), (2, "two", "bob", "active", 124.0),
    ]
    assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    other.close()


def test_events_are_applied_in_order_and_restored(store: Store) -> None:
    a = store.add_job(spec(priority=10), "ann", 100.0, 6)
    b = store.add_job(spec("gone"), "ann", 101.0, 6)
    c = store.add_job(spec("child", depends_on_jobs=[a, b]), "bob", 102.0, 6)
    for event in (
        changed(a, 0, 0, "running", attempt=1, run_id=900, render="r1", start_time=60.0),
        changed(a, 0, 0, "done", attempt=1, render="r1"),
        changed(a, 0, 1, "error", attempt=4, failures=4, render="r2"),
        changed(a, 0, 2, "running", attempt=2, failures=1, run_id=905, render="r3", start_time=70.0),
        changed(a, 1, 0, "skipped"),
        JobUpdated(0, a, 200, True),
        JobStateChanged(0, b, "deleted", 0, 0, 6),
        record(a, "1", 60.0),
    ):
        store.on_event(EVENTS, event)
    assert store.flush(5)
    jobs = {j.job_id: j for j in store.restorable_jobs()}
    assert sorted(jobs) == [a, c]  # the deleted job is not restored
    ra = jobs[a]
    assert (ra.user, ra.submit_time, ra.spec.priority, ra.spec.paused) == ("ann", 100.0, 200, True)
    assert ra.spec.blocks == spec().blocks
    assert [(t.block, t.task, t.state, t.attempt, t.failures, t.run_id, t.render) for t in ra.tasks] == [
        (0, 0, "done", 1, 0, 0, "r1"), (0, 1, "error", 4, 4, 0, "r2"), (0, 2, "running", 2, 1, 905, "r3"),
        (1, 0, "skipped", 0, 0, 0, ""),
    ]
    assert jobs[c].spec.depends_on_jobs == (a, b)  # as submitted: the registry releases it from deleted b
    assert store.max_run_id() == 905
    listed = {j.job_id: j for j in store.jobs()}
    assert sorted(listed) == [a, c]
    assert listed[a].counts == {"done": 1, "error": 1, "running": 1, "skipped": 1, "pending": 2}
    assert listed[a].paused and listed[a].priority == 200
    assert [j.job_id for j in store.jobs(user="bob")] == [c]


def test_reopening_keeps_everything_and_never_reuses_an_id(tmp_path: Path) -> None:
    path = tmp_path / "farm.db"
    with Store(path) as s:
        first = s.add_job(spec(), "ann", 1.0, 6)
        s.on_event(EVENTS, JobStateChanged(0, first, "deleted", 0, 0, 6))
        s.on_event(EVENTS, record(first, "1", 5.0))
        token = s.add_user("ann")
    with Store(path) as s:
        assert s.add_job(spec(), "ann", 2.0, 6) == first + 1
        assert len(s.runs()) == 1 and s.authenticate(token) is not None


def test_export_is_the_exact_tasks_csv(store: Store, tmp_path: Path) -> None:
    job = store.add_job(spec(), "ann", 10.0, 6)
    records = [record(job, "2", 30.0), record(job, "1", 20.0), record(job, "1", 25.0, attempt=2, state="error")]
    for r in records:
        store.on_event(EVENTS, r)
    store.flush()
    got = tmp_path / "got.csv"
    want = tmp_path / "want.csv"
    assert store.export_runs(got) == 3
    write_tasks_csv(want, records)
    assert got.read_text() == want.read_text()
    rows = list(csv.reader(got.open()))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [r[4] for r in rows[1:]] == ["1", "1", "2"]  # ordered by starting time
    assert rows[1][13:] == ["10.0", "9.0", "2.5", "12.5"]  # waiting, queue, execution, turnaround
    assert store.export_runs(tmp_path / "none.csv", job_ids=[99]) == 0


def test_users_tokens_are_hashed_and_checked(store: Store, tmp_path: Path) -> None:
    token = store.add_user("ann")
    admin_token = store.add_user("root", admin=True)
    assert len(token) >= 40 and token != admin_token
    assert store.authenticate(token) is not None and store.authenticate(token).user == "ann"  # type: ignore[union-attr]
    assert store.authenticate(admin_token).admin  # type: ignore[union-attr]
    assert store.authenticate("nope") is None and store.authenticate("") is None
    with pytest.raises(StoreError, match="exists"):
        store.add_user("ann")
    new = store.add_user("ann", replace=True)
    assert store.authenticate(token) is None and store.authenticate(new).user == "ann"  # type: ignore[union-attr]
    with pytest.raises(StoreError):
        store.add_user("two words")
    store.close()
    raw = b"".join(p.read_bytes() for p in (tmp_path / "db").iterdir())
    assert new.encode() not in raw and hash_token(new).encode() in raw
    with Store(tmp_path / "db" / "farm.db") as again:
        assert again.users() == [("ann", False), ("root", True)]


def test_renders_follow_their_events(store: Store) -> None:
    job = store.add_job(spec(), "ann", 1.0, 6)
    store.on_event(EVENTS, RenderOnline(0, RenderInfo("r1", frozenset({"gpu"}), 4, 2, 1024, 8)))
    store.on_event(EVENTS, RenderOnline(0, RenderInfo("r2")))
    store.on_event(EVENTS, RenderOffline(0, "r2", "no heartbeat for 60 s"))
    store.on_event(EVENTS, changed(job, 0, 0, "running", attempt=1, run_id=5, render="r1"))
    store.flush()
    renders = {r["name"]: r for r in store.renders()}
    assert renders["r1"]["state"] == "online" and renders["r1"]["tags"] == ["gpu"] and renders["r1"]["running"] == 1
    assert (renders["r2"]["state"], renders["r2"]["reason"], renders["r2"]["running"]) == (
        "offline", "no heartbeat for 60 s", 0,
    )


def test_events_survive_kill_9_of_the_writing_process(tmp_path: Path) -> None:
    path = tmp_path / "farm.db"
    script = textwrap.dedent(f"""
        import os, signal
        from farmhand.core.messages import JobStateChanged, RunRecord
        from farmhand.core.spec import parse_job
        from farmhand.store import Store
        s = Store({str(path)!r})
        block = {{"name": "b", "command": "x", "frames": {{"first": 1, "last": 2}}}}
        spec = parse_job({{"name": "j", "blocks": [block]}})
        job = s.add_job(spec, "ann", 1.0, 2)
        for i in range(500):
            s.on_event("events", RunRecord(0, job, "j", "ann", "b", str(i), "", "r", 1, "done", 1.0, 1.0, 2.0, 3.0))
        s.on_event("events", JobStateChanged(0, job, "done", 2, 0, 2))
        assert s.flush(10)
        print("flushed", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL and "flushed" in proc.stdout, proc.stderr
    assert (tmp_path / "farm.db-wal").exists()  # nothing checkpointed: recovery comes from the WAL
    with Store(path) as s:
        assert len(s.runs()) == 500 and [j.state for j in s.jobs()] == ["done"]


def test_restore_into_a_runtime_brings_the_jobs_back(store: Store) -> None:
    a = store.add_job(spec(), "ann", 100.0, 6)
    b = store.add_job(spec("next", depends_on_jobs=[a]), "ann", 101.0, 6)
    for t in range(3):
        store.on_event(EVENTS, changed(a, 0, t, "done", attempt=1))
    store.on_event(EVENTS, changed(a, 1, 0, "running", attempt=1, run_id=77, render="r1", start_time=105.0))
    store.flush()
    rt = PykkaRuntime(wall_clock=True, first_id=store.max_run_id() + 1)
    answers: list[JobDetail] = []
    got = threading.Event()
    try:
        rt.sink(EVENTS, store.on_event)
        rt.spawn(REGISTRY, Registry())
        rt.spawn(SOLVER, Solver(Fifo()))
        assert restore_jobs(store, rt, reclaim_s=30.0, timeout=10) == (2, 0)
        assert rt.next_id() > 77

        def on_detail(_to: str, m: object) -> None:
            if isinstance(m, JobDetail):
                answers.append(m)
                if len(answers) == 2:
                    got.set()

        rt.sink("test", on_detail)
        rt.send(REGISTRY, JobQuery(rt.next_id(), a, "test"))
        rt.send(REGISTRY, JobQuery(rt.next_id(), b, "test"))
        assert got.wait(5)
    finally:
        rt.stop()
    by_id = {d.job_id: d for d in answers}
    tasks = {(t.block, t.task): t.state for t in by_id[a].tasks}
    assert [tasks[(0, i)] for i in range(3)] == ["done"] * 3
    assert tasks[(1, 0)] == "running" and tasks[(1, 1)] == tasks[(1, 2)] == "ready"
    assert by_id[a].submit_time == 100.0
    assert {t.state for t in by_id[b].tasks} == {"waiting"}  # waits on job a


def test_a_job_refused_on_restore_is_marked(store: Store) -> None:
    a = store.add_job(spec(), "ann", 100.0, 6)
    store.add_job(spec(), "ann", 101.0, 6)
    rt = PykkaRuntime(wall_clock=True)
    try:
        rt.sink(EVENTS, store.on_event)
        rt.spawn(REGISTRY, Registry(first_job_id=1))
        rt.spawn(SOLVER, Solver(Fifo()))
        # a job already holds id a in this registry: the stored one is refused and marked
        from farmhand.core.messages import SubmitJob

        rt.send(REGISTRY, SubmitJob(rt.next_id(), spec(), "x", "", job_id=a))  # the registry reads it first
        assert restore_jobs(store, rt, 30.0, timeout=10) == (1, 1)
    finally:
        rt.stop()
    assert [j.job_id for j in store.jobs()] == [a + 1]


def test_one_bad_event_does_not_cost_the_others(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    job = store.add_job(spec(), "ann", 1.0, 6)
    bad = RunRecord(0, job, "shot", "ann", "sim", "1", "1", "r1", 1, "done", 1.0, 1.0, 2.0, 3.0)
    bad = msgspec.structs.replace(bad, job_name=None)  # type: ignore[arg-type]  # NOT NULL violated
    store.on_event(EVENTS, record(job, "1", 5.0))
    store.on_event(EVENTS, bad)
    store.on_event(EVENTS, record(job, "2", 6.0))
    assert store.flush()
    assert [r.task for r in store.runs()] == ["1", "2"]
    assert "event not stored" in caplog.text


def test_a_tasks_output_lines_are_kept_and_come_back(tmp_path: Path) -> None:
    path = tmp_path / "farm.db"
    with Store(path) as s:
        a = s.add_job(spec(), "ann", 1.0, 6)
        s.on_event(EVENTS, TaskChanged(0, a, TaskSnapshot(0, 1, "error", 4, 4, render="r2",
                                                          output=("frame 2", "Segmentation fault")), 9.0))
        s.on_event(EVENTS, TaskChanged(0, a, TaskSnapshot(0, 0, "done", 1, render="r1", output=("ok",)), 9.5))
    with Store(path) as s:
        (job,) = s.restorable_jobs()
        assert {(t.block, t.task): t.output for t in job.tasks} == {
            (0, 0): ("ok",), (0, 1): ("frame 2", "Segmentation fault"),
        }


def test_a_store_made_before_tasks_kept_their_output_opens_and_gains_the_column(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.db"
    with Store(path) as s:
        a = s.add_job(spec(), "ann", 1.0, 6)
        s.on_event(EVENTS, changed(a, 0, 0, "done", attempt=1, render="r1"))
    db = sqlite3.connect(path)  # make it as an older farmhand left it: no output column
    cols = "job, block, task, state, attempt, failures, run_id, render, ready_time, start_time, updated"
    db.executescript(
        "CREATE TABLE t2 (job INTEGER NOT NULL, block INTEGER NOT NULL, task INTEGER NOT NULL, state TEXT NOT NULL,"
        " attempt INTEGER NOT NULL, failures INTEGER NOT NULL, run_id INTEGER NOT NULL, render TEXT NOT NULL,"
        " ready_time REAL NOT NULL, start_time REAL NOT NULL, updated REAL NOT NULL,"
        " PRIMARY KEY (job, block, task)) WITHOUT ROWID;"
        f" INSERT INTO t2 SELECT {cols} FROM tasks; DROP TABLE tasks; ALTER TABLE t2 RENAME TO tasks;"
    )
    db.close()
    with Store(path) as s:
        (job,) = s.restorable_jobs()
        assert [(t.state, t.output) for t in job.tasks] == [("done", ())]
        s.on_event(EVENTS, TaskChanged(0, a, TaskSnapshot(0, 1, "done", 1, output=("new",)), 3.0))
        assert s.flush(5)
        assert {t.task: t.output for t in s.restorable_jobs()[0].tasks} == {0: (), 1: ("new",)}


def test_renders_a_job_came_to_avoid_are_kept_until_the_job_is_forgotten(tmp_path: Path) -> None:
    path = tmp_path / "farm.db"
    with Store(path) as s:
        a = s.add_job(spec(), "ann", 1.0, 6)
        b = s.add_job(spec("other"), "ann", 1.0, 6)
        for event in (AvoidRender(0, a, 0, "r2"), AvoidRender(0, a, 0, "r2"), AvoidRender(0, a, 1, "r1"),
                      AvoidRender(0, b, 0, "r3")):
            s.on_event(EVENTS, event)
        assert s.flush(5)
        s.forget_job(b)
    with Store(path) as s:
        (job,) = s.restorable_jobs()
        assert job.job_id == a and job.avoided == ((0, "r2"), (1, "r1"))


def test_tokens_are_64_hex_digits_so_none_reads_as_an_option() -> None:
    from farmhand.store import new_token

    tokens = {new_token() for _ in range(200)}
    assert len(tokens) == 200 and all(len(t) == 64 and int(t, 16) >= 0 for t in tokens)


def test_worker_credentials_are_bound_to_a_name_listed_revocable_and_not_user_tokens(tmp_path: Path) -> None:
    with Store(tmp_path / "s.db") as store:
        token = store.add_worker("r1")
        assert store.worker_for_token(token) == "r1" and store.authenticate(token) is None
        assert store.worker_for_token("") is None and store.worker_for_token("x" * 64) is None
        with pytest.raises(StoreError, match="enrolled already"):
            store.add_worker("r1")
        with pytest.raises(StoreError, match="worker name"):
            store.add_worker("-bad name")
        fresh = store.add_worker("r1", replace=True)
        assert store.worker_for_token(token) is None and store.worker_for_token(fresh) == "r1"
        assert [w["name"] for w in store.enrolled_workers()] == ["r1"]
        assert store.remove_worker("r1") and not store.remove_worker("r1")
        assert store.worker_for_token(fresh) is None


def test_after_commit_follows_the_commit_of_what_was_queued_before_it(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    try:
        seen: list[int] = []
        done = threading.Event()
        job = store.add_job(spec(), "ann", 1.0, 6)
        with store._lock:  # the writer cannot commit meanwhile
            store.on_event("events", JobStateChanged(1, job, "done", 6, 0, 6))
            store.after_commit(lambda: (seen.append(1), done.set()))
            assert not done.wait(0.3)
            # reading never waits for the writer's lock (a read connection of this thread's own)
            assert [r.state for r in store.jobs()] == ["active"]
        assert done.wait(5) and seen == [1]
        assert [r.state for r in store.jobs()] == ["done"]  # committed before the callback
    finally:
        store.close()
    called = threading.Event()
    store.after_commit(called.set)  # a closed store calls back at once
    assert called.is_set()


def test_after_commit_is_called_even_when_an_event_cannot_be_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Store(tmp_path / "s.db") as store:
        monkeypatch.setattr(store, "_apply", lambda m: (_ for _ in ()).throw(sqlite3.OperationalError("disk full")))
        done = threading.Event()
        store.on_event("events", JobStateChanged(1, 1, "done", 1, 0, 1))
        store.after_commit(done.set)
        assert done.wait(5) and store.events_failed == 1
