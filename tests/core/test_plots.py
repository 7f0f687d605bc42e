"""Plots: real PNG files of a sensible size, noise drawn in its own grey, self-contained plotly
HTML with the title and escaped hover texts, subsampling said in the title, clear errors."""

from __future__ import annotations

import io

import numpy as np
import pytest

from purify_assets.core.plots import (
    NOISE_COLOR,
    line_chart_png,
    scatter_3d_html,
    scatter_png,
    sizes_bar_png,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def scene() -> tuple[np.ndarray, np.ndarray]:
    """Three clusters on the left, 300 noise points in a band on the right."""
    rng = np.random.default_rng(0)
    pts = [rng.normal(loc=c, scale=0.15, size=(200, 3)) for c in ([0, 0, 0], [1, 1, 0], [0, 1.5, 1])]
    noise = np.column_stack([rng.uniform(3, 4, 300), rng.uniform(-0.5, 2, 300), rng.uniform(0, 1, 300)])
    coords = np.vstack(pts + [noise]).astype(np.float32)
    labels = np.concatenate([np.full(200, 0), np.full(200, 1), np.full(200, 2), np.full(300, -1)])
    return coords, labels


def pixels(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def near_colour(img: np.ndarray, hex_colour: str, alpha: float, tol: int = 14) -> int:
    """Pixels close to ``hex_colour`` drawn with ``alpha`` over white."""
    rgb = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)])
    want = alpha * rgb + (1 - alpha) * 255
    return int((np.abs(img - want).max(axis=2) <= tol).sum())


def test_scatter_png_is_a_png_of_reasonable_size(scene):
    coords, labels = scene
    png = scatter_png(coords[:, :2], labels, "blobs")
    assert png[:8] == PNG_MAGIC
    assert 5_000 < len(png) < 2_000_000
    img = pixels(png)
    assert 300 < img.shape[0] < 2000 and 300 < img.shape[1] < 2500
    # the first cluster's tab10 blue is there
    assert near_colour(img, "#1f77b4", 0.75, tol=30) > 50


def test_scatter_png_draws_noise_in_grey(scene):
    coords, labels = scene
    with_noise = pixels(scatter_png(coords[:, :2], labels, "t"))
    keep = labels >= 0
    without = pixels(scatter_png(coords[keep, :2], labels[keep], "t"))
    grey_with = near_colour(with_noise, NOISE_COLOR, 0.5)
    grey_without = near_colour(without, NOISE_COLOR, 0.5)
    # anti-aliased text adds a few grey pixels either way; 300 noise points add over a thousand
    assert grey_with > grey_without + 800, (grey_with, grey_without)


def test_scatter_png_subsamples_large_inputs():
    rng = np.random.default_rng(1)
    coords = rng.normal(size=(3000, 2))
    labels = rng.integers(-1, 25, 3000)  # more clusters than the legend shows, noise included
    png = scatter_png(coords, labels, "big", max_points=500)
    assert png[:8] == PNG_MAGIC and len(png) > 5_000


def test_scatter_png_of_a_sample_takes_sizes_from_all_labels():
    rng = np.random.default_rng(2)
    coords = rng.normal(size=(400, 2))
    labels = rng.integers(0, 4, 400)
    population = np.concatenate([labels, np.full(50, 4)])  # cluster 4 is in no drawn point
    alone = scatter_png(coords, labels, "sample")
    assert scatter_png(coords, labels, "sample", all_labels=labels) == alone  # the sample is everything
    a, b = pixels(alone), pixels(scatter_png(coords, labels, "sample", all_labels=population))
    # the same points; the title says "showing 400 of 450 points" and the legend has other sizes
    assert a.shape == b.shape and (a != b).any(axis=2).sum() > 100


def test_scatter_3d_html_contains_plotly_title_and_noise(scene):
    coords, labels = scene
    texts = [f"row {i}" for i in range(len(labels))]
    texts[0] = "<script>alert(1)</script> & more"
    page = scatter_3d_html(coords, labels, texts, "KoBEST <umap> 3-D")
    assert page.lstrip().lower().startswith("<html") or "<!doctype html" in page[:200].lower()
    assert "plotly" in page.lower()
    assert "Plotly.newPlot" in page and len(page) > 1_000_000  # plotly.js embedded, opens offline
    assert "KoBEST &lt;umap&gt; 3-D" in page and "(900 points)" in page
    assert "noise (300)" in page and NOISE_COLOR in page
    for cid, size in ((0, 200), (1, 200), (2, 200)):
        assert f"{cid} ({size})" in page
    assert "<script>alert(1)</script>" not in page
    assert "row 17" in page


def test_scatter_3d_html_subsamples_and_accepts_no_texts(scene):
    coords, labels = scene
    page = scatter_3d_html(coords, labels, None, "sub", max_points=100)
    assert "showing 100 of 900 points" in page
    with pytest.raises(ValueError, match="hover_texts"):
        scatter_3d_html(coords, labels, ["a"], "x")


def test_shape_errors_are_clear(scene):
    coords, labels = scene
    with pytest.raises(ValueError, match="coords"):
        scatter_3d_html(coords[:, :2], labels, None, "x")
    with pytest.raises(ValueError, match="labels"):
        scatter_png(coords[:, :2], labels[:10], "x")


def test_line_chart_png_with_gaps_and_marker():
    ks = list(range(2, 9))
    series = {"silhouette": [0.3, 0.5, float("nan"), 0.7, 0.6, None, 0.4], "inertia": [9, 7, 5, 4, 3.5, 3.2, 3]}
    png = line_chart_png(ks, series, "k sweep", mark_x=5)
    assert png[:8] == PNG_MAGIC and 5_000 < len(png) < 1_000_000
    single = line_chart_png(ks, {"silhouette": series["silhouette"]}, "one")
    assert pixels(single).shape[1] < pixels(png).shape[1]  # one column of panels instead of two
    with pytest.raises(ValueError, match="series 'x'"):
        line_chart_png(ks, {"x": [1, 2]}, "bad")
    with pytest.raises(ValueError):
        line_chart_png(ks, {}, "empty")


def test_sizes_bar_png_has_a_grey_noise_bar(scene):
    _, labels = scene
    png = sizes_bar_png(labels, "sizes")
    assert png[:8] == PNG_MAGIC and 2_000 < len(png) < 1_000_000
    assert near_colour(pixels(png), NOISE_COLOR, 1.0, tol=3) > 500
    no_noise = sizes_bar_png(labels[labels >= 0], "sizes")
    assert near_colour(pixels(no_noise), NOISE_COLOR, 1.0, tol=3) < 50
