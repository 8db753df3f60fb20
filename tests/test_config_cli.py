import json

import pytest
import torch

from ua3dtalk import cli
from ua3dtalk.config import PRESETS, ModelConfig, preset
from ua3dtalk.encoding import TriPlaneField


def test_presets_round_trip(tmp_path):
    for name, cfg in PRESETS.items():
        cfg.save(tmp_path / f"{name}.json")
        assert ModelConfig.load(tmp_path / f"{name}.json") == cfg


def test_paper_preset_sizes():
    cfg = preset("paper")
    assert (cfg.hexplane_resolution, cfg.hexplane_multires) == (64, (1, 2, 4, 8))
    assert (cfg.emotion_hexplane_dim, cfg.emotion_multires) == (64, (1, 2, 4))
    assert (cfg.latent_dim, cfg.ensemble) == (48, 10)
    assert cfg.face_views == ("audio", "content", "style", "emotion")
    assert cfg.mouth_views == ("audio", "content", "style")


def test_unknown_preset_and_keys_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown preset"):
        preset("huge")
    path = tmp_path / "c.json"
    path.write_text(json.dumps({**preset("demo").to_dict(), "warp_drive": 1}))
    with pytest.raises(ValueError, match="warp_drive"):
        ModelConfig.load(path)


def test_cli_help_lists_commands(capsys):
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    for command in ("synth", "preprocess", "train", "average", "render", "eval", "push", "serve"):
        assert command in out


def test_train_options_come_from_the_command_line(monkeypatch, tmp_path):
    import ua3dtalk.train as training

    seen = {}
    monkeypatch.setattr(training, "train", lambda data, out, options, **kw: seen.update(options=options, **kw))
    assert cli.main(["train", str(tmp_path), "--out", str(tmp_path / "ckpt"), "--seed", "3", "--fusion", "uniform",
                     "--mouth-emotion", "--motion-basis", "--deform-opacity", "--stage2-at", "0.2",
                     "--mouth-init-frames", "8", "--minutes", "2",
                     "--frames-per-step", "20", "--flow-priors", "300", "--flow-warmup", "900", "--flow-sample", "4096",
                     "--flow-weight", "20", "--hold-audio-views", "--mouth-flow-weight", "2", "--no-eval"]) == 0
    options = seen["options"]
    assert (options.seed, options.fusion, options.mouth_emotion, options.motion_basis) == (3, "uniform", True, True)
    assert (options.stage2_at, options.mouth_init_frames, options.frames_per_step) == (0.2, 8, 20)
    assert (options.flow_priors, options.flow_warmup, options.flow_sample, options.flow_weight) == (300, 900, 4096, 20)
    assert options.hold_audio_views and options.deform_opacity and options.mouth_flow_weight == 2
    assert seen["minutes"] == 2 and seen["evaluate"] is False


def test_train_defaults_on_the_command_line_are_the_train_options_defaults(monkeypatch, tmp_path):
    import ua3dtalk.train as training

    seen = {}
    monkeypatch.setattr(training, "train", lambda data, out, options, **kw: seen.update(options=options))
    assert cli.main(["train", str(tmp_path), "--out", str(tmp_path / "ckpt")]) == 0
    assert seen["options"] == training.TrainOptions()


def test_triplane_shapes_and_gradients():
    field = TriPlaneField(dim=4, base_resolution=8, multires=(1, 2))
    xyz = torch.rand(100, 3) * 2 - 1
    feats = field(xyz)
    assert feats.shape == (100, 2, 4)
    feats.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in field.planes)


def test_triplane_features_start_near_one_and_vary_with_position():
    """Position features of the same order as the per-frame view features beside them, and
    different from point to point, so the deformation can depend on position from step one."""
    field = TriPlaneField(dim=16, base_resolution=16, multires=(1, 2))
    feats = field(torch.rand(2000, 3) * 2 - 1)
    assert 0.8 < float(feats.mean()) < 1.2
    assert float(feats.std(dim=0).mean()) > 0.3
