"""Does the emotion label shape the face? Training frames of every neutral and
level-3 clip, rendered with their own label and with the neutral label.

    python bench/label_effect.py --subject checkpoints/demo --data data/demo [--size 512] [--device cuda]

Prints, per clip, the head-region PSNR against the ground truth for both labels,
the mean absolute change the label makes, and what the speech-emotion encoder
reads from the clip's audio (the label ``emotion="auto"`` would pick).
"""
from __future__ import annotations

import argparse
from dataclasses import replace

import torch

from ua3dtalk import audio as audio_io
from ua3dtalk.config import EMOTIONS
from ua3dtalk.data.dataset import SubjectDataset, head_region
from ua3dtalk.evaluate import items_conditioning
from ua3dtalk.metrics import psnr
from ua3dtalk.model import load_checkpoint
from ua3dtalk.pipeline import pick_device


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--subject", default="checkpoints/demo")
    ap.add_argument("--data", default="data/demo")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--frames", type=int, default=6, help="frames per clip, from its 20th on")
    ap.add_argument("--device", default=None)
    args = ap.parse_args()
    device = pick_device(args.device)
    model = load_checkpoint(args.subject, device)
    data = SubjectDataset(args.data, "train", size=args.size)
    extractor = audio_io.get_extractor(model.cfg.audio_features, device=str(device))
    print(f"{args.subject} on {device}, training frames at {args.size}²\n")
    print("| clip | PSNR, own label | PSNR, neutral label | label effect | speech reads |")
    print("| --- | ---: | ---: | ---: | --- |")
    for clip, info in enumerate(data.clips):
        if info.level != 3 and info.emotion != "neutral":
            continue
        features = extractor(data.audio(clip)[0]).to(device, torch.float32)
        items = [data[i] for i in list(data.clip_frames(clip))[20:20 + args.frames]]
        truth = torch.stack([torch.as_tensor(it["image"]) for it in items]).float().to(device)
        head = torch.stack([head_region(torch.as_tensor(it["mask"])) for it in items]).to(device)
        own_label = items_conditioning(items, features)
        neutral_label = replace(own_label, emotion=torch.zeros_like(own_label.emotion))
        renders = [model(cond, size=args.size, with_maps=False).image.permute(0, 3, 1, 2).clamp(0, 1)
                   for cond in (own_label, neutral_label)]
        own, neutral = (float(psnr(r, truth, head).mean()) for r in renders)
        heard = EMOTIONS[int(model.emotion.predict_emotion(features, own_label.frames)[1].mean(0).argmax())]
        effect = float((renders[0] - renders[1]).abs().mean())
        print(f"| {info.name} | {own:.2f} | {neutral:.2f} | {effect:.1e} | {heard} |")


if __name__ == "__main__":
    main()
