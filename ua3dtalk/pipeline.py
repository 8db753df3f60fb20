"""Inference: speech + emotion -> frames and per-view uncertainty maps.

``TalkingFacePipeline`` is the one entry point for the CLI, the app and the
evaluation; it owns decoding, features, the emotion schedule, head motion for
any audio length, and batched rendering.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ua3dtalk import audio as audio_io
from ua3dtalk.config import EMOTIONS, ModelConfig
from ua3dtalk.hub import resolve_checkpoint
from ua3dtalk.model import UNCERTAINTY_KINDS, Conditioning, TalkingHead, load_checkpoint

Progress = Callable[[float, str], None]
# (start second, emotion, intensity) steps: emotion may change over time
Schedule = Sequence[tuple[float, str, float]]
AUTO = "auto"
_RAMP_SECONDS = 0.24  # intensity cross-fade at each schedule change


@dataclass
class PipelineOutput:
    frames: np.ndarray             # [T, H, W, 3] uint8
    fps: int
    audio: np.ndarray              # float32 mono, decoded + loudness-normalised
    sample_rate: int
    views: tuple[str, ...]
    kinds: tuple[str, ...]
    uncertainty: np.ndarray        # [T, V, K, h, w] float16
    scores: dict[str, np.ndarray]  # f"{kind}/{view}" -> [T]
    emotions: list[str]            # per frame, 'auto' resolved
    timings: dict[str, float]
    device: str


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return str(device)


def pick_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but no CUDA GPU is available; use --device cpu")
    return torch.device(device)


def reflect_indices(n_frames: int, library: int) -> torch.Tensor:
    """Frame t -> a training-motion index, played forwards then backwards (ping-pong)
    so any audio length gets smooth, continuous head motion and blinks."""
    if library <= 1:
        return torch.zeros(n_frames, dtype=torch.long)
    period = 2 * (library - 1)
    t = torch.arange(n_frames) % period
    return torch.where(t < library, t, period - t)


def emotion_schedule(emotion: str | Schedule, intensity: float, n_frames: int, fps: int,
                     auto_labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame emotion indices [T] and intensities [T] from a name or a schedule."""
    steps = [(0.0, emotion, intensity)] if isinstance(emotion, str) else list(emotion)
    if not steps:
        raise ValueError("the emotion schedule is empty")
    labels = torch.zeros(n_frames, dtype=torch.long)
    strengths = torch.zeros(n_frames)
    for i, (start, name, level) in enumerate(sorted(steps, key=lambda s: s[0])):
        if not 0.0 <= float(level) <= 1.0:
            raise ValueError(f"intensity must be in [0, 1], got {level}")
        first = max(0, int(round(start * fps)))
        if name == AUTO:
            if auto_labels is None:
                raise ValueError("emotion 'auto' needs the audio's predicted emotions")
            labels[first:] = auto_labels[first:]
        elif name in EMOTIONS:
            labels[first:] = EMOTIONS.index(name)
        else:
            raise ValueError(f"unknown emotion {name!r}; choose one of {', '.join(EMOTIONS)} or 'auto'")
        target = torch.full((max(0, n_frames - first),), float(level))
        if i > 0 and first < n_frames:  # fade in from neutral at each change
            ramp = torch.linspace(0, 1, max(2, int(_RAMP_SECONDS * fps)))[: n_frames - first]
            target[: ramp.numel()] *= ramp
        strengths[first:] = target
    return labels, strengths


class TalkingFacePipeline:
    """A loaded subject, ready to turn speech into video."""

    def __init__(self, model: TalkingHead, name: str = "subject", device: str | None = None) -> None:
        self.device = pick_device(device)
        self.model = model.to(self.device).eval()
        self.config: ModelConfig = model.cfg
        self.name = name
        self.extractor = audio_io.get_extractor(self.config.audio_features, device=str(self.device))
        audio_io.check_features(self.config.audio_features, self.config.audio_dim, self.extractor)

    @classmethod
    def from_pretrained(cls, name_or_path: str = "demo", revision: str | None = None,
                        device: str | None = None) -> "TalkingFacePipeline":
        folder = resolve_checkpoint(name_or_path, revision=revision)
        return cls(load_checkpoint(folder), name=name_or_path, device=device)

    @torch.no_grad()
    def __call__(self, audio: object, emotion: str | Schedule = "neutral", intensity: float = 1.0,
                 fusion: str | None = None, size: int | None = None, batch_size: int | None = None,
                 map_size: int = 128, max_seconds: float | None = None,
                 progress: Progress | None = None) -> PipelineOutput:
        report = progress or (lambda fraction, message: None)
        if fusion not in (None, "uncertainty", "uniform"):   # None: the one the subject was trained with
            raise ValueError(f"fusion must be 'uncertainty' or 'uniform', got {fusion!r}")
        cfg, model, device = self.config, self.model, self.device
        size = size or cfg.image_size
        if not 16 <= size <= 2048:
            raise ValueError(f"size must be between 16 and 2048 pixels, got {size}")
        batch_size = batch_size or (32 if device.type == "cuda" else 4)
        timings: dict[str, float] = {}
        start = time.perf_counter()

        report(0.0, "decoding audio")
        wav = audio_io.load_audio(audio)
        seconds = wav.shape[0] / audio_io.SAMPLE_RATE
        if max_seconds is not None and seconds > max_seconds:
            raise ValueError(f"the audio is {seconds:.1f} s long; the limit here is {max_seconds:.0f} s")
        if audio_io.is_silent(wav):
            raise ValueError("the audio is silent: nothing to lip-sync")
        wav = audio_io.normalize_loudness(wav)
        timings["decode"] = time.perf_counter() - start

        t0 = time.perf_counter()
        report(0.05, "audio features")
        features = self.extractor(wav).to(device, torch.float32)
        n_frames = audio_io.num_frames(wav.shape[0], cfg.fps)
        features = features[:n_frames]
        frames_all = torch.arange(n_frames, device=device)
        auto = None
        if emotion == AUTO or (not isinstance(emotion, str) and any(s[1] == AUTO for s in emotion)):
            auto = self._auto_emotions(features, frames_all)
        labels, strengths = emotion_schedule(emotion, intensity, n_frames, cfg.fps, auto)
        timings["features"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        motion = reflect_indices(n_frames, model.motion_viewmats.shape[0]).to(device)
        views, kinds = cfg.face_views, UNCERTAINTY_KINDS
        frames = np.empty((n_frames, size, size, 3), np.uint8)
        maps = np.empty((n_frames, len(views), len(kinds), min(map_size, size), min(map_size, size)), np.float16)
        scores = {f"{k}/{v}": np.empty(n_frames, np.float32) for k in kinds for v in views}
        # device -> host copies land straight in the output arrays (no temporaries)
        frames_view, maps_view = torch.from_numpy(frames), torch.from_numpy(maps)
        lo = 0
        while lo < n_frames:
            idx = frames_all[lo:lo + batch_size]
            cond = Conditioning(features=features, frames=idx, viewmats=model.motion_viewmats[motion[idx]],
                                eye=model.motion_eye[motion[idx]], emotion=labels[idx.cpu()].to(device),
                                intensity=strengths[idx.cpu()].to(device))
            try:
                out = model(cond, size=size, fusion=fusion)
            except torch.OutOfMemoryError:
                if batch_size == 1:
                    raise
                # a smaller GPU (or a larger subject): the same frames in smaller batches
                batch_size //= 2
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            hi = lo + idx.shape[0]
            frames_view[lo:hi].copy_((out.image.clamp(0, 1) * 255 + 0.5).to(torch.uint8))
            unc = out.uncertainty.flatten(1, 2)
            if unc.shape[-1] != maps.shape[-1]:
                unc = F.adaptive_avg_pool2d(unc, maps.shape[-1])
            maps_view[lo:hi].copy_(unc.view(idx.shape[0], len(views), len(kinds), *maps.shape[-2:]).half())
            self._summaries(out, scores, lo, hi)
            report(0.1 + 0.85 * hi / n_frames, f"rendering frame {hi}/{n_frames}")
            lo = hi
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        timings["render"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - start
        timings["fps"] = n_frames / max(timings["render"], 1e-9)
        report(1.0, "done")
        return PipelineOutput(frames=frames, fps=cfg.fps, audio=wav, sample_rate=audio_io.SAMPLE_RATE,
                              views=views, kinds=kinds, uncertainty=maps, scores=scores,
                              emotions=[EMOTIONS[i] for i in labels.tolist()], timings=timings,
                              device=device_name(device))

    def _auto_emotions(self, features: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """Emotion per frame from the speech-emotion encoder, smoothed over ~2 s
        so the face does not flicker between expressions."""
        _, probs = self.model.emotion.predict_emotion(features, frames)
        width = 2 * self.config.fps + 1
        smooth = F.avg_pool1d(probs.t()[None], width, stride=1, padding=width // 2, count_include_pad=False)
        return smooth[0].t().argmax(-1).cpu()

    def _summaries(self, out, scores: dict[str, np.ndarray], lo: int, hi: int) -> None:  # noqa: ANN001
        """Per-frame mean of each view's per-Gaussian statistics (face branch)."""
        stats = {"aleatoric": out.face.aleatoric, "epistemic": out.face.epistemic, "weight": out.face.weight}
        for kind, values in stats.items():
            means = values.float().mean(-1).cpu().numpy()  # [B, V]
            for v, view in enumerate(self.config.face_views):
                scores[f"{kind}/{view}"][lo:hi] = means[:, v]


def render_to_files(subject: str, audio: str | Path, out: str | Path, emotion: str = "neutral",
                    intensity: float = 1.0, fusion: str | None = None, heatmaps: str | Path | None = None,
                    size: int | None = None, device: str | None = None, revision: str | None = None) -> Path:
    """The ``ua3dtalk render`` command: a video with sound, and optionally the heatmaps."""
    from PIL import Image
    from tqdm import tqdm

    from ua3dtalk import heatmaps as heat
    from ua3dtalk.video import write_video

    out = Path(out)
    if out.suffix.lower() != ".mp4":
        raise ValueError(f"the output must be an .mp4 file, got {out.name}")
    if not Path(audio).is_file():
        raise FileNotFoundError(f"audio file not found: {audio}")
    pipe = TalkingFacePipeline.from_pretrained(subject, revision=revision, device=device)
    with tqdm(total=100, desc="render", unit="%") as bar:
        def progress(fraction: float, message: str) -> None:
            bar.set_postfix_str(message)
            bar.update(int(fraction * 100) - bar.n)
        result = pipe(audio, emotion=emotion, intensity=intensity, fusion=fusion, size=size, progress=progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_video(out, result.frames, result.fps, result.audio, result.sample_rate)
    if heatmaps is not None:
        folder = Path(heatmaps)
        folder.mkdir(parents=True, exist_ok=True)
        grid = heat.heatmap_grid(result.uncertainty, result.views, result.kinds, device=pipe.device)
        write_video(folder / "uncertainty.mp4", grid, result.fps, result.audio, result.sample_rate)
        sheet = [image for image, _ in heat.keyframes(result.frames, grid, result.fps)]
        Image.fromarray(np.concatenate(sheet, axis=0)).save(folder / "keyframes.png")
    t = result.timings
    print(f"{out}: {len(result.frames)} frames at {size or pipe.config.image_size}px on {result.device}, "
          f"render {t['fps']:.1f} fps, total {t['total']:.1f} s")
    return out
