import numpy as np
import torch

from ua3dtalk.model import load_checkpoint
from ua3dtalk.train import Trainer

from subject_fixtures import tiny_options


def test_training_improves_the_render(tiny_trainer):
    history = tiny_trainer.history
    render = [h for h in history if "psnr" in h]
    assert len(render) > 30
    early = np.mean([h["psnr"] for h in render[:4]])
    late = np.mean([h["psnr"] for h in render[-4:]])
    assert late > early + 0.5, (early, late)
    phases = [h["phase"] for h in history]
    assert phases[0] == "priors" and phases[-1] == "fusion" and "mouth" in phases and "face" in phases
    assert {h["stage"] for h in render} == {1, 2}  # stage 1 -> stage 2 part-way
    assert (tiny_trainer.out / "runs").is_dir()  # TensorBoard logs


def test_resume_continues_exactly(tiny_subject, tmp_path):
    straight = Trainer(tiny_subject, tmp_path / "a", tiny_options(iterations=10))
    straight.run()
    first = Trainer(tiny_subject, tmp_path / "b", tiny_options(iterations=10))
    first.run(until=6)
    resumed = Trainer(tiny_subject, tmp_path / "b", tiny_options(iterations=10, resume=True))
    assert resumed.step == 6
    resumed.run()
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].shape == b[key].shape, key
        assert torch.allclose(a[key], b[key], atol=1e-6), key


def test_resume_without_state_is_a_clear_error(tiny_subject, tmp_path):
    import pytest

    with pytest.raises(FileNotFoundError, match="resume"):
        Trainer(tiny_subject, tmp_path / "none", tiny_options(iterations=10, resume=True))


def test_checkpoint_round_trip(tiny_trainer):
    folder = tiny_trainer.out
    model = load_checkpoint(folder)
    trained = {k: v.cpu() for k, v in tiny_trainer.model.state_dict().items()}
    assert model.state_dict().keys() == trained.keys()
    for key, value in model.state_dict().items():
        assert torch.equal(value, trained[key]), key
    assert not list(folder.glob("*.pt")) and not list(folder.glob("*.bin"))
    assert model.face.num_points > 0 and model.mouth.num_points > 0
