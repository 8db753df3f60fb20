"""Ablation: the same subject with uncertainty fusion, with uniform fusion, and
without the emotion code-books, evaluated on the same held-out clips.

    python bench/ablation.py DATA --work DIR [--iterations 2100] [--size 512] [--device cuda]
    python bench/ablation.py DATA --work DIR --evaluate-only     # variants already trained in DIR

Each variant is trained by the same command with one switch changed
(``--fusion uniform`` / ``--no-codebooks``), so everything else is equal. Prints
a markdown table: each metric, each variant, and its difference from the full model.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ua3dtalk.evaluate import evaluate_model
from ua3dtalk.model import load_checkpoint
from ua3dtalk.pipeline import pick_device
from ua3dtalk.train import TrainOptions, Trainer

VARIANTS = {
    "uncertainty": {},
    "uniform": {"fusion": "uniform"},
    "no-codebooks": {"codebooks": False},
}
METRICS = ("psnr", "ssim", "lmd_mouth", "mouth_open_corr", "sync_confidence", "emotion_accuracy",
           "expression_frechet_mean")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("--work", required=True, help="folder for the variants' checkpoints and metrics")
    ap.add_argument("--iterations", type=int, default=2100)
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--device", default=None)
    ap.add_argument("--evaluate-only", action="store_true")
    a = ap.parse_args()
    work, device = Path(a.work), pick_device(a.device)
    reports = {}
    for name, switches in VARIANTS.items():
        folder = work / name
        if not a.evaluate_only:
            Trainer(a.data, folder, TrainOptions(iterations=a.iterations, size=a.size, device=a.device,
                                                 **switches)).run()
        report = evaluate_model(load_checkpoint(folder, device), a.data, size=a.size)
        (folder / "ablation_eval.json").write_text(json.dumps(report, indent=2) + "\n")
        reports[name] = report
    base = reports["uncertainty"]
    print("| metric | " + " | ".join(reports) + " | uniform − full | no-codebooks − full |")
    print("| --- |" + " ---: |" * (len(reports) + 2))
    for metric in METRICS:
        values = [r.get(metric) for r in reports.values()]
        cells = ["n/a" if v is None else f"{v:.4f}" for v in values]
        diffs = ["n/a" if v is None or base.get(metric) is None else f"{v - base[metric]:+.4f}"
                 for v in values[1:]]
        print(f"| {metric} | " + " | ".join(cells + diffs) + " |")


if __name__ == "__main__":
    main()
