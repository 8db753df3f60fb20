"""Gaussian rasterization: one function, two backends (gsplat CUDA, pure PyTorch).

Both backends implement the same maths so that a model trained on one renders the
same on the other: EWA projection with a Jacobian clamped to 1.3x the field of view,
a low-pass dilation of ``eps2d`` pixels² on the 2D covariance, and front-to-back
alpha compositing that skips contributions below 1/255, clamps alpha to 0.999 and
stops a pixel once its transmittance would drop to 1e-4 (gsplat 1.5.3's constants).

Colour, expected depth and any number of extra per-Gaussian channels are composited
in ONE pass (they share the blending weights), which is how the uncertainty maps of
the pipeline are rendered.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

EPS2D = 0.3
ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.999
T_STOP = 1e-4
RADIUS_SIGMAS = 3.33
TILE_SIZE = 16
# Padded [tiles, gaussians, pixels] elements evaluated at once by the torch backend;
# bounds peak memory (about 10 float tensors of this size live during autograd).
_GROUP_ELEMENTS = 1 << 22
# Above this many evaluated elements per call, the torch backend recomputes tile groups
# in backward instead of keeping their intermediates (memory over speed).
_CHECKPOINT_ELEMENTS = 1 << 24
_GSPLAT_MAX_CHANNELS = 513
# Torch-backend tile edge: small tiles waste fewer pixel evaluations on small splats.
_TORCH_TILE = 8
# Gaussians per tile blended per step of the torch backend before saturated tiles are dropped.
_DEPTH_CHUNK = 32


@dataclass
class RenderOutput:
    """Rendered frames; all images are channel-last, one per camera."""

    image: Tensor  # [B,H,W,3] colour composited over the background
    alpha: Tensor  # [B,H,W,1]
    depth: Tensor  # [B,H,W,1] alpha-weighted camera z; divide by alpha where alpha > 0
    extras: Tensor | None  # [B,H,W,K] extra channels composited over 0
    means2d: Tensor  # [B,N,2] projected centres (pixels); retain_grad() for densification
    radii: Tensor  # [B,N] int32 pixel radius, 0 = culled


def _gsplat_importable() -> bool:
    try:
        import gsplat  # noqa: F401
    except ImportError:
        return False
    return True


def available_backends() -> list[str]:
    """Backends usable on this machine, preferred first."""
    names = []
    if torch.cuda.is_available() and _gsplat_importable():
        names.append("gsplat")
    names.append("torch")
    return names


def resolve_backend(name: str = "auto") -> str:
    """Map "auto"/"gsplat"/"torch" to a usable backend or raise a clear error."""
    if name == "auto":
        return available_backends()[0]
    if name == "torch":
        return "torch"
    if name == "gsplat":
        if not torch.cuda.is_available():
            raise RuntimeError(
                "render backend 'gsplat' needs a CUDA GPU, and none is available here; "
                "use backend='torch' (pure PyTorch, CPU) or 'auto'"
            )
        if not _gsplat_importable():
            raise RuntimeError(
                "render backend 'gsplat' needs the gsplat package (pip install gsplat==1.5.3); "
                "use backend='torch' or 'auto'"
            )
        return "gsplat"
    raise ValueError(f"unknown render backend {name!r}; choose one of 'auto', 'gsplat', 'torch'")


def rasterize(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    background: Tensor | None = None,
    extras: Tensor | None = None,
    backend: str = "auto",
    near_plane: float = 0.01,
    far_plane: float = 1e10,
) -> RenderOutput:
    """Render B frames; frame b draws Gaussians [b] (or the shared [N] set) with camera b.

    means [N,3]|[B,N,3], quats wxyz [N,4]|[B,N,4] (any norm), scales (activated)
    [N,3]|[B,N,3], opacities (activated) [N]|[B,N], colors [N,3]|[B,N,3],
    viewmats [B,4,4] world-to-camera (OpenCV axes), Ks [B,3,3],
    background None|[3]|[B,3], extras None|[N,K]|[B,N,K].
    """
    g = _check_inputs(means, quats, scales, opacities, colors, viewmats, Ks, width, height, background, extras)
    name = resolve_backend(backend)
    if name == "gsplat" and means.device.type != "cuda":
        raise RuntimeError("render backend 'gsplat' needs the Gaussians and cameras on a CUDA device")
    B = viewmats.shape[0]
    feats = [colors.expand(B, -1, -1) if colors.dim() == 2 else colors]
    if extras is not None:
        feats.append(extras.expand(B, -1, -1) if extras.dim() == 2 else extras)
    if name == "gsplat":
        out, alpha, depth_flat, means2d, radii = _rasterize_gsplat(
            g["means"], g["quats"], g["scales"], g["opacities"], feats, viewmats, Ks,
            width, height, near_plane, far_plane, g["batched"],
        )
    else:
        out, alpha, depth_flat, means2d, radii = _rasterize_torch(
            g["means"], g["quats"], g["scales"], g["opacities"], feats, viewmats, Ks,
            width, height, near_plane, far_plane,
        )
    rgb = out[..., :3]
    if background is not None:
        bg = background.to(rgb).expand(B, 3) if background.dim() == 1 else background.to(rgb)
        rgb = rgb + bg[:, None, None, :] * (1.0 - alpha)
    ext = out[..., 3:] if extras is not None else None
    return RenderOutput(image=rgb, alpha=alpha, depth=depth_flat, extras=ext, means2d=means2d, radii=radii)


def _check_inputs(means, quats, scales, opacities, colors, viewmats, Ks, width, height, background, extras) -> dict:
    """Validate shapes; return the Gaussian tensors with a leading frame dim (broadcast view if shared)."""
    if viewmats.dim() != 3 or viewmats.shape[1:] != (4, 4):
        raise ValueError(f"viewmats must be [B,4,4], got {tuple(viewmats.shape)}")
    B = viewmats.shape[0]
    if Ks.shape != (B, 3, 3):
        raise ValueError(f"Ks must be [B,3,3] with B={B}, got {tuple(Ks.shape)}")
    if int(width) <= 0 or int(height) <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if means.dim() not in (2, 3) or means.shape[-1] != 3:
        raise ValueError(f"means must be [N,3] or [B,N,3], got {tuple(means.shape)}")
    batched = means.dim() == 3
    if batched and means.shape[0] != B:
        raise ValueError(f"means has {means.shape[0]} frames but there are {B} cameras")
    N = means.shape[-2]
    lead = (B, N) if batched else (N,)
    expected = {"quats": (quats, lead + (4,)), "scales": (scales, lead + (3,)), "opacities": (opacities, lead)}
    for key, (t, shape) in expected.items():
        if tuple(t.shape) != shape:
            raise ValueError(f"{key} must have shape {shape} to match means, got {tuple(t.shape)}")
    for key, t, last in (("colors", colors, 3), ("extras", extras, None)):
        if t is None:
            continue
        ok = t.dim() in (2, 3) and t.shape[-2] == N and (t.dim() == 2 or t.shape[0] == B)
        if not ok or (last is not None and t.shape[-1] != last):
            raise ValueError(f"{key} must be [N,{last or 'K'}] or [B,N,{last or 'K'}], got {tuple(t.shape)}")
    if background is not None and tuple(background.shape) not in ((3,), (B, 3)):
        raise ValueError(f"background must be [3] or [B,3], got {tuple(background.shape)}")
    if batched:
        return {"means": means, "quats": quats, "scales": scales, "opacities": opacities, "batched": True}
    return {
        "means": means.expand(B, N, 3), "quats": quats.expand(B, N, 4),
        "scales": scales.expand(B, N, 3), "opacities": opacities.expand(B, N), "batched": False,
    }


# ----------------------------------------------------------------------------- gsplat


def _rasterize_gsplat(means, quats, scales, opacities, feats, viewmats, Ks, width, height, near, far, batched):
    """gsplat's fused CUDA kernels, called stage by stage so means2d is exactly [B,N,2]."""
    from gsplat.cuda._wrapper import (
        fully_fused_projection, isect_offset_encode, isect_tiles, rasterize_to_pixels,
    )

    B, N = means.shape[:2]
    f32 = dict(dtype=torch.float32)
    if batched:  # every frame its own Gaussians: batch dim B, one camera each
        radii, means2d, depths, conics, _ = fully_fused_projection(
            means.float().contiguous(), None, quats.float().contiguous(), scales.float().contiguous(),
            viewmats.float()[:, None].contiguous(), Ks.float()[:, None].contiguous(), width, height,
            eps2d=EPS2D, near_plane=near, far_plane=far, packed=False, opacities=opacities.float().contiguous(),
        )
        radii, means2d, depths, conics = radii[:, 0], means2d[:, 0], depths[:, 0], conics[:, 0]
    else:  # one shared Gaussian set seen by B cameras
        radii, means2d, depths, conics, _ = fully_fused_projection(
            means[0].float().contiguous(), None, quats[0].float().contiguous(), scales[0].float().contiguous(),
            viewmats.float().contiguous(), Ks.float().contiguous(), width, height,
            eps2d=EPS2D, near_plane=near, far_plane=far, packed=False, opacities=opacities[0].float().contiguous(),
        )
    feat = torch.cat([f.to(**f32) for f in feats[:1]] + [depths[..., None]] + [f.to(**f32) for f in feats[1:]], -1)
    if feat.shape[-1] > _GSPLAT_MAX_CHANNELS:
        raise ValueError(f"at most {_GSPLAT_MAX_CHANNELS - 4} extra channels can be rendered, got {feat.shape[-1] - 4}")
    tw, th = math.ceil(width / TILE_SIZE), math.ceil(height / TILE_SIZE)
    _, isect_ids, flatten_ids = isect_tiles(means2d, radii, depths, TILE_SIZE, tw, th, packed=False, n_images=B)
    offsets = isect_offset_encode(isect_ids, B, tw, th).reshape(B, th, tw)
    out, alpha = rasterize_to_pixels(
        means2d, conics, feat.contiguous(), opacities.float().contiguous(), width, height, TILE_SIZE, offsets, flatten_ids,
    )
    depth = out[..., 3:4]
    out = torch.cat([out[..., :3], out[..., 4:]], -1)
    return out, alpha, depth, means2d, radii.amax(-1).int()


# ----------------------------------------------------------------------------- torch


@dataclass
class Projection:
    """Screen-space Gaussians for B cameras (torch backend, differentiable)."""

    means2d: Tensor  # [B,N,2] pixels
    conics: Tensor  # [B,N,3] inverse 2D covariance (a, b, c): sigma = a dx²/2 + b dx dy + c dy²/2
    depths: Tensor  # [B,N] camera z
    radii: Tensor  # [B,N] int32, 0 = culled


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """wxyz quaternions (any norm) [...,4] -> rotation matrices [...,3,3]."""
    w, x, y, z = F.normalize(quats, dim=-1).unbind(-1)
    rows = (
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    )
    return torch.stack(rows, -1).reshape(quats.shape[:-1] + (3, 3))


def project(
    means: Tensor, quats: Tensor, scales: Tensor, viewmats: Tensor, Ks: Tensor, width: int, height: int,
    near_plane: float = 0.01, far_plane: float = 1e10, eps2d: float = EPS2D,
) -> Projection:
    """EWA splatting of [B,N] Gaussians through B pinhole cameras (gsplat's maths)."""
    R, t = viewmats[:, :3, :3], viewmats[:, :3, 3]
    mc = torch.einsum("bij,bnj->bni", R, means) + t[:, None, :]
    M = quat_to_rotmat(quats) * scales[..., None, :]  # R_g S
    tx, ty, tz = mc.unbind(-1)
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    # Jacobian evaluated at a point clamped to 1.3x the field of view (limits the
    # blow-up of Gaussians far outside the image), exactly as gsplat does.
    lim_xp = (width - cx) / fx + 0.3 * 0.5 * width / fx
    lim_xn = cx / fx + 0.3 * 0.5 * width / fx
    lim_yp = (height - cy) / fy + 0.3 * 0.5 * height / fy
    lim_yn = cy / fy + 0.3 * 0.5 * height / fy
    jx = tz * torch.minimum(torch.maximum(tx / tz, -lim_xn), lim_xp)
    jy = tz * torch.minimum(torch.maximum(ty / tz, -lim_yn), lim_yp)
    zero = torch.zeros_like(tz)
    J = torch.stack([fx / tz, zero, -fx * jx / (tz * tz), zero, fy / tz, -fy * jy / (tz * tz)], -1)
    J = J.reshape(tz.shape + (2, 3))
    T = J @ R[:, None] @ M  # [B,N,2,3]: image-plane axes of the Gaussian
    cov = T @ T.transpose(-1, -2)
    a = cov[..., 0, 0] + eps2d
    b = 0.5 * (cov[..., 0, 1] + cov[..., 1, 0])
    c = cov[..., 1, 1] + eps2d
    det = a * c - b * b
    det_c = det.clamp(min=1e-10)
    conics = torch.stack([c / det_c, -b / det_c, a / det_c], -1)
    means2d = torch.stack([fx * tx / tz + cx, fy * ty / tz + cy], -1)
    with torch.no_grad():
        rx = torch.ceil(RADIUS_SIGMAS * a.clamp(min=0).sqrt())
        ry = torch.ceil(RADIUS_SIGMAS * c.clamp(min=0).sqrt())
        valid = (det > 0) & (tz > near_plane) & (tz < far_plane)
        mx, my = means2d[..., 0], means2d[..., 1]
        valid &= (mx + rx > 0) & (mx - rx < width) & (my + ry > 0) & (my - ry < height)
        radii = torch.where(valid, torch.maximum(rx, ry), torch.zeros_like(rx)).int()
    return Projection(means2d=means2d, conics=conics, depths=tz, radii=radii)


def _rasterize_torch(means, quats, scales, opacities, feats, viewmats, Ks, width, height, near, far):
    """Tile-based compositing in plain PyTorch: vectorised over tiles, Gaussians and pixels."""
    B, N = means.shape[:2]
    proj = project(means, quats, scales, viewmats, Ks, width, height, near, far)
    depth = proj.depths
    feat = torch.cat([feats[0], depth[..., None]] + feats[1:], -1)  # colour, depth, extras
    C = feat.shape[-1]
    ts = _TORCH_TILE
    tw, th = math.ceil(width / ts), math.ceil(height / ts)
    n_tiles = B * th * tw
    with torch.no_grad():
        gid, tile = _intersections(proj, ts, tw, th)
        rank = torch.empty(B * N, dtype=torch.long, device=gid.device)
        rank[torch.argsort(depth.detach().reshape(-1))] = torch.arange(B * N, device=gid.device)
        order = torch.argsort(tile * (B * N) + rank[gid])  # by tile, front to back within a tile
        gid, tile = gid[order], tile[order]
        counts = torch.bincount(tile, minlength=n_tiles)
        starts = torch.cumsum(counts, 0) - counts
        busy = torch.nonzero(counts).squeeze(1)
        busy = busy[torch.argsort(counts[busy])]  # similar lengths share a group: little padding
    flat = lambda x: x.reshape(B * N, *x.shape[2:])  # noqa: E731
    ones = torch.ones_like(depth)[..., None]  # composited to alpha by the same matmul
    # one gather per chunk: centre (2), conic (3), log-opacity (1), features + 1
    logop_all = torch.log(opacities.clamp(min=1e-30))[..., None]
    packed = flat(torch.cat([proj.means2d, proj.conics, logop_all, feat, ones], -1))
    m2 = packed[:, :2]
    basis = _pixel_basis(ts, m2.dtype, m2.device)
    total = int(counts.sum()) * ts * ts
    use_ckpt = torch.is_grad_enabled() and total > _CHECKPOINT_ELEMENTS
    outs, ids = [], []
    per_group = max(1, _GROUP_ELEMENTS // (_DEPTH_CHUNK * ts * ts))
    for s0 in range(0, busy.numel(), per_group):
        tiles_g = busy[s0:s0 + per_group]
        with torch.no_grad():
            local = tiles_g % (th * tw)
            origin = torch.stack([(local % tw) * ts, (local // tw) * ts], -1).to(m2.dtype)  # [G,2]
        G = tiles_g.numel()
        acc = feat.new_zeros(G, ts * ts, C + 1)
        log_t = feat.new_zeros(G, ts * ts)
        active = torch.arange(G, device=tile.device)
        for d0 in range(0, int(counts[tiles_g[-1]]), _DEPTH_CHUNK):
            # Front-to-back in depth chunks; tiles whose pixels are all saturated drop out
            # early, which is where opaque scenes save most of their work.
            with torch.no_grad():
                slot = torch.arange(d0, d0 + _DEPTH_CHUNK, device=tile.device)
                valid = slot[None, :] < counts[tiles_g[active]][:, None]
                g = gid[torch.where(valid, starts[tiles_g[active]][:, None] + slot[None, :], 0)]  # [Ga,Lc]
            pk = packed[g]
            logop = torch.where(valid, pk[..., 5], -1e4)
            args = (pk[..., :2] - origin[active][:, None, :], pk[..., 2:5], logop, pk[..., 6:], basis, log_t[active])
            res, log_t_new = checkpoint(_composite, *args, use_reentrant=False) if use_ckpt else _composite(*args)
            if active.numel() == G:
                acc, log_t = acc + res, log_t_new
            else:  # dense scatter of the still-active tiles (index_add is slow on CPU)
                acc = acc + torch.zeros_like(acc).index_copy(0, active, res)
                log_t = log_t.index_copy(0, active, log_t_new)
            active = active[(log_t_new > math.log(T_STOP)).any(1) & valid[:, -1]]
            if active.numel() == 0:
                break
        outs.append(acc)
        ids.append(tiles_g)
    canvas = feat.new_zeros(n_tiles, ts * ts, C + 1)
    if outs:
        canvas = canvas.index_copy(0, torch.cat(ids), torch.cat(outs))
    img = canvas.reshape(B, th, tw, ts, ts, C + 1).permute(0, 1, 3, 2, 4, 5).reshape(B, th * ts, tw * ts, C + 1)
    img = img[:, :height, :width]
    out = torch.cat([img[..., :3], img[..., 4:C]], -1)
    return out, img[..., C:], img[..., 3:4], proj.means2d, proj.radii


def _intersections(proj: Projection, ts: int, tw: int, th: int) -> tuple[Tensor, Tensor]:
    """(flat Gaussian id, global tile id) for every tile a Gaussian's radius box touches."""
    B, N = proj.radii.shape
    r = proj.radii.reshape(-1).to(proj.means2d.dtype)
    m = proj.means2d.detach().reshape(-1, 2)
    x0 = torch.floor((m[:, 0] - r) / ts).clamp(0, tw).long()
    x1 = torch.ceil((m[:, 0] + r) / ts).clamp(0, tw).long()
    y0 = torch.floor((m[:, 1] - r) / ts).clamp(0, th).long()
    y1 = torch.ceil((m[:, 1] + r) / ts).clamp(0, th).long()
    n = torch.where(r > 0, (x1 - x0) * (y1 - y0), torch.zeros_like(x0))
    gid = torch.repeat_interleave(torch.arange(B * N, device=r.device), n)
    k = torch.arange(gid.numel(), device=r.device) - torch.repeat_interleave(torch.cumsum(n, 0) - n, n)
    w = (x1 - x0)[gid]
    tx, ty = x0[gid] + k % w, y0[gid] + k // w
    tile = (gid // N) * (th * tw) + ty * tw + tx
    return gid, tile


def _pixel_basis(ts: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """[6, ts*ts] monomials (u², uv, v², u, v, 1) of pixel-centre offsets inside a tile (row-major)."""
    off = torch.arange(ts, dtype=dtype, device=device) + 0.5
    v, u = torch.meshgrid(off, off, indexing="ij")
    u, v = u.reshape(-1), v.reshape(-1)
    return torch.stack([u * u, u * v, v * v, u, v, torch.ones_like(u)])


def _composite(m2: Tensor, con: Tensor, logop: Tensor, ft: Tensor, basis: Tensor, log_t0: Tensor) -> tuple[Tensor, Tensor]:
    """Front-to-back blending of [G,L] depth-sorted Gaussians over tiles whose pixels have
    log-transmittance log_t0 [G,P] -> (colour/feature/alpha sums [G,P,C+1], new log_t [G,P]).

    m2 are centres relative to the tile origin. The Gaussian exponent is a quadratic in the
    pixel offsets (u, v), so log(alpha) for all pixels is one matmul with basis [6,P] =
    (u², uv, v², u, v, 1): far fewer passes over [G,L,P] than evaluating dx, dy per pixel.
    """
    a, b, c = con.unbind(-1)
    mu, mv = m2.unbind(-1)
    coef = torch.stack(
        [-0.5 * a, -b, -0.5 * c, a * mu + b * mv, c * mv + b * mu,
         logop - (0.5 * a * mu * mu + b * mu * mv + 0.5 * c * mv * mv)], -1,
    )
    log_alpha = torch.matmul(coef, basis).clamp(max=math.log(ALPHA_MAX))  # [G,L,P]
    on = log_alpha >= math.log(ALPHA_MIN)
    alpha = torch.where(on, torch.exp(log_alpha), 0.0)
    log_t = torch.log1p(-alpha)
    log_t_incl = torch.cumsum(log_t, 1) + log_t0[:, None, :]
    # gsplat stops a pixel before the Gaussian that would bring T to <= 1e-4; T only
    # decreases, so "T after this Gaussian > 1e-4" selects exactly the blended prefix.
    keep = on & (log_t_incl > math.log(T_STOP))
    w = torch.where(keep, torch.exp(log_alpha + log_t_incl - log_t), 0.0)  # [G,L,P]
    log_t_end = log_t0 + torch.where(keep, log_t, 0.0).sum(1)
    return torch.bmm(w.transpose(1, 2), ft), log_t_end  # [G,P,C+1]; ft's last channel is 1 -> alpha
