"""Rasterizer benchmark: forward and forward+backward ms for both backends.

Run: python bench/render.py            (prints a markdown table; CPU rows only without CUDA)
     python bench/render.py --cpu-only
The scene is a face-sized cloud of Gaussians in front of the camera whose splats get
smaller as N grows (mean splat radius about 11 / 7 / 4 px at 256² for 10k / 50k / 200k),
so that every N covers about 90% of the image width.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from ua3dtalk.render import available_backends, rasterize

SIZES = (10_000, 50_000, 200_000)
RESOLUTIONS = (256, 512)
# Torch backend on CPU: larger N x pixels takes minutes per pass; skipped and said so.
CPU_MAX_WORK = 200_000 * 512 * 512


def scene(n: int, res: int, device: str, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.rand(*s, generator=g)  # noqa: E731
    means = (r(n, 3) - 0.5) * torch.tensor([0.9, 1.1, 0.6]) + torch.tensor([0.0, 0.0, 3.0])
    scale = 0.9 / n ** (1 / 3) * 0.35
    return {
        "means": means, "quats": torch.randn(n, 4, generator=g), "scales": scale * (0.5 + r(n, 3)),
        "opacities": 0.2 + 0.75 * r(n), "colors": r(n, 3),
        "viewmats": torch.eye(4)[None], "Ks": torch.tensor([[[3.0 * res, 0, res / 2], [0, 3.0 * res, res / 2], [0, 0, 1]]]),
    }


def time_ms(fn, device: str, repeats: int) -> float:
    """Median wall time of `repeats` calls (median: the CPU figures come from shared machines)."""
    fn()  # warm-up (and gsplat's first-call setup)
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def bench(backend: str, device: str, n: int, res: int, repeats: int) -> tuple[float, float, float]:
    s = scene(n, res, device)
    t = {k: v.to(device) for k, v in s.items()}
    params = {k: t[k].clone().requires_grad_() for k in ("means", "quats", "scales", "opacities", "colors")}

    def fwd():
        with torch.no_grad():
            return rasterize(t["means"], t["quats"], t["scales"], t["opacities"], t["colors"], t["viewmats"], t["Ks"],
                             res, res, background=torch.ones(3, device=device), backend=backend)

    def fwd_bwd():
        out = rasterize(params["means"], params["quats"], params["scales"], params["opacities"], params["colors"],
                        t["viewmats"], t["Ks"], res, res, background=torch.ones(3, device=device), backend=backend)
        out.image.mean().backward()

    cover = float(fwd().alpha.mean())
    return time_ms(fwd, device, repeats), time_ms(fwd_bwd, device, repeats), cover


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cpu-only", action="store_true")
    ap.add_argument("--repeats", type=int, default=0, help="timed passes (default 20 on CUDA, 3 on CPU)")
    args = ap.parse_args()
    rows = []
    cuda = torch.cuda.is_available() and not args.cpu_only
    combos = [(n, r) for n in SIZES for r in RESOLUTIONS]
    if cuda:
        name = torch.cuda.get_device_name()
        for backend in [b for b in available_backends() if b == "gsplat"] + ["torch"]:
            for n, r in combos:
                f, fb, cov = bench(backend, "cuda", n, r, args.repeats or 20)
                rows.append((f"{backend} ({name})", n, r, f, fb, cov))
    threads = torch.get_num_threads()
    cpu = f"torch (CPU, {threads} threads)"
    for n, r in [(20_000, 256)] + combos:
        if n * r * r > CPU_MAX_WORK:
            rows.append((cpu, n, r, None, None, None))
            continue
        f, fb, cov = bench("torch", "cpu", n, r, args.repeats or 3)
        rows.append((cpu, n, r, f, fb, cov))
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {threads} CPU threads\n")
    print("| backend | Gaussians | image | forward ms | forward+backward ms | mean alpha |")
    print("|---|---:|---:|---:|---:|---:|")
    for b, n, r, f, fb, cov in rows:
        if f is None:
            print(f"| {b} | {n:,} | {r}² | skipped (minutes per pass on CPU) | skipped | |")
        else:
            print(f"| {b} | {n:,} | {r}² | {f:.1f} | {fb:.1f} | {cov:.2f} |")


if __name__ == "__main__":
    main()
