"""Lips re-tracked by optical flow follow the pixels; everything else stays MediaPipe's."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from ua3dtalk.data.landmarks import LIPS_INNER, LIPS_OUTER, N_LANDMARKS
from ua3dtalk.data.lip_tracking import track_lips, typical_frame

SHIFTS = [(0, 0), (2, 1), (4, -1), (1, 3), (-2, 2), (3, 0)]   # (dx, dy) pixels per frame


def _texture(size: int = 128) -> np.ndarray:
    noise = np.random.default_rng(0).random((size, size)).astype(np.float32)
    return cv2.normalize(cv2.GaussianBlur(noise, (0, 0), 2.0), None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)


def test_lips_move_with_the_pixels_about_the_detectors_mean_and_nothing_else_moves() -> None:
    base = _texture()
    frames = [np.roll(base, (dy, dx), axis=(0, 1)) for dx, dy in SHIFTS]
    landmarks = np.random.default_rng(1).uniform(44, 84, (N_LANDMARKS, 3)).astype(np.float32)
    landmarks = np.repeat(landmarks[None], len(frames), axis=0)        # a detector that saw no motion
    landmarks[2, :, :2] += 3.0                                         # but one frame off
    tracked = track_lips(frames, landmarks)
    assert typical_frame(landmarks, list(LIPS_OUTER)) != 2
    shifts = np.array(SHIFTS, np.float32)
    lips = list(LIPS_OUTER + LIPS_INNER)
    expected = landmarks[:, lips, :2].mean(0) + (shifts - shifts.mean(0))[:, None]
    assert np.abs(tracked[:, lips, :2] - expected).max() < 0.3
    others = [i for i in range(N_LANDMARKS) if i not in set(lips)]
    np.testing.assert_array_equal(tracked[:, others], landmarks[:, others])
    np.testing.assert_array_equal(tracked[:, lips, 2], landmarks[:, lips, 2])


def test_frames_and_landmarks_must_match() -> None:
    with pytest.raises(ValueError, match="5 frames for 6 landmark rows"):
        track_lips([_texture()] * 5, np.zeros((6, N_LANDMARKS, 3), np.float32))
