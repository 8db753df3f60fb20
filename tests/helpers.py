"""Small helpers shared by several test modules (import as ``from helpers import ...``)."""
from __future__ import annotations

import torch

from ua3dtalk.render import rasterize


def render_gaussians(means: torch.Tensor, colors: torch.Tensor, size: int = 24) -> torch.Tensor:
    """Gaussians [B, G, 3] (xy in about [-1, 1], z near 0) seen from z = -3 -> images [B, H, W, 3].

    Fixed isotropic scales and opacities with the pure-PyTorch rasterizer, so
    gradient tests of the conditioning networks run on CPU through a real render."""
    b, g, _ = means.shape
    viewmats = torch.eye(4).repeat(b, 1, 1)
    viewmats[:, 2, 3] = 3.0
    ks = torch.tensor([[1.5 * size, 0, size / 2], [0, 1.5 * size, size / 2], [0, 0, 1]]).repeat(b, 1, 1)
    quats = torch.tensor([1.0, 0, 0, 0]).expand(b, g, 4)
    return rasterize(means, quats, torch.full((b, g, 3), 0.15), torch.full((b, g), 0.8), colors, viewmats, ks,
                     size, size, backend="torch").image
