"""Prior Extraction: windows, shapes, the lip-sync expert's training signal, crops, gradients."""
from __future__ import annotations

import pytest
import torch
from helpers import render_gaussians

from ua3dtalk.config import preset
from ua3dtalk.prior import (AudioWindowNet, LipSyncExpert, PriorExtractor, StyleEncoder, frame_windows,
                            mouth_crops, window_indices)

CFG = preset("demo")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_frame_windows_are_centred_and_edge_padded() -> None:
    t = 6
    features = torch.arange(t, dtype=torch.float32)[:, None] * torch.tensor([1.0, -1.0])  # row i = (i, -i)
    got = frame_windows(features, torch.tensor([0, 3, 5]), 5)
    expect = torch.tensor([[0, 0, 0, 1, 2], [1, 2, 3, 4, 5], [3, 4, 5, 5, 5]], dtype=torch.float32)
    assert got.shape == (3, 5, 2)
    assert torch.equal(got[..., 0], expect) and torch.equal(got[..., 1], -expect)
    # even size: one more frame before the centre than after it
    assert window_indices(torch.tensor([2]), 4, t).tolist() == [[0, 1, 2, 3]]
    # a clip shorter than the window repeats its edge frames
    assert frame_windows(features[:2], torch.tensor([1]), 6)[0, :, 0].tolist() == [0, 0, 0, 1, 1, 1]


@pytest.mark.parametrize("frames, features", [
    (torch.tensor([6]), torch.zeros(6, 2)),
    (torch.tensor([-1]), torch.zeros(6, 2)),
    (torch.tensor([0.0]), torch.zeros(6, 2)),
    (torch.tensor([0]), torch.zeros(6)),
])
def test_frame_windows_reject_bad_input(frames: torch.Tensor, features: torch.Tensor) -> None:
    with pytest.raises(ValueError):
        frame_windows(features, frames, 3)


@pytest.mark.parametrize("b, t", [(1, 3), (4, 3), (4, 60)])
def test_prior_shapes_on_short_and_long_clips(b: int, t: int) -> None:
    prior = PriorExtractor(CFG)
    frames = torch.randint(0, t, (b,))
    out = prior(torch.randn(t, CFG.audio_dim), frames)
    assert out["audio"].shape == (b, CFG.audio_feat_dim)
    assert out["content"].shape == (b, CFG.content_dim)
    assert out["style"].shape == (b, CFG.style_dim)
    assert torch.allclose(out["content"].norm(dim=-1), torch.ones(b), atol=1e-5)
    assert all(torch.isfinite(v).all() for v in out.values())


def test_batch_frames_are_independent() -> None:
    """A frame's prior must not depend on which other frames share its batch."""
    prior = PriorExtractor(CFG)
    features = torch.randn(40, CFG.audio_dim)
    together = prior(features, torch.tensor([3, 20, 39]))
    alone = prior(features, torch.tensor([20]))
    for key in together:
        assert torch.allclose(together[key][1], alone[key][0], atol=1e-5)


def test_audio_attention_weights_are_a_distribution() -> None:
    net = AudioWindowNet(CFG)
    codes = net.codes(torch.randn(30, CFG.audio_dim), torch.tensor([0, 15, 29]))
    assert codes.shape == (3, CFG.audio_attention_window, CFG.audio_feat_dim)
    w = net.attention(codes)
    assert torch.allclose(w.sum(dim=1), torch.ones(3)) and (w >= 0).all()


def test_style_depends_on_subject() -> None:
    cfg = preset("demo", n_subjects=3)
    style = StyleEncoder(cfg)
    features, frames = torch.randn(20, cfg.audio_dim), torch.tensor([5, 6])
    a, b = style(features, frames, 0), style(features, frames, torch.tensor([2, 2]))
    assert a.shape == (2, cfg.style_dim) and not torch.allclose(a, b)
    with pytest.raises(ValueError, match="subject"):
        style(features, frames, 3)


def test_errors_name_the_expected_sizes() -> None:
    prior = PriorExtractor(CFG)
    with pytest.raises(ValueError, match="audio_dim"):
        prior(torch.randn(10, CFG.audio_dim + 1), torch.tensor([0]))
    with pytest.raises(ValueError, match="content_window"):
        prior.lip_expert.mouth_embedding(torch.rand(2, CFG.content_window + 1, 3, 48, 96))


def _toy_sync_batch(n: int = 8, seg: int = 7) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n "visemes", each held for seg frames: a fixed audio vector and a fixed (half-size) mouth pattern."""
    audio_codes = torch.randn(n, CFG.audio_dim)
    patterns = torch.rand(n, 3, 24, 48)
    features = audio_codes.repeat_interleave(seg, dim=0) + 0.1 * torch.randn(n * seg, CFG.audio_dim)
    frames = torch.arange(n) * seg + seg // 2
    crops = patterns[:, None].expand(n, CFG.content_window, 3, 24, 48)
    crops = (crops + 0.02 * torch.randn_like(crops)).clamp(0, 1)
    return features, frames, crops


def test_contrastive_loss_learns_a_separable_toy_problem() -> None:
    expert = LipSyncExpert(CFG)
    features, frames, crops = _toy_sync_batch()
    opt = torch.optim.Adam(expert.parameters(), lr=2e-3)
    losses = []
    for _ in range(20):
        loss = expert.loss(expert.audio_embedding(features, frames), expert.mouth_embedding(crops))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0], losses
    with torch.no_grad():
        a, m = expert.audio_embedding(features, frames), expert.mouth_embedding(crops)
        sims = a @ m.t()
    # each audio window is closest to its own mouth and confidence is the diagonal cosine
    assert torch.equal(sims.argmax(dim=1), torch.arange(len(frames)))
    assert torch.allclose(expert.confidence(a, m), sims.diagonal(), atol=1e-5)


def test_freezing_the_lip_expert_stops_its_gradients_only() -> None:
    prior = PriorExtractor(CFG)
    prior.freeze_lip_expert()
    out = prior(torch.randn(12, CFG.audio_dim), torch.tensor([1, 5]))
    sum(v.square().sum() for v in out.values()).backward()
    assert all(p.grad is None for p in prior.lip_expert.parameters())
    assert all(p.grad is not None for p in prior.audio_net.parameters())
    prior.freeze_lip_expert(False)
    assert all(p.requires_grad for p in prior.lip_expert.parameters())


def test_mouth_crops_copy_pixels_and_resample_linearly() -> None:
    images = torch.rand(2, 3, 100, 200, requires_grad=True)
    centers = torch.tensor([[100.0, 50.0], [60.0, 30.0]])
    crops = mouth_crops(images, centers)
    assert crops.shape == (2, 3, 48, 96)
    assert torch.allclose(crops[0], images[0, :, 26:74, 52:148], atol=1e-5)
    assert torch.allclose(crops[1], images[1, :, 6:54, 12:108], atol=1e-5)
    crops.sum().backward()
    assert torch.allclose(images.grad[0, :, 26:74, 52:148], torch.ones(3, 48, 96), atol=1e-4)
    assert images.grad[0, :, :20].eq(0).all()
    # a ramp image (value = pixel-centre x) is sampled exactly at the crop's x positions
    ramp = (torch.arange(200) + 0.5).float().expand(1, 3, 100, 200)
    zoom = mouth_crops(ramp, torch.tensor([[100.0, 50.0]]), size=(4, 8), extent=(16.0, 32.0))
    assert torch.allclose(zoom[0, 0, 0], 100 + (torch.arange(8) + 0.5) * 4 - 16)
    with pytest.raises(ValueError):
        mouth_crops(images.permute(0, 2, 3, 1), centers)


def test_every_parameter_gets_gradients_from_an_image_loss() -> None:
    """Prior -> tiny deformation of a few Gaussians -> render -> image loss + sync loss on rendered mouths."""
    prior = PriorExtractor(CFG)
    features, frames, g = torch.randn(12, CFG.audio_dim), torch.tensor([2, 9]), 6
    out = prior(features, frames)
    cond = torch.cat([out["audio"], out["content"], out["style"]], dim=-1)
    head = torch.nn.Linear(cond.shape[1], g * 6)
    delta = head(cond).view(2, g, 6)
    base = torch.rand(g, 3) * 1.2 - 0.6
    images = render_gaussians(base + 0.1 * delta[..., :3], torch.sigmoid(delta[..., 3:])).permute(0, 3, 1, 2)
    target = torch.rand_like(images)
    crops = mouth_crops(images, torch.tensor([[12.0, 12.0], [12.0, 12.0]]), size=(12, 24), extent=(24.0, 24.0))
    window = crops[:, None].expand(-1, CFG.content_window, -1, -1, -1)
    mouth = prior.lip_expert.mouth_embedding(window)
    loss = ((images - target).abs().mean() + (1 - prior.lip_expert.confidence(out["content"], mouth)).mean()
            + prior.lip_expert.loss(out["content"], mouth))
    loss.backward()
    missing = [n for n, p in prior.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing
