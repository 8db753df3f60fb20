"""The fused CUDA stage-2 fusion: where it is used and what happens when it cannot be built.

Its numbers are checked on a GPU by bench/check_fusion_kernel.py (CI has no GPU);
here: CPU inputs never reach it, and a failed build falls back to the PyTorch
path with one clear warning instead of an error."""
import warnings

import pytest
import torch
import torch.utils.cpp_extension

from ua3dtalk import fusion_kernel
from ua3dtalk.uncertainty import _fused_kernel, precision_fusion


@pytest.fixture
def fresh_build_cache():
    fusion_kernel.load_extension.cache_clear()
    yield
    fusion_kernel.load_extension.cache_clear()


def test_a_failed_build_warns_once_and_reports_none(fresh_build_cache, monkeypatch):
    calls = []

    def no_toolkit(*args, **kwargs):
        calls.append(kwargs.get("name"))
        raise OSError("CUDA_HOME environment variable is not set")

    monkeypatch.setattr(torch.utils.cpp_extension, "load", no_toolkit)
    with pytest.warns(RuntimeWarning, match="could not be built .*CUDA_HOME.*batched-PyTorch path"):
        assert fusion_kernel.load_extension() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # the second ask neither rebuilds nor warns again
        assert fusion_kernel.load_extension() is None
    assert calls == ["ua3dtalk_product_of_views"]


def test_cpu_and_float64_inputs_never_ask_for_the_kernel(fresh_build_cache, monkeypatch):
    monkeypatch.setattr(torch.utils.cpp_extension, "load", lambda *a, **k: pytest.fail("kernel requested"))
    mu, log_var = torch.randn(3, 5, 4, 6), torch.randn(3, 5, 4, 6)
    assert _fused_kernel(mu) is None and _fused_kernel(mu.double()) is None
    out = precision_fusion(mu, log_var)
    assert out.mean.shape == (5, 6) and torch.isfinite(out.mean).all()


def test_the_kernel_source_ships_with_the_package():
    assert fusion_kernel.SOURCE.is_file()
    text = fusion_kernel.SOURCE.read_text()
    assert "PYBIND11_MODULE" in text and "fusion_forward" in text and "fusion_backward" in text
