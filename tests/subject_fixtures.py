"""Session-wide fixtures: one tiny synthesized subject (synth -> preprocess),
and a small checkpoint trained on it, shared by the model, training, pipeline,
evaluation and app tests so that the expensive steps run once."""
from __future__ import annotations

from pathlib import Path

import pytest

TINY_SIZE = 64


@pytest.fixture(scope="session")
def tiny_subject(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A subject dataset from ~12 s of synthesized speech, preprocessed at 128²."""
    from ua3dtalk.data.preprocess import preprocess_videos
    from ua3dtalk.data.synth import synthesize

    root = tmp_path_factory.mktemp("subject")
    synth = synthesize(root / "synth", minutes=0.2, seed=0, size=256)
    videos = sorted(str(p) for p in Path(synth).glob("*/*.mp4"))
    return preprocess_videos(videos, str(root / "data"), size=128)


def tiny_options(**overrides: object) -> "TrainOptions":  # noqa: F821
    """Training options small enough for CPU tests (64², a few hundred Gaussians)."""
    from ua3dtalk.train import TrainOptions

    base = dict(size=TINY_SIZE, device="cpu", face_points=400, mouth_points=60, log_every=5,
                save_every=10, densify_every=6, frames_per_step=5)
    return TrainOptions(**{**base, **overrides})


@pytest.fixture(scope="session")
def tiny_trainer(tiny_subject: Path, tmp_path_factory: pytest.TempPathFactory) -> "Trainer":  # noqa: F821
    """A subject trained through every stage for 40 iterations on the CPU."""
    from ua3dtalk.train import Trainer

    trainer = Trainer(tiny_subject, tmp_path_factory.mktemp("ckpt") / "tiny", tiny_options(iterations=40))
    trainer.run()
    return trainer


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_trainer: "Trainer") -> Path:  # noqa: F821
    return tiny_trainer.out
