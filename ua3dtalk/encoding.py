"""Multi-resolution tri-plane features of 3D positions (K-planes style).

Each resolution holds three learned planes (xy, xz, yz); a point's feature at
that resolution is the product of its bilinear samples on the three planes.
Features are kept per resolution, shape [N, R, dim], so that later stages (the
emotion code-books) can modulate each resolution separately.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_PLANES = ((0, 1), (0, 2), (1, 2))


class TriPlaneField(nn.Module):
    def __init__(self, dim: int, base_resolution: int, multires: tuple[int, ...],
                 bounds: tuple[float, float] = (-1.0, 1.0)) -> None:
        super().__init__()
        self.dim = dim
        self.multires = tuple(multires)
        self.planes = nn.ParameterList()
        for m in self.multires:
            res = base_resolution * m
            # each plane uniform in [0.5, 1.5]: the product of the three starts at mean 1 and
            # spread ~0.5, so position features are of the same order as the per-frame view
            # features beside them (K-planes' [0.1, 0.5] gives ~0.03, and the deformation
            # then hardly depends on position: every Gaussian moves alike)
            for _ in _PLANES:
                self.planes.append(nn.Parameter(torch.empty(1, dim, res, res).uniform_(0.5, 1.5)))
        self.register_buffer("lo", torch.full((3,), float(bounds[0])))
        self.register_buffer("hi", torch.full((3,), float(bounds[1])))

    @property
    def n_levels(self) -> int:
        return len(self.multires)

    def set_bounds(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        """Fit the field's box to the canonical Gaussians (done once, at init)."""
        self.lo.copy_(lo.detach().to(self.lo))
        self.hi.copy_(hi.detach().to(self.hi))

    def forward(self, xyz: torch.Tensor) -> torch.Tensor:
        """xyz [N, 3] -> features [N, R, dim]."""
        unit = 2 * (xyz - self.lo) / (self.hi - self.lo).clamp_min(1e-6) - 1
        unit = unit.clamp(-1, 1)
        levels = []
        for level in range(self.n_levels):
            feat = xyz.new_ones(xyz.shape[0], self.dim)
            for p, (a, b) in enumerate(_PLANES):
                plane = self.planes[level * len(_PLANES) + p]
                grid = unit[:, (a, b)].view(1, -1, 1, 2)
                sample = F.grid_sample(plane, grid, mode="bilinear", align_corners=True)
                feat = feat * sample.view(self.dim, -1).t()
            levels.append(feat)
        return torch.stack(levels, dim=1)
