"""The fault and fuzz campaign, long form: rounds of it against a real server, each judged on every check.

    .venv/bin/python bench/soak.py --rounds 3            # 3 rounds of 1000 tasks, 6 server kills, 4 worker kills
    .venv/bin/python bench/soak.py --rounds 1 --tasks 2000 --server-kills 10 --out soak-out

Each round runs :func:`campaign.run_campaign` (``tests/e2e/campaign.py``, the same harness as the short e2e
test ``tests/e2e/test_campaign.py``) in its own folder with its own seed, and prints its timeline and checks.
Exit code 0 when every check passed in every round, 1 otherwise; the folders of failed rounds are kept (all of
them with ``--keep``) with the server and worker logs, the side-effect log and the store.
"""

from __future__ import annotations

import argparse
import collections
import functools
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "e2e"))

from campaign import CHECKS, CampaignConfig, run_campaign


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The soak's options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=1, help="campaign rounds (default 1)")
    p.add_argument("--tasks", type=int, default=1000, help="tasks of each round's job (default 1000)")
    p.add_argument("--workers", type=int, default=4, help="worker processes (default 4)")
    p.add_argument("--task-sleep", type=float, default=0.2, help="seconds each task sleeps (default 0.2)")
    p.add_argument("--server-kills", type=int, default=6, help="SIGKILLs of the server per round (default 6)")
    p.add_argument("--worker-kills", type=int, default=4, help="SIGKILLs of a worker per round (default 4)")
    p.add_argument("--flood", type=int, default=200, help="simultaneous API connections (default 200)")
    p.add_argument("--no-attacks", action="store_true", help="faults only: no fuzzing, no API attacks")
    p.add_argument("--seed", type=int, default=1, help="seed of the first round (default 1; then +1 a round)")
    p.add_argument("--rss-limit", type=float, default=500.0, help="server memory bound in MiB (default 500)")
    p.add_argument("--out", type=Path, help="folder for the rounds (default: a temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep every round's folder, not only the failed ones")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.tasks < 1 or args.workers < 1:
        p.error("--rounds, --tasks and --workers must be >= 1")
    return args


def say(prefix: str, line: str) -> None:
    """Print one line of a round's timeline at once."""
    print(f"{prefix} {line}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the rounds; 0 if every check passed in each."""
    args = parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="farmhand-soak-"))
    out.mkdir(parents=True, exist_ok=True)
    failures: collections.Counter[str] = collections.Counter()
    started = time.monotonic()
    for n in range(1, args.rounds + 1):
        folder = out / f"round-{n}"
        shutil.rmtree(folder, ignore_errors=True)
        config = CampaignConfig(
            folder=folder, tasks=args.tasks, workers=args.workers, task_sleep=args.task_sleep,
            server_kills=args.server_kills, worker_kills=args.worker_kills, attacks=not args.no_attacks,
            flood=args.flood, seed=args.seed + n - 1, rss_limit_mib=args.rss_limit,
            job_timeout_s=120 + 3 * args.tasks * (args.task_sleep + 0.1) / args.workers,
            say=functools.partial(say, f"[round {n}]"),
        )
        print(f"[round {n}] {folder} (seed {config.seed})", flush=True)
        report = run_campaign(config)
        print(report.describe(), flush=True)
        for check in report.failed:
            failures[check.name] += 1
        if not report.failed and not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    minutes = (time.monotonic() - started) / 60
    if not failures and not args.keep and not args.out:
        shutil.rmtree(out, ignore_errors=True)
    kept = f"folders under {out}" if out.exists() else "every check passed, folders removed"
    print(f"\n{args.rounds} round(s) in {minutes:.1f} min; {kept}")
    for name in CHECKS:
        print(f"  {name:22s} {'ok' if not failures[name] else f'FAILED in {failures[name]} round(s)'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
