"""A small client of the HTTP/JSON API (stdlib only), used by the CLI, the demo and the tests.

Where to reach the server and who you are:

- the API's URL: ``--api`` or ``FARMHAND_API`` (default ``http://127.0.0.1:51080``);
- your user token: ``--token``, ``FARMHAND_USER_TOKEN``, ``--token-file``, ``FARMHAND_USER_TOKEN_FILE``, then
  ``~/.config/farmhand/token``, then ``./farmhand-data/admin.token`` (what a server started in the same
  folder writes for its first admin).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

#: the client API's port unless told otherwise (the server's ``--http-port``)
DEFAULT_HTTP_PORT = 51080
DEFAULT_API = f"http://127.0.0.1:{DEFAULT_HTTP_PORT}"


class ApiError(Exception):
    """The server answered with an error (``status`` > 0) or could not be reached (``status`` 0)."""

    def __init__(self, status: int, error: str, problems: list[str] | None = None, data: Any = None) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.problems = problems or []
        self.data = data

    def lines(self) -> list[str]:
        """The error and each problem, one line each."""
        return [self.error, *(f"  {p}" for p in self.problems if p != self.error)]


def find_token(token: str | None = None, token_file: str | None = None) -> str | None:
    """The user token from the option, the environment or the usual files (see the module doc)."""
    if token:
        return token
    if os.environ.get("FARMHAND_USER_TOKEN"):
        return os.environ["FARMHAND_USER_TOKEN"]
    candidates = [token_file, os.environ.get("FARMHAND_USER_TOKEN_FILE")]
    candidates += [str(Path.home() / ".config" / "farmhand" / "token"), "farmhand-data/admin.token"]
    for i, name in enumerate(candidates):
        if not name:
            continue
        path = Path(name)
        if path.is_file():
            text = path.read_text(encoding="utf-8").strip()
            if text:
                return text
        elif i < 2:
            raise ApiError(0, f"token file {name} not found")
    return None


class ApiClient:
    """Calls the client API with a bearer token; every method returns the decoded JSON or raises ApiError."""

    def __init__(self, url: str = DEFAULT_API, token: str | None = None, timeout: float = 30.0) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ApiError(0, f"server URL {url!r} (--api or FARMHAND_API): must be http://HOST:PORT")
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def request(
        self, method: str, path: str, body: Any = None, raw: bytes | None = None, content_type: str = "application/json"
    ) -> Any:
        """One request; JSON answers are decoded, others returned as text."""
        data = raw if raw is not None else (json.dumps(body).encode("utf-8") if body is not None else None)
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", content_type)
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                payload = resp.read()
                kind = resp.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            payload = exc.read()
            try:
                err = json.loads(payload)
            except ValueError:
                raise ApiError(exc.code, f"HTTP {exc.code}: {payload[:200]!r}") from None
            raise ApiError(exc.code, str(err.get("error", exc.reason)), list(err.get("problems", [])), err) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ApiError(0, f"cannot reach the farmhand server at {self.url} ({reason})") from None
        if "json" in kind:
            return json.loads(payload)
        return payload.decode("utf-8")

    # ---------------------------------------------------------------------------------------- endpoints
    def whoami(self) -> dict[str, Any]:
        """The caller's name and admin flag."""
        result: dict[str, Any] = self.request("GET", "/api/whoami")
        return result

    def submit(self, text: bytes, yaml_body: bool = False) -> list[int]:
        """Submit the job(s) of a JSON or YAML document; returns the ids."""
        kind = "application/yaml" if yaml_body else "application/json"
        result = self.request("POST", "/api/jobs", raw=text, content_type=kind)
        return [int(i) for i in result["jobs"]]

    def jobs(self, user: str | None = None) -> list[dict[str, Any]]:
        """Every job (of one user if given) with task counts."""
        query = f"?user={urllib.parse.quote(user)}" if user else ""
        result: list[dict[str, Any]] = self.request("GET", f"/api/jobs{query}")["jobs"]
        return result

    def job(
        self,
        job_id: int,
        block: str | None = None,
        task: str | None = None,
        lines: int = 20,
        tasks: bool = True,
        offset: int = 0,
        limit: int | None = None,
    ) -> dict[str, Any]:
        """A job's detail, with the last output lines of one task if ``block`` and ``task`` are given; the task
        list holds ``limit`` tasks (the server's default page when None) from task ``offset``."""
        params: dict[str, Any] = {"lines": lines}
        if block is not None:
            params["block"] = block
        if task is not None:
            params["task"] = task
        if not tasks:
            params["tasks"] = 0
        if offset:
            params["offset"] = offset
        if limit is not None:
            params["limit"] = limit
        result: dict[str, Any] = self.request("GET", f"/api/jobs/{job_id}?{urllib.parse.urlencode(params)}")
        return result

    def runs(self, job_id: int) -> list[dict[str, Any]]:
        """A job's runs (the ``tasks.csv`` rows) as dicts."""
        result: list[dict[str, Any]] = self.request("GET", f"/api/jobs/{job_id}/runs")["runs"]
        return result

    def action(self, job_id: int, action: str, **body: Any) -> str:
        """A job action (pause, resume, delete, restart, skip, priority); returns what changed."""
        result: str = self.request("POST", f"/api/jobs/{job_id}/{action}", body)["detail"]
        return result

    def render_action(self, name: str, action: str) -> str:
        """(admin) Pause or resume a render; returns what changed."""
        path = f"/api/renders/{urllib.parse.quote(name, safe='')}/{action}"
        result: str = self.request("POST", path, {})["detail"]
        return result

    def renders(self) -> list[dict[str, Any]]:
        """Every render the server has seen."""
        result: list[dict[str, Any]] = self.request("GET", "/api/renders")["renders"]
        return result

    def runs_csv(self) -> str:
        """The whole run log as ``tasks.csv`` text."""
        result: str = self.request("GET", "/api/runs.csv")
        return result

    def add_user(self, name: str, admin: bool = False, replace: bool = False) -> str:
        """(admin) Create a user; returns its token."""
        result = self.request("POST", "/api/admin/users", {"name": name, "admin": admin, "replace": replace})
        return str(result["token"])

    def add_worker(self, name: str, replace: bool = False) -> str:
        """(admin) Enrol a worker under a render name; returns its credential (a new one with ``replace``)."""
        result = self.request("POST", "/api/admin/workers", {"name": name, "replace": replace})
        return str(result["token"])

    def remove_worker(self, name: str) -> str:
        """(admin) Revoke a worker's credential (its live connection is closed); returns what changed."""
        result: str = self.request("DELETE", f"/api/admin/workers/{urllib.parse.quote(name, safe='')}")["detail"]
        return result

    def workers(self) -> list[dict[str, Any]]:
        """(admin) The enrolled workers: name and when their credential was issued."""
        result: list[dict[str, Any]] = self.request("GET", "/api/admin/workers")["workers"]
        return result

    def log_level(self, level: str | None = None) -> str:
        """(admin) The server's log level, set first if ``level`` is given."""
        if level is None:
            return str(self.request("GET", "/api/admin/log-level")["level"])
        return str(self.request("POST", "/api/admin/log-level", {"level": level})["level"])
