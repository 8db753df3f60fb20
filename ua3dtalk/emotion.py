"""Emotion Distillation: one emotion embedding from speech + a chosen emotion, and
its per-Gaussian encoding.

* :class:`SpeechEmotionEncoder` reads emotion from ~2 s of speech.
* :class:`ExpressionEncoder` reads it from the face (a teacher: training frames only).
* :class:`LabelEmbedding` turns the user's label and intensity into a vector.
* :class:`EmotionFusion` weighs the available modalities with learned attention.
* :func:`distillation_loss` pulls the audio+label fusion (the *student*, all that
  exists at inference) toward the audio+label+visual fusion (the *teacher*).
* :class:`EmotionCodebookEncoding` is the "4D Gaussian encoding with
  multi-resolution code-books": a tri-plane field over canonical positions whose
  per-resolution features are modulated by the emotion's attention over a
  learned code-book per resolution.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ua3dtalk.config import ModelConfig
from ua3dtalk.encoding import TriPlaneField
from ua3dtalk.prior import TemporalConvEncoder, check_features, frame_windows

MODALITIES: tuple[str, ...] = ("audio", "visual", "label")


class SpeechEmotionEncoder(nn.Module):
    """Audio features over a ~2 s window -> (embedding ``[B, emotion_dim]``, logits ``[B, n_emotions]``).

    Emotion is prosody (pitch, energy, tempo), which needs a longer window
    than lip motion: ``2 * cfg.fps`` frames.
    """

    def __init__(self, cfg: ModelConfig, hidden: int = 64) -> None:
        super().__init__()
        self.cfg = cfg
        self.window = 2 * cfg.fps
        self.encoder = TemporalConvEncoder(cfg.audio_dim, hidden, cfg.emotion_dim, self.window)
        self.head = nn.Linear(cfg.emotion_dim, cfg.n_emotions)

    def forward(self, features: Tensor, frames: Tensor) -> tuple[Tensor, Tensor]:
        check_features(features, self.cfg.audio_dim)
        embedding = self.encoder(frame_windows(features, frames, self.window))
        return embedding, self.head(F.leaky_relu(embedding, 0.02))


class ExpressionEncoder(nn.Module):
    """Visual teacher: face crops ``[B, 3, 128, 128]`` in [0, 1] -> (embedding, logits)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        chans = (3, 16, 32, 64, 96, 128)
        layers: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.LeakyReLU(0.02)]
        self.convs = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out = nn.Linear(chans[-1], cfg.emotion_dim)
        self.head = nn.Linear(cfg.emotion_dim, cfg.n_emotions)

    def forward(self, crops: Tensor) -> tuple[Tensor, Tensor]:
        if crops.dim() != 4 or crops.shape[1] != 3:
            raise ValueError(f"face crops must be [B, 3, 128, 128], got {tuple(crops.shape)}")
        embedding = self.out(self.convs(crops - 0.5))
        return embedding, self.head(F.leaky_relu(embedding, 0.02))


class LabelEmbedding(nn.Module):
    """(label ``[B]``, intensity ``[B]`` in [0, 1]) -> ``[B, emotion_dim]``.

    Interpolates from the neutral embedding to the label's: intensity 0 is
    exactly neutral whatever the label, so intensity is a continuous control.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n = cfg.n_emotions
        self.table = nn.Embedding(cfg.n_emotions, cfg.emotion_dim)

    def forward(self, label: Tensor, intensity: Tensor) -> Tensor:
        if label.dim() != 1 or intensity.shape != label.shape:
            raise ValueError(f"label and intensity must both be [B], got {tuple(label.shape)} and "
                             f"{tuple(intensity.shape)}")
        # both ranges in one device read: training calls this several times a step
        if bool(((label < 0) | (label >= self.n) | (intensity < 0) | (intensity > 1)).any()):
            if int(label.min()) < 0 or int(label.max()) >= self.n:
                raise ValueError(f"emotion label must lie in [0, {self.n}), got {label.tolist()}")
            raise ValueError(f"emotion intensity must lie in [0, 1], got {intensity.tolist()}")
        neutral = self.table.weight[0]
        return neutral + intensity[:, None].to(neutral.dtype) * (self.table(label) - neutral)


class EmotionFusion(nn.Module):
    """Attention-weighted fusion of the available emotion modalities (audio, visual, label).

    The label embedding asks the query ("which evidence fits the emotion the
    user wants?"); each modality gives a key (plus a learned per-modality bias)
    and a value. Softmax scores over the present modalities are the fusion
    weights; a missing modality (the visual one at inference) gets weight 0.
    As in a transformer's attention block, the query (the label) is added back
    to the output: the attention chooses what evidence to add to the chosen
    emotion and cannot attend the choice away (a student that learned to weigh
    audio 0.95 rendered every label as the same face).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim, bias=False)   # a bias shared by all modalities cancels in the softmax
        self.value = nn.Linear(dim, dim)
        self.kind = nn.Parameter(torch.zeros(len(MODALITIES), dim))
        self.out = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim))

    def forward(self, audio: Tensor, label: Tensor, visual: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """-> (fused ``[B, D]``, weights ``[B, 3]`` in the order of ``MODALITIES``)."""
        present = torch.tensor([True, visual is not None, True], device=audio.device)
        stack = torch.stack([audio, visual if visual is not None else torch.zeros_like(audio), label], dim=1)
        keys = self.key(stack) + self.kind                               # [B, M, D]
        scores = (keys @ self.query(label).unsqueeze(-1)).squeeze(-1) / math.sqrt(stack.shape[-1])
        weights = torch.softmax(scores.masked_fill(~present, float("-inf")), dim=1)
        fused = (weights.unsqueeze(-1) * self.value(stack)).sum(dim=1)
        return label + self.out(fused), weights


def distillation_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """MSE plus cosine distance from the student to the (detached) teacher embedding.

    The teacher is detached so that the distillation moves only the student
    (audio + label path) and never drags the teacher toward what audio alone knows.
    """
    teacher = teacher.detach()
    return F.mse_loss(student, teacher) + (1 - F.cosine_similarity(student, teacher, dim=-1)).mean()


class EmotionCodebookEncoding(nn.Module):
    """Per-Gaussian emotion features: tri-plane field modulated per resolution by code-books.

    At resolution r: ``q_r = W_r(emotion)``, ``a_r = softmax(q_r K_rᵀ / √D)``,
    ``code_r = a_r K_r``; the field's features at r become ``feat_r * (1 + code_r)``.
    The code-book keeps the modulation on a learned set of expression modes
    (coarse resolutions: global shape, fine: wrinkles), which regularises
    emotions seen in few frames. Without code-books (ablation) ``code_r = q_r``.
    All resolutions are computed together (one stacked projection and code-book).
    """

    def __init__(self, cfg: ModelConfig, codebooks: bool = True) -> None:
        super().__init__()
        self.dim = cfg.emotion_hexplane_dim
        self.levels = len(cfg.emotion_multires)
        self.field = TriPlaneField(self.dim, cfg.hexplane_resolution, cfg.emotion_multires)
        self.query = nn.Linear(cfg.emotion_dim, self.levels * self.dim)
        self.codebooks = None
        if codebooks:
            # codes of spread 0.5 on features near 1, and queries large enough that standardised
            # embeddings give scores of spread ~1.5: each emotion starts attending to its own
            # codes (max weight ~0.5 of 8), a modulation of tens of per cent. With default
            # queries the attention stayed near uniform, every emotion got the same code and
            # the label had no visible effect
            self.codebooks = nn.Parameter(0.5 * torch.randn(self.levels, cfg.codebook_size, self.dim))
            nn.init.normal_(self.query.weight, std=4 / math.sqrt(cfg.emotion_dim))
            nn.init.zeros_(self.query.bias)

    @property
    def out_dim(self) -> int:
        return self.levels * self.dim

    def set_bounds(self, lo: Tensor, hi: Tensor) -> None:
        """Fit the field's box to the canonical Gaussians."""
        self.field.set_bounds(lo, hi)

    def queries(self, emotion: Tensor) -> Tensor:
        """``[B, emotion_dim]`` -> per-resolution queries ``[B, R, D]``."""
        return self.query(emotion).view(emotion.shape[0], self.levels, self.dim)

    def attention(self, emotion: Tensor) -> Tensor:
        """Code-book attention ``[B, R, codebook_size]`` (rows sum to 1)."""
        if self.codebooks is None:
            raise RuntimeError("this encoding was built without code-books (ablation)")
        scores = torch.einsum("brd,rcd->brc", self.queries(emotion), self.codebooks)
        return torch.softmax(scores / math.sqrt(self.dim), dim=-1)

    def modulation(self, emotion: Tensor) -> Tensor:
        """Per-resolution modulation ``code_r`` ``[B, R, D]``."""
        if self.codebooks is None:
            return self.queries(emotion)
        return torch.einsum("brc,rcd->brd", self.attention(emotion), self.codebooks)

    def forward(self, xyz: Tensor, emotion: Tensor) -> Tensor:
        """``[N, 3]``, ``[B, emotion_dim]`` -> ``[B, N, R * D]``."""
        if emotion.dim() != 2:
            raise ValueError(f"emotion must be [B, emotion_dim], got {tuple(emotion.shape)}")
        feat = self.field(xyz)                                          # [N, R, D]
        out = feat.unsqueeze(0) * (1 + self.modulation(emotion).unsqueeze(1))
        return out.flatten(2)


def _per_sample(value: Tensor | float | int, n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.as_tensor(value, dtype=dtype, device=device).expand(n)


class EmotionDistillation(nn.Module):
    """Speech + chosen emotion (+ face crops at training) -> the emotion embedding.

    ``embedding`` (what the deformation uses) is always the *student* fusion
    (audio + label), at training as at inference: the visual teacher sees the
    ground-truth face, so a deformation trained on its embedding would read
    each frame's expression (mouth included) from the picture it has to draw,
    and fall back to a mean face at inference, where no picture exists. With
    face crops, the teacher fusion (audio + visual + label) is computed too and
    ``distill`` pulls the student onto it. The per-Gaussian encoding lives in
    ``encoding`` (``encoding(xyz, embedding)``).
    """

    def __init__(self, cfg: ModelConfig, codebooks: bool | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.speech = SpeechEmotionEncoder(cfg)
        self.expression = ExpressionEncoder(cfg)
        self.label = LabelEmbedding(cfg)
        self.fusion = EmotionFusion(cfg.emotion_dim)
        self.encoding = EmotionCodebookEncoding(cfg, cfg.codebooks if codebooks is None else codebooks)

    def forward(self, features: Tensor, frames: Tensor, label: Tensor | int, intensity: Tensor | float,
                face_crops: Tensor | None = None) -> dict[str, Tensor]:
        b, dev = frames.shape[0], frames.device
        audio, audio_logits = self.speech(features, frames)
        wanted = self.label(_per_sample(label, b, torch.long, dev), _per_sample(intensity, b, audio.dtype, dev))
        student, weights = self.fusion(audio, wanted)
        out = {"embedding": student, "student": student, "weights": weights, "audio_logits": audio_logits}
        if face_crops is None:
            out["distill"] = audio.new_zeros(())
            return out
        if face_crops.shape[0] != b:
            raise ValueError(f"face_crops has {face_crops.shape[0]} crops for {b} frames")
        visual, visual_logits = self.expression(face_crops)
        teacher, _ = self.fusion(audio, wanted, visual)
        out.update(teacher=teacher, visual_logits=visual_logits, distill=distillation_loss(student, teacher))
        return out

    @torch.no_grad()
    def predict_emotion(self, features: Tensor, frames: Tensor) -> tuple[Tensor, Tensor]:
        """For ``emotion="auto"``: (label ``[B]``, probabilities ``[B, n_emotions]``) from speech alone."""
        probs = torch.softmax(self.speech(features, frames)[1], dim=-1)
        return probs.argmax(dim=-1), probs
