"""Torch render backend vs gsplat's reference projection and a brute-force compositor."""
import math

import pytest
import torch

from ua3dtalk import render
from ua3dtalk.render import RenderOutput, project, rasterize, resolve_backend

W, H = 40, 32


def _scene(n: int, seed: int, batch: int = 2, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.rand(*s, generator=g, dtype=dtype)  # noqa: E731
    means = (r(n, 3) - 0.5) * torch.tensor([2.0, 1.6, 1.0], dtype=dtype) + torch.tensor([0, 0, 3.0], dtype=dtype)
    quats = torch.randn(n, 4, generator=g, dtype=dtype)
    scales = 0.02 + 0.12 * r(n, 3)
    opac = 0.05 + 0.94 * r(n)
    colors = r(n, 3)
    extras = r(n, 2)
    views, Ks = [], []
    for b in range(batch):
        ang = 0.15 * (b - 0.5)
        R = torch.tensor([[math.cos(ang), 0, math.sin(ang)], [0, 1, 0], [-math.sin(ang), 0, math.cos(ang)]], dtype=dtype)
        v = torch.eye(4, dtype=dtype)
        v[:3, :3] = R
        v[:3, 3] = torch.tensor([0.05 * b, -0.03 * b, 0.1 * b], dtype=dtype)
        views.append(v)
        Ks.append(torch.tensor([[45.0 + 5 * b, 0, W / 2 + b], [0, 47.0, H / 2 - b], [0, 0, 1]], dtype=dtype))
    return dict(means=means, quats=quats, scales=scales, opacities=opac, colors=colors, extras=extras,
                viewmats=torch.stack(views), Ks=torch.stack(Ks))


def _brute_force(s, bg):
    """Every Gaussian at every pixel, depth-sorted, front to back, float64, gsplat's cut-offs."""
    from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci

    covars, _ = _quat_scale_to_covar_preci(s["quats"], s["scales"], compute_preci=False)
    radii, m2, depths, conics, _ = _fully_fused_projection(s["means"], covars, s["viewmats"], s["Ks"], W, H)
    images, alphas, depth_maps, extra_maps = [], [], [], []
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float64) + 0.5, torch.arange(W, dtype=torch.float64) + 0.5, indexing="ij")
    for b in range(len(s["viewmats"])):
        T = torch.ones(H, W, dtype=torch.float64)
        done = torch.zeros(H, W, dtype=torch.bool)
        rgb = torch.zeros(H, W, 3, dtype=torch.float64)
        dep = torch.zeros(H, W, dtype=torch.float64)
        ext = torch.zeros(H, W, 2, dtype=torch.float64)
        for i in torch.argsort(depths[b]).tolist():
            if (radii[b, i] == 0).all():
                continue
            dx, dy = xs - m2[b, i, 0], ys - m2[b, i, 1]
            a, bb, c = conics[b, i]
            sigma = 0.5 * (a * dx * dx + c * dy * dy) + bb * dx * dy
            alpha = (s["opacities"][i] * torch.exp(-sigma)).clamp(max=0.999)
            use = (sigma >= 0) & (alpha >= 1 / 255) & ~done
            next_t = T * (1 - alpha)
            stop = use & (next_t <= 1e-4)
            done |= stop
            use &= ~stop
            w = torch.where(use, alpha * T, torch.zeros_like(T))
            rgb += w[..., None] * s["colors"][i]
            dep += w * depths[b, i]
            ext += w[..., None] * s["extras"][i]
            T = torch.where(use, next_t, T)
        images.append(rgb + T[..., None] * bg)
        alphas.append(1 - T)
        depth_maps.append(dep)
        extra_maps.append(ext)
    return torch.stack(images), torch.stack(alphas)[..., None], torch.stack(depth_maps)[..., None], torch.stack(extra_maps)


@pytest.mark.parametrize("seed", [0, 1])
def test_projection_matches_gsplat_reference(seed):
    from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci

    s = _scene(300, seed)
    s["means"][:20, 2] = -1.0  # behind the camera
    s["means"][20:40, 0] = 9.0  # far outside the image
    covars, _ = _quat_scale_to_covar_preci(s["quats"], s["scales"], compute_preci=False)
    radii, m2, depths, conics, _ = _fully_fused_projection(s["means"], covars, s["viewmats"], s["Ks"], W, H)
    B, N = radii.shape[:2]
    p = project(s["means"].expand(B, N, 3), s["quats"].expand(B, N, 4), s["scales"].expand(B, N, 3), s["viewmats"], s["Ks"], W, H)
    assert torch.equal(p.radii, radii.amax(-1).int())
    vis = p.radii > 0
    assert vis.sum() > 50 and (~vis).sum() > 0  # the scene exercises culling too
    torch.testing.assert_close(p.means2d[vis], m2[vis], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(p.conics[vis], conics[vis], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(p.depths, depths, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed,dtype", [(0, torch.float64), (1, torch.float64), (2, torch.float32)])
def test_images_match_brute_force(seed, dtype):
    s = _scene(250, seed)
    bg = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    ref_img, ref_a, ref_d, ref_e = _brute_force(s, bg)
    cast = {k: v.to(dtype) for k, v in s.items()}
    out = rasterize(cast["means"], cast["quats"], cast["scales"], cast["opacities"], cast["colors"], cast["viewmats"],
                    cast["Ks"], W, H, background=bg.to(dtype), extras=cast["extras"], backend="torch")
    assert isinstance(out, RenderOutput)
    assert out.image.shape == (2, H, W, 3) and out.extras.shape == (2, H, W, 2)
    assert 0.3 < ref_a.mean() < 0.99  # neither empty nor saturated
    for got, ref in ((out.image, ref_img), (out.alpha, ref_a), (out.extras, ref_e)):
        assert (got.double() - ref).abs().mean() < 1e-3
        if dtype == torch.float64:  # same maths: only rounding differences remain
            assert (got - ref).abs().max() < 1e-9
    assert (out.depth.double() - ref_d).abs().mean() < 1e-3 * ref_d.abs().mean()


def test_per_frame_gaussians_render_like_separate_calls():
    s = _scene(200, 3, dtype=torch.float32)
    shift = torch.tensor([[0.0, 0, 0], [0.1, -0.05, 0.2]])
    means = s["means"][None] + shift[:, None]
    out = rasterize(means, s["quats"].expand(2, -1, -1), s["scales"].expand(2, -1, -1), s["opacities"].expand(2, -1),
                    s["colors"], s["viewmats"], s["Ks"], W, H, backend="torch")
    for b in range(2):
        one = rasterize(means[b], s["quats"], s["scales"], s["opacities"], s["colors"], s["viewmats"][b:b + 1],
                        s["Ks"][b:b + 1], W, H, backend="torch")
        torch.testing.assert_close(out.image[b], one.image[0])
        torch.testing.assert_close(out.radii[b], one.radii[0])


def test_gradients_reach_every_parameter():
    s = _scene(150, 4, dtype=torch.float32)
    params = {k: s[k].clone().requires_grad_() for k in ("means", "quats", "scales", "opacities", "colors", "extras")}
    out = rasterize(params["means"], params["quats"], params["scales"], params["opacities"], params["colors"],
                    s["viewmats"], s["Ks"], W, H, background=torch.ones(3), extras=params["extras"], backend="torch")
    out.means2d.retain_grad()
    (out.image.square().sum() + out.extras.sum() + out.depth.sum()).backward()
    visible = (out.radii > 0).any(0)
    for name, p in params.items():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert (p.grad[visible].abs().reshape(visible.sum(), -1).sum(-1) > 0).float().mean() > 0.9, name
    assert out.means2d.grad.shape == (2, 150, 2) and out.means2d.grad.abs().sum() > 0


def test_backend_resolution(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_backend("auto") == "torch"
    assert render.available_backends() == ["torch"]
    with pytest.raises(RuntimeError, match="CUDA"):
        resolve_backend("gsplat")
    with pytest.raises(ValueError, match="unknown render backend"):
        resolve_backend("vulkan")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_backend("auto") == "gsplat"
    monkeypatch.setattr(render, "_gsplat_importable", lambda: False)
    assert resolve_backend("auto") == "torch"
    with pytest.raises(RuntimeError, match="gsplat package"):
        resolve_backend("gsplat")


def test_bad_shapes_are_rejected():
    s = _scene(10, 5, dtype=torch.float32)
    with pytest.raises(ValueError, match="quats"):
        rasterize(s["means"], s["quats"][:5], s["scales"], s["opacities"], s["colors"], s["viewmats"], s["Ks"], W, H, backend="torch")
    with pytest.raises(ValueError, match="Ks"):
        rasterize(s["means"], s["quats"], s["scales"], s["opacities"], s["colors"], s["viewmats"], s["Ks"][:1], W, H, backend="torch")


def test_gradients_match_brute_force_autograd():
    s = _scene(60, 6)
    keys = ("means", "quats", "scales", "opacities", "colors", "extras")
    weights = torch.rand(2, H, W, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    bg = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    grads = []
    for use_ref in (True, False):
        p = {k: s[k].clone().requires_grad_() for k in keys}
        sc = dict(s, **p)
        if use_ref:
            img, _, _, ext = _brute_force(sc, bg)
        else:
            out = rasterize(p["means"], p["quats"], p["scales"], p["opacities"], p["colors"], s["viewmats"], s["Ks"],
                            W, H, background=bg, extras=p["extras"], backend="torch")
            img, ext = out.image, out.extras
        ((img * weights).sum() + ext.sum()).backward()
        grads.append({k: p[k].grad for k in keys})
    for k in keys:
        assert grads[0][k].abs().sum() > 0
        torch.testing.assert_close(grads[1][k], grads[0][k], rtol=1e-6, atol=1e-8)
