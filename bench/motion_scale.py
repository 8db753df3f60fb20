"""Is the trained motion as large as the images want? Renders a subject with every
Gaussian's offset scaled about its mean over the rendered frames of a clip
(``mean + s * (offset - mean)``, both branches), and scores the head region.

    python bench/motion_scale.py --subject checkpoints/demo --data data/demo [--device cuda]

If the image loss damped the lips' motion below what the audio predicts well, a
scale above 1 would lift held-out PSNR; if the damping is the image loss's best
guess for motion it cannot predict, 1 is the best scale. Held-out frames are
each clip's first ``--heldout-frames`` (as ``ua3dtalk eval --max-frames``),
training frames each training clip's first ``--train-frames`` (0 skips a split).
"""
from __future__ import annotations

import argparse
from dataclasses import replace

import torch

from ua3dtalk import audio as audio_io
from ua3dtalk.data.dataset import SubjectDataset, head_region
from ua3dtalk.deform import DeformOutput
from ua3dtalk.evaluate import items_conditioning
from ua3dtalk.metrics import psnr, ssim
from ua3dtalk.model import TalkingHead, load_checkpoint
from ua3dtalk.pipeline import pick_device


class OffsetScaler:
    """Forward hooks on both motion networks: record each branch's offsets, or replace
    them by ``mean + scale * (offset - mean)`` with the recorded per-Gaussian mean."""

    def __init__(self, model: TalkingHead) -> None:
        self.scale: float | None = None
        self.means: dict[str, torch.Tensor] = {}
        for name in ("face_net", "mouth_net"):
            getattr(model, name).register_forward_hook(self._hook(name))

    def _hook(self, name: str):  # noqa: ANN202
        def hook(_module: torch.nn.Module, _inputs: tuple, out: DeformOutput) -> DeformOutput:
            if self.scale is None:
                self.means[name] = out.d_xyz.mean(0, keepdim=True)
                return out
            mean = self.means[name]
            return replace(out, d_xyz=mean + self.scale * (out.d_xyz - mean))
        return hook


@torch.no_grad()
def score_split(model: TalkingHead, scaler: OffsetScaler, extractor: audio_io.FeatureExtractor,
                data: SubjectDataset, frames: int, scales: list[float], device: torch.device
                ) -> dict[float, tuple[float, float]]:
    """Mean head PSNR and SSIM over the split's clips' first ``frames`` frames, per scale."""
    psnrs: dict[float, list[torch.Tensor]] = {s: [] for s in scales}
    ssims: dict[float, list[torch.Tensor]] = {s: [] for s in scales}
    for clip in range(len(data.clips)):
        features = extractor(data.audio(clip)[0]).to(device, torch.float32)
        items = [data[i] for i in list(data.clip_frames(clip))[:frames]]
        cond = items_conditioning(items, features)
        truth = torch.stack([torch.as_tensor(it["image"]) for it in items]).float().to(device)
        head = torch.stack([head_region(torch.as_tensor(it["mask"])) for it in items]).to(device)
        scaler.scale = None
        model(cond, size=data.size, with_maps=False)
        for s in scales:
            scaler.scale = s
            image = model(cond, size=data.size, with_maps=False).image.clamp(0, 1)
            image = (image * 255 + 0.5).floor().permute(0, 3, 1, 2) / 255   # as ua3dtalk eval's uint8 frames
            psnrs[s].append(psnr(image, truth, head))
            ssims[s].append(ssim(image, truth, head))
    return {s: (float(torch.cat(psnrs[s]).mean()), float(torch.cat(ssims[s]).mean())) for s in scales}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--subject", default="checkpoints/demo")
    ap.add_argument("--data", default="data/demo")
    ap.add_argument("--scales", type=float, nargs="+", default=[0.8, 0.9, 1.0, 1.1, 1.25, 1.5])
    ap.add_argument("--heldout-frames", type=int, default=15)
    ap.add_argument("--train-frames", type=int, default=4)
    ap.add_argument("--device", default=None)
    args = ap.parse_args()
    device = pick_device(args.device)
    model = load_checkpoint(args.subject, device).eval()
    scaler = OffsetScaler(model)
    extractor = audio_io.get_extractor(model.cfg.audio_features, device=str(device))
    splits = [(label, split, frames) for label, split, frames in (("held out", "heldout", args.heldout_frames),
                                                                   ("training frames", "train", args.train_frames))
              if frames > 0]
    results = {label: score_split(model, scaler, extractor, SubjectDataset(args.data, split), frames,
                                  args.scales, device) for label, split, frames in splits}
    print(f"{args.subject} on {device}: head-region PSNR (dB) / SSIM with the offsets scaled about "
          "each clip's mean\n")
    print("| scale | " + " | ".join(results) + " |")
    print("| ---: |" + " ---: |" * len(results))
    for s in args.scales:
        print(f"| {s:g} | " + " | ".join(f"{r[s][0]:.2f} / {r[s][1]:.4f}" for r in results.values()) + " |")


if __name__ == "__main__":
    main()
