"""Flow-only training on a random subset of the face Gaussians: fit and time.

    python bench/flow_sample.py DATA [--samples 0 1000] [--steps 60] [--face-points 6000]

For each ``--samples`` value (0: all face Gaussians) the same fresh subject
(same seed, so the same Gaussians, networks and batches) runs ``--steps``
flow warm-up steps (``TrainOptions.flow_sample``), and every ``--every`` steps
the whole flow term, over all face Gaussians, is measured on fixed frames
(``--frames`` windows drawn from their own generator). Equal steps show what
the subset's noisier gradient costs; the seconds show what it saves.
"""
from __future__ import annotations

import argparse
import tempfile

import torch

from ua3dtalk.train import Batches, TrainOptions, Trainer


def whole_flow(trainer: Trainer, frames: list[tuple[dict, object]]) -> float:
    """The flow term over all face Gaussians, averaged over the fixed frames (in eval mode: the
    feature standardisers' running statistics must not learn from the measurement)."""
    model = trainer.model.eval()
    with torch.no_grad():
        total = sum(float(trainer._flow_term(batch, cond)) for batch, cond in frames)
    model.train()
    return total / len(frames)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("--samples", type=int, nargs="+", default=[0, 1000])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--every", type=int, default=20)
    ap.add_argument("--frames", type=int, default=6, help="fixed windows the whole flow term is measured on")
    ap.add_argument("--face-points", type=int, default=6000)
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--device", default=None)
    a = ap.parse_args()
    print("| face Gaussians per step | step | whole flow term | training seconds |")
    print("| ---: | ---: | ---: | ---: |")
    for sample in a.samples:
        with tempfile.TemporaryDirectory() as out:
            trainer = Trainer(a.data, out, TrainOptions(iterations=100, size=a.size, device=a.device, save_every=10**9,
                                                        log_every=10**9, flow_warmup=a.steps, flow_sample=sample,
                                                        motion_basis=True, stage2_at=0, face_points=a.face_points))
            fixed = Batches(trainer.data, trainer.batches.window, torch.Generator().manual_seed(1))
            frames = [trainer._batch(fixed) for _ in range(a.frames)]
            label = sample or f"all ({trainer.model.face.num_points})"
            print(f"| {label} | 0 | {whole_flow(trainer, frames):.5f} | 0 |", flush=True)
            for until in range(a.every, a.steps + 1, a.every):
                trainer.run(until=until)   # its steps' own time, not the saves'
                print(f"| {label} | {until} | {whole_flow(trainer, frames):.5f} | {trainer.train_seconds:.1f} |",
                      flush=True)


if __name__ == "__main__":
    main()
