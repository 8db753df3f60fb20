from pathlib import Path

import pytest
import torch

from ua3dtalk.cli import main
from ua3dtalk.model import TalkingHead, load_checkpoint, save_checkpoint
from ua3dtalk.soup import average_checkpoints


def _variant(subject: Path, folder: Path, edit) -> TalkingHead:
    """The subject with its weights edited in place, saved to ``folder``."""
    model = load_checkpoint(subject)
    with torch.no_grad():
        edit(model)
    save_checkpoint(model, folder)
    return model


def _nudge(model: TalkingHead) -> None:
    """What a warm restart does: every weight moves a little, the Gaussians stay where they were."""
    generator = torch.Generator().manual_seed(0)
    for value in model.state_dict().values():
        if value.is_floating_point():
            value.add_(1e-3 * torch.randn(value.shape, generator=generator))


def test_the_average_of_two_restarts_is_the_mean_of_their_weights(tiny_checkpoint, tmp_path):
    nudged = _variant(tiny_checkpoint, tmp_path / "b", _nudge).state_dict()
    original = load_checkpoint(tiny_checkpoint).state_dict()
    assert main(["average", str(tiny_checkpoint), str(tmp_path / "b"), "--out", str(tmp_path / "soup")]) == 0
    soup = load_checkpoint(tmp_path / "soup").state_dict()
    assert soup.keys() == original.keys()
    moved = 0
    for key, value in soup.items():
        if value.is_floating_point():
            torch.testing.assert_close(value, (original[key] + nudged[key]) / 2)
            moved += not torch.equal(value, original[key])
        else:
            assert torch.equal(value, original[key]), key
    assert moved > 10


def test_subjects_that_share_no_gaussians_are_refused(tiny_checkpoint, tmp_path):
    def shuffle(model: TalkingHead) -> None:
        xyz = model.face.xyz
        xyz.copy_(xyz[torch.randperm(len(xyz), generator=torch.Generator().manual_seed(0))])

    _variant(tiny_checkpoint, tmp_path / "shuffled", shuffle)
    with pytest.raises(ValueError, match="do not share their Gaussians"):
        average_checkpoints([str(tiny_checkpoint), str(tmp_path / "shuffled")], tmp_path / "soup")
    assert not (tmp_path / "soup").exists()


def test_averaging_needs_two_subjects_of_one_configuration(tiny_checkpoint, tmp_path, capsys):
    with pytest.raises(ValueError, match="two or more"):
        average_checkpoints([str(tiny_checkpoint)], tmp_path / "soup")
    other = tmp_path / "other"
    other.mkdir()
    config = (Path(tiny_checkpoint) / "config.json").read_text()
    (other / "config.json").write_text(config.replace('"fusion": "uncertainty"', '"fusion": "uniform"'))
    (other / "model.safetensors").write_bytes((Path(tiny_checkpoint) / "model.safetensors").read_bytes())
    assert main(["average", str(tiny_checkpoint), str(other), "--out", str(tmp_path / "soup")]) == 2
    err = capsys.readouterr().err
    assert "another configuration" in err and "fusion: 'uncertainty' against 'uniform'" in err
