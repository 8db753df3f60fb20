"""Painting the inside of an open mouth: a dark cavity, upper and lower teeth, a tongue.

A warp can only stretch the closed lips' pixels into the opening, so whatever
shows between the inner lip contours is drawn here, anti-aliased, on a crop.
"""
from __future__ import annotations

import cv2
import numpy as np

from ua3dtalk.data.landmarks import LIPS_LOWER_INNER, LIPS_UPPER_INNER

_CAVITY = np.array([52, 18, 24], np.float32)
_TONGUE = np.array([150, 62, 70], np.float32)
_TEETH = np.array([232, 226, 214], np.float32)
_SHIFT = 4  # fixed-point bits for sub-pixel polygon vertices


def _poly(points: np.ndarray, x0: int, y0: int) -> np.ndarray:
    return np.round((points - [x0, y0]) * (1 << _SHIFT)).astype(np.int32)


def paint_mouth(image: np.ndarray, landmarks: np.ndarray, upper_teeth: np.ndarray, unit: float) -> None:
    """Draw the mouth interior in place.

    upper_teeth: [11, 2] the upper teeth's lower edge under the inner upper lip
    (they hang from the skull, so the caller keeps them fixed to the face);
    unit: inter-ocular distance in pixels, for sizes.
    """
    upper = landmarks[list(LIPS_UPPER_INNER)]
    lower = landmarks[list(LIPS_LOWER_INNER)]
    gap = float(np.max(lower[:, 1] - upper[:, 1]))
    if gap < 0.25:
        return
    outline = np.concatenate([upper, lower[::-1]])
    pad = int(0.3 * unit) + 2
    x0, y0 = np.floor(outline.min(0)).astype(int) - pad
    x1, y1 = np.ceil(outline.max(0)).astype(int) + pad
    x0, y0 = max(x0, 0), max(y0, 0)
    x1, y1 = min(x1, image.shape[1]), min(y1, image.shape[0])
    if x1 <= x0 or y1 <= y0:
        return
    h, w = y1 - y0, x1 - x0
    # cavity: darker toward the middle of the opening
    ys = np.arange(h, dtype=np.float32)[:, None] + y0
    mid = 0.5 * (upper[:, 1].mean() + lower[:, 1].mean())
    shade = 1.0 - 0.35 * np.exp(-((ys - mid) / max(gap, 1.0)) ** 2)
    inside = np.broadcast_to(_CAVITY * shade[..., None], (h, w, 3)).copy()
    # tongue: low in the mouth, seen when it is open wide
    cx, cy = lower[:, 0].mean(), lower[:, 1].max()
    width = 0.55 * float(np.ptp(lower[:, 0]))
    axes = (int(width * (1 << _SHIFT) / 2), int(0.45 * gap * (1 << _SHIFT)))
    cv2.ellipse(inside, (int((cx - x0) * (1 << _SHIFT)), int((cy - y0) * (1 << _SHIFT))), axes, 0, 180, 360,
                _TONGUE.tolist(), -1, cv2.LINE_AA, _SHIFT)
    # lower teeth: a thin band above the lower lip that moves with the jaw
    front = lower[3:-3]
    lower_band = np.concatenate([front, (front - [0, 0.045 * unit])[::-1]])
    cv2.fillPoly(inside, [_poly(lower_band, x0, y0)], (_TEETH * 0.78).tolist(), cv2.LINE_AA, _SHIFT)
    # upper teeth with darker gaps between the incisors
    top = np.minimum(upper_teeth - [0, 0.2 * unit], upper)
    band = np.concatenate([top, upper_teeth[::-1]])
    cv2.fillPoly(inside, [_poly(band, x0, y0)], _TEETH.tolist(), cv2.LINE_AA, _SHIFT)
    cx_teeth = upper_teeth[5]
    for k in (-2, -1, 0, 1, 2):
        x = cx_teeth[0] + k * 0.1 * unit
        ty = np.interp(x, upper_teeth[:, 0], upper_teeth[:, 1])
        p0 = (int((x - x0) * (1 << _SHIFT)), int((ty - 0.2 * unit - y0) * (1 << _SHIFT)))
        p1 = (int((x - x0) * (1 << _SHIFT)), int((ty - y0) * (1 << _SHIFT)))
        cv2.line(inside, p0, p1, (_TEETH * 0.7).tolist(), 1, cv2.LINE_AA, _SHIFT)
    inside = cv2.GaussianBlur(inside, (3, 3), 0)
    mask = np.zeros((h, w), np.float32)
    cv2.fillPoly(mask, [_poly(outline, x0, y0)], 1.0, cv2.LINE_AA, _SHIFT)
    crop = image[y0:y1, x0:x1].astype(np.float32)
    m = mask[..., None]
    image[y0:y1, x0:x1] = np.clip(crop * (1 - m) + inside * m, 0, 255).astype(np.uint8)
