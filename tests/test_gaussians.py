"""Gaussian model: init, SH colours, density control with a shared Adam, safetensors round trips."""
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ua3dtalk.gaussians import PARAM_NAMES, DensityController, GaussianModel, sh_basis


def _model(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    pts = torch.rand(n, 3, generator=g)
    return GaussianModel.from_points(pts, torch.rand(n, 3, generator=g))


def test_from_points_initialisation():
    pts = torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [0, 2.0, 0], [0, 0, 3.0]])
    m = GaussianModel.from_points(pts, torch.full((4, 3), 0.25))
    assert m.num_points == 4
    # point 0: squared NN distances 1, 4, 9 -> sqrt(14/3)
    torch.testing.assert_close(m.scaling[0], torch.full((3,), (14 / 3) ** 0.5))
    torch.testing.assert_close(m.opacity, torch.full((4,), 0.1))
    torch.testing.assert_close(m.rotation, torch.tensor([[1.0, 0, 0, 0]]).expand(4, 4))
    cols = m.colors(torch.tensor([[0.0, 0, -5], [3.0, 1, 0]]))
    assert cols.shape == (2, 4, 3)
    torch.testing.assert_close(cols, torch.full((2, 4, 3), 0.25))  # no higher-order SH yet
    with pytest.raises(ValueError):
        GaussianModel.from_points(torch.zeros(0, 3))


def test_sh_basis_is_orthonormal():
    g = torch.Generator().manual_seed(0)
    d = torch.nn.functional.normalize(torch.randn(200000, 3, generator=g, dtype=torch.float64), dim=-1)
    Y = sh_basis(3, d)
    gram = Y.T @ Y / len(d) * 4 * torch.pi  # Monte-Carlo integral over the sphere
    torch.testing.assert_close(gram, torch.eye(16, dtype=torch.float64), atol=0.03, rtol=0)


def test_view_dependent_colour_changes_with_camera():
    m = _model(8)
    with torch.no_grad():
        m.sh_rest.normal_()
    c = m.colors(torch.tensor([[0.0, 0, -3], [3.0, 0, 0]]))
    assert (c[0] - c[1]).abs().max() > 0.05 and (c >= 0).all()


def _optimiser_with_other_params(model):
    other = nn.Linear(3, 2)
    opt = torch.optim.Adam(model.param_groups(prefix="face.") + [{"params": other.parameters(), "lr": 1e-3, "name": "net"}])
    return opt, other


def _step(model, opt, other):
    opt.zero_grad()
    loss = (model.xyz.square().sum() + model.scaling.sum() + model.opacity.sum() + model.rotation.sum()
            + model.sh_dc.sum() + model.sh_rest.square().sum() + other(model.xyz.detach()).sum())
    loss.backward()
    opt.step()


def test_densify_and_prune_keeps_optimiser_consistent():
    torch.manual_seed(0)
    m = _model(64)
    with torch.no_grad():
        m.scaling_raw[:32] = torch.log(torch.tensor(0.05))  # large -> split
        m.scaling_raw[32:] = torch.log(torch.tensor(0.001))  # small -> clone
        m.opacity_raw[60:] = -10.0  # transparent -> pruned
    opt, other = _optimiser_with_other_params(m)
    other_before = {id(p): p.detach().clone() for p in other.parameters()}
    _step(m, opt, other)
    ctl = DensityController(m, opt)
    grad = torch.zeros(2, 64, 2)
    grad[:, ::2] = 1e-3  # even points are "hot"
    radii = torch.full((2, 64), 3, dtype=torch.int32)
    ctl.accumulate(grad, radii, 64, 64)
    old = {k: getattr(m, k).detach().clone() for k in PARAM_NAMES}
    old_state = {k: {s: v.clone() for s, v in opt.state[getattr(m, k)].items()} for k in PARAM_NAMES}
    stats = ctl.densify_and_prune(grad_threshold=2e-4, min_opacity=0.005, extent=1.0, max_screen_size=20)
    # 16 hot large points split into 32, 16 hot small cloned, 4 transparent (2 hot, so their clones too) pruned
    assert stats == {"cloned": 16, "split": 16, "pruned": 16 + 4 + 2, "num_points": 64 - 16 + 16 + 32 - 6}
    kept = torch.cat([torch.arange(1, 32, 2), torch.arange(32, 60)])  # cold large + all small survivors
    for k in PARAM_NAMES:
        p = getattr(m, k)
        assert p.shape[0] == m.num_points
        group = next(g for g in opt.param_groups if g["name"] == "face." + k)
        assert group["params"][0] is p
        st = opt.state[p]
        for s in ("exp_avg", "exp_avg_sq"):
            assert st[s].shape == p.shape
            torch.testing.assert_close(st[s][: len(kept)], old_state[k][s][kept])
            assert (st[s][len(kept):] == 0).all()  # new points start fresh
        torch.testing.assert_close(p[: len(kept)], old[k][kept])
    split_scale = m.scaling[-32:]
    torch.testing.assert_close(split_scale, old["scaling_raw"][0:32:2].exp().repeat(2, 1) / 1.6)
    _step(m, opt, other)  # the optimiser still works on the resized tensors
    assert all(not torch.equal(p, other_before[id(p)]) for p in other.parameters())
    assert ctl.grad_accum.shape == (m.num_points,) and ctl.grad_accum.sum() == 0


def test_reset_opacity_zeroes_only_opacity_moments():
    m = _model(16)
    opt, other = _optimiser_with_other_params(m)
    _step(m, opt, other)
    xyz_state = opt.state[m.xyz]["exp_avg"].clone()
    DensityController(m, opt).reset_opacity()
    assert (m.opacity <= 0.01 + 1e-6).all()
    assert (opt.state[m.opacity_raw]["exp_avg"] == 0).all()
    assert torch.equal(opt.state[m.xyz]["exp_avg"], xyz_state)


def test_controller_rejects_missing_params():
    m = _model(4)
    with pytest.raises(ValueError, match="not in the optimiser"):
        DensityController(m, torch.optim.Adam([m.xyz]))


def test_save_load_round_trip(tmp_path):
    m = _model(37)
    with torch.no_grad():
        m.sh_rest.normal_()
    m.save(tmp_path / "g.safetensors")
    back = GaussianModel.load(tmp_path / "g.safetensors")
    assert back.sh_degree == 2
    for k in PARAM_NAMES:
        assert torch.equal(getattr(back, k), getattr(m, k))
    with pytest.raises(FileNotFoundError):
        GaussianModel.load(tmp_path / "missing.safetensors")


class _Subject(nn.Module):
    def __init__(self, n_face, n_mouth):
        super().__init__()
        self.face, self.mouth = GaussianModel(n_face), GaussianModel(n_mouth, sh_degree=1)
        self.net = nn.Linear(2, 2)


def test_state_dict_loads_into_model_of_other_size(tmp_path):
    src = _Subject(0, 0)
    src.face, src.mouth = _model(50, 1), GaussianModel.from_points(torch.rand(7, 3), sh_degree=1)
    save_file(src.state_dict(), str(tmp_path / "model.safetensors"))
    dst = _Subject(3, 100)
    dst.load_state_dict(load_file(str(tmp_path / "model.safetensors")))
    assert dst.face.num_points == 50 and dst.mouth.num_points == 7
    for a, b in zip(src.state_dict().values(), dst.state_dict().values()):
        assert torch.equal(a, b)
    wrong = _Subject(1, 1)
    wrong.mouth = GaussianModel(1, sh_degree=2)  # SH degree mismatch still fails loudly
    with pytest.raises(RuntimeError, match="size mismatch"):
        wrong.load_state_dict(load_file(str(tmp_path / "model.safetensors")))


def test_densify_growth_cap_takes_the_hottest_gaussians():
    """A size budget holds exactly: with room for 5 more, the 5 hottest of 32 hot Gaussians grow."""
    torch.manual_seed(0)
    m = _model(64)
    with torch.no_grad():
        m.scaling_raw[:] = torch.log(torch.tensor(0.001))  # all small -> clone
    opt, other = _optimiser_with_other_params(m)
    ctl = DensityController(m, opt)
    grad = torch.zeros(1, 64, 2)
    grad[0, ::2, 0] = torch.linspace(1e-3, 2e-3, 32)  # even points hot, the last ones hottest
    ctl.accumulate(grad, torch.full((1, 64), 3, dtype=torch.int32), 64, 64)
    xyz = m.xyz.detach().clone()
    stats = ctl.densify_and_prune(grad_threshold=2e-4, min_opacity=0.005, extent=1.0, max_new=5)
    assert stats["cloned"] == 5 and stats["num_points"] == 69
    torch.testing.assert_close(m.xyz[64:], xyz[54::2])   # clones of the 5 hottest
