"""Colour-mapped per-view uncertainty maps: a labelled grid video, key frames,
and a plot of the per-frame scores over time.

The grid has one row per kind (aleatoric, epistemic, fusion weight) and one
column per view (audio, content, style, emotion). Each row has one colour scale
fixed over the whole video, shown by a colour bar with numbers, so frames and
views can be compared by colour alone. Colour maps are perceptually uniform
(magma for uncertainties, viridis for weights).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache

import matplotlib
import numpy as np
import torch
from matplotlib import font_manager
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont

CMAPS: dict[str, str] = {"aleatoric": "magma", "epistemic": "magma", "weight": "viridis"}
KIND_LABELS: dict[str, str] = {"aleatoric": "aleatoric", "epistemic": "epistemic", "weight": "fusion weight"}
BACKGROUND = (17, 17, 20)
TEXT = (235, 235, 235)
GAP = 4
HEADER = 22
LEFT = 112
BAR = 12
BAR_TEXT = 52


@lru_cache(maxsize=4)
def _font(size: int) -> ImageFont.FreeTypeFont:
    """DejaVu Sans ships inside matplotlib, so labels look the same everywhere."""
    return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)


@lru_cache(maxsize=8)
def colormap_lut(name: str) -> np.ndarray:
    """The named matplotlib colour map as a [256, 3] uint8 lookup table."""
    return (matplotlib.colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3] * 255 + 0.5).astype(np.uint8)


def colorize(values: np.ndarray | torch.Tensor, lo: float, hi: float, cmap: str) -> np.ndarray | torch.Tensor:
    """Map values in [lo, hi] (clipped) to RGB uint8 with the colour map; NaN -> lo.

    A tensor stays on its device (the whole video's maps are coloured on the
    GPU when they are there); an array gives an array."""
    as_array = not isinstance(values, torch.Tensor)
    t = torch.as_tensor(np.asarray(values, dtype=np.float32)) if as_array else values.float()
    span = hi - lo if hi > lo else 1.0
    index = (((t - lo) / span).nan_to_num(0.0).clamp(0.0, 1.0) * 255 + 0.5).long()
    rgb = torch.from_numpy(colormap_lut(cmap)).to(t.device)[index]
    return rgb.numpy() if as_array else rgb


def fixed_scale(uncertainty: np.ndarray, kinds: Sequence[str], max_frames: int = 64) -> dict[str, tuple[float, float]]:
    """One (lo, hi) per kind for the whole video. Weights are shares of the total
    precision, so their scale is [0, 1]; uncertainties start at 0 and end at the
    99th percentile of the covered (non-zero) pixels, so a few hot pixels do not
    wash out the rest. At most ``max_frames`` evenly spaced frames are sampled."""
    frames = np.linspace(0, len(uncertainty) - 1, min(len(uncertainty), max_frames)).round().astype(int)
    sample = np.asarray(uncertainty[frames], dtype=np.float32)
    scale = {}
    for k, kind in enumerate(kinds):
        if kind == "weight":
            scale[kind] = (0.0, 1.0)
            continue
        values = np.nan_to_num(sample[:, :, k]).ravel()
        covered = values[values > 0]
        hi = float(np.percentile(covered, 99)) if covered.size else 1.0
        scale[kind] = (0.0, hi if hi > 0 else 1.0)
    return scale


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def _layout(views: Sequence[str], kinds: Sequence[str], tile: tuple[int, int],
            scale: Mapping[str, tuple[float, float]]) -> tuple[np.ndarray, list[list[tuple[int, int]]]]:
    """The static part of every grid frame (labels, colour bars with numbers) and
    the top-left corner of each tile, indexed [kind][view]."""
    th, tw = tile
    width = LEFT + len(views) * (tw + GAP) + BAR + BAR_TEXT
    height = HEADER + len(kinds) * (th + GAP)
    width, height = width + width % 2, height + height % 2
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = _font(13)
    small = _font(11)
    corners = []
    for v, view in enumerate(views):
        x = LEFT + v * (tw + GAP)
        draw.text((x + tw / 2, HEADER / 2), view, fill=TEXT, font=font, anchor="mm")
    for k, kind in enumerate(kinds):
        y = HEADER + k * (th + GAP)
        draw.text((LEFT - 8, y + th / 2), KIND_LABELS.get(kind, kind), fill=TEXT, font=font, anchor="rm")
        corners.append([(y, LEFT + v * (tw + GAP)) for v in range(len(views))])
        lo, hi = scale[kind]
        bar_x = LEFT + len(views) * (tw + GAP)
        ramp = colorize(np.linspace(hi, lo, th)[:, None].repeat(BAR, axis=1), lo, hi, CMAPS.get(kind, "magma"))
        canvas.paste(Image.fromarray(ramp), (bar_x, y))
        for frac, value in ((0.0, hi), (0.5, (lo + hi) / 2), (1.0, lo)):
            ty = y + frac * (th - 1)
            draw.line([(bar_x + BAR, ty), (bar_x + BAR + 3, ty)], fill=TEXT)
            anchor = "la" if frac == 0.0 else "ld" if frac == 1.0 else "lm"
            draw.text((bar_x + BAR + 5, ty), _fmt(value), fill=TEXT, font=small, anchor=anchor)
    return np.asarray(canvas), corners


def heatmap_grid(uncertainty: np.ndarray, views: Sequence[str], kinds: Sequence[str],
                 scale: Mapping[str, tuple[float, float]] | None = None,
                 device: str | torch.device = "cpu") -> np.ndarray:
    """[T, V, K, h, w] maps -> [T, H, W, 3] uint8 grid frames (rows = kinds,
    columns = views) with view/kind labels and one colour bar per kind.

    ``scale`` maps kind -> (lo, hi); by default :func:`fixed_scale` over the
    whole video. The colouring runs on ``device`` (the pipeline's GPU if any)."""
    uncertainty = np.asarray(uncertainty)
    if uncertainty.ndim != 5:
        raise ValueError(f"uncertainty must be [T,V,K,h,w], got shape {uncertainty.shape}")
    n_frames, n_views, n_kinds, h, w = uncertainty.shape
    if (n_views, n_kinds) != (len(views), len(kinds)):
        raise ValueError(f"uncertainty has {n_views} views x {n_kinds} kinds, labels give "
                         f"{len(views)} x {len(kinds)}")
    scale = dict(scale) if scale is not None else fixed_scale(uncertainty, kinds)
    missing = [k for k in kinds if k not in scale]
    if missing:
        raise ValueError(f"no scale for kinds {missing}")
    canvas, corners = _layout(views, kinds, (h, w), scale)
    out = np.empty((n_frames, *canvas.shape), np.uint8)
    out_view = torch.from_numpy(out)    # device -> host copies land in place (no temporary array)
    device = torch.device(device)
    frame = torch.tensor(canvas, device=device)
    chunk = 64
    for start in range(0, n_frames, chunk):
        block = torch.from_numpy(np.ascontiguousarray(uncertainty[start:start + chunk])).to(device)
        grid = frame.expand(len(block), *frame.shape).clone()
        for k, kind in enumerate(kinds):
            rgb = colorize(block[:, :, k], *scale[kind], CMAPS.get(kind, "magma"))  # [t, V, h, w, 3]
            for v in range(n_views):
                y, x = corners[k][v]
                grid[:, y:y + h, x:x + w] = rgb[:, v]
        out_view[start:start + len(block)].copy_(grid)
    return out


def _to_height(image: np.ndarray, height: int) -> np.ndarray:
    if image.shape[0] == height:
        return image
    width = max(1, round(image.shape[1] * height / image.shape[0]))
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


def keyframe_indices(n_frames: int, count: int) -> np.ndarray:
    """``count`` evenly spaced frame indices, centred in their segments."""
    count = max(1, min(count, n_frames))
    return ((np.arange(count) + 0.5) * n_frames / count).astype(int)


def keyframes(frames: np.ndarray, grid: np.ndarray, fps: int, count: int = 6,
              notes: Sequence[str] | None = None) -> list[tuple[np.ndarray, str]]:
    """Evenly spaced key frames for a gallery: each the rendered frame (scaled to
    the grid's height) beside its heatmap grid, captioned with its time and,
    when ``notes`` (one string per frame, e.g. the emotion) is given, its note."""
    if len(frames) != len(grid):
        raise ValueError(f"frames and grid differ in length: {len(frames)} vs {len(grid)}")
    items = []
    for i in keyframe_indices(len(frames), count):
        image = np.concatenate([_to_height(frames[i], grid.shape[1]), grid[i]], axis=1)
        caption = f"t = {i / fps:.2f} s" + (f" · {notes[i]}" if notes is not None else "")
        items.append((image, caption))
    return items


def uncertainty_plot(scores: Mapping[str, np.ndarray], fps: int, audio: np.ndarray | None = None,
                     sample_rate: int = 16000) -> Figure:
    """Per-frame scores (keys ``"kind/view"``) over time in seconds, one panel per
    kind and one line per view, under the audio waveform when given so peaks
    line up with the speech."""
    kinds: dict[str, list[str]] = {}
    for key in scores:
        kind, _, view = key.partition("/")
        kinds.setdefault(kind, []).append(view)
    first = int(audio is not None)
    panels = len(kinds) + first
    fig = Figure(figsize=(9, 1.5 + 1.6 * panels), layout="constrained")
    axes = fig.subplots(panels, 1, sharex=True, squeeze=False)[:, 0]
    if audio is not None:
        # the peak envelope at 4x the frame rate: light to draw, still shows syllables
        audio = np.abs(np.asarray(audio, dtype=np.float32).reshape(-1))
        hop = max(1, sample_rate // (4 * fps))
        envelope = np.pad(audio, (0, -audio.size % hop)).reshape(-1, hop).max(axis=1)
        t = np.arange(envelope.size) * hop / sample_rate
        axes[0].fill_between(t, -envelope, envelope, color="0.45", linewidth=0)
        axes[0].set_ylabel("audio")
        axes[0].set_yticks([])
    for ax, (kind, views) in zip(axes[first:], kinds.items()):
        for view in views:
            series = np.asarray(scores[f"{kind}/{view}"], dtype=np.float32)
            ax.plot(np.arange(series.size) / fps, series, label=view, linewidth=1.2)
        ax.set_ylabel(KIND_LABELS.get(kind, kind))
        ax.grid(alpha=0.3)
    axes[first].legend(loc="upper right", ncol=4, fontsize="small")
    axes[-1].set_xlabel("time (s)")
    fig.suptitle("Uncertainty per view over time")
    return fig
