"""Staged training of one subject.

Stages, by share of the iterations (TalkingGaussian + UA-3DTalk):

1. ``priors``: the lip-sync expert (contrastive audio/mouth), the speech-emotion
   encoder and the visual expression teacher, on ground-truth frames; frozen after.
2. ``mouth``: the inside-mouth branch alone, loss on the mouth region.
3. ``face``: the face branch (and emotion networks), loss on the head region.
4. ``fusion``: everything together. The uncertainty blocks switch from stage 1
   (one random ensemble member per view, diagonal) to stage 2 (full ensemble,
   precision fusion) at ``stage2_at`` of the render iterations.

Optional steps come before the stages: ``flow_warmup`` fits only the face branch
and its views to the landmark flow; ``flow_priors`` lengthens the priors phase,
which then fits that flow too. A fine-tune (``finetune``) starts from a trained
subject and trains the schedule's last steps again with a fresh optimiser.

Losses: L1 + D-SSIM on the image, the lip expert's sync loss on rendered mouths,
emotion distillation, the uncertainty heads' Gaussian NLL, and a penalty on
deformation size; 3DGS densification and pruning on both Gaussian sets.
"""
from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor

from ua3dtalk import audio as audio_io
from ua3dtalk.config import FACE_VIEWS, MOUTH_VIEWS, ModelConfig, preset
from ua3dtalk.data.dataset import FACE_LABEL, MOUTH_LABEL, SubjectDataset, head_region
from ua3dtalk.deform import DeformOutput
from ua3dtalk.encoding import TriPlaneField
from ua3dtalk.gaussians import DensityController
from ua3dtalk.landmark_flow import LandmarkFlow
from ua3dtalk.metrics import lip_box, psnr, ssim
from ua3dtalk.model import Conditioning, TalkingHead, load_checkpoint, save_checkpoint, with_opacity_offsets
from ua3dtalk.prior import mouth_crops

MOUTH_UPPER, MOUTH_LOWER = 13, 14   # MediaPipe inner-lip midpoints
STATE_NAME = "training_state.safetensors"
DEFAULT_ITERATIONS = {"demo": 6000, "paper": 30000}
# Gaussians at most: the demo keeps its checkpoint under 25 MB (about 150 bytes per Gaussian)
DEFAULT_MAX_GAUSSIANS = {"demo": 64_000, "paper": 300_000}
_DENSITY_STATS = ("grad_accum", "denom", "max_radii")  # density control's running statistics
MAX_SKIPPED_STEPS = 20  # non-finite steps in a row before training stops as diverged
REFERENCE_FRAME = 0     # training frame the face Gaussians are built from; landmark motion is relative to it
PARTS = ("face", "mouth")   # the Gaussian sets: skin, and the inside of the mouth
LIP_BOX_MARGIN = 10.0   # pixels at 512², as bench/error_regions.py
NETWORK_LR, FIELD_LR = 1e-3, 1e-2
POSITION_LR_FINAL, NETWORK_LR_FINAL = 0.01, 0.1  # share of the initial rates left at the last step


@dataclass
class TrainOptions:
    preset: str = "demo"
    iterations: int | None = None
    resume: bool = False
    # start from a trained subject (bundled name, folder or Hub id) and train the schedule's last
    # finetune_steps again, with a fresh optimiser: a warm restart (the bundled subject is the mean
    # of two chains of two restarts from its first run; the figures are in bench/RESULTS.md)
    finetune: str | None = None
    finetune_steps: int = 800
    fusion: str = "uncertainty"
    codebooks: bool = True
    size: int | None = None
    device: str | None = None
    seed: int = 0
    # consecutive frames of one clip rendered per step (the lip expert sees the middle ones); 20 at
    # 512² took 1.8x the time and lost 0.4 dB held out (bench/RESULTS.md, sixteenth session)
    frames_per_step: int = 10
    # shares of the iterations
    priors_until: float = 0.1
    mouth_until: float = 0.2
    face_until: float = 0.6
    stage2_at: float = 0.5
    # losses
    ssim_weight: float = 0.2
    sync_weight: float = 0.02
    distill_weight: float = 0.1
    nll_weight: float = 0.01
    deform_weight: float = 1e-3
    flow_weight: float = 5.0       # landmark-guided motion (ua3dtalk.landmark_flow)
    # steps added before the schedule's priors phase; with any, the whole priors phase also fits the
    # face branch and its views to that motion (no rendering, yet with the experts' windows a step
    # costs more than a rendering one: bench/RESULTS.md, eighteenth session)
    flow_priors: int = 0
    # steps before all of that which fit only the face branch and its views to the motion (no
    # experts, no rendering: 0.56 of a flow-prior step's time on an H100)
    flow_warmup: int = 0
    # face Gaussians drawn afresh for each flow-only step (warm-up and priors; 0: all of them). The
    # flow term is a mean over Gaussians, so a random subset estimates it without bias, and the
    # face branch's cost grows with their number (bench/RESULTS.md, nineteenth session)
    flow_sample: int = 0
    # after the priors phase, the windowed audio net and the style encoder stop learning, so the lips'
    # motion the flow priors put in those views cannot wear away in the render phases (the views, not
    # the face branch, limit the lips; not yet trained on a GPU: bench/RESULTS.md, twentieth session)
    hold_audio_views: bool = False
    flow_emphasis: float = 0.0     # weight each landmark's flow term by its typical motion ** this
    lip_weight: float = 0.0        # extra image-loss weight inside the lip box (face and fusion phases)
    # the face Gaussians' coverage of the lip box held to the ground truth's (none in the mouth's
    # opening), through their offsets only (face and fusion phases; 0: off)
    opening_weight: float = 0.0
    # the landmark flow on the inside-mouth set's offsets too, each Gaussian tied like the face's to
    # the skin triangle it lies in, or the nearest one (lower teeth to the jaw); with the image loss
    # alone that set moves as one block and never opens (bench/RESULTS.md, twenty-eighth session)
    mouth_flow_weight: float = 0.0
    # densification (in render iterations)
    densify_every: int = 100
    densify_until: float = 0.7
    grad_threshold: float = 2e-4
    max_gaussians: int | None = None   # default: the preset's (DEFAULT_MAX_GAUSSIANS)
    max_mouth_gaussians: int | None = None   # the inside-mouth set's own cap (default: none, it shares the budget)
    mouth_emotion: bool = False   # the inside-mouth branch reads the emotion view too (bench/RESULTS.md)
    motion_basis: bool = False    # bilinear position-offset term in the decoders (deform.MultiHeadDecoder)
    deform_opacity: bool = False  # the face branch offsets opacity per frame too (ModelConfig.deform_opacity)
    mouth_init_frames: int | None = None   # wide-open frames the inside-mouth points come from (default: one per clip)
    # bookkeeping
    log_every: int = 25
    save_every: int = 1000
    face_points: int = 30_000
    mouth_points: int = 3_000


class Batches:
    """Windows of consecutive frames from one clip (the lip expert sees
    ``content_window`` consecutive frames), drawn with a seeded generator."""

    def __init__(self, data: SubjectDataset, window: int, generator: torch.Generator) -> None:
        self.data, self.window, self.generator = data, window, generator
        self.clips = [c for c in range(len(data.clips)) if len(data.clip_frames(c)) >= window]
        if not self.clips:
            raise ValueError(f"no training clip has {window} frames")
        if len(self.clips) < len(data.clips):
            warnings.warn(f"{len(data.clips) - len(self.clips)} of {len(data.clips)} training clips are shorter "
                          f"than {window} frames and are left out of the batches", stacklevel=2)

    def draw(self) -> list[int]:
        clip = self.clips[int(torch.randint(len(self.clips), (1,), generator=self.generator))]
        frames = self.data.clip_frames(clip)
        first = int(torch.randint(len(frames) - self.window + 1, (1,), generator=self.generator))
        return list(frames[first:first + self.window])


def face_crops(images: Tensor, landmarks: Tensor, size: int = 128) -> Tensor:
    """Square crops around the landmarks' bounding box: [B,3,H,W] -> [B,3,size,size]."""
    lo, hi = landmarks.min(1).values, landmarks.max(1).values
    center, half = (lo + hi) / 2, (hi - lo).max(-1).values * 0.6
    height, width = images.shape[-2:]
    lin = torch.linspace(-1, 1, size, device=images.device)
    gy, gx = torch.meshgrid(lin, lin, indexing="ij")
    px = center[:, 0, None, None] + gx * half[:, None, None]
    py = center[:, 1, None, None] + gy * half[:, None, None]
    grid = torch.stack([(px + 0.5) / width * 2 - 1, (py + 0.5) / height * 2 - 1], dim=-1)
    return F.grid_sample(images, grid, align_corners=False, padding_mode="border")


def mouth_windows(images: Tensor, landmarks: Tensor) -> Tensor:
    """[B,3,H,W] frames -> [1, B, 3, 48, 96] mouth crops of one window."""
    centers = (landmarks[:, MOUTH_UPPER] + landmarks[:, MOUTH_LOWER]) / 2
    scale = images.shape[-1] / 512
    return mouth_crops(images, centers, size=(48, 96), extent=(48 * scale, 96 * scale))[None]


def mouth_source_frames(data: SubjectDataset, count: int | None = None) -> list[int]:
    """Training frames the inside-mouth points are drawn from: each clip's
    widest-open frame, largest mouth region first (the first ``count`` of them;
    default all). From a single opening the teeth of wider smiles had no
    Gaussians, and densification did not widen them (bench/mouth_layers.py)."""
    if count is not None and count < 1:
        raise ValueError(f"mouth_init_frames must be positive, got {count}")
    widest = [max(data.clip_frames(c), key=lambda i: data.mouth_open[data.global_index(i)])
              for c in range(len(data.clips))]
    area = {i: int((torch.as_tensor(data[i]["mask"]) == MOUTH_LABEL).sum()) for i in widest}
    open_frames = sorted((i for i in widest if area[i]), key=lambda i: -area[i])
    if not open_frames:
        raise ValueError("no training clip shows the inside of the mouth (no pixels labelled "
                         f"{MOUTH_LABEL} in any clip's widest-open frame)")
    return open_frames[:count]


def initial_geometry(data: SubjectDataset, n_face: int, n_mouth: int, generator: torch.Generator,
                     mouth_frames: int | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Face and mouth points (world) with colours, back-projected from training
    frames: pixel depths are interpolated from the landmarks' depths. Face points
    come from the first frame (the landmark motion targets are relative to it);
    inside-mouth points from wide-open frames (``mouth_source_frames``), pushed
    behind the lips, so that teeth and mouth interior have colours and extent
    before the lips ever part (from a closed mouth they would start as a line of
    lip pixels)."""
    from scipy.interpolate import griddata

    K = data.K.double()
    world = torch.cat([data.canonical.double(), torch.ones(len(data.canonical), 1, dtype=torch.float64)], 1)

    def sample(item: dict, label: int, count: int, push_share: float) -> tuple[Tensor, Tensor]:
        viewmat = torch.as_tensor(item["viewmat"]).double()
        cam = (viewmat @ world.t()).t()[:, :3]
        uv = (K @ cam.t()).t()
        uv = uv[:, :2] / uv[:, 2:]
        depth = cam[:, 2]
        mask, image = torch.as_tensor(item["mask"]), torch.as_tensor(item["image"])
        ys, xs = torch.nonzero(mask == label, as_tuple=True)
        if len(xs) == 0:
            raise ValueError(f"training frame {item['frame']} of clip {item['clip']} has no pixels labelled "
                             f"{label} in its mask")
        pick = torch.randint(len(xs), (count,), generator=generator)
        u = xs[pick].double() + torch.rand(count, generator=generator, dtype=torch.float64) - 0.5
        v = ys[pick].double() + torch.rand(count, generator=generator, dtype=torch.float64) - 0.5
        pixels = np.stack([u.numpy(), v.numpy()], 1)
        z = griddata(uv.numpy(), depth.numpy(), pixels, method="linear")
        z_near = griddata(uv.numpy(), depth.numpy(), pixels, method="nearest")
        z = torch.from_numpy(np.where(np.isnan(z), z_near, z)) + push_share * float(depth.max() - depth.min())
        x = (u - K[0, 2]) / K[0, 0] * z
        y = (v - K[1, 2]) / K[1, 1] * z
        points_cam = torch.stack([x, y, z, torch.ones_like(z)], 1)
        points = (torch.linalg.inv(viewmat) @ points_cam.t()).t()[:, :3]
        colors = image[:, ys[pick], xs[pick]].t()
        return points.float(), colors.float()

    face_points, face_colors = sample(data[REFERENCE_FRAME], FACE_LABEL, n_face, 0.0)
    sources = mouth_source_frames(data, mouth_frames)
    shares = [n_mouth // len(sources) + (k < n_mouth % len(sources)) for k in range(len(sources))]
    mouth = [sample(data[i], MOUTH_LABEL, n, 0.25) for i, n in zip(sources, shares) if n]
    return (face_points, face_colors, torch.cat([p for p, _ in mouth]), torch.cat([c for _, c in mouth]))


class Trainer:
    """Holds the model, optimiser, data and counters; ``run`` trains to the end."""

    def __init__(self, data_dir: str | Path, out: str | Path, options: TrainOptions) -> None:
        from ua3dtalk.pipeline import pick_device

        if options.max_mouth_gaussians is not None and options.max_mouth_gaussians < 1:
            raise ValueError(f"max_mouth_gaussians must be positive, got {options.max_mouth_gaussians}")
        if not 0.0 <= options.stage2_at <= 1.0:
            raise ValueError(f"stage2_at is a share of the iterations in [0, 1], got {options.stage2_at}")
        self.opt = options
        self.out = Path(out)
        self.device = pick_device(options.device)
        self.data = SubjectDataset(data_dir, "train", size=options.size)
        self.heldout_dir = Path(data_dir)
        self.generator = torch.Generator().manual_seed(options.seed)
        torch.manual_seed(options.seed)
        resume = options.resume and (self.out / STATE_NAME).is_file()
        if options.resume and not resume:
            raise FileNotFoundError(f"--resume: no training state in {self.out} ({STATE_NAME} missing)")
        self.table = self.data.stacked(self.device)
        self.clip_of = self.table["clip"].tolist()   # on the host: a batch's clip without waiting for the device
        if resume:
            self.model = load_checkpoint(self.out, self.device).train()
            self.cfg = self.model.cfg
        elif options.finetune:
            self.model = self._trained_model(options.finetune)
            self.cfg = self.model.cfg
        else:
            self.cfg = self._config()
            self.model = self._fresh_model()
        for name in ("flow_priors", "flow_warmup", "flow_sample"):
            if getattr(options, name) < 0:
                raise ValueError(f"{name} must be 0 or more, got {getattr(options, name)}")
        self.scheduled = options.iterations or DEFAULT_ITERATIONS[self.cfg.preset]
        self.added = options.flow_warmup + options.flow_priors   # steps before the staged schedule
        self.total = self.added + self.scheduled
        self.max_gaussians = options.max_gaussians or DEFAULT_MAX_GAUSSIANS[self.cfg.preset]
        self.extractor = audio_io.get_extractor(self.cfg.audio_features, device=str(self.device))
        audio_io.check_features(self.cfg.audio_features, self.cfg.audio_dim, self.extractor)
        self.features = [self._clip_features(c) for c in range(len(self.data.clips))]
        self.optimizer = self._optimizer()
        self.step = self._finetune_start() if options.finetune and not resume else 0
        self.skipped = self.skipped_total = 0   # non-finite steps: in a row, and in this run
        self.history: list[dict[str, float | str | Tensor]] = []   # losses stay tensors until _settle
        self._settled = 0   # history records whose losses are numbers yet (see _settle)
        self.train_seconds = 0.0
        if resume:
            self._load_state()
        self.windows = Batches(self.data, self.cfg.content_window, self.generator)   # lip expert
        self.batches = Batches(self.data, max(options.frames_per_step, self.cfg.content_window), self.generator)
        self.face_density = DensityController(self.model.face, self.optimizer)
        self.mouth_density = DensityController(self.model.mouth, self.optimizer)
        reference = self.data[REFERENCE_FRAME]
        self.flow = LandmarkFlow(self.data.canonical.to(self.device), self.data.K.float().to(self.device),
                                 torch.as_tensor(reference["landmarks"]).float().to(self.device),
                                 torch.as_tensor(reference["viewmat"]).float().to(self.device),
                                 self.table["landmarks"].float(), self.table["viewmat"].float(),
                                 emphasis=options.flow_emphasis)
        self.bindings = {part: self.flow.bind(getattr(self.model, part).xyz) for part in PARTS}
        if resume:
            self._restore_part_state()

    # -- set-up ---------------------------------------------------------------
    def _config(self) -> ModelConfig:
        """The model configuration these options and this dataset ask for."""
        o = self.opt
        return replace(preset(o.preset), fusion=o.fusion, codebooks=o.codebooks, image_size=self.data.size,
                       mouth_views=FACE_VIEWS if o.mouth_emotion else MOUTH_VIEWS, motion_basis=o.motion_basis,
                       deform_opacity=o.deform_opacity)

    def _trained_model(self, name: str) -> TalkingHead:
        """The subject to fine-tune, refused when the options describe another model (its
        configuration comes from the checkpoint, so a flag that disagrees would be silently ignored).
        ``deform_opacity`` is the exception one way: a subject without it gains the offset's head."""
        from ua3dtalk.hub import resolve_checkpoint

        folder = resolve_checkpoint(name)
        model = load_checkpoint(folder, self.device).train()
        wanted = self._config()
        if wanted.deform_opacity:
            model = with_opacity_offsets(model)
        fields = ("preset", "fusion", "codebooks", "image_size", "mouth_views", "motion_basis", "deform_opacity")
        differ = [f"{f}: {ours!r} in the checkpoint, {asked!r} asked"
                  for f, ours, asked in model.cfg.differences(wanted, fields)]
        if differ:
            raise ValueError(f"--finetune {name}: the options describe another model than {folder} ("
                             + "; ".join(differ) + "); give the flags (and --size) it was trained with")
        return model

    def _finetune_start(self) -> int:
        """The step a fine-tune starts at: its steps are the schedule's last, all in the fusion phase."""
        steps = self.opt.finetune_steps
        fusion = self.total - self._phase_start(self.opt.face_until)
        if not 1 <= steps <= fusion:
            raise ValueError(f"finetune_steps must be from 1 to the {fusion} steps of this schedule's fusion "
                             f"phase, got {steps} (or lengthen --iterations)")
        return self.total - steps

    def _fresh_model(self) -> TalkingHead:
        model = TalkingHead(self.cfg).to(self.device)
        face_p, face_c, mouth_p, mouth_c = initial_geometry(self.data, self.opt.face_points, self.opt.mouth_points,
                                                            self.generator, self.opt.mouth_init_frames)
        model.init_subject(face_p, mouth_p, self._person_plate(), self.data.K, self.data.viewmats,
                           torch.from_numpy(self.data.eye), face_c, mouth_c)
        return model.train()

    def _person_plate(self, samples: int = 240) -> Tensor:
        """The static part of the picture (background, hair, torso): the per-pixel
        median of training frames outside the head; where the head always covers
        a pixel, the dataset's clean background plate. The Gaussians then model
        the head alone, which is what moves."""
        table = self.table
        pick = torch.linspace(0, len(table["image"]) - 1, min(samples, len(table["image"]))).long()
        images = table["image"][pick.to(table["image"].device)].float() / 255
        head = head_region(table["mask"][pick.to(table["mask"].device)])[:, None].expand_as(images)
        plate = images.masked_fill(head, float("nan")).nanmedian(dim=0).values
        fallback = self.data.background.to(plate.device)
        return torch.where(torch.isnan(plate), fallback, plate).cpu()

    def _clip_features(self, clip: int) -> Tensor:
        wav, _ = self.data.audio(clip)
        feats = self.extractor(wav).to(self.device, torch.float32)
        return feats[: len(self.data.clip_frames(clip))]

    def _optimizer(self) -> torch.optim.Adam:
        """Adam over all parts. The tri-plane fields learn at 10x the networks' rate, as grids
        do in K-planes and 4D-GS: a cell sees few Gaussians' gradients per step."""
        model, extent = self.model, self._extent()
        groups = model.face.param_groups(prefix="face.", extent=extent) + \
            model.mouth.param_groups(prefix="mouth.", extent=extent)
        for name in ("prior", "emotion", "face_net", "mouth_net"):
            module = getattr(model, name)
            fields = [p for m in module.modules() if isinstance(m, TriPlaneField) for p in m.parameters()]
            in_fields = {id(p) for p in fields}
            groups.append({"params": [p for p in module.parameters() if id(p) not in in_fields],
                           "lr": NETWORK_LR, "name": name})
            if fields:
                groups.append({"params": fields, "lr": FIELD_LR, "name": f"{name}.field"})
        for group in groups:
            group["base_lr"] = group["lr"]
        return torch.optim.Adam(groups, eps=1e-15)

    def _share(self, step: int) -> float:
        """How far a step is into the staged schedule (whose shares place the phases); the added
        flow warm-up and flow-prior steps come before it."""
        return max(step - self.added, 0) / self.scheduled

    def _phase_start(self, share: float) -> int:
        """The first step at ``share`` of the staged schedule or past it: where a phase that ends
        there hands over (a whole number even when that share of the schedule is not)."""
        return self.added + math.ceil(self.scheduled * share)

    def _first_render_step(self) -> int:
        """The first step after the priors phase."""
        return self._phase_start(self.opt.priors_until)

    def _decay_learning_rates(self) -> None:
        """Exponential decay over the rendering steps, a function of the step alone (so resuming is
        exact): Gaussian positions to 1/100 (3DGS), networks and fields to 1/10 (4D-GS)."""
        start = self._first_render_step()
        progress = min(max((self.step - start) / max(self.total - start, 1), 0.0), 1.0)
        for group in self.optimizer.param_groups:
            final = POSITION_LR_FINAL if group["name"].endswith(".xyz") else NETWORK_LR_FINAL
            group["lr"] = group["base_lr"] * final ** progress

    # -- phases ---------------------------------------------------------------
    def phase(self, step: int) -> str:
        share = self._share(step)
        o = self.opt
        if step < o.flow_warmup:
            return "flow"
        if step < self.added or share < o.priors_until:
            return "priors"
        if share < o.mouth_until:
            return "mouth"
        return "face" if share < o.face_until else "fusion"

    def _trainable(self, phase: str) -> set[str]:
        flow = {"prior", "emotion", "face_net"}   # the face branch and the views it reads
        # the windowed audio net and style encoder learn from the image loss unless held
        # (the lip expert inside ``prior`` stays frozen: see _zero_frozen_grads)
        audio = set() if self.opt.hold_audio_views else {"prior"}
        return {
            "flow": flow,
            "priors": flow if self.opt.flow_priors else {"prior", "emotion"},
            "mouth": {"mouth", "mouth_net"} | audio,
            "face": {"face", "face_net", "emotion"} | audio,
            "fusion": {"face", "mouth", "face_net", "mouth_net", "emotion"} | audio,
        }[phase]

    def _zero_frozen_grads(self, phase: str) -> None:
        keep = self._trainable(phase)
        for group in self.optimizer.param_groups:
            if group["name"].split(".")[0] not in keep:
                for p in group["params"]:
                    p.grad = None
        if phase != "priors":  # the lip expert and speech-emotion encoder stay frozen once trained
            for p in self.model.prior.lip_expert.parameters():
                p.grad = None

    # -- steps ----------------------------------------------------------------
    def _batch(self, batches: Batches | None = None) -> tuple[dict[str, Tensor], Conditioning]:
        drawn = (batches or self.batches).draw()
        indices = torch.tensor(drawn, device=self.device)
        batch = {key: value[indices] for key, value in self.table.items()}
        batch["image"] = batch["image"].float() / 255
        clip = self.clip_of[drawn[0]]
        images = batch["image"].float()
        crops = face_crops(images, batch["landmarks"].float())
        cond = Conditioning(features=self.features[clip], frames=batch["frame"].long(),
                            viewmats=batch["viewmat"].float(), eye=batch["eye"].float(),
                            emotion=batch["emotion"].long(), intensity=batch["intensity"].float(),
                            face_crops=crops)
        return batch, cond

    def _prior_loss(self, windows: int = 8) -> tuple[Tensor, dict[str, float]]:
        """Lip expert (InfoNCE over several windows), speech-emotion encoder and
        visual expression teacher (cross-entropy on the emotion labels)."""
        expert, emotion = self.model.prior.lip_expert, self.model.emotion
        audio_emb, mouth_emb, ce = [], [], 0.0
        for _ in range(windows):
            batch, cond = self._batch(self.windows)
            centre = cond.frames[len(cond.frames) // 2:][:1]
            audio_emb.append(expert.audio_embedding(cond.features, centre))
            mouth_emb.append(expert.mouth_embedding(mouth_windows(batch["image"].float(), batch["landmarks"].float())))
            out = emotion(cond.features, cond.frames, cond.emotion, cond.intensity, cond.face_crops)
            ce = ce + F.cross_entropy(out["audio_logits"], cond.emotion) + F.cross_entropy(out["visual_logits"], cond.emotion)
        sync = expert.loss(torch.cat(audio_emb), torch.cat(mouth_emb))
        ce = ce / windows
        stats = {"sync": sync.detach(), "emotion_ce": ce.detach()}
        if not self.opt.flow_priors:
            return sync + ce, stats
        flow, flow_stats = self._flow_prior_loss()
        return sync + ce + flow, {**stats, **flow_stats}

    def _flow_prior_loss(self) -> tuple[Tensor, dict[str, Tensor]]:
        """The landmark flow alone, weighted (its stats unweighted), for the face branch and the views
        it reads, without rendering: a flow-trained audio path carries far more of the lips' motion
        than one trained through the render phases (bench/motion_fit.py; bench/RESULTS.md, sixteenth
        session). With ``flow_sample`` it runs on that many face Gaussians drawn at random."""
        flow = self._flow_term(*self._batch(), self._flow_sample())
        return self.opt.flow_weight * flow, {"flow": flow.detach()}

    def _flow_term(self, batch: dict[str, Tensor], cond: Conditioning, chosen: Tensor | None = None) -> Tensor:
        """The unweighted flow term of one batch from the face branch alone (no rendering), over the
        ``chosen`` face Gaussians or all of them."""
        model = self.model
        xyz = None if chosen is None else model.face.xyz[chosen]
        views, embedding, _ = model.frame_views(cond)
        face = model.face_motion(views, embedding, self.cfg.fusion, self._stage(), xyz)
        return self._flow_loss(batch, face.d_xyz, chosen)

    def _flow_sample(self) -> Tensor | None:
        """Indices of ``flow_sample`` face Gaussians from the seeded generator (so resuming is exact),
        or None for all of them."""
        n = self.model.face.num_points
        if not self.opt.flow_sample or self.opt.flow_sample >= n:
            return None
        return torch.randperm(n, generator=self.generator)[:self.opt.flow_sample].to(self.device)

    def _flow_loss(self, batch: dict[str, Tensor], offsets: Tensor, chosen: Tensor | None = None,
                   part: str = "face") -> Tensor:
        """The landmark flow term of a Gaussian set's offsets (``part``: face, or mouth with
        ``mouth_flow_weight``), of the ``chosen`` ones if given."""
        xyz, (index, weight) = getattr(self.model, part).xyz.detach(), self.bindings[part]
        if chosen is not None:
            xyz, index, weight = xyz[chosen], index[chosen], weight[chosen]
        return self.flow.loss(xyz, offsets, (index, weight), batch["landmarks"].float(),
                              batch["viewmat"].float(), self.data.size)

    def _stage(self) -> int:
        """Uncertainty fusion's stage at this step: one random member per view (1), or the whole ensemble (2)."""
        return 2 if self._share(self.step) >= self.opt.stage2_at else 1

    def _render_loss(self, batch: dict[str, Tensor], cond: Conditioning, phase: str
                     ) -> tuple[Tensor, dict[str, float], object]:
        o, size = self.opt, self.data.size
        stage = self._stage()
        out = self.model(cond, size=size, stage=stage, with_maps=False)
        out.means2d.retain_grad()
        pred = out.image.permute(0, 3, 1, 2)
        gt = batch["image"].float()
        mask = batch["mask"]
        head = head_region(mask)
        region = (mask == MOUTH_LABEL) if phase == "mouth" else head
        background = self.model.background[None].expand_as(gt)
        target = torch.where(head[:, None], gt, background)
        weight = region[:, None].float()
        opening = None
        if phase != "mouth":  # outside the head the target is the plate
            lips = lip_box(batch["landmarks"].float(), size, LIP_BOX_MARGIN * size / 512)
            weight = 1 + o.lip_weight * lips[:, None].float()
            if o.opening_weight:
                opening = self._opening_loss(cond, out.face, mask, lips)
        l1 = ((pred - target).abs() * weight).sum() / (weight.sum() * 3).clamp_min(1)
        dssim = 1 - ssim(pred, target).mean()
        loss = l1 + o.ssim_weight * dssim
        first = (len(cond.frames) - self.cfg.content_window) // 2    # the lip expert's window: the middle frames
        window = slice(first, first + self.cfg.content_window)
        mouths = mouth_windows(pred[window], batch["landmarks"][window].float())
        expert = self.model.prior.lip_expert
        centre = cond.frames[window][self.cfg.content_window // 2:][:1]
        audio_emb = expert.audio_embedding(cond.features, centre).detach()
        sync = 1 - expert.confidence(audio_emb, expert.mouth_embedding(mouths)).mean()
        distill = out.emotion["distill"]
        nll = out.face.nll + out.mouth.nll
        deform = out.face.d_xyz.pow(2).mean() + out.mouth.d_xyz.pow(2).mean()
        flow = self._flow_loss(batch, out.face.d_xyz)
        loss = loss + o.sync_weight * sync + o.distill_weight * distill + o.nll_weight * nll + \
            o.deform_weight * deform + o.flow_weight * flow
        with torch.no_grad():
            quality = psnr(pred.clamp(0, 1), target).mean()
        stats = {"l1": l1.detach(), "sync": sync.detach(), "distill": distill.detach(), "nll": nll.detach(),
                 "flow": flow.detach(), "psnr": quality, "stage": stage}
        if opening is not None:
            loss = loss + o.opening_weight * opening
            stats["opening"] = opening.detach()
        if o.mouth_flow_weight:
            mouth_flow = self._flow_loss(batch, out.mouth.d_xyz, part="mouth")
            loss = loss + o.mouth_flow_weight * mouth_flow
            stats["mouth_flow"] = mouth_flow.detach()
        return loss, stats, out

    def _opening_loss(self, cond: Conditioning, face: DeformOutput, mask: Tensor, lips: Tensor) -> Tensor:
        """Mean L1, over the lip box, between the face Gaussians' coverage and the ground truth's
        (1 on the skin, 0 in the mouth's opening). The image loss alone leaves skin-coloured face
        Gaussians across an open mouth and holes in closed lips where the teeth show through
        (bench/RESULTS.md, twenty-third session); this term moves the lips (their offsets) instead."""
        coverage = self.model.face_coverage(cond, face, self.data.size)
        target = (mask != MOUTH_LABEL).float()
        box = lips.float()
        return ((coverage - target).abs() * box).sum() / box.sum().clamp_min(1)

    def _densify(self, out, phase: str) -> None:  # noqa: ANN001
        o = self.opt
        since = self.step - self._first_render_step()
        due = since > 0 and since % o.densify_every == 0
        n_face = self.model.face.num_points
        grad = out.means2d.grad
        if grad is None:
            return
        size = self.data.size
        for density, part, lo, hi in ((self.face_density, "face", 0, n_face),
                                      (self.mouth_density, "mouth", n_face, out.means2d.shape[1])):
            if part not in self._trainable(phase):
                continue
            density.accumulate(grad[:, lo:hi], out.radii[:, lo:hi], size, size)
            if due and self._share(self.step) < o.densify_until and (room := self._room(part)) > 0:
                density.densify_and_prune(grad_threshold=o.grad_threshold, min_opacity=0.005,
                                          extent=self._extent(), max_screen_size=size / 4, max_new=room)
                self.bindings[part] = self.flow.bind(getattr(self.model, part).xyz)

    def _room(self, part: str) -> int:
        """Gaussians a part may still add: what is left of the whole budget and, for the inside-mouth
        set, of its own cap (its densification comes first, in the mouth phase, and could take it all)."""
        face, mouth = self.model.face.num_points, self.model.mouth.num_points
        room = self.max_gaussians - face - mouth
        if part == "mouth" and self.opt.max_mouth_gaussians is not None:
            room = min(room, self.opt.max_mouth_gaussians - mouth)
        return room

    def _backward(self, loss: Tensor, phase: str) -> bool:
        """Gradients of the trainable parts; False (and the step is skipped, as a mixed-precision
        scaler would) when the loss or a gradient is not finite. A run of such steps means
        training has diverged: a clear error."""
        loss.backward()   # a non-finite loss gives non-finite gradients: one check (one device sync) for both
        self._zero_frozen_grads(phase)
        grads = [p.grad for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        finite = bool(torch.isfinite(loss.detach()) & torch.isfinite(torch.nn.utils.get_total_norm(grads)))
        self.skipped = 0 if finite else self.skipped + 1
        if self.skipped:
            self.skipped_total += 1
            print(f"warning: non-finite loss or gradient at step {self.step} ({phase}); step skipped", flush=True)
        if self.skipped >= MAX_SKIPPED_STEPS:
            raise RuntimeError(f"training diverged at step {self.step} ({phase}): {self.skipped} steps in a row "
                               f"had a non-finite loss or gradient (last loss {loss.item()})")
        return finite

    def _extent(self) -> float:
        xyz = self.model.face.xyz.detach()
        return float((xyz - xyz.mean(0)).norm(dim=-1).max())

    def run(self, until: int | None = None, minutes: float | None = None) -> Path:
        """Train to ``until`` (default: the end), or for ``minutes`` of wall-clock time, whichever
        comes first, saving along the way and at the stop."""
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm

        if minutes is not None and not minutes > 0:
            raise ValueError(f"minutes must be positive, got {minutes}")
        deadline = None if minutes is None else time.perf_counter() + 60 * minutes
        end = min(until or self.total, self.total)
        writer = SummaryWriter(str(self.out / "runs"))
        last = time.perf_counter()
        bar = tqdm(total=self.total, initial=self.step, desc="train", unit="it")
        stats: dict[str, float] = {}
        while self.step < end:
            phase = self.phase(self.step)
            self._decay_learning_rates()
            self.optimizer.zero_grad(set_to_none=True)
            out = None
            if phase == "flow":
                loss, stats = self._flow_prior_loss()
            elif phase == "priors":
                loss, stats = self._prior_loss()
            else:
                loss, stats, out = self._render_loss(*self._batch(), phase)
            if not self._backward(loss, phase):
                continue
            self.optimizer.step()
            if out is not None:
                self._densify(out, phase)
            self.step += 1
            now = time.perf_counter()
            stats["loss"], stats["seconds"] = loss.detach(), now - last
            self.train_seconds, last = self.train_seconds + now - last, now
            self.history.append({"step": self.step, "phase": phase, **stats})
            if self.step % self.opt.log_every == 0 or self.step == self.total:
                self._settle()
                record = self.history[-1]
                for key in stats:
                    writer.add_scalar(f"{phase}/{key}", record[key], self.step)
                writer.add_scalar("gaussians", self.model.face.num_points + self.model.mouth.num_points, self.step)
                bar.set_postfix(phase=phase, loss=f"{record['loss']:.4f}",
                                **({"psnr": f"{record['psnr']:.2f}"} if "psnr" in record else {}))
            bar.update(1)
            if deadline is not None and now >= deadline:
                end = self.step
            if self.step % self.opt.save_every == 0 or self.step == end:
                self.save()
        self._settle()
        bar.close()
        writer.close()
        return self.out

    def _settle(self) -> None:
        """The losses recorded as device tensors since the last call, as numbers: one device sync
        for all of them, where reading each at its step would stall the step's launches."""
        pending = [(record, key) for record in self.history[self._settled:]
                   for key, value in record.items() if isinstance(value, Tensor)]
        if pending:
            values = torch.stack([record[key].float() for record, key in pending]).tolist()
            for (record, key), value in zip(pending, values):
                record[key] = value
        self._settled = len(self.history)

    # -- checkpoints ----------------------------------------------------------
    def save(self) -> None:
        """Checkpoint + exact training state, written atomically (temp then rename)."""
        self.out.mkdir(parents=True, exist_ok=True)
        save_checkpoint(self.model, self.out)
        tensors: dict[str, Tensor] = {"rng/torch": torch.get_rng_state(), "rng/batches": self.generator.get_state()}
        if torch.cuda.is_available():
            tensors["rng/cuda"] = torch.cuda.get_rng_state(self.device)
        state = self.optimizer.state_dict()
        for index, slots in state["state"].items():
            for key, value in slots.items():
                tensors[f"optim/{index}/{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
        for name, density in (("face", self.face_density), ("mouth", self.mouth_density)):
            for key in _DENSITY_STATS:
                tensors[f"density/{name}/{key}"] = getattr(density, key).detach().cpu().contiguous()
        for part, binding in self.bindings.items():
            for key, value in zip(("index", "weight"), binding):
                tensors[f"flow/{part}/{key}"] = value.detach().cpu().contiguous()
        groups = [{k: v for k, v in g.items() if k != "params"} for g in state["param_groups"]]
        meta = {"step": str(self.step), "total": str(self.total), "options": json.dumps(asdict(self.opt)),
                "train_seconds": str(self.train_seconds),
                "param_groups": json.dumps(groups)}
        tmp = self.out / (STATE_NAME + ".tmp")
        save_file(tensors, str(tmp), metadata=meta)
        tmp.replace(self.out / STATE_NAME)

    def _load_state(self) -> None:
        from safetensors import safe_open

        path = self.out / STATE_NAME
        with safe_open(str(path), "pt") as handle:
            meta = handle.metadata()
        tensors = load_file(str(path))
        self.step = int(meta["step"])
        self.train_seconds = float(meta["train_seconds"])
        groups = json.loads(meta["param_groups"])
        names = [g["name"] for g in self.optimizer.param_groups]
        if [g.get("name") for g in groups] != names:
            raise ValueError(f"{path} was written by another version of the trainer (its optimiser groups "
                             f"differ from {names}); start a new run instead of --resume")
        state: dict[int, dict[str, Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optim/"):
                _, index, slot = key.split("/")
                state.setdefault(int(index), {})[slot] = value.to(self.device) if slot != "step" else value
        current = self.optimizer.state_dict()
        for group, saved in zip(current["param_groups"], groups):
            group.update({k: tuple(v) if isinstance(v, list) else v for k, v in saved.items() if k != "params"})
        self.optimizer.load_state_dict({"state": state, "param_groups": current["param_groups"]})
        torch.set_rng_state(tensors["rng/torch"])
        self.generator.set_state(tensors["rng/batches"])
        if "rng/cuda" in tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state(tensors["rng/cuda"], self.device)
        self._part_state = {k: v for k, v in tensors.items() if k.startswith(("density/", "flow/"))}

    def _restore_part_state(self) -> None:
        """Density statistics and landmark bindings as saved (the bindings date from the last
        density control step, not from the Gaussians' current positions)."""
        for name, density in (("face", self.face_density), ("mouth", self.mouth_density)):
            for key in _DENSITY_STATS:
                setattr(density, key, self._part_state[f"density/{name}/{key}"].to(self.device))
        for part in PARTS:
            if f"flow/{part}/index" in self._part_state:   # states saved before the mouth's was kept lack it
                self.bindings[part] = tuple(self._part_state[f"flow/{part}/{key}"].to(self.device)
                                            for key in ("index", "weight"))


def train(data: str | Path, out: str | Path, options: TrainOptions | None = None, evaluate: bool = True,
          until: int | None = None, minutes: float | None = None) -> Path:
    """The ``ua3dtalk train`` command: train (or resume) and evaluate on held-out clips.

    ``until`` (a step) or ``minutes`` (of training) stops early with a resumable
    save (the evaluation waits for the end of the schedule)."""
    from ua3dtalk.evaluate import evaluate_model

    options = options or TrainOptions()
    trainer = Trainer(data, out, options)
    if until is not None and until <= trainer.step:
        raise ValueError(f"--until {until}: the training state in {out} is already at step {trainer.step}")
    trainer.run(until=until, minutes=minutes)
    if trainer.step < trainer.total:
        print(f"stopped at step {trainer.step} of {trainer.total}; continue with --resume")
        return Path(out)
    if not evaluate:
        return Path(out)
    report = evaluate_model(trainer.model, data, split="heldout", size=trainer.data.size)
    report["train_seconds"] = round(trainer.train_seconds, 1)
    report["iterations"] = trainer.total
    if options.finetune:
        report["finetune"] = {"from": options.finetune, "steps": options.finetune_steps}
    report["device"] = str(trainer.device) if trainer.device.type != "cuda" else torch.cuda.get_device_name(trainer.device)
    (Path(out) / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return Path(out)
