import numpy as np
import pytest
from matplotlib.figure import Figure

from ua3dtalk.heatmaps import (BAR_TEXT, CMAPS, HEADER, colormap_lut, colorize, fixed_scale, heatmap_grid,
                               keyframe_indices, keyframes, uncertainty_plot)

VIEWS = ("audio", "content", "style", "emotion")
KINDS = ("aleatoric", "epistemic", "weight")


def _maps(t=6, h=16, w=20, seed=0):
    rng = np.random.default_rng(seed)
    u = rng.random((t, len(VIEWS), len(KINDS), h, w)).astype(np.float16)
    u[:, :, 2] /= len(VIEWS)  # weights are shares
    return u


def test_grid_shape_even_and_deterministic():
    u = _maps()
    g = heatmap_grid(u, VIEWS, KINDS)
    assert g.dtype == np.uint8 and g.ndim == 4 and g.shape[0] == 6 and g.shape[-1] == 3
    assert g.shape[1] % 2 == 0 and g.shape[2] % 2 == 0
    assert g.shape[1] >= 3 * 16 and g.shape[2] >= 4 * 20
    assert np.array_equal(g, heatmap_grid(u, VIEWS, KINDS))


def test_legend_labels_and_colour_bars_are_drawn():
    u = np.zeros((2, 4, 3, 32, 32), np.float16)
    g = heatmap_grid(u, VIEWS, KINDS, scale={k: (0.0, 1.0) for k in KINDS})
    header = g[0, :HEADER]
    assert (header.max(axis=-1) > 200).sum() > 50  # view names as light text
    # each colour bar runs its map's full range top (hi) to bottom (lo)
    for kind in KINDS:
        lut = colormap_lut(CMAPS[kind])
        hits = np.argwhere(np.all(g[0] == lut[255], axis=-1))
        assert len(hits) >= 10, kind
    # numeric scale next to the bars: text pixels right of the last tile column
    right = g[0, HEADER:, -BAR_TEXT:]
    assert (right.max(axis=-1) > 120).sum() > 20
    # the left margin carries the kind labels
    assert (g[0, HEADER:, :80].max(axis=-1) > 200).sum() > 50


def test_scale_is_fixed_over_the_video():
    u = _maps(t=8)
    scale = fixed_scale(u, KINDS)
    assert scale["weight"] == (0.0, 1.0)
    assert all(lo == 0.0 and hi > 0 for lo, hi in scale.values())
    full = heatmap_grid(u, VIEWS, KINDS)
    # a frame rendered alone with the video's scale looks exactly as inside the video
    alone = heatmap_grid(u[3:4], VIEWS, KINDS, scale=scale)
    assert np.array_equal(full[3], alone[0])
    # a frame's own scale would differ: the scale really comes from the whole video
    hot = u.copy()
    hot[0] *= 4
    assert fixed_scale(hot, KINDS)["aleatoric"][1] > scale["aleatoric"][1]
    assert not np.array_equal(heatmap_grid(hot, VIEWS, KINDS)[3], full[3])


def test_colorize_clips_and_uses_the_map():
    rgb = colorize(np.array([[-1.0, 0.0, 0.5, 1.0, 9.0, np.nan]]), 0.0, 1.0, "magma")
    lut = colormap_lut("magma")
    assert rgb.shape == (1, 6, 3)
    assert np.array_equal(rgb[0, 0], lut[0]) and np.array_equal(rgb[0, 4], lut[255])
    assert np.array_equal(rgb[0, 5], lut[0])
    # perceptual map: lightness grows monotonically along magma
    assert np.all(np.diff(lut.astype(int).sum(axis=1)[::16]) > 0)


def test_bad_shapes_are_clear_errors():
    with pytest.raises(ValueError, match="views"):
        heatmap_grid(_maps(), VIEWS[:3], KINDS)
    with pytest.raises(ValueError, match=r"\[T,V,K,h,w\]"):
        heatmap_grid(np.zeros((2, 4, 3, 8)), VIEWS, KINDS)
    with pytest.raises(ValueError, match="no scale"):
        heatmap_grid(_maps(), VIEWS, KINDS, scale={"aleatoric": (0, 1)})


def test_keyframes_and_plot():
    u = _maps(t=30)
    g = heatmap_grid(u, VIEWS, KINDS)
    frames = np.full((30, 64, 64, 3), 128, np.uint8)
    items = keyframes(frames, g, fps=25, count=4, notes=["happy"] * 30)
    assert len(items) == 4
    assert list(keyframe_indices(30, 4)) == [3, 11, 18, 26]
    image, caption = items[1]
    assert image.shape == (g.shape[1], g.shape[1] + g.shape[2], 3)
    assert caption == "t = 0.44 s · happy"
    scores = {f"{k}/{v}": np.linspace(0, 1, 30) for k in KINDS for v in VIEWS}
    fig = uncertainty_plot(scores, 25, audio=np.zeros(16000 * 30 // 25, np.float32))
    assert isinstance(fig, Figure)
    axes = fig.get_axes()
    assert len(axes) == 4 and axes[-1].get_xlabel() == "time (s)"
    assert len(axes[1].get_lines()) == 4
    assert axes[1].get_lines()[0].get_xdata()[-1] == pytest.approx(29 / 25)
