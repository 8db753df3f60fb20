"""The product of views (stage-2 fusion) as a CUDA kernel: one warp per Gaussian.

Same function as :func:`ua3dtalk.uncertainty.precision_fusion`'s PyTorch path,
fused into one kernel for the forward pass and one for the backward
(``csrc/product_of_views.cu``). The batched-PyTorch version spends its time in
dozens of small batched matmuls, triangular solves and element-wise passes over
[N, ...] intermediates in global memory; here each Gaussian's members, its
V(T-1)-square system and its factor live in one warp's shared memory, and the
lanes share each Cholesky step. The backward kernel rebuilds and refactors the
system instead of keeping the factor, so training keeps only the [N, V(T-1)]
latent solution per call.

The kernel is compiled on first use (as gsplat is) and cached by PyTorch in
``TORCH_EXTENSIONS_DIR``. Where it cannot be built (no CUDA toolkit), the
PyTorch path is used and a warning says why.
"""
from __future__ import annotations

import functools
import warnings
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

SOURCE = Path(__file__).with_name("csrc") / "product_of_views.cu"


@functools.cache
def load_extension() -> ModuleType | None:
    """The compiled kernel module, or None (with one warning) when it cannot be built."""
    try:
        from torch.utils.cpp_extension import load

        return load(name="ua3dtalk_product_of_views", sources=[str(SOURCE)], extra_cuda_cflags=["-O3"])
    except Exception as err:  # noqa: BLE001 - any build failure means: use the PyTorch path
        warnings.warn(f"the fused CUDA fusion kernel could not be built ({type(err).__name__}: {err}); "
                      "stage-2 fusion uses the slower batched-PyTorch path", RuntimeWarning, stacklevel=2)
        return None


class FusedPrecisionFusion(torch.autograd.Function):
    """Stage-2 fusion straight from the ensembles, for contiguous float32 CUDA inputs.

    mu, log_var [V, N, T, D] -> fused mean [N, D], precision traces [N, V], and the
    aleatoric and epistemic summaries [V, N] (see :class:`ua3dtalk.uncertainty.FusionResult`).
    The ensemble moments and the Helmert coordinates are computed inside the kernel
    too, so nothing [V, N, T, D]-sized is written between the inputs and the outputs.
    """

    @staticmethod
    def forward(ctx, mu: Tensor, log_var: Tensor, lo: float, hi: float  # noqa: ANN001
                ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        mu, log_var = mu.contiguous(), log_var.contiguous()
        mean, traces, aleatoric, epistemic, z = load_extension().forward(mu, log_var, lo, hi)
        ctx.save_for_backward(mu, log_var, mean, z)
        ctx.bounds = (lo, hi)
        ctx.set_materialize_grads(False)  # an unused output (e.g. traces in training) costs no backward
        return mean, traces, aleatoric, epistemic

    @staticmethod
    def backward(ctx, *grads: Tensor | None) -> tuple[Tensor | None, ...]:  # noqa: ANN001
        if all(g is None for g in grads):
            return None, None, None, None
        mu, log_var, mean, z = ctx.saved_tensors
        grad_mean, grad_traces, grad_aleatoric, grad_epistemic = (
            None if g is None else g.contiguous() for g in grads)
        if grad_mean is None:
            grad_mean = torch.zeros_like(mean)
        grad_mu, grad_log_var = load_extension().backward(
            mu, log_var, *ctx.bounds, mean, z, grad_mean, grad_traces, grad_aleatoric, grad_epistemic)
        return grad_mu, grad_log_var, None, None
