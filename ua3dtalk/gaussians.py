"""Canonical 3D Gaussians (3DGS parameterisation), adaptive density control, safetensors I/O.

Parameters are stored raw and activated on read, as in 3DGS: positions as is,
quaternions normalised (wxyz), log-scales through exp, logit-opacities through a
sigmoid, colours as SH coefficients (degree <= 3) evaluated per camera.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from ua3dtalk.render import quat_to_rotmat

SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
         -0.4570457994644658, 1.445305721320277, -0.5900435899266435)
PARAM_NAMES = ("xyz", "rotation_raw", "scaling_raw", "opacity_raw", "sh_dc", "sh_rest")


def rgb_to_sh(rgb: Tensor) -> Tensor:
    """Colour in [0,1] -> degree-0 SH coefficient (the inverse of the +0.5 in colors())."""
    return (rgb - 0.5) / SH_C0


def sh_basis(degree: int, dirs: Tensor) -> Tensor:
    """Real SH basis up to `degree` for unit directions [...,3] -> [..., (degree+1)²]."""
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, SH_C0)]
    if degree >= 1:
        out += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if degree >= 2:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        out += [SH_C2[0] * xy, SH_C2[1] * yz, SH_C2[2] * (2 * zz - xx - yy), SH_C2[3] * xz, SH_C2[4] * (xx - yy)]
    if degree >= 3:
        out += [
            SH_C3[0] * y * (3 * xx - yy), SH_C3[1] * xy * z, SH_C3[2] * y * (4 * zz - xx - yy),
            SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy), SH_C3[4] * x * (4 * zz - xx - yy),
            SH_C3[5] * z * (xx - yy), SH_C3[6] * x * (xx - 3 * yy),
        ]
    return torch.stack(out, -1)


def _sh_degree_from_rest(k: int) -> int:
    d = math.isqrt(k + 1) - 1
    if (d + 1) ** 2 - 1 != k or not 0 <= d <= 3:
        raise ValueError(f"{k} higher-order SH coefficients match no SH degree 0..3")
    return d


class GaussianModel(nn.Module):
    """N anisotropic Gaussians with 3DGS activations; parameters resizable by density control."""

    def __init__(self, n: int = 0, sh_degree: int = 2):
        super().__init__()
        if not 0 <= sh_degree <= 3:
            raise ValueError(f"sh_degree must be 0..3, got {sh_degree}")
        self.sh_degree = sh_degree
        rot = torch.zeros(n, 4)
        rot[:, 0] = 1.0
        self.xyz = nn.Parameter(torch.zeros(n, 3))
        self.rotation_raw = nn.Parameter(rot)
        self.scaling_raw = nn.Parameter(torch.full((n, 3), math.log(0.01)))
        self.opacity_raw = nn.Parameter(torch.full((n,), _logit(0.1)))
        self.sh_dc = nn.Parameter(torch.zeros(n, 1, 3))
        self.sh_rest = nn.Parameter(torch.zeros(n, (sh_degree + 1) ** 2 - 1, 3))

    @classmethod
    def from_points(cls, points: Tensor, colors: Tensor | None = None, sh_degree: int = 2) -> "GaussianModel":
        """3DGS initialisation: isotropic scales from the 3 nearest neighbours, opacity 0.1, identity rotations."""
        if points.dim() != 2 or points.shape[1] != 3 or len(points) == 0:
            raise ValueError(f"points must be a non-empty [N,3] tensor, got {tuple(points.shape)}")
        if colors is not None and colors.shape != points.shape:
            raise ValueError(f"colors must be [N,3] like points, got {tuple(colors.shape)}")
        pts = points.detach().float()
        model = cls(len(pts), sh_degree)
        with torch.no_grad():
            model.xyz.copy_(pts)
            model.scaling_raw.copy_(torch.log(_knn_scale(pts))[:, None].expand(-1, 3))
            if colors is not None:
                model.sh_dc.copy_(rgb_to_sh(colors.detach().float())[:, None, :])
        return model

    @property
    def num_points(self) -> int:
        return self.xyz.shape[0]

    @property
    def rotation(self) -> Tensor:
        return F.normalize(self.rotation_raw, dim=-1)

    @property
    def scaling(self) -> Tensor:
        return torch.exp(self.scaling_raw)

    @property
    def opacity(self) -> Tensor:
        return torch.sigmoid(self.opacity_raw)

    def colors(self, camera_centers: Tensor, xyz: Tensor | None = None) -> Tensor:
        """View-dependent RGB [B,N,3] for world-space camera centres [B,3] (optionally at deformed xyz [B,N,3])."""
        pos = self.xyz if xyz is None else xyz
        dirs = F.normalize(pos - camera_centers[:, None, :], dim=-1)  # [B,N,3]
        coeffs = torch.cat([self.sh_dc, self.sh_rest], 1)  # [N,K,3]
        basis = sh_basis(self.sh_degree, dirs)  # [B,N,K]
        return torch.clamp_min((basis[..., None] * coeffs).sum(-2) + 0.5, 0.0)

    def param_groups(self, lr: dict[str, float] | None = None, prefix: str = "", extent: float = 1.0) -> list[dict]:
        """Adam groups, one per parameter, named `prefix + name` (3DGS learning rates by default)."""
        rates = {"xyz": 1.6e-4 * extent, "rotation_raw": 1e-3, "scaling_raw": 5e-3, "opacity_raw": 2.5e-2,
                 "sh_dc": 2.5e-3, "sh_rest": 2.5e-3 / 20}
        rates.update(lr or {})
        return [{"params": [getattr(self, k)], "lr": rates[k], "name": prefix + k} for k in PARAM_NAMES]

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        # A stored model usually has a different number of Gaussians than a freshly built
        # one; resize (only the point dimension) so the regular copy succeeds.
        for name in PARAM_NAMES:
            stored = state_dict.get(prefix + name)
            param = getattr(self, name)
            if stored is not None and stored.dim() == param.dim() and stored.shape[1:] == param.shape[1:] \
                    and stored.shape[0] != param.shape[0]:
                setattr(self, name, nn.Parameter(param.new_empty(stored.shape), requires_grad=param.requires_grad))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def save(self, path: str | Path) -> None:
        """Write the parameters as safetensors (the SH degree is implied by sh_rest's shape)."""
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, str(path),
                  metadata={"format": "ua3dtalk.gaussians", "sh_degree": str(self.sh_degree)})

    @classmethod
    def load(cls, path: str | Path) -> "GaussianModel":
        """Read a model written by save()."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no Gaussian model at {path}")
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        missing = [k for k in PARAM_NAMES if k not in tensors]
        if missing:
            raise ValueError(f"{path} is not a Gaussian model file (missing {missing})")
        model = cls(0, _sh_degree_from_rest(tensors["sh_rest"].shape[1]))
        model.load_state_dict(tensors)
        return model


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _knn_scale(pts: Tensor, k: int = 3, chunk: int = 2048) -> Tensor:
    """sqrt of the mean squared distance to the k nearest other points (3DGS init), chunked for memory."""
    if len(pts) == 1:
        return torch.full((1,), 0.01)
    k = min(k, len(pts) - 1)
    out = []
    for s in range(0, len(pts), chunk):
        d2 = torch.cdist(pts[s:s + chunk], pts).square()
        d2[torch.arange(d2.shape[0]), torch.arange(s, s + d2.shape[0])] = float("inf")
        out.append(d2.topk(k, dim=1, largest=False).values.mean(1))
    return torch.cat(out).clamp_min(1e-7).sqrt()


class DensityController:
    """3DGS adaptive density control for ONE GaussianModel inside a shared Adam optimiser.

    The model's parameter groups are found by parameter identity, so other models and
    networks in the same optimiser are never touched. Kept points keep their Adam
    moments (indexed); new points from cloning and splitting start from zero moments, as in 3DGS.
    """

    def __init__(self, model: GaussianModel, optimizer: torch.optim.Optimizer, percent_dense: float = 0.01):
        self.model = model
        self.optimizer = optimizer
        self.percent_dense = percent_dense
        self._groups()  # fail early if the model's parameters are not in the optimiser
        self._reset_stats()

    def _reset_stats(self) -> None:
        n, dev = self.model.num_points, self.model.xyz.device
        self.grad_accum = torch.zeros(n, device=dev)
        self.denom = torch.zeros(n, device=dev)
        self.max_radii = torch.zeros(n, device=dev)

    def _groups(self) -> dict[str, dict]:
        found = {}
        for name in PARAM_NAMES:
            p = getattr(self.model, name)
            for group in self.optimizer.param_groups:
                if any(q is p for q in group["params"]):
                    if len(group["params"]) != 1:
                        raise ValueError(f"Gaussian parameter {name!r} must be alone in its optimiser param group")
                    found[name] = group
                    break
            else:
                raise ValueError(f"Gaussian parameter {name!r} is not in the optimiser (use GaussianModel.param_groups)")
        return found

    @torch.no_grad()
    def accumulate(self, means2d_grad: Tensor, radii: Tensor, width: int, height: int) -> None:
        """Add one step's view-space gradient norms [B,N,2] for Gaussians visible (radii > 0) in each frame.

        Gradients are scaled to NDC units (x W/2, H/2) and by B (the loss is a mean over
        frames), so the usual 3DGS threshold of 2e-4 applies.
        """
        B = means2d_grad.shape[0]
        g = means2d_grad * torch.tensor([width / 2, height / 2], device=means2d_grad.device) * B
        vis = radii > 0
        self.grad_accum += (g.norm(dim=-1) * vis).sum(0)
        self.denom += vis.sum(0)
        self.max_radii = torch.maximum(self.max_radii, radii.amax(0).float())

    @torch.no_grad()
    def densify_and_prune(self, grad_threshold: float, min_opacity: float, extent: float,
                          max_screen_size: float | None = None, max_new: int | None = None) -> dict[str, int]:
        """Clone small / split large high-gradient Gaussians, then prune transparent or huge ones.
        ``max_new`` caps the growth (a clone or a split adds one Gaussian), hottest first, so a
        size budget holds exactly rather than being overshot by the last densification."""
        grads = torch.nan_to_num(self.grad_accum / self.denom)
        m = self.model
        big = m.scaling.amax(-1) > self.percent_dense * extent
        hot = grads >= grad_threshold
        if max_new is not None and int(hot.sum()) > max_new:
            hottest = torch.topk(torch.where(hot, grads, -1.0), max(max_new, 0)).indices
            hot = torch.zeros_like(hot).index_fill_(0, hottest, True)
        clone_idx = torch.nonzero(hot & ~big).squeeze(1)
        split_mask = hot & big
        n0 = m.num_points
        self._append(clone_idx, {})
        # split: two samples inside each large Gaussian, scales shrunk by 1/(0.8*2)
        split_idx = torch.nonzero(split_mask).squeeze(1).repeat(2)
        if len(split_idx):
            s = m.scaling[split_idx]
            offset = (torch.randn_like(s) * s)[..., None]
            xyz = (quat_to_rotmat(m.rotation_raw[split_idx]) @ offset).squeeze(-1) + m.xyz[split_idx]
            self._append(split_idx, {"xyz": xyz, "scaling_raw": torch.log(s / 1.6)})
        keep = torch.ones(m.num_points, dtype=torch.bool, device=m.xyz.device)
        keep[torch.nonzero(split_mask).squeeze(1)] = False  # originals replaced by their halves
        prune = m.opacity < min_opacity
        if max_screen_size:
            radii = torch.cat([self.max_radii, torch.zeros(m.num_points - n0, device=keep.device)])
            prune |= radii > max_screen_size
            prune |= m.scaling.amax(-1) > 0.1 * extent
        keep &= ~prune
        self._select(keep)
        self._reset_stats()
        return {"cloned": len(clone_idx), "split": int(split_mask.sum()), "pruned": int((~keep).sum()),
                "num_points": m.num_points}

    @torch.no_grad()
    def reset_opacity(self, max_opacity: float = 0.01) -> None:
        """Clamp opacities to max_opacity and zero their Adam moments (3DGS's periodic reset)."""
        group = self._groups()["opacity_raw"]
        new = torch.minimum(self.model.opacity_raw, torch.full_like(self.model.opacity_raw, _logit(max_opacity)))
        state = self.optimizer.state.pop(group["params"][0], {})
        moments = {k: (torch.zeros_like(v) if _per_point(k, v, new) else v) for k, v in state.items()}
        self._replace(group, "opacity_raw", new, moments)

    def _append(self, idx: Tensor, values: dict[str, Tensor]) -> None:
        """Append copies of points idx (optionally with new values); the copies' moments start at zero."""
        if len(idx) == 0:
            return
        for name, group in self._groups().items():
            old = group["params"][0]
            extra = values.get(name, old[idx])
            state = self.optimizer.state.pop(old, {})
            moments = {k: (torch.cat([v, torch.zeros_like(v[idx])]) if _per_point(k, v, old) else v)
                       for k, v in state.items()}
            self._replace(group, name, torch.cat([old.detach(), extra.detach()]), moments)

    def _select(self, keep: Tensor) -> None:
        for name, group in self._groups().items():
            old = group["params"][0]
            state = self.optimizer.state.pop(old, {})
            moments = {k: (v[keep] if _per_point(k, v, old) else v) for k, v in state.items()}
            self._replace(group, name, old.detach()[keep], moments)

    def _replace(self, group: dict, name: str, data: Tensor, state: dict) -> None:
        param = nn.Parameter(data.contiguous(), requires_grad=getattr(self.model, name).requires_grad)
        setattr(self.model, name, param)
        group["params"][0] = param
        if state:
            self.optimizer.state[param] = state


def _per_point(key: str, value: Tensor, param: Tensor) -> bool:
    """Optimiser state entries shaped like the parameter (Adam moments), as opposed to the step counter."""
    return torch.is_tensor(value) and value.shape == param.shape and key != "step"
