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
  if (backward) n += S + 3 * D + 2 * S + 2 * V * D + R * D + 2 * R * R;
  return n;
}

struct Scratch {
  int lda;
  float *a, *p, *m, *own, *cross, *total, *pooled, *h, *x, *s, *c, *cs, *y;
  float *z, *g, *lam, *mean, *alam, *ares, *qlam, *qres, *mm, *mq, *qq;

  __device__ Scratch(float* base, int V, int R, int D, bool backward) : lda(D + 1) {
    const int S = V * R;
    float* f = base;
    auto take = [&f](int count) { float* out = f; f += count; return out; };
    a = take(S * lda); p = take(V * D); m = take(V * D); own = take(V * D); cross = take(V * D);
    total = take(D); pooled = take(D); h = take(S * (S + 1)); x = take(S); s = take(S);
    c = take(R * (R + 1)); cs = take(R); y = take(R * kWarp);
    if (backward) {
      z = take(S); g = take(D); lam = take(D); mean = take(D); alam = take(S); ares = take(S);
      qlam = take(V * D); qres = take(V * D); mm = take(R * D); mq = take(R * R); qq = take(R * R);
    }
  }
};

// Loads one Gaussian's members, precisions and means; builds H (lower triangle):
// H_ij = δ + Σ_d a_i a_j p_v (Σ_{w≠v} p_w) / P inside a view (all positive terms),
// δ - Σ_d a_i a_j p_v p_u / P across views.
__device__ void load_and_assemble(const Scratch& w, const float* a, const float* mv, const float* var,
                                  size_t n, int V, int R, int D, int lane) {
  const int S = V * R;
  for (int i = 0; i < S; ++i)
    for (int d = lane; d < D; d += kWarp) w.a[i * w.lda + d] = a[(n * S + i) * D + d];
  for (int e = lane; e < V * D; e += kWarp) {
    w.p[e] = 1.f / var[n * V * D + e];
    w.m[e] = mv[n * V * D + e];
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

__global__ void forward_kernel(const float* __restrict__ a, const float* __restrict__ mv,
                               const float* __restrict__ var, float* __restrict__ mean,
                               float* __restrict__ traces, float* __restrict__ z_out,
                               int N, int V, int R, int D) {
  extern __shared__ float smem[];
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const size_t n = static_cast<size_t>(blockIdx.x) * kWarpsPerBlock + warp;
  if (n >= static_cast<size_t>(N)) return;
  const int S = V * R;
  const Scratch w(smem + warp * scratch_floats(V, R, D, false), V, R, D, false);
  load_and_assemble(w, a, mv, var, n, V, R, D, lane);
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
// Trace part (∂tr Σ_v⁻¹ = -Σ_v⁻² dΣ_v): with Q = A P and M = C⁻¹ Q = A Σ_v⁻¹,
// A Σ_v⁻² = M P - (M Qᵀ) M and diag Σ_v⁻² = p² - 2p Σ_k Q_k M_k + Σ_kl M_k (Q Qᵀ)_kl M_l.
__global__ void backward_kernel(const float* __restrict__ a, const float* __restrict__ mv,
                                const float* __restrict__ var, const float* __restrict__ mean,
                                const float* __restrict__ z, const float* __restrict__ grad_mean,
                                const float* __restrict__ grad_traces, float* __restrict__ grad_a,
                                float* __restrict__ grad_mv, float* __restrict__ grad_var,
                                int N, int V, int R, int D) {
  extern __shared__ float smem[];
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const size_t n = static_cast<size_t>(blockIdx.x) * kWarpsPerBlock + warp;
  if (n >= static_cast<size_t>(N)) return;
  const int S = V * R;
  const Scratch w(smem + warp * scratch_floats(V, R, D, true), V, R, D, true);
  load_and_assemble(w, a, mv, var, n, V, R, D, lane);
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
    for (int d = lane; d < D; d += kWarp) {
      const float p = w.p[v * D + d], ql = w.qlam[v * D + d], qr = w.qres[v * D + d];
      float gv = -ql * qr;
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
      grad_mv[n * V * D + v * D + d] = ql;
      grad_var[n * V * D + v * D + d] = gv;
      for (int k = 0; k < R; ++k) {
        const int i = v * R + k;
        float ga = -(w.alam[i] * qr + w.ares[i] * ql);
        if (grad_traces) {
          float mq_m = 0.f;
          for (int l = 0; l < R; ++l) mq_m += w.mq[k * R + l] * w.mm[l * D + d];
          ga -= 2.f * gt * (w.mm[k * D + d] * p - mq_m);
        }
        grad_a[n * S * D + i * D + d] = ga;
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

}  // namespace

std::vector<torch::Tensor> product_of_views_forward(torch::Tensor a, torch::Tensor mv, torch::Tensor var) {
  check(a, "a"); check(mv, "mean"); check(var, "variance");
  const c10::cuda::CUDAGuard guard(a.device());
  const int N = a.size(0), V = a.size(1), R = a.size(2), D = a.size(3);
  auto mean = torch::empty({N, D}, a.options());
  auto traces = torch::empty({N, V}, a.options());
  auto z = torch::empty({N, V * R}, a.options());
  if (N == 0) return {mean, traces, z};
  size_t bytes;
  launch_config(forward_kernel, V, R, D, false, &bytes);
  const int blocks = (N + kWarpsPerBlock - 1) / kWarpsPerBlock;
  forward_kernel<<<blocks, kWarpsPerBlock * kWarp, bytes, at::cuda::getCurrentCUDAStream()>>>(
      a.data_ptr<float>(), mv.data_ptr<float>(), var.data_ptr<float>(), mean.data_ptr<float>(),
      traces.data_ptr<float>(), z.data_ptr<float>(), N, V, R, D);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {mean, traces, z};
}

std::vector<torch::Tensor> product_of_views_backward(torch::Tensor a, torch::Tensor mv, torch::Tensor var,
                                                     torch::Tensor mean, torch::Tensor z,
                                                     torch::Tensor grad_mean,
                                                     c10::optional<torch::Tensor> grad_traces) {
  check(a, "a"); check(mv, "mean"); check(var, "variance"); check(mean, "fused mean"); check(z, "z");
  check(grad_mean, "grad_mean");
  if (grad_traces) check(*grad_traces, "grad_traces");
  const c10::cuda::CUDAGuard guard(a.device());
  const int N = a.size(0), V = a.size(1), R = a.size(2), D = a.size(3);
  auto grad_a = torch::empty_like(a);
  auto grad_mv = torch::empty_like(mv);
  auto grad_var = torch::empty_like(var);
  if (N == 0) return {grad_a, grad_mv, grad_var};
  size_t bytes;
  launch_config(backward_kernel, V, R, D, true, &bytes);
  const int blocks = (N + kWarpsPerBlock - 1) / kWarpsPerBlock;
  backward_kernel<<<blocks, kWarpsPerBlock * kWarp, bytes, at::cuda::getCurrentCUDAStream()>>>(
      a.data_ptr<float>(), mv.data_ptr<float>(), var.data_ptr<float>(), mean.data_ptr<float>(),
      z.data_ptr<float>(), grad_mean.data_ptr<float>(),
      grad_traces ? grad_traces->data_ptr<float>() : nullptr, grad_a.data_ptr<float>(),
      grad_mv.data_ptr<float>(), grad_var.data_ptr<float>(), N, V, R, D);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {grad_a, grad_mv, grad_var};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &product_of_views_forward, "fused mean, precision traces and latent solution");
  m.def("backward", &product_of_views_backward, "gradients w.r.t. members, view means and variances");
}
