"""Identity and rights through the client API: user tokens (401 without a valid one, stored hashed, never
logged), owners act on their own jobs only (403 with the job's reason), admins on all, admin-only endpoints."""

from __future__ import annotations

import io
import json
import logging
import stat
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from farm_fixture import Farm, job_spec, running_farm

from farmhand.client import ApiClient, ApiError
from farmhand.logs import setup_logging


@pytest.fixture
def farm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Farm]:
    monkeypatch.delenv("FARMHAND_TOKEN", raising=False)  # the farm token comes from (and goes to) its file
    with running_farm(tmp_path) as f:
        yield f


def raw_get(url: str, headers: dict[str, str]) -> tuple[int, dict[str, str], dict[str, object]]:
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())


def test_requests_without_a_valid_token_are_401(farm: Farm) -> None:
    url = farm.server.api_url + "/api/jobs"
    token = farm.admin.token
    assert token
    for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": "Bearer wrong"},
                    {"Authorization": f"Basic {token}"}, {"Authorization": token}):
        status, got_headers, body = raw_get(url, headers)
        assert status == 401, headers
        assert got_headers.get("WWW-Authenticate", "").startswith("Bearer")
        assert "token" in str(body["error"]) and token not in json.dumps(body)
    assert raw_get(url, {"Authorization": f"Bearer {token}"})[0] == 200
    for method in ("POST", "DELETE"):
        with pytest.raises(ApiError) as err:
            ApiClient(farm.server.api_url, "bad").request(method, "/api/jobs/1/pause" if method == "POST" else
                                                          "/api/jobs/1", {})
        assert err.value.status == 401


def test_owners_act_on_their_jobs_admins_on_all(farm: Farm) -> None:
    ann, bob, boss = farm.client("ann"), farm.client("bob"), farm.client("boss", admin=True)
    (job_id,) = ann.submit(json.dumps(job_spec(paused=True)).encode())
    assert bob.job(job_id)["user"] == "ann"  # anyone may look
    for action, body in (("resume", {}), ("delete", {}), ("priority", {"value": 1}), ("skip", {}), ("restart", {})):
        with pytest.raises(ApiError) as err:
            bob.action(job_id, action, **body)
        assert err.value.status == 403
        assert err.value.error == f"user 'bob' may not {action} job {job_id} of user 'ann'"
    assert boss.action(job_id, "priority", value=3) == "priority 3"
    assert ann.action(job_id, "priority", value=4) == "priority 4"
    assert boss.action(job_id, "delete") == "deleted"


def test_submitting_for_another_user_is_for_admins_only(farm: Farm) -> None:
    bob, boss = farm.client("bob"), farm.client("boss", admin=True)
    with pytest.raises(ApiError) as err:
        bob.submit(json.dumps(job_spec(user="ann")).encode())
    assert err.value.status == 403 and "admins only" in err.value.error
    assert bob.jobs() == []
    (mine,) = bob.submit(json.dumps(job_spec(user="bob")).encode())
    (theirs,) = boss.submit(json.dumps(job_spec(user="ann")).encode())
    owners = {j["id"]: j["user"] for j in bob.jobs()}
    assert owners == {mine: "bob", theirs: "ann"}


def test_admin_endpoints_need_an_admin(farm: Farm) -> None:
    ann = farm.client("ann")
    assert ann.whoami() == {"user": "ann", "admin": False}
    for call in (lambda: ann.add_user("eve"), lambda: ann.log_level("debug"), lambda: ann.log_level()):
        with pytest.raises(ApiError) as err:
            call()
        assert err.value.status == 403 and err.value.error == "user 'ann' is not an admin"
    token = farm.admin.add_user("eve")
    assert ApiClient(farm.server.api_url, token).whoami() == {"user": "eve", "admin": False}
    with pytest.raises(ApiError) as err:
        farm.admin.add_user("eve")
    assert err.value.status == 400 and "exists" in err.value.error
    new = farm.admin.add_user("eve", replace=True)
    with pytest.raises(ApiError) as err:
        ApiClient(farm.server.api_url, token).whoami()
    assert err.value.status == 401
    assert ApiClient(farm.server.api_url, new).whoami()["user"] == "eve"


def test_tokens_are_never_logged_and_token_files_are_private(farm: Farm, tmp_path: Path) -> None:
    out = io.StringIO()
    root = logging.getLogger("farmhand")
    level, propagate = root.level, root.propagate
    handler = setup_logging("debug", stream=out)
    try:
        token = farm.admin.add_user("ann")
        ann = ApiClient(farm.server.api_url, token)
        ann.submit(json.dumps(job_spec()).encode())
        with pytest.raises(ApiError):
            ApiClient(farm.server.api_url, token + "x").jobs()
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        root.propagate = propagate
    text = out.getvalue()
    assert "user token issued" in text and "job accepted" in text and "no valid token" in text
    for secret in (token, token + "x", farm.admin.token or ""):
        assert secret not in text
    for name in ("admin.token", "farm.token"):
        mode = stat.S_IMODE((tmp_path / name).stat().st_mode)
        assert mode == 0o600, (name, oct(mode))


def test_a_secret_written_over_a_readable_file_makes_it_private(tmp_path: Path) -> None:
    from farmhand.server import write_secret

    path = tmp_path / "farm.token"
    path.write_text("old\n")
    path.chmod(0o644)
    write_secret(path, "new")
    assert path.read_text() == "new\n" and stat.S_IMODE(path.stat().st_mode) == 0o600
