"""Training speed per phase on a subject dataset (iterations/s), and a check
that the CUDA path trains, saves, resumes and renders.

    python bench/train_speed.py DATA [--size 512] [--iterations 200] [--device cuda]
"""
from __future__ import annotations

import argparse
import tempfile
from collections import defaultdict

import numpy as np

from ua3dtalk.model import load_checkpoint
from ua3dtalk.train import TrainOptions, Trainer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--device", default=None)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(a.data, out, TrainOptions(iterations=a.iterations, size=a.size, device=a.device,
                                                    save_every=10**9, log_every=10))
        trainer.run()
        times: dict[str, list[float]] = defaultdict(list)
        for h in trainer.history:
            times[h["phase"]].append(h["seconds"])
        psnr = [h["psnr"] for h in trainer.history if "psnr" in h]
        model = load_checkpoint(out, trainer.device)
        print(f"\n{trainer.device}, {a.data} at {trainer.data.size}², {trainer.total} iterations, "
              f"{model.face.num_points + model.mouth.num_points} Gaussians at the end\n")
        print("| phase | iterations | ms / iteration (median) |")
        print("| --- | ---: | ---: |")
        for phase, values in times.items():
            print(f"| {phase} | {len(values)} | {1000 * np.median(values[1:] or values):.1f} |")
        print(f"\nPSNR first 10 render iterations {np.mean(psnr[:10]):.2f} dB, last 10 {np.mean(psnr[-10:]):.2f} dB")


if __name__ == "__main__":
    main()
