"""A portrait, its 478 face landmarks, and a fast landmark-driven piecewise-affine warp.

The warp is defined on a fixed triangulation of the rest landmarks plus anchor
points (rings around the face and the image border) that never move, so the
deformation fades out beyond the face and nothing tears. Per-pixel triangle and
barycentric coordinates are computed once; a frame then only needs a gather
(the displacement field at every pixel) and a few ``cv2.remap`` calls that
invert the forward map x -> x + D(x) by Newton iterations.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from scipy.sparse import csr_matrix
from scipy.spatial import Delaunay

from ua3dtalk.data.landmarks import FACE_OVAL, N_LANDMARKS

ASTRONAUT_PROVENANCE: dict[str, Any] = {
    "name": "astronaut",
    "source": "scikit-image skimage.data.astronaut()",
    "subject": "Eileen Collins, NASA astronaut",
    "license": "public domain (NASA image)",
    "details": "assets/PORTRAIT.md",
}


def detect_landmarks(image: np.ndarray) -> np.ndarray | None:
    """478 face-mesh landmarks [478, 2] in pixels of an RGB uint8 image, or None without a face.

    MediaPipe's legacy face mesh ships its models inside the wheel (works offline).
    """
    import mediapipe as mp

    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True, max_num_faces=1,
                                         min_detection_confidence=0.5) as mesh:
        result = mesh.process(np.ascontiguousarray(image[..., :3]))
    if not result.multi_face_landmarks:
        return None
    h, w = image.shape[:2]
    pts = np.array([[p.x * w, p.y * h] for p in result.multi_face_landmarks[0].landmark], np.float64)
    return pts[:N_LANDMARKS]


@dataclass
class Portrait:
    """A square RGB portrait cropped around the face, with its rest landmarks."""

    image: np.ndarray
    landmarks: np.ndarray
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return self.image.shape[0]


def _read_image(path: str | Path | None) -> tuple[np.ndarray, dict[str, Any]]:
    if path is None:
        import skimage.data

        return skimage.data.astronaut(), dict(ASTRONAUT_PROVENANCE)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"portrait image {path} not found")
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"{path} is not a readable image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), {"name": path.name, "source": str(path.resolve())}


def load_portrait(path: str | Path | None = None, size: int = 512) -> Portrait:
    """Read a frontal portrait (default: scikit-image's public-domain astronaut), crop a
    square of ~2.4 face heights around the face, resize to ``size`` and detect landmarks."""
    if size < 64:
        raise ValueError(f"portrait size must be at least 64 pixels, got {size}")
    image, provenance = _read_image(path)
    if image.ndim == 2:
        image = np.stack([image] * 3, -1)
    image = image[..., :3].astype(np.uint8)
    name = provenance.get("name", "portrait")
    first = detect_landmarks(image)
    if first is None:
        raise ValueError(f"no face found in the portrait {name!r}: use a frontal photo with one clearly visible face")
    lo, hi = first.min(0), first.max(0)
    center = (lo + hi) / 2 + np.array([0.0, 0.08 * (hi[1] - lo[1])])  # leave more room below the chin
    side = 2.4 * max(hi[1] - lo[1], hi[0] - lo[0])
    x0, y0 = center - side / 2
    # affine crop: pixels outside the photo repeat its border
    scale = size / side
    m = np.array([[scale, 0, -x0 * scale], [0, scale, -y0 * scale]], np.float64)
    crop = cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
    landmarks = detect_landmarks(crop)
    if landmarks is None:
        raise ValueError(f"no face found in the cropped portrait {name!r}")
    provenance = {**provenance, "crop": {"x0": float(x0), "y0": float(y0), "side": float(side)}, "size": size}
    return Portrait(image=crop, landmarks=landmarks, provenance=provenance)


def _anchor_points(landmarks: np.ndarray, size: int) -> np.ndarray:
    """Fixed points: two rings outside the face oval and the image border."""
    oval = landmarks[list(FACE_OVAL)]
    center = oval.mean(0)
    rings = [center + (oval - center) * s for s in (1.3, 1.7)]
    inside = [r[(r >= 1).all(1) & (r <= size - 2).all(1)] for r in rings]
    t = np.linspace(0, size - 1, 9)
    border = np.concatenate([np.stack([t, np.zeros_like(t)], 1), np.stack([t, np.full_like(t, size - 1)], 1),
                             np.stack([np.zeros_like(t[1:-1]), t[1:-1]], 1),
                             np.stack([np.full_like(t[1:-1], size - 1), t[1:-1]], 1)])
    return np.concatenate([*inside, border])


class Warper:
    """Piecewise-affine image warp driven by displacements of the 478 landmarks."""

    def __init__(self, image: np.ndarray, landmarks: np.ndarray, iterations: int = 3):
        self.image = np.ascontiguousarray(image)
        self.size = image.shape[0]
        self.iterations = iterations
        vertices = np.concatenate([landmarks, _anchor_points(landmarks, self.size)])
        tri = Delaunay(vertices)
        self.triangles = tri.simplices
        ys, xs = np.mgrid[0:self.size, 0:self.size]
        pix = np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float64)
        simplex = tri.find_simplex(pix)
        # only triangles with a landmark corner can move; everything else stays put
        moving = (self.triangles < N_LANDMARKS).any(1)
        keep = (simplex >= 0) & moving[np.maximum(simplex, 0)]
        simplex, pix = simplex[keep], pix[keep]
        tr = tri.transform[simplex]
        b = np.einsum("nij,nj->ni", tr[:, :2], pix - tr[:, 2])
        bary = np.concatenate([b, 1 - b.sum(1, keepdims=True)], 1).astype(np.float32)
        corner = np.minimum(self.triangles[simplex], N_LANDMARKS)  # every anchor -> one zero row
        rows = np.repeat(np.arange(len(pix)), 3)
        # pixel displacement = sparse barycentric weights @ vertex displacements
        self._weights = csr_matrix((bary.ravel(), (rows, corner.ravel())), shape=(len(pix), N_LANDMARKS + 1))
        iy, ix = pix[:, 1].astype(int), pix[:, 0].astype(int)
        pad = 2
        self.y0, self.y1 = max(iy.min() - pad, 0), min(iy.max() + pad + 1, self.size)
        self.x0, self.x1 = max(ix.min() - pad, 0), min(ix.max() + pad + 1, self.size)
        h, w = self.y1 - self.y0, self.x1 - self.x0
        self._flat = ((iy - self.y0) * w + (ix - self.x0)).astype(np.int64)
        gy, gx = np.mgrid[self.y0:self.y1, self.x0:self.x1].astype(np.float32)
        self._grid = np.stack([gx, gy], -1)
        self._crop_shape = (h, w)

    def displacement_field(self, displacement: np.ndarray) -> np.ndarray:
        """Forward displacement D at every pixel of the moving region [h, w, 2]."""
        dv = np.zeros((N_LANDMARKS + 1, 2), np.float32)
        dv[:N_LANDMARKS] = displacement
        d = self._weights @ dv
        field_ = np.zeros((self._crop_shape[0] * self._crop_shape[1], 2), np.float32)
        field_[self._flat] = d
        return field_.reshape(*self._crop_shape, 2)

    def warp(self, landmarks: np.ndarray, rest: np.ndarray) -> np.ndarray:
        """The image with landmarks moved from ``rest`` to ``landmarks``.

        Output pixel p samples the source at q with q + D(q) = p; Newton steps
        with the field's Jacobian converge inside one triangle, also where the
        map compresses strongly (closing eyelids).
        """
        d = self.displacement_field((landmarks - rest).astype(np.float32))
        gx = cv2.Sobel(d, cv2.CV_32F, 1, 0, ksize=1) * 0.5  # dD/dx (central difference)
        gy = cv2.Sobel(d, cv2.CV_32F, 0, 1, ksize=1) * 0.5
        jac = np.concatenate([gx, gy], -1)  # [dDx/dx, dDy/dx, dDx/dy, dDy/dy]
        p = self._grid
        local = p - np.array([self.x0, self.y0], np.float32)
        q = local - d
        for _ in range(self.iterations):
            dq = cv2.remap(d, q[..., 0], q[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
            jq = cv2.remap(jac, q[..., 0], q[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
            rx = q[..., 0] + dq[..., 0] - local[..., 0]
            ry = q[..., 1] + dq[..., 1] - local[..., 1]
            a, c_, b, e = 1 + jq[..., 0], jq[..., 1], jq[..., 2], 1 + jq[..., 3]  # J = [[a, b], [c, e]]
            inv_det = 1.0 / np.maximum(a * e - b * c_, 0.05)  # fold-free warps keep det > 0
            q[..., 0] -= np.clip((e * rx - b * ry) * inv_det, -8.0, 8.0)
            q[..., 1] -= np.clip((a * ry - c_ * rx) * inv_det, -8.0, 8.0)
        src = q + np.array([self.x0, self.y0], np.float32)
        out = self.image.copy()
        out[self.y0:self.y1, self.x0:self.x1] = cv2.remap(self.image, src[..., 0], src[..., 1], cv2.INTER_LINEAR,
                                                           borderMode=cv2.BORDER_REFLECT)
        return out
