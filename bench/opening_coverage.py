"""Do the face Gaussians leave the mouth's opening, and close over shut lips? Renders the face
Gaussians alone (``TalkingHead.face_coverage``, what ``ua3dtalk train --opening-weight`` holds to
the ground truth) on the frames ``ua3dtalk eval --max-frames N`` renders, and reports per clip:

- *opening covered*: the face's mean opacity inside the ground truth's mouth opening (its mouth
  mask: teeth, tongue, the dark inside), which should be 0: skin drawn across an open mouth;
- *lips uncovered*: one minus the face's opacity over the rest of the lip box, which should be 0:
  holes in the lips where the inside of the mouth shows through.

    python bench/opening_coverage.py --subject checkpoints/demo --data data/demo [--max-frames 15] [--device cuda]
        [--split train] [--only surprised_level_3 ...]
"""
from __future__ import annotations

import argparse

import torch

from ua3dtalk import audio as audio_io
from ua3dtalk.data.dataset import MOUTH_LABEL, SubjectDataset, head_region
from ua3dtalk.evaluate import items_conditioning
from ua3dtalk.metrics import lip_box
from ua3dtalk.model import load_checkpoint
from ua3dtalk.pipeline import pick_device


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--subject", default="checkpoints/demo")
    ap.add_argument("--data", default="data/demo")
    ap.add_argument("--split", default="heldout", choices=("heldout", "train"))
    ap.add_argument("--only", nargs="*", default=None, help="clips whose names contain one of these")
    ap.add_argument("--max-frames", type=int, default=15, help="first N frames of each clip, as `ua3dtalk eval`")
    ap.add_argument("--margin", type=float, default=10.0, help="pixels around the lip landmarks")
    ap.add_argument("--size", type=int, default=None, help="render at this size (default: the dataset's)")
    ap.add_argument("--batch-size", type=int, default=4, help="frames per forward pass")
    ap.add_argument("--device", default=None)
    args = ap.parse_args()
    device = pick_device(args.device)
    model = load_checkpoint(args.subject, device).eval()
    data = SubjectDataset(args.data, args.split, size=args.size)
    extractor = audio_io.get_extractor(model.cfg.audio_features, device=str(device))
    print(f"{args.subject} on {device}: {args.split} clips, first {args.max_frames} frames at {data.size} px, "
          f"lip box margin {args.margin:g} px\n")
    print("| clip | opening covered | lips uncovered |")
    print("| --- | ---: | ---: |")
    totals = torch.zeros(4, dtype=torch.float64)   # covered opacity, opening pixels, holes, lip pixels
    for clip, info in enumerate(data.clips):
        if args.only and not any(word in info.name for word in args.only):
            continue
        features = extractor(data.audio(clip)[0]).to(device, torch.float32)
        indices = list(data.clip_frames(clip))[:args.max_frames]
        sums = torch.zeros(4, dtype=torch.float64)
        for lo in range(0, len(indices), args.batch_size):
            items = [data[i] for i in indices[lo:lo + args.batch_size]]
            cond = items_conditioning(items, features)
            masks = torch.stack([torch.as_tensor(it["mask"]) for it in items]).to(device)
            landmarks = torch.stack([torch.as_tensor(it["landmarks"]) for it in items]).float().to(device)
            views, embedding, _ = model.frame_views(cond)
            face = model.face_motion(views, embedding, model.cfg.fusion)
            coverage = model.face_coverage(cond, face, data.size).double()
            box = lip_box(landmarks, data.size, args.margin) & head_region(masks)
            opening = box & (masks == MOUTH_LABEL)
            lips = box & ~opening
            sums += torch.stack([coverage[opening].sum(), opening.sum(),
                                 (1 - coverage[lips]).sum(), lips.sum()]).cpu()
        totals += sums
        print(f"| {info.name} | {sums[0] / sums[1].clamp_min(1):.3f} | {sums[2] / sums[3].clamp_min(1):.3f} |")
    print(f"| **all** | {totals[0] / totals[1].clamp_min(1):.3f} | {totals[2] / totals[3].clamp_min(1):.3f} |")


if __name__ == "__main__":
    main()
