import pytest
import torch

from ua3dtalk.uncertainty import (
    FusionResult, UncertaintyBlock, precision_fusion, stage1_fusion, uniform_fusion,
)


def reference_fusion(mu: torch.Tensor, log_var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's stage 2, literally: build every Σ_v and invert it (float64)."""
    mu, log_var = mu.double(), log_var.double().clamp(-20, 20)
    mean_v = mu.mean(dim=2)                                              # [V, N, D]
    dev = mu - mean_v.unsqueeze(2)
    cov = dev.transpose(-1, -2) @ dev / (mu.shape[2] - 1)                # [V, N, D, D]
    sigma = cov + torch.diag_embed(log_var.exp().mean(dim=2))
    prec = torch.linalg.inv(sigma)
    fused_cov = torch.linalg.inv(prec.sum(dim=0))
    mean = (fused_cov @ (prec @ mean_v.unsqueeze(-1)).sum(dim=0)).squeeze(-1)
    traces = prec.diagonal(dim1=-2, dim2=-1).sum(-1)
    return mean, traces / traces.sum(dim=0, keepdim=True)


def random_inputs(v=4, n=32, t=10, d=48, lv_range=(-2.0, 2.0), scale_range=(0.0, 0.0), seed=0,
                  dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    lo, hi = lv_range
    log_var = lo + (hi - lo) * torch.rand(v, n, t, d, generator=g, dtype=torch.float64)
    scale = torch.exp(scale_range[0] + (scale_range[1] - scale_range[0])
                      * torch.rand(v, n, 1, d, generator=g, dtype=torch.float64))
    centre = torch.randn(v, n, 1, d, generator=g, dtype=torch.float64)
    mu = centre + scale * torch.randn(v, n, t, d, generator=g, dtype=torch.float64)
    return mu.to(dtype), log_var.to(dtype)


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Worst per-Gaussian relative error (norm over the last dim)."""
    x, ref = x.double(), ref.double()
    return float(((x - ref).norm(dim=-1) / ref.norm(dim=-1)).max())


CASES = {
    "random": dict(),
    # variances spread over e^±10 per dim and member, ensemble spreads over e^±3 per dim
    "badly_conditioned": dict(lv_range=(-10.0, 10.0), scale_range=(-3.0, 3.0), seed=1),
    # ensembles that disagree far more than they admit (Cov dominates the diagonal)
    "overconfident": dict(lv_range=(-12.0, -6.0), scale_range=(0.0, 1.0), seed=2),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_dense_reference_float64(case):
    mu, lv = random_inputs(**CASES[case])
    out = precision_fusion(mu, lv)
    ref_mean, ref_weight = reference_fusion(mu, lv)
    assert rel_err(out.mean, ref_mean) < 1e-6
    assert rel_err(out.weight.T, ref_weight.T) < 1e-6


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_dense_reference_float32(case):
    mu, lv = random_inputs(**CASES[case])
    out = precision_fusion(mu.float(), lv.float())
    assert out.mean.dtype == torch.float32 and out.weight.dtype == torch.float32
    ref_mean, ref_weight = reference_fusion(mu.float(), lv.float())
    assert rel_err(out.mean, ref_mean) < 1e-3
    assert rel_err(out.weight.T, ref_weight.T) < 1e-3


def test_stats_fields():
    mu, lv = random_inputs(n=8)
    out = precision_fusion(mu, lv)
    torch.testing.assert_close(out.aleatoric, lv.exp().mean(dim=(2, 3)))
    torch.testing.assert_close(out.epistemic, mu.var(dim=2).mean(dim=-1))
    torch.testing.assert_close(out.weight.sum(0), torch.ones(8, dtype=torch.float64))


def test_gradients_match_reference():
    mu, lv = random_inputs(v=3, n=4, t=5, d=12, lv_range=(-4, 4), scale_range=(-1, 1), seed=3)
    g = torch.Generator().manual_seed(4)
    probe_mean = torch.randn(4, 12, generator=g, dtype=torch.float64)
    probe_weight = torch.randn(3, 4, generator=g, dtype=torch.float64)

    def grads(fn):
        m, l = mu.clone().requires_grad_(), lv.clone().requires_grad_()
        mean, weight = fn(m, l)
        loss = (mean * probe_mean).sum() + (weight * probe_weight).sum()
        return torch.autograd.grad(loss, (m, l))

    ours = grads(lambda m, l: (lambda r: (r.mean, r.weight))(precision_fusion(m, l)))
    ref = grads(reference_fusion)
    for a, b in zip(ours, ref):
        assert rel_err(a.flatten(), b.flatten()) < 1e-6


def test_single_view_is_its_ensemble_mean():
    mu, lv = random_inputs(v=1, n=5)
    out = precision_fusion(mu, lv)
    torch.testing.assert_close(out.mean, mu[0].mean(dim=1))
    torch.testing.assert_close(out.weight, torch.ones(1, 5, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_confident_view_dominates(dtype):
    mu, lv = random_inputs(n=16, dtype=dtype)
    target = torch.randn(16, 48, generator=torch.Generator().manual_seed(5), dtype=dtype)
    mu[2] = target.unsqueeze(1) + 1e-4 * mu[2]        # members agree, ...
    lv[2] = -16.0                                      # ... and claim tiny variance
    out = precision_fusion(mu, lv)
    assert rel_err(out.mean, target) < 1e-3
    assert float(out.weight[2].min()) > 0.99
    uniform = uniform_fusion(mu, lv)
    assert rel_err(uniform.mean, target) > 0.1        # the baseline ignores who is sure


@pytest.mark.parametrize("n", [1, 4096])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shapes_and_dtypes(n, dtype):
    mu, lv = random_inputs(v=3, n=n, t=4, d=8, dtype=dtype)
    for out in (precision_fusion(mu, lv), uniform_fusion(mu, lv), stage1_fusion(mu, lv)):
        assert isinstance(out, FusionResult)
        assert out.mean.shape == (n, 8)
        for field in (out.aleatoric, out.epistemic, out.weight):
            assert field.shape == (3, n)
        assert all(x.dtype == dtype for x in (out.mean, out.aleatoric, out.epistemic, out.weight))


def test_no_nan_over_the_whole_log_var_range():
    g = torch.Generator().manual_seed(6)
    mu = 10 * torch.randn(4, 256, 10, 48, generator=g)
    lv = 40 * torch.rand(4, 256, 10, 48, generator=g) - 20
    lv[0, :64] = -20.0                              # extreme corners: all tiny / all huge variances
    lv[1, 64:128] = 20.0
    lv[:, 128:192] = -20.0
    mu[:, 192:] *= 1e-6                             # (nearly) collapsed ensembles
    lv[3, 200] = 1e4                                # beyond the range: clamped
    mu.requires_grad_()
    lv.requires_grad_()
    out = precision_fusion(mu, lv)
    for x in (out.mean, out.aleatoric, out.epistemic, out.weight):
        assert torch.isfinite(x).all()
    (out.mean.sum() + out.weight.sum()).backward()
    assert torch.isfinite(mu.grad).all() and torch.isfinite(lv.grad).all()


def test_stage1_uses_one_member_per_view():
    mu, lv = random_inputs(v=2, n=6, t=5, d=4)
    lv[1] = lv[0]
    g = torch.Generator().manual_seed(7)
    out = stage1_fusion(mu, lv, generator=torch.Generator().manual_seed(7))
    pick = torch.randint(5, (2,), generator=g)
    m0, m1 = mu[0, :, pick[0]], mu[1, :, pick[1]]
    w0 = torch.sigmoid(lv[1, :, pick[1]] - lv[0, :, pick[0]])
    torch.testing.assert_close(out.mean, w0 * m0 + (1 - w0) * m1)
    torch.testing.assert_close(out.weight.sum(0), torch.ones(6, dtype=torch.float64))


def test_uniform_fusion_is_the_plain_average():
    mu, lv = random_inputs(v=3, n=5, t=4, d=6)
    out = uniform_fusion(mu, lv)
    torch.testing.assert_close(out.mean, mu.mean(dim=(0, 2)))
    assert torch.all(out.weight == 1 / 3)


def test_bad_inputs_are_clear_errors():
    mu, lv = random_inputs(v=2, n=3, t=4, d=5)
    with pytest.raises(ValueError, match=r"\[V, N, T, D\]"):
        precision_fusion(mu[0], lv[0])
    with pytest.raises(ValueError, match="at least 2"):
        precision_fusion(mu[:, :, :1], lv[:, :, :1])
    with pytest.raises(ValueError, match="dtype"):
        precision_fusion(mu, lv.float())


def test_uncertainty_block_shapes_and_heads_are_independent():
    torch.manual_seed(0)
    block = UncertaintyBlock(in_dim=7, latent_dim=6, ensemble=5, hidden_dim=16)
    x = torch.randn(2, 3, 7)
    with torch.no_grad():
        mu, lv = block(x)
    assert mu.shape == lv.shape == (2, 3, 5, 6)
    assert float(mu.var(dim=2).mean()) > 1e-4       # members disagree at init
    # head t only depends on its own weights: zeroing head 0's output layer changes only head 0
    with torch.no_grad():
        block.w2[0].zero_()
        block.b2[0].zero_()
    mu2, lv2 = block(x)
    assert torch.all(mu2[:, :, 0] == 0)
    torch.testing.assert_close(mu2[:, :, 1:], mu[:, :, 1:])
    (mu2.sum() + lv2.sum()).backward()
    assert all(p.grad is not None for p in block.parameters())


@pytest.mark.parametrize("outputs", ["mean", "weight", "both"])
@pytest.mark.parametrize("case", ["random", "badly_conditioned"])
def test_hand_written_backward_passes_gradcheck(outputs, case):
    """The closed-form backward against finite differences (float64), for the
    fused mean and the fusion weights alone and together."""
    kwargs = {**CASES[case], "lv_range": (-3.0, 3.0)} if case != "random" else {}
    mu, lv = random_inputs(**{**kwargs, "v": 3, "n": 2, "t": 4, "d": 5})
    mu.requires_grad_()
    lv.requires_grad_()
    pick = {"mean": lambda r: r.mean, "weight": lambda r: r.weight, "both": lambda r: (r.mean, r.weight)}[outputs]
    assert torch.autograd.gradcheck(lambda m, l: pick(precision_fusion(m, l)), (mu, lv), eps=1e-6, atol=1e-6)


def test_uncertainty_block_parts_match_the_concatenated_input():
    """Position features [N, P] and a per-frame feature [B, 1, d] give what the
    concatenated [B, N, P + d] input gives; parts of the wrong size are refused."""
    torch.manual_seed(0)
    block = UncertaintyBlock(in_dim=7, latent_dim=6, ensemble=3, hidden_dim=8)
    pos, feat = torch.randn(5, 4), torch.randn(2, 1, 3)
    whole = torch.cat([pos.expand(2, 5, 4), feat.expand(2, 5, 3)], dim=-1)
    for split, joined in zip(block(pos, feat), block(whole)):
        assert split.shape == (2, 5, 3, 6)
        torch.testing.assert_close(split, joined)
    with pytest.raises(ValueError, match="add up"):
        block(pos, torch.randn(2, 1, 2))
