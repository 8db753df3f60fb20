from dataclasses import replace

import pytest
import torch

from ua3dtalk.config import preset
from ua3dtalk.deform import DeformOutput, MotionNetwork, face_network, mouth_network

CFG = preset("demo", ensemble=3, latent_dim=8, hidden_dim=16, hexplane_dim=4, hexplane_resolution=8)
VIEW_DIMS = {"audio": 5, "content": 6, "style": 4, "emotion": 7}


def make_views(batch: int, n: int, seed: int = 0, views=CFG.face_views) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name in views:
        shape = (batch, n, VIEW_DIMS[name]) if name == "emotion" else (batch, VIEW_DIMS[name])
        out[name] = torch.randn(*shape, generator=g)
    return out


def make_xyz(n: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("branch", ["face", "mouth"])
def test_shapes(batch, branch):
    torch.manual_seed(0)
    net = face_network(CFG, VIEW_DIMS) if branch == "face" else mouth_network(CFG, VIEW_DIMS)
    views_used = CFG.face_views if branch == "face" else CFG.mouth_views
    n = 50
    out = net(make_xyz(n), make_views(batch, n, views=views_used))
    assert isinstance(out, DeformOutput)
    assert out.d_xyz.shape == (batch, n, 3)
    if branch == "face":
        assert out.d_rotation.shape == (batch, n, 4) and out.d_scale.shape == (batch, n, 3)
    else:
        assert out.d_rotation is None and out.d_scale is None
    for stat in (out.aleatoric, out.epistemic, out.weight):
        assert stat.shape == (batch, len(views_used), n)
    assert out.nll.dim() == 0 and torch.isfinite(out.nll)
    torch.testing.assert_close(out.weight.sum(1), torch.ones(batch, n))
    assert float(out.d_xyz.detach().abs().max()) < 1e-2       # starts near the canonical shape


def test_batch_equals_frames_one_by_one():
    torch.manual_seed(0)
    net = face_network(CFG, VIEW_DIMS)
    xyz, views = make_xyz(20), make_views(3, 20)
    together = net(xyz, views)
    for b in range(3):
        alone = net(xyz, {k: v[b:b + 1] for k, v in views.items()})
        torch.testing.assert_close(alone.d_xyz[0], together.d_xyz[b], rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(alone.weight[0], together.weight[b], rtol=1e-4, atol=1e-6)


def test_fusion_modes_differ_and_validate():
    torch.manual_seed(0)
    net = face_network(CFG, VIEW_DIMS)
    xyz, views = make_xyz(30), make_views(2, 30)
    stage2 = net(xyz, views)
    uniform = net(xyz, views, fusion="uniform")
    stage1 = net(xyz, views, stage=1)
    assert torch.all(uniform.weight == 0.25)
    assert not torch.allclose(stage2.weight, uniform.weight)
    assert not torch.allclose(stage2.d_xyz, uniform.d_xyz)
    assert not torch.allclose(stage1.d_xyz, stage2.d_xyz)
    with pytest.raises(ValueError, match="fusion"):
        net(xyz, views, fusion="average")
    with pytest.raises(ValueError, match="stage"):
        net(xyz, views, stage=3)
    with pytest.raises(ValueError, match="missing view"):
        net(xyz, {k: v for k, v in views.items() if k != "style"})
    with pytest.raises(ValueError, match="emotion"):
        net(xyz, {**views, "emotion": views["emotion"][:, :10]})
    with pytest.raises(ValueError, match="view_dims"):
        MotionNetwork(CFG, ("audio", "pitch"), VIEW_DIMS, ("xyz",))


def test_a_view_in_parts_equals_the_view_concatenated():
    """A per-frame part (e.g. the emotion embedding) beside a per-Gaussian part (its code-book
    features) is the same view as their concatenation, without repeating the per-frame part N times."""
    torch.manual_seed(0)
    net = face_network(CFG, VIEW_DIMS)
    xyz, views = make_xyz(25), make_views(2, 25)
    per_gaussian, per_frame = views["emotion"][..., :4], views["emotion"][:, 0, 4:]
    whole = torch.cat([per_gaussian, per_frame[:, None].expand(-1, 25, -1)], dim=-1)
    parts = net(xyz, {**views, "emotion": (per_gaussian, per_frame)})
    joined = net(xyz, {**views, "emotion": whole})
    torch.testing.assert_close(parts.d_xyz, joined.d_xyz, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(parts.weight, joined.weight, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="parts of sizes"):
        net(xyz, {**views, "emotion": (per_gaussian, per_frame[:, :2])})
    with pytest.raises(ValueError, match="must be"):
        net(xyz, {**views, "emotion": (per_gaussian[:, :10], per_frame)})


def test_set_bounds_moves_the_field():
    net = mouth_network(CFG, VIEW_DIMS)
    net.set_bounds(torch.tensor([-2.0, -3.0, -4.0]), torch.tensor([2.0, 3.0, 4.0]))
    torch.testing.assert_close(net.field.lo, torch.tensor([-2.0, -3.0, -4.0]))
    torch.testing.assert_close(net.field.hi, torch.tensor([2.0, 3.0, 4.0]))


@pytest.mark.parametrize("switch", ["", "motion_basis", "deform_opacity"])
@pytest.mark.parametrize("branch", ["face", "mouth"])
def test_every_parameter_gets_gradient_from_an_image_loss(branch, switch):
    from ua3dtalk.render import rasterize

    torch.manual_seed(0)
    cfg = replace(CFG, **({switch: True} if switch else {}))
    net = face_network(cfg, VIEW_DIMS) if branch == "face" else mouth_network(cfg, VIEW_DIMS)
    views_used = CFG.face_views if branch == "face" else CFG.mouth_views
    batch, n, size = 2, 40, 16
    g = torch.Generator().manual_seed(3)
    xyz = torch.cat([0.6 * torch.rand(n, 2, generator=g) - 0.3, 0.2 * torch.rand(n, 1, generator=g) + 2.0], 1)
    net.set_bounds(xyz.min(0).values, xyz.max(0).values)
    out = net(xyz, make_views(batch, n, views=views_used))

    quats = torch.tensor([1.0, 0.0, 0.0, 0.0]).expand(batch, n, 4)
    log_scales = torch.full((batch, n, 3), -2.5)
    if out.d_rotation is not None:
        quats = quats + out.d_rotation
        log_scales = log_scales + out.d_scale
    colors = torch.rand(n, 3, generator=g).expand(batch, n, 3)
    viewmats = torch.eye(4).expand(batch, 4, 4)
    K = torch.tensor([[20.0, 0, 8], [0, 20.0, 8], [0, 0, 1]]).expand(batch, 3, 3)
    opacity_logit = torch.full((batch, n), 1.4)
    if out.d_opacity is not None:
        opacity_logit = opacity_logit + out.d_opacity
    render = rasterize(xyz + out.d_xyz, quats, log_scales.exp(), opacity_logit.sigmoid(), colors,
                       viewmats, K, size, size, backend="torch")
    target = torch.rand(batch, size, size, 3, generator=g)
    loss = (render.image - target).abs().mean()
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and float(p.grad.abs().max()) > 0, name


def test_deform_opacity_gives_the_face_branch_a_per_frame_opacity_offset_starting_near_zero():
    torch.manual_seed(0)
    cfg = replace(CFG, deform_opacity=True)
    xyz, views = make_xyz(12), make_views(2, 12)
    out = face_network(cfg, VIEW_DIMS)(xyz, views)
    assert out.d_opacity.shape == (2, 12)
    assert 0 < float(out.d_opacity.abs().max()) < 1e-2                    # near the canonical opacity
    assert not torch.allclose(out.d_opacity[0], out.d_opacity[1])          # but per frame
    assert face_network(CFG, VIEW_DIMS)(xyz, views).d_opacity is None
    assert mouth_network(cfg, VIEW_DIMS)(xyz, make_views(2, 12, views=CFG.mouth_views)).d_opacity is None


def test_nll_trains_the_uncertainty_heads():
    torch.manual_seed(0)
    net = mouth_network(CFG, VIEW_DIMS)
    out = net(make_xyz(10), make_views(1, 10, views=CFG.mouth_views))
    out.nll.backward()
    for block in net.blocks.values():
        assert all(float(p.grad.abs().max()) > 0 for p in block.parameters())
    assert all(p.grad is None for p in net.decoder.parameters())   # the fused target is detached


def test_motion_basis_starts_at_zero_and_is_each_gaussians_basis_times_its_latent():
    torch.manual_seed(0)
    plain = face_network(CFG, VIEW_DIMS)
    torch.manual_seed(0)
    with_basis = face_network(replace(CFG, motion_basis=True), VIEW_DIMS)
    xyz, views = make_xyz(12), make_views(2, 12)
    torch.testing.assert_close(with_basis(xyz, views).d_xyz, plain(xyz, views).d_xyz)   # same start

    decoder = with_basis.decoder
    with torch.no_grad():
        decoder.basis.weight.normal_()
        decoder.basis.bias.normal_()
    latent, pos = torch.randn(2, 12, CFG.latent_dim), torch.randn(12, decoder.basis.in_features)
    got = decoder(latent, pos)["xyz"]
    trunk_only = plain.decoder(latent, pos)["xyz"]
    for b in range(2):
        for i in range(12):
            basis = decoder.basis(pos[i]).view(3, CFG.latent_dim)
            expected = trunk_only[b, i] + decoder.basis_scale * basis @ latent[b, i]
            torch.testing.assert_close(got[b, i], expected, rtol=1e-5, atol=1e-6)


def test_motion_basis_fits_a_blend_of_landmark_motions_that_the_trunk_alone_damps():
    """Offsets of the form Σ_k w_k(x) m_k(t) (fixed per-point blend weights, per-frame motions): the
    landmark-driven motion of a face, most points still. Same steps, same data: the trunk alone stays
    near zero under the L1 loss (the damped lips of bench/RESULTS.md), the basis fits the moving points."""
    def fit(motion_basis: bool) -> float:
        torch.manual_seed(0)
        cfg = preset("demo", motion_basis=motion_basis)
        g = torch.Generator().manual_seed(0)
        n, landmarks, frames = 400, 12, 64
        xyz = torch.rand(n, 3, generator=g) * 2 - 1
        anchors = torch.rand(landmarks, 2, generator=g) * 2 - 1
        blend = torch.softmax(-((xyz[:, None, :2] - anchors) ** 2).sum(-1) / 0.02, dim=1)
        feats = {"audio": torch.randn(frames, 5, generator=g), "content": torch.randn(frames, 6, generator=g)}
        code = torch.cat([feats["audio"], feats["content"]], 1) @ torch.randn(11, 3, generator=g)
        moves = torch.randn(3, landmarks, 3, generator=g) * 0.05 * (torch.arange(landmarks) < 3)[None, :, None]
        target = torch.einsum("fk,klc,nl->fnc", code, moves, blend)
        net = MotionNetwork(cfg, ("audio", "content"), {"audio": 5, "content": 6}, ("xyz",))
        net.set_bounds(torch.full((3,), -1.1), torch.full((3,), 1.1))
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        for step in range(600):
            pick = torch.randint(frames, (8,), generator=g)
            out = net(xyz, {k: v[pick] for k, v in feats.items()}, fusion="uniform")
            loss = (out.d_xyz - target[pick]).abs().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            pred = net(xyz, feats, fusion="uniform").d_xyz
        moving = target.norm(dim=-1).mean(0) > 1e-3
        return float((pred - target)[:, moving].norm() / target[:, moving].norm())

    with_basis, without = fit(True), fit(False)
    assert with_basis < 0.2 and with_basis < 0.5 * without, (with_basis, without)
