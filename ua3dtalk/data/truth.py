"""On-disk format of a synthesized subject: ``subject.json`` plus per-clip ground
truth ``truth/NAME.npz``. Kept in one module because it is the contract between
``synth`` (writer) and ``preprocess``/evaluation (readers).

Layout::

    OUT/subject.json     {"fps", "size", "portrait", "seed", "clips": [ClipInfo...]}
    OUT/train/NAME.mp4   25 fps, size x size, H.264 yuv420p + AAC
    OUT/heldout/NAME.mp4 held-out sentences never appear in train
    OUT/truth/NAME.npz   per-frame ground truth (see ``ClipTruth``)

NAME is MEAD-style ``{emotion}_level_{k}_{idx:03d}``.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ua3dtalk.config import EMOTIONS

SUBJECT_FILE = "subject.json"
SPLITS: tuple[str, ...] = ("train", "heldout")


def clip_name(emotion: str, level: int, index: int) -> str:
    """MEAD-style clip name, parsed back by ``preprocess`` for emotion and level."""
    if emotion not in EMOTIONS:
        raise ValueError(f"unknown emotion {emotion!r}; expected one of {', '.join(EMOTIONS)}")
    if level not in (1, 2, 3):
        raise ValueError(f"emotion level must be 1, 2 or 3, got {level}")
    return f"{emotion}_level_{level}_{index:03d}"


@dataclass(frozen=True)
class ClipInfo:
    """One clip's entry in ``subject.json``."""

    name: str
    split: str
    emotion: str
    level: int
    sentence: str
    n_frames: int
    video: str  # relative to the subject folder, e.g. "train/NAME.mp4"


@dataclass
class ClipTruth:
    """Per-frame ground truth of one clip (T frames).

    landmarks: [T, 478, 2] float32 pixels, MediaPipe face-mesh topology and order.
    phoneme: [T] unicode (IPA from espeak-ng), "" during silence.
    viseme_open: [T] jaw/lip opening 0..1; lip_round: [T] 0..1; eye_open: [T] 1 open, 0 closed.
    """

    landmarks: np.ndarray
    phoneme: np.ndarray
    viseme_open: np.ndarray
    lip_round: np.ndarray
    eye_open: np.ndarray
    emotion: str
    level: int

    @property
    def intensity(self) -> float:
        return self.level / 3.0

    def save(self, path: str | Path) -> None:
        t = len(self.landmarks)
        for key in ("phoneme", "viseme_open", "lip_round", "eye_open"):
            if len(getattr(self, key)) != t:
                raise ValueError(f"truth field {key} has {len(getattr(self, key))} frames, landmarks have {t}")
        np.savez_compressed(
            path,
            landmarks=self.landmarks.astype(np.float32),
            phoneme=np.asarray(self.phoneme, dtype=str),
            viseme_open=self.viseme_open.astype(np.float32),
            lip_round=self.lip_round.astype(np.float32),
            eye_open=self.eye_open.astype(np.float32),
            emotion=np.asarray(self.emotion),
            level=np.asarray(self.level, dtype=np.int64),
            intensity=np.asarray(self.intensity, dtype=np.float32),
        )

    @classmethod
    def load(cls, path: str | Path) -> "ClipTruth":
        with np.load(path, allow_pickle=False) as z:
            return cls(
                landmarks=z["landmarks"], phoneme=z["phoneme"], viseme_open=z["viseme_open"],
                lip_round=z["lip_round"], eye_open=z["eye_open"],
                emotion=str(z["emotion"]), level=int(z["level"]),
            )


def landmarks_in_crop(synth: str | Path, name: str, n_frames: int, crop: Sequence[float], size: int) -> np.ndarray:
    """A clip's true landmarks [n_frames, 478, 2] in the pixels of a dataset's crop ``(x0, y0, side)``
    resized to ``size``: what the landmarks a preprocessed dataset stores estimate."""
    truth = ClipTruth.load(Path(synth) / "truth" / f"{name}.npz").landmarks
    if len(truth) < n_frames:
        raise ValueError(f"{synth}: {name} has {len(truth)} frames of truth, the dataset {n_frames}; is it the "
                         "synthesized subject the dataset was preprocessed from?")
    x0, y0, side = crop
    return ((truth[:n_frames] - np.array([x0, y0], np.float32)) * (size / side)).astype(np.float32)


def write_subject(folder: str | Path, *, fps: int, size: int, portrait: dict[str, Any], seed: int,
                  clips: list[ClipInfo]) -> Path:
    """Write ``subject.json`` describing all clips of a subject folder."""
    path = Path(folder) / SUBJECT_FILE
    doc = {"fps": fps, "size": size, "portrait": portrait, "seed": seed, "clips": [asdict(c) for c in clips]}
    path.write_text(json.dumps(doc, indent=1, ensure_ascii=False))
    return path


def read_subject(folder: str | Path) -> dict[str, Any]:
    """Read ``subject.json``; clips come back as ``ClipInfo``."""
    path = Path(folder) / SUBJECT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a synthesized subject folder")
    doc = json.loads(path.read_text())
    doc["clips"] = [ClipInfo(**c) for c in doc["clips"]]
    return doc
