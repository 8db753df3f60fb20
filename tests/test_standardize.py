import pytest
import torch

from ua3dtalk.standardize import RunningStandardizer


def drifting_features(n: int, dim: int = 6, seed: int = 0) -> torch.Tensor:
    """A large constant part plus a 2% frame-to-frame change, like the raw view features."""
    g = torch.Generator().manual_seed(seed)
    return 3.0 + torch.randn(dim, generator=g) + 0.02 * torch.randn(n, dim, generator=g)


def test_small_changes_around_a_constant_become_order_one():
    norm = RunningStandardizer(6, momentum=0.05).train()
    data = drifting_features(2000)
    for batch in data.split(5):
        norm(batch)
    norm.eval()
    out = norm(data)
    assert out.mean().abs() < 0.1
    assert 0.8 < float(out.square().mean().sqrt()) < 1.2     # raw: 0.02 spread around ~3
    torch.testing.assert_close(norm.mean, data.mean(0), atol=0.01, rtol=0)


def test_statistics_update_only_in_training_and_gradients_pass():
    norm = RunningStandardizer(4)
    x = torch.randn(8, 4, requires_grad=True)
    norm.eval()(x)
    assert int(norm.updates) == 0 and torch.equal(norm.mean, torch.zeros(4))
    out = norm.train()(x)
    assert int(norm.updates) == 1 and not torch.equal(norm.mean, torch.zeros(4))
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_a_constant_feature_is_not_blown_up_into_noise():
    norm = RunningStandardizer(3).train()
    constant = torch.tensor([[1.0, -2.0, 0.5]]).expand(10, 3)
    norm(constant)
    out = norm.eval()(constant + 1e-6 * torch.randn(10, 3))
    assert out.abs().max() < 0.01          # a 1e-6 wobble stays tiny


def test_statistics_are_saved_with_the_module_and_sizes_are_checked():
    norm = RunningStandardizer(5).train()
    norm(drifting_features(20, dim=5))
    copy = RunningStandardizer(5)
    copy.load_state_dict(norm.state_dict())
    x = drifting_features(7, dim=5, seed=1)
    torch.testing.assert_close(copy.eval()(x), norm.eval()(x))
    with pytest.raises(ValueError, match="size 5"):
        norm(torch.randn(2, 4))
