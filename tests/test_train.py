import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from ua3dtalk.metrics import MOUTH, lip_box
from ua3dtalk.model import load_checkpoint
from ua3dtalk.data.dataset import MOUTH_LABEL, SubjectDataset
from ua3dtalk.train import LIP_BOX_MARGIN, Batches, Trainer, initial_geometry, mouth_source_frames

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
    assert all(np.isfinite(h["flow"]) and h["flow"] >= 0 for h in render)  # landmark-guided motion
    assert (tiny_trainer.out / "runs").is_dir()  # TensorBoard logs


def test_resume_continues_from_the_same_state(tiny_subject, tmp_path):
    first = Trainer(tiny_subject, tmp_path / "b", tiny_options(iterations=10))
    first.run(until=6)
    resumed = Trainer(tiny_subject, tmp_path / "b", tiny_options(iterations=10, resume=True))
    assert resumed.step == 6 and resumed.phase(6) == first.phase(6)
    a, b = first.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    sa, sb = first.optimizer.state_dict(), resumed.optimizer.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    for index, slots in sa["state"].items():
        for name, value in slots.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(sb["state"][index][name])), (index, name)
    assert torch.equal(first.generator.get_state(), resumed.generator.get_state())
    for part in ("face", "mouth"):   # the landmark bindings, as of the last density control step
        for saved, loaded in zip(first.bindings[part], resumed.bindings[part]):
            assert torch.equal(saved, loaded)
    for key in ("grad_accum", "denom", "max_radii"):
        assert torch.equal(getattr(first.face_density, key), getattr(resumed.face_density, key))
    assert resumed.train_seconds == first.train_seconds
    resumed.run()
    assert resumed.step == 10 and resumed.history[-1]["phase"] == "fusion"


def test_a_time_limit_stops_with_a_resumable_save(tiny_subject, tmp_path):
    trainer = Trainer(tiny_subject, tmp_path / "t", tiny_options(iterations=10))
    trainer.run(minutes=1e-9)
    assert trainer.step == 1 and (tmp_path / "t" / "training_state.safetensors").is_file()
    resumed = Trainer(tiny_subject, tmp_path / "t", tiny_options(iterations=10, resume=True))
    assert resumed.step == 1


def test_learning_rates_decay_over_the_rendering_steps(tiny_trainer):
    rates = {g["name"]: (g["lr"], g["base_lr"]) for g in tiny_trainer.optimizer.param_groups}
    lr, base = rates["face.xyz"]
    assert lr < 0.02 * base                       # 3DGS: positions to 1/100
    lr, base = rates["face_net"]
    assert 0.05 * base < lr < 0.2 * base          # networks to 1/10
    assert rates["face_net.field"][1] == 10 * rates["face_net"][1]


def test_resume_of_another_trainer_version_is_a_clear_error(tiny_subject, tmp_path):
    import pytest
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    Trainer(tiny_subject, tmp_path / "v", tiny_options(iterations=10)).run(until=5)
    path = tmp_path / "v" / "training_state.safetensors"
    with safe_open(str(path), "pt") as handle:
        meta = handle.metadata()
    groups = [g for g in json.loads(meta["param_groups"]) if not g["name"].endswith(".field")]
    save_file(load_file(str(path)), str(path), metadata={**meta, "param_groups": json.dumps(groups)})
    with pytest.raises(ValueError, match="another version"):
        Trainer(tiny_subject, tmp_path / "v", tiny_options(iterations=10, resume=True))


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


def test_density_control_runs_when_the_render_phase_starts_between_steps(tiny_subject, tmp_path):
    """37 iterations put the end of the priors phase at step 3.7: densification
    must still come every ``densify_every`` steps after the first render step."""
    trainer = Trainer(tiny_subject, tmp_path / "d", tiny_options(iterations=37, save_every=10**6))
    calls = []
    original = trainer.face_density.densify_and_prune

    def counted(**kwargs):  # noqa: ANN003, ANN202
        calls.append(trainer.step)
        return original(**kwargs)

    trainer.face_density.densify_and_prune = counted
    trainer.run(until=17)
    assert calls == [10, 16]   # steps 4 + 6 and 4 + 12 (counted before the step increments)


@pytest.mark.parametrize("hold", [False, True])
def test_audio_and_style_nets_learn_from_the_image_loss_unless_held_with_the_expert_frozen(tiny_subject, tmp_path,
                                                                                            hold):
    """After the priors phase the deformation's audio views train end to end, or with
    ``hold_audio_views`` keep what the priors phase taught them while the branches learn;
    the lip-sync expert (the content view) keeps its pretrained weights either way."""
    trainer = Trainer(tiny_subject, tmp_path / "p", tiny_options(iterations=10, save_every=10**6,
                                                                 hold_audio_views=hold))
    trainer.run(until=1)                                  # priors
    prior, face_net = trainer.model.prior, trainer.model.face_net
    before = {k: v.detach().clone() for k, v in prior.state_dict().items()}
    face_before = {k: v.detach().clone() for k, v in face_net.state_dict().items()}
    trainer.run(until=5)                                  # mouth and face phases
    after = prior.state_dict()
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == (set() if hold else {"audio_net", "style"})
    assert any(not torch.equal(face_before[k], v) for k, v in face_net.state_dict().items())


def test_a_non_finite_step_is_skipped_and_a_run_of_them_is_a_clear_error(tiny_subject, tmp_path):
    import pytest

    trainer = Trainer(tiny_subject, tmp_path / "n", tiny_options(iterations=10, save_every=10**6))
    trainer.run(until=3)                                  # into the render phases
    original = trainer._render_loss
    poisoned = []

    def once_nan(*args):  # noqa: ANN002, ANN202
        loss, stats, out = original(*args)
        if not poisoned:
            poisoned.append(trainer.step)
            return loss * float("nan"), stats, out
        return loss, stats, out

    trainer._render_loss = once_nan
    before = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    trainer.run(until=4)
    assert poisoned == [3] and trainer.step == 4 and trainer.skipped_total == 1
    assert all(torch.isfinite(v).all() for v in trainer.model.state_dict().values() if v.is_floating_point())
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())

    trainer._render_loss = lambda *args: (lambda r: (r[0] * float("nan"), r[1], r[2]))(original(*args))
    with pytest.raises(RuntimeError, match="diverged"):
        trainer.run(until=6)


def test_train_until_stops_with_a_resumable_save_and_resume_finishes(tiny_subject, tmp_path):
    import pytest
    from safetensors import safe_open

    from ua3dtalk.train import STATE_NAME, train

    out = tmp_path / "u"
    train(tiny_subject, out, tiny_options(iterations=8), until=3)
    with safe_open(str(out / STATE_NAME), "pt") as handle:
        assert handle.metadata()["step"] == "3"
    assert not (out / "eval.json").exists()            # evaluation waits for the end of the schedule
    with pytest.raises(ValueError, match="already at step 3"):
        train(tiny_subject, out, tiny_options(iterations=8, resume=True), until=2)
    train(tiny_subject, out, tiny_options(iterations=8, resume=True), evaluate=False)
    with safe_open(str(out / STATE_NAME), "pt") as handle:
        assert handle.metadata()["step"] == "8"


def test_the_inside_mouth_cap_holds_while_the_face_still_grows(tiny_subject, tmp_path):
    """With every Gaussian above the gradient threshold both sets would grow at each density step
    (the inside-mouth set first, in a long mouth phase); it stops at its own cap and the face
    keeps the rest of the budget."""
    options = tiny_options(iterations=30, save_every=10**6, grad_threshold=0.0, densify_every=3, densify_until=1.0,
                           mouth_until=0.5, max_gaussians=800, max_mouth_gaussians=75)
    trainer = Trainer(tiny_subject, tmp_path / "m", options)
    trainer.run()
    assert trainer.model.mouth.num_points == 75      # 60 at the start
    assert trainer.model.face.num_points > 400
    free = Trainer(tiny_subject, tmp_path / "f", replace(options, max_mouth_gaussians=None))
    free.run()
    assert free.model.mouth.num_points > 75
    with pytest.raises(ValueError, match="max_mouth_gaussians must be positive"):
        Trainer(tiny_subject, tmp_path / "x", replace(options, max_mouth_gaussians=0))


def test_the_inside_mouth_branch_can_read_the_emotion(tiny_subject, tmp_path):
    """With ``mouth_emotion`` the inside-mouth offsets depend on the emotion label (an emotional
    jaw opening); without it they cannot. The choice is saved with the checkpoint."""
    offsets = {}
    for mouth_emotion in (False, True):
        trainer = Trainer(tiny_subject, tmp_path / str(mouth_emotion),
                          tiny_options(iterations=12, mouth_emotion=mouth_emotion))
        trainer.run()
        assert ("emotion" in trainer.model.mouth_net.blocks) == mouth_emotion
        assert load_checkpoint(trainer.out).cfg.mouth_views == trainer.model.cfg.mouth_views
        _, cond = trainer._batch()
        trainer.model.eval()   # the views' standardisers keep still
        with torch.no_grad():
            offsets[mouth_emotion] = [
                trainer.model(replace(cond, emotion=torch.full_like(cond.emotion, label)), with_maps=False).mouth.d_xyz
                for label in (0, 7)]
    assert torch.equal(*offsets[False])
    assert not torch.equal(*offsets[True])


def test_the_seed_sets_the_initial_subject(tiny_subject, tmp_path):
    """Runs to compare seeds (``ua3dtalk train --seed``): the same seed starts from the same
    Gaussians and networks, another seed from other ones."""
    def start(seed: int, name: str) -> dict[str, torch.Tensor]:
        return Trainer(tiny_subject, tmp_path / name, tiny_options(iterations=10, seed=seed)).model.state_dict()

    first, again, other = start(0, "a"), start(0, "b"), start(1, "c")
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert not torch.equal(first["face.xyz"], other["face.xyz"])
    network = next(key for key, value in first.items() if key.startswith("face_net") and value.dim() == 2)
    assert not torch.equal(first[network], other[network])


def test_the_inside_mouth_starts_from_every_clips_widest_opening(tiny_subject):
    """The first inside-mouth Gaussians come from one wide-open frame per clip, largest
    mouth first, shared out evenly; ``count`` keeps the largest."""
    data = SubjectDataset(tiny_subject, split="train")
    frames = mouth_source_frames(data)
    clips = [data[i]["clip"] for i in frames]
    assert len(set(clips)) == len(clips) == len(data.clips)
    for i in frames:
        in_clip = data.clip_frames(data[i]["clip"])
        assert data.mouth_open[data.global_index(i)] == max(data.mouth_open[data.global_index(j)] for j in in_clip)
    areas = [int((torch.as_tensor(data[i]["mask"]) == MOUTH_LABEL).sum()) for i in frames]
    assert areas == sorted(areas, reverse=True) and areas[-1] > 0
    assert mouth_source_frames(data, 2) == frames[:2]
    with pytest.raises(ValueError, match="positive"):
        mouth_source_frames(data, 0)

    n_mouth = 7 * len(frames) + 1
    one = initial_geometry(data, 20, n_mouth, torch.Generator().manual_seed(0), mouth_frames=1)[2]
    spread = initial_geometry(data, 20, n_mouth, torch.Generator().manual_seed(0))[2]
    assert len(one) == len(spread) == n_mouth
    assert not torch.equal(one, spread)


def test_lip_emphasis_weights_the_lips_in_both_losses(tiny_subject, tmp_path):
    """``flow_emphasis`` weights the landmarks by their motion, so the lips (which move most)
    outweigh the still skin; ``lip_weight`` changes the image loss only through the lip box."""
    plain = Trainer(tiny_subject, tmp_path / "plain", tiny_options(iterations=12))
    lips = Trainer(tiny_subject, tmp_path / "lips", tiny_options(iterations=12, flow_emphasis=1.0, lip_weight=3.0))
    assert torch.equal(plain.flow.landmark_weight, torch.ones_like(plain.flow.landmark_weight))
    weight = lips.flow.landmark_weight
    lip_points = list(MOUTH)
    forehead = [10, 151, 9]
    assert weight[lip_points].mean() > 2 * weight[forehead].mean()
    torch.manual_seed(0)
    batch, cond = plain._batch()
    stats = {}
    for name, trainer in (("plain", plain), ("lips", lips)):
        trainer.model.load_state_dict(plain.model.state_dict())
        torch.manual_seed(1)
        _, stats[name], _ = trainer._render_loss(batch, cond, "face")
    assert stats["plain"]["psnr"] == stats["lips"]["psnr"]     # the same render
    assert stats["plain"]["l1"] != stats["lips"]["l1"]         # weighted differently


def test_decoder_switches_train_and_reload(tiny_subject, tmp_path):
    """``--motion-basis`` reaches both decoders and ``--deform-opacity`` the face branch's; both
    are saved in config.json, the checkpoint rebuilds the same model, and its renders offset the
    face opacity per frame; a config without the keys (older checkpoints) means neither."""
    from ua3dtalk.config import ModelConfig
    from ua3dtalk.model import load_checkpoint

    out = tmp_path / "switches"
    trainer = Trainer(tiny_subject, out, tiny_options(iterations=30, motion_basis=True, deform_opacity=True))
    trainer.run()
    model = load_checkpoint(out)
    assert model.cfg.motion_basis and model.face_net.decoder.basis is not None
    assert model.mouth_net.decoder.basis is not None
    assert float(model.face_net.decoder.basis.weight.abs().max()) > 0        # it was trained
    assert model.cfg.deform_opacity and "opacity" not in model.mouth_net.decoder.heads
    saved = trainer.model.state_dict()
    assert all(torch.equal(value.cpu(), saved[key].cpu()) for key, value in model.state_dict().items())
    torch.manual_seed(0)
    _, cond = trainer._batch()
    with torch.no_grad():
        views, embedding, _ = model.frame_views(cond)
        opacity = model.face_opacity(model.face_motion(views, embedding, model.cfg.fusion))
    assert opacity.shape == (len(cond.frames), model.face.num_points)
    assert float((opacity - model.face.opacity).abs().max()) > 1e-4          # offset, and per frame
    assert not torch.allclose(opacity[0], opacity[-1])
    old = {k: v for k, v in model.cfg.to_dict().items() if k not in ("motion_basis", "deform_opacity")}
    assert not ModelConfig.from_dict(old).motion_basis and not ModelConfig.from_dict(old).deform_opacity


def test_stage2_at_sets_where_uncertainty_fusion_switches_to_the_whole_ensemble(tiny_subject, tmp_path):
    """``--stage2-at 0`` trains with the whole ensemble from the first render step (no random
    member per step); a share outside [0, 1] is a clear error."""
    trainer = Trainer(tiny_subject, tmp_path / "s2", tiny_options(iterations=15, stage2_at=0.0))
    trainer.run()
    stages = {h["stage"] for h in trainer.history if "psnr" in h}
    assert stages == {2}
    with pytest.raises(ValueError, match="stage2_at is a share"):
        Trainer(tiny_subject, tmp_path / "x", tiny_options(stage2_at=1.5))


def test_batches_are_windows_of_one_clip_and_short_clips_are_reported(tiny_subject):
    """A step renders ``frames_per_step`` consecutive frames of one clip; clips shorter than
    that are left out of the batches with a warning, never silently."""
    data = SubjectDataset(tiny_subject, "train", size=64)
    lengths = sorted(len(data.clip_frames(c)) for c in range(len(data.clips)))
    batches = Batches(data, lengths[0], torch.Generator().manual_seed(0))
    for _ in range(20):
        window = batches.draw()
        assert len(window) == lengths[0] and np.all(np.diff(window) == 1)
        assert len({data[i]["clip"] for i in window}) == 1
    assert len(lengths) > 1 and lengths[0] < lengths[-1]
    with pytest.warns(UserWarning, match="shorter than"):
        longest = Batches(data, lengths[-1], torch.Generator().manual_seed(0))
    assert len(longest.clips) == lengths.count(lengths[-1])
    with pytest.raises(ValueError, match="no training clip"):
        Batches(data, lengths[-1] + 1, torch.Generator())


def test_flow_priors_fit_the_face_branch_to_the_landmark_motion_before_rendering(tiny_subject, tmp_path):
    """``flow_priors=N`` adds N steps to the priors phase, in which the face branch (and the views)
    then learn the landmark flow, which falls; the staged phases after it keep their lengths. Without
    it the face branch waits for the render phases."""
    def after_priors(flow_priors: int) -> tuple[Trainer, dict[str, torch.Tensor]]:
        trainer = Trainer(tiny_subject, tmp_path / str(flow_priors), tiny_options(iterations=120, flow_priors=flow_priors))
        before = {k: v.clone() for k, v in trainer.model.face_net.state_dict().items()}
        trainer.run(until=trainer._first_render_step())
        assert {h["phase"] for h in trainer.history} == {"priors"}
        return trainer, before

    trainer, before = after_priors(8)
    assert trainer.total == 128 and trainer.step == 8 + 12
    assert [trainer.phase(s) for s in (19, 20, 20 + 12, 20 + 11)] == ["priors", "mouth", "face", "mouth"]
    after = trainer.model.face_net.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    flows = [h["flow"] for h in trainer.history]
    assert len(flows) == 20 and np.mean(flows[-3:]) < np.mean(flows[:3]), flows
    trainer, before = after_priors(0)
    assert trainer.total == 120 and trainer.step == 12
    after = trainer.model.face_net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all("flow" not in h for h in trainer.history)
    with pytest.raises(ValueError, match="flow_priors"):
        Trainer(tiny_subject, tmp_path / "x", tiny_options(flow_priors=-1))


def test_flow_warmup_fits_only_the_face_branch_to_the_landmark_motion_before_everything(tiny_subject, tmp_path):
    """``flow_warmup=N`` puts N flow-only steps first: the face branch learns the landmark flow, which
    falls, while the lip expert and the Gaussians wait; the priors phase and the stages follow whole."""
    trainer = Trainer(tiny_subject, tmp_path / "w", tiny_options(iterations=120, flow_warmup=10, flow_priors=4))
    assert trainer.total == 134 and trainer._first_render_step() == 10 + 4 + 12
    assert [trainer.phase(s) for s in (0, 9, 10, 25, 26)] == ["flow", "flow", "priors", "priors", "mouth"]
    face_net = {k: v.clone() for k, v in trainer.model.face_net.state_dict().items()}
    expert = {k: v.clone() for k, v in trainer.model.prior.lip_expert.state_dict().items()}
    xyz = trainer.model.face.xyz.detach().clone()
    trainer.run(until=10)
    assert {h["phase"] for h in trainer.history} == {"flow"}
    flows = [h["flow"] for h in trainer.history]
    assert np.mean(flows[-3:]) < np.mean(flows[:3]), flows
    assert any(not torch.equal(face_net[k], v) for k, v in trainer.model.face_net.state_dict().items())
    assert all(torch.equal(expert[k], v) for k, v in trainer.model.prior.lip_expert.state_dict().items())
    assert torch.equal(xyz, trainer.model.face.xyz.detach())
    trainer.run(until=11)
    assert trainer.history[-1]["phase"] == "priors" and "sync" in trainer.history[-1]
    with pytest.raises(ValueError, match="flow_warmup"):
        Trainer(tiny_subject, tmp_path / "x", tiny_options(flow_warmup=-1))


def test_flow_sample_estimates_the_flow_term_from_a_fresh_random_subset_of_the_face_gaussians(tiny_subject, tmp_path):
    """``flow_sample=N`` runs the flow-only steps on N face Gaussians drawn afresh each step. The
    face branch acts on each Gaussian alone, and the flow term is a mean over Gaussians, so the
    size-weighted mean of the terms of two halves is the whole term: the subset estimates it without
    bias. Trained so, the flow still falls."""
    trainer = Trainer(tiny_subject, tmp_path / "s", tiny_options(iterations=120, flow_warmup=10, flow_sample=150,
                                                                 stage2_at=0.0))
    model, n = trainer.model, trainer.model.face.num_points
    first, second = trainer._flow_sample(), trainer._flow_sample()
    assert len(first) == len(set(first.tolist())) == 150 and not torch.equal(first, second)
    batch, cond = trainer._batch()
    with torch.no_grad():
        views, embedding, _ = model.frame_views(cond)

        def offsets(xyz: torch.Tensor) -> torch.Tensor:
            return model.face_net(xyz, model.with_emotion(views, xyz, embedding), stage=2).d_xyz

        whole = offsets(model.face.xyz)
        halves = torch.randperm(n).tensor_split(2)
        for half in halves:
            torch.testing.assert_close(offsets(model.face.xyz[half]), whole[:, half], rtol=1e-4, atol=1e-6)
        full = trainer._flow_loss(batch, whole)
        parts = sum(len(h) * trainer._flow_loss(batch, whole[:, h], h) for h in halves) / n
    assert full > 0
    torch.testing.assert_close(parts, full, rtol=1e-5, atol=0)
    trainer.run(until=10)
    flows = [h["flow"] for h in trainer.history]
    assert np.mean(flows[-3:]) < np.mean(flows[:3]), flows
    assert Trainer(tiny_subject, tmp_path / "all", tiny_options(flow_sample=10**6))._flow_sample() is None
    with pytest.raises(ValueError, match="flow_sample"):
        Trainer(tiny_subject, tmp_path / "x", tiny_options(flow_sample=-1))


@pytest.mark.parametrize("deform_opacity", [False, True])
def test_the_opening_term_moves_the_face_gaussians_without_fading_them(tiny_subject, tmp_path, deform_opacity):
    """``opening_weight`` adds the face Gaussians' coverage of the lip box against the ground
    truth's (none in the mouth's opening) to the face phases' loss. Its gradient reaches their
    per-frame offsets (the face branch; its opacity offset too with ``deform_opacity``) but not
    their opacity or shape, which all frames share, and following it clears the opening."""
    trainer = Trainer(tiny_subject, tmp_path / "opening",
                      tiny_options(iterations=12, opening_weight=1.0, deform_opacity=deform_opacity))
    torch.manual_seed(0)
    batch, cond = trainer._batch()
    while not (batch["mask"] == MOUTH_LABEL).any():
        batch, cond = trainer._batch()
    _, stats, out = trainer._render_loss(batch, cond, "face")
    assert stats["opening"] > 0
    _, mouth_stats, _ = trainer._render_loss(batch, cond, "mouth")
    assert "opening" not in mouth_stats
    trainer.model.zero_grad(set_to_none=True)
    size = trainer.data.size
    lips = lip_box(batch["landmarks"].float(), size, LIP_BOX_MARGIN * size / 512)
    trainer._opening_loss(cond, out.face, batch["mask"], lips).backward()
    face = trainer.model.face
    for shared in (face.opacity_raw, face.scaling_raw, face.rotation_raw, face.sh_dc):
        assert shared.grad is None or not shared.grad.any()
    assert any(p.grad is not None and p.grad.any() for p in trainer.model.face_net.parameters())
    opacity_head = trainer.model.face_net.decoder.heads["opacity"] if deform_opacity else None
    assert opacity_head is None or opacity_head.weight.grad.any()

    held = None if out.face.d_opacity is None else out.face.d_opacity.detach()   # the positions alone clear it
    offsets = out.face.d_xyz.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([offsets], lr=2e-3)
    losses = []
    for _ in range(30):
        face = replace(out.face, d_xyz=offsets, d_opacity=held)
        loss = trainer._opening_loss(cond, face, batch["mask"], lips.detach())
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert losses[-1] < 0.8 * losses[0], losses


def test_the_mouth_flow_term_trains_the_inside_mouth_branch(tiny_subject, tmp_path):
    """``mouth_flow_weight`` adds the landmark flow of the inside-mouth set's offsets to the render
    phases' loss: its gradient reaches the mouth branch, not the face branch."""
    trainer = Trainer(tiny_subject, tmp_path / "mouth-flow", tiny_options(iterations=12, mouth_flow_weight=1.0))
    torch.manual_seed(0)
    batch, cond = trainer._batch()
    _, stats, out = trainer._render_loss(batch, cond, "mouth")
    assert stats["mouth_flow"] > 0
    index, weight = trainer.bindings["mouth"]
    assert index.shape == weight.shape == (trainer.model.mouth.num_points, 3)
    trainer.model.zero_grad(set_to_none=True)
    trainer._flow_loss(batch, out.mouth.d_xyz, part="mouth").backward()
    assert any(p.grad is not None and p.grad.any() for p in trainer.model.mouth_net.parameters())
    assert all(p.grad is None for p in trainer.model.face_net.parameters())
    plain = Trainer(tiny_subject, tmp_path / "plain", tiny_options(iterations=12))
    assert "mouth_flow" not in plain._render_loss(batch, cond, "mouth")[1]


def test_a_finetune_trains_the_schedules_last_steps_again_from_a_trained_subject(tiny_trainer, tiny_subject,
                                                                                 tmp_path):
    trained = load_checkpoint(tiny_trainer.out).state_dict()
    tuner = Trainer(tiny_subject, tmp_path / "ft", tiny_options(iterations=40, finetune=str(tiny_trainer.out),
                                                                finetune_steps=4))
    assert tuner.step == 36 and not tuner.optimizer.state          # a fresh optimiser at the schedule's end
    start = {key: value.detach().clone() for key, value in tuner.model.state_dict().items()}
    assert all(torch.equal(start[key].cpu(), trained[key]) for key in trained)
    tuner.run()
    assert tuner.step == 40 and [h["phase"] for h in tuner.history] == ["fusion"] * 4
    tuned = load_checkpoint(tmp_path / "ft").state_dict()
    assert not torch.equal(tuned["face.xyz"], trained["face.xyz"])


def test_a_finetune_with_deform_opacity_adds_the_opacity_head_to_a_subject_without_it(tiny_trainer, tiny_subject,
                                                                                     tmp_path):
    """The head is the only new weight and starts near zero: the first render is the subject's own."""
    subject = load_checkpoint(tiny_trainer.out)
    tuner = Trainer(tiny_subject, tmp_path / "ft", tiny_options(iterations=40, finetune=str(tiny_trainer.out),
                                                                finetune_steps=3, deform_opacity=True))
    head = tuner.model.face_net.decoder.heads["opacity"]
    assert tuner.model.cfg.deform_opacity and any(head.weight is p for g in tuner.optimizer.param_groups
                                                  for p in g["params"])
    trained = subject.state_dict()
    grown = tuner.model.state_dict()
    assert set(grown) - set(trained) == {"face_net.decoder.heads.opacity.weight", "face_net.decoder.heads.opacity.bias"}
    assert all(torch.equal(grown[key].cpu(), trained[key]) for key in trained)
    torch.manual_seed(0)
    _, cond = tuner._batch()
    with torch.no_grad():
        before = subject(cond, with_maps=False).image
        after = tuner.model.eval()(cond, with_maps=False).image
    assert float((after - before).abs().max()) < 1e-2
    start = head.weight.detach().clone()
    tuner.model.train()
    tuner.run()
    assert not torch.equal(load_checkpoint(tmp_path / "ft").face_net.decoder.heads["opacity"].weight, start)
    with pytest.raises(ValueError, match="deform_opacity: True in the checkpoint, False asked"):
        Trainer(tiny_subject, tmp_path / "back", tiny_options(iterations=40, finetune=str(tmp_path / "ft")))


def test_a_finetune_refuses_options_of_another_model_or_beyond_the_fusion_phase(tiny_trainer, tiny_subject,
                                                                                 tmp_path):
    subject = str(tiny_trainer.out)
    with pytest.raises(ValueError, match="fusion: 'uncertainty' in the checkpoint, 'uniform' asked"):
        Trainer(tiny_subject, tmp_path / "a", tiny_options(iterations=40, finetune=subject, fusion="uniform"))
    with pytest.raises(ValueError, match="from 1 to the 16 steps"):   # 40 - ceil(0.6 * 40)
        Trainer(tiny_subject, tmp_path / "b", tiny_options(iterations=40, finetune=subject, finetune_steps=17))
    with pytest.raises(FileNotFoundError, match="not-a-subject"):
        Trainer(tiny_subject, tmp_path / "c", tiny_options(iterations=40, finetune=str(tmp_path / "not-a-subject")))
