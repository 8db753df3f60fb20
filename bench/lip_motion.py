"""Do the rendered lips move as far as the ground truth's, and which conditioning carries that motion?

    python bench/lip_motion.py --subject checkpoints/demo --data data/demo [--clip-stride 4] [--size 128]
        [--device cuda]

Both tables ask a fitting question, on frames of training clips (held-out clips
only as the second table's check):

1. Rendered motion. The face Gaussians lying on a landmark in the reference
   frame (within 4 px of its projection) are moved by the deformation of each
   frame; the vertical distance between two such groups (upper and lower lip
   midpoints; nose tip and chin) is compared with the ground-truth landmarks'
   distance: means, slope of rendered on true (1 = full amplitude) and
   correlation. A slope well under 1 where the correlation is high means
   motion damped toward the canonical face. The inside-mouth set's row splits
   it at its median height in the reference frame and compares the distance
   between the halves' means with the inner lips' gap: lower teeth that drop
   with the jaw give a slope near 1, a set that moves as one block 0.
2. Information in the views. How well a ridge regression from each per-frame
   view feature the deformation reads (audio code, lip-sync content, style)
   predicts the ground-truth lip gap, fitted on training frames and applied to
   held-out ones, beside two references: the raw audio features (a window of
   +-2 frames) and those with the emotion label and level.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from ua3dtalk import audio as audio_io
from ua3dtalk.config import EMOTIONS
from ua3dtalk.data.dataset import SubjectDataset
from ua3dtalk.evaluate import items_conditioning
from ua3dtalk.landmark_flow import project
from ua3dtalk.model import TalkingHead, load_checkpoint
from ua3dtalk.pipeline import pick_device
from ua3dtalk.train import REFERENCE_FRAME

PAIRS = {"lips (0 to 17)": (0, 17), "jaw (1 to 152)": (1, 152)}   # MediaPipe: lip midpoints; nose tip, chin
LIP_GAP = PAIRS["lips (0 to 17)"]
INNER_GAP = (13, 14)   # MediaPipe: inner lip midpoints, what the inside-mouth row is compared with
INSIDE = "inside of the mouth (halves; truth 13 to 14)"
NEAR_PX = 4.0


def reference_pixels(model: TalkingHead, reference: dict, xyz: torch.Tensor) -> torch.Tensor:
    """[N,2] canonical Gaussians ``xyz`` projected into the reference frame."""
    return project(xyz, torch.as_tensor(reference["viewmat"])[None].to(model.K), model.K)[0]


def landmark_groups(model: TalkingHead, reference: dict) -> dict[int, torch.Tensor]:
    """Indices of the face Gaussians within NEAR_PX of each landmark of PAIRS in the reference frame."""
    pixels = reference_pixels(model, reference, model.face.xyz)
    landmarks = torch.as_tensor(reference["landmarks"]).to(pixels)
    groups = {}
    for k in {k for pair in PAIRS.values() for k in pair}:
        groups[k] = ((pixels - landmarks[k]).norm(dim=-1) < NEAR_PX).nonzero()[:, 0]
        if len(groups[k]) == 0:
            raise ValueError(f"no face Gaussian within {NEAR_PX} px of landmark {k} in the reference frame")
    return groups


def mouth_halves(model: TalkingHead, reference: dict) -> torch.Tensor:
    """[N] True for the inside-mouth Gaussians below the set's median height in the reference frame."""
    height = reference_pixels(model, reference, model.mouth.xyz)[:, 1]
    return height > height.median()


def clip_features(data: SubjectDataset, extractor, device: torch.device) -> list[torch.Tensor]:  # noqa: ANN001
    """Audio features of every clip of the split, computed once for both tables."""
    return [extractor(data.audio(clip)[0]).to(device, torch.float32) for clip in range(len(data.clips))]


def rendered_motion(model: TalkingHead, data: SubjectDataset, features: list[torch.Tensor],
                    clip_stride: int, stride: int = 6, per_clip: int = 12, batch: int = 4
                    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per pair: (true, rendered) vertical distances in pixels over sampled frames of every
    ``clip_stride``-th training clip (rendering is the slow part on a CPU), ``batch`` frames a pass."""
    reference = data[REFERENCE_FRAME]
    groups, lower = landmark_groups(model, reference), mouth_halves(model, reference)
    out: dict[str, tuple[list, list]] = {name: ([], []) for name in (*PAIRS, INSIDE)}
    for clip in range(0, len(data.clips), clip_stride):
        frames = list(data.clip_frames(clip))[::stride][:per_clip]
        for start in range(0, len(frames), batch):
            items = [data[i] for i in frames[start:start + batch]]
            for name, (true, rendered) in frame_distances(model, items, features[clip], groups, lower).items():
                out[name][0].append(true)
                out[name][1].append(rendered)
    return {name: (np.concatenate(t), np.concatenate(r)) for name, (t, r) in out.items()}


def frame_distances(model: TalkingHead, items: list[dict], features: torch.Tensor,
                    groups: dict[int, torch.Tensor], lower: torch.Tensor) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per row: the true and rendered vertical distances in these frames (one forward pass)."""
    cond = items_conditioning(items, features)
    deformed = model(cond, size=64, with_maps=False)   # the offsets do not depend on the size; the render is unused
    moved = project(model.face.xyz + deformed.face.d_xyz, cond.viewmats, model.K)
    inside = project(model.mouth.xyz + deformed.mouth.d_xyz, cond.viewmats, model.K)[..., 1]
    truth = torch.stack([torch.as_tensor(it["landmarks"]) for it in items]).to(moved)
    rows = {name: (truth[:, b, 1] - truth[:, a, 1], moved[:, groups[b], 1].mean(1) - moved[:, groups[a], 1].mean(1))
            for name, (a, b) in PAIRS.items()}
    rows[INSIDE] = (truth[:, INNER_GAP[1], 1] - truth[:, INNER_GAP[0], 1],
                    inside[:, lower].mean(1) - inside[:, ~lower].mean(1))
    return {name: (true.cpu().numpy(), rendered.cpu().numpy()) for name, (true, rendered) in rows.items()}


def view_features(model: TalkingHead, data: SubjectDataset, clip_audio: list[torch.Tensor]
                  ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per-frame features of every clip of the split, by name, and the ground-truth lip gaps."""
    feats: dict[str, list[np.ndarray]] = {"audio code": [], "content": [], "style": [],
                                          "raw audio (+-2 frames)": [], "raw audio + emotion label": []}
    gaps = []
    for clip, info in enumerate(data.clips):
        rows = [data.global_index(i) for i in data.clip_frames(clip)]
        n = len(rows)
        features = clip_audio[clip][:n]
        prior = model.prior(features, torch.arange(n, device=features.device))
        for key, name in (("audio", "audio code"), ("content", "content"), ("style", "style")):
            feats[name].append(prior[key].cpu().numpy())
        padded = torch.cat([features[:1].expand(2, -1), features, features[-1:].expand(2, -1)])
        raw = torch.cat([padded[i:i + n] for i in range(5)], 1).cpu().numpy()
        label = np.zeros((n, 3 * len(EMOTIONS)))
        label[:, 3 * EMOTIONS.index(info.emotion) + info.level - 1] = 1
        feats["raw audio (+-2 frames)"].append(raw)
        feats["raw audio + emotion label"].append(np.concatenate([raw, label], 1))
        landmarks = data.landmarks[rows]
        gaps.append(landmarks[:, LIP_GAP[1], 1] - landmarks[:, LIP_GAP[0], 1])
    return {name: np.concatenate(v) for name, v in feats.items()}, np.concatenate(gaps)


def ridge_correlations(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                       penalty: float = 100.0) -> tuple[float, float]:
    """Correlation of a standardised ridge fit with the targets: on its training rows, and on the test rows."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    a = np.c_[(train_x - mean) / std, np.ones(len(train_x))]
    b = np.c_[(test_x - mean) / std, np.ones(len(test_x))]
    w = np.linalg.solve(a.T @ a + penalty * np.eye(a.shape[1]), a.T @ train_y)
    return float(np.corrcoef(a @ w, train_y)[0, 1]), float(np.corrcoef(b @ w, test_y)[0, 1])


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--subject", default="checkpoints/demo")
    ap.add_argument("--data", default="data/demo")
    ap.add_argument("--clip-stride", type=int, default=1, help="render every N-th training clip (4: about 10 min on 2 cores)")
    ap.add_argument("--size", type=int, default=None, help="the subject's image size where it is not the data's")
    ap.add_argument("--device", default=None)
    args = ap.parse_args()
    device = pick_device(args.device)
    model = load_checkpoint(args.subject, device)
    train, heldout = (SubjectDataset(args.data, split, size=args.size) for split in ("train", "heldout"))
    extractor = audio_io.get_extractor(model.cfg.audio_features, device=str(device))
    print(f"{args.subject} on {device}\n")
    print("| training frames | true (px) | rendered (px) | slope | correlation |")
    print("| --- | ---: | ---: | ---: | ---: |")
    train_audio = clip_features(train, extractor, device)
    for name, (true, rendered) in rendered_motion(model, train, train_audio, args.clip_stride).items():
        slope = np.polyfit(true, rendered, 1)[0]
        print(f"| {name} | {true.mean():.1f} ± {true.std():.1f} | {rendered.mean():.1f} ± {rendered.std():.1f} "
              f"| {slope:.2f} | {np.corrcoef(true, rendered)[0, 1]:.2f} |")
    train_x, train_y = view_features(model, train, train_audio)
    test_x, test_y = view_features(model, heldout, clip_features(heldout, extractor, device))
    print("\n| lip gap from | dims | training fit (corr) | held out (corr) |")
    print("| --- | ---: | ---: | ---: |")
    for name in train_x:
        fit, test = ridge_correlations(train_x[name], train_y, test_x[name], test_y)
        print(f"| {name} | {train_x[name].shape[1]} | {fit:.2f} | {test:.2f} |")


if __name__ == "__main__":
    main()
