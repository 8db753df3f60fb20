"""How much of the expression leaks into the fitted head pose.

    python bench/pose_stability.py --data data/demo [--shares 0.6 0.4 0.3 0.2] [--smoothing 3 6]

Refits the cameras of a subject dataset from its stored landmarks
(``fit_head_pose``) for several rigid shares and smoothing widths. On a subject
whose head never moves, such as the synthesized demo subject, every camera
should be the same, so the canonical landmarks' projections should not move:
the table gives their spread within clips (frame-to-frame jitter) and across
clips (pose bias that follows the clip's emotion), in pixels, mean over the
478 points, with the mean reprojection error of the fit.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ua3dtalk.data.preprocess import POSE_SMOOTHING, RIGID_SHARE, fit_head_pose, project


def spreads(K: np.ndarray, viewmats: np.ndarray, canonical: np.ndarray, clips: list[tuple[int, int]]
            ) -> tuple[float, float]:
    """(mean within-clip std, std of the clip means) of the projected canonical points, in pixels."""
    points = project(canonical.astype(np.float64), viewmats.astype(np.float64), K)   # [T,N,2]
    within = [points[start:start + n].std(0).mean() for start, n in clips]
    means = np.stack([points[start:start + n].mean(0) for start, n in clips])
    return float(np.mean(within)), float(means.std(0).mean())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="data/demo")
    ap.add_argument("--shares", type=float, nargs="+", default=[RIGID_SHARE, 0.4, 0.3, 0.2])
    ap.add_argument("--smoothing", type=float, nargs="+", default=[POSE_SMOOTHING, 6.0])
    args = ap.parse_args()
    data = Path(args.data)
    meta = json.loads((data / "meta.json").read_text())
    landmarks = np.load(data / "landmarks.npy")
    clips = sorted((c["start"], c["n_frames"]) for c in meta["clips"])
    print(f"{data}: {len(landmarks)} frames, {len(clips)} clips at {meta['size']}²\n")
    print("| rigid share | smoothing (frames) | within clips (px) | across clips (px) | reprojection (px) |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for share in args.shares:
        for sigma in args.smoothing:
            K, viewmats, canonical, error = fit_head_pose(landmarks, meta["size"], [n for _, n in clips],
                                                          smoothing=sigma, rigid_share=share)
            within, across = spreads(K, viewmats, canonical, clips)
            print(f"| {share:g} | {sigma:g} | {within:.2f} | {across:.2f} | {float(error.mean()):.2f} |")


if __name__ == "__main__":
    main()
