"""Cost of the conditioning networks per batch of frames (paper preset).

Prior Extraction (audio window net + lip expert audio path + style), Emotion
Distillation (speech-emotion encoder, label, fusion; with and without the visual
teacher) and the per-Gaussian emotion encoding (tri-plane + code-books) for N
Gaussians. Forward and forward+backward medians in ms. Prints a markdown table.

    python bench/priors.py                  # CUDA: N = 20k, 50k, 100k; CPU: small N
    python bench/priors.py --batch 1 --repeats 50
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ua3dtalk.config import preset  # noqa: E402
from ua3dtalk.emotion import EmotionDistillation  # noqa: E402
from ua3dtalk.prior import PriorExtractor  # noqa: E402


def median_ms(fn: Callable[[], torch.Tensor], device: torch.device, repeats: int, backward: bool) -> float:
    def once() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        if backward:
            fn().sum().backward()
        else:
            with torch.no_grad():
                fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) * 1e3
    for _ in range(3):
        once()
    return statistics.median(once() for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4, help="frames per batch")
    parser.add_argument("--n", type=int, nargs="*", default=None, help="Gaussian counts")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    counts = args.n or ([20_000, 50_000, 100_000] if device.type == "cuda" else [2_000])
    cfg = preset("paper")
    torch.manual_seed(0)
    prior, emotion = PriorExtractor(cfg).to(device), EmotionDistillation(cfg).to(device)
    b, t = args.batch, 250
    features = torch.randn(t, cfg.audio_dim, device=device)
    frames = torch.randint(0, t, (b,), device=device)
    label, intensity = torch.randint(0, 8, (b,), device=device), torch.rand(b, device=device)
    crops = torch.rand(b, 3, 128, 128, device=device)
    embedding = emotion(features, frames, label, intensity)["embedding"].detach()

    def prior_sum() -> torch.Tensor:
        return sum(v.sum() for v in prior(features, frames).values())

    rows: list[tuple[str, Callable[[], torch.Tensor]]] = [
        ("prior extraction", prior_sum),
        ("emotion (audio + label)", lambda: emotion(features, frames, label, intensity)["embedding"]),
        ("emotion (+ visual teacher)", lambda: emotion(features, frames, label, intensity, crops)["embedding"]),
    ]
    for n in counts:
        xyz = torch.rand(n, 3, device=device) * 2 - 1
        rows.append((f"emotion encoding N={n // 1000}k", lambda xyz=xyz: emotion.encoding(xyz, embedding)))
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, "
          f"preset paper, batch {b} frames, median of {args.repeats}\n")
    print("| module | forward ms | forward+backward ms |\n|---|---:|---:|")
    for name, fn in rows:
        fwd = median_ms(fn, device, args.repeats, backward=False)
        both = median_ms(fn, device, args.repeats, backward=True)
        print(f"| {name} | {fwd:.2f} | {both:.2f} |")


if __name__ == "__main__":
    main()
