"""The product of views (stage-2 fusion) as Triton kernels: one lane per Gaussian.

Same function as :class:`ua3dtalk.uncertainty._ProductOfViews` (its docstring
has the algebra), fused: the batched-PyTorch version spends its time in dozens of
small batched matmuls, triangular solves and element-wise passes over [N, ...]
intermediates. Here one program takes a block of Gaussians and does everything
for them: D-long products as [BLOCK, D] tiles, the V(T-1)-square system and the
(T-1)-square Woodbury capacitances as per-lane scalar loops over a lane-major
scratch buffer (each matrix entry of all lanes is one coalesced row).

The backward kernel rebuilds and refactors the system instead of keeping the
factor, so training keeps only the [N, V(T-1)] latent solution per call.
Float32 only. Compiled, they take CUDA tensors; loaded with
``TRITON_INTERPRET=1`` they run on the CPU (the tests do).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

BLOCK = 32                 # Gaussians per program, one lane each
NUM_WARPS = 1              # so one warp holds a block
SCRATCH_BYTES = 1 << 30    # launches are split so their scratch stays under this
PIVOT_FLOOR = tl.constexpr(1e-6)  # Cholesky pivots are floored here (unit-diagonal, Jacobi-scaled basis)
JITTER = tl.constexpr(1.2e-6)     # added to that unit diagonal, as the PyTorch path does (10 float32 eps)


# ---------------------------------------------------------------- scalar (per-lane) linear algebra
@triton.jit
def _entry(work, n, index):
    """Pointer to scratch entry ``index`` of every lane (lane-major: entry rows of n lanes;
    a launch's scratch stays under 2**31 entries, so int32 indices do)."""
    return work + index * n


@triton.jit
def _factor(work, n, base, scales, size: tl.constexpr):
    """In-place Cholesky (lower triangle) of each lane's SPD size x size matrix at
    entries base + i*size + j, in its Jacobi-scaled basis: s m s = L Lᵀ, s to
    entries scales + i."""
    for i in range(size):
        tl.store(_entry(work, n, scales + i), 1.0 / tl.sqrt(tl.load(_entry(work, n, base + i * size + i))))
    for i in range(size):
        s_i = tl.load(_entry(work, n, scales + i))
        for j in range(i + 1):
            ptr = _entry(work, n, base + i * size + j)
            scaled = tl.load(ptr) * s_i * tl.load(_entry(work, n, scales + j))
            tl.store(ptr, tl.where(i == j, scaled + JITTER, scaled))
    for k in range(size):
        diag = _entry(work, n, base + k * size + k)
        pivot = tl.sqrt(tl.maximum(tl.load(diag), PIVOT_FLOOR))
        tl.store(diag, pivot)
        for i in range(k + 1, size):
            ptr = _entry(work, n, base + i * size + k)
            tl.store(ptr, tl.load(ptr) / pivot)
        for j in range(k + 1, size):
            l_jk = tl.load(_entry(work, n, base + j * size + k))
            for i in range(j, size):
                ptr = _entry(work, n, base + i * size + j)
                tl.store(ptr, tl.load(ptr) - tl.load(_entry(work, n, base + i * size + k)) * l_jk)


@triton.jit
def _solve(work, n, base, scales, x, size: tl.constexpr):
    """x <- m⁻¹ x in place (entries x + i), from :func:`_factor`'s L and scales."""
    for i in range(size):
        acc = tl.load(_entry(work, n, x + i)) * tl.load(_entry(work, n, scales + i))
        for j in range(i):
            acc -= tl.load(_entry(work, n, base + i * size + j)) * tl.load(_entry(work, n, x + j))
        tl.store(_entry(work, n, x + i), acc / tl.load(_entry(work, n, base + i * size + i)))
    for step in range(size):
        i = size - 1 - step
        acc = tl.load(_entry(work, n, x + i))
        for j in range(i + 1, size):
            acc -= tl.load(_entry(work, n, base + j * size + i)) * tl.load(_entry(work, n, x + j))
        tl.store(_entry(work, n, x + i), acc / tl.load(_entry(work, n, base + i * size + i)))
    for i in range(size):
        ptr = _entry(work, n, x + i)
        tl.store(ptr, tl.load(ptr) * tl.load(_entry(work, n, scales + i)))


@triton.jit
def _invert_factor(work, n, base, out, size: tl.constexpr):
    """L⁻¹ (lower triangular) of :func:`_factor`'s L into entries out + i*size + j."""
    for j in range(size):
        tl.store(_entry(work, n, out + j * size + j), 1.0 / tl.load(_entry(work, n, base + j * size + j)))
        for i in range(j + 1, size):
            acc = tl.zeros_like(tl.load(_entry(work, n, base + i * size + i)))
            for k in range(j, i):
                acc += tl.load(_entry(work, n, base + i * size + k)) * tl.load(_entry(work, n, out + k * size + j))
            tl.store(_entry(work, n, out + i * size + j), -acc / tl.load(_entry(work, n, base + i * size + i)))


# ---------------------------------------------------------------- tiles ([BLOCK, D] per lane row)
@triton.jit
def _tile(ptr, rows, offs_d, mask, other: tl.constexpr):
    return tl.load(ptr + rows + offs_d[None, :], mask=mask, other=other)


@triton.jit
def _total_precision(var_ptr, vd_rows, offs_d, mask, V: tl.constexpr, D: tl.constexpr):
    total = tl.zeros(mask.shape, tl.float32)
    for v in tl.static_range(V):
        total += 1.0 / _tile(var_ptr, vd_rows + v * D, offs_d, mask, 1.0)
    return total


@triton.jit
def _assemble(a_ptr, var_ptr, work, n, sd_rows, vd_rows, offs_d, mask,
              V: tl.constexpr, R: tl.constexpr, D: tl.constexpr):
    """The latent system H (entries 0..S²) and each view's capacitance C_v = I + A_v P_v A_vᵀ
    (entries S² + 2S + v R² ..), lower triangles.

    H_(vk)(ul) = δ - Σ_d a_vk a_ul p_v p_u / P  (u ≠ v),  δ + Σ_d a_vk a_vl p_v (Σ_{w≠v} p_w) / P  (u = v):
    every term positive on the diagonal blocks, as in the PyTorch path.
    """
    S: tl.constexpr = V * R
    cap: tl.constexpr = S * S + 2 * S
    total = _total_precision(var_ptr, vd_rows, offs_d, mask, V, D)
    for v in tl.static_range(V):
        p_v = 1.0 / _tile(var_ptr, vd_rows + v * D, offs_d, mask, 1.0)
        for u in tl.static_range(v + 1):
            if u == v:
                others = tl.zeros(mask.shape, tl.float32)
                for w in tl.static_range(V):
                    if w != v:
                        others += 1.0 / _tile(var_ptr, vd_rows + w * D, offs_d, mask, 1.0)
                weight = p_v * others / total
            else:
                weight = -p_v / _tile(var_ptr, vd_rows + u * D, offs_d, mask, 1.0) / total
            for k in range(R):
                a_vk = _tile(a_ptr, sd_rows + (v * R + k) * D, offs_d, mask, 0.0)
                weighted = a_vk * weight
                stop = k + 1 if u == v else R
                for l in range(stop):
                    a_ul = _tile(a_ptr, sd_rows + (u * R + l) * D, offs_d, mask, 0.0)
                    h = tl.sum(weighted * a_ul, axis=1)
                    if u == v:
                        h += tl.where(l == k, 1.0, 0.0)
                        c = tl.sum(a_vk * p_v * a_ul, axis=1) + tl.where(l == k, 1.0, 0.0)
                        tl.store(_entry(work, n, cap + v * R * R + k * R + l), c)
                    tl.store(_entry(work, n, (v * R + k) * S + u * R + l), h)


@triton.jit
def _latent_mean(a_ptr, work, n, sd_rows, offs_d, mask, x, v: tl.constexpr, R: tl.constexpr, D: tl.constexpr):
    """A_vᵀ x_v as a tile: Σ_k a_vk x_(vk), x at scratch entries x + v R + k."""
    acc = tl.zeros(mask.shape, tl.float32)
    for k in range(R):
        coef = tl.load(_entry(work, n, x + v * R + k))
        acc += _tile(a_ptr, sd_rows + (v * R + k) * D, offs_d, mask, 0.0) * coef[:, None]
    return acc


# ---------------------------------------------------------------- scratch layout (entries per lane)
@triton.jit
def _layout(V: tl.constexpr, R: tl.constexpr, D: tl.constexpr):
    """Entry offsets: H, its scales, the right-hand side / solution, the capacitances,
    their scales, their inverse factors; then the backward's own: the forward's z,
    C_v⁻¹, M_v Q_vᵀ, Q_v Q_vᵀ (each V R²) and one view's M = C⁻¹ Q (R rows of DP)."""
    S: tl.constexpr = V * R
    scales: tl.constexpr = S * S
    x: tl.constexpr = scales + S
    cap: tl.constexpr = x + S
    cap_scales: tl.constexpr = cap + V * R * R
    cap_inv: tl.constexpr = cap_scales + V * R
    z: tl.constexpr = cap_inv + V * R * R
    c_inv: tl.constexpr = z + S
    mq: tl.constexpr = c_inv + V * R * R
    qq: tl.constexpr = mq + V * R * R
    m: tl.constexpr = qq + V * R * R
    return scales, x, cap, cap_scales, cap_inv, z, c_inv, mq, qq, m


def _entries(n_views: int, r: int, d: int, backward: bool) -> int:
    s = n_views * r
    forward = s * s + 2 * s + 2 * n_views * r * r + n_views * r
    return forward + (s + 3 * n_views * r * r + r * triton.next_power_of_2(d) if backward else 0)


@triton.jit
def _lanes(n, BLOCK: tl.constexpr, D: tl.constexpr, DP: tl.constexpr):
    offs_n = (tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    offs_d = tl.arange(0, DP)
    mask = (offs_n < n)[:, None] & (offs_d < D)[None, :]
    return offs_n, offs_d, mask


@triton.jit
def _forward_kernel(a_ptr, m_ptr, var_ptr, mean_ptr, traces_ptr, z_ptr, work_ptr, n, n_pad,
                    V: tl.constexpr, R: tl.constexpr, D: tl.constexpr, DP: tl.constexpr, BLOCK: tl.constexpr):
    S: tl.constexpr = V * R
    scales, x, cap, cap_scales, cap_inv, _z, _ci, _mq, _qq, _m = _layout(V, R, D)
    offs_n, offs_d, mask = _lanes(n, BLOCK, D, DP)
    lane = offs_n < n
    work = work_ptr + offs_n
    sd_rows = offs_n[:, None] * (S * D)
    vd_rows = offs_n[:, None] * (V * D)

    _assemble(a_ptr, var_ptr, work, n_pad, sd_rows, vd_rows, offs_d, mask, V, R, D)
    # right-hand side A_v P_v (pooled - m_v), pooled = the diagonal-precision mean
    total = _total_precision(var_ptr, vd_rows, offs_d, mask, V, D)
    pooled = tl.zeros(mask.shape, tl.float32)
    for v in tl.static_range(V):
        pooled += _tile(m_ptr, vd_rows + v * D, offs_d, mask, 0.0) / _tile(var_ptr, vd_rows + v * D, offs_d, mask, 1.0)
    pooled = pooled / total
    for v in tl.static_range(V):
        p_v = 1.0 / _tile(var_ptr, vd_rows + v * D, offs_d, mask, 1.0)
        resid = p_v * (pooled - _tile(m_ptr, vd_rows + v * D, offs_d, mask, 0.0))
        for k in range(R):
            rhs = tl.sum(_tile(a_ptr, sd_rows + (v * R + k) * D, offs_d, mask, 0.0) * resid, axis=1)
            tl.store(_entry(work, n_pad, x + v * R + k), rhs)
    tl.debug_barrier()
    _factor(work, n_pad, 0, scales, S)
    _solve(work, n_pad, 0, scales, x, S)
    for v in tl.static_range(V):
        _factor(work, n_pad, cap + v * R * R, cap_scales + v * R, R)
        _invert_factor(work, n_pad, cap + v * R * R, cap_inv + v * R * R, R)
    for i in range(S):
        tl.store(z_ptr + offs_n * S + i, tl.load(_entry(work, n_pad, x + i)), mask=lane)
    tl.debug_barrier()

    mean = pooled
    for v in tl.static_range(V):
        p_v = 1.0 / _tile(var_ptr, vd_rows + v * D, offs_d, mask, 1.0)
        mean += p_v / total * _latent_mean(a_ptr, work, n_pad, sd_rows, offs_d, mask, x, v, R, D)
        # tr(Σ_v⁻¹) = Σ_d p (1 - p |L⁻¹ s a_d|²)  (Woodbury; s C_v s = L Lᵀ)
        explained = tl.zeros(mask.shape, tl.float32)
        for k in range(R):
            y = tl.zeros(mask.shape, tl.float32)
            for j in range(k + 1):
                coef = (tl.load(_entry(work, n_pad, cap_inv + v * R * R + k * R + j))
                        * tl.load(_entry(work, n_pad, cap_scales + v * R + j)))
                y += _tile(a_ptr, sd_rows + (v * R + j) * D, offs_d, mask, 0.0) * coef[:, None]
            explained += y * y
        trace = tl.sum(tl.where(mask, p_v * tl.maximum(1.0 - p_v * explained, 0.0), 0.0), axis=1)
        tl.store(traces_ptr + offs_n * V + v, trace, mask=lane)
    tl.store(mean_ptr + offs_n[:, None] * D + offs_d[None, :], mean, mask=mask)


@triton.jit
def _backward_kernel(a_ptr, m_ptr, var_ptr, mean_ptr, z_ptr, g_ptr, gt_ptr, ga_ptr, gm_ptr, gv_ptr,
                     work_ptr, n, n_pad, V: tl.constexpr, R: tl.constexpr, D: tl.constexpr,
                     DP: tl.constexpr, BLOCK: tl.constexpr, HAS_GT: tl.constexpr):
    """Mean part: λ = Σ g through the same latent system, then with q_λ = Σ_v⁻¹λ and
    q_r = Σ_v⁻¹(μ̄_v - μ): ∂μ̄_v = q_λ, ∂A_v = -(A q_λ) q_rᵀ - (A q_r) q_λᵀ, ∂σ²_v = -q_λ q_r.
    Trace part (∂tr Σ_v⁻¹ = -Σ_v⁻² dΣ_v): with Q = A P and M = C⁻¹ Q = A Σ_v⁻¹,
    A Σ_v⁻² = M P - (M Qᵀ) M and diag Σ_v⁻² = p² - 2p Σ_k Q_k M_k + Σ_kl M_k (Q Qᵀ)_kl M_l."""
    S: tl.constexpr = V * R
    scales, x, cap, cap_scales, cap_inv, zs, c_inv, mq, qq, m_base = _layout(V, R, D)
    offs_n, offs_d, mask = _lanes(n, BLOCK, D, DP)
    lane = offs_n < n
    work = work_ptr + offs_n
    sd_rows = offs_n[:, None] * (S * D)
    vd_rows = offs_n[:, None] * (V * D)
    d_rows = offs_n[:, None] * D

    _assemble(a_ptr, var_ptr, work, n_pad, sd_rows, vd_rows, offs_d, mask, V, R, D)
    total = _total_precision(var_ptr, vd_rows, offs_d, mask, V, D)
    g = _tile(g_ptr, d_rows, offs_d, mask, 0.0)
    for v in tl.static_range(V):
        weighted = g / _tile(var_ptr, vd_rows + v * D, offs_d, mask, 1.0) / total
        for k in range(R):
            rhs = tl.sum(_tile(a_ptr, sd_rows + (v * R + k) * D, offs_d, mask, 0.0) * weighted, axis=1)
            tl.store(_entry(work, n_pad, x + v * R + k), rhs)
    for i in range(S):
        tl.store(_entry(work, n_pad, zs + i), tl.load(z_ptr + offs_n * S + i, mask=lane, other=0.0))
    tl.debug_barrier()
    _factor(work, n_pad, 0, scales, S)
    _solve(work, n_pad, 0, scales, x, S)
    if HAS_GT:
        for v in tl.static_range(V):
            _factor(work, n_pad, cap + v * R * R, cap_scales + v * R, R)
            _invert_factor(work, n_pad, cap + v * R * R, cap_inv + v * R * R, R)
            for k in range(R):  # C⁻¹ = s L⁻ᵀ L⁻¹ s
                for l in range(R):
                    acc = tl.zeros_like(tl.load(_entry(work, n_pad, cap_scales + v * R + k)))
                    for j in range(tl.maximum(k, l), R):
                        acc += (tl.load(_entry(work, n_pad, cap_inv + v * R * R + j * R + k))
                                * tl.load(_entry(work, n_pad, cap_inv + v * R * R + j * R + l)))
                    acc *= (tl.load(_entry(work, n_pad, cap_scales + v * R + k))
                            * tl.load(_entry(work, n_pad, cap_scales + v * R + l)))
                    tl.store(_entry(work, n_pad, c_inv + v * R * R + k * R + l), acc)
    tl.debug_barrier()

    lam = g / total
    for v in tl.static_range(V):
        p_v = 1.0 / _tile(var_ptr, vd_rows + v * D, offs_d, mask, 1.0)
        lam += p_v / total * _latent_mean(a_ptr, work, n_pad, sd_rows, offs_d, mask, x, v, R, D)
    mean = _tile(mean_ptr, d_rows, offs_d, mask, 0.0)
    m_tiles = work[:, None] + (m_base + offs_d[None, :]).to(tl.int64) * n_pad
    for v in tl.static_range(V):
        p_v = 1.0 / _tile(var_ptr, vd_rows + v * D, offs_d, mask, 1.0)
        q_lam = p_v * (lam - _latent_mean(a_ptr, work, n_pad, sd_rows, offs_d, mask, x, v, R, D))
        q_res = p_v * (_tile(m_ptr, vd_rows + v * D, offs_d, mask, 0.0)
                       + _latent_mean(a_ptr, work, n_pad, sd_rows, offs_d, mask, zs, v, R, D) - mean)
        grad_var = -q_lam * q_res
        if HAS_GT:
            gt = tl.load(gt_ptr + offs_n * V + v, mask=lane, other=0.0)[:, None]
            for k in range(R):
                m_k = tl.zeros(mask.shape, tl.float32)
                for l in range(R):
                    coef = tl.load(_entry(work, n_pad, c_inv + v * R * R + k * R + l))
                    m_k += _tile(a_ptr, sd_rows + (v * R + l) * D, offs_d, mask, 0.0) * coef[:, None]
                m_k = m_k * p_v
                tl.store(m_tiles + k * DP * n_pad, m_k)
            for k in range(R):
                m_k = tl.load(m_tiles + k * DP * n_pad)
                q_k = _tile(a_ptr, sd_rows + (v * R + k) * D, offs_d, mask, 0.0) * p_v
                grad_var += gt * 2.0 * p_v * q_k * m_k
                for l in range(R):
                    q_l = _tile(a_ptr, sd_rows + (v * R + l) * D, offs_d, mask, 0.0) * p_v
                    tl.store(_entry(work, n_pad, mq + v * R * R + k * R + l), tl.sum(m_k * q_l, axis=1))
                    tl.store(_entry(work, n_pad, qq + v * R * R + k * R + l), tl.sum(q_k * q_l, axis=1))
            tl.debug_barrier()
            grad_var -= gt * p_v * p_v
            for k in range(R):
                qq_m = tl.zeros(mask.shape, tl.float32)
                for l in range(R):
                    coef = tl.load(_entry(work, n_pad, qq + v * R * R + k * R + l))
                    qq_m += tl.load(m_tiles + l * DP * n_pad) * coef[:, None]
                grad_var -= gt * tl.load(m_tiles + k * DP * n_pad) * qq_m
        for k in range(R):
            a_vk = _tile(a_ptr, sd_rows + (v * R + k) * D, offs_d, mask, 0.0)
            a_lam = tl.sum(a_vk * q_lam, axis=1)
            a_res = tl.sum(a_vk * q_res, axis=1)
            grad_a = -(a_lam[:, None] * q_res + a_res[:, None] * q_lam)
            if HAS_GT:
                mq_m = tl.zeros(mask.shape, tl.float32)
                for l in range(R):
                    coef = tl.load(_entry(work, n_pad, mq + v * R * R + k * R + l))
                    mq_m += tl.load(m_tiles + l * DP * n_pad) * coef[:, None]
                grad_a -= 2.0 * gt * (tl.load(m_tiles + k * DP * n_pad) * p_v - mq_m)
            tl.store(ga_ptr + sd_rows + (v * R + k) * D + offs_d[None, :], grad_a, mask=mask)
        tl.store(gm_ptr + vd_rows + v * D + offs_d[None, :], q_lam, mask=mask)
        tl.store(gv_ptr + vd_rows + v * D + offs_d[None, :], grad_var, mask=mask)


# ---------------------------------------------------------------- launchers and the autograd Function
def _chunks(n: int, entries: int) -> list[tuple[int, int]]:
    """Gaussian ranges whose scratch fits SCRATCH_BYTES, in whole blocks."""
    step = max(BLOCK, SCRATCH_BYTES // (4 * entries) // BLOCK * BLOCK)
    return [(start, min(n, start + step)) for start in range(0, n, step)]


def forward(a: Tensor, mean_n: Tensor, variance: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """a [N, V, r, D], mean_n and variance [N, V, D] -> fused mean [N, D], traces [N, V], z [N, V r]."""
    a, mean_n, variance = a.contiguous(), mean_n.contiguous(), variance.contiguous()
    n, n_views, r, d = a.shape
    mean = a.new_empty(n, d)
    traces = a.new_empty(n, n_views)
    z = a.new_empty(n, n_views * r)
    entries = _entries(n_views, r, d, backward=False)
    for start, stop in _chunks(n, entries):
        count = stop - start
        n_pad = triton.cdiv(count, BLOCK) * BLOCK
        work = a.new_empty(entries, n_pad)
        _forward_kernel[(n_pad // BLOCK,)](
            a[start:stop], mean_n[start:stop], variance[start:stop], mean[start:stop], traces[start:stop],
            z[start:stop], work, count, n_pad, V=n_views, R=r, D=d, DP=triton.next_power_of_2(d), BLOCK=BLOCK, num_warps=NUM_WARPS)
    return mean, traces, z


def backward(a: Tensor, mean_n: Tensor, variance: Tensor, mean: Tensor, z: Tensor,
             grad_mean: Tensor | None, grad_traces: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients w.r.t. (a, mean_n, variance) given those of the fused mean and the traces."""
    n, n_views, r, d = a.shape
    grad_mean = torch.zeros_like(mean) if grad_mean is None else grad_mean.contiguous()
    has_traces = grad_traces is not None
    grad_traces = grad_traces.contiguous() if has_traces else grad_mean  # unread when has_traces is False
    grad_a, grad_mean_n, grad_variance = torch.empty_like(a), torch.empty_like(mean_n), torch.empty_like(variance)
    entries = _entries(n_views, r, d, backward=True)
    for start, stop in _chunks(n, entries):
        count = stop - start
        n_pad = triton.cdiv(count, BLOCK) * BLOCK
        work = a.new_empty(entries, n_pad)
        _backward_kernel[(n_pad // BLOCK,)](
            a[start:stop], mean_n[start:stop], variance[start:stop], mean[start:stop], z[start:stop],
            grad_mean[start:stop], grad_traces[start:stop], grad_a[start:stop], grad_mean_n[start:stop],
            grad_variance[start:stop], work, count, n_pad, V=n_views, R=r, D=d,
            DP=triton.next_power_of_2(d), BLOCK=BLOCK, HAS_GT=has_traces, num_warps=NUM_WARPS)
    return grad_a, grad_mean_n, grad_variance


class ProductOfViewsKernel(torch.autograd.Function):
    """:class:`ua3dtalk.uncertainty._ProductOfViews` through the kernels above."""

    @staticmethod
    def forward(ctx, a: Tensor, mean_n: Tensor, variance: Tensor) -> tuple[Tensor, Tensor]:  # noqa: ANN001
        a, mean_n, variance = a.contiguous(), mean_n.contiguous(), variance.contiguous()
        mean, traces, z = forward(a, mean_n, variance)
        ctx.save_for_backward(a, mean_n, variance, mean, z)
        ctx.set_materialize_grads(False)
        return mean, traces

    @staticmethod
    def backward(ctx, grad_mean: Tensor | None, grad_traces: Tensor | None  # noqa: ANN001
                 ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        if grad_mean is None and grad_traces is None:
            return None, None, None
        return backward(*ctx.saved_tensors, grad_mean, grad_traces)
