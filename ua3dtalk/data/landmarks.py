"""MediaPipe face mesh (478 landmarks) and selfie segmentation, plus the named
landmark groups and the face signals derived from them.

Preprocessing and the landmark metrics both go through this module, so the
same detector settings and the same definitions of "eye openness" and "mouth
opening" are used everywhere. MediaPipe 0.10.21's legacy solutions ship their
models inside the wheel, so this runs offline.
"""
from __future__ import annotations

import os
from typing import Any, Self

import numpy as np

os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's C++ logging is noise for users

N_LANDMARKS = 478

# Named groups of MediaPipe canonical face-mesh indices, the one definition used
# by preprocessing, the synthesized subject's rig and the metrics.
# "Right"/"left" are the subject's: the right eye appears on the image's left.

# Open chains, upper and lower paired point by point: lips from corner to corner,
# eyelids and brow rows from the outer to the inner end.
LIPS_UPPER_OUTER: tuple[int, ...] = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291)
LIPS_LOWER_OUTER: tuple[int, ...] = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291)
LIPS_UPPER_INNER: tuple[int, ...] = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
LIPS_LOWER_INNER: tuple[int, ...] = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)
MOUTH_CORNERS: tuple[int, ...] = (61, 291, 78, 308)
UPPER_LIP_CENTER, LOWER_LIP_CENTER = 13, 14  # inner lip midpoints

RIGHT_EYE_CORNERS: tuple[int, int] = (33, 133)  # (outer, inner)
LEFT_EYE_CORNERS: tuple[int, int] = (263, 362)
RIGHT_EYE_UPPER: tuple[int, ...] = (246, 161, 160, 159, 158, 157, 173)
RIGHT_EYE_LOWER: tuple[int, ...] = (7, 163, 144, 145, 153, 154, 155)
LEFT_EYE_UPPER: tuple[int, ...] = (466, 388, 387, 386, 385, 384, 398)
LEFT_EYE_LOWER: tuple[int, ...] = (249, 390, 373, 374, 380, 381, 382)
RIGHT_EYE_CREASE: tuple[int, ...] = (247, 30, 29, 27, 28, 56, 190)
LEFT_EYE_CREASE: tuple[int, ...] = (467, 260, 259, 257, 258, 286, 414)
RIGHT_IRIS: tuple[int, ...] = (468, 469, 470, 471, 472)
LEFT_IRIS: tuple[int, ...] = (473, 474, 475, 476, 477)
# Outer eye corners: a face size that does not change with expression.
OUTER_EYE_CORNERS: tuple[int, int] = (RIGHT_EYE_CORNERS[0], LEFT_EYE_CORNERS[0])

RIGHT_BROW_UPPER: tuple[int, ...] = (70, 63, 105, 66, 107)
RIGHT_BROW_LOWER: tuple[int, ...] = (46, 53, 52, 65, 55)
LEFT_BROW_UPPER: tuple[int, ...] = (300, 293, 334, 296, 336)
LEFT_BROW_LOWER: tuple[int, ...] = (276, 283, 282, 295, 285)
BROW_INNER: tuple[int, ...] = (107, 66, 55, 65, 336, 296, 285, 295)

RIGHT_CHEEK: tuple[int, ...] = (50, 101, 118, 117, 123, 205, 187, 36)
LEFT_CHEEK: tuple[int, ...] = (280, 330, 347, 346, 352, 425, 411, 266)
NOSE_TIP = 1
NOSE_BRIDGE: tuple[int, ...] = (6, 197, 195, 168)
NOSE_WINGS: tuple[int, ...] = (129, 49, 48, 64, 98, 102, 219, 218, 235, 358, 279, 278, 294, 327, 331, 439, 438, 455)
# Tip, midline and nostril points: rigid under expression, anchors the expression features.
NOSE: tuple[int, ...] = (NOSE_TIP, 2, 4, 5, 6, 98, 327, 168, 197, 195)
CHIN = 152

# Closed contours in drawing order (for polygons), built from the chains above:
# the lower chain forward, then the upper chain back.
FACE_OVAL: tuple[int, ...] = (
    10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
    152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)
LIPS_OUTER: tuple[int, ...] = LIPS_LOWER_OUTER + LIPS_UPPER_OUTER[-2:0:-1]
LIPS_INNER: tuple[int, ...] = LIPS_LOWER_INNER + LIPS_UPPER_INNER[-2:0:-1]
RIGHT_EYE: tuple[int, ...] = (
    RIGHT_EYE_CORNERS[0], *RIGHT_EYE_LOWER, RIGHT_EYE_CORNERS[1], *RIGHT_EYE_UPPER[::-1])
LEFT_EYE: tuple[int, ...] = (
    LEFT_EYE_CORNERS[0], *LEFT_EYE_LOWER, LEFT_EYE_CORNERS[1], *LEFT_EYE_UPPER[::-1])
RIGHT_BROW: tuple[int, ...] = RIGHT_BROW_UPPER + RIGHT_BROW_LOWER[::-1]
LEFT_BROW: tuple[int, ...] = LEFT_BROW_UPPER + LEFT_BROW_LOWER[::-1]

# Eye corners and the three middle upper/lower lid pairs for the eye aspect ratio.
_EYES = tuple((corners, tuple(zip(upper[2:5], lower[2:5]))) for corners, upper, lower in (
    (RIGHT_EYE_CORNERS, RIGHT_EYE_UPPER, RIGHT_EYE_LOWER),
    (LEFT_EYE_CORNERS, LEFT_EYE_UPPER, LEFT_EYE_LOWER)))
# Upper/lower inner-lip pairs (left of centre, centre, right of centre).
_LIP_GAP = tuple(zip(LIPS_UPPER_INNER[4:7], LIPS_LOWER_INNER[4:7]))


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 RGB frames [T,H,W,3], got {frames.dtype} {frames.shape}")
    return frames


class _Solution:
    """A MediaPipe legacy solution run frame by frame; as a context manager it
    frees the solution's graph on exit."""

    def __init__(self, solution: Any) -> None:
        self._solution = solution

    def _process(self, frame: np.ndarray) -> Any:
        return self._solution.process(np.ascontiguousarray(frame))

    def close(self) -> None:
        self._solution.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FaceMeshTracker(_Solution):
    """Frame-by-frame face mesh; keeps MediaPipe's tracking state between calls
    so that a long video can be streamed without holding it in memory."""

    def __init__(self, video: bool = True) -> None:
        import mediapipe as mp
        super().__init__(mp.solutions.face_mesh.FaceMesh(
            static_image_mode=not video, max_num_faces=1, refine_landmarks=True,
            min_detection_confidence=0.5, min_tracking_confidence=0.5))

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        """[H,W,3] uint8 RGB -> [478,3] (x, y pixels; z in pixels of the image width), NaN if no face."""
        h, w = frame.shape[:2]
        res = self._process(frame)
        if not res.multi_face_landmarks:
            return np.full((N_LANDMARKS, 3), np.nan, np.float32)
        pts = np.array([(p.x, p.y, p.z) for p in res.multi_face_landmarks[0].landmark], np.float32)
        return pts * np.array([w, h, w], np.float32)


class PersonSegmenter(_Solution):
    """Frame-by-frame selfie segmentation (person probability per pixel)."""

    def __init__(self) -> None:
        import mediapipe as mp
        super().__init__(mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0))

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        """[H,W,3] uint8 RGB -> [H,W] float32 in [0,1]."""
        res = self._process(frame)
        return np.clip(res.segmentation_mask, 0.0, 1.0).astype(np.float32)


def detect_landmarks(frames: np.ndarray, video: bool = True) -> np.ndarray:
    """[T,H,W,3] uint8 RGB -> [T,478,3] float32 (x, y in pixels, z in the same
    pixel scale, MediaPipe's depth axis); rows are NaN where no face is found.
    ``video=True`` tracks between consecutive frames (steadier, faster)."""
    frames = _check_frames(frames)
    with FaceMeshTracker(video=video) as mesh:
        return np.stack([mesh(f) for f in frames])


def segment_person(frames: np.ndarray) -> np.ndarray:
    """[T,H,W,3] uint8 RGB -> [T,H,W] float32 person probability."""
    frames = _check_frames(frames)
    with PersonSegmenter() as seg:
        return np.stack([seg(f) for f in frames])


def inter_ocular(landmarks: np.ndarray) -> np.ndarray:
    """[..., 478, >=2] -> [...] distance between the outer eye corners: a face
    size that does not change with expression."""
    a, b = OUTER_EYE_CORNERS
    return np.linalg.norm(landmarks[..., a, :2] - landmarks[..., b, :2], axis=-1)


def eye_openness(landmarks: np.ndarray) -> np.ndarray:
    """[..., 478, >=2] -> [...] eye aspect ratio averaged over both eyes
    (lid gap / eye width; about 0.25-0.35 open, near 0 closed)."""
    lm = landmarks[..., :2]
    ratios = []
    for (c0, c1), lids in _EYES:
        gap = np.mean([np.linalg.norm(lm[..., u, :] - lm[..., d, :], axis=-1) for u, d in lids], axis=0)
        ratios.append(gap / np.maximum(np.linalg.norm(lm[..., c0, :] - lm[..., c1, :], axis=-1), 1e-6))
    return np.mean(ratios, axis=0)


def mouth_opening(landmarks: np.ndarray) -> np.ndarray:
    """[..., 478, >=2] -> [...] inner-lip gap divided by the inter-ocular distance
    (0 closed, ~0.3-0.5 wide open), independent of face size in the image."""
    lm = landmarks[..., :2]
    gap = np.mean([np.linalg.norm(lm[..., u, :] - lm[..., d, :], axis=-1) for u, d in _LIP_GAP], axis=0)
    return gap / np.maximum(inter_ocular(lm), 1e-6)
