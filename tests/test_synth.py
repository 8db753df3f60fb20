"""The synthesized demo subject: speech timing, visemes, emotions, format, determinism."""
import json
import subprocess

import cv2
import imageio_ffmpeg
import numpy as np
import pytest

from ua3dtalk.config import EMOTIONS
from ua3dtalk.data import landmarks as lmk
from ua3dtalk.data import sentences
from ua3dtalk.data.expressions import FacePose, FaceRig
from ua3dtalk.data.face_warp import load_portrait
from ua3dtalk.data.synth import FPS, plan_clip, synthesize
from ua3dtalk.data.truth import ClipTruth, landmarks_in_crop, read_subject
from ua3dtalk.data.visemes import phoneme_class

SIZE = 256


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("synth") / "subject", minutes=0.05, seed=3, size=SIZE)


@pytest.fixture(scope="module")
def rig():
    return FaceRig(load_portrait(None, SIZE))


def _audio(path, rate=16000):
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "s16le", "-ac", "1", "-ar", str(rate), "-"]
    return np.frombuffer(subprocess.run(cmd, check=True, capture_output=True).stdout, np.int16).astype(np.float32)


def test_output_complete_and_decodes(subject):
    doc = read_subject(subject)
    assert (doc["fps"], doc["size"], doc["seed"]) == (FPS, SIZE, 3)
    assert doc["portrait"]["license"].startswith("public domain")
    assert {c.split for c in doc["clips"]} == {"train", "heldout"}
    for clip in doc["clips"]:
        assert clip.name.startswith(f"{clip.emotion}_level_{clip.level}_")
        video = subject / clip.video
        frames, secs = imageio_ffmpeg.count_frames_and_secs(str(video))
        assert frames == clip.n_frames
        assert abs(len(_audio(video)) / 16000 - clip.n_frames / FPS) < 0.1
        reader = imageio_ffmpeg.read_frames(str(video))
        meta = next(reader)
        assert tuple(meta["size"]) == (SIZE, SIZE) and meta["fps"] == FPS
        truth = ClipTruth.load(subject / "truth" / f"{clip.name}.npz")
        assert truth.landmarks.shape == (clip.n_frames, 478, 2) and truth.landmarks.dtype == np.float32
        for key in ("phoneme", "viseme_open", "lip_round", "eye_open"):
            assert len(getattr(truth, key)) == clip.n_frames
        assert (truth.emotion, truth.level) == (clip.emotion, clip.level)
        assert truth.landmarks.min() >= 0 and truth.landmarks.max() < SIZE
        assert (truth.eye_open < 0.2).any() or clip.n_frames < 3 * FPS


def test_phoneme_timing_matches_audio(subject):
    doc = read_subject(subject)
    for clip in doc["clips"]:
        audio = _audio(subject / clip.video)
        hop = 16000 // FPS
        rms = np.sqrt(np.array([np.mean(audio[f * hop:(f + 1) * hop] ** 2) for f in range(clip.n_frames)]) + 1e-9)
        truth = ClipTruth.load(subject / "truth" / f"{clip.name}.npz")
        voiced = np.array([phoneme_class(p) in ("open", "rounded", "spread") for p in truth.phoneme])
        lead = np.arange(clip.n_frames) < 6  # 0.24 s of the 0.3 s leading silence
        assert voiced.sum() >= 5
        assert np.median(rms[voiced]) > 20 * (rms[lead].mean() + 1)
        assert (rms[voiced] > 0.1 * np.median(rms[voiced])).mean() > 0.9
        assert truth.phoneme[lead].tolist() == [""] * 6 and truth.phoneme[-3:].tolist() == [""] * 3


def test_lips_close_on_bilabials_and_open_on_vowels(subject):
    gaps, classes = [], []
    for clip in read_subject(subject)["clips"]:
        truth = ClipTruth.load(subject / "truth" / f"{clip.name}.npz")
        gap = truth.landmarks[:, lmk.LOWER_LIP_CENTER, 1] - truth.landmarks[:, lmk.UPPER_LIP_CENTER, 1]
        gaps.append(gap)
        classes += [phoneme_class(p) for p in truth.phoneme]
    gap, classes = np.concatenate(gaps), np.array(classes)
    assert (classes == "bilabial").sum() >= 3 and (classes == "open").sum() >= 3
    assert np.median(gap[classes == "bilabial"]) < 0.5
    assert np.median(gap[classes == "open"]) > 4.0


def test_emotions_differ_from_neutral_in_expected_regions(rig):
    base, base_img = rig.landmarks(FacePose()), rig.render(FacePose())[0].astype(np.float32)
    up = -rig.ay  # image "up" in the face frame

    def rise(pts, idx):  # mean upward motion of a landmark group vs neutral, pixels
        return float(((pts[list(idx)] - base[list(idx)]) @ up).mean())

    pts = {e: rig.landmarks(FacePose(emotion=e, level=3)) for e in EMOTIONS}
    brows, corners = lmk.RIGHT_BROW + lmk.LEFT_BROW, (61, 291)
    width = lambda p: float(np.linalg.norm(p[61] - p[291]))  # noqa: E731
    assert rise(pts["happy"], corners) > 2 and rise(pts["happy"], lmk.RIGHT_CHEEK + lmk.LEFT_CHEEK) > 1
    assert rise(pts["sad"], corners) < -2 and rise(pts["sad"], lmk.BROW_INNER) > 2
    assert rise(pts["surprised"], brows) > 3 and pts["surprised"][14, 1] - base[14, 1] > 2
    assert rise(pts["angry"], brows) < -2
    assert np.linalg.norm(pts["angry"][107] - pts["angry"][336]) < np.linalg.norm(base[107] - base[336]) - 1
    assert rise(pts["fear"], brows) > 1.5 and width(pts["fear"]) > width(base) + 3
    assert rise(pts["disgusted"], (129, 358)) > 1 and rise(pts["disgusted"], (0,)) > 1.5
    assert rise(pts["contempt"], (61,)) > 2 and abs(rise(pts["contempt"], (291,))) < 0.5
    # the pixels change where the landmarks say, and the background stays still
    regions = {"happy": corners, "sad": corners, "surprised": brows, "angry": brows, "fear": brows,
               "disgusted": (129, 358, 0), "contempt": (61,)}
    for emotion, idx in regions.items():
        img = rig.render(FacePose(emotion=emotion, level=3))[0].astype(np.float32)
        mask = np.zeros((SIZE, SIZE), np.uint8)
        for i in idx:
            cv2.circle(mask, tuple(int(v) for v in base[i]), int(0.15 * rig.unit), 1, -1)
        diff = np.abs(img - base_img).mean(-1)
        assert diff[mask > 0].mean() > 4, emotion
        assert diff[:20, :20].max() == 0 and diff[-20:, -20:].max() == 0, emotion


def test_blink_closes_the_eyes(rig):
    open_, closed = rig.landmarks(FacePose()), rig.landmarks(FacePose(eye_open=0.0))
    for upper, lower in ((159, 145), (386, 374)):
        assert open_[lower, 1] - open_[upper, 1] > 3
        assert closed[lower, 1] - closed[upper, 1] < 0.1 * (open_[lower, 1] - open_[upper, 1])


def test_deterministic_for_a_seed(subject, tmp_path):
    again = synthesize(tmp_path / "again", minutes=0.05, seed=3, size=SIZE)
    for path in sorted(p for p in subject.rglob("*") if p.is_file()):
        other = again / path.relative_to(subject)
        if path.suffix == ".npz":
            a, b = np.load(path), np.load(other)
            assert all(np.array_equal(a[k], b[k]) for k in a.files)
        elif path.suffix == ".mp4":  # identical decoded frames and audio
            frames = [np.frombuffer(f, np.uint8) for f in list(imageio_ffmpeg.read_frames(str(path)))[1:]]
            frames2 = [np.frombuffer(f, np.uint8) for f in list(imageio_ffmpeg.read_frames(str(other)))[1:]]
            assert len(frames) == len(frames2) and all(np.array_equal(a, b) for a, b in zip(frames, frames2))
            assert np.array_equal(_audio(path), _audio(other)), path.name
    assert json.loads((subject / "subject.json").read_text()) == json.loads((again / "subject.json").read_text())


def test_clear_error_without_a_face(tmp_path):
    ramp = np.tile(np.linspace(0, 255, 300, dtype=np.uint8), (300, 1))
    path = tmp_path / "wall.png"
    cv2.imwrite(str(path), np.stack([ramp, ramp[::-1], ramp.T], -1))
    with pytest.raises(ValueError, match="no face"):
        synthesize(tmp_path / "out", portrait=path, minutes=0.05, size=SIZE)
    assert not (tmp_path / "out").exists()
    with pytest.raises(FileNotFoundError):
        synthesize(tmp_path / "out", portrait=tmp_path / "missing.png", size=SIZE)


def test_plan_covers_emotions_and_keeps_sentences_apart():
    plans = [plan_clip(i) for i in range(45)]  # about three minutes of clips
    train = [p for p in plans if p.split == "train"]
    held = [p for p in plans if p.split == "heldout"]
    assert {(p.emotion, p.level) for p in train} == {(e, k) for e in EMOTIONS for k in (1, 2, 3)}
    assert 0.1 < len(held) / len(plans) < 0.2 and len({p.emotion for p in held}) >= 6
    assert not set(sentences.TRAIN) & set(sentences.HELDOUT)
    assert {p.sentence for p in held} <= set(sentences.HELDOUT)
    # no sentence tied to one emotion, and no clip a copy of another (neutral has no levels),
    # over the demo subject's 46 training clips
    demo = [p for p in map(plan_clip, range(54)) if p.split == "train"]
    assert len(demo) == 46 and len({(p.emotion, p.sentence) for p in demo}) == 46
    by_sentence = {}
    for p in train:
        by_sentence.setdefault(p.sentence, set()).add(p.emotion)
    assert max(len(v) for v in by_sentence.values()) >= 2


def test_true_landmarks_map_into_a_dataset_crop_and_refuse_a_shorter_clip(tmp_path):
    (tmp_path / "truth").mkdir()
    landmarks = np.zeros((3, 478, 2), np.float32)
    landmarks[:, 0] = (10, 20)
    landmarks[:, 1] = (138, 148)
    ClipTruth(landmarks=landmarks, phoneme=np.array(["", "a", ""]), viseme_open=np.zeros(3),
              lip_round=np.zeros(3), eye_open=np.ones(3), emotion="neutral", level=1).save(tmp_path / "truth" / "c.npz")
    crop = landmarks_in_crop(tmp_path, "c", 2, (10, 20, 128), 512)
    assert crop.shape == (2, 478, 2)
    np.testing.assert_allclose(crop[:, 0], 0)
    np.testing.assert_allclose(crop[:, 1], 512)
    with pytest.raises(ValueError, match="3 frames of truth, the dataset 4"):
        landmarks_in_crop(tmp_path, "c", 4, (10, 20, 128), 512)
