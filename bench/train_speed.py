"""Training speed per phase on a subject dataset (iterations/s), and a check
that the CUDA path trains, saves, resumes and renders.

    python bench/train_speed.py DATA [--size 512] [--iterations 200] [--device cuda]
        [--flow-warmup N] [--flow-priors N] [--flow-sample N] [--motion-basis] [--stage2-at S]
"""
from __future__ import annotations

import argparse
import tempfile
import time
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
    ap.add_argument("--flow-warmup", type=int, default=0)
    ap.add_argument("--flow-priors", type=int, default=0)
    ap.add_argument("--flow-sample", type=int, default=0)
    ap.add_argument("--motion-basis", action="store_true")
    ap.add_argument("--stage2-at", type=float, default=0.5)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(a.data, out, TrainOptions(iterations=a.iterations, size=a.size, device=a.device,
                                                    save_every=10**9, log_every=10, flow_warmup=a.flow_warmup,
                                                    flow_priors=a.flow_priors, flow_sample=a.flow_sample,
                                                    motion_basis=a.motion_basis,
                                                    stage2_at=a.stage2_at))
        start = time.perf_counter()
        trainer.run()
        loop = time.perf_counter() - start
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
        print(f"\nwhole loop {loop:.1f} s ({trainer.total / loop:.2f} it/s)")
        print(f"\nPSNR first 10 render iterations {np.mean(psnr[:10]):.2f} dB, last 10 {np.mean(psnr[-10:]):.2f} dB")


if __name__ == "__main__":
    main()
