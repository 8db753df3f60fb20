"""Lip landmarks whose motion within a clip comes from the pixels' own motion.

MediaPipe's face mesh under-states how far the lips move: on a synthesized
subject, whose true landmarks move its pixels, its outer-lip landmarks move
55 % as far sideways as the truth (``bench/preprocess_accuracy.py``), and the
landmark flow loss teaches the audio path that damped motion. Dense optical
flow from one frame of the clip follows the lips more closely. Where the lips
sit on average over the clip stays MediaPipe's (its errors average out over
the frames; one frame's would not). The inner lips border the mouth's opening,
where teeth and shadow appear and the flow has nothing to follow, so each
inner landmark moves as the middle of the lip does, halfway to its outer
partner.
"""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from ua3dtalk.data.landmarks import LIPS_INNER, LIPS_OUTER


def typical_frame(landmarks: np.ndarray, points: Sequence[int]) -> int:
    """Index of the frame whose ``points`` sit closest to their mean over the clip."""
    xy = landmarks[:, points, :2]
    return int(np.linalg.norm(xy - xy.mean(0), axis=-1).mean(-1).argmin())


def track_lips(frames: Sequence[np.ndarray], landmarks: np.ndarray) -> np.ndarray:
    """One clip's landmarks [T, 478, C] with the lips' x, y moving as the pixels do.

    ``frames``: the clip's T grayscale uint8 crops, in which ``landmarks`` are
    pixels. Each lip landmark's motion is the dense flow (OpenCV's DIS) from the
    clip's typical frame to each frame, at the landmark there (for an inner one,
    at the middle of the lip: the two rings run in the same order, so
    ``LIPS_INNER[i]`` faces ``LIPS_OUTER[i]``), about its mean over the clip;
    the landmark's clip mean stays MediaPipe's.
    """
    if len(frames) != len(landmarks):
        raise ValueError(f"{len(frames)} frames for {len(landmarks)} landmark rows")
    outer, inner = list(LIPS_OUTER), list(LIPS_INNER)
    lips = outer + inner
    reference = typical_frame(landmarks, outer)
    at = landmarks[reference, lips, :2].astype(np.float32)
    sampled = np.concatenate([at[:len(outer)], (at[:len(outer)] + at[len(outer):]) / 2])
    map_x, map_y = sampled[None, :, 0], sampled[None, :, 1]
    flow = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    moved = np.empty((len(frames), len(lips), 2), np.float32)
    for t, frame in enumerate(frames):
        field = flow.calc(frames[reference], frame, None)                        # [H, W, 2]
        moved[t] = np.stack([cv2.remap(field[..., axis], map_x, map_y, cv2.INTER_LINEAR)[0] for axis in (0, 1)], -1)
    out = landmarks.copy()
    out[:, lips, :2] = landmarks[:, lips, :2].mean(0) + moved - moved.mean(0)
    return out
