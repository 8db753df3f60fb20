"""The whole subject model: canonical face + mouth Gaussians, the three
UA-3DTalk modules, and one rasterization pass per batch of frames.

Training and inference both call :meth:`TalkingHead.forward`, so what is
trained is exactly what is rendered. A checkpoint is ``config.json`` (the
:class:`~ua3dtalk.config.ModelConfig`) plus ``model.safetensors`` (this module's
``state_dict``); nothing else is needed to rebuild it.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ua3dtalk.config import ModelConfig
from ua3dtalk.deform import DeformOutput, face_network, mouth_network
from ua3dtalk.emotion import EmotionDistillation
from ua3dtalk.gaussians import GaussianModel
from ua3dtalk.prior import PriorExtractor
from ua3dtalk.render import rasterize
from ua3dtalk.standardize import RunningStandardizer

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
UNCERTAINTY_KINDS: tuple[str, ...] = ("aleatoric", "epistemic", "weight")


@dataclass
class Conditioning:
    """What a batch of B frames is conditioned on (all frames from one clip)."""

    features: Tensor          # [T, F] audio features of the whole clip
    frames: Tensor            # [B] long, frame indices into ``features``
    viewmats: Tensor          # [B, 4, 4] world-to-camera (head pose)
    eye: Tensor               # [B] eye openness
    emotion: Tensor           # [B] long, index into EMOTIONS
    intensity: Tensor         # [B] float in [0, 1]
    face_crops: Tensor | None = None  # [B, 3, 128, 128]: visual teacher input, training only


@dataclass
class ModelOutput:
    image: Tensor             # [B, H, W, 3] composited over the background plate
    alpha: Tensor             # [B, H, W, 1] head coverage
    uncertainty: Tensor | None  # [B, V, K, H, W] per-view maps (K = UNCERTAINTY_KINDS) or None
    means2d: Tensor           # [B, N_face + N_mouth, 2] (retain_grad for densification)
    radii: Tensor             # [B, N_face + N_mouth]
    face: DeformOutput
    mouth: DeformOutput
    emotion: dict[str, Tensor]


def camera_centers(viewmats: Tensor) -> Tensor:
    """World-space camera centres of world-to-camera matrices: c = -Rᵀt."""
    rot, trans = viewmats[:, :3, :3], viewmats[:, :3, 3:]
    return -(rot.transpose(1, 2) @ trans).squeeze(-1)


def scale_intrinsics(K: Tensor, factor: float) -> Tensor:
    """Intrinsics for an image resized by ``factor`` (pixel centres kept aligned)."""
    scaled = K.clone()
    scaled[..., :2, :] *= factor
    scaled[..., :2, 2] += 0.5 * factor - 0.5
    return scaled


class TalkingHead(nn.Module):
    """Canonical Gaussians of one subject + audio/emotion-driven deformation."""

    # buffers whose size depends on the subject; resized on load
    _SUBJECT_BUFFERS = ("background", "K", "motion_viewmats", "motion_eye")

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.face = GaussianModel(0, cfg.sh_degree)
        self.mouth = GaussianModel(0, cfg.sh_degree)
        self.prior = PriorExtractor(cfg)
        self.emotion = EmotionDistillation(cfg)
        encoding_dim = self.emotion.encoding.out_dim
        # the emotion view: per-Gaussian code-book features beside the per-frame embedding they
        # come from. The code-book modulation alone is a multiplicative, position-scrambled copy of
        # the emotion that the networks learned to ignore (labels rendered alike); given the
        # embedding too, the emotion block reads it as the audio views read theirs
        view_dims = {"audio": cfg.audio_feat_dim + 1, "content": cfg.content_dim,
                     "style": cfg.style_dim, "emotion": encoding_dim + cfg.emotion_dim}
        # the views' per-frame features and the emotion embedding, standardised (see ua3dtalk.standardize)
        norm_dims = {**view_dims, "emotion": cfg.emotion_dim}   # the emotion view is standardised before its encoding
        self.view_norms = nn.ModuleDict({v: RunningStandardizer(d) for v, d in norm_dims.items()})
        self.face_net = face_network(cfg, view_dims)
        self.mouth_net = mouth_network(cfg, view_dims)
        size = cfg.image_size
        self.register_buffer("background", torch.zeros(3, size, size))
        self.register_buffer("K", torch.eye(3))
        # training-clip head motion and blinks, replayed for new audio
        self.register_buffer("motion_viewmats", torch.eye(4)[None])
        self.register_buffer("motion_eye", torch.ones(1))

    # -- set-up -------------------------------------------------------------
    def init_subject(self, face_points: Tensor, mouth_points: Tensor, background: Tensor, K: Tensor,
                     viewmats: Tensor, eye: Tensor, face_colors: Tensor | None = None,
                     mouth_colors: Tensor | None = None) -> None:
        """Fill in a fresh model from a subject dataset's geometry."""
        device = self.background.device
        self.face = GaussianModel.from_points(face_points, face_colors, self.cfg.sh_degree).to(device)
        self.mouth = GaussianModel.from_points(mouth_points, mouth_colors, self.cfg.sh_degree).to(device)
        self.background = background.to(device, torch.float32)
        self.K = K.to(device, torch.float32)
        self.motion_viewmats = viewmats.to(device, torch.float32)
        self.motion_eye = eye.to(device, torch.float32)
        self.fit_bounds()

    def fit_bounds(self) -> None:
        """Fit the position fields' boxes to the canonical Gaussians (with a margin)."""
        xyz = torch.cat([self.face.xyz, self.mouth.xyz]).detach()
        lo, hi = xyz.min(0).values, xyz.max(0).values
        pad = 0.1 * (hi - lo)
        for net in (self.face_net, self.mouth_net, self.emotion.encoding):
            net.set_bounds(lo - pad, hi + pad)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001
        for name in self._SUBJECT_BUFFERS:
            stored = state_dict.get(prefix + name)
            if stored is not None:
                setattr(self, name, torch.empty_like(stored, device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- forward ------------------------------------------------------------
    def forward(self, cond: Conditioning, size: int | None = None, fusion: str | None = None,
                stage: int = 2, backend: str = "auto", with_maps: bool = True) -> ModelOutput:
        cfg = self.cfg
        size = size or self.background.shape[-1]
        fusion = fusion or cfg.fusion
        views, embedding, emotion = self.frame_views(cond)
        face = self.face_motion(views, embedding, fusion, stage)
        mouth_views = self.with_emotion(views, self.mouth.xyz, embedding) if "emotion" in cfg.mouth_views else views
        mouth = self.mouth_net(self.mouth.xyz, mouth_views, fusion=fusion, stage=stage)

        batch = cond.frames.shape[0]
        means = torch.cat([self.face.xyz + face.d_xyz, self.mouth.xyz + mouth.d_xyz], dim=1)
        face_rot = self.face.rotation_raw + face.d_rotation
        face_scale = torch.exp(self.face.scaling_raw + face.d_scale)
        mouth_rot = self.mouth.rotation_raw.expand(batch, -1, -1)
        mouth_scale = self.mouth.scaling.expand(batch, -1, -1)
        quats = torch.cat([face_rot, mouth_rot], dim=1)
        scales = torch.cat([face_scale, mouth_scale], dim=1)
        opacities = torch.cat([self.face_opacity(face), self.mouth.opacity.expand(batch, -1)], dim=1)
        centers = camera_centers(cond.viewmats)
        colors = torch.cat([self.face.colors(centers), self.mouth.colors(centers)], dim=1)
        extras = self._uncertainty_channels(face, mouth) if with_maps else None

        K = self._intrinsics(size, batch)
        background = self.background
        if background.shape[-1] != size:
            background = F.interpolate(background[None], size=(size, size), mode="bilinear",
                                       align_corners=False, antialias=True)[0]
        out = rasterize(means, quats, scales, opacities, colors, cond.viewmats, K, size, size,
                        extras=extras, backend=backend)
        image = out.image + (1 - out.alpha) * background.permute(1, 2, 0)
        maps = None
        if extras is not None:
            n_views = len(cfg.face_views)
            maps = out.extras.view(batch, size, size, n_views, len(UNCERTAINTY_KINDS)).permute(0, 3, 4, 1, 2)
        return ModelOutput(image=image, alpha=out.alpha, uncertainty=maps, means2d=out.means2d,
                           radii=out.radii, face=face, mouth=mouth, emotion=emotion)

    def face_motion(self, views: dict[str, Tensor], embedding: Tensor, fusion: str, stage: int = 2,
                    xyz: Tensor | None = None) -> DeformOutput:
        """The face branch's deformation of the face Gaussians (or of those at ``xyz``) for these frames' views."""
        xyz = self.face.xyz if xyz is None else xyz
        return self.face_net(xyz, self.with_emotion(views, xyz, embedding), fusion=fusion, stage=stage)

    def face_opacity(self, face: DeformOutput, shared: bool = True) -> Tensor:
        """[B,N] the face Gaussians' opacity in these frames: the canonical one, offset in its logit
        per frame with ``deform_opacity``; ``shared=False`` keeps the canonical part out of autograd."""
        raw = self.face.opacity_raw if shared else self.face.opacity_raw.detach()
        if face.d_opacity is None:
            return torch.sigmoid(raw).expand(face.d_xyz.shape[0], -1)
        return torch.sigmoid(raw + face.d_opacity)

    def _intrinsics(self, size: int, batch: int) -> Tensor:
        return scale_intrinsics(self.K, size / self.background.shape[-1]).expand(batch, 3, 3)

    def face_coverage(self, cond: Conditioning, face: DeformOutput, size: int, backend: str = "auto") -> Tensor:
        """[B,H,W] opacity of the face Gaussians alone (no inside of the mouth), differentiable only
        through their per-frame offsets (positions; opacity with ``deform_opacity``): a term on it
        then moves or clears the lips per frame instead of fading them, since the canonical opacity
        and shape are shared by all frames."""
        batch, n = cond.frames.shape[0], self.face.num_points
        out = rasterize(self.face.xyz.detach() + face.d_xyz, (self.face.rotation_raw + face.d_rotation).detach(),
                        torch.exp(self.face.scaling_raw + face.d_scale).detach(),
                        self.face_opacity(face, shared=False), face.d_xyz.new_zeros(n, 3),
                        cond.viewmats, self._intrinsics(size, batch), size, size, backend=backend)
        return out.alpha[..., 0]

    def frame_views(self, cond: Conditioning) -> tuple[dict[str, Tensor], Tensor, dict[str, Tensor]]:
        """The per-frame views both motion networks read (audio with the eye openness, content,
        style; normalised), the normalised emotion embedding, and the emotion module's outputs."""
        prior = self.prior(cond.features, cond.frames)
        emotion = self.emotion(cond.features, cond.frames, cond.emotion, cond.intensity, cond.face_crops)
        audio_view = torch.cat([prior["audio"], cond.eye[:, None].to(prior["audio"])], dim=-1)
        raw = {"audio": audio_view, "content": prior["content"], "style": prior["style"]}
        views = {name: self.view_norms[name](feat) for name, feat in raw.items()}
        return views, self.view_norms["emotion"](emotion["embedding"]), emotion

    def with_emotion(self, views: dict[str, Tensor], xyz: Tensor, embedding: Tensor
                      ) -> dict[str, Tensor | tuple[Tensor, Tensor]]:
        """The views plus the emotion view at these Gaussians: their code-book features beside the embedding."""
        return {**views, "emotion": (self.emotion.encoding(xyz, embedding), embedding)}

    def _uncertainty_channels(self, face: DeformOutput, mouth: DeformOutput) -> Tensor:
        """Per-Gaussian [B, N, V*K] channels: each view's AU, EU and fusion weight.

        Mouth Gaussians carry their own views' values; views the mouth branch
        does not have (emotion, unless ``mouth_views`` has it) are zero there.
        """
        face_stats = torch.stack([face.aleatoric, face.epistemic, face.weight], dim=-1)  # [B,V,N,K]
        mouth_stats = torch.stack([mouth.aleatoric, mouth.epistemic, mouth.weight], dim=-1)
        batch, _, n_mouth, kinds = mouth_stats.shape
        full = mouth_stats.new_zeros(batch, len(self.cfg.face_views), n_mouth, kinds)
        for i, view in enumerate(self.cfg.mouth_views):
            full[:, self.cfg.face_views.index(view)] = mouth_stats[:, i]
        stats = torch.cat([face_stats, full], dim=2)  # [B,V,N,K]
        return stats.permute(0, 2, 1, 3).flatten(2).detach()


# -- checkpoints ---------------------------------------------------------------
def save_checkpoint(model: TalkingHead, folder: str | Path) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (weights only, no pickles)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.cfg.save(folder / CONFIG_NAME)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(tensors, str(folder / WEIGHTS_NAME), metadata={"format": "pt", "library": "ua3dtalk"})
    return folder


def load_checkpoint(folder: str | Path, device: str | torch.device = "cpu") -> TalkingHead:
    """Rebuild a :class:`TalkingHead` from a checkpoint folder."""
    folder = Path(folder)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder} is not a ua3dtalk checkpoint: {name} is missing")
    model = TalkingHead(ModelConfig.load(folder / CONFIG_NAME))
    model.load_state_dict(load_file(str(folder / WEIGHTS_NAME)))
    return model.to(device).eval()


def with_opacity_offsets(model: TalkingHead) -> TalkingHead:
    """The same subject with the face branch's per-frame opacity offset added (its head starts near
    zero, so the renders barely change): a trained subject can then be fine-tuned with it."""
    if model.cfg.deform_opacity:
        return model
    device = next(model.parameters()).device
    grown = TalkingHead(replace(model.cfg, deform_opacity=True)).to(device)
    missing, unexpected = grown.load_state_dict(model.state_dict(), strict=False)
    added = {f"face_net.decoder.heads.opacity.{p}" for p in ("weight", "bias")}
    if unexpected or set(missing) != added:
        raise RuntimeError(f"adding the opacity offset changed more than its head: missing {missing}, "
                           f"unexpected {unexpected}")
    return grown.train(model.training)
