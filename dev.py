#!/usr/bin/env python3
"""farmhand's two quick-start commands, on a fresh machine with only Python 3.11+ and the package registries.

    python3 dev.py demo    # install what is needed into .venv, then run the demo farm (farmhand demo)
    python3 dev.py test    # install what is needed into .venv, then lint, type-check and run every test

Anything after the command is passed on (``python3 dev.py test -k solver``, ``python3 dev.py demo --seed 3``).
``python3 dev.py farmhand ARGS`` runs the ``farmhand`` command inside the environment.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / ("python.exe" if os.name == "nt" else "python")
STAMP = VENV / ".farmhand-installed"


def _run(cmd: list[str], **kw: object) -> int:
    print("+ " + " ".join(str(c) for c in cmd), flush=True)
    return subprocess.call([str(c) for c in cmd], cwd=ROOT, **kw)  # type: ignore[arg-type]


def ensure_env() -> None:
    """Create .venv and install farmhand (editable, with its dev extras) when pyproject.toml changed."""
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if PY.exists() and STAMP.exists() and STAMP.read_text().strip() == want:
        return
    if not PY.exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    if _run([PY, "-m", "pip", "install", "--quiet", "--upgrade", "pip"]) != 0:
        sys.exit("could not upgrade pip")
    if _run([PY, "-m", "pip", "install", "--quiet", "-e", ".[dev]"]) != 0:
        sys.exit("could not install farmhand and its dependencies")
    STAMP.write_text(want + "\n")


def demo(args: list[str]) -> int:
    """The main job: a real farm on this machine (server, worker processes, a job of real small work)."""
    return _run([BIN / "farmhand", "demo", *args])


def test(args: list[str]) -> int:
    """Lint, type-check and run the whole suite (unit, property, end-to-end, short benchmarks)."""
    for step in (
        [BIN / "ruff", "check", "."],
        [BIN / "mypy", "--strict", "core"],
    ):
        if _run(step) != 0:
            return 1
    out = ROOT / "bench-out"
    out.mkdir(exist_ok=True)
    env = dict(os.environ, FARMHAND_BENCH_SHORT=os.environ.get("FARMHAND_BENCH_SHORT", "1"))
    code = _run(
        [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--benchmark-json={out / 'benchmarks.json'}", *args],
        env=env,
    )
    if code == 5:
        print("pytest collected no tests: that is a failure here", file=sys.stderr)
        return 1
    return code


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in ("demo", "test", "farmhand"):
        print(__doc__, file=sys.stderr)
        return 2
    command, rest = sys.argv[1], sys.argv[2:]
    ensure_env()
    if command == "farmhand":
        return _run([BIN / "farmhand", *rest])
    return demo(rest) if command == "demo" else test(rest)


if __name__ == "__main__":
    sys.exit(main())
