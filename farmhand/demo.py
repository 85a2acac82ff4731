"""``farmhand demo``: the whole production farm on this machine, in one command.

It starts a server on embedded defaults (its store in a temporary folder, ephemeral ports on 127.0.0.1), N
worker processes (``farmhand worker``), submits a sample job whose tasks do real small work, and shows the
progress until the job is done:

- ``simulate``: frames 1..N in chunks of 3, each task counts the primes of a range;
- ``render``: frame by frame after ``simulate`` (``depends_on_frames``), each task draws a Mandelbrot
  frame and writes it as a PGM image;
- ``encode``: after every frame is rendered (``depends_on``), one task checks the frames and writes a digest.

Every task prints ``NN%`` lines, which the workers parse into progress. The server's and the workers' logs go
to files in the demo's folder (kept with ``--dir``), with the images, ``tasks.csv`` and the store.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from farmhand.client import ApiClient, ApiError
from farmhand.progress import ProgressLine

SIMULATE = r"""
import sys, time
first, last = int(sys.argv[1]), int(sys.argv[2])
found = 0
steps = 10
for step in range(steps):
    lo = 20000 * first + step * 2000
    found += sum(1 for n in range(lo, lo + 2000) if n > 1 and all(n % d for d in range(2, int(n ** 0.5) + 1)))
    print(f"frames {first}-{last}: {found} primes so far, {100 * (step + 1) // steps}%", flush=True)
    time.sleep(0.08)
"""

RENDER = r"""
import sys, time
frame = int(sys.argv[1])
w, h, rows = 96, 64, []
zoom = 1.0 + 0.15 * frame
for y in range(h):
    row = bytearray()
    for x in range(w):
        c = complex(-0.745 + (x - w / 2) / (w * zoom), 0.11 + (y - h / 2) / (h * zoom))
        z, n = 0j, 0
        while abs(z) <= 2 and n < 64:
            z, n = z * z + c, n + 1
        row.append(255 - 4 * (n - 1))
    rows.append(bytes(row))
    if y % 8 == 7:
        print(f"frame {frame}: row {y + 1}/{h} {100 * (y + 1) // h}%", flush=True)
        time.sleep(0.06)
with open(f"frame_{frame:04d}.pgm", "wb") as f:
    f.write(b"P5 %d %d 255\n" % (w, h) + b"".join(rows))
"""

ENCODE = r"""
import glob, hashlib, sys, time
frames = sorted(glob.glob("frame_*.pgm"))
digest = hashlib.sha256()
for i, name in enumerate(frames):
    digest.update(open(name, "rb").read())
    print(f"{name} {100 * (i + 1) // len(frames)}%", flush=True)
    time.sleep(0.03)
open("movie.sha256", "w").write(digest.hexdigest() + "\n")
print(f"{len(frames)} frames, sha256 {digest.hexdigest()[:16]}", flush=True)
"""


def demo_job(python: str, frames: int, workdir: Path) -> dict[str, Any]:
    """The sample job: three blocks with whole-block and frame-by-frame dependencies."""
    common = {"working_dir": str(workdir), "retries": 1}
    return {
        "name": "demo",
        "priority": 120,
        "blocks": [
            {"name": "simulate", "command": [python, "-c", SIMULATE, "{first}", "{last}"],
             "frames": {"first": 1, "last": frames, "per_task": 3}, **common},
            {"name": "render", "command": [python, "-c", RENDER, "{frame}"], "frames": {"first": 1, "last": frames},
             "depends_on_frames": ["simulate"], "order": "middle", **common},
            {"name": "encode", "command": [python, "-c", ENCODE], "tasks": [{"name": "movie"}],
             "depends_on": ["render"], **common},
        ],
    }


def _stop_workers(procs: list[subprocess.Popen[bytes]], timeout: float = 10.0) -> None:
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def run_demo(workers: int = 4, folder: Path | None = None, frames: int = 12, timeout: float = 600.0) -> int:
    """Run the demo; returns 0 when the job is done, 1 if it ended in error or did not finish in time."""
    from farmhand.logs import setup_logging
    from farmhand.server import FarmServer, ServerConfig

    temporary = folder is None
    root = Path(tempfile.mkdtemp(prefix="farmhand-demo-")) if folder is None else folder
    root.mkdir(parents=True, exist_ok=True)
    out = root / "frames"
    out.mkdir(exist_ok=True)
    log_file = (root / "server.log").open("a", encoding="utf-8")
    farm_logger = logging.getLogger("farmhand")
    saved_logging = (list(farm_logger.handlers), farm_logger.level, farm_logger.propagate)
    setup_logging("info", stream=log_file)
    config = ServerConfig(db=root / "farm.db", port=0, http_port=0, heartbeat_s=1.0, zombie_s=10.0, reclaim_s=10.0)
    procs: list[subprocess.Popen[bytes]] = []
    server = FarmServer(config)
    code = 1
    try:
        server.start()
        admin_file = config.admin_token_path
        client = ApiClient(server.api_url, admin_file.read_text(encoding="utf-8").strip())
        print(f"farmhand demo in {root}: server {server.worker_address}, client API {server.api_url}")
        env = dict(os.environ, FARMHAND_TOKEN=server.farm_token)
        worker_log = (root / "workers.log").open("ab")
        for i in range(workers):
            cmd = [
                sys.executable, "-m", "farmhand.workers.worker", "--server", server.worker_address,
                "--name", f"demo-{i + 1}", "--capacity", "1", "--progress-interval", "0.2", "--log-level", "WARNING",
                "--state-dir", str(root / "workers"),
            ]
            procs.append(subprocess.Popen(cmd, env=env, stdout=worker_log, stderr=worker_log, stdin=subprocess.DEVNULL,
                                          start_new_session=True))
        worker_log.close()
        (job_id,) = client.submit(json.dumps(demo_job(sys.executable, frames, out)).encode())
        print(f"submitted job {job_id} 'demo': simulate -> render (frame by frame) -> encode, on {workers} worker(s)")
        code = _follow(client, job_id, timeout)
        runs = client.runs(job_id)
        per_render: dict[str, int] = {}
        for r in runs:
            per_render[r["render"]] = per_render.get(r["render"], 0) + 1
        shares = ", ".join(f"{name} {n}" for name, n in sorted(per_render.items()))
        print(f"{len(runs)} runs ({shares})")
        csv_path = root / "tasks.csv"
        csv_path.write_text(client.runs_csv(), encoding="utf-8")
        if not temporary:
            print(f"images in {out}, run log in {csv_path}, logs in {root}; the store stays readable:")
            print(f"  farmhand export-runs --db {config.db} --out -")
    except ApiError as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the demo", file=sys.stderr)
        code = 130
    finally:
        _stop_workers(procs)
        server.stop()
        farm_logger.handlers[:], farm_logger.level, farm_logger.propagate = saved_logging  # as the caller had it
        log_file.close()
        if temporary:
            shutil.rmtree(root, ignore_errors=True)
    return code


def _follow(client: ApiClient, job_id: int, timeout: float) -> int:
    """Show the job's progress until it is done or in error; returns the exit code."""
    detail = client.job(job_id)
    total = detail["tasks_total"]
    bar = ProgressLine(total, "demo", stream=sys.stdout, every_s=0.2)
    deadline = time.monotonic() + timeout
    while True:
        detail = client.job(job_id)
        tasks = detail["tasks"]  # the first page: enough to name a few running tasks
        done = sum(b["counts"].get("done", 0) + b["counts"].get("skipped", 0) for b in detail["blocks"])
        parts = []
        for b in detail["blocks"]:
            counts = b["counts"]
            n = sum(counts.values())
            parts.append(f"{b['name']} {counts.get('done', 0)}/{n}")
        running = [t for t in tasks if t["state"] == "running"]
        now = ", ".join(f"{t['name']}@{t['render']} {max(t['percent'], 0)}%" for t in running[:4])
        bar.update(done, " | ".join(parts) + (f" | running {now}" if now else ""))
        if detail["state"] in ("done", "error") or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    bar.close(done, " | ".join(parts))
    if detail["state"] == "done":
        print(f"job {job_id} done: {done}/{total} tasks")
        return 0
    print(f"job {job_id} {detail['state'] if detail['state'] != 'active' else 'did not finish in time'}",
          file=sys.stderr)
    return 1
