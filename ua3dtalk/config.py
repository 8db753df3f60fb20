"""One configuration for the whole subject model, with the two named presets.

The config is saved as ``config.json`` beside ``model.safetensors``, so a
checkpoint can be rebuilt without any training state.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

EMOTIONS: tuple[str, ...] = (
    "neutral", "angry", "contempt", "disgusted", "fear", "happy", "sad", "surprised",
)
FACE_VIEWS: tuple[str, ...] = ("audio", "content", "style", "emotion")
MOUTH_VIEWS: tuple[str, ...] = ("audio", "content", "style")


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of every network and of the Gaussian model."""

    preset: str = "demo"
    # audio front end (see ua3dtalk.audio): per-video-frame features [T, audio_dim]
    audio_features: str = "logmel"
    audio_dim: int = 320
    fps: int = 25
    sample_rate: int = 16000
    # Prior Extraction
    audio_window: int = 16          # frames of features seen by the windowed audio net
    audio_attention_window: int = 8  # neighbouring frames blended by attention
    audio_feat_dim: int = 32
    content_window: int = 5         # ~0.2 s lip-sync expert window
    content_dim: int = 64
    style_window: int = 50          # ~2 s person-specific window
    style_dim: int = 64
    n_subjects: int = 1
    # Emotion Distillation
    emotion_dim: int = 128
    n_emotions: int = len(EMOTIONS)
    hexplane_resolution: int = 64
    hexplane_multires: tuple[int, ...] = (1, 2, 4, 8)
    hexplane_dim: int = 32
    emotion_hexplane_dim: int = 64
    emotion_multires: tuple[int, ...] = (1, 2, 4)
    codebook_size: int = 16
    # Uncertainty-based Deformation
    latent_dim: int = 48
    ensemble: int = 10
    hidden_dim: int = 64
    face_views: tuple[str, ...] = FACE_VIEWS
    mouth_views: tuple[str, ...] = MOUTH_VIEWS
    fusion: str = "uncertainty"     # fusion the subject was trained with: uncertainty | uniform
    codebooks: bool = True          # emotion code-books on (off only for the ablation)
    motion_basis: bool = False      # bilinear position-offset term in the decoders (deform.MultiHeadDecoder)
    # the face branch also offsets each Gaussian's opacity per frame, so skin in the mouth's opening
    # can clear as the lips part (a shared opacity cannot: bench/RESULTS.md, twenty-eighth session)
    deform_opacity: bool = False
    # Gaussians and images
    sh_degree: int = 2
    image_size: int = 512

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def differences(self, other: "ModelConfig", names: Sequence[str] | None = None) -> list[tuple[str, Any, Any]]:
        """(field, this value, the other's) for each field that differs (of ``names``, default all)."""
        names = [f.name for f in fields(self)] if names is None else names
        return [(n, getattr(self, n), getattr(other, n)) for n in names if getattr(self, n) != getattr(other, n)]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; this checkpoint needs a newer ua3dtalk")
        tuples = {k: tuple(v) for k, v in data.items() if isinstance(v, list)}
        return cls(**{**data, **tuples})

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "ModelConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))


PRESETS: dict[str, ModelConfig] = {
    # small and fast: the bundled demo subject and CPU tests
    "demo": ModelConfig(
        preset="demo", hexplane_resolution=32, hexplane_multires=(1, 2), hexplane_dim=16,
        emotion_hexplane_dim=32, emotion_multires=(1, 2), codebook_size=8,
        latent_dim=32, ensemble=5, hidden_dim=64,
    ),
    # the paper's sizes
    "paper": ModelConfig(preset="paper"),
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    """The named preset, with optional field overrides (e.g. ``image_size=64``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)
