"""Emotion Distillation: shapes, label/intensity, fusion weights, distillation, code-books, gradients."""
from __future__ import annotations

import copy

import pytest
import torch
from helpers import render_gaussians

from ua3dtalk.config import preset
from ua3dtalk.emotion import (EmotionCodebookEncoding, EmotionDistillation, EmotionFusion, LabelEmbedding,
                              SpeechEmotionEncoder, distillation_loss)

CFG = preset("demo")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize("b, t, crops", [(1, 4, False), (4, 4, True), (4, 80, True)])
def test_distillation_shapes(b: int, t: int, crops: bool) -> None:
    model = EmotionDistillation(CFG)
    frames = torch.randint(0, t, (b,))
    faces = torch.rand(b, 3, 128, 128) if crops else None
    out = model(torch.randn(t, CFG.audio_dim), frames, torch.randint(0, 8, (b,)), torch.rand(b), faces)
    d = CFG.emotion_dim
    assert out["embedding"].shape == out["student"].shape == (b, d)
    assert out["audio_logits"].shape == (b, CFG.n_emotions)
    assert out["weights"].shape == (b, 3)
    assert out["distill"].shape == ()
    if crops:
        assert out["visual_logits"].shape == (b, CFG.n_emotions)
        assert out["teacher"].shape == (b, d) and out["distill"] > 0
    else:
        assert "visual_logits" not in out and "teacher" not in out and out["distill"] == 0
    # the deformation is driven by the student at training too: the same embedding with and without crops
    assert torch.equal(out["embedding"], out["student"])


def test_scalar_label_and_intensity_broadcast() -> None:
    model = EmotionDistillation(CFG)
    features, frames = torch.randn(30, CFG.audio_dim), torch.tensor([3, 9, 27])
    a = model(features, frames, 5, 0.7)["embedding"]
    b = model(features, frames, torch.tensor([5, 5, 5]), torch.full((3,), 0.7))["embedding"]
    assert torch.allclose(a, b)


def test_label_embedding_intensity_interpolates_from_neutral() -> None:
    emb = LabelEmbedding(CFG)
    labels = torch.arange(CFG.n_emotions)
    zero = emb(labels, torch.zeros(CFG.n_emotions))
    assert torch.allclose(zero, zero[:1].expand_as(zero))          # intensity 0: neutral for every label
    full = emb(labels, torch.ones(CFG.n_emotions))
    assert torch.allclose(full, emb.table.weight, atol=1e-6)
    half = emb(torch.tensor([5]), torch.tensor([0.5]))
    assert torch.allclose(half, 0.5 * (emb.table.weight[0] + emb.table.weight[5]), atol=1e-6)
    with pytest.raises(ValueError, match="label"):
        emb(torch.tensor([8]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="intensity"):
        emb(torch.tensor([1]), torch.tensor([1.5]))


def test_fusion_weights_sum_to_one_and_drop_a_missing_modality() -> None:
    fusion = EmotionFusion(CFG.emotion_dim)
    audio, visual, label = (torch.randn(4, CFG.emotion_dim) for _ in range(3))
    fused, w = fusion(audio, label, visual)
    fused_s, w_s = fusion(audio, label)
    assert fused.shape == fused_s.shape == (4, CFG.emotion_dim)
    assert torch.allclose(w.sum(1), torch.ones(4)) and torch.allclose(w_s.sum(1), torch.ones(4))
    assert (w[:, 1] > 0).all() and (w_s[:, 1] == 0).all()
    # without the visual modality, the others keep their relative weights
    kept = w[:, [0, 2]] / w[:, [0, 2]].sum(1, keepdim=True)
    assert torch.allclose(w_s[:, [0, 2]], kept, atol=1e-6)
    assert not torch.allclose(fused, fused_s)
    # the weights are input-dependent (learned attention, not fixed mixing)
    _, w_other = fusion(audio, torch.randn(4, CFG.emotion_dim), visual)
    assert not torch.allclose(w, w_other)


def test_the_label_reaches_the_embedding_even_when_attention_ignores_it() -> None:
    """A student that learned to attend to audio alone must still render the chosen emotion."""
    fusion = EmotionFusion(CFG.emotion_dim)
    direction = torch.nn.functional.normalize(torch.randn(CFG.emotion_dim), dim=0)
    with torch.no_grad():                      # a constant query that favours the audio modality
        fusion.query.weight.zero_()
        fusion.query.bias.copy_(10 * direction)
        fusion.kind[0] = 10 * direction
    audio = torch.randn(1, CFG.emotion_dim).expand(2, -1)
    labels = torch.randn(2, CFG.emotion_dim)
    fused, weights = fusion(audio, labels)
    assert (weights[:, 0] > 0.99).all()
    assert torch.allclose(fused[0] - fused[1], labels[0] - labels[1], atol=1e-2)


def test_distillation_loss_moves_only_the_student() -> None:
    student = torch.randn(3, CFG.emotion_dim, requires_grad=True)
    teacher = torch.randn(3, CFG.emotion_dim, requires_grad=True)
    assert distillation_loss(teacher, teacher).item() == pytest.approx(0, abs=1e-6)
    distillation_loss(student, teacher).backward()
    assert teacher.grad is None and student.grad.abs().sum() > 0


def test_distillation_pulls_the_student_onto_the_teacher() -> None:
    model = EmotionDistillation(CFG)
    features, frames = torch.randn(40, CFG.audio_dim), torch.tensor([5, 15, 25, 35])
    label, intensity, faces = torch.tensor([1, 2, 3, 4]), torch.ones(4), torch.rand(4, 3, 64, 64)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(12):
        loss = model(features, frames, label, intensity, faces)["distill"]
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.3 * first


def test_predict_emotion_returns_a_distribution() -> None:
    model = EmotionDistillation(CFG)
    label, probs = model.predict_emotion(torch.randn(10, CFG.audio_dim), torch.tensor([0, 9]))
    assert label.shape == (2,) and probs.shape == (2, CFG.n_emotions)
    assert torch.allclose(probs.sum(1), torch.ones(2)) and torch.equal(label, probs.argmax(1))


def test_speech_emotion_window_is_two_seconds() -> None:
    ser = SpeechEmotionEncoder(CFG)
    assert ser.window == 2 * CFG.fps
    emb, logits = ser(torch.randn(3, CFG.audio_dim), torch.tensor([0, 1, 2]))
    assert emb.shape == (3, CFG.emotion_dim) and logits.shape == (3, CFG.n_emotions)


def test_codebook_attention_rows_sum_to_one_and_shape() -> None:
    enc = EmotionCodebookEncoding(CFG)
    r, d = len(CFG.emotion_multires), CFG.emotion_hexplane_dim
    emotion = torch.randn(2, CFG.emotion_dim)
    attn = enc.attention(emotion)
    assert attn.shape == (2, r, CFG.codebook_size)
    assert torch.allclose(attn.sum(-1), torch.ones(2, r)) and (attn >= 0).all()
    xyz = torch.rand(50, 3) * 2 - 1
    out = enc(xyz, emotion)
    assert out.shape == (2, 50, r * d) and enc.out_dim == r * d
    # each resolution's field features are scaled by (1 + its code)
    code = torch.einsum("brc,rcd->brd", attn, enc.codebooks)
    assert torch.allclose(out.view(2, 50, r, d), enc.field(xyz)[None] * (1 + code[:, None]), atol=1e-6)
    assert not torch.allclose(out[0], out[1])


def test_emotions_start_with_distinct_modulations() -> None:
    """At initialisation the label must already change the per-Gaussian features by a visible
    amount (with near-uniform attention every emotion got the same code and the label was ignored)."""
    enc = EmotionCodebookEncoding(CFG)
    emotion = torch.randn(8, CFG.emotion_dim)          # standardised embeddings of eight emotions
    codes = enc.modulation(emotion)
    spread = (codes[:, None] - codes[None]).abs().mean()
    assert spread > 0.15, spread           # 0.0002 with codes of 0.1 and queries shrunk 10x; 0.05 with default queries
    assert enc.attention(emotion).max(-1).values.mean() > 0.35   # not near uniform (1/8)
    xyz = torch.rand(200, 3) * 2 - 1
    feat = enc(xyz, emotion)
    assert (feat[0] - feat[1]).abs().mean() > 0.01 * feat.abs().mean()


def test_no_codebook_ablation_modulates_by_a_linear_projection() -> None:
    enc = EmotionCodebookEncoding(CFG, codebooks=False)
    assert enc.codebooks is None
    emotion, xyz = torch.randn(3, CFG.emotion_dim), torch.rand(20, 3)
    out = enc(xyz, emotion)
    r, d = len(CFG.emotion_multires), CFG.emotion_hexplane_dim
    expect = enc.field(xyz)[None] * (1 + enc.query(emotion).view(3, r, d)[:, None])
    assert torch.allclose(out, expect.flatten(2), atol=1e-6)
    with pytest.raises(RuntimeError, match="code-books"):
        enc.attention(emotion)
    # the switch also follows the config when not given
    assert EmotionDistillation(preset("demo", codebooks=False)).encoding.codebooks is None
    assert EmotionDistillation(preset("demo", codebooks=False), codebooks=True).encoding.codebooks is not None


def test_set_bounds_maps_the_box_onto_the_field() -> None:
    enc = EmotionCodebookEncoding(CFG)
    unit = copy.deepcopy(enc)                                          # keeps the default box [-1, 1]^3
    emotion, xyz = torch.randn(1, CFG.emotion_dim), torch.rand(10, 3) * 4 + 10
    enc.set_bounds(torch.full((3,), 10.0), torch.full((3,), 14.0))
    assert torch.allclose(enc(xyz, emotion), unit((xyz - 10) / 2 - 1, emotion), atol=1e-5)


@pytest.mark.parametrize("codebooks", [True, False])
def test_every_parameter_gets_gradients_from_an_image_loss(codebooks: bool) -> None:
    """Emotion -> per-Gaussian encoding -> tiny deformation -> render -> image loss (+ the training heads' losses)."""
    model = EmotionDistillation(CFG, codebooks=codebooks)
    g, b = 6, 2
    base = torch.rand(g, 3) * 1.2 - 0.6
    out = model(torch.randn(12, CFG.audio_dim), torch.tensor([2, 9]), torch.tensor([1, 6]), torch.tensor([0.5, 1.0]),
                torch.rand(b, 3, 128, 128))
    feats = model.encoding(base, out["embedding"])                   # [B, G, R*D]
    delta = torch.nn.Linear(feats.shape[-1], 6)(feats)
    images = render_gaussians(base + 0.1 * delta[..., :3], torch.sigmoid(delta[..., 3:]))
    target = torch.tensor([1, 6])
    loss = ((images - torch.rand_like(images)).abs().mean() + out["distill"]
            + torch.nn.functional.cross_entropy(out["audio_logits"], target)
            + torch.nn.functional.cross_entropy(out["visual_logits"], target))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing
