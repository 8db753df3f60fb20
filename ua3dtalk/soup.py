"""Checkpoint averaging (a "model soup"). Warm restarts of one trained subject (``train
--finetune``) keep its Gaussians index for index, so the mean of their weights is a subject
too. Average siblings: two restart chains from one start averaged scored above each of them
held out, while a subject averaged with its own restart scored below both (bench/RESULTS.md,
twenty-sixth and twenty-seventh sessions). Subjects trained apart share no Gaussians, and
their mean would be noise, so they are refused."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from ua3dtalk.model import TalkingHead, load_checkpoint, save_checkpoint

# the median distance between a Gaussian and its namesake in the first checkpoint, as a share of
# the spread of the first's positions, above which the two are not restarts of one subject (the
# bundled subject's restarts: 0.0004 to 0.002; its Gaussians shuffled: 1.2)
ALIGNMENT_LIMIT = 0.05
POSITIONS = ("face.xyz", "mouth.xyz")


def average_checkpoints(subjects: Sequence[str], out: str | Path) -> Path:
    """Write the mean of the subjects' weights to ``out`` (``config.json`` + ``model.safetensors``).
    Integer buffers (update counts of running statistics) are the first subject's."""
    from ua3dtalk.hub import resolve_checkpoint

    if len(subjects) < 2:
        raise ValueError(f"averaging needs two or more subjects, got {len(subjects)}")
    folders = [resolve_checkpoint(name) for name in subjects]
    models = [load_checkpoint(folder) for folder in folders]
    states = [model.state_dict() for model in models]
    first = models[0]
    for folder, model, state in zip(folders[1:], models[1:], states[1:]):
        _check_same_subject(first, states[0], folders[0], model, state, folder)
    mean = {key: torch.stack([state[key] for state in states]).mean(0) if value.is_floating_point() else value
            for key, value in states[0].items()}
    first.load_state_dict(mean)
    return save_checkpoint(first, out)


def _check_same_subject(first: TalkingHead, sa: dict[str, torch.Tensor], first_dir: Path,
                        other: TalkingHead, sb: dict[str, torch.Tensor], other_dir: Path) -> None:
    """Refuse what cannot be averaged: another configuration, other shapes, other Gaussians."""
    differ = [f"{key}: {a!r} against {b!r}" for key, a, b in first.cfg.differences(other.cfg)]
    if differ:
        raise ValueError(f"{other_dir} has another configuration than {first_dir}: " + "; ".join(differ))
    shapes = [f"{key} {tuple(sa[key].shape)} against {tuple(sb[key].shape)}"
              for key in sa if sa[key].shape != sb[key].shape]
    if shapes:
        raise ValueError(f"{other_dir} has other tensor shapes than {first_dir} (another number of "
                         "Gaussians?): " + "; ".join(shapes[:3]))
    for key in POSITIONS:
        spread = sa[key].std(0).norm().clamp_min(1e-12)
        drift = float((sa[key] - sb[key]).norm(dim=-1).median() / spread)
        if drift > ALIGNMENT_LIMIT:
            raise ValueError(f"{other_dir} and {first_dir} do not share their Gaussians ({key}: median "
                             f"distance {drift:.2f} of the positions' spread, limit {ALIGNMENT_LIMIT}); "
                             "average only warm restarts (train --finetune) of one subject")
