"""Landmark-guided motion targets for the deformation networks.

From the image loss alone the motion networks learn a mean face and hardly any
motion: a pixel's error says little about which way a Gaussian should move, and
the canonical Gaussians fit the average picture faster than the networks learn
to move them. Each frame's face landmarks say where the skin went, so each
canonical Gaussian is tied to the landmark triangle it lies in (barycentric
weights in the reference frame, the one the canonical Gaussians were built
from). Its target motion in frame t is the blend of those landmarks' expression
motion: the observed landmark minus the rigid projection of the canonical
landmark, relative to the same quantity in the reference frame. The loss is the
L1 distance, in pixels per image size, between the image motion the predicted
offsets cause and that target. The image loss refines what landmarks cannot see.

A plain mean gives every Gaussian the same say, and the lips, which move most,
are about 2 % of them: the networks learn the still skin and damp the lips.
With ``emphasis`` p > 0 each landmark's term is weighted by its typical motion
(root mean square over the training frames) to the power p, normalised to a
mean weight of one over the landmarks; a Gaussian takes its landmarks' blend.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import Delaunay, cKDTree
from torch import Tensor

from ua3dtalk.data.landmarks import LIPS_LOWER_INNER, LIPS_UPPER_INNER

# triangles spanning the lips' opening belong to neither lip
MOUTH_OPENING = np.array(sorted(set(LIPS_UPPER_INNER + LIPS_LOWER_INNER)))


def project(points: Tensor, viewmats: Tensor, K: Tensor) -> Tensor:
    """World points [N,3] or [B,N,3] through [B,4,4] world->camera and K [3,3] -> [B,N,2] pixels."""
    cam = points @ viewmats[:, :3, :3].transpose(1, 2) + viewmats[:, None, :3, 3]
    uv = cam @ K.t()
    return uv[..., :2] / uv[..., 2:3].clamp_min(1e-6)


def triangulation(landmarks: np.ndarray) -> np.ndarray:
    """Delaunay triangles [M,3] of 2D landmarks [L,2], without those inside the mouth opening."""
    triangles = Delaunay(landmarks).simplices
    return triangles[~np.isin(triangles, MOUTH_OPENING).all(axis=1)]


def barycentric_binding(points: np.ndarray, landmarks: np.ndarray, triangles: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Each 2D point's triangle (vertex indices [N,3]) and barycentric weights [N,3].

    A point inside no triangle takes the triangle with the nearest centroid,
    its weights clamped to be non-negative and renormalised (its motion is that
    of the nearest skin, not an extrapolation).
    """
    corners = landmarks[triangles]                                            # [M,3,2]
    edges = np.stack([corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]], axis=-1)  # [M,2,2]
    inverse = np.linalg.pinv(edges)
    tree = cKDTree(corners.mean(axis=1))
    _, candidates = tree.query(points, k=min(8, len(triangles)))
    candidates = candidates.reshape(len(points), -1)
    rel = points[:, None, :] - corners[candidates, 0]                         # [N,k,2]
    lam = np.einsum("nkij,nkj->nki", inverse[candidates], rel)
    weights = np.concatenate([1 - lam.sum(-1, keepdims=True), lam], axis=-1)  # [N,k,3]
    inside = (weights >= -1e-9).all(-1)
    # the first candidate (nearest centroid) that contains the point, else the nearest
    pick = np.where(inside.any(1), inside.argmax(1), 0)
    rows = np.arange(len(points))
    chosen = weights[rows, pick].clip(min=0)
    chosen /= chosen.sum(-1, keepdims=True).clip(min=1e-12)
    return triangles[candidates[rows, pick]], chosen


class LandmarkFlow:
    """Motion targets from landmarks for one subject dataset's frames."""

    def __init__(self, canonical: Tensor, K: Tensor, reference_landmarks: Tensor, reference_viewmat: Tensor,
                 landmarks: Tensor | None = None, viewmats: Tensor | None = None, emphasis: float = 0.0) -> None:
        """``landmarks`` [T,L,2] and ``viewmats`` [T,4,4] of the training frames set the landmark
        weights when ``emphasis`` > 0 (see the module's docstring)."""
        self.canonical, self.K = canonical, K
        self.reference_viewmat = reference_viewmat
        self.reference_motion = self.motion(reference_landmarks[None], reference_viewmat[None])[0]
        self.reference_landmarks = reference_landmarks.detach().cpu().double().numpy()
        self.triangles = triangulation(self.reference_landmarks)
        self.landmark_weight = torch.ones(len(reference_landmarks), device=canonical.device)
        if emphasis:
            if landmarks is None or viewmats is None:
                raise ValueError("a flow emphasis needs the training frames' landmarks and viewmats")
            self.landmark_weight = self.emphasis_weights(landmarks, viewmats, emphasis)

    def emphasis_weights(self, landmarks: Tensor, viewmats: Tensor, emphasis: float, chunk: int = 512) -> Tensor:
        """Per-landmark weights [L]: root-mean-square target motion ** emphasis, mean one."""
        square = sum((self.motion(landmarks[i:i + chunk], viewmats[i:i + chunk]) - self.reference_motion)
                     .square().sum(-1).sum(0) for i in range(0, len(landmarks), chunk))
        weight = (square / len(landmarks)).sqrt().clamp_min(1e-6) ** emphasis
        return weight / weight.mean()

    def motion(self, landmarks: Tensor, viewmats: Tensor) -> Tensor:
        """Expression motion of the landmarks [B,L,2]: observed minus the rigidly moved canonical shape."""
        return landmarks - project(self.canonical, viewmats, self.K)

    def bind(self, xyz: Tensor) -> tuple[Tensor, Tensor]:
        """Landmark indices [N,3] and weights [N,3] of canonical Gaussians [N,3] (redo after density control)."""
        pixels = project(xyz.detach(), self.reference_viewmat[None], self.K)[0]
        index, weight = barycentric_binding(pixels.cpu().double().numpy(), self.reference_landmarks, self.triangles)
        return torch.from_numpy(index).to(xyz.device), torch.from_numpy(weight).to(xyz)

    def loss(self, xyz: Tensor, d_xyz: Tensor, binding: tuple[Tensor, Tensor], landmarks: Tensor,
             viewmats: Tensor, size: int) -> Tensor:
        """Mean L1 (pixels / size) between the offsets' image motion and the landmark targets,
        each Gaussian weighted by its landmarks' emphasis weights.

        xyz [N,3] canonical, d_xyz [B,N,3] offsets, landmarks [B,L,2] and viewmats [B,4,4] of the frames."""
        index, weight = binding
        motion = self.motion(landmarks, viewmats) - self.reference_motion             # [B,L,2]
        target = (motion[:, index] * weight[None, :, :, None]).sum(2)                  # [B,N,2]
        moved = project(xyz + d_xyz, viewmats, self.K) - project(xyz, viewmats, self.K)
        gaussian_weight = (self.landmark_weight[index] * weight).sum(-1)               # [N]
        return ((moved - target).abs() * gaussian_weight[None, :, None]).mean() / size
