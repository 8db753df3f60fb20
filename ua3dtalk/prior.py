"""Prior Extraction: split speech into the conditioning signals of the deformation.

Three views of the same per-video-frame audio features ``[T, cfg.audio_dim]``:

* ``audio``   -- a windowed audio code (conv net over a short window, then
  attention over neighbouring frames, as in ER-NeRF / TalkingGaussian), 32-d;
* ``content`` -- the audio embedding of a SyncNet-style lip-sync expert, trained
  contrastively against mouth crops so that it only keeps what the lips show;
* ``style``   -- a longer window plus the subject's identity: how this person
  speaks, complementary to the content feature.

Every module takes the whole clip's features and the frame indices of a batch
and cuts its own windows (centred, edge-padded), so all frames of a batch are
computed at once without Python loops over frames.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ua3dtalk.config import ModelConfig


def window_indices(frames: Tensor, size: int, length: int) -> Tensor:
    """Frame indices ``[B, size]`` of windows centred on ``frames``, clamped to the clip.

    For an even ``size`` the window holds one more frame before the centre than
    after it (centre at position ``size // 2``).
    """
    if size < 1:
        raise ValueError(f"window size must be >= 1, got {size}")
    if length < 1:
        raise ValueError("the clip has no frames")
    if frames.dim() != 1 or frames.dtype != torch.long:
        raise ValueError(f"frames must be a 1-D long tensor, got shape {tuple(frames.shape)} {frames.dtype}")
    if frames.numel() and (int(frames.min()) < 0 or int(frames.max()) >= length):
        raise ValueError(f"frame indices must lie in [0, {length}), got [{int(frames.min())}, {int(frames.max())}]")
    offsets = torch.arange(size, device=frames.device) - size // 2
    return (frames[:, None] + offsets).clamp(0, length - 1)


def frame_windows(features: Tensor, frames: Tensor, size: int) -> Tensor:
    """Centred, edge-padded windows of per-frame features: ``[T, F]``, ``[B]`` -> ``[B, size, F]``.

    Edge padding (repeating the first / last frame) keeps the statistics of the
    window close to real speech at clip boundaries, unlike zero padding.
    """
    if features.dim() != 2:
        raise ValueError(f"features must be [T, F], got shape {tuple(features.shape)}")
    return features[window_indices(frames, size, features.shape[0])]


def check_features(features: Tensor, dim: int) -> None:
    """Raise a clear error unless ``features`` is a clip of ``[T, dim]`` audio features."""
    if features.dim() != 2 or features.shape[1] != dim:
        raise ValueError(f"audio features must be [T, {dim}] (cfg.audio_dim), got {tuple(features.shape)}")


class TemporalConvEncoder(nn.Module):
    """A window of feature steps ``[N, L, F]`` -> one vector ``[N, out_dim]``.

    Stride-2 1-D convolutions halve the window until one step is left (so the
    receptive field covers the whole window); the input is layer-normalised per
    step so that log-mel and HuBERT features of any scale work alike.
    """

    def __init__(self, in_dim: int, hidden: int, out_dim: int, length: int) -> None:
        super().__init__()
        self.length = length
        self.norm = nn.LayerNorm(in_dim)
        layers: list[nn.Module] = []
        channels, steps = in_dim, length
        for _ in range(max(1, math.ceil(math.log2(max(length, 2))))):
            layers += [nn.Conv1d(channels, hidden, 3, stride=2, padding=1), nn.LeakyReLU(0.02)]
            channels, steps = hidden, (steps + 1) // 2
        self.convs = nn.Sequential(*layers)
        self.out = nn.Linear(hidden, out_dim)

    def forward(self, windows: Tensor) -> Tensor:
        x = self.convs(self.norm(windows).transpose(1, 2))   # [N, hidden, L']
        return self.out(x.mean(dim=2))


class AudioWindowNet(nn.Module):
    """Windowed audio code: per-frame conv code, then attention over neighbouring frames.

    The attention smooths the code over ``cfg.audio_attention_window`` frames
    with learned, input-dependent weights, which removes frame-to-frame jitter
    without a fixed low-pass filter.
    """

    def __init__(self, cfg: ModelConfig, hidden: int = 64) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = TemporalConvEncoder(cfg.audio_dim, hidden, cfg.audio_feat_dim, cfg.audio_window)
        a = cfg.audio_attention_window
        self.scores = nn.Sequential(
            nn.Conv1d(cfg.audio_feat_dim, 16, 3, padding=1), nn.LeakyReLU(0.02),
            nn.Conv1d(16, 1, 3, padding=1),
        )
        self.mix = nn.Linear(a, a)

    def codes(self, features: Tensor, frames: Tensor) -> Tensor:
        """Per-frame codes of the attention neighbourhood: ``[B, audio_attention_window, audio_feat_dim]``."""
        check_features(features, self.cfg.audio_dim)
        neighbours = window_indices(frames, self.cfg.audio_attention_window, features.shape[0])
        windows = frame_windows(features, neighbours.reshape(-1), self.cfg.audio_window)
        return self.encoder(windows).view(*neighbours.shape, -1)

    def attention(self, codes: Tensor) -> Tensor:
        """Softmax weights ``[B, A]`` over the neighbouring frames' codes."""
        scores = self.scores(codes.transpose(1, 2)).squeeze(1)   # [B, A]
        return torch.softmax(self.mix(scores), dim=1)

    def forward(self, features: Tensor, frames: Tensor) -> Tensor:
        codes = self.codes(features, frames)
        return (self.attention(codes).unsqueeze(-1) * codes).sum(dim=1)


class LipSyncExpert(nn.Module):
    """SyncNet-style audio / mouth embedding pair trained with InfoNCE.

    The audio embedding of a trained expert is the *content-synchronized*
    feature: it keeps what the lips show and little else. The mouth encoder
    sees the same ``cfg.content_window`` frames as RGB crops stacked on the
    channel axis; applied to rendered frames it gives a differentiable sync loss.
    """

    def __init__(self, cfg: ModelConfig, hidden: int = 64) -> None:
        super().__init__()
        self.cfg = cfg
        self.audio = TemporalConvEncoder(cfg.audio_dim, hidden, cfg.content_dim, cfg.content_window)
        c = 3 * cfg.content_window
        self.mouth = nn.Sequential(
            nn.Conv2d(c, 32, 3, stride=2, padding=1), nn.LeakyReLU(0.02),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.LeakyReLU(0.02),
            nn.Conv2d(64, 96, 3, stride=2, padding=1), nn.LeakyReLU(0.02),
            nn.Conv2d(96, 128, 3, stride=2, padding=1), nn.LeakyReLU(0.02),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, cfg.content_dim),
        )
        # CLIP-style learnable temperature, stored as log(1 / tau)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))

    def audio_embedding(self, features: Tensor, frames: Tensor) -> Tensor:
        """``[T, audio_dim]``, ``[B]`` -> L2-normalised ``[B, content_dim]``."""
        check_features(features, self.cfg.audio_dim)
        windows = frame_windows(features, frames, self.cfg.content_window)
        return F.normalize(self.audio(windows), dim=-1)

    def mouth_embedding(self, crops: Tensor) -> Tensor:
        """Mouth crops ``[B, content_window, 3, h, w]`` in [0, 1] -> L2-normalised ``[B, content_dim]``."""
        w = self.cfg.content_window
        if crops.dim() != 5 or crops.shape[1] != w or crops.shape[2] != 3:
            raise ValueError(f"mouth crops must be [B, {w}, 3, h, w] (cfg.content_window frames), "
                             f"got {tuple(crops.shape)}")
        x = crops.flatten(1, 2) - 0.5
        return F.normalize(self.mouth(x), dim=-1)

    def loss(self, audio_emb: Tensor, mouth_emb: Tensor) -> Tensor:
        """Symmetric InfoNCE over the batch: the pair from the same frame is the positive."""
        if audio_emb.shape != mouth_emb.shape:
            raise ValueError(f"embedding shapes differ: {tuple(audio_emb.shape)} vs {tuple(mouth_emb.shape)}")
        scale = self.logit_scale.clamp(max=math.log(100.0)).exp()
        logits = scale * F.normalize(audio_emb, dim=-1) @ F.normalize(mouth_emb, dim=-1).t()
        target = torch.arange(logits.shape[0], device=logits.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))

    def confidence(self, audio_emb: Tensor, mouth_emb: Tensor) -> Tensor:
        """Cosine similarity per pair ``[B]``: the sync score (``1 - confidence`` is a sync loss)."""
        return F.cosine_similarity(audio_emb, mouth_emb, dim=-1)


class StyleEncoder(nn.Module):
    """Person-specific complementary feature: a ~2 s audio window plus the subject's embedding."""

    def __init__(self, cfg: ModelConfig, hidden: int = 64) -> None:
        super().__init__()
        self.cfg = cfg
        self.audio = TemporalConvEncoder(cfg.audio_dim, hidden, cfg.style_dim, cfg.style_window)
        self.subjects = nn.Embedding(cfg.n_subjects, cfg.style_dim)
        self.mlp = nn.Sequential(
            nn.Linear(2 * cfg.style_dim, hidden), nn.LeakyReLU(0.02), nn.Linear(hidden, cfg.style_dim),
        )

    def forward(self, features: Tensor, frames: Tensor, subject: Tensor | int = 0) -> Tensor:
        check_features(features, self.cfg.audio_dim)
        subject = torch.as_tensor(subject, dtype=torch.long, device=frames.device).expand(frames.shape[0])
        if int(subject.min()) < 0 or int(subject.max()) >= self.cfg.n_subjects:
            raise ValueError(f"subject index must lie in [0, {self.cfg.n_subjects}) (cfg.n_subjects)")
        speech = self.audio(frame_windows(features, frames, self.cfg.style_window))
        return self.mlp(torch.cat([speech, self.subjects(subject)], dim=-1))


class PriorExtractor(nn.Module):
    """The three audio views of the deformation: ``audio``, ``content``, ``style``.

    Training order: pretrain ``lip_expert`` (audio vs ground-truth mouth crops),
    then call :meth:`freeze_lip_expert` so that the content feature stays a
    lip-sync feature while the rest of the model trains.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.audio_net = AudioWindowNet(cfg)
        self.lip_expert = LipSyncExpert(cfg)
        self.style = StyleEncoder(cfg)

    def freeze_lip_expert(self, frozen: bool = True) -> None:
        """Stop (or restart) gradient updates of the pretrained lip-sync expert."""
        self.lip_expert.requires_grad_(not frozen)

    def forward(self, features: Tensor, frames: Tensor, subject: Tensor | int = 0) -> dict[str, Tensor]:
        return {
            "audio": self.audio_net(features, frames),
            "content": self.lip_expert.audio_embedding(features, frames),
            "style": self.style(features, frames, subject),
        }


def mouth_crops(images: Tensor, mouth_centers: Tensor, size: tuple[int, int] = (48, 96),
                extent: tuple[float, float] | None = None) -> Tensor:
    """Differentiable mouth crops ``[B, 3, size[0], size[1]]`` of images ``[B, 3, H, W]``.

    ``mouth_centers`` ``[B, 2]`` are (x, y) in continuous pixel coordinates (the
    image spans [0, W] x [0, H], pixel i's centre is at i + 0.5, as landmarks
    scaled by the image size are). ``extent`` is the (height, width) of the
    cropped box in source pixels (default: ``size``, i.e. no resampling).
    Bilinear ``grid_sample`` keeps gradients flowing to rendered images and
    the border is repeated outside the image.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
    b, _, height, width = images.shape
    if mouth_centers.shape != (b, 2):
        raise ValueError(f"mouth_centers must be [{b}, 2] (x, y pixels), got {tuple(mouth_centers.shape)}")
    h, w = size
    eh, ew = (float(h), float(w)) if extent is None else (float(extent[0]), float(extent[1]))
    dev, dt = images.device, images.dtype
    # sample points at the centres of the output pixels, in source pixel units
    ys = (torch.arange(h, device=dev, dtype=dt) + 0.5) * (eh / h) - eh / 2
    xs = (torch.arange(w, device=dev, dtype=dt) + 0.5) * (ew / w) - ew / 2
    centers = mouth_centers.to(dt)
    px = centers[:, 0, None, None] + xs[None, None, :]            # [B, 1, w]
    py = centers[:, 1, None, None] + ys[None, :, None]            # [B, h, 1]
    grid = torch.stack(torch.broadcast_tensors(2 * px / width - 1, 2 * py / height - 1), dim=-1)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
