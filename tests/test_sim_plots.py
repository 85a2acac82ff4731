"""The simulation figures: a sample of renders spread over the farm, one colour per user in every figure, and a
Gantt chart drawn with one collection per lane and user (not one per run, which took many seconds)."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.container import BarContainer
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from farmhand.core.policies import make_policy
from farmhand.sim import plots, sweep_plots
from farmhand.sim.run import SimResult, run_sim
from farmhand.sim.sweep import METRICS, RunResult, RunSpec, mean_ci
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


# ------------------------------------------------------------------------------- what the figures draw
# The figures are inspected as objects (titles, axis labels, the series drawn and their data), not as files: a
# figure that draws the wrong data, or nothing, still makes a PNG of a plausible size.


@pytest.fixture(scope="module")
def sim() -> SimResult:
    """40 jobs x 20 tasks, all submitted at 0, on 8 one-slot renders: the farm is full until the queue drains."""
    wl = generate(GeneratorOptions(jobs=40, tasks=20, renders=8, users=3, arrival="all"), seed=1)
    return run_sim(wl, make_policy("fifo"), seed=1)


@pytest.fixture(scope="module")
def drawn(sim: SimResult) -> dict[str, Figure]:
    return dict(plots.figures(sim.records, sim.renders, gantt_renders=8, title="the run"))


def test_every_figure_is_built_in_file_order(drawn: dict[str, Figure]) -> None:
    assert list(drawn) == ["throughput.png", "utilization.png", "user_share.png", "wait_cdf.png", "gantt.png"]


def test_the_throughput_figure_counts_every_completed_task(sim: SimResult, drawn: dict[str, Figure]) -> None:
    done = [r for r in sim.records if r.state == "done"]
    t0 = min(r.submission_time for r in sim.records)
    makespan = max(r.finish_time for r in sim.records) - t0
    assert 600 < makespan <= 6 * 3600  # about 99 minutes: drawn in minutes
    scale, unit = 60.0, "min"
    top, bottom = drawn["throughput.png"].axes
    assert top.get_title() == "Throughput: completed tasks over time (the run)"
    assert top.get_ylabel() == "completed tasks"
    assert bottom.get_ylabel() == "completion rate (tasks/h)"
    assert bottom.get_xlabel() == f"simulated time since first submission ({unit})"
    (cumulative,) = top.get_lines()
    y = np.asarray(cumulative.get_ydata(), dtype=float)
    x = np.asarray(cumulative.get_xdata(), dtype=float)
    assert y[0] == 0 and y[-1] == len(done) == 800 and np.all(np.diff(y) == 1)
    assert x[0] == 0 and x[-1] == pytest.approx(max(r.finish_time for r in done) / scale - t0 / scale)
    assert np.all(np.diff(x) >= 0)
    bars = [cast(Rectangle, b) for b in bottom.patches]
    assert 10 <= len(bars) <= 100
    width_h = bars[0].get_width() * scale / 3600.0
    assert sum(b.get_height() * width_h for b in bars) == pytest.approx(len(done))  # rate x width = tasks
    assert bars[0].get_x() == 0 and bars[-1].get_x() + bars[-1].get_width() == pytest.approx(makespan / scale)


def test_the_utilization_figure_shows_the_farm_in_use(sim: SimResult, drawn: dict[str, Figure]) -> None:
    (ax,) = drawn["utilization.png"].axes
    assert ax.get_title() == "Utilisation over time (the run)"
    assert ax.get_ylabel() == "capacity in use (% of farm)"
    assert ax.get_ylim() == (0, 105)
    use, mean = ax.get_lines()  # the step of capacity in use and its time average
    y = np.asarray(use.get_ydata(), dtype=float)
    assert len(y) == plots.GRID_POINTS and y.min() >= 0 and y.max() == pytest.approx(100.0)  # all 8 renders busy
    busy = sum((r.finish_time - r.starting_time) for r in sim.records)
    t0 = min(r.submission_time for r in sim.records)
    span = max(r.finish_time for r in sim.records) - t0
    assert float(np.mean(y)) == pytest.approx(busy / (8 * span) * 100, abs=1.0)  # sampled on the grid
    assert mean.get_label() == f"time average {np.mean(y):.1f} %"
    assert np.asarray(mean.get_ydata(), dtype=float)[0] == pytest.approx(float(np.mean(y)))


def test_the_user_share_figure_stacks_one_layer_per_user(sim: SimResult, drawn: dict[str, Figure]) -> None:
    (ax,) = drawn["user_share.png"].axes
    assert ax.get_title() == "Running share per user, stacked (the run)"
    assert ax.get_ylabel() == "running share of the farm (% of capacity)"
    assert ax.get_ylim() == (0, 105)
    layers = ax.collections
    assert len(layers) == 3
    legend = ax.get_legend()
    assert legend is not None
    assert sorted(t.get_text() for t in legend.get_texts()) == ["user00", "user01", "user02"]
    tops = [np.asarray(c.get_paths()[0].vertices)[:, 1] for c in layers]
    assert max(float(t.max()) for t in tops) == pytest.approx(100.0)  # the stack reaches the full farm
    assert min(float(t.min()) for t in tops) >= 0


def test_the_wait_cdf_figure_has_one_curve_per_user_ending_at_one(sim: SimResult, drawn: dict[str, Figure]) -> None:
    (ax,) = drawn["wait_cdf.png"].axes
    assert ax.get_title() == "Task wait per user (the run)"
    assert ax.get_ylabel() == "fraction of the user's tasks (CDF)"
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == ["user00", "user01", "user02"]
    waits = {u: [r.starting_time - r.submission_time for r in sim.records if r.user == u and r.attempt == 1]
             for u in ("user00", "user01", "user02")}
    assert 600 < max(max(w) for w in waits.values()) <= 6 * 3600  # drawn in minutes
    scale, unit = 60.0, "min"
    assert ax.get_xlabel() == f"task wait: first start - job submission ({unit})"
    for line in lines:
        x = np.asarray(line.get_xdata(), dtype=float)
        y = np.asarray(line.get_ydata(), dtype=float)
        wait = waits[str(line.get_label())]
        assert len(x) == len(wait) and y[-1] == 1.0 and np.all(np.diff(y) > 0)
        assert x[0] == pytest.approx(min(wait) / scale) and x[-1] == pytest.approx(max(wait) / scale)


def test_the_gantt_figure_names_its_renders(sim: SimResult, drawn: dict[str, Figure]) -> None:
    (ax,) = drawn["gantt.png"].axes
    assert ax.get_title() == "Runs on 8 of 8 renders (the run)"
    assert ax.get_ylabel() == "render"
    assert [t.get_text() for t in ax.get_yticklabels()] == [f"r{i:03d}" for i in range(1, 9)]
    bars = sum(len(c.get_paths()) for c in ax.collections)
    assert bars == len(sim.records) == 800


def _sweep_results() -> list[RunResult]:
    """Two policies x two values of ``renders`` x three seeds, with known metrics: fifo's throughput is 100,
    110, 120 (mean 110) at 4 renders and twice that at 8; priority's is 200 at every seed and value."""
    results = []
    index = 0
    for renders, factor in (("4", 1.0), ("8", 2.0)):
        for policy in ("fifo", "priority"):
            for seed in (1, 2, 3):
                value = (90.0 + 10 * seed) * factor if policy == "fifo" else 200.0
                summary = {m.key: 0.5 for m in METRICS} | {"throughput_tasks_per_hour": value}
                spec = RunSpec(index, policy, seed, (("renders", renders),), ("renders",))
                results.append(RunResult(spec, summary, ok=True))
                index += 1
    return results


def test_the_sweep_comparison_figure_draws_each_policys_mean_and_interval() -> None:
    results = _sweep_results()
    drawn = dict(sweep_plots.sweep_figures(results, ["renders"], "the sweep"))
    assert list(drawn) == ["comparison.png", "by_renders.png"]
    fig = drawn["comparison.png"]
    assert fig.get_suptitle().startswith("the sweep\nmean over seeds")
    panels = [ax for ax in fig.axes if ax.axison]
    assert [ax.get_title() for ax in panels] == [m.title for m in METRICS]
    assert [ax.get_ylabel() for ax in panels] == [m.axis_label for m in METRICS]
    throughput = panels[0]
    series = throughput.containers
    bars = [c for c in series if isinstance(c, BarContainer)]
    assert [c.get_label() for c in bars] == ["fifo", "priority"]
    assert [p.get_height() for p in bars[0].patches] == pytest.approx([110.0, 220.0])
    assert [p.get_height() for p in bars[1].patches] == pytest.approx([200.0, 200.0])
    fifo_ci = mean_ci([100.0, 110.0, 120.0])[1]
    errors = bars[0].errorbar
    assert errors is not None
    segments = errors.lines[2][0].get_segments()
    assert [s[1][1] - s[0][1] for s in segments] == pytest.approx([2 * fifo_ci, 4 * fifo_ci])
    assert [t.get_text() for t in throughput.get_xticklabels()] == ["renders=4", "renders=8"]
    utilization = panels[1]
    assert [p.get_height() for c in utilization.containers if isinstance(c, BarContainer)
            for p in c.patches] == pytest.approx([50.0] * 4)  # scaled to %


def test_the_sweep_by_option_figure_draws_one_line_per_policy_over_the_values() -> None:
    fig = dict(sweep_plots.sweep_figures(_sweep_results(), ["renders"], "the sweep"))["by_renders.png"]
    assert "by renders" in fig.get_suptitle()
    panels = [ax for ax in fig.axes if ax.axison]
    assert [ax.get_title() for ax in panels] == [m.title for m in METRICS]
    throughput = panels[0]
    assert throughput.get_xlabel() == "renders"
    lines = [c.lines[0] for c in throughput.containers]
    assert len(lines) == 2  # fifo and priority
    fifo, priority = (np.asarray(line.get_ydata(), dtype=float) for line in lines)
    assert list(fifo) == pytest.approx([110.0, 220.0]) and list(priority) == pytest.approx([200.0, 200.0])
    for line in lines:  # over the option's values, dodged a little so the error bars do not overlap
        assert list(np.asarray(line.get_xdata(), dtype=float)) == pytest.approx([4.0, 8.0], abs=0.2)
