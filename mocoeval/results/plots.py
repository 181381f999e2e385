"""Ablation plots (matplotlib, Agg, PNG): per-variant VOC trial spread; linear top-1 against VOC AP50.

Figures are built with matplotlib's object API (`Figure`), never pyplot, so no GUI backend or global state
is involved, and written atomically.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless; harmless if pyplot is never imported

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from mocoeval.results.paper import paper_by_case  # noqa: E402
from mocoeval.results.store import VOC_METRICS as METRICS  # noqa: E402
from mocoeval.runtime.fileio import atomic_write  # noqa: E402

PAPER_STYLE = dict(marker="D", s=46, facecolors="none", edgecolors="tab:red", linewidths=1.4, zorder=4)
OURS_STYLE = dict(marker="o", s=28, zorder=3)
# A box (quartiles) only from this many trials: from 2-4 trials it overstates what is known of the spread;
# the trials themselves are always drawn.
BOX_MIN_TRIALS = 5


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"), "wb")


def _jitter(n: int, width: float = 0.22) -> np.ndarray:
    """Deterministic horizontal offsets so the trials of one box do not overlap."""
    return np.zeros(1) if n == 1 else np.linspace(-width / 2, width / 2, n)


def plot_voc_trials(trials: pd.DataFrame, labels: Sequence[str], paper: pd.DataFrame | None, path) -> Path:
    return _save(voc_trials_figure(trials, labels, paper), Path(path))


def voc_trials_figure(trials: pd.DataFrame, labels: Sequence[str], paper: pd.DataFrame | None) -> Figure:
    """One panel per VOC metric: the trials as points (coloured by source checkpoint), a box over a table row's
    trials when it has BOX_MIN_TRIALS, and the paper's mean for the row's recipe (same epochs) as a red diamond."""
    n_boxes = max(1, trials["row"].nunique() if not trials.empty else 1)
    # room for the longest line of the (multi-line) box labels: ~0.08 in a character at fontsize 8 (with margins)
    box_width = max([0.6] + [0.08 * len(line) for label in labels for line in label.splitlines()])
    fig = Figure(figsize=(max(9.0, len(METRICS) * (1.2 + box_width * n_boxes)), 4.2))
    axes = fig.subplots(1, len(METRICS), squeeze=False)[0]
    rows_with_trials = sorted(trials["row"].unique()) if not trials.empty else []
    published = paper_by_case(paper)
    colors = matplotlib.colormaps["tab10"]
    for ax, metric in zip(axes, METRICS):
        ax.set_title(f"VOC07 {metric}")
        ax.grid(axis="y", alpha=0.3)
        if not rows_with_trials:
            ax.text(0.5, 0.5, "no VOC trials yet", ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
            continue
        paper_points = []
        for x, row in enumerate(rows_with_trials):
            sub = trials[trials["row"] == row]
            values = sub[metric].dropna().to_numpy(dtype=float)
            if values.size >= BOX_MIN_TRIALS:
                ax.boxplot(
                    [values],
                    positions=[x],
                    widths=0.5,
                    showfliers=False,
                    medianprops=dict(color="black"),
                    boxprops=dict(color="0.4"),
                    whiskerprops=dict(color="0.4"),
                    capprops=dict(color="0.4"),
                    label=f"quartiles (rows with >= {BOX_MIN_TRIALS} trials)",
                )
            for si, (_, src) in enumerate(sub.groupby("source", sort=True)):
                v = src[metric].dropna().to_numpy(dtype=float)
                if v.size:
                    ax.scatter(
                        x + _jitter(v.size),
                        v,
                        color=colors(si % 10),
                        **OURS_STYLE,
                        label="ours: one trial (colour: pretraining run)",
                    )
            # every row of a recipe and epochs the paper published, protocol or not (the reference to read it
            # against); a row with extensions is not the paper's recipe
            recipe = not sub["extensions"].iloc[0]
            pv = _paper_value(published.get(sub["case"].iloc[0]), sub["epochs"].iloc[0], metric) if recipe else None
            if pv is not None:
                paper_points.append((x, pv))
        _draw_paper_points(ax, trials[metric].dropna().to_numpy(dtype=float), paper_points)
        ax.set_xticks(range(len(rows_with_trials)))
        ax.set_xticklabels([labels[r] for r in rows_with_trials], fontsize=8)
        ax.set_xlim(-0.7, len(rows_with_trials) - 0.3)
        ax.set_ylim(bottom=max(0.0, ax.get_ylim()[0]))  # AP is never negative
    handles, names = _legend_entries(axes)
    if handles:
        fig.legend(
            handles,
            names,
            loc="lower center",
            ncol=len(handles),
            frameon=False,
            fontsize=8,
            bbox_to_anchor=(0.5, -0.04),
        )
    fig.suptitle("Per-trial spread of VOC07 detection (Faster R-CNN R50-C4)")
    fig.tight_layout()
    return fig


def _legend_entries(axes) -> tuple[list, list[str]]:
    """One legend entry per label drawn in any panel (a paper point may be in one panel only); points coloured
    per pretraining run get a neutral marker, since their colour varies."""
    entries: dict = {}
    for ax in axes:
        for handle, name in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(name, handle)
    for name in entries:
        if name.startswith("ours: one trial"):
            entries[name] = Line2D([], [], marker="o", linestyle="", color="0.45", markersize=5)
    return list(entries.values()), list(entries)


def _missing(x) -> bool:
    return x is None or x is pd.NA or (isinstance(x, float) and math.isnan(x))


def _paper_value(published: dict | None, epochs, metric: str) -> float | None:
    """The paper's number for a row, only if it is the same setting (a 2-epoch (d) is not the paper's (d))."""
    if published is None or _missing(published.get(metric)):
        return None
    paper_epochs = published.get("epochs")
    if not _missing(paper_epochs) and (_missing(epochs) or int(epochs) != int(paper_epochs)):
        return None
    return float(published[metric])


def _draw_paper_points(ax, ours: np.ndarray, points: list[tuple[float, float]], reach: float = 5.0) -> None:
    """The paper's means as red diamonds. A mean far outside our values (e.g. a few-iteration demo run
    against the paper's 24k-iteration numbers) would squash our spread into a line, so such points are drawn
    as an arrow at the panel edge with their value instead."""
    if not points:
        return
    if ours.size:
        lo, hi = float(ours.min()), float(ours.max())
        margin = max(reach, 3 * (hi - lo))
        inside = [(x, v) for x, v in points if lo - margin <= v <= hi + margin]
    else:
        inside = points
    if inside:
        ax.scatter([x for x, _ in inside], [v for _, v in inside], **PAPER_STYLE, label="paper (5-trial mean)")
    outside = [p for p in points if p not in inside]
    if outside:
        ax.autoscale_view()
        y0, y1 = ax.get_ylim()
        for x, v in outside:
            edge, marker, va = (y1, "^", "top") if v > y1 else (y0, "v", "bottom")
            ax.scatter(
                [x], [edge], marker=marker, s=40, color="tab:red", clip_on=False, zorder=4, label="paper, off the axis"
            )
            ax.annotate(
                f"paper {v:.1f}",
                (x, edge),
                textcoords="offset points",
                xytext=(6, 0),
                fontsize=7,
                color="tab:red",
                va=va,
            )
        ax.set_ylim(y0, y1)


def label_offsets(
    xs: Sequence[float], gap: float, first=(5, -10), other=(5, 6), ys: Sequence[float] | None = None, y_gap=math.inf
) -> list[tuple[int, int]]:
    """Label offsets (points) for points along x: `first` (below-right) for each, but a point within `gap` of its
    left neighbour (and within `y_gap` of its height, given `ys`) gets the other side, alternating, so that the
    labels of close points do not overlap."""
    out = [first] * len(xs)
    use_first, previous = True, None
    for i in sorted(range(len(xs)), key=lambda i: xs[i]):
        close = previous is not None and xs[i] - xs[previous] < gap
        close = close and (ys is None or abs(ys[i] - ys[previous]) < y_gap)
        use_first = not use_first if close else True
        out[i] = first if use_first else other
        previous = i
    return out


def plot_linear_vs_voc(frame: pd.DataFrame, paper: pd.DataFrame | None, path) -> Path:
    """ImageNet linear top-1 (x) against VOC07 AP50 (y), saved as a PNG (see linear_vs_voc_figure)."""
    return _save(linear_vs_voc_figure(frame, paper), Path(path))


def linear_vs_voc_figure(frame: pd.DataFrame, paper: pd.DataFrame | None) -> Figure:
    """Our rows as dots with the AP50 std as error bars, the paper's Table 1 rows as red diamonds; each point
    labelled with its case, labels of close paper points alternating below / above, ours kept inside the axes."""
    fig = Figure(figsize=(6.4, 4.8))
    ax = fig.subplots()
    drawn = 0
    if not frame.empty:
        ours = frame[(frame["linear_n"] > 0) & (frame["AP50_n"] > 0)]
        if not ours.empty:
            ax.errorbar(
                ours["linear_top1"],
                ours["AP50_mean"],
                yerr=ours["AP50_std"].fillna(0.0),
                fmt="o",
                color="tab:blue",
                ecolor="tab:blue",
                capsize=3,
                label="ours (mean ± std)",
                zorder=3,
            )
            xs = list(ours["linear_top1"]) + ([] if paper is None else list(paper["linear_top1"].dropna()))
            middle = (min(xs) + max(xs)) / 2
            lines = ours.to_dict("records")
            # two-line labels ~15% of the x range wide and ~10% of the y range high: neighbours closer than that
            # alternate above / below
            ys = list(ours["AP50_mean"]) + ([] if paper is None else list(paper["AP50"].dropna()))
            heights = label_offsets(
                [ln["linear_top1"] for ln in lines],
                0.15 * (max(xs) - min(xs)),
                (0, 4),
                (0, -24),
                ys=[ln["AP50_mean"] for ln in lines],
                y_gap=0.1 * (max(ys) - min(ys)),
            )
            for line, (_, dy) in zip(lines, heights):
                right_half = line["linear_top1"] > middle  # label to the left of the point: stays inside the axes
                ax.annotate(
                    _short(line["case"], line["epochs"], line["extensions"])
                    + ("" if line["official"] else "\n(non-protocol)"),
                    (line["linear_top1"], line["AP50_mean"]),
                    textcoords="offset points",
                    xytext=(-5, dy) if right_half else (5, dy),
                    ha="right" if right_half else "left",
                    fontsize=8,
                    color="tab:blue",
                )
            drawn += len(ours)
    if paper is not None:
        pts = paper[(paper["case"] != "") & paper["linear_top1"].notna() & paper["AP50"].notna()]
        pts = pts.drop_duplicates("case")
        if not pts.empty:
            ax.scatter(pts["linear_top1"], pts["AP50"], **PAPER_STYLE, label="paper")
            lines = pts.to_dict("records")
            offsets = label_offsets([ln["linear_top1"] for ln in lines], gap=1.5)  # % top-1: c and d are 0.2 apart
            for line, offset in zip(lines, offsets):
                ax.annotate(
                    _short(line["case"], None),
                    (line["linear_top1"], line["AP50"]),
                    textcoords="offset points",
                    xytext=offset,
                    fontsize=8,
                    color="tab:red",
                )
            drawn += len(pts)
    if not drawn:
        ax.text(
            0.5,
            0.5,
            "no rows with both a linear and a VOC result yet",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
    ax.set_xlabel("ImageNet linear top-1 (%)")
    ax.set_ylabel("VOC07 AP50")
    ax.set_title("Linear classification vs detection transfer")
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return fig


def _short(case: str, epochs, extensions: str = "") -> str:
    label = {"random-init": "random", "supervised": "sup.", "moco_v1": "v1"}.get(case, case)
    if epochs is not None and not pd.isna(epochs):
        label += f" {int(epochs)}ep"
    return label + (f" [{extensions}]" if extensions else "")
