import subprocess

import numpy as np
import pytest
import torch

from ua3dtalk.config import EMOTIONS
from ua3dtalk.pipeline import TalkingFacePipeline, emotion_schedule, reflect_indices, render_to_files

from subject_fixtures import TINY_SIZE

RATE = 16000


def _speech(seconds: float = 1.2, seed: int = 0) -> tuple[int, np.ndarray]:
    """Voiced-like noise bursts: enough energy to be 'speech' for the pipeline."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)
    wav = envelope * (0.3 * np.sin(2 * np.pi * 180 * t) + 0.05 * rng.standard_normal(t.size))
    return RATE, wav.astype(np.float32)


@pytest.fixture(scope="module")
def pipe(tiny_checkpoint):
    return TalkingFacePipeline.from_pretrained(str(tiny_checkpoint), device="cpu")


def test_outputs_shapes_and_determinism(pipe):
    out = pipe(_speech(), emotion="happy", size=TINY_SIZE)
    n = len(out.frames)
    assert n == 30  # 1.2 s at 25 fps
    assert out.frames.shape == (n, TINY_SIZE, TINY_SIZE, 3) and out.frames.dtype == np.uint8
    assert out.uncertainty.shape[:3] == (n, 4, 3)
    assert np.isfinite(out.uncertainty.astype(np.float32)).all()
    assert set(out.scores) == {f"{k}/{v}" for k in out.kinds for v in out.views}
    weights = np.stack([out.scores[f"weight/{v}"] for v in out.views])
    assert np.allclose(weights.sum(0), 1, atol=1e-3)  # fusion weights share the precision
    assert out.emotions == ["happy"] * n
    again = pipe(_speech(), emotion="happy", size=TINY_SIZE)
    assert np.array_equal(out.frames, again.frames)


def test_out_of_memory_retries_the_same_frames_in_smaller_batches(pipe, monkeypatch):
    """A GPU too small for the default batch: the batch halves and the video is unchanged."""
    reference = pipe(_speech(), emotion="sad", size=TINY_SIZE, batch_size=2).frames
    forward, sizes = type(pipe.model).forward, []

    def small_gpu(model, cond, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        sizes.append(cond.frames.shape[0])
        if cond.frames.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return forward(model, cond, *args, **kwargs)

    monkeypatch.setattr(type(pipe.model), "forward", small_gpu)
    out = pipe(_speech(), emotion="sad", size=TINY_SIZE, batch_size=8)
    assert sizes[:3] == [8, 4, 2] and set(sizes[3:]) <= {2}
    assert np.array_equal(out.frames, reference)


def test_emotion_and_fusion_change_the_face(pipe):
    happy = pipe(_speech(), emotion="happy", size=TINY_SIZE).frames.astype(int)
    sad = pipe(_speech(), emotion="sad", size=TINY_SIZE).frames.astype(int)
    uniform = pipe(_speech(), emotion="happy", fusion="uniform", size=TINY_SIZE).frames.astype(int)
    assert np.abs(happy - sad).max() > 0
    assert np.abs(happy - uniform).max() > 0


def test_the_default_fusion_is_the_one_the_subject_was_trained_with(tiny_checkpoint):
    """A uniform-fusion subject (such as the demo's twin) renders with uniform fusion unless told otherwise."""
    from dataclasses import replace

    from ua3dtalk.model import load_checkpoint

    model = load_checkpoint(str(tiny_checkpoint))
    model.cfg = replace(model.cfg, fusion="uniform")
    twin = TalkingFacePipeline(model, name="twin", device="cpu")
    default = twin(_speech(), emotion="happy", size=TINY_SIZE).frames
    assert np.array_equal(default, twin(_speech(), emotion="happy", fusion="uniform", size=TINY_SIZE).frames)
    assert not np.array_equal(default, twin(_speech(), emotion="happy", fusion="uncertainty", size=TINY_SIZE).frames)


def test_auto_emotion_and_schedule(pipe):
    out = pipe(_speech(), emotion="auto", size=TINY_SIZE)
    assert set(out.emotions) <= set(EMOTIONS)
    labels, strength = emotion_schedule([(0.0, "neutral", 1.0), (0.6, "angry", 0.5)], 1.0, 30, 25)
    assert labels[0] == EMOTIONS.index("neutral") and labels[-1] == EMOTIONS.index("angry")
    assert strength[15] < 0.5 and abs(float(strength[-1]) - 0.5) < 1e-6  # faded in


@pytest.mark.parametrize("kwargs, message", [
    (dict(emotion="bored"), "unknown emotion"),
    (dict(intensity=1.5), "intensity"),
    (dict(fusion="mean"), "fusion"),
    (dict(max_seconds=0.5), "limit"),
])
def test_bad_requests_are_clear(pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pipe(_speech(), size=TINY_SIZE, **kwargs)


def test_silent_audio_is_refused(pipe):
    with pytest.raises(ValueError, match="silent"):
        pipe((RATE, np.zeros(RATE, np.float32)), size=TINY_SIZE)


def test_motion_replay_is_continuous():
    idx = reflect_indices(200, 7)
    assert idx.min() == 0 and idx.max() == 6
    assert (idx[1:] - idx[:-1]).abs().max() == 1
    assert torch.equal(reflect_indices(3, 1), torch.zeros(3, dtype=torch.long))


def test_render_to_files_writes_video_and_heatmaps(tiny_checkpoint, tmp_path):
    import imageio_ffmpeg
    from ua3dtalk.video import write_wav

    rate, wav = _speech(2.0)
    audio = write_wav(tmp_path / "speech.wav", wav, rate)
    out = render_to_files(str(tiny_checkpoint), str(audio), tmp_path / "out.mp4", emotion="surprised",
                          heatmaps=tmp_path / "maps", size=TINY_SIZE, device="cpu")
    assert out.is_file() and (tmp_path / "maps" / "uncertainty.mp4").is_file()
    assert (tmp_path / "maps" / "keyframes.png").is_file()
    probe = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-i", str(out)], capture_output=True, text=True).stderr
    assert "h264" in probe and "aac" in probe
    n_frames, seconds = imageio_ffmpeg.count_frames_and_secs(str(out))
    assert abs(n_frames / 25 - 2.0) <= 1 / 25


def test_render_refuses_missing_audio_and_bad_output(tiny_checkpoint, tmp_path):
    with pytest.raises(FileNotFoundError):
        render_to_files(str(tiny_checkpoint), str(tmp_path / "none.wav"), tmp_path / "o.mp4")
    with pytest.raises(ValueError, match="mp4"):
        render_to_files(str(tiny_checkpoint), str(tmp_path / "none.wav"), tmp_path / "o.avi")
