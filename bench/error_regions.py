"""Where the held-out error sits: inside a box around the lips, or elsewhere on the head.

    python bench/error_regions.py --subject checkpoints/demo --data data/demo [--max-frames 15] [--device cuda]
        [--split train] [--only surprised_level_3 ...] [--from-frame 8]

Renders the frames ``ua3dtalk eval --max-frames N`` renders (the first N of each
held-out clip) and splits the head region's squared error between the lip box
(the ground truth's lip landmarks' bounding box, grown by ``--margin`` pixels)
and the rest of the head. Prints, per clip and overall, PSNR over the head, over
the lip box and outside it, and the lip box's share of the error and of the area,
then the part of the box where the ground truth shows the mouth's opening (its
mouth mask: teeth, tongue, the dark inside) and that part's share of the error,
and the rest of the head above and below the nose tip (brows and eyes; cheeks and
jaw): which part of the face a change must fix to move the held-out PSNR.
``--from-frame N`` scores only frames N and on of the first ``--max-frames`` (each
clip opens with 0.3 s of silence, frames 0 to 7 at 25 fps). ``--split
train`` asks the same of training clips (is it fitting or generalising that
fails?), ``--only`` keeps the clips whose names contain one of the words. PSNR here
pools the squared error over a clip's frames (the eval averages per-frame PSNR,
which reads a little higher).
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from ua3dtalk import audio as audio_io
from ua3dtalk.data.dataset import MOUTH_LABEL, SubjectDataset, head_region
from ua3dtalk.data.landmarks import NOSE_TIP
from ua3dtalk.evaluate import clip_ground_truth, render_clip
from ua3dtalk.metrics import lip_box
from ua3dtalk.model import load_checkpoint
from ua3dtalk.pipeline import pick_device


def decibels(squared_error: float, count: int) -> float:
    return float(10 * np.log10(max(count, 1) / max(squared_error, 1e-12)))


def row(name: str, sums: np.ndarray) -> str:
    box_error, box_count, rest_error, rest_count, opening_error, opening_count, upper_error, upper_count = sums
    total = box_error + rest_error
    return (f"| {name} | {decibels(total, int(box_count + rest_count)):.2f} "
            f"| {decibels(box_error, int(box_count)):.2f} | {decibels(rest_error, int(rest_count)):.2f} "
            f"| {box_error / total:.2f} | {box_count / (box_count + rest_count):.2f} "
            f"| {decibels(opening_error, int(opening_count)):.2f} | {opening_error / total:.2f} "
            f"| {decibels(upper_error, int(upper_count)):.2f} "
            f"| {decibels(rest_error - upper_error, int(rest_count - upper_count)):.2f} |")


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--subject", default="checkpoints/demo")
    ap.add_argument("--data", default="data/demo")
    ap.add_argument("--max-frames", type=int, default=15, help="first N frames of each clip, as `ua3dtalk eval`")
    ap.add_argument("--margin", type=float, default=10.0, help="pixels around the lip landmarks")
    ap.add_argument("--device", default=None)
    ap.add_argument("--split", default="heldout", choices=("heldout", "train"))
    ap.add_argument("--only", nargs="*", default=None, help="clips whose names contain one of these")
    ap.add_argument("--from-frame", type=int, default=0, help="score frames from this one on (0: all)")
    args = ap.parse_args()
    device = pick_device(args.device)
    model = load_checkpoint(args.subject, device)
    data = SubjectDataset(args.data, args.split)
    extractor = audio_io.get_extractor(model.cfg.audio_features, device=str(device))
    print(f"{args.subject} on {device}: {args.split} clips, frames {args.from_frame} to {args.max_frames - 1}, "
          f"lip box margin {args.margin:g} px\n")
    print("| clip | head PSNR | lip box PSNR | rest PSNR | lip box: share of error | share of area "
          "| opening PSNR | opening: share of error | rest above the nose tip | rest below |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    totals = np.zeros(8)   # squared error and pixel count: lip box, rest, the opening inside the box, rest above the nose
    for clip, info in enumerate(data.clips):
        if args.only and not any(word in info.name for word in args.only):
            continue
        features = extractor(data.audio(clip)[0]).to(device, torch.float32)
        frames, _ = render_clip(model, data, clip, features, None, max_frames=args.max_frames)
        truth, masks, landmarks = clip_ground_truth(data, clip, args.max_frames)
        keep = slice(args.from_frame, None)
        frames, truth, masks, landmarks = frames[keep], truth[keep], masks[keep], landmarks[keep]
        error = (((frames.astype(np.float64) - truth) / 255) ** 2).mean(-1)   # mean over the channels
        head = head_region(masks)
        box = lip_box(torch.from_numpy(landmarks), data.size, args.margin).numpy() & head
        rest = head & ~box
        opening = box & (masks == MOUTH_LABEL)
        rows = np.arange(data.size)[None, :, None]
        upper = rest & (rows < landmarks[:, NOSE_TIP, 1][:, None, None])
        sums = np.array([error[box].sum(), box.sum(), error[rest].sum(), rest.sum(),
                         error[opening].sum(), opening.sum(), error[upper].sum(), upper.sum()])
        totals += sums
        print(row(info.name, sums))
    print(row("**all**", totals))


if __name__ == "__main__":
    main()
