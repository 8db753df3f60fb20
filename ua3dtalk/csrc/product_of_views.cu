// The product of views (stage-2 fusion): one warp per Gaussian, everything in shared memory.
//
// Same function as ua3dtalk.uncertainty._ProductOfViews (its docstring has the algebra).
// Per Gaussian: the V(T-1)-square latent system H is built from the members in shared
// memory, factorised (Jacobi-scaled Cholesky, the warp's lanes sharing each step's trailing
// update) and solved; the Woodbury capacitances C_v = I + A_v P_v A_vᵀ give the precision
// traces. The backward kernel rebuilds and refactors H instead of keeping the factor, so
// training keeps only the [N, V(T-1)] latent solution.
#include <torch/extension.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

namespace {

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 2;
constexpr float kPivotFloor = 1e-6f;  // pivots floored here (unit-diagonal, Jacobi-scaled basis)
constexpr float kJitter = 1.2e-6f;    // added to that unit diagonal, as the PyTorch path does

__device__ __forceinline__ float warp_sum(float x) {
  for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

// Walks a packed lower triangle (row i, column j <= i) in steps of one warp: lane l starts at
// entry l and every step moves 32 entries on, with no integer division.
struct TriangleWalk {
  int i = 0, j;
  __device__ explicit TriangleWalk(int lane) : j(lane) { advance(0); }
  __device__ void advance(int step) {
    j += step;
    while (j > i) { j -= i + 1; ++i; }
  }
};

// In place: the lower triangle of m (size x size, row stride ld) becomes L with s m s = L Lᵀ,
// s = diag(m)^-1/2 (written to s).
__device__ void factor(float* m, int ld, int size, float* s, int lane) {
  for (int i = lane; i < size; i += kWarp) s[i] = rsqrtf(m[i * ld + i]);
  __syncwarp();
  for (TriangleWalk t(lane); t.i < size; t.advance(kWarp))
    m[t.i * ld + t.j] = m[t.i * ld + t.j] * s[t.i] * s[t.j] + (t.i == t.j ? kJitter : 0.f);
  __syncwarp();
  for (int k = 0; k < size; ++k) {
    const float pivot = sqrtf(fmaxf(m[k * ld + k], kPivotFloor));
    __syncwarp();
    for (int i = k + lane; i < size; i += kWarp) m[i * ld + k] = (i == k) ? pivot : m[i * ld + k] / pivot;
    __syncwarp();
    float* trailing = m + (k + 1) * (ld + 1);   // the (size-k-1)-square block below and right of the pivot
    const float* column = m + (k + 1) * ld + k;
    for (TriangleWalk t(lane); t.i < size - k - 1; t.advance(kWarp))
      trailing[t.i * ld + t.j] -= column[t.i * ld] * column[t.j * ld];
    __syncwarp();
  }
}

// x <- m⁻¹ x in place, from factor()'s L and s.
__device__ void solve(const float* L, int ld, int size, const float* s, float* x, int lane) {
  for (int i = 0; i < size; ++i) {
    float acc = 0.f;
    for (int j = lane; j < i; j += kWarp) acc += L[i * ld + j] * x[j];
    acc = warp_sum(acc);
    if (lane == 0) x[i] = (x[i] * s[i] - acc) / L[i * ld + i];
    __syncwarp();
  }
  for (int i = size - 1; i >= 0; --i) {
    float acc = 0.f;
    for (int j = i + 1 + lane; j < size; j += kWarp) acc += L[j * ld + i] * x[j];
    acc = warp_sum(acc);
    if (lane == 0) x[i] = (x[i] - acc) / L[i * ld + i];
    __syncwarp();
  }
  for (int i = lane; i < size; i += kWarp) x[i] *= s[i];
  __syncwarp();
}

// One warp's shared memory, in floats. Member rows are padded to D + 1 floats, so lanes
// reading the same d of different rows hit different banks.
__host__ __device__ inline int scratch_floats(int V, int R, int D, bool backward) {
  const int S = V * R;
  int n = S * (D + 1) + 5 * V * D + 2 * D + S * (S + 1) + 2 * S + R * (R + 1) + R + R * kWarp;
  if (backward) n += S + 2 * D + 2 * S + 2 * V * D + R * D + 2 * R * R;
  return n;
}

struct Scratch {
  int lda;
  float *a, *p, *m, *own, *cross, *total, *pooled, *h, *x, *s, *c, *cs, *y;
  float *z, *g, *mean, *alam, *ares, *qlam, *qres, *mm, *mq, *qq;

  __device__ Scratch(float* base, int V, int R, int D, bool backward) : lda(D + 1) {
    const int S = V * R;
    float* f = base;
    auto take = [&f](int count) { float* out = f; f += count; return out; };
    a = take(S * lda); p = take(V * D); m = take(V * D); own = take(V * D); cross = take(V * D);
    total = take(D); pooled = take(D); h = take(S * (S + 1)); x = take(S); s = take(S);
    c = take(R * (R + 1)); cs = take(R); y = take(R * kWarp);
    if (backward) {
      z = take(S); g = take(D); mean = take(D); alam = take(S); ares = take(S);
      qlam = take(V * D); qres = take(V * D); mm = take(R * D); mq = take(R * R); qq = take(R * R);
    }
  }
};

// Helmert scale of member row k: a_k = c_k (Σ_{t<=k} μ_t - (k+1) μ_{k+1}), c_k = 1/√((k+1)(k+2)(T-1)).
__device__ __forceinline__ float helmert_scale(int k, int R) {
  return rsqrtf(static_cast<float>((k + 1) * (k + 2)) * R);
}

struct Inputs {
  const float* mu;       // [V, N, T, D]
  const float* log_var;  // [V, N, T, D]
  int N, V, R, D;
  float lo, hi;          // log-variance clamp
  __device__ size_t at(int v, size_t n, int t, int d) const {
    return ((static_cast<size_t>(v) * N + n) * (R + 1) + t) * D + d;
  }
  __device__ float variance_term(int v, size_t n, int t, int d) const {
    return expf(fminf(fmaxf(log_var[at(v, n, t, d)], lo), hi));
  }
};

// One Gaussian's view moments and members, then H (lower triangle):
// H_ij = δ + Σ_d a_i a_j p_v (Σ_{w≠v} p_w) / P inside a view (all positive terms),
// δ - Σ_d a_i a_j p_v p_u / P across views. Writes the aleatoric and epistemic
// summaries ([V, N], mean over D) where asked.
__device__ void load_and_assemble(const Scratch& w, const Inputs& in, size_t n, int lane,
                                  float* aleatoric, float* epistemic) {
  const int V = in.V, R = in.R, D = in.D, S = V * R, T = R + 1;
  for (int v = 0; v < V; ++v) {
    float variance_sum = 0.f, spread_sum = 0.f;
    for (int d = lane; d < D; d += kWarp) {
      float mean = 0.f, variance = 0.f;
      for (int t = 0; t < T; ++t) {
        mean += in.mu[in.at(v, n, t, d)];
        variance += in.variance_term(v, n, t, d);
      }
      mean /= T;
      variance /= T;
      float spread = 0.f, prefix = 0.f;
      for (int t = 0; t < T; ++t) {
        const float x = in.mu[in.at(v, n, t, d)];
        spread += (x - mean) * (x - mean);
        if (t > 0) w.a[(v * R + t - 1) * w.lda + d] = helmert_scale(t - 1, R) * (prefix - t * x);
        prefix += x;
      }
      w.m[v * D + d] = mean;
      w.p[v * D + d] = 1.f / variance;
      variance_sum += variance;
      spread_sum += spread / R;
    }
    variance_sum = warp_sum(variance_sum);
    spread_sum = warp_sum(spread_sum);
    if (aleatoric && lane == 0) {
      aleatoric[v * static_cast<size_t>(in.N) + n] = variance_sum / D;
      epistemic[v * static_cast<size_t>(in.N) + n] = spread_sum / D;
    }
  }
  __syncwarp();
  for (int d = lane; d < D; d += kWarp) {
    float total = 0.f, pooled = 0.f;
    for (int v = 0; v < V; ++v) {
      total += w.p[v * D + d];
      pooled += w.p[v * D + d] * w.m[v * D + d];
    }
    w.total[d] = total;
    w.pooled[d] = pooled / total;
    const float root = sqrtf(total);
    for (int v = 0; v < V; ++v) {
      float others = 0.f;
      for (int u = 0; u < V; ++u) others += (u == v) ? 0.f : w.p[u * D + d];
      w.own[v * D + d] = w.p[v * D + d] * others / total;
      w.cross[v * D + d] = w.p[v * D + d] / root;
    }
  }
  __syncwarp();
  const int ld = S + 1;
  for (TriangleWalk t(lane); t.i < S; t.advance(kWarp)) {
    const int i = t.i, j = t.j, vi = i / R, vj = j / R;
    const float* ai = w.a + i * w.lda;
    const float* aj = w.a + j * w.lda;
    float acc = 0.f;
    if (vi == vj) {
      const float* wt = w.own + vi * D;
      for (int d = 0; d < D; ++d) acc += ai[d] * aj[d] * wt[d];
    } else {
      const float* wi = w.cross + vi * D;
      const float* wj = w.cross + vj * D;
      for (int d = 0; d < D; ++d) acc -= ai[d] * wi[d] * aj[d] * wj[d];
    }
    w.h[i * ld + j] = acc + (i == j ? 1.f : 0.f);
  }
  __syncwarp();
}

// Factorises view v's capacitance C_v = I + A_v P_v A_vᵀ into w.c / w.cs.
__device__ void capacitance(const Scratch& w, int v, int R, int D, int lane) {
  const int ld = R + 1;
  for (TriangleWalk t(lane); t.i < R; t.advance(kWarp)) {
    const int k = t.i, l = t.j;
    const float* ak = w.a + (v * R + k) * w.lda;
    const float* al = w.a + (v * R + l) * w.lda;
    const float* p = w.p + v * D;
    float acc = 0.f;
    for (int d = 0; d < D; ++d) acc += ak[d] * al[d] * p[d];
    w.c[k * ld + l] = acc + (k == l ? 1.f : 0.f);
  }
  __syncwarp();
  factor(w.c, ld, R, w.cs, lane);
}

// Per lane, for latent column d of view v: y = L⁻¹ s (scale · a_v[:, d]) into w.y[k * 32 + lane];
// returns |y|².
__device__ float capacitance_forward(const Scratch& w, int v, int R, int D, int d, float scale, int lane) {
  const int ld = R + 1;
  float norm = 0.f;
  for (int k = 0; k < R; ++k) {
    float acc = w.cs[k] * scale * w.a[(v * R + k) * w.lda + d];
    for (int j = 0; j < k; ++j) acc -= w.c[k * ld + j] * w.y[j * kWarp + lane];
    acc /= w.c[k * ld + k];
    w.y[k * kWarp + lane] = acc;
    norm += acc * acc;
  }
  return norm;
}

__global__ void forward_kernel(Inputs in, float* __restrict__ mean, float* __restrict__ traces,
                               float* __restrict__ aleatoric, float* __restrict__ epistemic,
                               float* __restrict__ z_out) {
  extern __shared__ float smem[];
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const size_t n = static_cast<size_t>(blockIdx.x) * kWarpsPerBlock + warp;
  if (n >= static_cast<size_t>(in.N)) return;
  const int V = in.V, R = in.R, D = in.D, S = V * R;
  const Scratch w(smem + warp * scratch_floats(V, R, D, false), V, R, D, false);
  load_and_assemble(w, in, n, lane, aleatoric, epistemic);
  // right-hand side A_v P_v (pooled - m_v)
  for (int i = lane; i < S; i += kWarp) {
    const int v = i / R;
    float acc = 0.f;
    for (int d = 0; d < D; ++d) acc += w.a[i * w.lda + d] * w.p[v * D + d] * (w.pooled[d] - w.m[v * D + d]);
    w.x[i] = acc;
  }
  __syncwarp();
  factor(w.h, S + 1, S, w.s, lane);
  solve(w.h, S + 1, S, w.s, w.x, lane);
  for (int i = lane; i < S; i += kWarp) z_out[n * S + i] = w.x[i];
  for (int d = lane; d < D; d += kWarp) {
    float acc = 0.f;
    for (int v = 0; v < V; ++v) {
      float az = 0.f;
      for (int k = 0; k < R; ++k) az += w.a[(v * R + k) * w.lda + d] * w.x[v * R + k];
      acc += w.p[v * D + d] * az;
    }
    mean[n * D + d] = w.pooled[d] + acc / w.total[d];
  }
  // tr(Σ_v⁻¹) = Σ_d p (1 - |L⁻¹ s b_d|²), b = A_v diag(√p), s C_v s = L Lᵀ
  for (int v = 0; v < V; ++v) {
    capacitance(w, v, R, D, lane);
    float trace = 0.f;
    for (int d = lane; d < D; d += kWarp) {
      const float p = w.p[v * D + d];
      trace += p * fmaxf(1.f - capacitance_forward(w, v, R, D, d, sqrtf(p), lane), 0.f);
    }
    trace = warp_sum(trace);
    if (lane == 0) traces[n * V + v] = trace;
    __syncwarp();
  }
}

// Mean part: λ = Σ g through the same latent system; with q_λ = Σ_v⁻¹λ, q_r = Σ_v⁻¹(μ̄_v - μ):
// ∂μ̄_v = q_λ, ∂A_v = -(A q_λ) q_rᵀ - (A q_r) q_λᵀ, ∂σ²_v = -q_λ q_r.
// These go back to μ and log σ² through the ensemble mean, the Helmert rows (by a suffix
// sum) and mean_t exp(log σ²); the aleatoric and epistemic summaries add their own terms.
// Trace part (∂tr Σ_v⁻¹ = -Σ_v⁻² dΣ_v): with Q = A P and M = C⁻¹ Q = A Σ_v⁻¹,
// A Σ_v⁻² = M P - (M Qᵀ) M and diag Σ_v⁻² = p² - 2p Σ_k Q_k M_k + Σ_kl M_k (Q Qᵀ)_kl M_l.
__global__ void backward_kernel(Inputs in, const float* __restrict__ mean, const float* __restrict__ z,
                                const float* __restrict__ grad_mean, const float* __restrict__ grad_traces,
                                const float* __restrict__ grad_aleatoric,
                                const float* __restrict__ grad_epistemic,
                                float* __restrict__ grad_mu, float* __restrict__ grad_log_var) {
  extern __shared__ float smem[];
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const size_t n = static_cast<size_t>(blockIdx.x) * kWarpsPerBlock + warp;
  const int N = in.N;
  if (n >= static_cast<size_t>(N)) return;
  const int V = in.V, R = in.R, D = in.D, S = V * R, T = R + 1;
  const Scratch w(smem + warp * scratch_floats(V, R, D, true), V, R, D, true);
  load_and_assemble(w, in, n, lane, nullptr, nullptr);
  for (int d = lane; d < D; d += kWarp) {
    w.g[d] = grad_mean[n * D + d];
    w.mean[d] = mean[n * D + d];
  }
  for (int i = lane; i < S; i += kWarp) w.z[i] = z[n * S + i];
  __syncwarp();
  for (int i = lane; i < S; i += kWarp) {
    const int v = i / R;
    float acc = 0.f;
    for (int d = 0; d < D; ++d) acc += w.a[i * w.lda + d] * w.p[v * D + d] * w.g[d] / w.total[d];
    w.x[i] = acc;
  }
  __syncwarp();
  factor(w.h, S + 1, S, w.s, lane);
  solve(w.h, S + 1, S, w.s, w.x, lane);
  for (int d = lane; d < D; d += kWarp) {
    float acc = w.g[d];
    for (int v = 0; v < V; ++v) {
      float aw = 0.f, az = 0.f;
      for (int k = 0; k < R; ++k) {
        aw += w.a[(v * R + k) * w.lda + d] * w.x[v * R + k];
        az += w.a[(v * R + k) * w.lda + d] * w.z[v * R + k];
      }
      acc += w.p[v * D + d] * aw;
      w.qlam[v * D + d] = aw;   // A_vᵀ w for now; q_λ once λ is known
      w.qres[v * D + d] = w.p[v * D + d] * (w.m[v * D + d] + az - w.mean[d]);
    }
    const float lam = acc / w.total[d];
    for (int v = 0; v < V; ++v) w.qlam[v * D + d] = w.p[v * D + d] * (lam - w.qlam[v * D + d]);
  }
  __syncwarp();
  for (int i = lane; i < S; i += kWarp) {
    const int v = i / R;
    float al = 0.f, ar = 0.f;
    for (int d = 0; d < D; ++d) {
      al += w.a[i * w.lda + d] * w.qlam[v * D + d];
      ar += w.a[i * w.lda + d] * w.qres[v * D + d];
    }
    w.alam[i] = al;
    w.ares[i] = ar;
  }
  __syncwarp();
  for (int v = 0; v < V; ++v) {
    const float gt = grad_traces ? grad_traces[n * V + v] : 0.f;
    if (grad_traces) {
      capacitance(w, v, R, D, lane);
      const int ld = R + 1;
      for (int d = lane; d < D; d += kWarp) {  // M[:, d] = C⁻¹ Q[:, d]: forward, then back substitution
        const float p = w.p[v * D + d];
        capacitance_forward(w, v, R, D, d, p, lane);
        for (int k = R - 1; k >= 0; --k) {
          float acc = w.y[k * kWarp + lane];
          for (int j = k + 1; j < R; ++j) acc -= w.c[j * ld + k] * w.y[j * kWarp + lane];
          w.y[k * kWarp + lane] = acc / w.c[k * ld + k];
        }
        for (int k = 0; k < R; ++k) w.mm[k * D + d] = w.cs[k] * w.y[k * kWarp + lane];
      }
      __syncwarp();
      for (int e = lane; e < R * R; e += kWarp) {
        const int k = e / R, l = e % R;
        float mq = 0.f, qq = 0.f;
        for (int d = 0; d < D; ++d) {
          const float p = w.p[v * D + d];
          const float ql = w.a[(v * R + l) * w.lda + d] * p;
          mq += w.mm[k * D + d] * ql;
          qq += w.a[(v * R + k) * w.lda + d] * p * ql;
        }
        w.mq[e] = mq;
        w.qq[e] = qq;
      }
      __syncwarp();
    }
    const float g_al = grad_aleatoric ? grad_aleatoric[v * static_cast<size_t>(N) + n] / D : 0.f;
    const float g_ep = grad_epistemic ? grad_epistemic[v * static_cast<size_t>(N) + n] * 2.f / (D * R) : 0.f;
    for (int d = lane; d < D; d += kWarp) {
      const float p = w.p[v * D + d], ql = w.qlam[v * D + d], qr = w.qres[v * D + d];
      float gv = g_al - ql * qr;   // ∂/∂σ²_v
      if (grad_traces) {
        float diag = p * p;
        for (int k = 0; k < R; ++k) {
          float qq_m = 0.f;
          for (int l = 0; l < R; ++l) qq_m += w.qq[k * R + l] * w.mm[l * D + d];
          const float mk = w.mm[k * D + d];
          diag += mk * (qq_m - 2.f * p * w.a[(v * R + k) * w.lda + d] * p);
        }
        gv -= gt * diag;
      }
      const float centre = w.m[v * D + d];
      const float shared = ql / T;   // through the ensemble mean
      // ∂a_k/∂μ_t = c_k (t <= k), -(k+1) c_k (t = k+1): walk k down, keeping Σ_{k' > k} c_k' ∂a_k'
      float suffix = 0.f;
      for (int k = R - 1; k >= 0; --k) {
        const int i = v * R + k;
        float ga = -(w.alam[i] * qr + w.ares[i] * ql);
        if (grad_traces) {
          float mq_m = 0.f;
          for (int l = 0; l < R; ++l) mq_m += w.mq[k * R + l] * w.mm[l * D + d];
          ga -= 2.f * gt * (w.mm[k * D + d] * p - mq_m);
        }
        const float c_ga = helmert_scale(k, R) * ga;
        const size_t at = in.at(v, n, k + 1, d);
        grad_mu[at] = shared + g_ep * (in.mu[at] - centre) + suffix - (k + 1) * c_ga;
        suffix += c_ga;
      }
      const size_t first = in.at(v, n, 0, d);
      grad_mu[first] = shared + g_ep * (in.mu[first] - centre) + suffix;
      for (int t = 0; t < T; ++t) {
        const size_t at = in.at(v, n, t, d);
        const float lv = in.log_var[at];
        grad_log_var[at] = (lv >= in.lo && lv <= in.hi) ? gv * expf(lv) / T : 0.f;
      }
    }
    __syncwarp();
  }
}

void check(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda() && t.scalar_type() == torch::kFloat32 && t.is_contiguous(),
              name, " must be a contiguous float32 CUDA tensor");
}

template <typename Kernel>
void launch_config(Kernel kernel, int V, int R, int D, bool backward, size_t* bytes) {
  *bytes = static_cast<size_t>(scratch_floats(V, R, D, backward)) * kWarpsPerBlock * sizeof(float);
  int device;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  int limit;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  TORCH_CHECK(*bytes <= static_cast<size_t>(limit), "product_of_views: ", *bytes,
              " bytes of shared memory per block needed, the device allows ", limit);
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(*bytes)));
}

Inputs inputs(const torch::Tensor& mu, const torch::Tensor& log_var, double lo, double hi) {
  check(mu, "mu");
  check(log_var, "log_var");
  TORCH_CHECK(mu.dim() == 4 && mu.sizes() == log_var.sizes() && mu.size(2) >= 2,
              "mu and log_var must both be [V, N, T, D] with T >= 2");
  return Inputs{mu.data_ptr<float>(), log_var.data_ptr<float>(), static_cast<int>(mu.size(1)),
                static_cast<int>(mu.size(0)), static_cast<int>(mu.size(2) - 1), static_cast<int>(mu.size(3)),
                static_cast<float>(lo), static_cast<float>(hi)};
}

int blocks_for(int N) { return (N + kWarpsPerBlock - 1) / kWarpsPerBlock; }

const float* optional_ptr(const c10::optional<torch::Tensor>& t, const char* name) {
  if (!t) return nullptr;
  check(*t, name);
  return t->data_ptr<float>();
}

}  // namespace

// mu, log_var [V, N, T, D] -> fused mean [N, D], traces [N, V], aleatoric and epistemic [V, N], z [N, V(T-1)]
std::vector<torch::Tensor> fusion_forward(torch::Tensor mu, torch::Tensor log_var, double lo, double hi) {
  const Inputs in = inputs(mu, log_var, lo, hi);
  const c10::cuda::CUDAGuard guard(mu.device());
  auto mean = torch::empty({in.N, in.D}, mu.options());
  auto traces = torch::empty({in.N, in.V}, mu.options());
  auto aleatoric = torch::empty({in.V, in.N}, mu.options());
  auto epistemic = torch::empty({in.V, in.N}, mu.options());
  auto z = torch::empty({in.N, in.V * in.R}, mu.options());
  if (in.N > 0) {
    size_t bytes;
    launch_config(forward_kernel, in.V, in.R, in.D, false, &bytes);
    forward_kernel<<<blocks_for(in.N), kWarpsPerBlock * kWarp, bytes, at::cuda::getCurrentCUDAStream()>>>(
        in, mean.data_ptr<float>(), traces.data_ptr<float>(), aleatoric.data_ptr<float>(),
        epistemic.data_ptr<float>(), z.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {mean, traces, aleatoric, epistemic, z};
}

// Gradients w.r.t. mu and log_var given those of the forward's four outputs (any but the mean may be absent).
std::vector<torch::Tensor> fusion_backward(torch::Tensor mu, torch::Tensor log_var, double lo, double hi,
                                           torch::Tensor mean, torch::Tensor z, torch::Tensor grad_mean,
                                           c10::optional<torch::Tensor> grad_traces,
                                           c10::optional<torch::Tensor> grad_aleatoric,
                                           c10::optional<torch::Tensor> grad_epistemic) {
  const Inputs in = inputs(mu, log_var, lo, hi);
  check(mean, "fused mean");
  check(z, "z");
  check(grad_mean, "grad_mean");
  const c10::cuda::CUDAGuard guard(mu.device());
  auto grad_mu = torch::empty_like(mu);
  auto grad_log_var = torch::empty_like(log_var);
  if (in.N > 0) {
    size_t bytes;
    launch_config(backward_kernel, in.V, in.R, in.D, true, &bytes);
    backward_kernel<<<blocks_for(in.N), kWarpsPerBlock * kWarp, bytes, at::cuda::getCurrentCUDAStream()>>>(
        in, mean.data_ptr<float>(), z.data_ptr<float>(), grad_mean.data_ptr<float>(),
        optional_ptr(grad_traces, "grad_traces"), optional_ptr(grad_aleatoric, "grad_aleatoric"),
        optional_ptr(grad_epistemic, "grad_epistemic"), grad_mu.data_ptr<float>(), grad_log_var.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {grad_mu, grad_log_var};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &fusion_forward, "fused mean, precision traces, view summaries and latent solution");
  m.def("backward", &fusion_backward, "gradients w.r.t. the members' means and log-variances");
}
