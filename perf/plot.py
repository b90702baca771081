"""Shared plotting helper for the perf scripts (PNG files under perf/out/).

matplotlib is an optional dependency (``pip install -e '.[perf]'``). Without
it every function here returns ``None`` after one note on stderr, so a
benchmark still prints its table and writes its JSON.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Mapping, Sequence

OUT_DIR = Path(__file__).resolve().parent / "out"

_warned = False


def _pyplot():
    global _warned
    try:
        import matplotlib
        matplotlib.use("Agg")           # files only, never a display
        import matplotlib.pyplot as plt
    except ImportError:
        if not _warned:
            print("note: matplotlib is not installed (pip install -e '.[perf]'); no PNG written",
                  file=sys.stderr)
            _warned = True
        return None
    return plt


def out_path(name: str, out_dir: str | Path | None = None) -> Path:
    """``perf/out/<name>`` (or ``out_dir/<name>``), creating the directory."""
    d = Path(out_dir) if out_dir else OUT_DIR
    d.mkdir(parents=True, exist_ok=True)
    return d / name


def _ok(v: float | None) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def _label(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


def bar_panels(path: str | Path, title: str, panels: Sequence[Mapping], *, note: str = "") -> Path | None:
    """One figure of side-by-side grouped bar charts.

    Each panel is ``{"title", "ylabel", "groups": [x labels], "series": {name: [value per group]},
    "log": bool, "rotation": degrees}``; a missing value (None/NaN) leaves a gap. Values are
    written on the bars.
    """
    plt = _pyplot()
    if plt is None:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.6), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        groups = list(panel["groups"])
        series = dict(panel["series"])
        width = 0.8 / max(1, len(series))
        for k, (name, values) in enumerate(series.items()):
            xs = [g + (k - (len(series) - 1) / 2) * width for g in range(len(groups))]
            pts = [(x, v) for x, v in zip(xs, values) if _ok(v)]
            if not pts:
                continue
            bars = ax.bar([p[0] for p in pts], [p[1] for p in pts], width=width, label=name)
            for bar, (_, v) in zip(bars, pts):
                ax.annotate(_label(v), (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=7, xytext=(0, 1), textcoords="offset points")
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(groups, fontsize=8, rotation=panel.get("rotation", 0))
        ax.set_title(panel.get("title", ""), fontsize=10)
        ax.set_ylabel(panel.get("ylabel", ""))
        if panel.get("log"):
            ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=7, framealpha=0.6)
    fig.suptitle(title, fontsize=11)
    if note:
        fig.text(0.01, 0.01, note, fontsize=7, alpha=0.7)
    fig.tight_layout(rect=(0, 0.03 if note else 0, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def line_chart(path: str | Path, title: str, xs: Sequence[float], series: Mapping[str, Sequence[float | None]],
               *, xlabel: str, ylabel: str, logx: bool = False, logy: bool = False, note: str = "",
               x_zero_label: str = "0") -> Path | None:
    """One line per series against ``xs``. With ``logx`` an x of 0 is drawn at a tenth of the
    smallest positive x and labelled ``x_zero_label``."""
    plt = _pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    positive = [x for x in xs if x > 0]
    zero_at = (min(positive) / 10 if positive else 1) if logx else 0
    plot_x = [x if (x > 0 or not logx) else zero_at for x in xs]
    markers = "osD^vx*"
    for k, (name, values) in enumerate(series.items()):
        pts = [(x, v) for x, v in zip(plot_x, values) if _ok(v)]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=markers[k % len(markers)], label=name)
    if logx:
        ax.set_xscale("log")
        ax.set_xticks(plot_x)
        ax.set_xticklabels([x_zero_label if x == 0 else f"{x:,g}" for x in xs])
        ax.minorticks_off()
    if logy:
        ax.set_yscale("log")
    else:
        ax.set_ylim(bottom=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if note:
        fig.text(0.01, 0.01, note, fontsize=7, alpha=0.7)
    fig.tight_layout(rect=(0, 0.03 if note else 0, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
