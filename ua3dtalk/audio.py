"""Audio front end: decode anything to 16 kHz mono, normalise loudness, and turn
speech into per-video-frame features on one exact frame clock.

Every module that pairs audio with video frames uses :func:`num_frames` and the
extractors here, so frame ``t`` always means samples ``[t*640, (t+1)*640)`` at
16 kHz / 25 fps, with no drift however long the audio is.
"""
from __future__ import annotations

import math
import os
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

SAMPLE_RATE = 16000
FPS = 25
HOP = 160          # 10 ms at 16 kHz
WIN = 400          # 25 ms analysis window
N_FFT = 512
N_MELS = 80
HOPS_PER_FRAME = 4  # 16000 / 25 / 160
SILENCE_DBFS = -60.0  # below this a signal is treated as silence (no gain applied)
PEAK_LIMIT = 10 ** (-1.0 / 20)  # -1 dBFS ceiling after normalisation
_BLOCK = 1600  # 100 ms loudness blocks
DEFAULT_MODELS = {
    "hubert": "facebook/hubert-large-ls960-ft",
    "wav2vec2": "facebook/wav2vec2-base-960h",
}


def _ffmpeg() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def _run_ffmpeg(args: list[str], stdin: bytes | None, what: str) -> np.ndarray:
    """Run ffmpeg with raw f32le mono output on stdout; errors become ValueError.
    ``rematrix_maxval=1`` makes the down-mix an average (ffmpeg's default adds
    channels at -3 dB, which would make stereo files louder than mono ones)."""
    cmd = [_ffmpeg(), "-nostdin", "-hide_banner", "-v", "error", *args,
           "-af", "aresample=rematrix_maxval=1", "-ac", "1", "-f", "f32le", "-acodec", "pcm_f32le", "pipe:1"]
    proc = subprocess.run(cmd, input=stdin, capture_output=True, check=False)
    err = proc.stderr.decode(errors="replace").strip()
    if proc.returncode != 0:
        if "matches no streams" in err or "does not contain any stream" in err:
            raise ValueError(f"{what} has no audio stream")
        tail = err.splitlines()[-1] if err else f"ffmpeg exit code {proc.returncode}"
        raise ValueError(f"cannot decode {what} as audio: {tail}")
    return np.frombuffer(proc.stdout, dtype="<f4").astype(np.float32)


def _to_float(array: np.ndarray) -> np.ndarray:
    """Integer PCM to [-1, 1) floats, as Gradio and soundfile hand them over."""
    if np.issubdtype(array.dtype, np.floating):
        return array.astype(np.float32)
    if array.dtype == np.uint8:
        return (array.astype(np.float32) - 128.0) / 128.0
    if np.issubdtype(array.dtype, np.signedinteger):
        return array.astype(np.float32) / float(2 ** (8 * array.dtype.itemsize - 1))
    raise ValueError(f"unsupported audio sample type {array.dtype}")


def _to_mono(array: np.ndarray) -> np.ndarray:
    """[n] or [n, channels] (Gradio) or [channels, n] -> [n] by averaging channels."""
    if array.ndim == 1:
        return array
    if array.ndim != 2:
        raise ValueError(f"audio array must be 1-D or 2-D, got shape {array.shape}")
    if array.shape[1] <= 16:      # Gradio / soundfile convention first
        return array.mean(axis=1)
    if array.shape[0] <= 16:
        return array.mean(axis=0)
    raise ValueError(f"audio array of shape {array.shape} does not look like [samples, channels]")


def _resample(wav: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """Same resampler (ffmpeg's) for arrays as for files, so both paths agree."""
    if source_rate == target_rate:
        return wav
    args = ["-f", "f32le", "-ar", str(source_rate), "-ac", "1", "-i", "pipe:0", "-ar", str(target_rate)]
    return _run_ffmpeg(args, wav.astype("<f4").tobytes(), "audio array")


def load_audio(source: str | Path | tuple[int, np.ndarray] | np.ndarray,
               sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Any file ffmpeg reads, a Gradio ``(rate, array)`` tuple, or an array already at
    ``sample_rate`` -> float32 mono samples at ``sample_rate``."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"audio file not found: {path}")
        wav = _run_ffmpeg(["-i", str(path), "-map", "0:a:0", "-vn", "-ar", str(sample_rate)], None, str(path))
        what = str(path)
    elif isinstance(source, tuple):
        if len(source) != 2 or not isinstance(source[0], (int, np.integer)):
            raise ValueError("audio tuple must be (sample_rate, samples) as Gradio gives it")
        rate, array = int(source[0]), np.asarray(source[1])
        if rate <= 0:
            raise ValueError(f"invalid sample rate {rate}")
        mono = _to_mono(_to_float(array))
        if mono.size == 0:
            raise ValueError("audio is empty (no samples)")
        wav = _resample(mono, rate, sample_rate)
        what = "audio array"
    elif isinstance(source, np.ndarray):
        wav = _to_mono(_to_float(source))
        what = "audio array"
    else:
        raise ValueError(f"unsupported audio source of type {type(source).__name__}")
    if wav.size == 0:
        raise ValueError(f"{what} is empty (no audio samples)")
    if not np.all(np.isfinite(wav)):
        raise ValueError(f"{what} contains NaN or infinite samples")
    return np.ascontiguousarray(wav, dtype=np.float32)


def _block_rms(wav: np.ndarray) -> np.ndarray:
    """RMS of consecutive 100 ms blocks (the last one partial)."""
    n_blocks = max(1, math.ceil(wav.size / _BLOCK))
    padded = np.zeros(n_blocks * _BLOCK, np.float64)
    padded[: wav.size] = wav
    energy = (padded.reshape(n_blocks, _BLOCK) ** 2).sum(axis=1)
    counts = np.full(n_blocks, _BLOCK, np.float64)
    counts[-1] = wav.size - (n_blocks - 1) * _BLOCK or _BLOCK
    return np.sqrt(energy / counts)


def _dbfs(x: np.ndarray | float) -> np.ndarray:
    return 20.0 * np.log10(np.maximum(x, 1e-12))


def is_silent(wav: np.ndarray, threshold_dbfs: float = -50.0) -> bool:
    """True when even the loudest 100 ms block is below ``threshold_dbfs``, so one
    short word in a long pause still counts as speech."""
    wav = np.asarray(wav, np.float32)
    if wav.size == 0:
        return True
    return bool(_dbfs(_block_rms(wav).max()) < threshold_dbfs)


def normalize_loudness(wav: np.ndarray, target_dbfs: float = -23.0) -> np.ndarray:
    """Gain to a gated RMS of ``target_dbfs`` (LUFS-like gating: blocks below -70 dBFS
    and 10 dB under the mean are ignored, so pauses do not inflate the gain), then
    scaled down if needed so the peak stays at -1 dBFS. Silence is returned as is."""
    wav = np.asarray(wav, np.float32)
    if wav.size == 0 or is_silent(wav, SILENCE_DBFS):
        return wav.copy()
    rms = _block_rms(wav)
    active = rms[_dbfs(rms) > -70.0]
    mean_db = _dbfs(np.sqrt(np.mean(active ** 2)))
    gated = active[_dbfs(active) > mean_db - 10.0]
    loudness = _dbfs(np.sqrt(np.mean(gated ** 2)))
    gain = 10.0 ** ((target_dbfs - loudness) / 20.0)
    peak = float(np.abs(wav).max()) * gain
    if peak > PEAK_LIMIT:
        gain *= PEAK_LIMIT / peak
    return (wav * gain).astype(np.float32)


def num_frames(n_samples: int, fps: int = FPS, sample_rate: int = SAMPLE_RATE) -> int:
    """Video frames for ``n_samples`` of audio: ceil(n * fps / rate). A partial last
    frame counts (its features are zero-padded), so the video is never shorter than
    the audio and at most one frame longer. Integer arithmetic: no float drift."""
    if n_samples < 0:
        raise ValueError("n_samples must be >= 0")
    return -(-n_samples * fps // sample_rate)


@runtime_checkable
class FeatureExtractor(Protocol):
    """Audio samples at 16 kHz -> features [num_frames(len(wav)), dim] at 25 fps."""

    name: str
    dim: int

    def __call__(self, wav: np.ndarray) -> torch.Tensor: ...


@lru_cache(maxsize=4)
def _mel_filterbank(n_mels: int, n_fft: int, sample_rate: int, fmin: float, fmax: float) -> torch.Tensor:
    """Triangular HTK-mel filters [n_fft//2+1, n_mels], area-normalised (Slaney style)."""
    def hz_to_mel(f: np.ndarray | float) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)

    def mel_to_hz(m: np.ndarray) -> np.ndarray:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    freqs = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs[None] - lower) / (centre - lower)
    falling = (upper - freqs[None]) / (upper - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling)) * (2.0 / (upper - lower))
    return torch.from_numpy(weights.T.astype(np.float32))


class LogMelExtractor:
    """80 log-mel bands every 10 ms; the 4 hops of a video frame stacked -> 320-d.

    Hop ``j`` owns samples ``[160j, 160j+160)`` and its 25 ms window is centred on
    that span, so frame ``t`` (hops 4t..4t+3) is exactly samples ``[640t, 640t+640)``.
    """

    name = "logmel"
    dim = N_MELS * HOPS_PER_FRAME

    def __init__(self, device: str | None = None) -> None:
        self.device = torch.device(device or "cpu")
        self.window = torch.hann_window(WIN, periodic=True, device=self.device)
        self.mel = _mel_filterbank(N_MELS, N_FFT, SAMPLE_RATE, 20.0, 7600.0).to(self.device)

    def __call__(self, wav: np.ndarray) -> torch.Tensor:
        samples = torch.as_tensor(np.asarray(wav, np.float32), device=self.device)
        if samples.ndim != 1:
            raise ValueError(f"expected mono samples [n], got shape {tuple(samples.shape)}")
        frames = num_frames(samples.numel())
        if frames == 0:
            return torch.zeros(0, self.dim, device=self.device)
        hops = frames * HOPS_PER_FRAME
        # torch.stft (center=False) centres the 400-sample window at offset 256 of each
        # 512 block; shift so that it sits at 160j + 80, the middle of hop j.
        left = N_FFT // 2 - HOP // 2
        total = HOP * (hops - 1) + N_FFT
        padded = torch.nn.functional.pad(samples, (left, total - left - samples.numel()))
        spec = torch.stft(padded, N_FFT, hop_length=HOP, win_length=WIN, window=self.window,
                          center=False, return_complex=True)           # [257, hops]
        power = spec.real ** 2 + spec.imag ** 2
        logmel = torch.log(torch.clamp(power.T @ self.mel, min=1e-10))   # [hops, 80]
        return logmel.reshape(frames, self.dim)


class TransformersExtractor:
    """HuBERT / wav2vec2 hidden states (50 Hz) averaged in pairs onto the 25 fps clock."""

    def __init__(self, kind: str, model: str, device: str | None = None) -> None:
        from transformers import AutoModel

        if model.startswith(("/", ".", "~")) and not Path(model).expanduser().is_dir():
            raise RuntimeError(f"{kind} model: local folder {model!r} not found")
        offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
        try:
            self.model = AutoModel.from_pretrained(model, local_files_only=offline)
        except (OSError, ValueError) as exc:
            raise RuntimeError(
                f"cannot load the {kind} audio model {model!r}: the Hugging Face Hub is unreachable"
                f"{' (HF_HUB_OFFLINE is set)' if offline else ''} and it is not in the local cache ({exc}). "
                f"Pre-fill the cache and set HF_HUB_OFFLINE=1, or pass a local folder: "
                f"get_extractor('{kind}:/path/to/model'); the built-in 'logmel' works offline."
            ) from exc
        self.device = torch.device(device or "cpu")
        self.model.to(self.device).eval()
        self.name = kind if model == DEFAULT_MODELS[kind] else f"{kind}:{model}"
        self.dim = int(self.model.config.hidden_size)

    @torch.no_grad()
    def __call__(self, wav: np.ndarray) -> torch.Tensor:
        samples = torch.as_tensor(np.asarray(wav, np.float32))
        frames = num_frames(samples.numel())
        if frames == 0:
            return torch.zeros(0, self.dim, device=self.device)
        # conv front end: 400-sample field, 320 stride -> 2 outputs per 640-sample frame
        need = frames * 2 * 320 + 80
        samples = torch.nn.functional.pad(samples, (0, need - samples.numel()))
        samples = (samples - samples.mean()) / torch.sqrt(samples.var() + 1e-7)
        hidden = self.model(samples[None].to(self.device)).last_hidden_state[0]
        return hidden[: 2 * frames].reshape(frames, 2, self.dim).mean(dim=1)


def get_extractor(name: str = "logmel", device: str | None = None) -> FeatureExtractor:
    """``logmel`` (built in, offline), ``hubert`` / ``wav2vec2`` (default Hub models),
    or ``hubert:<repo id or local folder>`` / ``wav2vec2:<...>``."""
    if name == "logmel":
        return LogMelExtractor(device)
    kind, _, model = name.partition(":")
    if kind not in DEFAULT_MODELS:
        raise ValueError(f"unknown audio features {name!r}; choose 'logmel', 'hubert', 'wav2vec2' "
                         "or 'hubert:<model>' / 'wav2vec2:<model>'")
    return TransformersExtractor(kind, model or DEFAULT_MODELS[kind], device)


def check_features(expected: str, expected_dim: int, extractor: FeatureExtractor) -> None:
    """Refuse features from another extractor than the checkpoint was trained with:
    the networks would run but produce nonsense."""
    if extractor.name != expected or extractor.dim != expected_dim:
        raise ValueError(
            f"this checkpoint was trained with {expected!r} ({expected_dim}-d) audio features "
            f"but got {extractor.name!r} ({extractor.dim}-d); use get_extractor({expected!r})"
        )
