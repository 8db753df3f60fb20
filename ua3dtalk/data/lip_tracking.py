"""Outer-lip landmarks re-tracked by the pixels' own motion.

MediaPipe's face mesh under-states how far the lips move: on a synthesized
subject, whose true landmarks move its pixels, its lip landmarks move 59 % as
far sideways and 85 % as far up and down (``bench/preprocess_accuracy.py``).
The landmark flow loss teaches the audio path that damped motion. Dense optical
flow from one frame of the clip follows the outer lips about twice as closely
there; the inner lips border the mouth's opening, where teeth and shadow
appear and flow has nothing to follow, so they keep MediaPipe's positions.
"""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from ua3dtalk.data.landmarks import LIPS_OUTER


def typical_frame(landmarks: np.ndarray, points: Sequence[int]) -> int:
    """Index of the frame whose ``points`` sit closest to their mean over the clip."""
    xy = landmarks[:, points, :2]
    return int(np.linalg.norm(xy - xy.mean(0), axis=-1).mean(-1).argmin())


def track_outer_lips(frames: Sequence[np.ndarray], landmarks: np.ndarray) -> np.ndarray:
    """One clip's landmarks [T, 478, C] with the outer lips' x, y moved by optical flow.

    ``frames``: the clip's T grayscale uint8 crops, in which ``landmarks`` are
    pixels. Each frame's outer lips are the typical frame's (MediaPipe's there)
    plus the dense flow (OpenCV's DIS) from that frame to this one at those points.
    """
    if len(frames) != len(landmarks):
        raise ValueError(f"{len(frames)} frames for {len(landmarks)} landmark rows")
    points = list(LIPS_OUTER)
    reference = typical_frame(landmarks, points)
    start = landmarks[reference, points, :2].astype(np.float32)
    map_x, map_y = start[None, :, 0], start[None, :, 1]
    flow = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    out = landmarks.copy()
    for t, frame in enumerate(frames):
        field = flow.calc(frames[reference], frame, None)                        # [H, W, 2]
        moved = np.stack([cv2.remap(field[..., axis], map_x, map_y, cv2.INTER_LINEAR)[0] for axis in (0, 1)], -1)
        out[t, points, :2] = start + moved
    return out
