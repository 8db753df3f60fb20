"""Evaluation metrics: image quality, lip sync and emotion, as pure functions.

Nothing here knows about the model: every function takes arrays or tensors so the
same code scores renders on CPU or GPU, and each metric can be checked on
constructed cases with known answers (tests/test_metrics.py).

Conventions:
- images are float tensors ``[B, 3, H, W]`` in ``[0, 1]``; masks are ``[B, H, W]``
  or ``[B, 1, H, W]`` (bool or {0, 1}); per-image results are ``[B]``;
- landmarks are MediaPipe face-mesh arrays ``[T, 478, 2|3]`` in pixels (a frame
  where detection failed is all NaN); distances use the image-plane x, y only,
  because MediaPipe's z is a relative depth, not pixels.

LPIPS weights cannot be downloaded here, so :class:`LPIPS` loads a single
safetensors file and raises :class:`MetricUnavailable` when there is none; run
``python -m ua3dtalk.metrics convert-lpips`` where the official files exist.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ua3dtalk.data.landmarks import (
    LEFT_BROW_LOWER, LEFT_BROW_UPPER, LEFT_EYE, LIPS_INNER, LIPS_OUTER, NOSE, OUTER_EYE_CORNERS, RIGHT_BROW_LOWER,
    RIGHT_BROW_UPPER, RIGHT_EYE,
)
# Re-exported: the lip-sync signal is the one preprocessing stores, defined once in landmarks.
from ua3dtalk.data.landmarks import mouth_opening as mouth_opening

LPIPS_ENV = "UA3DTALK_LPIPS_WEIGHTS"

# Landmark groups of the metrics, from the shared MediaPipe groups.
MOUTH: tuple[int, ...] = LIPS_OUTER + LIPS_INNER
# Brows (lower row, then upper), eyes, nose, mouth. The order is the layout of
# expression_features, which saved expression classifiers depend on.
EXPRESSION_POINTS: tuple[int, ...] = (RIGHT_BROW_LOWER + RIGHT_BROW_UPPER + LEFT_BROW_LOWER + LEFT_BROW_UPPER
                                      + RIGHT_EYE + LEFT_EYE + NOSE + MOUTH)


class MetricUnavailable(RuntimeError):
    """A metric needs weights that are not on this machine."""


# --------------------------------------------------------------------- images
def _check_images(pred: Tensor, target: Tensor) -> None:
    if pred.shape != target.shape or pred.ndim != 4 or pred.shape[1] != 3:
        raise ValueError(f"images must both be [B,3,H,W]; got {tuple(pred.shape)} and {tuple(target.shape)}")


def _mask_weights(mask: Tensor, like: Tensor) -> Tensor:
    """Mask as float ``[B,1,H,W]`` matching the images' batch and size."""
    m = mask.to(like.device, like.dtype)
    if m.ndim == 3:
        m = m[:, None]
    b, _, h, w = like.shape
    if m.shape != (b, 1, h, w):
        raise ValueError(f"mask must be [B,H,W] or [B,1,H,W] with B,H,W={b},{h},{w}; got {tuple(mask.shape)}")
    if bool((m.flatten(1).sum(1) <= 0).any()):
        raise ValueError("mask selects no pixel in at least one image")
    return m


def psnr(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Peak signal-to-noise ratio per image (peak 1), ``inf`` for identical images.

    With ``mask`` the squared error is averaged over the masked pixels only (e.g.
    a face crop), so the background cannot inflate the score.
    """
    _check_images(pred, target)
    se = (pred.double() - target.double()).square()
    if mask is None:
        mse = se.flatten(1).mean(1)
    else:
        m = _mask_weights(mask, se)
        mse = (se * m).flatten(1).sum(1) / (m.flatten(1).sum(1) * se.shape[1])
    return (10.0 * torch.log10(1.0 / mse)).to(pred.dtype)


def _gaussian_window(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    x = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-x.square() / (2 * sigma**2))
    return g / g.sum()


def ssim_map(pred: Tensor, target: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """SSIM map ``[B, H-window+1, W-window+1]`` (channel mean), 'valid' filtering.

    Constants are Wang et al.'s (K1=0.01, K2=0.03, data range 1) with population
    statistics under the Gaussian window, the same as scikit-image's
    ``structural_similarity(gaussian_weights=True, use_sample_covariance=False)``.
    """
    _check_images(pred, target)
    if min(pred.shape[-2:]) < window:
        raise ValueError(f"images must be at least {window}x{window} for SSIM; got {tuple(pred.shape[-2:])}")
    x, y = pred.double(), target.double()
    c = x.shape[1]
    g = _gaussian_window(window, sigma, x.dtype, x.device)
    kh = g.view(1, 1, window, 1).expand(c, 1, window, 1)
    kw = g.view(1, 1, 1, window).expand(c, 1, 1, window)

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(F.conv2d(t, kh, groups=c), kw, groups=c)

    mx, my = blur(x), blur(y)
    vx = blur(x * x) - mx.square()
    vy = blur(y * y) - my.square()
    cxy = blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx.square() + my.square() + c1) * (vx + vy + c2))
    return s.mean(1)


def ssim(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Structural similarity per image (Gaussian window 11, sigma 1.5); 1 for identical images.

    With ``mask`` the SSIM map is averaged over the windows whose centre lies in
    the mask, so pixels far outside the mask do not count.
    """
    window = 11
    s = ssim_map(pred, target, window=window)
    if mask is None:
        return s.flatten(1).mean(1).to(pred.dtype)
    r = window // 2
    m = _mask_weights(mask, pred)[:, 0, r:-r, r:-r].double()
    if bool((m.flatten(1).sum(1) <= 0).any()):
        raise ValueError("mask has no pixel at least 5 px inside the image borders in some image")
    return ((s * m).flatten(1).sum(1) / m.flatten(1).sum(1)).to(pred.dtype)


# ---------------------------------------------------------------------- LPIPS
# (name, in, out, kernel, stride, padding) of AlexNet's five convolutions; LPIPS taps each ReLU.
_ALEX_CONVS: tuple[tuple[str, int, int, int, int, int], ...] = (
    ("conv1", 3, 64, 11, 4, 2),
    ("conv2", 64, 192, 5, 1, 2),
    ("conv3", 192, 384, 3, 1, 1),
    ("conv4", 384, 256, 3, 1, 1),
    ("conv5", 256, 256, 3, 1, 1),
)
# torchvision's ``alexnet().features`` indices of the same convolutions.
_TORCHVISION_ALEX_INDEX: tuple[int, ...] = (0, 3, 6, 8, 10)


class LPIPS(nn.Module):
    """LPIPS distance (AlexNet variant, v0.1) per image pair.

    Expected safetensors keys (float tensors):

    - ``backbone.conv{k}.weight`` / ``backbone.conv{k}.bias`` for k = 1..5, shapes
      [64,3,11,11], [192,64,5,5], [384,192,3,3], [256,384,3,3], [256,256,3,3]
      (torchvision AlexNet ``features.{0,3,6,8,10}``);
    - ``lin.{i}.weight`` for i = 0..4, shapes [1,C_i,1,1] with C = 64,192,384,256,256
      (official LPIPS ``lin{i}.model.1.weight``).

    Use :func:`convert_lpips_weights` to build that file from the official files.
    """

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.ModuleDict({n: nn.Conv2d(i, o, k, s, p) for n, i, o, k, s, p in _ALEX_CONVS})
        self.lin = nn.ModuleList(nn.Conv2d(o, 1, 1, bias=False) for _, _, o, _, _, _ in _ALEX_CONVS)
        # LPIPS's input scaling: images in [-1, 1] mapped to ImageNet-like statistics.
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)

    def _features(self, x: Tensor) -> list[Tensor]:
        feats = []
        h = (x * 2 - 1 - self.shift) / self.scale
        for k, conv in enumerate(self.backbone.values()):
            if k in (1, 2):  # max-pool before conv2 and conv3, as in AlexNet
                h = F.max_pool2d(h, kernel_size=3, stride=2)
            h = F.relu(conv(h))
            feats.append(h)
        return feats

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """Distance ``[B]`` between images ``[B,3,H,W]`` in [0, 1]; 0 for identical images."""
        _check_images(pred, target)
        total = pred.new_zeros(pred.shape[0])
        for fa, fb, lin in zip(self._features(pred), self._features(target), self.lin):
            na = fa / (fa.square().sum(1, keepdim=True).sqrt() + 1e-10)
            nb = fb / (fb.square().sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + lin((na - nb).square()).mean(dim=(1, 2, 3))
        return total

    @classmethod
    def from_pretrained(cls, path: str | None = None) -> "LPIPS":
        """Load weights from ``path`` or ``$UA3DTALK_LPIPS_WEIGHTS``; MetricUnavailable if absent."""
        from safetensors.torch import load_file

        src = path or os.environ.get(LPIPS_ENV)
        if not src:
            raise MetricUnavailable(
                f"LPIPS weights not configured: pass a path or set {LPIPS_ENV} to a safetensors file "
                "made by `python -m ua3dtalk.metrics convert-lpips`")
        if not Path(src).is_file():
            raise MetricUnavailable(f"LPIPS weights not found at {src}; set {LPIPS_ENV} to an existing file")
        state = load_file(src)
        model = cls()
        expected = model.state_dict()
        missing = sorted(set(expected) - set(state))
        extra = sorted(set(state) - set(expected))
        bad = sorted(k for k in expected if k in state and state[k].shape != expected[k].shape)
        if missing or extra or bad:
            raise ValueError(f"{src} is not an LPIPS-AlexNet weights file: missing {missing}, "
                             f"unexpected {extra}, wrong shapes {bad}")
        model.load_state_dict(state)
        return model.eval()


def convert_lpips_weights(lin_pth: str, alexnet_pth: str, out: str) -> None:
    """Write the safetensors file :class:`LPIPS` loads from the official weights.

    ``lin_pth``: the LPIPS package's ``weights/v0.1/alex.pth``; ``alexnet_pth``:
    torchvision's ImageNet AlexNet state dict (``alexnet-owt-7be5be79.pth``). Both
    are read with ``torch.load(weights_only=True)``, which loads tensors only.
    """
    from safetensors.torch import save_file

    lin = torch.load(lin_pth, map_location="cpu", weights_only=True)
    alex = torch.load(alexnet_pth, map_location="cpu", weights_only=True)
    state: dict[str, Tensor] = {}
    for key, value in lin.items():
        m = re.fullmatch(r"lin(\d)\.(?:model\.1\.)?weight", key)
        if m:
            state[f"lin.{m.group(1)}.weight"] = value.float().contiguous()
    for (name, *_), idx in zip(_ALEX_CONVS, _TORCHVISION_ALEX_INDEX):
        for part in ("weight", "bias"):
            key = f"features.{idx}.{part}"
            if key not in alex:
                raise ValueError(f"{alexnet_pth} has no {key}: not a torchvision AlexNet state dict")
            state[f"backbone.{name}.{part}"] = alex[key].float().contiguous()
    if sorted(k for k in state if k.startswith("lin.")) != [f"lin.{i}.weight" for i in range(5)]:
        raise ValueError(f"{lin_pth} lacks the five lin layers (lin0..lin4): not an LPIPS alex.pth")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    save_file(state, out)


@lru_cache(maxsize=2)
def _cached_lpips(path: str | None, env: str | None) -> LPIPS:
    return LPIPS.from_pretrained(path or env)


def lpips_or_none(pred: Tensor, target: Tensor, path: str | None = None) -> tuple[Tensor | None, str]:
    """LPIPS per image, or ``None`` and a note saying why, so an evaluation can go on without it."""
    try:
        model = _cached_lpips(path, os.environ.get(LPIPS_ENV))
    except MetricUnavailable as e:
        return None, f"LPIPS skipped: {e}"
    src = path or os.environ.get(LPIPS_ENV)
    with torch.no_grad():
        value = model.to(pred.device)(pred.float(), target.float())
    return value, f"LPIPS (AlexNet v0.1) from {src}"


# ------------------------------------------------------------------ lip sync
def lip_box(landmarks: Tensor, size: int, margin: float) -> Tensor:
    """[T,478,2+] landmarks (pixels) -> [T,size,size] bool: the lip landmarks' bounding box grown by
    ``margin`` pixels, the region that holds most of a talking head's error (bench/error_regions.py)."""
    lips = landmarks[:, list(MOUTH), :2]
    lo, hi = lips.amin(1) - margin, lips.amax(1) + margin                         # [T,2]
    grid = torch.arange(size, dtype=lips.dtype, device=lips.device)
    inside_x = (grid[None] >= lo[:, :1]) & (grid[None] <= hi[:, :1])            # [T,W]
    inside_y = (grid[None] >= lo[:, 1:]) & (grid[None] <= hi[:, 1:])            # [T,H]
    return inside_y[:, :, None] & inside_x[:, None, :]


def _xy(landmarks: np.ndarray) -> np.ndarray:
    a = np.asarray(landmarks, dtype=np.float64)
    if a.ndim != 3 or a.shape[2] not in (2, 3):
        raise ValueError(f"landmarks must be [T, N, 2|3]; got {a.shape}")
    return a[..., :2]


def landmark_distance(pred_landmarks: np.ndarray, true_landmarks: np.ndarray,
                      indices: Sequence[int] | None = None) -> float:
    """LMD: mean Euclidean pixel distance over frames and the given landmarks.

    Pass the mouth indices (:data:`MOUTH`) for the lip-sync LMD; ``None`` uses all
    points. Frames with a NaN in either set (failed detection) are left out; NaN
    when no frame is left.
    """
    p, t = _xy(pred_landmarks), _xy(true_landmarks)
    if p.shape != t.shape:
        raise ValueError(f"landmark arrays differ in shape: {p.shape} vs {t.shape}")
    if indices is not None:
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size == 0 or idx.min() < 0 or idx.max() >= p.shape[1]:
            raise ValueError(f"indices must be non-empty and within [0, {p.shape[1]})")
        p, t = p[:, idx], t[:, idx]
    ok = ~(np.isnan(p).any(axis=(1, 2)) | np.isnan(t).any(axis=(1, 2)))
    if not ok.any():
        return float("nan")
    return float(np.linalg.norm(p[ok] - t[ok], axis=-1).mean())


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation over the pairs where both are finite; NaN if undefined."""
    x, y = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"pearson needs equal lengths; got {x.size} and {y.size}")
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 2:
        return float("nan")
    x, y = x[ok] - x[ok].mean(), y[ok] - y[ok].mean()
    denom = math.sqrt(float((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / denom) if denom > 0.0 else float("nan")


def sync_offset_confidence(audio_emb: Tensor, mouth_emb: Tensor, max_offset: int = 7) -> tuple[int, float]:
    """SyncNet-style AV offset and confidence from per-frame embeddings ``[T, D]``.

    For each offset k in [-max_offset, max_offset] the mean Euclidean distance
    between ``mouth_emb[t]`` and ``audio_emb[t - k]`` is taken over the frames where
    both exist (no zero padding, which would bias the ends). The offset is the
    arg-min (k > 0: the mouth lags the audio by k frames) and the confidence is
    median over offsets minus the minimum, as SyncNet reports it.
    """
    a, m = torch.as_tensor(audio_emb).double(), torch.as_tensor(mouth_emb).double()
    if a.ndim != 2 or a.shape != m.shape:
        raise ValueError(f"embeddings must both be [T, D]; got {tuple(a.shape)} and {tuple(m.shape)}")
    if max_offset < 0 or a.shape[0] <= max_offset:
        raise ValueError(f"need 0 <= max_offset < T; got max_offset={max_offset}, T={a.shape[0]}")
    t = a.shape[0]
    dists = []
    for k in range(-max_offset, max_offset + 1):
        lo, hi = max(0, k), min(t, t + k)  # mouth frames whose audio frame t-k exists
        dists.append(torch.linalg.vector_norm(m[lo:hi] - a[lo - k:hi - k], dim=1).mean())
    d = torch.stack(dists)
    i = int(torch.argmin(d))
    return i - max_offset, float(torch.median(d) - d[i])


# ------------------------------------------------------------------- emotion
def expression_features(landmarks: np.ndarray) -> np.ndarray:
    """Pose/scale-normalised expression features ``[T, F]`` from ``[T, 478, 2|3]`` landmarks.

    Each frame is mapped by the similarity transform that sends its outer eye
    corners to (-1, 0) and (1, 0), so in-plane head motion, position and scale are
    removed per frame; brows, eyes, nose and mouth points are then flattened. The
    normalisation depends on the frame alone, so features of training frames and
    renders are comparable without a shared reference.
    """
    a = _xy(landmarks)
    if a.shape[1] < 468:
        raise ValueError(f"need MediaPipe face-mesh landmarks (>= 468 points); got {a.shape[1]}")
    z = a[..., 0] + 1j * a[..., 1]  # points as complex numbers: similarity = z -> s*z + c
    left, right = z[:, OUTER_EYE_CORNERS[0]], z[:, OUTER_EYE_CORNERS[1]]
    span = right - left
    with np.errstate(divide="ignore", invalid="ignore"):
        w = (2.0 / span)[:, None] * (z[:, EXPRESSION_POINTS] - ((left + right) / 2)[:, None])
    w[span == 0] = np.nan
    return np.stack([w.real, w.imag], axis=-1).reshape(a.shape[0], -1)


class ExpressionClassifier:
    """Small MLP on :func:`expression_features`, trained full-batch, seeded and deterministic.

    Fit it on ground-truth features of the training split only; it then scores
    whether renders show the requested emotion. Features are standardised with
    the training statistics, which are saved with the weights.
    """

    def __init__(self, num_classes: int, hidden: int = 64, epochs: int = 300,
                 lr: float = 1e-2, weight_decay: float = 1e-4, seed: int = 0) -> None:
        if num_classes < 2:
            raise ValueError("num_classes must be >= 2")
        self.num_classes, self.hidden, self.epochs = num_classes, hidden, epochs
        self.lr, self.weight_decay, self.seed = lr, weight_decay, seed
        self.net: nn.Sequential | None = None
        self.mean: Tensor | None = None
        self.std: Tensor | None = None

    def _build(self, dim: int) -> nn.Sequential:
        return nn.Sequential(nn.Linear(dim, self.hidden), nn.GELU(), nn.Linear(self.hidden, self.num_classes))

    def _inputs(self, features: np.ndarray) -> Tensor:
        if self.net is None or self.mean is None or self.std is None:
            raise RuntimeError("ExpressionClassifier is not fitted; call fit() or load()")
        x = torch.as_tensor(np.asarray(features, dtype=np.float32))
        if x.ndim != 2 or x.shape[1] != self.mean.shape[0]:
            raise ValueError(f"features must be [N, {self.mean.shape[0]}]; got {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise ValueError("features contain NaN/inf (frames without landmarks): drop them first")
        return (x - self.mean) / self.std

    def fit(self, features: np.ndarray, labels: np.ndarray) -> "ExpressionClassifier":
        """Train on ``features [N, F]`` and integer ``labels [N]`` in [0, num_classes)."""
        x = torch.as_tensor(np.asarray(features, dtype=np.float32))
        y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
        if x.ndim != 2 or y.shape != (x.shape[0],) or x.shape[0] == 0:
            raise ValueError(f"need features [N, F] and labels [N]; got {tuple(x.shape)}, {tuple(y.shape)}")
        if int(y.min()) < 0 or int(y.max()) >= self.num_classes:
            raise ValueError(f"labels must lie in [0, {self.num_classes})")
        if not torch.isfinite(x).all():
            raise ValueError("features contain NaN/inf (frames without landmarks): drop them first")
        self.mean = x.mean(0)
        self.std = x.std(0, unbiased=False).clamp_min(1e-6)
        with torch.random.fork_rng(devices=[]):  # seeded init without disturbing the caller's RNG
            torch.manual_seed(self.seed)
            net = self._build(x.shape[1])
        self.net = net
        xs = (x - self.mean) / self.std
        opt = torch.optim.Adam(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        with torch.enable_grad():  # callers (evaluation) often run under no_grad
            for _ in range(self.epochs):
                opt.zero_grad()
                F.cross_entropy(net(xs), y).backward()
                opt.step()
        net.eval()
        return self

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """Class probabilities ``[N, num_classes]``."""
        x = self._inputs(features)
        with torch.no_grad():
            return torch.softmax(self.net(x), dim=1).numpy()  # type: ignore[misc]

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Predicted class indices ``[N]``."""
        return self.predict_proba(features).argmax(1)

    def accuracy(self, features: np.ndarray, labels: np.ndarray) -> float:
        """Fraction of rows whose predicted class equals the label."""
        y = np.asarray(labels).ravel()
        pred = self.predict(features)
        if pred.shape != y.shape:
            raise ValueError(f"{pred.size} feature rows but {y.size} labels")
        return float((pred == y).mean())

    def save(self, path: str) -> None:
        """Write ``<path>.safetensors`` (weights, feature statistics) and ``<path>.json`` (settings)."""
        from safetensors.torch import save_file

        if self.net is None or self.mean is None or self.std is None:
            raise RuntimeError("ExpressionClassifier is not fitted; nothing to save")
        stem = Path(path).with_suffix("")
        stem.parent.mkdir(parents=True, exist_ok=True)
        state = {f"net.{k}": v.contiguous() for k, v in self.net.state_dict().items()}
        state.update(mean=self.mean.contiguous(), std=self.std.contiguous())
        save_file(state, str(stem.with_suffix(".safetensors")))
        cfg = dict(num_classes=self.num_classes, hidden=self.hidden, epochs=self.epochs, lr=self.lr,
                   weight_decay=self.weight_decay, seed=self.seed, feature_dim=int(self.mean.shape[0]))
        stem.with_suffix(".json").write_text(json.dumps(cfg, indent=2))

    @classmethod
    def load(cls, path: str) -> "ExpressionClassifier":
        """Read a classifier written by :meth:`save` (either file name or the common stem)."""
        from safetensors.torch import load_file

        stem = Path(path).with_suffix("")
        cfg_path, w_path = stem.with_suffix(".json"), stem.with_suffix(".safetensors")
        for p in (cfg_path, w_path):
            if not p.is_file():
                raise FileNotFoundError(f"expression classifier file missing: {p}")
        cfg = json.loads(cfg_path.read_text())
        dim = cfg.pop("feature_dim")
        clf = cls(**cfg)
        state = load_file(str(w_path))
        clf.mean, clf.std = state.pop("mean"), state.pop("std")
        clf.net = clf._build(dim)
        clf.net.load_state_dict({k.removeprefix("net."): v for k, v in state.items()})
        clf.net.eval()
        return clf


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray, eps: float = 1e-6) -> float:
    """Squared Fréchet distance between Gaussians fitted to two feature sets ``[N, F]``.

    Reported squared, as FID is: d² = |μa-μb|² + tr Σa + tr Σb - 2 tr (Σa^½ Σb Σa^½)^½. The matrix square
    roots come from eigen-decompositions of symmetric matrices with negative
    eigenvalues clipped, and ``eps``·I is added to both covariances, so few
    samples (rank-deficient covariances) stay finite and identical sets give 0.
    """
    a = np.asarray(feats_a, dtype=np.float64)
    b = np.asarray(feats_b, dtype=np.float64)
    a = a[:, None] if a.ndim == 1 else a
    b = b[:, None] if b.ndim == 1 else b
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets must be [N, F] with equal F; got {a.shape} and {b.shape}")
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError("each feature set needs at least 2 samples")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("feature sets contain NaN/inf: drop frames without landmarks first")
    eye = np.eye(a.shape[1])
    ca = np.atleast_2d(np.cov(a, rowvar=False)) + eps * eye
    cb = np.atleast_2d(np.cov(b, rowvar=False)) + eps * eye
    wa, va = np.linalg.eigh(ca)
    sa = (va * np.sqrt(np.clip(wa, 0.0, None))) @ va.T
    inner = sa @ cb @ sa
    tr_sqrt = float(np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0.0, None)).sum())
    diff = a.mean(0) - b.mean(0)
    d2 = float(diff @ diff + np.trace(ca) + np.trace(cb) - 2.0 * tr_sqrt)
    return max(d2, 0.0)


def _main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ua3dtalk.metrics",
                                     description="metric utilities")
    sub = parser.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert-lpips", help="official LPIPS alex.pth + torchvision AlexNet -> safetensors")
    c.add_argument("--lin", required=True, help="lpips/weights/v0.1/alex.pth")
    c.add_argument("--alexnet", required=True, help="torchvision alexnet-owt-7be5be79.pth")
    c.add_argument("--out", required=True, help="output .safetensors (then set UA3DTALK_LPIPS_WEIGHTS)")
    args = parser.parse_args(argv)
    convert_lpips_weights(args.lin, args.alexnet, args.out)
    print(f"wrote {args.out}; set {LPIPS_ENV}={args.out}")


if __name__ == "__main__":
    _main()
