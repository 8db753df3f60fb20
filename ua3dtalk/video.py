"""Writing frames (and the speech they were driven by) to a playable mp4.

Browsers only play H.264 in yuv420p with even frame sizes, so frames are padded
to even sizes. The frame count is fitted to the audio (the last frame repeated
or extra frames dropped) so the video and its sound end together, within one
frame. Encoding goes through the ffmpeg binary that imageio-ffmpeg ships, so no
system ffmpeg is needed.
"""
from __future__ import annotations

import tempfile
import wave
from pathlib import Path

import imageio_ffmpeg
import numpy as np


def _even(frames: np.ndarray) -> np.ndarray:
    """Pad [T,H,W,3] by edge replication to even H and W (yuv420p needs them)."""
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return frames


def fit_frames(frames: np.ndarray, fps: int, n_samples: int, sample_rate: int) -> np.ndarray:
    """Repeat the last frame or drop trailing ones so ``len(frames) / fps`` is the
    audio's duration rounded to the nearest frame."""
    target = max(1, round(n_samples * fps / sample_rate))
    if len(frames) >= target:
        return frames[:target]
    tail = np.repeat(frames[-1:], target - len(frames), axis=0)
    return np.concatenate([frames, tail], axis=0)


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int) -> Path:
    """16-bit PCM mono wav; float input is clipped to [-1, 1]."""
    pcm = (np.clip(np.asarray(audio, dtype=np.float32).reshape(-1), -1.0, 1.0) * 32767.0).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(pcm.tobytes())
    return Path(path)


def write_video(path: str | Path, frames: np.ndarray, fps: int, audio: np.ndarray | None = None,
                sample_rate: int = 16000, quality: float = 7.0) -> Path:
    """Write ``frames`` ([T,H,W,3] uint8) as an H.264 mp4, with ``audio`` (float
    mono) muxed as AAC when given. Returns the path written."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"frames must be a non-empty [T,H,W,3] array, got shape {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {frames.dtype}")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ua3dtalk-video-") as tmp:
        audio_path = None
        if audio is not None:
            audio = np.asarray(audio, dtype=np.float32).reshape(-1)
            if audio.size == 0:
                raise ValueError("audio is empty")
            frames = fit_frames(frames, fps, audio.size, sample_rate)
            audio_path = str(write_wav(Path(tmp) / "audio.wav", audio, sample_rate))
        frames = _even(frames)
        height, width = frames.shape[1:3]
        writer = imageio_ffmpeg.write_frames(
            str(path), (width, height), fps=fps, codec="libx264", pix_fmt_out="yuv420p",
            quality=quality, macro_block_size=2, audio_path=audio_path,
            audio_codec="aac" if audio_path else None,
            output_params=["-movflags", "+faststart"], ffmpeg_log_level="error")
        writer.send(None)
        for frame in frames:
            writer.send(np.ascontiguousarray(frame))
        writer.close()
    return path


def side_by_side(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Two frame stacks ([T,H,W,3] or [H,W,3]) next to each other; the shorter is
    padded with black at the bottom so both keep their pixels unscaled."""
    if a.ndim != b.ndim:
        raise ValueError("side_by_side needs two images or two frame stacks")
    h = max(a.shape[-3], b.shape[-3])

    def pad(x: np.ndarray) -> np.ndarray:
        widths = [(0, 0)] * x.ndim
        widths[-3] = (0, h - x.shape[-3])
        return np.pad(x, widths)

    if a.ndim == 4 and len(a) != len(b):
        raise ValueError(f"frame counts differ: {len(a)} vs {len(b)}")
    return np.concatenate([pad(a), pad(b)], axis=-2)
