"""Uncertainty blocks (ensembles of heads) and the fusion of their views.

Each view v gives, per Gaussian, T ensemble members with a mean and a
log-variance over a D-dim latent. Its distribution is

    Σ_v = Cov_t(μ_v) + diag(mean_t σ²_v)        (diagonal plus rank ≤ T-1)

and stage 2 fuses the views as a product of Gaussians,
Σ = (Σ_v Σ_v⁻¹)⁻¹, μ = Σ Σ_v Σ_v⁻¹ μ̄_v.

The official code forms each Σ_v and inverts five D x D matrices per Gaussian.
Here the same function is computed through a latent-variable view of the low-rank
part: write μ̄_v + A_vᵀ z_v + e_v with z_v ~ N(0, I_{T-1}), e_v ~ N(0, diag d_v),
A_v = Hᵀ μ_v / √(T-1) (H: an orthonormal basis orthogonal to the all-ones vector,
so A_vᵀ A_v is exactly the unbiased ensemble covariance). Minimising the joint
quadratic over z_v gives exactly (x - μ̄_v)ᵀ Σ_v⁻¹ (x - μ̄_v), so the fused mean is
the joint minimiser over (x, z). Eliminating x (its block is diagonal) leaves one
V(T-1) x V(T-1) system ``H z = b`` with ``H = I + (PSD)``; every coefficient of H
is a sum of positive terms (the diagonal-precision shares are formed by softmax
in log space), so nothing cancels, and its Cholesky factor is taken in the
Jacobi-scaled basis. Precision traces use Woodbury on each view (a (T-1)² system).
"""
from __future__ import annotations

import functools
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


def _check(mu: Tensor, log_var: Tensor, min_members: int = 1) -> Tensor:
    if mu.shape != log_var.shape or mu.dim() != 4:
        raise ValueError(f"mu and log_var must both be [V, N, T, D], got {tuple(mu.shape)} and {tuple(log_var.shape)}")
    if not (mu.is_floating_point() and log_var.dtype == mu.dtype):
        raise ValueError(f"mu and log_var must share a floating dtype, got {mu.dtype} and {log_var.dtype}")
    if mu.shape[2] < min_members:
        raise ValueError(f"this fusion needs an ensemble of at least {min_members} members, got T={mu.shape[2]}")
    return log_var.clamp(*LOG_VAR_RANGE)


def _stats(mu: Tensor, log_var: Tensor) -> tuple[Tensor, Tensor]:
    """Aleatoric and epistemic uncertainty per view and Gaussian ([V, N] each)."""
    aleatoric = log_var.exp().mean(dim=(2, 3))
    if mu.shape[2] > 1:
        # written out: Tensor.var over a middle dimension is very slow on the CPU
        centred = mu - mu.mean(dim=2, keepdim=True)
        epistemic = centred.square().sum(dim=2).mean(dim=-1) / (mu.shape[2] - 1)
    else:
        epistemic = torch.zeros_like(aleatoric)
    return aleatoric, epistemic


@functools.lru_cache(maxsize=32)
def _helmert(t: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """[T, T-1] orthonormal columns orthogonal to the all-ones vector (cached per device)."""
    basis = torch.zeros(t, t - 1, dtype=torch.float64)
    for k in range(1, t):
        basis[:k, k - 1] = 1.0 / math.sqrt(k * (k + 1))
        basis[k, k - 1] = -k / math.sqrt(k * (k + 1))
    return basis.to(dtype=dtype, device=device)


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


def _precision_traces(a: Tensor, prec: Tensor) -> Tensor:
    """tr(Σ_v⁻¹) by Woodbury: Σ_j p_j (1 - b_jᵀ (I + BᵀB)⁻¹ b_j), B = A diag(√p)."""
    b = a * prec.sqrt().unsqueeze(-2)                                   # [V, N, r, D]
    eye = torch.eye(a.shape[-2], dtype=a.dtype, device=a.device)
    factor, s = _scaled_cholesky(eye + b @ b.transpose(-1, -2))
    c = torch.linalg.solve_triangular(factor, s.unsqueeze(-1) * b, upper=False)
    keep = (1 - c.square().sum(dim=-2)).clamp_min(0)                    # [V, N, D] in [0, 1]
    return (prec * keep).sum(dim=-1)


def _shares(traces: Tensor) -> Tensor:
    return traces / traces.sum(dim=0, keepdim=True).clamp_min(torch.finfo(traces.dtype).tiny)


def precision_fusion(mu: Tensor, log_var: Tensor) -> FusionResult:
    """Stage-2 fusion of V views' ensembles: exact product of full-covariance Gaussians.

    mu, log_var [V, N, T, D] (T >= 2); log_var is clamped to [-20, 20].
    """
    log_var = _check(mu, log_var, min_members=2)
    n_views, n, t, d = mu.shape
    r = t - 1
    aleatoric, epistemic = _stats(mu, log_var)
    mean_v = mu.mean(dim=2)                                                       # [V, N, D]
    a = torch.einsum("tr,vntd->vnrd", _helmert(t, mu.dtype, mu.device), mu) / math.sqrt(r)          # [V, N, r, D]
    log_prec = math.log(t) - torch.logsumexp(log_var, dim=2)                      # [V, N, D]
    prec = log_prec.exp()
    share = torch.softmax(log_prec, dim=0)                                         # p_v / Σ_u p_u
    # Σ_{u≠v} share_u as a sum of positives (no 1 - share_v cancellation)
    eye_v = torch.eye(n_views, dtype=mu.dtype, device=mu.device)
    others = torch.einsum("vu,und->vnd", 1 - eye_v, share)

    # H = I + G, G_vu = -A_v diag(p_v share_u) A_uᵀ (u ≠ v), G_vv = A_v diag(p_v Σ_{u≠v} share_u) A_vᵀ
    cross = a * (prec * share).sqrt().unsqueeze(-2)                                # p_v/√S scaling
    g = -torch.einsum("vnad,unbd->nvaub", cross, cross)
    own = torch.einsum("vnad,vnd,vnbd->nvab", a, prec * others, a)
    off = (1 - eye_v)[None, :, None, :, None]
    g = g * off + torch.einsum("vu,nvab->nvaub", eye_v, own)
    size = n_views * r
    h = g.reshape(n, size, size) + torch.eye(size, dtype=mu.dtype, device=mu.device)

    pooled = (share * mean_v).sum(dim=0)                                          # diagonal-precision mean
    rhs = torch.einsum("vnrd,vnd->nvr", a, prec * (pooled - mean_v)).reshape(n, size, 1)
    factor, s = _scaled_cholesky(h)
    z = s.unsqueeze(-1) * torch.cholesky_solve(s.unsqueeze(-1) * rhs, factor)
    z = z.reshape(n, n_views, r)
    mean = pooled + torch.einsum("vnd,vnrd,nvr->nd", share, a, z)
    weight = _shares(_precision_traces(a, prec))
    return FusionResult(mean=mean, aleatoric=aleatoric, epistemic=epistemic, weight=weight)


def uniform_fusion(mu: Tensor, log_var: Tensor) -> FusionResult:
    """Baseline: every view's ensemble mean counts equally."""
    log_var = _check(mu, log_var)
    aleatoric, epistemic = _stats(mu, log_var)
    weight = torch.full_like(aleatoric, 1.0 / mu.shape[0])
    return FusionResult(mean=mu.mean(dim=(0, 2)), aleatoric=aleatoric, epistemic=epistemic, weight=weight)


def stage1_fusion(mu: Tensor, log_var: Tensor, generator: torch.Generator | None = None) -> FusionResult:
    """Stage 1: one random ensemble member per view, diagonal covariance (its own variance).

    Per latent dim the product of diagonal Gaussians is a precision-weighted mean,
    computed as a softmax of the negative log-variances over views.
    """
    log_var = _check(mu, log_var)
    n_views, n, t, d = mu.shape
    gen_device = generator.device if generator is not None else mu.device
    pick = torch.randint(t, (n_views,), generator=generator, device=gen_device).to(mu.device)
    index = pick.view(n_views, 1, 1, 1).expand(n_views, n, 1, d)
    mu_pick = mu.gather(2, index).squeeze(2)                                     # [V, N, D]
    lv_pick = log_var.gather(2, index).squeeze(2)
    mean = (torch.softmax(-lv_pick, dim=0) * mu_pick).sum(dim=0)
    aleatoric, epistemic = _stats(mu, log_var)
    weight = _shares(torch.exp(-lv_pick).sum(dim=-1))
    return FusionResult(mean=mean, aleatoric=aleatoric, epistemic=epistemic, weight=weight)


class UncertaintyBlock(nn.Module):
    """Ensemble of T two-layer heads, each predicting a latent mean and log-variance.

    All heads run as one batched product (first layer: one matmul with the heads'
    weights side by side; second layer: a per-head einsum), not a loop over T.
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

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x [..., in_dim] -> mu, log_var [..., T, D]."""
        hidden = self.act(x @ self.w1 + self.b1).unflatten(-1, (self.ensemble, self.hidden_dim))
        out = torch.einsum("...th,tho->...to", hidden, self.w2) + self.b2
        mu, log_var = out.split(self.latent_dim, dim=-1)
        return mu, log_var
