"""Uncertainty-based Deformation: the face and mouth motion networks.

Per Gaussian: position features from a multi-resolution tri-plane field; per
view (audio+eye, content, style, emotion) an uncertainty block on
[position features, view feature]; the views' ensembles are fused (stage 1:
one member per view, diagonal; stage 2: exact precision fusion; or the uniform
baseline); a multi-head decoder maps [fused latent, position features] to the
offsets. A batch of B frames is handled at once by flattening B x N into the
fusion's N, so nothing loops over frames or Gaussians.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ua3dtalk.config import ModelConfig
from ua3dtalk.encoding import TriPlaneField
from ua3dtalk.uncertainty import (
    LOG_VAR_RANGE, FusionResult, UncertaintyBlock, precision_fusion, stage1_fusion, uniform_fusion,
)

OUTPUT_DIMS: dict[str, int] = {"xyz": 3, "rotation": 4, "scale": 3, "opacity": 1}
FUSIONS = ("uncertainty", "uniform")


@dataclass
class DeformOutput:
    d_xyz: Tensor                 # [B, N, 3]
    d_rotation: Tensor | None     # [B, N, 4] quaternion offset (added to the raw rotation)
    d_scale: Tensor | None        # [B, N, 3] added to the log-scale
    aleatoric: Tensor             # [B, V, N]
    epistemic: Tensor             # [B, V, N]
    weight: Tensor                # [B, V, N]
    nll: Tensor                   # scalar: NLL of the fused latent under each view's variances (means detached)
    d_opacity: Tensor | None = None   # [B, N] added to the opacity's logit (ModelConfig.deform_opacity)


class MultiHeadDecoder(nn.Module):
    """Shared trunk on [latent, position features], one small linear head per output.

    The heads start near zero so training starts from the canonical Gaussians,
    yet not at exactly zero, so every layer receives gradients from step one.

    With ``motion_basis`` the position offset also gets a bilinear term B(pos)·latent:
    each Gaussian reads its own 3 x D basis off its position features. A landmark-driven
    face moves as a blend of a few per-frame motions with fixed per-point weights, a
    product that the trunk, with position and latent merely side by side, fits poorly
    when most points are still (tests/test_deform.py; bench/RESULTS.md).
    """

    def __init__(self, latent_dim: int, pos_dim: int, hidden_dim: int, outputs: tuple[str, ...],
                 motion_basis: bool = False) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(latent_dim + pos_dim, hidden_dim), nn.SiLU(),
                                   nn.Linear(hidden_dim, hidden_dim), nn.SiLU())
        self.heads = nn.ModuleDict({name: nn.Linear(hidden_dim, OUTPUT_DIMS[name]) for name in outputs})
        with torch.no_grad():
            for head in self.heads.values():
                head.weight.mul_(1e-3)
                head.bias.zero_()
        self.basis: nn.Linear | None = None
        if motion_basis:
            # starts at zero (its gradient does not: the latent is not zero); the 1/sqrt(P·D) scale
            # keeps an Adam step's effect on the offsets of the order of the heads'
            self.basis = nn.Linear(pos_dim, OUTPUT_DIMS["xyz"] * latent_dim)
            nn.init.zeros_(self.basis.weight)
            nn.init.zeros_(self.basis.bias)
            self.basis_scale = (pos_dim * latent_dim) ** -0.5

    def forward(self, latent: Tensor, pos: Tensor) -> dict[str, Tensor]:
        """latent [B, N, D] per frame and Gaussian, pos [N, P] per Gaussian -> {output: [B, N, k]}."""
        hidden = self.trunk(torch.cat([latent, pos.expand(latent.shape[0], *pos.shape)], dim=-1))
        out = {name: head(hidden) for name, head in self.heads.items()}
        if self.basis is not None:
            basis = self.basis(pos).unflatten(-1, (OUTPUT_DIMS["xyz"], latent.shape[-1]))   # [N, 3, D]
            out["xyz"] = out["xyz"] + self.basis_scale * torch.einsum("ncd,bnd->bnc", basis, latent)
        return out


class MotionNetwork(nn.Module):
    def __init__(self, cfg: ModelConfig, views: tuple[str, ...], view_dims: dict[str, int],
                 outputs: tuple[str, ...]) -> None:
        super().__init__()
        missing = [v for v in views if v not in view_dims]
        if missing:
            raise ValueError(f"view_dims lacks the feature size of view(s) {missing}")
        unknown = [o for o in outputs if o not in OUTPUT_DIMS]
        if unknown or "xyz" not in outputs:
            raise ValueError(f"outputs must include 'xyz' and come from {sorted(OUTPUT_DIMS)}, got {outputs}")
        self.views = tuple(views)
        self.view_dims = {v: int(view_dims[v]) for v in self.views}
        self.outputs = tuple(outputs)
        self.field = TriPlaneField(cfg.hexplane_dim, cfg.hexplane_resolution, cfg.hexplane_multires)
        pos_dim = cfg.hexplane_dim * len(cfg.hexplane_multires)
        self.blocks = nn.ModuleDict({
            v: UncertaintyBlock(pos_dim + self.view_dims[v], cfg.latent_dim, cfg.ensemble, cfg.hidden_dim)
            for v in self.views
        })
        self.decoder = MultiHeadDecoder(cfg.latent_dim, pos_dim, cfg.hidden_dim, self.outputs, cfg.motion_basis)

    def set_bounds(self, lo: Tensor, hi: Tensor) -> None:
        """Fit the position field's box to the canonical Gaussians."""
        self.field.set_bounds(lo, hi)

    def _view_parts(self, name: str, feat: Tensor | tuple[Tensor, ...], n: int, batch: int) -> list[Tensor]:
        """A view's feature, whole or in parts, as [B, 1, d_i] (per frame) or [B, N, d_i] (per Gaussian)."""
        parts = list(feat) if isinstance(feat, (tuple, list)) else [feat]
        sizes = [part.shape[-1] for part in parts]
        if sum(sizes) != self.view_dims[name]:
            raise ValueError(f"view {name!r} has features of size {self.view_dims[name]}, got parts of sizes {sizes}")
        shaped = []
        for part in parts:
            if part.dim() == 2 and part.shape[0] == batch:
                part = part.unsqueeze(1)
            if part.dim() != 3 or part.shape[0] != batch or part.shape[1] not in (1, n):
                raise ValueError(f"view {name!r} must be [B, d] or [B, N={n}, d] with B={batch}, "
                                 f"got {tuple(part.shape)}")
            shaped.append(part)
        return shaped

    def forward(self, xyz: Tensor, views: dict[str, Tensor], fusion: str = "uncertainty",
                stage: int = 2) -> DeformOutput:
        """xyz [N, 3] canonical positions; views[name] [B, d] (per frame) or [B, N, d] (per Gaussian),
        or a tuple of such parts (e.g. per-Gaussian code-book features beside a per-frame embedding)."""
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        if stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {stage!r}")
        missing = [v for v in self.views if v not in views]
        if missing:
            raise ValueError(f"missing view feature(s) {missing}; this network uses {list(self.views)}")
        if xyz.dim() != 2 or xyz.shape[-1] != 3:
            raise ValueError(f"xyz must be [N, 3], got {tuple(xyz.shape)}")
        batch = views[self.views[0]].shape[0]
        n = xyz.shape[0]

        pos = self.field(xyz).flatten(1)                                          # [N, P]
        mus, log_vars = [], []
        for name in self.views:
            parts = [part.to(pos) for part in self._view_parts(name, views[name], n, batch)]
            mu, log_var = self.blocks[name](pos, *parts)                          # position part once per call
            mus.append(mu.expand(batch, n, *mu.shape[2:]).flatten(0, 1))         # [B*N, T, D]
            log_vars.append(log_var.flatten(0, 1))
        mu, log_var = torch.stack(mus), torch.stack(log_vars)                     # [V, B*N, T, D]

        fused: FusionResult
        if fusion == "uniform":
            fused = uniform_fusion(mu, log_var)
        elif stage == 1:
            fused = stage1_fusion(mu, log_var)
        else:
            fused = precision_fusion(mu, log_var)

        out = self.decoder(fused.mean.reshape(batch, n, -1), pos)

        # calibrates the variance heads to each view's actual miss of the fused latent. The means are
        # detached: pulled onto the fused latent they would agree with whichever view dominates it,
        # whose variance then shrinks further (a feedback that silences the other views)
        lv = log_var.clamp(*LOG_VAR_RANGE)
        miss = fused.mean.detach()[None, :, None, :] - mu.detach()
        nll = 0.5 * (lv + miss.square() * torch.exp(-lv)).mean()

        def per_frame(stat: Tensor) -> Tensor:                                    # [V, B*N] -> [B, V, N]
            return stat.view(len(self.views), batch, n).transpose(0, 1)

        return DeformOutput(
            d_xyz=out["xyz"], d_rotation=out.get("rotation"), d_scale=out.get("scale"),
            aleatoric=per_frame(fused.aleatoric), epistemic=per_frame(fused.epistemic),
            weight=per_frame(fused.weight), nll=nll,
            d_opacity=out["opacity"][..., 0] if "opacity" in out else None,
        )


def face_network(cfg: ModelConfig, view_dims: dict[str, int]) -> MotionNetwork:
    """Face branch: all face views; Δxyz, Δrotation, Δscale (and Δopacity with ``cfg.deform_opacity``)."""
    outputs = ("xyz", "rotation", "scale") + (("opacity",) if cfg.deform_opacity else ())
    return MotionNetwork(cfg, cfg.face_views, view_dims, outputs)


def mouth_network(cfg: ModelConfig, view_dims: dict[str, int]) -> MotionNetwork:
    """Inside-mouth branch: the mouth views; Δxyz only."""
    return MotionNetwork(cfg, cfg.mouth_views, view_dims, ("xyz",))
