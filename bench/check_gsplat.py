"""CUDA check: the gsplat backend and the pure-PyTorch backend render the same frames.

Run on a CUDA machine: python bench/check_gsplat.py
Random scenes (shared and per-frame Gaussians, 3 extra channels, a background);
prints mean |gsplat - torch| for image, alpha, extras and normalised depth, and exits
non-zero if any exceeds 1e-3.
"""
from __future__ import annotations

import sys

import torch

from ua3dtalk.render import rasterize

TOL = 1e-3


def scene(seed: int, n: int, batch: int, per_frame: bool, res: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.rand(*s, generator=g)  # noqa: E731
    means = (r(n, 3) - 0.5) * torch.tensor([1.2, 1.2, 1.0]) + torch.tensor([0.0, 0.0, 3.0])
    s = {
        "means": means, "quats": torch.randn(n, 4, generator=g), "scales": 0.003 + 0.03 * r(n, 3),
        "opacities": 0.05 + 0.94 * r(n), "colors": r(n, 3), "extras": r(n, 3), "background": r(batch, 3),
    }
    if per_frame:  # each frame deforms the Gaussians differently
        s = {k: (v[None] + 0.02 * torch.randn(batch, *v.shape, generator=g) if k != "background" else v) for k, v in s.items()}
        s["opacities"] = s["opacities"].clamp(0.01, 0.99)
    views = torch.eye(4).repeat(batch, 1, 1)
    views[:, 0, 3] = torch.linspace(-0.1, 0.1, batch)
    f = 2.5 * res
    Ks = torch.tensor([[f, 0, res / 2], [0, f, res / 2], [0, 0, 1.0]]).repeat(batch, 1, 1)
    return s | {"viewmats": views, "Ks": Ks}


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to compare (the gsplat backend needs CUDA)")
        return 1
    worst = 0.0
    print("| scene | image | alpha | extras | depth/z̄ |")
    print("|---|---:|---:|---:|---:|")
    for seed, (n, batch, per_frame, res) in enumerate([(2000, 1, False, 128), (20000, 3, False, 256), (20000, 2, True, 256), (50000, 2, True, 512)]):
        s = {k: v.cuda() for k, v in scene(seed, n, batch, per_frame, res).items()}
        outs = [rasterize(s["means"], s["quats"], s["scales"], s["opacities"], s["colors"], s["viewmats"], s["Ks"], res, res,
                          background=s["background"], extras=s["extras"], backend=b) for b in ("gsplat", "torch")]
        zbar = s["means"][..., 2].mean()
        diffs = [
            (outs[0].image - outs[1].image).abs().mean().item(),
            (outs[0].alpha - outs[1].alpha).abs().mean().item(),
            (outs[0].extras - outs[1].extras).abs().mean().item(),
            ((outs[0].depth - outs[1].depth).abs().mean() / zbar).item(),
        ]
        worst = max(worst, *diffs)
        kind = "per-frame" if per_frame else "shared"
        print(f"| {n:,} {kind} x{batch} @ {res}² (mean alpha {outs[0].alpha.mean().item():.2f}) | "
              + " | ".join(f"{d:.2e}" for d in diffs) + " |")
    ok = worst < TOL
    print(f"\nworst mean abs diff {worst:.2e}: {'PASS' if ok else 'FAIL'} (tolerance {TOL})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
