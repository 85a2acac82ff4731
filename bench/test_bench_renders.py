"""Benchmarks of many renders over TCP (issue: thousands of renders). The server runs in this process, the
fake workers (``bench/tcp_load.py``) in another, so this process's CPU time over a window is the server's.

- heartbeats: 5000 connections heartbeating every second, and 1000 in the same test (short mode 2000 and
  400). Row: the larger run's measurement window (wall, 15 s; short mode 5 s). Gates: the cost of one
  heartbeat (server CPU seconds over the window / heartbeats due in it) at 5000 against 1000, a ratio
  measured in the same run, at most 1.5 (linear growth: about 1; short mode 2.5); and per heartbeat at the
  larger size at most 50 us, the target (25% of one core for 5000 connections) divided by its 5000
  heartbeats a second: in full mode that is the target itself, in short mode the loose floor is 250 us
  (25% of a core for 1000 connections, as ``test_bench_tcp.py``; at 2000 connections the server's fixed
  costs still weigh on each heartbeat).
- online: 10,000 workers (short mode 1000) connect, heartbeat every second and stay online for more than
  two zombie times (10 s; short mode 3 s). Row: from launching the load generator to every worker welcomed.
  Gate: no refusal, no connection error, no lost connection, no render declared lost, every render online
  at the end (counts, no timing).

    FARMHAND_BENCH_SHORT=0 pytest bench/test_bench_renders.py -s -p no:cacheprovider

``FARMHAND_BENCH_RENDER_HOSTING=actors`` hosts each render in an actor of its own, as the runtime did before
render shards, and ``FARMHAND_BENCH_RENDER_HOSTING=shards=N`` on N shards instead of the default number (for
comparisons: the figures are printed, the speed gates apply only to the default hosting).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from conftest import SHORT, run_once
from tcp_harness import TOKEN, Load, cpu_seconds, raise_fd_limit

from farmhand.actors.runtime import PykkaRuntime
from farmhand.core.render import ONLINE, RenderBehaviour
from farmhand.core.runtime import render_address
from farmhand.transport.serve import ServerHandle, start_server

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="loopback load test for Linux")

HOSTING = os.environ.get("FARMHAND_BENCH_RENDER_HOSTING", "shards")
GATED = HOSTING == "shards"
#: the target, 25% of one core for 5000 connections heartbeating every second, per heartbeat; short mode's floor
HEARTBEAT_BUDGET_US = 250.0 if SHORT else 50.0
GROWTH_GATE = 2.5 if SHORT else 1.5


def _runtime() -> PykkaRuntime | None:
    if HOSTING == "actors":
        return PykkaRuntime(shards=0)
    if HOSTING.startswith("shards="):
        return PykkaRuntime(shards=int(HOSTING.removeprefix("shards=")))
    return None  # the server's own, with the default number of shards


def _server(zombie: float) -> tuple[ServerHandle, PykkaRuntime | None]:
    """A server with 1 s heartbeats, hosting its renders as ``HOSTING`` says."""
    runtime = _runtime()
    try:
        server = start_server("127.0.0.1", 0, TOKEN, heartbeat_s=1.0, zombie_s=zombie, runtime=runtime)
    except BaseException:
        if runtime is not None:
            runtime.stop()
        raise
    return server, runtime


def _stop(server: ServerHandle, runtime: PykkaRuntime | None) -> None:
    server.stop()
    if runtime is not None:
        runtime.stop()


def _renders_online(server: ServerHandle, names: list[str]) -> int:
    count = 0
    for name in names:
        render = server.runtime.behaviour(render_address(name))
        if isinstance(render, RenderBehaviour) and render.state == ONLINE:
            count += 1
    return count


def _heartbeats(
    connections: int, window: float, zombie: float = 4.0, wait: Callable[[float], object] = time.sleep
) -> dict[str, Any]:
    """Server CPU over ``window`` seconds (``wait(window)``) while ``connections`` fake workers heartbeat every 1 s."""
    raise_fd_limit(connections + 512)
    server, runtime = _server(zombie)
    try:
        with Load(server, connections, duration=window + zombie + 60, prefix=f"hb{connections}-") as load:
            ready = load.ready(timeout=180)
            time.sleep(zombie + 1.5)  # warm-up: the first zombie timers come due, renders are steady
            messages0, cpu0, t0 = server.runtime.messages, cpu_seconds(), time.monotonic()
            wait(window)
            messages1, cpu1, t1 = server.runtime.messages, cpu_seconds(), time.monotonic()
            online = len(server.gateway.by_name)
            threads = threading.active_count()
            stats = load.finish()
    finally:
        _stop(server, runtime)
    elapsed = t1 - t0
    messages = messages1 - messages0
    return {
        "connections": connections, "window_s": round(elapsed, 2), "server_core_share": (cpu1 - cpu0) / elapsed,
        "messages_per_s": messages / elapsed, "cpu_us_per_message": (cpu1 - cpu0) / max(messages, 1) * 1e6,
        "cpu_us_per_heartbeat": (cpu1 - cpu0) / (connections * elapsed) * 1e6,
        "online": online, "threads": threads, "connect_s": ready.get("connect_s"), "generator": stats,
    }


def _line(r: dict[str, Any]) -> str:
    return (
        f"{r['connections']} connections heartbeating every 1 s: server CPU {r['server_core_share']:.1%} of one core"
        f" over {r['window_s']} s ({r['messages_per_s']:,.0f} messages/s,"
        f" {r['cpu_us_per_heartbeat']:.0f} us a heartbeat; {r['threads']} threads; connected in {r['connect_s']} s)"
    )


def test_heartbeats_of_5000_connections_cost_under_a_quarter_core(benchmark) -> None:  # type: ignore[no-untyped-def]
    small_n, big_n = (400, 2000) if SHORT else (1000, 5000)
    window = 5.0 if SHORT else 15.0
    small = _heartbeats(small_n, window)
    big = _heartbeats(big_n, window, wait=lambda w: run_once(benchmark, lambda: time.sleep(w)))
    growth = big["cpu_us_per_heartbeat"] / small["cpu_us_per_heartbeat"]
    benchmark.extra_info.update({"hosting": HOSTING, "small": small, "big": big, "cost_growth": growth})
    print(f"\nrender hosting: {HOSTING}\n{_line(small)}\n{_line(big)}\ncost of a heartbeat at {big_n} / at {small_n}:"
          f" {growth:.2f}; generator at {big_n}: {big['generator']}")
    for r in (small, big):
        gen = r["generator"]
        assert gen.get("refused") == 0 and gen.get("connect_errors") == 0 and r["online"] == r["connections"], r
        assert r["messages_per_s"] > 0.9 * r["connections"], f"only {r['messages_per_s']:.0f} messages/s arrived"
    if GATED:
        assert growth <= GROWTH_GATE, (
            f"a heartbeat at {big_n} connections costs {growth:.2f}x one at {small_n} (gate: <= {GROWTH_GATE})"
        )
        assert big["cpu_us_per_heartbeat"] <= HEARTBEAT_BUDGET_US, (
            f"a heartbeat cost the server {big['cpu_us_per_heartbeat']:.0f} us of CPU at {big_n} connections"
            f" ({big['server_core_share']:.1%} of a core; gate: <= {HEARTBEAT_BUDGET_US:.0f} us)"
        )


def test_10000_workers_connect_and_stay_online(benchmark) -> None:  # type: ignore[no-untyped-def]
    workers = 1000 if SHORT else 10_000
    zombie = 3.0 if SHORT else 10.0
    stay = 2 * zombie + 5
    raise_fd_limit(workers + 512)
    server, runtime = _server(zombie)
    names = [f"on{i:05d}" for i in range(workers)]

    def connect() -> tuple[Load, dict[str, Any]]:  # the row: launching the generator until all are welcomed
        load = Load(server, workers, duration=stay + 120, prefix="on", ready_timeout=240)
        try:
            return load, load.ready(timeout=300)
        except BaseException:
            load.__exit__()
            raise

    try:
        load, ready = run_once(benchmark, connect)
        with load:
            cpu0, t0 = cpu_seconds(), time.monotonic()
            time.sleep(stay)
            cpu1, t1 = cpu_seconds(), time.monotonic()
            online = len(server.gateway.by_name)
            renders_online = _renders_online(server, names)
            threads = threading.active_count()
            stats = load.finish()
    finally:
        _stop(server, runtime)
    share = (cpu1 - cpu0) / (t1 - t0)
    benchmark.extra_info.update(
        {"hosting": HOSTING, "workers": workers, "connect_s": ready.get("connect_s"), "stay_s": t1 - t0,
         "server_core_share": share, "connected": online, "renders_online": renders_online, "threads": threads,
         "generator": stats}
    )
    print(
        f"\nrender hosting: {HOSTING}\n{workers} workers connected in {ready.get('connect_s')} s; after {t1 - t0:.0f} s"
        f" (zombie time {zombie:g} s) {online} connected, {renders_online} renders online; server CPU {share:.1%}"
        f" of one core, {threads} threads; generator {stats}"
    )
    assert stats.get("refused") == 0 and stats.get("connect_errors") == 0, stats
    assert stats.get("lost") == 0 and stats.get("rejoins") == 0 and stats.get("open") == workers, stats
    assert online == workers and renders_online == workers, f"{online} connected, {renders_online} online"
