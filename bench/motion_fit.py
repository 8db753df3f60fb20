"""How much of the lips' landmark motion can the face branch reproduce, and from what?

    python bench/motion_fit.py --subject checkpoints/demo --data data/demo [--steps 600]

The landmark flow (ua3dtalk/landmark_flow.py) gives each face Gaussian a target
image motion per frame. This bench asks how closely the face branch's offsets
follow it on the Gaussians bound mostly to lip landmarks, and on the rest of
the face (a sample of each), on training frames and on held-out ones: the
slope of fitted on target motion (1 = full amplitude) and the relative error.
Rows:

- trained subject: the subject's own face branch and views, as trained (image,
  flow and the other losses together);
- refit on its views: a fresh face branch (same sizes and fusion) fitted to the
  flow alone, reading the subject's trained per-frame views, frozen;
- refit from the audio and the label: a fresh face branch fitted to the flow
  alone with a fresh windowed audio net, reading that net's code beside the
  emotion label (one-hot times intensity): what the audio path could carry if
  it learnt from the flow directly;
- oracle code, per tri-plane layout: a fresh face branch (uniform fusion of one
  view) reading each frame's own landmark motion (PCA to the latent size; fitted
  on training frames), so that it could reproduce the target exactly: what the
  position field and decoder can represent at that resolution.

The refits run ``--steps`` Adam steps of ``--batch`` training frames at the
training rates. With ``--truth SYNTH_DIR`` (the ``ua3dtalk synth`` folder the
dataset came from) every row is scored against the synthesized truth's
landmarks, which the video's pixels follow, instead of the dataset's
(MediaPipe's, or moved by ``preprocess --track-lips``), and a row for the
dataset's landmarks themselves comes first; the refits still fit the
dataset's, as training does.
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

import torch
from torch import Tensor

from ua3dtalk import audio as audio_io
from ua3dtalk.config import EMOTIONS
from ua3dtalk.data.dataset import SubjectDataset
from ua3dtalk.data.truth import landmarks_in_crop
from ua3dtalk.deform import MotionNetwork, face_network
from ua3dtalk.evaluate import items_conditioning
from ua3dtalk.landmark_flow import LandmarkFlow, project
from ua3dtalk.metrics import MOUTH
from ua3dtalk.model import TalkingHead, load_checkpoint
from ua3dtalk.prior import AudioWindowNet
from ua3dtalk.train import FIELD_LR, NETWORK_LR, REFERENCE_FRAME

ROWS = ("subject", "refit", "heard", "oracle")
LAYOUTS = {"32; 1, 2 (demo)": (32, (1, 2)), "32; 1, 2, 4": (32, (1, 2, 4)), "64; 1, 2": (64, (1, 2)),
           "64; 1, 2, 4, 8 (paper)": (64, (1, 2, 4, 8))}


class Frames:
    """One split's frames: landmark motion targets, cameras and the subject's per-frame views."""

    def __init__(self, model: TalkingHead, data: SubjectDataset, flow: LandmarkFlow) -> None:
        rows = [data.global_index(i) for i in range(len(data))]
        self.landmarks = torch.from_numpy(data.landmarks[rows, :, :2]).float() * data.size / data.source_size
        self.viewmats = data.viewmats[rows].float()
        self.motion = flow.motion(self.landmarks, self.viewmats) - flow.reference_motion      # [T, L, 2]
        self.scored = self.motion   # what the rows are scored against (see --truth)
        extractor = audio_io.get_extractor(model.cfg.audio_features, device="cpu")
        views, embeddings, self.features, clip_of, frame_of, label = [], [], [], [], [], []
        with torch.no_grad():
            for clip, info in enumerate(data.clips):
                frames = data.clip_frames(clip)
                items = [{"frame": i - frames.start, "viewmat": data.viewmats[data.global_index(i)],
                          "eye": data.eye[data.global_index(i)], "emotion": EMOTIONS.index(info.emotion),
                          "intensity": info.intensity} for i in frames]
                cond = items_conditioning(items, extractor(data.audio(clip)[0]).float())
                clip_views, embedding, _ = model.frame_views(cond)
                views.append(clip_views)
                embeddings.append(embedding)
                self.features.append(cond.features)
                clip_of += [clip] * len(frames)
                frame_of += list(range(len(frames)))
                label.append(torch.nn.functional.one_hot(cond.emotion, len(EMOTIONS)) * info.intensity)
        self.views = {name: torch.cat([v[name] for v in views]) for name in views[0]}
        self.embedding = torch.cat(embeddings)
        self.clip_of, self.frame_of = torch.tensor(clip_of), torch.tensor(frame_of)
        self.label = torch.cat(label).float()

    def __len__(self) -> int:
        return len(self.viewmats)


def truth_landmarks(data: SubjectDataset, synth: Path) -> Tensor:
    """The synthesized truth's landmarks [T, 478, 2] for ``data``'s frames, in its pixels."""
    crops = {c["name"]: c["crop"] for c in data.meta["clips"]}
    return torch.from_numpy(np.concatenate([landmarks_in_crop(synth, clip.name, clip.n_frames, crops[clip.name],
                                                              data.size) for clip in data.clips]))


def oracle_codes(train: Tensor, test: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """Landmark motion [T, L, 2] of both splits -> standardised PCA codes [T, dim], fitted on ``train``."""
    flat_train, flat_test = train.flatten(1), test.flatten(1)
    mean = flat_train.mean(0)
    _, _, v = torch.linalg.svd(flat_train - mean, full_matrices=False)
    codes_train, codes_test = (flat_train - mean) @ v[:dim].t(), (flat_test - mean) @ v[:dim].t()
    std = codes_train.std(0).clamp_min(1e-6)
    return codes_train / std, codes_test / std


def train_network(net: MotionNetwork, offsets, frames: Frames, xyz, flow, binding, size: int,  # noqa: ANN001
                  steps: int, batch: int, seed: int) -> None:
    """Adam on the flow loss alone, at the training rates (fields 10x the networks')."""
    fields = list(net.field.parameters())
    in_field = {id(p) for p in fields}
    optimizer = torch.optim.Adam([{"params": fields, "lr": FIELD_LR},
                                  {"params": [p for p in net.parameters() if id(p) not in in_field],
                                   "lr": NETWORK_LR}], eps=1e-15)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        chosen = torch.randint(len(frames), (batch,), generator=generator)
        loss = flow.loss(xyz, offsets(chosen), binding, frames.landmarks[chosen], frames.viewmats[chosen], size)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def bound(motion: Tensor, binding: tuple[Tensor, Tensor]) -> Tensor:
    """Landmark motion [B, L, 2] -> the bound Gaussians' motion [B, N, 2], as the flow loss binds it."""
    index, weight = binding
    return (motion[:, index] * weight[None, :, :, None]).sum(2)


@torch.no_grad()
def agreement(moved: Callable[[Frames, Tensor], Tensor], frames: Frames, binding: tuple[Tensor, Tensor],
              lips: Tensor, stride: int) -> list[str]:
    """Slope and relative error of image motion ``moved(frames, chosen)`` [B, N, 2] against the scored
    targets, lips then rest."""
    fitted, target = [], []
    for chosen in torch.arange(0, len(frames), stride).split(64):
        fitted.append(moved(frames, chosen))
        target.append(bound(frames.scored[chosen], binding))
    fitted, target = torch.cat(fitted), torch.cat(target)
    cells = []
    for part in (lips, ~lips):
        f, t = fitted[:, part].flatten(), target[:, part].flatten()
        cells.append(f"{float((f * t).sum() / (t * t).sum()):.2f} / {float((f - t).norm() / t.norm()):.2f}")
    return cells


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subject", default="checkpoints/demo")
    ap.add_argument("--data", default="data/demo")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=4, help="frames per step")
    ap.add_argument("--points", type=int, default=4000, help="face Gaussians measured and refitted")
    ap.add_argument("--lip-share", type=float, default=0.5,
                    help="share of --points drawn from those on the lips (the subject's own share: about 0.2)")
    ap.add_argument("--emphasis", type=float, default=0.0, help="the refits' flow emphasis (train --flow-emphasis)")
    ap.add_argument("--frame-stride", type=int, default=4, help="frames measured: every Nth of each split")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--truth", default=None, help="score against this synth folder's true landmarks (see above)")
    ap.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS), help="which rows to measure")
    ap.add_argument("--layouts", nargs="*", default=list(LAYOUTS), choices=list(LAYOUTS), help="oracle rows' tri-planes")
    args = ap.parse_args()
    if not 0 < args.lip_share < 1:
        raise SystemExit(f"--lip-share is a share in (0, 1), got {args.lip_share}")

    model = load_checkpoint(args.subject).eval()
    train_data, test_data = SubjectDataset(args.data, "train"), SubjectDataset(args.data, "heldout")
    size, K = train_data.size, train_data.K.float()
    reference = train_data[REFERENCE_FRAME]
    flow = LandmarkFlow(train_data.canonical.float(), K, reference["landmarks"].float(),
                        torch.as_tensor(reference["viewmat"]).float())
    index, weight = flow.bind(model.face.xyz.detach())
    on_lips = (weight * torch.isin(index, torch.tensor(MOUTH))).sum(1) > 0.5   # mostly tied to lip landmarks
    generator = torch.Generator().manual_seed(args.seed)
    on_lips_wanted = round(args.points * args.lip_share)
    keep = torch.cat([part[torch.randperm(len(part), generator=generator)[:wanted]]
                      for part, wanted in ((torch.nonzero(on_lips).squeeze(1), on_lips_wanted),
                                           (torch.nonzero(~on_lips).squeeze(1), args.points - on_lips_wanted))])
    xyz, lips = model.face.xyz.detach()[keep], on_lips[keep]
    binding = flow.bind(xyz)
    train, test = Frames(model, train_data, flow), Frames(model, test_data, flow)
    if args.truth:
        truth = {id(train): truth_landmarks(train_data, Path(args.truth)),
                 id(test): truth_landmarks(test_data, Path(args.truth))}
        at_reference = slice(REFERENCE_FRAME, REFERENCE_FRAME + 1)
        reference_motion = flow.motion(truth[id(train)][at_reference], train.viewmats[at_reference])[0]
        for frames in (train, test):
            frames.scored = flow.motion(truth[id(frames)], frames.viewmats) - reference_motion
    # the refits' loss (with --emphasis, each landmark weighted by its typical motion); the agreement is unweighted
    fit_flow = LandmarkFlow(train_data.canonical.float(), K, reference["landmarks"].float(),
                            torch.as_tensor(reference["viewmat"]).float(), train.landmarks, train.viewmats,
                            args.emphasis)
    print(f"{args.subject}: {len(xyz)} face Gaussians ({int(lips.sum())} on the lips), {len(train)} training and "
          f"{len(test)} held-out frames (every {args.frame_stride}th measured); refits: {args.steps} steps of "
          f"{args.batch} frames, flow emphasis {args.emphasis}; scored against "
          f"{'the synthesized truth' if args.truth else 'the dataset'}'s landmarks; CPU\n")
    print("| face branch | training: lips slope / rel. error | training: rest | held out: lips | held out: rest "
          "| seconds |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")

    def report(name: str, moved: Callable[[Frames, Tensor], Tensor], seconds: float) -> None:
        cells = [cell for frames in (train, test)
                 for cell in agreement(moved, frames, binding, lips, args.frame_stride)]
        print(f"| {name} | " + " | ".join(cells) + f" | {seconds:.0f} |", flush=True)

    def branch_motion(net: MotionNetwork, views, fusion: str) -> Callable[[Frames, Tensor], Tensor]:  # noqa: ANN001
        """The image motion of the branch's offsets on a batch of frames."""
        def moved(frames: Frames, chosen: Tensor) -> Tensor:
            viewmats = frames.viewmats[chosen]
            offsets = net(xyz, views(frames, chosen), fusion=fusion).d_xyz
            return project(xyz + offsets, viewmats, K) - project(xyz, viewmats, K)
        return moved

    def subject_views(frames: Frames, chosen: Tensor) -> dict:
        views = {name: v[chosen] for name, v in frames.views.items()}
        with torch.no_grad():
            return model.with_emotion(views, xyz, frames.embedding[chosen])

    def refit(name: str, build, views, fusion: str) -> None:  # noqa: ANN001
        """A fresh branch (``build()``, seeded), fitted to the flow on training frames, then reported."""
        torch.manual_seed(args.seed)
        start = time.perf_counter()
        net = build()
        net.set_bounds(model.face_net.field.lo, model.face_net.field.hi)
        train_network(net, lambda chosen: net(xyz, views(train, chosen), fusion=fusion).d_xyz,
                      train, xyz, fit_flow, binding, size, args.steps, args.batch, args.seed)
        report(name, branch_motion(net, views, fusion), time.perf_counter() - start)

    if args.truth:
        report("the dataset's landmarks (the flow's targets)",
               lambda frames, chosen: bound(frames.motion[chosen], binding), 0)
    if "subject" in args.rows:
        report("trained subject", branch_motion(model.face_net, subject_views, model.cfg.fusion), 0)
    if "refit" in args.rows:
        refit("refit on its views", lambda: face_network(model.cfg, model.face_net.view_dims), subject_views,
              model.cfg.fusion)
    if "heard" in args.rows:
        audio: dict[str, AudioWindowNet] = {}

        def heard_net() -> MotionNetwork:
            net = MotionNetwork(model.cfg, ("heard",), {"heard": model.cfg.audio_feat_dim + len(EMOTIONS)}, ("xyz",))
            net.audio_net = audio["net"] = AudioWindowNet(model.cfg)   # a submodule: trained with the branch
            return net

        def heard_views(frames: Frames, chosen: Tensor) -> dict[str, Tensor]:
            codes = torch.cat([audio["net"](frames.features[int(frames.clip_of[i])], frames.frame_of[i:i + 1])
                               for i in chosen])
            return {"heard": torch.cat([codes, frames.label[chosen]], dim=-1)}

        refit("refit from the audio and the label (a fresh audio net)", heard_net,
              heard_views, "uniform")
    if "oracle" in args.rows:
        codes = dict(zip((id(train), id(test)), oracle_codes(train.motion, test.motion, model.cfg.latent_dim)))
        for name in args.layouts:
            resolution, multires = LAYOUTS[name]
            layout = replace(model.cfg, hexplane_resolution=resolution, hexplane_multires=multires)
            refit(f"oracle code, tri-plane {name}",
                  lambda: MotionNetwork(layout, ("code",), {"code": model.cfg.latent_dim}, ("xyz",)),
                  lambda frames, chosen: {"code": codes[id(frames)][chosen]}, "uniform")


if __name__ == "__main__":
    main()
