"""Metrics on constructed cases with known answers."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from ua3dtalk import metrics as M


def _images(seed: int = 0, b: int = 2, h: int = 32, w: int = 32) -> torch.Tensor:
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- PSNR / SSIM
def test_identical_images_psnr_inf_ssim_one() -> None:
    x = _images()
    assert torch.isinf(M.psnr(x, x)).all()
    assert torch.allclose(M.ssim(x, x), torch.ones(2), atol=1e-6)


def test_psnr_matches_formula_for_known_noise() -> None:
    target = torch.full((2, 3, 16, 16), 0.5)
    sign = torch.randint(0, 2, target.shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    pred = target + 0.1 * sign  # every pixel off by exactly 0.1 -> MSE 0.01 -> 20 dB
    assert torch.allclose(M.psnr(pred, target), torch.full((2,), 20.0), atol=1e-4)
    pred2 = pred.clone()
    pred2[1] = target[1] + 0.05 * sign[1]  # MSE 0.0025 -> 26.0206 dB
    assert M.psnr(pred2, target)[1].item() == pytest.approx(10 * math.log10(1 / 0.0025), abs=1e-4)


def test_masked_psnr_ignores_outside_pixels() -> None:
    target = torch.full((1, 3, 16, 16), 0.5)
    pred = target.clone()
    pred[..., :, 8:] = 1.0  # garbage on the right half
    mask = torch.zeros(1, 16, 16, dtype=torch.bool)
    mask[:, :, :8] = True
    assert torch.isinf(M.psnr(pred, target, mask)).all()
    pred[..., :, :8] += 0.1
    assert M.psnr(pred, target, mask).item() == pytest.approx(20.0, abs=1e-4)
    assert M.psnr(pred, target).item() < 20.0
    with pytest.raises(ValueError, match="no pixel"):
        M.psnr(pred, target, torch.zeros(1, 16, 16))


def test_ssim_single_window_matches_float64_hand_formula() -> None:
    rng = np.random.default_rng(2)
    x = rng.random((3, 11, 11))
    y = np.clip(x + 0.2 * rng.standard_normal((3, 11, 11)), 0, 1)
    g = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    vals = []
    for c in range(3):
        mx, my = (w * x[c]).sum(), (w * y[c]).sum()
        vx, vy = (w * (x[c] - mx) ** 2).sum(), (w * (y[c] - my) ** 2).sum()
        cxy = (w * (x[c] - mx) * (y[c] - my)).sum()
        c1, c2 = 0.01**2, 0.03**2
        vals.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    got = M.ssim(torch.from_numpy(x)[None], torch.from_numpy(y)[None]).item()
    assert got == pytest.approx(float(np.mean(vals)), abs=1e-10)
    assert got < 0.99


def test_ssim_matches_scikit_image() -> None:
    from skimage.metrics import structural_similarity

    x = _images(3, b=1, h=40, w=36)
    y = (x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(4))).clamp(0, 1)
    ref = structural_similarity(x[0].permute(1, 2, 0).double().numpy(), y[0].permute(1, 2, 0).double().numpy(),
                                gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                data_range=1.0, channel_axis=2)
    assert M.ssim(x, y).item() == pytest.approx(ref, abs=1e-5)


def test_masked_ssim_ignores_outside_pixels() -> None:
    x = _images(5, b=1, h=48, w=64)
    y = x.clone()
    y[..., 30:] = torch.rand(1, 3, 48, 34, generator=torch.Generator().manual_seed(6))
    mask = torch.zeros(1, 1, 48, 64)
    mask[..., :16] = 1  # windows centred here reach column 20 at most
    assert M.ssim(x, y, mask).item() == pytest.approx(1.0, abs=1e-6)
    assert M.ssim(x, y).item() < 0.9


# ---------------------------------------------------------------------- LPIPS
def test_lpips_without_weights_is_unavailable(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.delenv(M.LPIPS_ENV, raising=False)
    with pytest.raises(M.MetricUnavailable, match=M.LPIPS_ENV):
        M.LPIPS.from_pretrained()
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(M.MetricUnavailable, match="nope.safetensors"):
        M.LPIPS.from_pretrained(str(missing))
    x = _images()
    value, note = M.lpips_or_none(x, x)
    assert value is None
    assert note.startswith("LPIPS skipped") and M.LPIPS_ENV in note


def _random_lpips_file(path, seed: int = 0) -> None:
    torch.manual_seed(seed)
    model = M.LPIPS()
    for lin in model.lin:  # official lin weights are non-negative
        lin.weight.data.abs_()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


def test_lpips_random_weights_load_and_behave(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    f = tmp_path / "lpips.safetensors"
    _random_lpips_file(f)
    model = M.LPIPS.from_pretrained(str(f))
    x, y = _images(7, h=64, w=64), _images(8, h=64, w=64)
    with torch.no_grad():
        assert torch.equal(model(x, x), torch.zeros(2))
        d = model(x, y)
    assert d.shape == (2,) and (d > 0).all()
    monkeypatch.setenv(M.LPIPS_ENV, str(f))
    value, note = M.lpips_or_none(x, y)
    assert value is not None and torch.allclose(value, d) and str(f) in note


def test_lpips_rejects_wrong_file(tmp_path) -> None:
    f = tmp_path / "bad.safetensors"
    save_file({"lin.0.weight": torch.zeros(1, 64, 1, 1)}, str(f))
    with pytest.raises(ValueError, match="missing"):
        M.LPIPS.from_pretrained(str(f))


def test_convert_lpips_weights_from_official_layout(tmp_path) -> None:
    g = torch.Generator().manual_seed(9)
    chans = (64, 192, 384, 256, 256)
    lin = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) for i, c in enumerate(chans)}
    ref = M.LPIPS()
    alex = {"classifier.1.weight": torch.zeros(2, 2)}
    for idx, (name, conv) in zip((0, 3, 6, 8, 10), ref.backbone.items()):
        alex[f"features.{idx}.weight"] = torch.randn(conv.weight.shape, generator=g)
        alex[f"features.{idx}.bias"] = torch.randn(conv.bias.shape, generator=g)
    torch.save(lin, tmp_path / "alex.pth")
    torch.save(alex, tmp_path / "alexnet.pth")
    out = tmp_path / "w" / "lpips.safetensors"
    M.convert_lpips_weights(str(tmp_path / "alex.pth"), str(tmp_path / "alexnet.pth"), str(out))
    model = M.LPIPS.from_pretrained(str(out))
    assert torch.equal(model.lin[2].weight, lin["lin2.model.1.weight"])
    assert torch.equal(model.backbone["conv4"].bias, alex["features.8.bias"])
    with pytest.raises(ValueError, match="lin layers"):
        M.convert_lpips_weights(str(tmp_path / "alexnet.pth"), str(tmp_path / "alexnet.pth"), str(out))


# ------------------------------------------------------------------ lip sync
def _face(t: int = 6, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(100, 400, size=(t, 478, 3))


def test_landmark_distance_identical_shifted_and_nan() -> None:
    true = _face()
    assert M.landmark_distance(true, true, M.MOUTH) == 0.0
    pred = true.copy()
    pred[:, list(M.MOUTH), 0] += 3
    pred[:, list(M.MOUTH), 1] += 4
    pred[:, :, 2] += 50  # depth is not a pixel distance: ignored
    assert M.landmark_distance(pred, true, M.MOUTH) == pytest.approx(5.0, abs=1e-12)
    pred[2] = np.nan  # failed detection in one rendered frame
    true[4, 10] += 1000.0  # forehead, outside the mouth: does not count
    assert M.landmark_distance(pred, true, M.MOUTH) == pytest.approx(5.0, abs=1e-12)
    n = len(M.MOUTH)  # all points: 5 valid frames, the mouth off by 5 px, one point off by (1000, 1000) px
    assert M.landmark_distance(pred, true) == pytest.approx((5 * n * 5.0 + 1000.0 * math.sqrt(2)) / (5 * 478), abs=1e-12)
    assert math.isnan(M.landmark_distance(np.full_like(pred, np.nan), true, M.MOUTH))


def test_mouth_opening_correlates_with_synthetic_opening() -> None:
    rng = np.random.default_rng(1)
    t = 40
    opening = np.abs(np.sin(np.linspace(0, 6, t))) * 0.2  # centre inner-lip gap, inter-ocular units
    base = np.zeros((478, 2))
    base[33], base[263] = (-0.5, 0.0), (0.5, 0.0)  # outer eye corners, 1 unit apart
    lm = np.repeat(base[None], t, axis=0)
    for (up, lo), share in zip(((82, 87), (13, 14), (312, 317)), (0.5, 1.0, 0.5)):  # side gaps half the centre's
        lm[:, up, 1] = -share * opening / 2
        lm[:, lo, 1] = share * opening / 2
    angle = rng.uniform(-0.3, 0.3, size=t)  # the head rolls and moves nearer and farther
    rot = np.stack([np.stack([np.cos(angle), -np.sin(angle)], -1), np.stack([np.sin(angle), np.cos(angle)], -1)], -2)
    scale = rng.uniform(50, 200, size=(t, 1, 1))
    lm = scale * np.einsum("tij,tnj->tni", rot, lm) + rng.uniform(0, 300, size=(t, 1, 2))
    got = M.mouth_opening(lm)
    assert np.allclose(got, opening * 2 / 3)  # mean of the three gaps over the eye distance
    assert M.pearson(got, 3 * opening + 1) == pytest.approx(1.0, abs=1e-12)
    lm[5] = np.nan  # failed detection
    got = M.mouth_opening(lm)
    assert np.isnan(got[5]) and np.isfinite(np.delete(got, 5)).all()
    assert M.pearson(got, opening) == pytest.approx(1.0, abs=1e-12)
    assert M.pearson(-got, opening) == pytest.approx(-1.0, abs=1e-12)
    assert math.isnan(M.pearson(np.ones(5), np.arange(5.0)))


@pytest.mark.parametrize("shift", [3, -2, 0])
def test_sync_offset_recovers_known_shift(shift: int) -> None:
    g = torch.Generator().manual_seed(10)
    t, d = 80, 16
    audio = torch.randn(t, d, generator=g)
    mouth = torch.randn(t, d, generator=g)
    lo, hi = max(0, shift), min(t, t + shift)
    mouth[lo:hi] = audio[lo - shift:hi - shift] + 0.1 * torch.randn(hi - lo, d, generator=g)
    offset, conf = M.sync_offset_confidence(audio, mouth, max_offset=7)
    assert offset == shift
    shuffled = mouth[torch.randperm(t, generator=g)]
    _, conf_shuffled = M.sync_offset_confidence(audio, shuffled, max_offset=7)
    assert conf > 1.0 and conf > 5 * conf_shuffled


def test_sync_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError):
        M.sync_offset_confidence(torch.zeros(5, 4), torch.zeros(5, 4), max_offset=7)
    with pytest.raises(ValueError):
        M.sync_offset_confidence(torch.zeros(20, 4), torch.zeros(19, 4))


# ------------------------------------------------------------------- emotion
def test_expression_features_invariant_to_similarity_transform() -> None:
    lm = _face(t=3, seed=2)
    theta, s, shift = 0.4, 1.7, np.array([20.0, -35.0])
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    moved = lm.copy()
    moved[..., :2] = lm[..., :2] @ rot.T * s + shift
    a, b = M.expression_features(lm), M.expression_features(moved)
    assert a.shape == (3, 2 * len(M.EXPRESSION_POINTS))
    assert np.allclose(a, b, atol=1e-9)
    smile = lm.copy()
    smile[:, 61, 1] -= 10  # a mouth corner moves: the features change
    assert not np.allclose(M.expression_features(smile), a)


def _blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.eye(4, 12) * 6.0
    y = np.arange(n) % 4
    return centres[y] + rng.uniform(-1.0, 1.0, (n, 12)), y  # bounded noise: linearly separable


def test_classifier_separable_accuracy_and_round_trip(tmp_path) -> None:
    x, y = _blobs(120, 0)
    xt, yt = _blobs(60, 1)
    clf = M.ExpressionClassifier(num_classes=4, hidden=16, epochs=80).fit(x, y)
    assert clf.accuracy(xt, yt) == 1.0
    again = M.ExpressionClassifier(num_classes=4, hidden=16, epochs=80).fit(x, y)
    assert np.array_equal(again.predict_proba(xt), clf.predict_proba(xt))
    clf.save(str(tmp_path / "expr"))
    loaded = M.ExpressionClassifier.load(str(tmp_path / "expr.safetensors"))
    assert np.array_equal(loaded.predict(xt), clf.predict(xt))
    assert np.allclose(loaded.predict_proba(xt), clf.predict_proba(xt), atol=0, rtol=0)
    with pytest.raises(ValueError, match="NaN"):
        clf.predict(np.full((1, 12), np.nan))


def test_frechet_identical_and_1d_closed_form() -> None:
    rng = np.random.default_rng(3)
    a = rng.standard_normal((50, 5))
    assert M.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)

    def exact(n: int) -> np.ndarray:  # sample mean 0 and sample variance 1 exactly
        r = rng.standard_normal(n)
        return (r - r.mean()) / r.std(ddof=1)

    m1, s1, m2, s2, eps = 1.0, 2.0, -0.5, 0.5, 1e-6
    d = M.frechet_distance(m1 + s1 * exact(200), m2 + s2 * exact(300), eps=eps)
    ref = (m1 - m2) ** 2 + (math.sqrt(s1**2 + eps) - math.sqrt(s2**2 + eps)) ** 2
    assert d == pytest.approx(ref, abs=1e-9)


def test_frechet_matches_scipy_sqrtm_and_handles_few_samples() -> None:
    from scipy.linalg import sqrtm

    rng = np.random.default_rng(4)
    a = rng.standard_normal((40, 4)) @ rng.standard_normal((4, 4))
    b = rng.standard_normal((60, 4)) * 2 + 1
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ref = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(ca + cb) - 2 * np.trace(sqrtm(ca @ cb).real)
    assert M.frechet_distance(a, b, eps=0.0) == pytest.approx(ref, rel=1e-8)
    few = M.frechet_distance(rng.standard_normal((3, 30)), rng.standard_normal((4, 30)))
    assert math.isfinite(few) and few > 0
    with pytest.raises(ValueError):
        M.frechet_distance(a[:1], b)


def test_lip_box_covers_the_lip_landmarks_with_the_margin() -> None:
    landmarks = torch.full((2, 478, 2), 3.0)
    lips = list(M.MOUTH)
    landmarks[0, lips] = torch.tensor([20.0, 30.0])
    landmarks[0, lips[0]] = torch.tensor([10.0, 25.0])        # x 10..20, y 25..30
    landmarks[1] = float("nan")                               # a failed detection: no box
    box = M.lip_box(landmarks, 64, margin=2.0)
    assert box.shape == (2, 64, 64) and box.dtype == torch.bool
    rows, cols = torch.nonzero(box[0], as_tuple=True)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (23, 32, 8, 22)
    assert int(box[0].sum()) == 10 * 15
    assert not box[1].any()
