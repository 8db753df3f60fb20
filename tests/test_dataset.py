"""SubjectDataset on a small hand-written dataset folder: splits, indexing,
resizing (images, masks, K, landmarks), cache, audio, and clear errors."""
from __future__ import annotations

import json
import wave
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from ua3dtalk.config import EMOTIONS
from ua3dtalk.data.dataset import SubjectDataset

S = 32
CLIPS = [("angry_level_3_000", "train", "angry", 3, 4), ("neutral_level_1_000", "heldout", "neutral", 1, 3),
         ("sad_level_2_000", "train", "sad", 2, 5)]


def _frame_value(g: int) -> int:
    return 20 + 15 * g   # every global frame has its own flat grey level


def _write_dataset(root: Path, version: int = 1) -> Path:
    rng = np.random.default_rng(0)
    clips, start = [], 0
    for name, split, emotion, level, n in CLIPS:
        (root / "frames" / name).mkdir(parents=True)
        (root / "masks" / name).mkdir(parents=True)
        for f in range(n):
            cv2.imwrite(str(root / "frames" / name / f"{f:06d}.jpg"), np.full((S, S, 3), _frame_value(start + f), np.uint8))
            mask = np.zeros((S, S), np.uint8)
            mask[8:24, 8:24], mask[12:20, 12:20], mask[15:17, 14:18] = 1, 2, 3
            cv2.imwrite(str(root / "masks" / name / f"{f:06d}.png"), mask)
        (root / "audio").mkdir(exist_ok=True)
        with wave.open(str(root / "audio" / f"{name}.wav"), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(16000)
            w.writeframes(np.full(640 * n, 16384, "<i2").tobytes())
        clips.append({"name": name, "split": split, "emotion": emotion, "level": level, "intensity": level / 3,
                      "start": start, "n_frames": n, "source": f"{name}.mp4"})
        start += n
    K = [[2.0 * S, 0, S / 2], [0, 2.0 * S, S / 2], [0, 0, 1]]
    meta = {"version": version, "fps": 25, "size": S, "K": K, "emotions": list(EMOTIONS), "clips": clips}
    (root / "meta.json").write_text(json.dumps(meta))
    lm = rng.uniform(0, S, (start, 478, 3)).astype(np.float32)
    np.save(root / "landmarks.npy", lm)
    view = np.tile(np.eye(4, dtype=np.float32), (start, 1, 1))
    view[:, 2, 3] = 5 + np.arange(start)
    np.save(root / "viewmats.npy", view)
    np.save(root / "canonical.npy", rng.normal(size=(478, 3)).astype(np.float32))
    np.save(root / "eye.npy", np.linspace(0, 1, start, dtype=np.float32))
    np.save(root / "mouth_open.npy", np.linspace(1, 0, start, dtype=np.float32))
    cv2.imwrite(str(root / "background.png"), np.full((S, S, 3), 200, np.uint8))
    return root


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    return _write_dataset(tmp_path / "subject")


def test_splits_and_indexing(root: Path) -> None:
    train = SubjectDataset(root, "train")
    assert [c.name for c in train.clips] == ["angry_level_3_000", "sad_level_2_000"]
    assert len(train) == 9 and len(SubjectDataset(root, "heldout")) == 3 and len(SubjectDataset(root, "all")) == 12
    assert list(train.clip_frames(0)) == [0, 1, 2, 3] and list(train.clip_frames(1)) == list(range(4, 9))
    item = train[5]   # second frame of the sad clip: global row 8 (after 4 angry + 3 neutral frames)
    assert (item["clip"], item["frame"], item["index"]) == (1, 1, 8)
    assert item["emotion"] == EMOTIONS.index("sad") and item["intensity"] == pytest.approx(2 / 3)
    assert abs(float(item["image"].mean()) * 255 - _frame_value(8)) < 2
    assert float(item["viewmat"][2, 3]) == 5 + 8
    assert item["eye"] == pytest.approx(8 / 11) and item["mouth_open"] == pytest.approx(1 - 8 / 11)
    np.testing.assert_allclose(item["landmarks"].numpy(), np.load(root / "landmarks.npy")[8, :, :2])
    assert train[-1]["index"] == 11
    with pytest.raises(IndexError):
        train[9]


def test_resize_scales_images_masks_camera_and_landmarks(root: Path) -> None:
    full, half = SubjectDataset(root, size=None), SubjectDataset(root, size=S // 2)
    assert full.size == S and half.size == S // 2
    a, b = full[2], half[2]
    assert b["image"].shape == (3, S // 2, S // 2) and b["image"].dtype == torch.float32
    assert b["mask"].shape == (S // 2, S // 2) and b["mask"].dtype == torch.uint8
    assert set(torch.unique(b["mask"]).tolist()) <= {0, 1, 2, 3} and 2 in b["mask"]
    torch.testing.assert_close(half.K[:2], full.K[:2] / 2)
    torch.testing.assert_close(b["landmarks"], a["landmarks"] / 2)
    assert half.background.shape == (3, S // 2, S // 2) and abs(float(half.background.mean()) - 200 / 255) < 0.01
    assert half.canonical.shape == (478, 3)


def test_cache_gives_the_same_items(root: Path) -> None:
    cached, plain = SubjectDataset(root, cache=True), SubjectDataset(root, cache=False)
    for i in range(len(cached)):
        torch.testing.assert_close(cached[i]["image"], plain[i]["image"])
    (root / "frames" / "angry_level_3_000" / "000000.jpg").unlink()
    assert cached[0]["image"].shape == (3, S, S)    # served from memory
    with pytest.raises(FileNotFoundError, match="000000.jpg"):
        plain[0]


def test_batches_with_a_dataloader(root: Path) -> None:
    batch = next(iter(torch.utils.data.DataLoader(SubjectDataset(root, size=16), batch_size=4, shuffle=False)))
    assert batch["image"].shape == (4, 3, 16, 16) and batch["viewmat"].shape == (4, 4, 4)
    assert batch["landmarks"].shape == (4, 478, 2) and batch["clip"].tolist() == [0, 0, 0, 0]


def test_audio(root: Path) -> None:
    ds = SubjectDataset(root, "train")
    wav, rate = ds.audio(1)
    assert rate == 16000 and wav.dtype == np.float32 and wav.shape == (640 * 5,)
    assert wav.max() == pytest.approx(0.5)


def test_clear_errors(tmp_path: Path, root: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a subject dataset"):
        SubjectDataset(tmp_path)
    with pytest.raises(ValueError, match="split"):
        SubjectDataset(root, "validation")
    newer = _write_dataset(tmp_path / "newer", version=2)
    with pytest.raises(ValueError, match="version 2"):
        SubjectDataset(newer)
    (root / "viewmats.npy").unlink()
    with pytest.raises(FileNotFoundError, match="viewmats.npy"):
        SubjectDataset(root)
