"""Benchmarks of many renders over TCP (issue: thousands of renders). The server runs in this process, the
fake workers (``bench/tcp_load.py``) in another, so this process's CPU time over a window is the server's.

- heartbeats: 5000 connections heartbeating every second; gate: the server uses at most 25% of one core.
  1000 connections are measured in the same test, and the cost of one heartbeat at 5000 against 1000 is
  printed (linear growth: about 1). Short mode: 400 and 2000 connections, and a loose regression gate:
  the server under 25% of a core at 2000, and a heartbeat at 2000 no dearer than 2.5 times one at 400.
- online: 10,000 workers (short mode 1000) connect, heartbeat every second and stay online for more than
  two zombie times (10 s; short mode 3 s); gate: no refusal, no connection error, no lost connection, no
  render declared lost, every render online at the end.

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
from typing import Any

import pytest
from conftest import SHORT
from tcp_harness import TOKEN, Load, cpu_seconds, raise_fd_limit

from farmhand.actors.runtime import PykkaRuntime
from farmhand.core.render import ONLINE, RenderBehaviour
from farmhand.core.runtime import render_address
from farmhand.transport.serve import ServerHandle, start_server

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="loopback load test for Linux")

HOSTING = os.environ.get("FARMHAND_BENCH_RENDER_HOSTING", "shards")
GATED = HOSTING == "shards"


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


def _heartbeats(connections: int, window: float, zombie: float = 4.0) -> dict[str, Any]:
    """Server CPU over ``window`` seconds while ``connections`` fake workers heartbeat every second."""
    raise_fd_limit(connections + 512)
    server, runtime = _server(zombie)
    try:
        with Load(server, connections, duration=window + zombie + 60, prefix=f"hb{connections}-") as load:
            ready = load.ready(timeout=180)
            time.sleep(zombie + 1.5)  # warm-up: the first zombie timers come due, renders are steady
            messages0, cpu0, t0 = server.runtime.messages, cpu_seconds(), time.monotonic()
            time.sleep(window)
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
        "online": online, "threads": threads, "connect_s": ready.get("connect_s"), "generator": stats,
    }


def _line(r: dict[str, Any]) -> str:
    return (
        f"{r['connections']} connections heartbeating every 1 s: server CPU {r['server_core_share']:.1%} of one core"
        f" over {r['window_s']} s ({r['messages_per_s']:,.0f} messages/s, {r['cpu_us_per_message']:.0f} us each;"
        f" {r['threads']} threads; connected in {r['connect_s']} s)"
    )


def test_heartbeats_of_5000_connections_cost_under_a_quarter_core(benchmark) -> None:  # type: ignore[no-untyped-def]
    small_n, big_n = (400, 2000) if SHORT else (1000, 5000)
    window = 5.0 if SHORT else 15.0
    small = _heartbeats(small_n, window)
    big = _heartbeats(big_n, window)
    growth = big["cpu_us_per_message"] / small["cpu_us_per_message"]
    benchmark.extra_info.update({"hosting": HOSTING, "small": small, "big": big, "cost_growth": growth})
    print(f"\nrender hosting: {HOSTING}\n{_line(small)}\n{_line(big)}\ncost of a heartbeat at {big_n} / at {small_n}:"
          f" {growth:.2f}; generator at {big_n}: {big['generator']}")
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    for r in (small, big):
        gen = r["generator"]
        assert gen.get("refused") == 0 and gen.get("connect_errors") == 0 and r["online"] == r["connections"], r
        assert r["messages_per_s"] > 0.9 * r["connections"], f"only {r['messages_per_s']:.0f} messages/s arrived"
    if GATED:
        assert big["server_core_share"] <= 0.25, f"{big['server_core_share']:.1%} of a core for {big_n} connections"
        if SHORT:
            assert growth <= 2.5, f"a heartbeat at {big_n} connections costs {growth:.2f}x one at {small_n}"


def test_10000_workers_connect_and_stay_online(benchmark) -> None:  # type: ignore[no-untyped-def]
    workers = 1000 if SHORT else 10_000
    zombie = 3.0 if SHORT else 10.0
    stay = 2 * zombie + 5
    raise_fd_limit(workers + 512)
    server, runtime = _server(zombie)
    names = [f"on{i:05d}" for i in range(workers)]
    try:
        with Load(server, workers, duration=stay + 120, prefix="on", ready_timeout=240) as load:
            ready = load.ready(timeout=300)
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
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    assert stats.get("refused") == 0 and stats.get("connect_errors") == 0, stats
    assert stats.get("lost") == 0 and stats.get("rejoins") == 0 and stats.get("open") == workers, stats
    assert online == workers and renders_online == workers, f"{online} connected, {renders_online} online"
