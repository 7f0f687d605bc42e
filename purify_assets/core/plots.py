"""Plots: 2-D scatter PNG (matplotlib, Agg) and 3-D interactive HTML (plotly).

Figures are built without pyplot (``matplotlib.figure.Figure``, saved through Agg).

CONTRACT: ``scatter_png(coords, labels, title) -> bytes`` (PNG; noise label -1 drawn grey and
small); ``scatter_3d_html(coords, labels, hover_texts, title) -> str`` (self-contained HTML).
Also ``line_chart_png(xs, series, title)`` (small multiples, e.g. the k sweep) and
``sizes_bar_png(labels, title)`` (cluster sizes, the balance question at a glance).

Matplotlib and plotly are imported inside the functions. Large inputs are subsampled (seeded) to
keep files small and drawing fast; the title says so ("showing m of n points"). The HTML embeds
plotly.js (about 3.5 MB) instead of loading it from a CDN, so it opens offline.
"""

from __future__ import annotations

import functools
import html
import io
import textwrap
import uuid
from typing import Sequence

import numpy as np

NOISE_COLOR = "#b0b0b0"


def _palette(m: int) -> list[str]:
    """m distinct hex colours: tab10/tab20 when they suffice, else evenly spaced hues."""
    import matplotlib
    from matplotlib import colors as mcolors

    if m <= 10:
        cmap = matplotlib.colormaps["tab10"]
        return [mcolors.to_hex(cmap(i)) for i in range(m)]
    if m <= 20:
        cmap = matplotlib.colormaps["tab20"]
        return [mcolors.to_hex(cmap(i)) for i in range(m)]
    out = []
    for i in range(m):
        h = (i * 0.618033988749895) % 1.0  # golden-ratio hue steps keep neighbours apart
        s = 0.55 + 0.35 * ((i // 7) % 2)
        v = 0.85 - 0.25 * ((i // 3) % 2)
        out.append(mcolors.to_hex(mcolors.hsv_to_rgb((h, s, v))))
    return out


def drawn_points(n: int, max_points: int, seed: int = 0) -> np.ndarray:
    """Sorted positions of the points a plot of ``n`` points draws with these ``max_points`` and
    ``seed`` (all of them up to ``max_points``). A caller that reads hover texts from a warehouse
    reads only these rows' texts; the others may be None."""
    if n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))


def _check(coords: np.ndarray, labels: np.ndarray, dims: int) -> tuple[np.ndarray, np.ndarray]:
    c = np.asarray(coords, dtype=np.float64)
    if c.ndim != 2 or c.shape[1] < dims:
        raise ValueError(f"coords must have shape (n, {dims}), got {c.shape}")
    lab = np.asarray(labels).astype(np.int64)
    if lab.shape != (c.shape[0],):
        raise ValueError(f"labels has shape {lab.shape}, expected ({c.shape[0]},)")
    return c[:, :dims], lab


def _figure(figsize: tuple[float, float], rows: int = 1, cols: int = 1, squeeze: bool = True):
    """A figure with its axes, made without pyplot: no global figure registry to clean up (so a plot
    can be drawn in a worker thread beside other work) and no pyplot import in the run process."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(rows, cols, squeeze=squeeze)


def _png(fig, tight: bool = True) -> bytes:
    """The figure as PNG bytes (Agg). ``tight`` crops to the drawn extent, which costs a second draw of
    the whole figure (a third of a 20,000-point scatter's time here): figures with a fixed layout
    pass False."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight" if tight else None)
    return buf.getvalue()


def scatter_png(coords: np.ndarray, labels: np.ndarray, title: str, max_points: int = 50000, seed: int = 0,
                figsize: tuple[float, float] = (8.0, 6.5), all_labels: np.ndarray | None = None) -> bytes:
    """2-D scatter coloured by cluster; noise (-1) grey and small, drawn underneath. Every cluster's
    id is written at its median position; a legend with sizes is shown up to 20 clusters.
    ``all_labels``: the labels of every row when ``coords`` and ``labels`` are already a sample of
    them (a caller that projects only the points it draws); the legend's sizes and the title's
    count of rows come from it."""
    c, lab = _check(coords, labels, 2)
    population = lab if all_labels is None else np.asarray(all_labels).astype(np.int64)
    idx = drawn_points(len(lab), max_points, seed)
    n = len(population)
    cs, ls = c[idx], lab[idx]
    ids = np.unique(population[population >= 0])
    colors = dict(zip(ids.tolist(), _palette(len(ids))))
    full_sizes = dict(zip(*np.unique(population, return_counts=True)))
    point = float(np.clip(30000.0 / max(len(idx), 1), 1.0, 12.0))

    fig, ax = _figure(figsize)
    # markers of a line without its line, not ax.scatter: one marker stamped at every point (Agg's
    # draw_markers) instead of a path per point. A 50,000-point figure with a 13-entry legend took
    # 0.26-0.35 s with scatter here, 0.24-0.26 s with this (most of the rest is the legend's text);
    # ``point`` is an area in points^2 as scatter's ``s`` was, a marker takes its diameter
    noise = ls < 0
    if noise.any():
        ax.plot(cs[noise, 0], cs[noise, 1], ls="", marker="o", ms=float(np.sqrt(point * 0.4)), mew=0, color=NOISE_COLOR,
                alpha=0.5, label=f"noise ({full_sizes.get(-1, 0):,})", rasterized=True)
    for cid in ids:
        sel = ls == cid
        if not sel.any():
            continue
        ax.plot(cs[sel, 0], cs[sel, 1], ls="", marker="o", ms=float(np.sqrt(point)), mew=0, color=colors[cid],
                alpha=0.75, label=f"{cid} ({full_sizes[cid]:,})", rasterized=True)
    for cid in ids:
        sel = lab == cid
        if not sel.any():
            continue
        mx, my = np.median(c[sel, 0]), np.median(c[sel, 1])
        ax.annotate(str(cid), (mx, my), ha="center", va="center", fontsize=9, fontweight="bold",
                    bbox=dict(boxstyle="round,pad=0.15", fc="white", ec=colors[cid], alpha=0.8))
    shown = f" (showing {len(idx):,} of {n:,} points)" if len(idx) < n else f" ({n:,} points)"
    # a fixed layout (no tight crop, see _png): the title wrapped to the width, room for the legend
    lines = textwrap.wrap(title + shown, 84) or [""]
    ax.set_title("\n".join(lines[:3]), fontsize=11)
    ax.set_xticks([])
    ax.set_yticks([])
    legend = 0 < len(ids) <= 20
    if legend:
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, markerscale=max(1.0, 6.0 / point),
                  title="cluster (size)", title_fontsize=8, frameon=False)
    top = 1.0 - (0.3 + 0.2 * min(len(lines), 3)) / figsize[1]
    fig.subplots_adjust(left=0.02, bottom=0.02, right=0.84 if legend else 0.98, top=top)
    return _png(fig, tight=False)


def scatter_3d_html(coords: np.ndarray, labels: np.ndarray, hover_texts: Sequence[str] | None, title: str,
                    max_points: int = 20000, seed: int = 0, hover_chars: int = 200) -> str:
    """Interactive 3-D scatter (plotly), one trace per cluster (click the legend to hide one),
    noise grey and small. At most ``max_points`` points (seeded subsample, ``drawn_points``); hover
    shows the cluster and the first ``hover_chars`` characters of the text (HTML-escaped).
    ``hover_texts`` has one item per point; only those of the drawn points are read."""
    c, lab = _check(coords, labels, 3)
    n = len(lab)
    if hover_texts is not None and len(hover_texts) != n:
        raise ValueError(f"hover_texts has {len(hover_texts)} items, expected {n}")
    idx = drawn_points(n, max_points, seed)
    ids = np.unique(lab[lab >= 0])
    colors = dict(zip(ids.tolist(), _palette(len(ids))))
    full_sizes = dict(zip(*np.unique(lab, return_counts=True)))

    def hov(sel_idx: np.ndarray) -> list[str]:
        # one vectorised pass (polars) instead of a Python loop with html.escape per point: same strings
        import polars as pl

        texts = pl.Series([None if hover_texts is None else hover_texts[i] for i in sel_idx], dtype=pl.String).fill_null("")
        cut = pl.when(pl.col("t").str.len_chars() > hover_chars).then(
            pl.col("t").str.slice(0, hover_chars) + "\u2026").otherwise(pl.col("t"))
        escaped = cut.str.replace_all("&", "&amp;", literal=True).str.replace_all("<", "&lt;", literal=True) \
            .str.replace_all(">", "&gt;", literal=True).str.replace_all('"', "&quot;", literal=True) \
            .str.replace_all("'", "&#x27;", literal=True).str.replace_all("\n", " ", literal=True)
        frame = pl.DataFrame({"t": texts, "c": lab[sel_idx]})
        return frame.select(pl.format("cluster {}<br>{}", pl.col("c"), escaped))[:, 0].to_list()

    # the figure as plain plotly.js JSON: plotly's graph objects validate every property of every
    # trace in Python, which took about half of the 0.2 s an HTML of 20,000 points cost
    traces = []
    groups = ([-1] if (lab[idx] < 0).any() else []) + ids.tolist()
    for cid in groups:
        sel = idx[lab[idx] == cid]
        if len(sel) == 0:
            continue
        is_noise = cid < 0
        traces.append({
            "type": "scatter3d", "mode": "markers",
            # four decimals are far below what a 3-D view can show and keep the file small
            "x": np.round(c[sel, 0], 4).tolist(), "y": np.round(c[sel, 1], 4).tolist(), "z": np.round(c[sel, 2], 4).tolist(),
            "name": f"noise ({full_sizes[cid]:,})" if is_noise else f"{cid} ({full_sizes[cid]:,})",
            "marker": {"size": 1.5 if is_noise else 2.5, "color": NOISE_COLOR if is_noise else colors[cid],
                       "opacity": 0.4 if is_noise else 0.8},
            "hovertext": hov(sel), "hoverinfo": "text",
        })
    shown = f" (showing {len(idx):,} of {n:,} points)" if len(idx) < n else f" ({n:,} points)"
    layout = {"title": {"text": html.escape(title) + shown},
              "legend": {"title": {"text": "cluster (size)"}, "itemsizing": "constant"},
              "margin": {"l": 0, "r": 0, "t": 40, "b": 0},
              "scene": {"xaxis": {"title": {"text": ""}}, "yaxis": {"title": {"text": ""}}, "zaxis": {"title": {"text": ""}}}}
    return _plotly_page({"data": traces, "layout": layout})


@functools.lru_cache(maxsize=1)
def _plotly_js() -> str:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def _plotly_page(figure: dict) -> str:
    """A standalone HTML page drawing ``figure`` (plain plotly.js JSON) with plotly.js inlined, so it
    opens offline. Built here rather than by ``plotly.io.to_html``, which re-encodes the figure
    through plotly's JSON engine and re-reads the 3.5 MB library on every call."""
    import json

    # "</" inside a JSON string would end the script element early
    data = json.dumps(figure["data"], ensure_ascii=False, separators=(",", ":")).replace("</", "<\\/")
    layout = json.dumps(figure["layout"], ensure_ascii=False, separators=(",", ":")).replace("</", "<\\/")
    div = f"purify-{uuid.uuid4().hex[:12]}"
    return ("<html>\n<head><meta charset=\"utf-8\" /></head>\n<body>\n"
            f"<script type=\"text/javascript\">{_plotly_js()}</script>\n"
            f"<div id=\"{div}\" style=\"height:100vh; width:100%;\"></div>\n"
            f"<script type=\"text/javascript\">Plotly.newPlot(\"{div}\", {data}, {layout}, {{\"responsive\": true}});</script>\n"
            "</body>\n</html>\n")


def line_chart_png(xs: Sequence[float], series: dict[str, Sequence[float]], title: str, xlabel: str = "k",
                   mark_x: float | None = None) -> bytes:
    """One small panel per series (their scales differ: silhouette vs inertia), sharing the x
    axis; NaN values leave gaps. ``mark_x`` draws a dashed line (e.g. the chosen k)."""
    if not series:
        raise ValueError("line_chart_png needs at least one series")
    xs = list(xs)
    for name, ys in series.items():
        if len(ys) != len(xs):
            raise ValueError(f"series {name!r} has {len(ys)} values for {len(xs)} x values")
    m = len(series)
    cols = 1 if m == 1 else 2
    rows = (m + cols - 1) // cols
    from matplotlib.ticker import MaxNLocator

    fig, axes = _figure((4.2 * cols, 2.6 * rows), rows, cols, squeeze=False)
    integer_x = all(float(v).is_integer() for v in xs)
    for ax, (name, ys) in zip(axes.ravel(), series.items()):
        y = np.array([np.nan if v is None else float(v) for v in ys])
        ax.plot(xs, y, marker="o", ms=3.5, lw=1.4)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.grid(alpha=0.3)
        if integer_x:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if mark_x is not None:
            ax.axvline(mark_x, ls="--", c="grey", lw=1)
    for ax in axes.ravel()[m:]:
        ax.axis("off")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return _png(fig)


def sizes_bar_png(labels: np.ndarray, title: str, max_bars: int = 60) -> bytes:
    """Bar chart of cluster sizes, largest first, noise as a grey bar at the end."""
    lab = np.asarray(labels).astype(np.int64)
    ids, counts = np.unique(lab[lab >= 0], return_counts=True)
    order = np.argsort(-counts, kind="stable")[:max_bars]
    names = [str(i) for i in ids[order]]
    vals = counts[order].tolist()
    colors = [dict(zip(ids.tolist(), _palette(len(ids))))[i] for i in ids[order]]
    n_noise = int((lab < 0).sum())
    if n_noise:
        names.append("noise")
        vals.append(n_noise)
        colors.append(NOISE_COLOR)
    fig, ax = _figure((max(4.0, 0.3 * len(names) + 1.5), 3.2))
    ax.bar(range(len(vals)), vals, color=colors)
    ax.set_xticks(range(len(vals)))
    ax.set_xticklabels(names, fontsize=7, rotation=90 if len(names) > 20 else 0)
    ax.set_ylabel("rows")
    extra = f" (largest {max_bars} of {len(ids)})" if len(ids) > max_bars else ""
    ax.set_title(title + extra, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _png(fig)
