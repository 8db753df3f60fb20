"""The product of views (stage-2 fusion) as a CUDA kernel: one warp per Gaussian.

Same function as :class:`ua3dtalk.uncertainty._ProductOfViews`, fused into one
kernel for the forward pass and one for the backward (``csrc/product_of_views.cu``).
The batched-PyTorch version spends its time in dozens of small batched matmuls,
triangular solves and element-wise passes over [N, ...] intermediates in global
memory; here each Gaussian's members, its V(T-1)-square system and its factor
live in one warp's shared memory, and the lanes share each Cholesky step.

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


class ProductOfViewsKernel(torch.autograd.Function):
    """:class:`ua3dtalk.uncertainty._ProductOfViews` through the CUDA kernel (float32 CUDA inputs)."""

    @staticmethod
    def forward(ctx, a: Tensor, mean_n: Tensor, variance: Tensor) -> tuple[Tensor, Tensor]:  # noqa: ANN001
        a, mean_n, variance = a.contiguous(), mean_n.contiguous(), variance.contiguous()
        mean, traces, z = load_extension().forward(a, mean_n, variance)
        ctx.save_for_backward(a, mean_n, variance, mean, z)
        ctx.set_materialize_grads(False)  # an unused output (e.g. traces in training) costs no backward
        return mean, traces

    @staticmethod
    def backward(ctx, grad_mean: Tensor | None, grad_traces: Tensor | None  # noqa: ANN001
                 ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        if grad_mean is None and grad_traces is None:
            return None, None, None
        a, mean_n, variance, mean, z = ctx.saved_tensors
        grad_mean = torch.zeros_like(mean) if grad_mean is None else grad_mean.contiguous()
        grad_traces = None if grad_traces is None else grad_traces.contiguous()
        grad_a, grad_mean_n, grad_variance = load_extension().backward(
            a, mean_n, variance, mean, z, grad_mean, grad_traces)
        return grad_a, grad_mean_n, grad_variance
