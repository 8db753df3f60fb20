"""What each Gaussian set draws in the mouth: a picture, not a figure.

    python bench/mouth_layers.py --subject checkpoints/demo --data data/demo --clip happy_level_3 \
        --frames 4 7 10 --out mouth_layers.png [--device cuda]

For frames of one held-out clip, a lip crop per row: the ground truth, the
render, the face set alone and the inside-mouth set alone (the other set's
opacities at zero). Where the ground truth shows teeth and the render does not,
the last two columns say which set is at fault: the face covering the opening,
or the inside-mouth set drawing the wrong thing there.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
from PIL import Image

from ua3dtalk import audio as audio_io
from ua3dtalk.data.dataset import SubjectDataset
from ua3dtalk.data.landmarks import LIPS_OUTER
from ua3dtalk.evaluate import clip_ground_truth, render_clip
from ua3dtalk.model import load_checkpoint
from ua3dtalk.pipeline import pick_device

HIDDEN = -30.0   # raw opacity whose sigmoid is zero in float32


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--subject", default="checkpoints/demo")
    ap.add_argument("--data", default="data/demo")
    ap.add_argument("--clip", default="happy_level_3", help="first held-out clip whose name contains this")
    ap.add_argument("--frames", type=int, nargs="+", default=[4, 7, 10])
    ap.add_argument("--out", default="mouth_layers.png")
    ap.add_argument("--device", default=None)
    args = ap.parse_args()
    device = pick_device(args.device)
    model = load_checkpoint(args.subject, device)
    data = SubjectDataset(args.data, "heldout")
    clip = next((i for i, info in enumerate(data.clips) if args.clip in info.name), None)
    if clip is None:
        raise SystemExit(f"no held-out clip matches {args.clip!r}: {[info.name for info in data.clips]}")
    n = max(args.frames) + 1
    features = audio_io.get_extractor(model.cfg.audio_features, device=str(device))(data.audio(clip)[0])
    features = features.to(device, torch.float32)
    truth, _, landmarks = clip_ground_truth(data, clip, n)

    layers = [render_clip(model, data, clip, features, None, max_frames=n)[0]]
    for hidden in (model.mouth.opacity_raw, model.face.opacity_raw):
        kept = hidden.data.clone()
        hidden.data.fill_(HIDDEN)
        layers.append(render_clip(model, data, clip, features, None, max_frames=n)[0])
        hidden.data.copy_(kept)

    rows = []
    for i in args.frames:
        cx, cy = landmarks[i][list(LIPS_OUTER), :2].mean(0).round().astype(int)
        crop = np.s_[max(cy - 45, 0):cy + 45, max(cx - 80, 0):cx + 80]
        rows.append(np.concatenate([truth[i][crop]] + [layer[i][crop] for layer in layers], axis=1))
    Image.fromarray(np.concatenate(rows, axis=0)).save(args.out)
    print(f"{args.out}: columns ground truth | render | face set alone | inside-mouth set alone; "
          f"rows: frames {args.frames} of {data.clips[clip].name}")


if __name__ == "__main__":
    main()
