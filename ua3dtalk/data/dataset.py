"""The subject dataset that training reads (written by ``ua3dtalk preprocess``).

Layout of a dataset folder::

    meta.json        {"version":1, "fps":25, "size":S, "K":[[fx,0,cx],[0,fy,cy],[0,0,1]],
                      "emotions":[8 names, ua3dtalk.config.EMOTIONS order],
                      "clips":[{"name","split","emotion","level","intensity","start","n_frames","source",...}]}
    frames/NAME/000000.jpg   S x S crops, one folder per clip
    masks/NAME/000000.png    uint8 labels: 0 background, 1 person, 2 face, 3 inside mouth
    audio/NAME.wav           16 kHz mono PCM16
    landmarks.npy            [T,478,3] float32 (x, y crop pixels; z MediaPipe depth, same scale)
    viewmats.npy             [T,4,4] world (canonical head) -> camera, OpenCV convention
    canonical.npy            [478,3] reference head shape in world units
    eye.npy, mouth_open.npy  [T] eye openness and mouth opening
    background.png           clean background plate

T counts the frames of all clips; a clip's rows are ``start .. start+n_frames-1``.
"""
from __future__ import annotations

import json
import wave
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from ua3dtalk.config import EMOTIONS

DATASET_VERSION = 1
SPLITS = ("train", "heldout", "all")
MASK_LABELS = {"background": 0, "person": 1, "face": 2, "mouth": 3}
FACE_LABEL, MOUTH_LABEL = MASK_LABELS["face"], MASK_LABELS["mouth"]
MaskArray = np.ndarray | torch.Tensor
AUTO_CACHE_BYTES = 2 << 30   # decoded frames are kept in memory when they fit in this
_REQUIRED = ("landmarks.npy", "viewmats.npy", "canonical.npy", "eye.npy", "mouth_open.npy", "background.png")


def head_region(masks: MaskArray) -> MaskArray:
    """The pixels labelled face or mouth (NumPy or torch masks): what the Gaussians model,
    the training loss weighs and the metrics look at."""
    return (masks == FACE_LABEL) | (masks == MOUTH_LABEL)


@dataclass
class Clip:
    """One source video inside the dataset."""

    name: str
    split: str
    emotion: str
    level: int
    intensity: float
    start: int
    n_frames: int


def _read_rgb(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(f"missing or unreadable image: {path}")
    return np.ascontiguousarray(img[..., ::-1])


def load_meta(root: str | Path) -> dict:
    """Read and check ``meta.json``: clear errors for a folder that is not a
    dataset, or one written by a newer version."""
    root = Path(root)
    path = root / "meta.json"
    if not path.is_file():
        raise FileNotFoundError(f"{root} is not a subject dataset (no meta.json); "
                                "make one with `ua3dtalk preprocess` or `ua3dtalk synth`")
    try:
        meta = json.loads(path.read_text())
        version = int(meta["version"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a valid dataset description ({e})") from None
    if version > DATASET_VERSION:
        raise ValueError(f"{root} is a version {version} dataset; this ua3dtalk reads up to version "
                         f"{DATASET_VERSION}, please upgrade")
    missing = [n for n in _REQUIRED if not (root / n).exists()]
    if missing:
        raise FileNotFoundError(f"{root} is an incomplete dataset: missing {', '.join(missing)}")
    return meta


class SubjectDataset(Dataset):
    """Frames of one split with their masks, cameras, landmarks and labels.

    ``size`` resizes images, masks, K and landmarks on load (e.g. 64 in tests,
    256 on CPU). ``cache`` keeps decoded frames and masks in memory after the
    first read; by default it is on when they fit in ``AUTO_CACHE_BYTES``.
    """

    def __init__(self, root: str | Path, split: str = "train", size: int | None = None,
                 cache: bool | None = None) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.root = Path(root)
        self.meta = load_meta(self.root)
        self.source_size = int(self.meta["size"])
        self.size = int(size or self.source_size)
        if self.size < 8:
            raise ValueError(f"size must be at least 8, got {self.size}")
        self._scale = self.size / self.source_size
        self.clips = [
            Clip(c["name"], c["split"], c["emotion"], int(c["level"]), float(c["intensity"]),
                 int(c["start"]), int(c["n_frames"]))
            for c in self.meta["clips"] if split == "all" or c["split"] == split]
        for c in self.clips:
            if c.emotion not in EMOTIONS:
                raise ValueError(f"clip {c.name}: unknown emotion {c.emotion!r}")
        self._offsets = np.cumsum([0] + [c.n_frames for c in self.clips])
        self._global = np.concatenate(
            [np.arange(c.start, c.start + c.n_frames) for c in self.clips] or [np.zeros(0, int)])
        self._clip_of = np.repeat(np.arange(len(self.clips)), [c.n_frames for c in self.clips])

        K = torch.tensor(self.meta["K"], dtype=torch.float32)
        K[:2] *= self._scale
        self.K = K
        self.viewmats = torch.from_numpy(np.load(self.root / "viewmats.npy").astype(np.float32))
        self.landmarks = np.load(self.root / "landmarks.npy").astype(np.float32)
        self.eye = np.load(self.root / "eye.npy").astype(np.float32)
        self.mouth_open = np.load(self.root / "mouth_open.npy").astype(np.float32)
        self.canonical = torch.from_numpy(np.load(self.root / "canonical.npy").astype(np.float32))
        total = len(self.landmarks)
        if any(c.start + c.n_frames > total for c in self.clips) or len(self.viewmats) != total:
            raise ValueError(f"{self.root}: clip ranges do not match the per-frame arrays ({total} frames)")
        self.background = torch.from_numpy(self._resize(_read_rgb(self.root / "background.png"))).permute(2, 0, 1).float() / 255

        n = len(self._global)
        if cache is None:
            cache = n * self.size * self.size * 4 <= AUTO_CACHE_BYTES
        self._images = np.empty((n, self.size, self.size, 3), np.uint8) if cache else None
        self._masks = np.empty((n, self.size, self.size), np.uint8) if cache else None
        self._cached = np.zeros(n, bool)

    def _resize(self, img: np.ndarray, nearest: bool = False) -> np.ndarray:
        if img.shape[0] == self.size:
            return img
        interp = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA if self.size < img.shape[0] else cv2.INTER_LINEAR
        return cv2.resize(img, (self.size, self.size), interpolation=interp)

    def _load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if self._images is not None and self._cached[i]:
            return self._images[i], self._masks[i]
        clip = self.clips[self._clip_of[i]]
        frame = i - self._offsets[self._clip_of[i]]
        img = self._resize(_read_rgb(self.root / "frames" / clip.name / f"{frame:06d}.jpg"))
        mpath = self.root / "masks" / clip.name / f"{frame:06d}.png"
        mask = cv2.imread(str(mpath), cv2.IMREAD_UNCHANGED)
        if mask is None:
            raise FileNotFoundError(f"missing or unreadable mask: {mpath}")
        mask = self._resize(mask, nearest=True)
        if self._images is not None:
            self._images[i], self._masks[i] = img, mask
            self._cached[i] = True
        return img, mask

    def __len__(self) -> int:
        return len(self._global)

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} frames")
        i = int(i) % len(self)
        g = self.global_index(i)
        ci = int(self._clip_of[i])
        clip = self.clips[ci]
        img, mask = self._load(i)
        return {
            "image": torch.from_numpy(img).permute(2, 0, 1).float() / 255,
            "mask": torch.from_numpy(mask.copy()),
            "viewmat": self.viewmats[g],
            "landmarks": torch.from_numpy(self.landmarks[g, :, :2] * self._scale),
            "eye": float(self.eye[g]),
            "mouth_open": float(self.mouth_open[g]),
            "emotion": EMOTIONS.index(clip.emotion),
            "intensity": clip.intensity,
            "clip": ci,
            "frame": i - int(self._offsets[ci]),
            "index": g,
        }

    def global_index(self, i: int) -> int:
        """Index of split item ``i`` in the subject's per-frame arrays (``mouth_open``, ``eye``, ...)."""
        return int(self._global[i])

    def clip_frames(self, clip: int) -> range:
        """Dataset indices (of this split) of one clip's frames, in time order."""
        return range(int(self._offsets[clip]), int(self._offsets[clip + 1]))

    def audio(self, clip: int) -> tuple[np.ndarray, int]:
        """The clip's speech as float32 mono in [-1, 1] and its sample rate (16000)."""
        path = self.root / "audio" / f"{self.clips[clip].name}.wav"
        if not path.is_file():
            raise FileNotFoundError(f"missing audio: {path}")
        with wave.open(str(path), "rb") as w:
            if w.getsampwidth() != 2 or w.getnchannels() != 1:
                raise ValueError(f"{path}: expected 16-bit mono PCM")
            rate = w.getframerate()
            pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2")
        return pcm.astype(np.float32) / 32768.0, rate

    def stacked(self, device: str | torch.device = "cpu", workers: int = 8) -> dict[str, torch.Tensor]:
        """Every frame of the split as stacked tensors on ``device`` (images and masks
        as uint8, so a 512² split of a few thousand frames fits on a GPU): training
        then gathers batches by indexing, with no per-step decoding or copies.
        Keys are those of ``__getitem__``; ``image`` is [N,3,S,S] uint8."""
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(workers) as pool:  # OpenCV decodes without the GIL
            pixels = list(pool.map(self._load, range(len(self))))
        g = torch.from_numpy(self._global)
        emotions = torch.tensor([EMOTIONS.index(c.emotion) for c in self.clips], dtype=torch.long)
        intensity = torch.tensor([c.intensity for c in self.clips], dtype=torch.float32)
        clip = torch.from_numpy(self._clip_of).long()
        table = {
            "image": torch.from_numpy(np.stack([p[0] for p in pixels])).permute(0, 3, 1, 2).contiguous(),
            "mask": torch.from_numpy(np.stack([p[1] for p in pixels])),
            "viewmat": self.viewmats[g],
            "landmarks": torch.from_numpy(self.landmarks[self._global, :, :2] * self._scale),
            "eye": torch.from_numpy(self.eye[self._global]),
            "mouth_open": torch.from_numpy(self.mouth_open[self._global]),
            "emotion": emotions[clip],
            "intensity": intensity[clip],
            "clip": clip,
            "frame": torch.arange(len(self)) - torch.from_numpy(self._offsets[self._clip_of]).long(),
            "index": g.long(),
        }
        return {k: v.to(device) for k, v in table.items()}
