"""The SimPy runtime's own floor: what a simulated task would cost with a core that did nothing.

Each render's chain of trivial relays carries one message around the same path a task takes in ``farmhand
sim`` (worker -> render -> job -> solver -> job -> render -> worker, then a timer for the run): six messages
and the timer's firing, seven deliveries per task, every handler only forwarding what it got. The rate it
reaches bounds any simulation on this runtime from above; the gap between it and
``bench/test_bench_sim.py``'s rate is the core's (and the virtual worker's) own work. Run
``python bench/runtime_floor.py`` beside the benchmark.
"""

from __future__ import annotations

import gc
import time
from itertools import pairwise

from farmhand.core.messages import Message, Tick
from farmhand.core.runtime import Context, MessageRouter
from farmhand.sim.runtime import SimRuntime


class Relay(MessageRouter):
    """Forwards every Tick to the next address."""

    def __init__(self, to: str) -> None:
        self.to = to
        self._handlers = {Tick: self._on_tick}

    def _on_tick(self, msg: Message, ctx: Context) -> None:
        ctx.send(self.to, msg)


class Runner(MessageRouter):
    """The worker's end: starts a 'run' (a timer) when the message comes round, reports when it fires."""

    def __init__(self, render: str, left: list[int]) -> None:
        self.render = render
        self.left = left
        self._handlers = {Tick: self._on_tick}

    def _on_tick(self, msg: Tick, ctx: Context) -> None:
        if msg.name == "finish":
            ctx.send(self.render, Tick(ctx.next_id(), "report"))
        elif self.left[0] > 0:
            self.left[0] -= 1
            ctx.set_timer(("run", msg.id), ctx.now + 1.0, Tick(ctx.next_id(), "finish"))


def measure(renders: int = 500, tasks: int = 100_000) -> dict[str, float]:
    """Run ``tasks`` trivial tasks on ``renders`` chains; task runs per CPU second of the loop."""
    rt = SimRuntime()
    left = [tasks]
    for i in range(renders):
        worker, render = f"worker/{i}", f"render/{i}"
        hops = [render, f"job/{i}", f"solver/{i}", f"job/{i}/again", f"render/{i}/again", worker]
        for here, there in pairwise(hops):
            rt.spawn(here, Relay(there))
        rt.spawn(worker, Runner(render, left), remote=True)
        rt.send_at(0.0, worker, Tick(rt.next_id(), "go"))
    enabled = gc.isenabled()
    gc.disable()  # as farmhand sim's loop does
    cpu = time.process_time()
    try:
        rt.run()
    finally:
        if enabled:
            gc.enable()
    seconds = time.process_time() - cpu
    return {"task_runs": tasks, "cpu_s": seconds, "runs_per_cpu_s": tasks / seconds,
            "us_per_task": seconds / tasks * 1e6, "deliveries": rt.delivered}


if __name__ == "__main__":
    for key, value in measure().items():
        print(f"  {key:<16} {value:,.3f}")
