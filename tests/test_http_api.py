"""The client API over real HTTP on loopback: submission (JSON, YAML, invalid), listing, detail with output
lines, actions, renders, the run log; a server with in-process scripted workers."""

from __future__ import annotations

import contextlib
import csv
import http.client
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from farm_fixture import Farm, job_spec, running_farm

from farmhand import http_api
from farmhand.client import ApiClient, ApiError
from farmhand.core.records import CSV_COLUMNS
from farmhand.http_api import HttpApi


@pytest.fixture
def farm(tmp_path: Path) -> Iterator[Farm]:
    with running_farm(tmp_path) as f:
        yield f


def submit(client: ApiClient, spec: dict[str, object]) -> int:
    (job_id,) = client.submit(json.dumps(spec).encode())
    return job_id


def test_submit_json_and_yaml_run_to_done_and_list(farm: Farm) -> None:
    farm.add_render("r1")
    farm.add_render("r2")
    ann = farm.client("ann")
    first = submit(ann, job_spec("one"))
    (second, third) = ann.submit(yaml.safe_dump({"jobs": [job_spec("two"), job_spec("three", priority=5)]}).encode(),
                                 yaml_body=True)
    assert (first, second, third) == (1, 2, 3)
    for job_id in (first, second, third):
        row = farm.wait_job(job_id)
        assert row["counts"] == {"done": 8, "pending": 0} and row["tasks_total"] == 8 and row["user"] == "ann"
    jobs = ann.jobs()
    assert [(j["id"], j["name"], j["priority"]) for j in jobs] == [(1, "one", 99), (2, "two", 99), (3, "three", 5)]
    assert ann.jobs(user="nobody") == []


def test_invalid_submissions_are_400_with_the_problems_and_leave_nothing(farm: Farm) -> None:
    ann = farm.client("ann")
    bad = job_spec()
    bad["blocks"][0]["frames"] = {"first": 3, "last": 1}  # type: ignore[index]
    bad["colour"] = "red"
    with pytest.raises(ApiError) as err:
        submit(ann, bad)
    assert err.value.status == 400
    assert any("blocks[0].frames.last" in p for p in err.value.problems)
    assert any("colour" in p for p in err.value.problems)
    with pytest.raises(ApiError) as err:
        ann.submit(b"name: [unclosed", yaml_body=True)
    assert err.value.status == 400 and "invalid YAML" in err.value.problems[0]
    with pytest.raises(ApiError) as err:
        ann.submit(b"{not json")
    assert err.value.status == 400 and "invalid JSON" in err.value.problems[0]
    with pytest.raises(ApiError) as err:  # refused by the registry: no such upstream job
        submit(ann, job_spec(depends_on_jobs=[42]))
    assert err.value.status == 400 and err.value.problems == ["depends_on_jobs[0]: no job with id 42"]
    assert ann.jobs() == []
    assert submit(ann, job_spec()) == 2  # the refused job's id is not reused


def test_detail_shows_blocks_tasks_renders_and_output_lines(farm: Farm) -> None:
    farm.add_render("r1", seconds=lambda a: 30.0 if a.block == 0 and a.task == 0 else 0.02, capacity=1)
    ann = farm.client("ann")
    job_id = submit(ann, job_spec(frames=2))
    deadline = time.monotonic() + 10
    detail = ann.job(job_id)
    while time.monotonic() < deadline:
        detail = ann.job(job_id, block="prep", task="1", lines=2)
        if detail["tasks"][0]["state"] == "running" and detail["output"]:
            break
        time.sleep(0.05)
    assert (detail["id"], detail["name"], detail["user"], detail["state"]) == (job_id, "shot", "ann", "active")
    assert [(b["name"], b["depends_on_frames"]) for b in detail["blocks"]] == [("prep", []), ("render", ["prep"])]
    t0 = detail["tasks"][0]
    assert (t0["block"], t0["name"], t0["frames"], t0["state"], t0["render"], t0["percent"], t0["attempt"]) == (
        0, "1", "1", "running", "r1", 50, 1,
    )
    assert detail["output"] == ["command prep 1", "50%"]  # the last 2 lines of prep/1
    assert ann.job(job_id, block="0", task="0", lines=1)["output"] == ["50%"]
    assert "tasks" not in ann.job(job_id, tasks=False)
    for bad in ({"block": "nope", "task": "1"}, {"block": "prep", "task": "9"}, {"block": "prep"}):
        with pytest.raises(ApiError) as err:
            ann.job(job_id, **bad)  # type: ignore[arg-type]
        assert err.value.status == 400
    with pytest.raises(ApiError) as err:
        ann.job(999)
    assert err.value.status == 404 and err.value.error == "no job 999"


def test_actions_change_the_job(farm: Farm) -> None:
    farm.add_render("r1", seconds=lambda a: 0.02, capacity=1)
    ann = farm.client("ann")
    job_id = submit(ann, job_spec(frames=3, paused=True))
    assert ann.action(job_id, "priority", value=200) == "priority 200"
    # paused: nothing runs. The event that shows it: a later job of lower priority runs to the end on the only
    # render, which the paused job (first in every order) would have taken first had it not been paused
    later = submit(ann, job_spec("later", frames=1, priority=10))
    farm.wait_job(later)
    assert ann.runs(job_id) == []
    assert {t["state"] for t in ann.job(job_id)["tasks"]} == {"ready", "waiting"}
    assert ann.job(job_id)["state"] == "paused"
    assert ann.action(job_id, "skip", block="prep", tasks=["1", 1]) == "skipped 2 task(s)"
    assert ann.action(job_id, "resume") == "resumed"
    farm.wait_job(job_id)
    row = {j["id"]: j for j in ann.jobs()}[job_id]
    assert row["priority"] == 200 and not row["paused"]
    assert row["counts"] == {"done": 4, "skipped": 2, "pending": 0}
    assert ann.action(job_id, "restart", block=1, downstream=True) == "restarted 3 task(s)"
    farm.wait_runs(job_id, 4 + 3)
    farm.wait_job(job_id)
    assert len(ann.runs(job_id)) == 4 + 3
    for bad, status in (({"value": "high"}, 400), ({"colour": 1}, 400), ({"block": "nope"}, 400),
                        ({"block": 7}, 400), ({"tasks": "1"}, 400)):
        with pytest.raises(ApiError) as err:
            ann.action(job_id, "priority" if "value" in bad else "skip", **bad)
        assert err.value.status == status, bad
    with pytest.raises(ApiError) as err:
        ann.action(job_id, "explode")
    assert err.value.status == 404
    assert ann.action(job_id, "delete") == "deleted"
    assert job_id not in [j["id"] for j in ann.jobs()]
    with pytest.raises(ApiError) as err:
        ann.action(job_id, "pause")
    assert err.value.status == 404


def test_renders_and_the_run_log(farm: Farm) -> None:
    farm.add_render("r1")
    farm.add_render("r2", seconds=lambda a: 0.02, fail=lambda a: a is not None and a.block == 1 and a.attempt == 1)
    ann = farm.client("ann")
    job_id = submit(ann, job_spec(frames=4))
    farm.wait_job(job_id)
    renders = {r["name"]: r for r in ann.renders()}
    assert sorted(renders) == ["r1", "r2"]
    assert renders["r1"]["state"] == "online" and renders["r1"]["capacity"] == 2 and renders["r1"]["running"] == 0
    text = ann.runs_csv()
    rows = list(csv.reader(io.StringIO(text)))
    assert tuple(rows[0]) == CSV_COLUMNS
    farm.store.flush()
    assert len(rows) - 1 == len(farm.store.runs()) >= 8
    assert {r[8] for r in rows[1:]} <= {"done", "error"}
    starts = [float(r[11]) for r in rows[1:]]
    assert starts == sorted(starts)


def test_log_level_switches_while_running(farm: Farm) -> None:
    before = farm.admin.log_level()
    try:
        assert farm.admin.log_level("info") == "info" and farm.admin.log_level() == "info"
        assert farm.admin.log_level("debug") == "debug"
        assert farm.admin.log_level() == "debug"
        with pytest.raises(ApiError) as err:
            farm.admin.log_level("loud")
        assert err.value.status == 400
    finally:
        farm.admin.log_level(before)


def test_unknown_endpoints_are_404(farm: Farm) -> None:
    for method, path in (("GET", "/api/nothing"), ("GET", "/"), ("PUT", "/api/jobs"), ("GET", "/api/jobs/x")):
        with pytest.raises(ApiError) as err:
            farm.admin.request(method, path)
        assert err.value.status in (400, 404, 501), (method, path)


class _WatchedGate(http_api._Gate):
    """The API's request slots, with their count observable from the test's thread."""

    changed = threading.Condition()
    gates: list[_WatchedGate] = []

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.taken = 0  # slots ever taken
        with self.changed:
            self.gates.append(self)

    def take(self) -> bool:
        with self.changed:
            taken = super().take()
            self.taken += taken
            self.changed.notify_all()
            return taken

    def give(self) -> None:
        with self.changed:
            super().give()
            self.changed.notify_all()

    @classmethod
    def wait_used(cls, count: int, taken: int = 0, timeout: float = 10.0) -> None:
        """Wait until the (one) gate has ``count`` slots in use, after at least ``taken`` were ever taken."""
        with cls.changed:
            if not cls.changed.wait_for(
                lambda: len(cls.gates) == 1 and cls.gates[0].used == count and cls.gates[0].taken >= taken, timeout
            ):
                seen = [(g.used, g.taken) for g in cls.gates]
                raise AssertionError(f"request slots (in use, ever taken): {seen}, not ({count}, >= {taken}) "
                                     f"after {timeout:g} s")


def test_requests_beyond_the_cap_are_refused_503_and_served_again_once_free(
    farm: Farm, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert farm.server.http is not None
    monkeypatch.setattr(_WatchedGate, "gates", [])
    monkeypatch.setattr(http_api, "_Gate", _WatchedGate)
    api = HttpApi(farm.server.http.api, "127.0.0.1", 0, max_requests=2, request_timeout_s=30).start()
    token = farm.admin.token
    holders: list[socket.socket] = []
    try:
        for _ in range(2):  # two silent clients hold both request threads (for up to 30 s)
            holders.append(socket.create_connection((api.host, api.port), timeout=5))
        _WatchedGate.wait_used(2, taken=2)  # the server has accepted both: each holds a slot
        busy = ApiClient(api.url, token, timeout=5)
        with pytest.raises(ApiError) as err:
            busy.whoami()
        assert err.value.status == 503
        for s in holders:
            s.close()
        holders.clear()
        _WatchedGate.wait_used(0, taken=2)  # the server notices its clients went away and gives their slots back
        assert busy.whoami()["user"] == "admin"
    finally:
        for s in holders:
            s.close()
        api.stop()


def test_bad_input_is_a_400_or_404_naming_the_problem_and_changes_nothing(farm: Farm) -> None:
    ann = farm.client("ann")
    job_id = submit(ann, job_spec(frames=3, paused=True))
    before = ann.job(job_id)

    def refused(status: int, method: str, path: str, body: Any = None, raw: bytes | None = None) -> list[str]:
        with pytest.raises(ApiError) as err:
            ann.request(method, path, body, raw=raw)
        assert err.value.status == status, (method, path, err.value)
        return err.value.problems

    # a negative block is not "every block", a priority needs its value
    assert refused(400, "POST", f"/api/jobs/{job_id}/skip", {"block": -1}) == [
        "block: must be a block index (0 or more) or name (got -1)"]
    assert refused(400, "POST", f"/api/jobs/{job_id}/restart", {"block": 0, "tasks": [0, -2]}) == [
        "tasks[1]: must be a task index (0 or more) or name (got -2)"]
    assert refused(400, "POST", f"/api/jobs/{job_id}/priority", {}) == ["value: is required (the new priority, 0-255)"]
    assert refused(400, "POST", f"/api/jobs/{job_id}/priority", {"value": 300}) == [
        "value: must be an integer 0-255 (got 300)"]
    # documents that cannot be read: a number of thousands of digits, nesting thousands deep, a lone surrogate
    problems = refused(400, "POST", "/api/jobs", raw=b"1" * 5000)
    assert problems[0].startswith("body: cannot read a value")
    assert refused(400, "POST", "/api/jobs", raw=b"[" * 100_000) == ["body: nested too deeply to read"]
    surrogate = b'{"name": "j\\ud800", "blocks": []}'
    assert refused(400, "POST", "/api/jobs", raw=surrogate) == [
        "body: name: text that is not valid Unicode (a lone surrogate)"]
    assert refused(400, "POST", f"/api/jobs/{job_id}/restart", raw=b"1" * 5000)[0].startswith("body: cannot read")
    assert refused(400, "POST", "/api/jobs", {"jobs": 5}) == ["jobs: must be a list of jobs (got int)"]
    assert refused(400, "POST", "/api/jobs", {"jobs": [], "extra": 1}) == [
        "extra: unknown key (beside a list of jobs, only jobs)"]
    # ids and query values out of range
    refused(404, "POST", "/api/jobs/99999999999999999999999/pause", {})
    refused(404, "GET", "/api/jobs/" + "9" * 5000)
    refused(400, "GET", f"/api/jobs/{job_id}?tasks=maybe")
    refused(400, "GET", f"/api/jobs/{job_id}?lines=-1")
    # user names must be printable text
    for name in ("a\ud800", "a\u0000b"):
        with pytest.raises(ApiError) as err:
            farm.admin.request("POST", "/api/admin/users", raw=json.dumps({"name": name}).encode())
        assert err.value.status == 400
    after = ann.job(job_id)
    assert (after["priority"], after["state"]) == (before["priority"], before["state"]) == (99, "paused")
    assert [t["state"] for t in after["tasks"]] == [t["state"] for t in before["tasks"]]


def test_a_jobs_task_list_comes_a_page_at_a_time(farm: Farm) -> None:
    ann = farm.client("ann")
    job_id = submit(ann, job_spec(frames=3, paused=True))
    whole = ann.job(job_id)
    total = whole["tasks_total"]
    assert total == len(whole["tasks"]) > 3 and whole["first_task"] == 0
    page = ann.job(job_id, offset=2, limit=3)
    assert (page["first_task"], page["tasks_total"]) == (2, total)
    assert page["tasks"] == whole["tasks"][2:5]  # across the blocks, in block then task order
    assert ann.job(job_id, offset=total + 5)["tasks"] == []
    assert ann.job(job_id, limit=0)["tasks"] == [] and "tasks" not in ann.job(job_id, tasks=False)
    with pytest.raises(ApiError) as err:
        ann.job(job_id, limit=100_001)
    assert err.value.status == 400 and "limit: must be a whole number 0-100000" in err.value.error


def test_the_servers_own_refusals_are_json_too(farm: Farm) -> None:
    for method in ("PUT", "PATCH", "FOO"):
        with pytest.raises(ApiError) as err:  # the client decodes the JSON body into the error
            farm.admin.request(method, "/api/jobs")
        assert err.value.status == 501 and "Unsupported method" in err.value.error, method


def test_an_admin_pauses_a_render_and_it_takes_no_new_task_until_resumed(farm: Farm) -> None:
    farm.add_render("r1")
    deadline = time.monotonic() + 10
    while "r1" not in [r["name"] for r in farm.admin.renders()]:  # the store hears of its hello
        assert time.monotonic() < deadline
        time.sleep(0.05)
    ann = farm.client("ann")
    for client, name, action, status in ((ann, "r1", "pause", 403), (farm.admin, "nope", "pause", 404),
                                         (farm.admin, "r1", "explode", 404)):
        with pytest.raises(ApiError) as err:
            client.render_action(name, action)
        assert err.value.status == status, (name, action)
    assert farm.admin.render_action("r1", "pause") == "paused"
    assert farm.server.store.render_paused("r1")
    # four tasks ready at once while r1 is free but paused; then r2 (one slot) comes and runs the whole job: had
    # r1 not been paused, it would have taken tasks at once (before r2 existed, and beside r2's one slot)
    job_id = submit(ann, job_spec(frames=4))
    farm.add_render("r2", capacity=1)
    farm.wait_job(job_id)
    assert {r["render"] for r in ann.runs(job_id)} == {"r2"}  # nothing was given to r1
    assert {r["name"]: r["state"] for r in farm.admin.renders()}["r1"] == "paused"
    assert farm.admin.render_action("r2", "pause") == "paused"
    assert farm.admin.render_action("r1", "resume") == "resumed"
    again = submit(ann, job_spec("again", frames=2))
    farm.wait_job(again)
    assert {r["render"] for r in ann.runs(again)} == {"r1"}  # r1 takes tasks again, r2 none now
    assert not farm.server.store.render_paused("r1")


# ------------------------------------------------------------------------------------ HTTP framing and limits


def raw_request(
    host: str, port: int, data: bytes, timeout: float = 5.0, later: bytes = b""
) -> tuple[int, dict[str, str], Any]:
    """Send ``data`` as it is on a new connection (and ``later`` a moment after); the status, headers and body
    (decoded JSON when it is JSON) of the answer."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(data)
        if later:
            time.sleep(0.2)
            sock.sendall(later)
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        body = resp.read()
        headers = {k.lower(): v for k, v in resp.getheaders()}
        return resp.status, headers, json.loads(body) if "json" in headers.get("content-type", "") else body


def post_head(path: str, token: str, *headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Authorization: Bearer {token}",
             "Content-Type: application/json", "Connection: close", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


def test_a_chunked_body_is_read_as_sent_and_one_that_cannot_be_read_acts_on_nothing(farm: Farm) -> None:
    """A body sent with ``Transfer-Encoding: chunked`` used to be read as empty: skipping one task skipped them all."""
    assert farm.server.http is not None
    host, port = farm.server.http.host, farm.server.http.port
    ann = farm.client("ann")
    assert ann.token
    job_id = submit(ann, job_spec(frames=4, paused=True))  # 8 tasks, nothing runs
    te = "Transfer-Encoding: chunked"
    status, _, answer = raw_request(host, port, post_head(f"/api/jobs/{job_id}/skip", ann.token, te)
                                    + chunked(b'{"block":0,', b'"tasks":[0]}'))
    assert (status, answer) == (200, {"detail": "skipped 1 task(s)"})
    status, _, answer = raw_request(host, port, post_head(f"/api/jobs/{job_id}/restart", ann.token, te)
                                    + chunked(b'{"block":0,"tasks":[0]}'))
    assert (status, answer) == (200, {"detail": "restarted 1 task(s)"})
    # bodies that cannot be read as sent (chunks framed wrongly, content that does not decode) are never acted
    # on: a 400 naming the problem; when the broken framing comes after the head, the parser cannot resume and
    # the client is dropped as stalled
    api = HttpApi(farm.server.http.api, "127.0.0.1", 0, request_timeout_s=0.5).start()
    try:
        skip = post_head(f"/api/jobs/{job_id}/skip", ann.token, te)
        gzipped = post_head(f"/api/jobs/{job_id}/skip", ann.token, "Content-Encoding: gzip", "Content-Length: 2")
        for head, body in ((skip, b"zz\r\n{}\r\n0\r\n\r\n"), (skip, b"2\r\n{}XX0\r\n\r\n"), (gzipped, b"{}")):
            for data, later in ((head + body, b""), (head, body)):
                try:
                    status, _, answer = raw_request(api.host, api.port, data, later=later)
                except (http.client.RemoteDisconnected, ConnectionResetError):
                    assert later and head is skip, "dropped without an answer"
                    continue
                assert status == 400 and answer["error"] and answer["problems"], (data, later, answer)
    finally:
        api.stop()
    assert [t["state"] for t in ann.job(job_id)["tasks"]] == ["ready"] * 4 + ["waiting"] * 4


def test_a_flood_of_clients_is_answered_at_once_each_200_or_503(farm: Farm) -> None:
    """200 clients at once used to overflow a listen backlog of 5: answers took up to a minute, or never came."""
    assert farm.server.http is not None
    host, port = farm.server.http.host, farm.server.http.port
    head = f"GET /api/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {farm.admin.token}\r\nConnection: close\r\n\r\n"
    n = 200
    start = threading.Barrier(n)
    results: list[tuple[int | str, float, dict[str, str], Any] | None] = [None] * n

    def one(i: int) -> None:
        start.wait(timeout=20)
        began = time.monotonic()
        try:
            status, headers, body = raw_request(host, port, head.encode(), timeout=10)
            results[i] = (status, time.monotonic() - began, headers, body)
        except OSError as exc:
            results[i] = (repr(exc), time.monotonic() - began, {}, None)

    threads = [threading.Thread(target=one, args=(i,), name=f"flood-{i}") for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not [t for t in threads if t.is_alive()]
    late = sorted({(r[0], round(r[1], 1)) for r in results if r is None or r[0] not in (200, 503) or r[1] > 2.0},
                  key=str)
    assert not late, f"{len(late)} not answered 200 or 503 within 2 s, e.g. {late[:5]}"
    statuses = [r[0] for r in results if r is not None]
    assert statuses.count(200) >= 1, statuses
    for r in results:
        assert r is not None
        if r[0] == 503:
            assert r[2].get("retry-after") == "1" and r[3]["error"], r


def test_the_servers_own_refusals_of_malformed_requests_are_json(farm: Farm) -> None:
    assert farm.server.http is not None
    host, port = farm.server.http.host, farm.server.http.port
    token = farm.admin.token or ""
    cases = {
        "a request line that is not HTTP": b"GET /api/jobs and more HTTP/1.1\r\nHost: x\r\n\r\n",
        "a header line too long": b"GET /api/jobs HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 70_000 + b"\r\n\r\n",
        "a body over the limit": post_head("/api/jobs", token, f"Content-Length: {8 * 1024 * 1024 + 1}") + b"{",
        "a bad Content-Length": post_head("/api/jobs", token, "Content-Length: ten") + b"{}",
    }
    for name, data in cases.items():
        status, _, body = raw_request(host, port, data)
        assert 400 <= status < 500 and isinstance(body, dict) and body["error"], (name, status, body)
        assert isinstance(body["problems"], list), name
        if name == "a body over the limit":
            assert status == 413, status


def test_an_action_body_with_a_byte_order_mark_is_read(farm: Farm) -> None:
    ann = farm.client("ann")
    job_id = submit(ann, job_spec(frames=4, paused=True))
    assert ann.request("POST", f"/api/jobs/{job_id}/skip", raw=b'\xef\xbb\xbf{"block": 0, "tasks": [1]}') == {
        "detail": "skipped 1 task(s)"}


def test_a_client_that_stalls_mid_request_is_dropped_and_frees_its_slot(farm: Farm) -> None:
    assert farm.server.http is not None
    api = HttpApi(farm.server.http.api, "127.0.0.1", 0, max_requests=1, request_timeout_s=0.5).start()
    token = farm.admin.token or ""
    try:
        for stalled in (b"GET /api/who", post_head("/api/admin/log-level", token, "Content-Length: 20") + b'{"lev',
                        post_head("/api/admin/log-level", token, "Transfer-Encoding: chunked") + b'14\r\n{"lev'):
            with socket.create_connection((api.host, api.port), timeout=5) as sock:
                sock.sendall(stalled)
                began = time.monotonic()
                try:
                    left = sock.recv(65536)  # the server closes the connection (maybe after an answer)
                except ConnectionResetError:
                    left = b""
                assert time.monotonic() - began < 3.0 and b"200 OK" not in left, left
            assert ApiClient(api.url, token, timeout=5).whoami()["user"] == "admin"  # the slot is free again
    finally:
        api.stop()


def test_a_client_that_leaves_its_answer_unread_is_dropped_and_frees_its_slot(
    farm: Farm, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert farm.server.http is not None
    token = farm.admin.token or ""
    job_id = submit(farm.admin, job_spec(frames=30_000, paused=True))  # its detail is about 10 MB of JSON
    monkeypatch.setattr(_WatchedGate, "gates", [])
    monkeypatch.setattr(http_api, "_Gate", _WatchedGate)
    api = HttpApi(farm.server.http.api, "127.0.0.1", 0, max_requests=1, request_timeout_s=0.5).start()
    try:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.settimeout(5)
            sock.connect((api.host, api.port))
            sock.sendall(f"GET /api/jobs/{job_id}?limit=100000 HTTP/1.1\r\nHost: x\r\n"
                         f"Authorization: Bearer {token}\r\n\r\n".encode())
            # the request took the only slot; its answer stays unread: the server drops the client, frees the slot
            _WatchedGate.wait_used(0, taken=1)
            assert ApiClient(api.url, token, timeout=5).whoami()["user"] == "admin"
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                sock.recv(65536)  # what was buffered before the drop; the connection ends there
            sock.settimeout(5)
            got = 0
            with contextlib.suppress(ConnectionResetError):
                while chunk := sock.recv(1 << 20):
                    got += len(chunk)
            assert got < 9_000_000, got  # the answer was cut short
    finally:
        api.stop()
