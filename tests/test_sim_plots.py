"""The simulation figures: a sample of renders spread over the farm, one colour per user in every figure, and a
Gantt chart drawn with one collection per lane and user (not one per run, which took many seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest
from matplotlib.axes import Axes

from farmhand.core.policies import make_policy
from farmhand.sim import plots
from farmhand.sim.run import run_sim
from farmhand.sim.workload import GeneratorOptions, generate


def test_the_gantt_sample_spreads_over_the_whole_farm() -> None:
    names = [f"r{i:03d}" for i in range(1, 51)]
    sample = plots._sample(names, 20)
    assert len(sample) == 20 and sample[0] == "r001" and sample[-1] >= "r048"
    assert plots._sample(names[:3], 20) == names[:3]


def test_user_colours_do_not_depend_on_usage_order() -> None:
    assert plots._user_colours(["b", "a", "c"]) == plots._user_colours(["c", "a", "b"])
    colours = plots._user_colours([f"u{i}" for i in range(10)])
    assert len(set(colours.values())) == 10


def test_gantt_draws_one_collection_per_lane_user_and_outcome(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wl = generate(GeneratorOptions(jobs=40, tasks=20, renders=8, users=3, arrival="all"), seed=1)
    result = run_sim(wl, make_policy("fifo"), seed=1)
    calls = []
    real = Axes.broken_barh

    def counting(self: Axes, xranges: list[tuple[float, float]], *args: object, **kwargs: object) -> object:
        calls.append(len(xranges))
        return real(self, xranges, *args, **kwargs)

    monkeypatch.setattr(Axes, "broken_barh", counting)
    runs = plots._Runs(result.records, {})
    plots.plot_gantt(runs, result.renders, 8, tmp_path / "gantt.png", "test")
    assert sum(calls) == len(result.records) == 800  # every run drawn
    assert len(calls) <= 8 * 3 * 2  # renders x users x (done, failed), one lane each
