"""Running standardisation of the conditioning features fed to the deformation.

The per-frame features (windowed audio code, lip-sync embedding, style
feature, emotion embedding) change by a few per cent between frames around a
large constant part. Fed raw, the per-Gaussian networks see an almost constant
input and learn one mean deformation: the face does not move. Centred on their
running mean and divided by one overall spread (not per dimension, so that a
dimension carrying only noise stays small), their frame-to-frame change is of
order one. The statistics are running averages updated in training, as batch
norm's are, and saved with the checkpoint.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class RunningStandardizer(nn.Module):
    """``(x - running mean) / running spread`` over the last dim; statistics update in ``train()`` mode.

    The spread is floored at ``min_relative_spread`` x the mean's RMS, so a
    feature that never changes (e.g. a collapsed encoder) is not blown up into noise.
    """

    def __init__(self, dim: int, momentum: float = 0.01, min_relative_spread: float = 1e-3) -> None:
        super().__init__()
        if dim < 1 or not 0 < momentum <= 1 or min_relative_spread < 0:
            raise ValueError("RunningStandardizer needs dim >= 1, momentum in (0, 1], min_relative_spread >= 0")
        self.momentum, self.min_relative_spread = momentum, min_relative_spread
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("mean_square", torch.ones(()))   # of the centred feature, over dims and samples
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def _update(self, x: Tensor) -> None:
        flat = x.detach().reshape(-1, self.mean.shape[0]).to(self.mean)
        # a plain average over the first updates, then an exponential one
        rate = max(self.momentum, 1.0 / (int(self.updates) + 1))
        self.mean.lerp_(flat.mean(dim=0), rate)
        self.mean_square.lerp_((flat - self.mean).square().mean(), rate)
        self.updates += 1

    def spread(self) -> Tensor:
        floor = self.min_relative_spread * self.mean.square().mean().sqrt()
        return torch.maximum(self.mean_square.sqrt(), floor).clamp_min(torch.finfo(self.mean.dtype).tiny)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.mean.shape[0]:
            raise ValueError(f"expected features of size {self.mean.shape[0]}, got {tuple(x.shape)}")
        if self.training:
            self._update(x)
        return (x - self.mean.to(x)) / self.spread().to(x)
