"""Figures of a simulation run, drawn from the run records with matplotlib's Agg canvas (no display needed).

- ``throughput.png``: completed tasks over time (cumulative) and the completion rate (tasks per hour);
- ``utilization.png``: the share of the farm's capacity in use over time;
- ``user_share.png``: the running share of the farm per user over time, stacked;
- ``wait_cdf.png``: the CDF of task wait (submission to first start) per user;
- ``gantt.png``: the runs of a sample of renders, coloured by user, lost and failed runs marked.

Time axes are in seconds, minutes or hours depending on the span, and say which. Step functions (capacity in
use) are computed exactly from the records and sampled on a fine grid.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from farmhand.core.messages import RunRecord

from .workload import RenderSpec

GRID_POINTS = 2000
MAX_USERS_SHOWN = 10
#: the colour of users beyond the :data:`MAX_USERS_SHOWN` biggest
OTHER = "0.65"
DPI = 110

__all__ = ["figures", "plot_all"]


def _unit(span: float) -> tuple[float, str]:
    """The time unit that reads well for a span of ``span`` seconds: (seconds per unit, name)."""
    if span <= 600:
        return 1.0, "s"
    if span <= 6 * 3600:
        return 60.0, "min"
    return 3600.0, "h"


class _Runs:
    """The records as numpy columns."""

    def __init__(self, records: Sequence[RunRecord], capacity_of: Mapping[tuple[int, str], int]) -> None:
        self.records = records
        self.start = np.array([r.starting_time for r in records], dtype=float)
        self.finish = np.array([r.finish_time for r in records], dtype=float)
        self.submit = np.array([r.submission_time for r in records], dtype=float)
        self.cap = np.array([capacity_of.get((r.job_id, r.block), 1) for r in records], dtype=float)
        self.user = np.array([r.user for r in records], dtype=object)
        self.done = np.array([r.state == "done" for r in records], dtype=bool)
        self.t0 = float(self.submit.min()) if len(records) else 0.0
        self.t1 = float(self.finish.max()) if len(records) else 1.0
        if self.t1 <= self.t0:
            self.t1 = self.t0 + 1.0

    def grid(self) -> np.ndarray:
        return np.linspace(self.t0, self.t1, GRID_POINTS)

    def in_use(self, grid: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """Capacity in use at each grid time (runs with start <= t < finish)."""
        start, finish, cap = self.start, self.finish, self.cap
        if mask is not None:
            start, finish, cap = start[mask], finish[mask], cap[mask]
        order_s = np.argsort(start, kind="stable")
        order_f = np.argsort(finish, kind="stable")
        cum_s = np.concatenate(([0.0], np.cumsum(cap[order_s])))
        cum_f = np.concatenate(([0.0], np.cumsum(cap[order_f])))
        started = cum_s[np.searchsorted(start[order_s], grid, side="right")]
        ended = cum_f[np.searchsorted(finish[order_f], grid, side="right")]
        return np.asarray(started - ended)


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    return path


def _top_users(runs: _Runs) -> list[str]:
    used: dict[str, float] = {}
    for user, s, f, c in zip(runs.user, runs.start, runs.finish, runs.cap, strict=True):
        used[user] = used.get(user, 0.0) + (f - s) * c
    return sorted(used, key=lambda u: (-used[u], u))


def _user_colours(users: Sequence[str]) -> dict[str, Any]:
    """One colour per shown user, the same in every figure (by name order); others get :data:`OTHER`."""
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {u: cmap(i % cmap.N) for i, u in enumerate(sorted(users))}


def throughput_figure(runs: _Runs, title: str) -> Figure:
    """Completed tasks over time and the completion rate."""
    scale, unit = _unit(runs.t1 - runs.t0)
    finished = np.sort(runs.finish[runs.done])
    fig = Figure(figsize=(9, 6))
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    x = (finished - runs.t0) / scale
    ax1.step(np.concatenate(([0.0], x)), np.arange(len(x) + 1), where="post", color="tab:blue")
    ax1.set_ylabel("completed tasks")
    ax1.set_title(f"Throughput: completed tasks over time ({title})")
    ax1.grid(alpha=0.3)
    bins = min(100, max(10, len(x) // 50))
    edges = np.linspace(0.0, (runs.t1 - runs.t0) / scale, bins + 1)
    counts, _ = np.histogram(x, bins=edges)
    width_h = (edges[1] - edges[0]) * scale / 3600.0
    ax2.bar(edges[:-1], counts / width_h, width=edges[1] - edges[0], align="edge", color="tab:green", alpha=0.8)
    ax2.set_ylabel("completion rate (tasks/h)")
    ax2.set_xlabel(f"simulated time since first submission ({unit})")
    ax2.grid(alpha=0.3)
    return fig


def utilization_figure(runs: _Runs, farm_capacity: int, title: str) -> Figure:
    """Share of the farm's capacity in use over time."""
    scale, unit = _unit(runs.t1 - runs.t0)
    grid = runs.grid()
    use = runs.in_use(grid) / max(farm_capacity, 1) * 100.0
    fig = Figure(figsize=(9, 4.5))
    ax = fig.subplots()
    x = (grid - runs.t0) / scale
    ax.fill_between(x, use, step="post", alpha=0.35, color="tab:orange")
    ax.step(x, use, where="post", color="tab:orange")
    mean = float(np.mean(use))
    ax.axhline(mean, color="black", linestyle="--", linewidth=1, label=f"time average {mean:.1f} %")
    ax.set_ylim(0, 105)
    ax.set_xlabel(f"simulated time since first submission ({unit})")
    ax.set_ylabel("capacity in use (% of farm)")
    ax.set_title(f"Utilisation over time ({title})")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    return fig


def user_share_figure(runs: _Runs, farm_capacity: int, title: str) -> Figure:
    """Running share of the farm per user over time, stacked (the top users; the rest as 'other')."""
    scale, unit = _unit(runs.t1 - runs.t0)
    grid = runs.grid()
    users = _top_users(runs)
    shown = users[:MAX_USERS_SHOWN]
    colour = _user_colours(shown)
    layers = [runs.in_use(grid, runs.user == u) / max(farm_capacity, 1) * 100.0 for u in shown]
    labels = list(shown)
    colours = [colour[u] for u in shown]
    if len(users) > len(shown):
        rest = ~np.isin(runs.user, np.array(shown, dtype=object))
        layers.append(runs.in_use(grid, rest) / max(farm_capacity, 1) * 100.0)
        labels.append(f"other ({len(users) - len(shown)} users)")
        colours.append(OTHER)
    fig = Figure(figsize=(9, 5))
    ax = fig.subplots()
    x = (grid - runs.t0) / scale
    if layers:
        ax.stackplot(x, *layers, labels=labels, colors=colours, step="post", alpha=0.85)
    ax.set_ylim(0, 105)
    ax.set_xlabel(f"simulated time since first submission ({unit})")
    ax.set_ylabel("running share of the farm (% of capacity)")
    ax.set_title(f"Running share per user, stacked ({title})")
    handles, legend_labels = ax.get_legend_handles_labels()  # top of the stack first, as drawn
    ax.legend(handles[::-1], legend_labels[::-1], loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    ax.grid(alpha=0.3)
    return fig


def wait_cdf_figure(runs: _Runs, title: str) -> Figure:
    """CDF of task wait (submission to the first run's start) per user."""
    first: dict[tuple[int, str, str], RunRecord] = {}
    for r in runs.records:
        key = (r.job_id, r.block, r.task)
        if key not in first or r.attempt < first[key].attempt:
            first[key] = r
    waits: dict[str, list[float]] = {}
    for r in first.values():
        waits.setdefault(r.user, []).append(r.starting_time - r.submission_time)
    top = max((max(w) for w in waits.values()), default=1.0)
    scale, unit = _unit(max(top, 1.0))
    fig = Figure(figsize=(9, 5))
    ax = fig.subplots()
    users = _top_users(runs)[:MAX_USERS_SHOWN]
    colour = _user_colours(users)
    for user in sorted(users):
        values = np.sort(np.asarray(waits.get(user, []), dtype=float)) / scale
        if len(values):
            ax.step(values, np.arange(1, len(values) + 1) / len(values), where="post", label=user,
                    color=colour[user])
    ax.set_xlabel(f"task wait: first start - job submission ({unit})")
    ax.set_ylabel("fraction of the user's tasks (CDF)")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"Task wait per user ({title})")
    ax.legend(loc="lower right", fontsize="small")
    ax.grid(alpha=0.3)
    return fig


def gantt_figure(runs: _Runs, renders: Sequence[RenderSpec], count: int, title: str) -> Figure:
    """Runs on a sample of renders (evenly spread over the farm), coloured by user."""
    scale, unit = _unit(runs.t1 - runs.t0)
    names = sorted(r.name for r in renders)
    sample = _sample(names, count)
    by_render: dict[str, list[RunRecord]] = {n: [] for n in sample}
    for r in runs.records:
        if r.render in by_render:
            by_render[r.render].append(r)
    colour = _user_colours(_top_users(runs)[:MAX_USERS_SHOWN])
    present = {r.user for rs in by_render.values() for r in rs}
    fig = Figure(figsize=(10, max(3.0, 0.35 * len(sample) + 1.5)))
    ax = fig.subplots()
    for row, name in enumerate(sample):
        lanes: list[float] = []  # when each lane of the row is free again (runs overlap on a multi-slot render)
        placed = sorted(by_render[name], key=lambda r: (r.starting_time, r.job_id, r.task))
        bars: list[tuple[int, RunRecord]] = []
        for r in placed:
            lane = next((i for i, free in enumerate(lanes) if free <= r.starting_time), None)
            if lane is None:
                lanes.append(r.finish_time)
                lane = len(lanes) - 1
            else:
                lanes[lane] = r.finish_time
            bars.append((lane, r))
        depth = max(1, len(lanes))
        height = 0.8 / depth
        # one collection per lane, user and outcome (not one per run: thousands of artists take many seconds)
        groups: dict[tuple[int, str, bool], list[tuple[float, float]]] = {}
        for lane, r in bars:
            groups.setdefault((lane, r.user, r.state != "done"), []).append(
                ((r.starting_time - runs.t0) / scale, max((r.finish_time - r.starting_time) / scale, 1e-9))
            )
        for (lane, user, bad), spans in groups.items():
            ax.broken_barh(
                spans,
                (row - 0.4 + lane * height, height * 0.9),
                facecolors=colour.get(user, OTHER),
                edgecolors="red" if bad else "none",
                hatch="///" if bad else None,
                linewidth=0.8 if bad else 0,
            )
    ax.set_yticks(range(len(sample)))
    ax.set_yticklabels(sample, fontsize="small")
    ax.invert_yaxis()
    ax.set_xlabel(f"simulated time since first submission ({unit})")
    ax.set_ylabel("render")
    ax.set_title(f"Runs on {len(sample)} of {len(names)} renders ({title})")
    handles = [Patch(facecolor=colour[u], label=u) for u in sorted(present & colour.keys())]
    if present - colour.keys():
        handles.append(Patch(facecolor=OTHER, label="other users"))
    handles.append(Patch(facecolor="white", edgecolor="red", hatch="///", label="lost / failed run"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    ax.grid(axis="x", alpha=0.3)
    return fig


def plot_throughput(runs: _Runs, path: Path, title: str) -> Path:
    """:func:`throughput_figure` written to ``path``."""
    return _save(throughput_figure(runs, title), path)


def plot_utilization(runs: _Runs, farm_capacity: int, path: Path, title: str) -> Path:
    """:func:`utilization_figure` written to ``path``."""
    return _save(utilization_figure(runs, farm_capacity, title), path)


def plot_user_share(runs: _Runs, farm_capacity: int, path: Path, title: str) -> Path:
    """:func:`user_share_figure` written to ``path``."""
    return _save(user_share_figure(runs, farm_capacity, title), path)


def plot_wait_cdf(runs: _Runs, path: Path, title: str) -> Path:
    """:func:`wait_cdf_figure` written to ``path``."""
    return _save(wait_cdf_figure(runs, title), path)


def plot_gantt(runs: _Runs, renders: Sequence[RenderSpec], count: int, path: Path, title: str) -> Path:
    """:func:`gantt_figure` written to ``path``."""
    return _save(gantt_figure(runs, renders, count, title), path)


def _sample(names: Sequence[str], count: int) -> list[str]:
    """``count`` of ``names`` spread evenly over all of them (the first always in)."""
    count = min(count, len(names))
    return [names[i * len(names) // count] for i in range(count)]


def figures(
    records: Sequence[RunRecord],
    renders: Sequence[RenderSpec],
    *,
    capacity_of: Mapping[tuple[int, str], int] | None = None,
    gantt_renders: int = 20,
    title: str = "",
) -> Iterator[tuple[str, Figure]]:
    """Every figure of :func:`plot_all`, built one at a time, with its file name (``throughput.png``, ...)."""
    runs = _Runs(records, capacity_of or {})
    farm = sum(r.capacity for r in renders)
    label = title or "simulation"
    yield "throughput.png", throughput_figure(runs, label)
    yield "utilization.png", utilization_figure(runs, farm, label)
    yield "user_share.png", user_share_figure(runs, farm, label)
    yield "wait_cdf.png", wait_cdf_figure(runs, label)
    yield "gantt.png", gantt_figure(runs, renders, gantt_renders, label)


def plot_all(
    records: Sequence[RunRecord],
    renders: Sequence[RenderSpec],
    out: Path,
    *,
    capacity_of: Mapping[tuple[int, str], int] | None = None,
    gantt_renders: int = 20,
    title: str = "",
) -> list[Path]:
    """Write every figure of :func:`figures` to ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    return [_save(fig, out / name) for name, fig in figures(records, renders, capacity_of=capacity_of,
                                                            gantt_renders=gantt_renders, title=title)]
