"""How much of the expression leaks into the fitted head pose.

    python bench/pose_stability.py --data data/demo [--shares 0.6 0.4 0.3 0.2] [--smoothing 3 6]

Refits the cameras of a subject dataset from its stored landmarks
(``fit_head_pose``) for several rigid shares and smoothing widths. On a subject
whose head never moves, such as the synthesized demo subject, every camera
should be the same, so the canonical landmarks' projections should not move:
the table gives their spread within clips (frame-to-frame jitter) and across
clips (pose bias that follows the clip's emotion), in pixels, mean over the
478 points, with the mean reprojection error of the fit, and what such camera
errors cost in the image: the head-region PSNR of training frames moved by each
frame's camera error (the similarity taking the mean projection to the frame's),
against themselves. That is the score of a perfect model rendered through these
cameras, were its deformation unable to undo their errors.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from ua3dtalk.data.dataset import SubjectDataset, head_region
from ua3dtalk.data.preprocess import POSE_SMOOTHING, RIGID_SHARE, fit_head_pose, project


def spreads(points: np.ndarray, clips: list[tuple[int, int]]) -> tuple[float, float]:
    """(mean within-clip std, std of the clip means) of [T,N,2] projected points, in pixels."""
    within = [points[start:start + n].std(0).mean() for start, n in clips]
    means = np.stack([points[start:start + n].mean(0) for start, n in clips])
    return float(np.mean(within)), float(means.std(0).mean())


def sample_frames(data: SubjectDataset, every: int = 37) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(global frame index, [H,W,3] image, head region) of every ``every``-th training frame."""
    frames = []
    for index in range(0, len(data), every):
        item = data[index]
        frames.append((data.global_index(index), np.asarray(item["image"]).transpose(1, 2, 0).astype(np.float32),
                       head_region(np.asarray(item["mask"]))))
    return frames


def camera_error_psnr(points: np.ndarray, frames: list[tuple[int, np.ndarray, np.ndarray]]) -> float:
    """Mean head-region PSNR of the frames moved by their cameras' errors, against themselves."""
    reference = points.mean(0).astype(np.float32)
    scores = []
    for frame, image, head in frames:
        move, _ = cv2.estimateAffinePartial2D(reference, points[frame].astype(np.float32))
        moved = cv2.warpAffine(image, move, image.shape[1::-1], flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REFLECT)
        error = ((moved - image) ** 2).mean(-1)[head].mean()
        scores.append(10 * np.log10(1 / max(float(error), 1e-12)))
    return float(np.mean(scores))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="data/demo")
    ap.add_argument("--shares", type=float, nargs="+", default=[0.6, RIGID_SHARE, 0.2])
    ap.add_argument("--smoothing", type=float, nargs="+", default=[POSE_SMOOTHING, 6.0])
    args = ap.parse_args()
    data = Path(args.data)
    meta = json.loads((data / "meta.json").read_text())
    landmarks = np.load(data / "landmarks.npy")
    clips = sorted((c["start"], c["n_frames"]) for c in meta["clips"])
    frames = sample_frames(SubjectDataset(data, "train"))   # loaded once, scored for every fit
    print(f"{data}: {len(landmarks)} frames, {len(clips)} clips at {meta['size']}²\n")
    print("| rigid share | smoothing (frames) | within clips (px) | across clips (px) | reprojection (px) "
          "| perfect model through these cameras (dB) |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for share in args.shares:
        for sigma in args.smoothing:
            K, viewmats, canonical, error = fit_head_pose(landmarks, meta["size"], [n for _, n in clips],
                                                          smoothing=sigma, rigid_share=share)
            points = project(canonical.astype(np.float64), viewmats.astype(np.float64), K)   # [T,N,2]
            within, across = spreads(points, clips)
            print(f"| {share:g} | {sigma:g} | {within:.2f} | {across:.2f} | {float(error.mean()):.2f} "
                  f"| {camera_error_psnr(points, frames):.2f} |")


if __name__ == "__main__":
    main()
