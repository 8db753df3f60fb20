import re
import subprocess

import imageio_ffmpeg
import numpy as np
import pytest

from ua3dtalk.video import fit_frames, side_by_side, write_video

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()


def _probe(path) -> str:
    """``ffmpeg -i`` prints the container's streams on stderr (ffprobe is not shipped)."""
    return subprocess.run([FFMPEG, "-hide_banner", "-i", str(path)], capture_output=True, text=True).stderr


def _audio_seconds(path, sr=16000) -> float:
    raw = subprocess.run([FFMPEG, "-v", "error", "-i", str(path), "-vn", "-f", "s16le", "-ac", "1", "-ar", str(sr), "-"],
                         capture_output=True, check=True).stdout
    return len(raw) / 2 / sr


def _frames(t, h, w, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (1, h, w, 3), dtype=np.uint8)
    ramp = (np.arange(t, dtype=np.uint8) * 7)[:, None, None, None]
    return base + ramp


@pytest.mark.parametrize("n_frames", [20, 37, 60])  # too few, odd count, too many
def test_video_duration_matches_audio_within_one_frame(tmp_path, n_frames):
    fps, sr = 25, 16000
    audio = 0.3 * np.sin(np.linspace(0, 2 * np.pi * 220 * 1.37, int(1.37 * sr))).astype(np.float32)
    out = write_video(tmp_path / "v.mp4", _frames(n_frames, 48, 64), fps, audio, sr)
    n_decoded, _ = imageio_ffmpeg.count_frames_and_secs(str(out))
    video_s = n_decoded / fps
    audio_s = _audio_seconds(out, sr)
    assert abs(video_s - 1.37) <= 1 / fps
    assert abs(audio_s - 1.37) <= 1 / fps
    assert abs(video_s - audio_s) <= 1 / fps


def test_streams_are_h264_yuv420p_and_aac_with_even_size(tmp_path):
    audio = np.zeros(8000, np.float32)
    audio[::40] = 0.5
    out = write_video(tmp_path / "odd.mp4", _frames(13, 31, 45), 25, audio)
    info = _probe(out)
    video = re.search(r"Stream #\S+: Video: (.*)", info).group(1)
    assert "h264" in video and "yuv420p" in video
    assert re.search(r"\b46x32\b", video)
    assert re.search(r"Stream #\S+: Audio: aac", info)


def test_decoded_frames_keep_content(tmp_path):
    frames = np.zeros((10, 32, 32, 3), np.uint8)
    frames[:, :, :16] = (200, 30, 30)
    out = write_video(tmp_path / "silent.mp4", frames, 25)
    reader = imageio_ffmpeg.read_frames(str(out))
    meta = next(reader)
    assert meta["size"] == (32, 32)
    decoded = [np.frombuffer(f, np.uint8).reshape(32, 32, 3) for f in reader]
    assert len(decoded) == 10
    assert abs(int(decoded[5][16, 4, 0]) - 200) < 20 and decoded[5][16, 28].max() < 25
    assert "Audio" not in _probe(out)


def test_fit_frames_and_side_by_side():
    frames = _frames(3, 4, 4)
    padded = fit_frames(frames, 25, 16000 // 5, 16000)  # 0.2 s -> 5 frames
    assert len(padded) == 5 and np.array_equal(padded[-1], frames[-1])
    assert len(fit_frames(_frames(9, 4, 4), 25, 16000 // 5, 16000)) == 5
    both = side_by_side(_frames(5, 4, 6), _frames(5, 8, 2))
    assert both.shape == (5, 8, 8, 3) and both[:, 4:, :6].max() == 0


def test_bad_frames_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "x.mp4", np.zeros((2, 8, 8, 3), np.float32), 25)
    with pytest.raises(ValueError, match="shape"):
        write_video(tmp_path / "x.mp4", np.zeros((8, 8, 3), np.uint8), 25)
