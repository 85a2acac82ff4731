"""Comparison figures of a sweep, drawn with matplotlib's Agg canvas (no display needed).

Each figure has one panel per metric of :data:`~farmhand.sim.sweep.METRICS` (throughput, utilization, mean
and 95th percentile wait, job turnaround, bounded slowdown, Jain fairness), showing the mean over the seeds
with its 95 % confidence interval (Student t, :func:`~farmhand.sim.sweep.mean_ci`) as error bars:

- ``comparison.png``: grouped bars: one group per combination of the varied options (a single group when
  only policies and seeds vary), one bar per policy;
- ``by_<option>.png``, for each varied option whose values are all numbers: lines over that option's values,
  one per policy (and per combination of the other varied options, told apart by line style).

A mean over one seed has no interval: its bar or point is drawn without error bar.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from .sweep import METRICS, Group, Metric, RunResult, comparison_rows

DPI = 110
#: beyond this many lines in one panel the line figure of an option is not drawn (the bars still are)
MAX_SERIES = 24
_STYLES: tuple[Any, ...] = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")

__all__ = ["by_option_figure", "comparison_figure", "plot_by_option", "plot_comparison", "plot_sweep", "sweep_figures"]


def _colours(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _policies(groups: Sequence[Group]) -> list[str]:
    return list(dict.fromkeys(g.policy for g in groups))


def _grid(count: int) -> tuple[int, int]:
    cols = 4 if count > 4 else count
    return math.ceil((count + 1) / cols), cols


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _err(half: float) -> float:
    return 0.0 if math.isnan(half) else half


def comparison_figure(results: Sequence[RunResult], varied: Sequence[str], title: str) -> Figure:
    """Grouped bars: per metric, the mean of each policy per combination of the varied options, with 95 % CIs."""
    groups = comparison_rows(results, varied)
    policies = _policies(groups)
    combos = list(dict.fromkeys(g.params for g in groups))
    by_key = {(g.policy, g.params): g for g in groups}
    colours = dict(zip(policies, _colours(len(policies)), strict=True))
    rows, cols = _grid(len(METRICS))
    width = max(4.2, 0.5 + 0.32 * len(policies) * len(combos))
    fig = Figure(figsize=(cols * width, rows * 3.6 + 0.8), layout="constrained")
    axes: list[Axes] = list(fig.subplots(rows, cols, squeeze=False).ravel())
    bar = 0.8 / len(policies)
    for ax, metric in zip(axes, METRICS, strict=False):
        for p, policy in enumerate(policies):
            xs, means, halves = [], [], []
            for c, combo in enumerate(combos):
                group = by_key.get((policy, combo))
                if group is None:
                    continue
                mean, half, _ = group.stats(metric)
                xs.append(c - 0.4 + bar * (p + 0.5))
                means.append(0.0 if math.isnan(mean) else mean)
                halves.append(_err(half))
            ax.bar(xs, means, bar * 0.92, yerr=halves, capsize=3, color=colours[policy], label=policy,
                   error_kw={"elinewidth": 1.0, "ecolor": "black"})
        ax.set_xticks(range(len(combos)))
        if varied:
            ax.set_xticklabels(["\n".join(f"{d}={v}" for d, v in combo) for combo in combos], fontsize=8)
            ax.set_xlabel("varied options")
        else:
            ax.set_xticklabels(["all runs"])
        _decorate(ax, metric)
    _legend_panel(axes[len(METRICS):], [Patch(color=colours[p], label=p) for p in policies], results)
    fig.suptitle(f"{title}\nmean over seeds, error bars: 95% confidence interval (Student t)")
    return fig


def by_option_figure(results: Sequence[RunResult], varied: Sequence[str], option: str, title: str) -> Figure | None:
    """Lines over the values of ``option`` (numeric): one per policy and combination of the other varied options.

    None (nothing drawn) when a value of ``option`` is not a number or there would be too many lines.
    """
    groups = comparison_rows(results, varied)
    policies = _policies(groups)
    others = [d for d in varied if d != option]
    values = list(dict.fromkeys(dict(g.params)[option] for g in groups))
    xs = {v: _number(v) for v in values}
    if any(x is None for x in xs.values()):
        return None
    rest = list(dict.fromkeys(tuple((d, dict(g.params)[d]) for d in others) for g in groups))
    if len(policies) * len(rest) > MAX_SERIES:
        return None
    colours = dict(zip(policies, _colours(len(policies)), strict=True))
    series: dict[tuple[str, tuple[tuple[str, str], ...]], list[Group]] = {}
    for g in groups:
        key = (g.policy, tuple((d, dict(g.params)[d]) for d in others))
        series.setdefault(key, []).append(g)
    rows, cols = _grid(len(METRICS))
    fig = Figure(figsize=(cols * 4.2, rows * 3.6 + 0.8), layout="constrained")
    axes: list[Axes] = list(fig.subplots(rows, cols, squeeze=False).ravel())
    handles: list[Any] = []
    numbers = sorted({x for x in xs.values() if x is not None})
    span = (numbers[-1] - numbers[0]) if len(numbers) > 1 else 1.0
    dodge = 0.08 * span / max(1, len(numbers) - 1) / max(1, len(series))
    for ax, metric in zip(axes, METRICS, strict=False):
        for i, ((policy, other), members) in enumerate(series.items()):
            members = sorted(members, key=lambda g: xs[dict(g.params)[option]] or 0.0)
            r = rest.index(other)
            shift = (i - (len(series) - 1) / 2) * dodge  # side by side, so the error bars do not hide each other
            points = [(xs[dict(g.params)[option]], *g.stats(metric)[:2]) for g in members]
            ax.errorbar([(p[0] or 0.0) + shift for p in points], [p[1] for p in points],
                        yerr=[_err(p[2]) for p in points], color=colours[policy],
                        linestyle=_STYLES[r % len(_STYLES)], marker=_MARKERS[r % len(_MARKERS)], capsize=3,
                        markersize=4, elinewidth=1.0)
        ax.set_xlabel(option)
        if len(numbers) <= 12:
            ax.set_xticks(numbers, [f"{v:g}" for v in numbers])
        _decorate(ax, metric)
    for policy in policies:
        handles.append(Line2D([], [], color=colours[policy], label=policy))
    if others:
        for r, other in enumerate(rest):
            label = ", ".join(f"{d}={v}" for d, v in other)
            handles.append(Line2D([], [], color="grey", linestyle=_STYLES[r % len(_STYLES)],
                                  marker=_MARKERS[r % len(_MARKERS)], label=label))
    _legend_panel(axes[len(METRICS):], handles, results)
    fig.suptitle(f"{title}\nby {option}: mean over seeds, error bars: 95% confidence interval (Student t)")
    return fig


def plot_comparison(results: Sequence[RunResult], varied: Sequence[str], path: Path, title: str) -> Path:
    """:func:`comparison_figure` written to ``path``."""
    return _save(comparison_figure(results, varied, title), path)


def plot_by_option(
    results: Sequence[RunResult], varied: Sequence[str], option: str, path: Path, title: str
) -> Path | None:
    """:func:`by_option_figure` written to ``path``; None (nothing written) when it draws nothing."""
    fig = by_option_figure(results, varied, option, title)
    return None if fig is None else _save(fig, path)


def _decorate(ax: Axes, metric: Metric) -> None:
    ax.set_title(metric.title)
    ax.set_ylabel(metric.axis_label)
    ax.grid(axis="y", alpha=0.3)
    if metric.key in ("jain_fairness", "utilization"):  # the natural top, unless an error bar reaches past it
        ax.set_ylim(0, max(1.05 if metric.key == "jain_fairness" else 105, ax.get_ylim()[1]))
    else:
        ax.set_ylim(bottom=0)


def _legend_panel(spare: Sequence[Axes], handles: list[Any], results: Sequence[RunResult]) -> None:
    for ax in spare:
        ax.axis("off")
    if not spare:
        return
    ax = spare[0]
    failed = sum(1 for r in results if r.failed)
    seeds = len({r.spec.seed for r in results})
    note = f"{len(results)} runs, {seeds} seed(s)" + (f", {failed} failed (left out)" if failed else "")
    ax.legend(handles=handles, loc="upper left", title="policy", fontsize=9, frameon=False)
    ax.text(0.0, 0.02, note, transform=ax.transAxes, fontsize=9, va="bottom")


def sweep_figures(results: Sequence[RunResult], varied: Sequence[str], title: str) -> Iterator[tuple[str, Figure]]:
    """Every comparison figure of a sweep, built one at a time, with its file name; none when every run failed."""
    if not any(not r.failed for r in results):
        return
    yield "comparison.png", comparison_figure(results, varied, title)
    for option in varied:
        fig = by_option_figure(results, varied, option, title)
        if fig is not None:
            yield f"by_{option}.png", fig


def plot_sweep(results: Sequence[RunResult], varied: Sequence[str], out: Path, title: str) -> list[Path]:
    """Every comparison figure of a sweep (:func:`sweep_figures`) into ``out``; the paths written."""
    return [_save(fig, out / name) for name, fig in sweep_figures(results, varied, title)]
