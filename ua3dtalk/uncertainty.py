"""Uncertainty blocks (ensembles of heads) and the fusion of their views.

Each view v gives, per Gaussian, T ensemble members with a mean and a
log-variance over a D-dim latent. Its distribution is

    Σ_v = Cov_t(μ_v) + diag(mean_t σ²_v)        (diagonal plus rank ≤ T-1)

and stage 2 fuses the views as a product of Gaussians,
Σ = (Σ_v Σ_v⁻¹)⁻¹, μ = Σ Σ_v Σ_v⁻¹ μ̄_v.

The official code forms each Σ_v and inverts five D x D matrices per Gaussian.
Here the same function is computed through a latent-variable view of the low-rank
part: write μ̄_v + A_vᵀ z_v + e_v with z_v ~ N(0, I_{T-1}), e_v ~ N(0, diag d_v),
where the rows of A_v are the members in Helmert coordinates / √(T-1), so
A_vᵀ A_v is exactly the unbiased ensemble covariance. Minimising the joint
quadratic over z_v gives exactly (x - μ̄_v)ᵀ Σ_v⁻¹ (x - μ̄_v), so the fused mean is
the joint minimiser over (x, z). Eliminating x (its block is diagonal) leaves one
V(T-1) x V(T-1) system ``H z = b`` with ``H = I + (PSD)``; every coefficient of H
is a sum of positive terms, so nothing cancels, and its Cholesky factor is taken
in the Jacobi-scaled basis. Precision traces use Woodbury on each view (a
(T-1)² system). The solves have closed-form backward passes that reuse the
forward's factors.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

LOG_VAR_RANGE = (-20.0, 20.0)


@dataclass
class FusionResult:
    mean: Tensor        # [N, D] fused latent
    aleatoric: Tensor   # [V, N] mean over D of mean_t exp(log_var)
    epistemic: Tensor   # [V, N] mean over D of the unbiased variance of mu over t
    weight: Tensor      # [V, N] view's share of the summed precision traces


def _check(mu: Tensor, log_var: Tensor, min_members: int = 1) -> None:
    if mu.shape != log_var.shape or mu.dim() != 4:
        raise ValueError(f"mu and log_var must both be [V, N, T, D], got {tuple(mu.shape)} and {tuple(log_var.shape)}")
    if not (mu.is_floating_point() and log_var.dtype == mu.dtype):
        raise ValueError(f"mu and log_var must share a floating dtype, got {mu.dtype} and {log_var.dtype}")
    if mu.shape[2] < min_members:
        raise ValueError(f"this fusion needs an ensemble of at least {min_members} members, got T={mu.shape[2]}")


def _moments(mu: Tensor, log_var: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per view, Gaussian and latent dim ([V, N, D] each): the ensemble mean, the
    mean variance mean_t exp(log_var) and the unbiased variance of mu over t."""
    mean = mu.mean(dim=2)
    variance = log_var.exp().mean(dim=2)
    if mu.shape[2] > 1:
        # written out: Tensor.var over a middle dimension is very slow on the CPU
        spread = (mu - mean.unsqueeze(2)).square().sum(dim=2) / (mu.shape[2] - 1)
    else:
        spread = torch.zeros_like(mean)
    return mean, variance, spread


def _helmert_coordinates(mu: Tensor) -> Tensor:
    """[V, N, T, D] -> [V, N, T-1, D]: the members in an orthonormal basis of the
    directions orthogonal to their mean (Helmert contrasts, by a running sum),
    so that Σ_k a_k a_kᵀ is the members' scatter about their mean."""
    t = mu.shape[2]
    k = torch.arange(1, t, dtype=mu.dtype, device=mu.device).view(-1, 1)
    preceding = mu.cumsum(dim=2)[:, :, :-1]                             # Σ_{i<k} mu_i
    return (preceding - k * mu[:, :, 1:]) * (k * (k + 1)).rsqrt()


def _scaled_cholesky(m: Tensor) -> tuple[Tensor, Tensor]:
    """Cholesky factor of a batch of SPD matrices in their Jacobi-scaled basis.

    Returns (L, s) with ``s m s ≈ L Lᵀ`` (s = diag(m)^-1/2). The scaled matrix has a
    unit diagonal, so the jitter is relative to the matrix's own scale; it grows
    only for the (rare) batch entries whose factorisation fails.
    """
    s = m.diagonal(dim1=-2, dim2=-1).clamp_min(torch.finfo(m.dtype).tiny).rsqrt()
    scaled = m * s.unsqueeze(-1) * s.unsqueeze(-2)
    eye = torch.eye(m.shape[-1], dtype=m.dtype, device=m.device)
    eps = torch.finfo(m.dtype).eps
    factor, info = torch.linalg.cholesky_ex(scaled + 10 * eps * eye)
    for jitter in (1e-5, 1e-3, 1e-1):
        bad = info > 0
        if not bool(bad.any()):
            break
        retry, info_retry = torch.linalg.cholesky_ex(scaled + jitter * eye)
        factor = torch.where(bad[..., None, None], retry, factor)
        info = torch.where(bad, info_retry, info)
    return factor, s


def _cholesky_solve(factor: Tensor, s: Tensor, b: Tensor) -> Tensor:
    """m⁻¹ b from :func:`_scaled_cholesky`'s (L, s). Two triangular solves: on
    CUDA these batch through cuBLAS, several times faster than cholesky_solve
    (and cholesky_inverse) for the many tiny systems here."""
    y = torch.linalg.solve_triangular(factor, s.unsqueeze(-1) * b, upper=False)
    return s.unsqueeze(-1) * torch.linalg.solve_triangular(factor.transpose(-1, -2), y, upper=True)


class _ProductOfViews(torch.autograd.Function):
    """The fused mean and each view's precision trace, with a hand-written backward.

    Inputs per Gaussian and view: a [N, V, r, D] (Σ_v = aᵀa + diag(variance)),
    the ensemble mean [N, V, D] and the mean variance [N, V, D]. The backward
    never differentiates the factorisation: with λ = Σ⁻¹-weighted adjoint
    (one more solve with the forward's factor) the gradient of the fused mean
    w.r.t. each Σ_v is the rank-one -(Σ_v⁻¹λ)(Σ_v⁻¹(μ̄_v - μ))ᵀ, and both
    Σ_v⁻¹ products come from the latent solutions (no per-view solve). The
    traces' gradient -Σ_v⁻² goes through the (r x r) Woodbury capacitance.
    """

    @staticmethod
    def forward(ctx, a: Tensor, mean_n: Tensor, variance: Tensor) -> tuple[Tensor, Tensor]:  # noqa: ANN001
        n, n_views, r, d = a.shape
        size = n_views * r
        prec = variance.reciprocal()                                              # diagonal precisions p_v
        share = _shares(prec, dim=1)                                              # p_v / Σ_u p_u
        # Σ_{u≠v} share_u as a sum of positives (no 1 - share_v cancellation)
        others = sum(share.roll(k, dims=1) for k in range(1, n_views))
        # H = I + G, G_vu = -A_v diag(p_v share_u) A_uᵀ (u ≠ v), G_vv = A_v diag(p_v Σ_{u≠v} share_u) A_vᵀ
        cross = (a * (prec * share).sqrt().unsqueeze(-2)).flatten(1, 2)         # [N, S, D]
        own = (a * (prec * others).unsqueeze(-2)) @ a.transpose(-1, -2)          # [N, V, r, r]
        h = (cross @ cross.transpose(-1, -2)).neg_()                              # off-diagonal blocks
        h.view(n, n_views, r, n_views, r).diagonal(dim1=1, dim2=3).copy_(own.permute(0, 2, 3, 1))
        h.diagonal(dim1=-2, dim2=-1).add_(1)
        pooled = (share * mean_n).sum(dim=1)                                     # diagonal-precision mean
        rhs = a @ (prec * (pooled.unsqueeze(1) - mean_n)).unsqueeze(-1)          # [N, V, r, 1]
        factor, s = _scaled_cholesky(h)
        z = _cholesky_solve(factor, s, rhs.view(n, size, 1)).view(n, n_views, r, 1)
        az = (a * z).sum(dim=2)                                                  # A_vᵀ z_v [N, V, D]
        mean = pooled + (share * az).sum(dim=1)

        # tr(Σ_v⁻¹) by Woodbury: Σ_j p_j (1 - b_jᵀ C⁻¹ b_j), B = A diag(√p), C = I + BBᵀ;
        # b_jᵀ C⁻¹ b_j = |L⁻¹ s b_j|² with s C s = L Lᵀ: one triangular solve
        b = a * prec.sqrt().unsqueeze(-2)
        cap_factor, cap_s = _scaled_cholesky(torch.eye(r, dtype=a.dtype, device=a.device) + b @ b.transpose(-1, -2))
        half = torch.linalg.solve_triangular(cap_factor, cap_s.unsqueeze(-1) * b, upper=False)
        be = half.square().sum(dim=-2)                                           # in [0, 1]
        traces = (prec * (1 - be).clamp_min(0)).sum(dim=-1)
        ctx.save_for_backward(a, mean_n, prec, share, factor, s, az, mean, cap_factor, cap_s, half, be)
        ctx.set_materialize_grads(False)  # an unused output (e.g. traces in training) costs no backward
        return mean, traces

    @staticmethod
    def backward(ctx, grad_mean: Tensor | None, grad_traces: Tensor | None  # noqa: ANN001
                 ) -> tuple[Tensor, Tensor, Tensor]:
        a, mean_n, prec, share, factor, s, az, mean, cap_factor, cap_s, half, be = ctx.saved_tensors
        n, n_views, r, _ = a.shape
        grad_a, grad_mean_n, grad_variance = torch.zeros_like(a), torch.zeros_like(mean_n), torch.zeros_like(prec)
        if grad_mean is not None:
            # λ = Σ grad (Σ the fused covariance) through the same latent system as the forward
            rhs = a @ (share * grad_mean.unsqueeze(1)).unsqueeze(-1)
            w = _cholesky_solve(factor, s, rhs.view(n, -1, 1)).view(n, n_views, r, 1)
            aw = (a * w).sum(dim=2)
            lam = grad_mean / prec.sum(dim=1) + (share * aw).sum(dim=1)
            q_lam = prec * (lam.unsqueeze(1) - aw)                               # Σ_v⁻¹ λ
            q_res = prec * (mean_n + az - mean.unsqueeze(1))                     # Σ_v⁻¹ (μ̄_v - μ)
            grad_mean_n = q_lam
            grad_a = -((a @ q_lam.unsqueeze(-1)) * q_res.unsqueeze(-2) + (a @ q_res.unsqueeze(-1)) * q_lam.unsqueeze(-2))
            grad_variance = -q_lam * q_res
        if grad_traces is not None:
            # d tr(Σ_v⁻¹) = -tr(Σ_v⁻² dΣ_v); A Σ_v⁻² = (EP - (EPBᵀ)E)√P, diag Σ_v⁻² = p (p(1 - 2 b·e) + eᵀ(BPBᵀ)e)
            g = grad_traces.unsqueeze(-1)
            b = a * prec.sqrt().unsqueeze(-2)                                    # rebuilt, not kept for training
            e = cap_s.unsqueeze(-1) * torch.linalg.solve_triangular(cap_factor.transpose(-1, -2), half, upper=True)
            ep = e * prec.unsqueeze(-2)                                          # E = C⁻¹B
            a_q2 = (ep - (ep @ b.transpose(-1, -2)) @ e) * prec.sqrt().unsqueeze(-2)
            bpb = (b * prec.unsqueeze(-2)) @ b.transpose(-1, -2)
            q2_diag = prec * (prec * (1 - 2 * be) + (e * (bpb @ e)).sum(dim=-2))
            grad_a = grad_a - 2 * g.unsqueeze(-1) * a_q2
            grad_variance = grad_variance - g * q2_diag
        return grad_a, grad_mean_n, grad_variance


def _shares(traces: Tensor, dim: int = 0) -> Tensor:
    return traces / traces.sum(dim=dim, keepdim=True).clamp_min(torch.finfo(traces.dtype).tiny)


def _fused_kernel(mu: Tensor) -> type[torch.autograd.Function] | None:
    """The CUDA kernel for the whole of stage 2 (float32 CUDA inputs), when it builds."""
    if not (mu.is_cuda and mu.dtype == torch.float32):
        return None
    from .fusion_kernel import FusedPrecisionFusion, load_extension

    return FusedPrecisionFusion if load_extension() is not None else None


def precision_fusion(mu: Tensor, log_var: Tensor, kernel: bool = True) -> FusionResult:
    """Stage-2 fusion of V views' ensembles: exact product of full-covariance Gaussians.

    mu, log_var [V, N, T, D] (T >= 2); log_var is clamped to [-20, 20]. Works
    Gaussian-major ([N, V, ...]). Float32 CUDA inputs go through the fused CUDA
    kernel (``ua3dtalk.fusion_kernel``) unless ``kernel=False``; everything else
    through batched PyTorch, where every product is one batched matmul over N.
    """
    _check(mu, log_var, min_members=2)
    fused = _fused_kernel(mu) if kernel else None
    if fused is not None:
        mean, traces, aleatoric, epistemic = fused.apply(mu, log_var, *LOG_VAR_RANGE)
    else:
        r = mu.shape[2] - 1
        mean_v, variance, spread = _moments(mu, log_var.clamp(*LOG_VAR_RANGE))
        a = (_helmert_coordinates(mu) / math.sqrt(r)).transpose(0, 1).contiguous()  # [N, V, r, D]
        mean, traces = _ProductOfViews.apply(a, mean_v.transpose(0, 1), variance.transpose(0, 1))
        aleatoric, epistemic = variance.mean(-1), spread.mean(-1)
    weight = _shares(traces, dim=1).transpose(0, 1)
    return FusionResult(mean=mean, aleatoric=aleatoric, epistemic=epistemic, weight=weight)


def uniform_fusion(mu: Tensor, log_var: Tensor) -> FusionResult:
    """Baseline: every view's ensemble mean counts equally."""
    _check(mu, log_var)
    mean_v, variance, spread = _moments(mu, log_var.clamp(*LOG_VAR_RANGE))
    aleatoric = variance.mean(-1)
    weight = torch.full_like(aleatoric, 1.0 / mu.shape[0])
    return FusionResult(mean=mean_v.mean(dim=0), aleatoric=aleatoric, epistemic=spread.mean(-1), weight=weight)


def stage1_fusion(mu: Tensor, log_var: Tensor, generator: torch.Generator | None = None) -> FusionResult:
    """Stage 1: one random ensemble member per view, diagonal covariance (its own variance).

    Per latent dim the product of diagonal Gaussians is a precision-weighted mean,
    computed as a softmax of the negative log-variances over views.
    """
    _check(mu, log_var)
    log_var = log_var.clamp(*LOG_VAR_RANGE)
    n_views, n, t, d = mu.shape
    gen_device = generator.device if generator is not None else mu.device
    pick = torch.randint(t, (n_views,), generator=generator, device=gen_device).to(mu.device)
    index = pick.view(n_views, 1, 1, 1).expand(n_views, n, 1, d)
    mu_pick = mu.gather(2, index).squeeze(2)                                     # [V, N, D]
    lv_pick = log_var.gather(2, index).squeeze(2)
    mean = (torch.softmax(-lv_pick, dim=0) * mu_pick).sum(dim=0)
    _, variance, spread = _moments(mu, log_var)
    weight = _shares(torch.exp(-lv_pick).sum(dim=-1))
    return FusionResult(mean=mean, aleatoric=variance.mean(-1), epistemic=spread.mean(-1), weight=weight)


class UncertaintyBlock(nn.Module):
    """Ensemble of T two-layer heads, each predicting a latent mean and log-variance.

    All heads run as one batched product (first layer: one matmul with the heads'
    weights side by side; second layer: a per-head einsum), not a loop over T.
    The input may come in parts (e.g. per-Gaussian position features and a
    per-frame view feature): each part meets its own rows of the first layer and
    the results broadcast, so a part shared by many rows is multiplied once.
    """

    def __init__(self, in_dim: int, latent_dim: int, ensemble: int, hidden_dim: int) -> None:
        super().__init__()
        if min(in_dim, latent_dim, ensemble, hidden_dim) < 1:
            raise ValueError("UncertaintyBlock sizes must all be positive")
        self.latent_dim, self.ensemble, self.hidden_dim = latent_dim, ensemble, hidden_dim
        # independent (Kaiming-uniform-like) inits per head: their disagreement is the epistemic signal
        bound1, bound2 = 1 / math.sqrt(in_dim), 1 / math.sqrt(hidden_dim)
        self.w1 = nn.Parameter(torch.empty(in_dim, ensemble * hidden_dim).uniform_(-bound1, bound1))
        self.b1 = nn.Parameter(torch.empty(ensemble * hidden_dim).uniform_(-bound1, bound1))
        self.w2 = nn.Parameter(torch.empty(ensemble, hidden_dim, 2 * latent_dim).uniform_(-bound2, bound2))
        self.b2 = nn.Parameter(torch.empty(ensemble, 2 * latent_dim).uniform_(-bound2, bound2))
        self.act = nn.SiLU()

    def forward(self, *parts: Tensor) -> tuple[Tensor, Tensor]:
        """parts [..., d_i] with Σ d_i = in_dim (broadcastable leading dims) -> mu, log_var [..., T, D]."""
        sizes = [part.shape[-1] for part in parts]
        if not parts or sum(sizes) != self.w1.shape[0]:
            raise ValueError(f"input parts of sizes {sizes} do not add up to in_dim={self.w1.shape[0]}")
        pre = self.b1
        for part, weight in zip(parts, self.w1.split(sizes)):
            pre = pre + part @ weight
        hidden = self.act(pre).unflatten(-1, (self.ensemble, self.hidden_dim))
        out = torch.einsum("...th,tho->...to", hidden, self.w2) + self.b2
        mu, log_var = out.split(self.latent_dim, dim=-1)
        return mu, log_var
