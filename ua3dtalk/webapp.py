"""The Gradio app: speech + emotion -> talking-face video, with per-view
uncertainty heatmaps, a plot over time and timings.

All app logic lives here; ``app.py`` only builds and launches. Every failure a
user can cause (no audio, an undecodable or too long or silent file, an
unknown subject, an unreachable Hub) reaches the UI and the API as a
``gr.Error`` with a readable message, never as a traceback.
"""
from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import torch

from ua3dtalk.config import EMOTIONS
from ua3dtalk.heatmaps import heatmap_grid, keyframes, uncertainty_plot
from ua3dtalk.video import write_video

log = logging.getLogger("ua3dtalk.webapp")

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES_DIR = ROOT / "assets" / "examples"
MAX_SECONDS_ENV = "UA3DTALK_MAX_SECONDS"
SIZES: tuple[int, ...] = (64, 128, 256, 384, 512)
FUSIONS: tuple[str, ...] = ("uncertainty", "uniform")
AUTO = "auto"
CACHE_SUBJECTS = 2  # loaded pipelines kept in memory
CSS = """
#title {margin-bottom: 0}
#device {opacity: 0.8}
"""


def max_seconds() -> float:
    """Longest accepted audio, from ``UA3DTALK_MAX_SECONDS`` (default 30 s)."""
    raw = os.environ.get(MAX_SECONDS_ENV, "30")
    try:
        value = float(raw)
    except ValueError as err:
        raise ValueError(f"{MAX_SECONDS_ENV} must be a number of seconds, got {raw!r}") from err
    if value <= 0:
        raise ValueError(f"{MAX_SECONDS_ENV} must be positive, got {raw!r}")
    return value


def on_cuda() -> bool:
    return torch.cuda.is_available()


def device_label() -> str:
    if on_cuda():
        return f"CUDA GPU ({torch.cuda.get_device_name(0)})"
    return f"CPU ({torch.get_num_threads()} threads), so rendering is slow and the default resolution is lower"


def default_size() -> int:
    """512 px on a GPU; 256 px on a CPU, where every pixel costs."""
    return 512 if on_cuda() else 256


def bundled_subjects() -> list[str]:
    from ua3dtalk.hub import list_bundled
    return list(list_bundled())


def example_rows(size: int) -> list[tuple[list[Any], str]]:
    """(inputs, label) for each example clip in ``assets/examples``: the clip is
    named after the emotion it was spoken with, so that emotion is preselected."""
    rows = []
    subjects = bundled_subjects()
    subject = subjects[0] if subjects else "demo"
    for path in sorted(EXAMPLES_DIR.glob("*.wav")):
        emotion = path.stem if path.stem in EMOTIONS else AUTO
        rows.append(([subject, str(path), emotion, 1.0, "uncertainty", size], f"{path.stem} speech → {emotion}"))
    if rows:  # one example that lets the model pick the emotion from the audio
        first = list(rows[0][0])
        first[2] = AUTO
        rows.append((first, f"{Path(first[1]).stem} speech → auto"))
    return rows


class PipelineCache:
    """Loaded subjects by name, least recently used dropped first; one lock so
    two requests for the same new subject load it once."""

    def __init__(self, capacity: int = CACHE_SUBJECTS) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, name: str, progress: gr.Progress | None = None) -> Any:
        from ua3dtalk.pipeline import TalkingFacePipeline
        with self._lock:
            if name in self._items:
                self._items.move_to_end(name)
                return self._items[name]
            if progress is not None:
                progress(0.0, desc=f"loading subject {name!r} (first use)")
            pipe = TalkingFacePipeline.from_pretrained(name)
            self._items[name] = pipe
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
            return pipe


class OutputDirs:
    """Per-session folders for the files handed to Gradio (which copies them
    into its own cache, cleaned by ``delete_cache``). A session's previous
    outputs go when it generates again or leaves; everything goes at exit."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="ua3dtalk-app-"))
        atexit.register(shutil.rmtree, self.root, True)

    def new(self, session: str) -> Path:
        folder = self.root / session
        shutil.rmtree(folder, ignore_errors=True)
        path = folder / uuid.uuid4().hex[:8]
        path.mkdir(parents=True)
        return path

    def drop(self, session: str) -> None:
        shutil.rmtree(self.root / session, ignore_errors=True)


def validate(subject: str | None, audio: str | None, emotion: str, intensity: float, fusion: str,
             size: int) -> list[dict[str, Any]]:
    """Checks made before a request joins the queue. Emotion, intensity, fusion
    and size need none: Gradio already refuses values outside their choices."""
    return [
        gr.validate(bool(subject and str(subject).strip()), "choose a subject or type a Hub repo id"),
        gr.validate(audio is not None and str(audio) != "", "no audio: upload a speech file or record one"),
        *(gr.validate(True, "") for _ in range(4)),
    ]


def _emotion_summary(requested: str, used: list[str]) -> str:
    counts = Counter(used)
    shares = ", ".join(f"{name} {100 * n / len(used):.0f} %" for name, n in counts.most_common(3))
    return f"{requested} → {shares}" if requested == AUTO else shares


def _report(result: Any, size: int, encode_s: float, emotion: str, fusion: str) -> str:
    t = result.timings
    seconds = len(result.audio) / result.sample_rate
    total = t["total"] + encode_s
    return "\n".join([
        f"**Device:** {result.device} · **resolution** {size} px · **{len(result.frames)} frames** "
        f"({seconds:.1f} s of audio at {result.fps} fps) · **fusion** {fusion}  ",
        f"**Emotion used:** {_emotion_summary(emotion, result.emotions)}",
        "",
        "| step | seconds |", "| --- | ---: |",
        f"| decode audio | {t['decode']:.2f} |",
        f"| audio features | {t['features']:.2f} |",
        f"| render ({t['fps']:.1f} frames/s) | {t['render']:.2f} |",
        f"| heatmaps + encode video | {encode_s:.2f} |",
        f"| **total** | **{total:.2f}** ({total / max(seconds, 1e-9):.2f} s per second of audio) |",
    ])


class App:
    """The app's state (loaded subjects, output folders) and its one action."""

    def __init__(self) -> None:
        self.pipelines = PipelineCache()
        self.outputs = OutputDirs()

    def generate(self, subject: str, audio: str | None, emotion: str, intensity: float, fusion: str,
                 size: int, request: gr.Request | None = None,
                 progress: gr.Progress = gr.Progress()) -> tuple[str, str, list, Any, str]:
        """Render the video, the heatmap video and key frames, the plot and the report."""
        try:
            return self._generate(subject, audio, emotion, intensity, fusion, size, request, progress)
        except gr.Error:
            raise
        except (ValueError, FileNotFoundError, RuntimeError) as err:
            raise gr.Error(str(err), print_exception=False) from None
        except Exception as err:  # anything else: logged with its traceback here, a message in the UI
            log.exception("generation failed")
            raise gr.Error(f"generation failed unexpectedly ({type(err).__name__}: {err})",
                           print_exception=False) from None

    def _generate(self, subject: str, audio: str | None, emotion: str, intensity: float, fusion: str,
                  size: int, request: gr.Request | None, progress: gr.Progress) -> tuple[str, str, list, Any, str]:
        if audio is None or str(audio) == "":
            raise ValueError("no audio: upload a speech file or record one")
        subject = (subject or "").strip()
        if not subject:
            raise ValueError("choose a subject or type a Hub repo id")
        size = int(size)
        pipe = self.pipelines.get(subject, progress)

        def report(fraction: float, message: str) -> None:
            progress(0.05 + 0.75 * fraction, desc=message)

        result = pipe(audio, emotion=emotion, intensity=float(intensity), fusion=fusion, size=size,
                      max_seconds=max_seconds(), progress=report)
        t0 = time.perf_counter()
        session = getattr(request, "session_hash", None) or "shared"
        folder = self.outputs.new(session)
        progress(0.82, desc="encoding video")
        video = write_video(folder / "talking_face.mp4", result.frames, result.fps, result.audio, result.sample_rate)
        progress(0.88, desc="colour-mapping uncertainty")
        grid = heatmap_grid(result.uncertainty, result.views, result.kinds, device=pipe.device)
        progress(0.92, desc="encoding heatmap video")
        heat = write_video(folder / "uncertainty.mp4", grid, result.fps, result.audio, result.sample_rate)
        gallery = keyframes(result.frames, grid, result.fps, count=6, notes=result.emotions)
        figure = uncertainty_plot(result.scores, result.fps, result.audio, result.sample_rate)
        encode_s = time.perf_counter() - t0
        progress(1.0, desc="done")
        return str(video), str(heat), gallery, figure, _report(result, size, encode_s, emotion, fusion)

    def forget_session(self, request: gr.Request) -> None:
        self.outputs.drop(getattr(request, "session_hash", None) or "shared")

    def warm_up(self, subject: str) -> None:
        """Load the default subject in the background so the first click is quick."""
        try:
            self.pipelines.get(subject)
        except (ValueError, FileNotFoundError, RuntimeError) as err:
            log.warning("could not preload subject %r: %s", subject, err)


def build(app: App | None = None) -> gr.Blocks:
    """The Blocks UI around ``app`` (a new :class:`App` by default)."""
    app = app or App()
    size = default_size()
    subjects = bundled_subjects()
    limit = max_seconds()
    with gr.Blocks(title="UA-3DTalk", delete_cache=(3600, 7200)) as demo:
        gr.Markdown("# UA-3DTalk: emotional talking faces from speech", elem_id="title")
        gr.Markdown(
            "Speech and an emotion in; a talking face rendered from 3D Gaussians out, with maps of where "
            "the model was unsure, per view of its conditioning (audio, content, style, emotion): "
            "*aleatoric* (noise in the input), *epistemic* (disagreement of the ensemble) and each view's "
            f"*fusion weight*. Audio up to {limit:.0f} s.")
        gr.Markdown(f"Running on **{device_label()}**.", elem_id="device")
        with gr.Row():
            with gr.Column(scale=2):
                subject = gr.Dropdown(subjects, value=subjects[0] if subjects else None, label="Subject", elem_id="subject",
                                      allow_custom_value=True,
                                      info="a bundled subject, or type a Hugging Face repo id (user/name[/subfolder])")
                audio = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Speech", elem_id="audio",
                                 buttons=["download"])
                emotion = gr.Dropdown([*EMOTIONS, AUTO], value="neutral", label="Emotion", elem_id="emotion",
                                      info="'auto' takes the emotion from the speech")
                intensity = gr.Slider(0.0, 1.0, value=1.0, step=0.05, label="Intensity")
                fusion = gr.Radio(list(FUSIONS), value="uncertainty", label="View fusion",
                                  info="uncertainty-weighted (the method) or uniform (the baseline), to compare")
                resolution = gr.Dropdown([(f"{s} px", s) for s in SIZES], value=size, label="Resolution", elem_id="resolution",
                                         info=f"default here: {size} px")
                run = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column(scale=3):
                with gr.Row():
                    video = gr.Video(label="Talking face", buttons=["download"], elem_id="result-video", scale=2)
                    heat_video = gr.Video(label="Uncertainty heatmaps",
                                          buttons=["download"], elem_id="heat-video", scale=3)
                gallery = gr.Gallery(label="Key frames: rendered frame beside its heatmaps", columns=2,
                                     height="auto", object_fit="contain", buttons=["download", "fullscreen"])
                plot = gr.Plot(label="Uncertainty over time")
                report = gr.Markdown(elem_id="report")
        inputs = [subject, audio, emotion, intensity, fusion, resolution]
        outputs = [video, heat_video, gallery, plot, report]
        run.click(app.generate, inputs, outputs, api_name="generate", validator=validate,
                  api_description="Speech + emotion -> talking-face video, heatmap video, key frames, plot, report",
                  concurrency_id="render")
        rows = example_rows(size)
        if rows:
            gr.Examples([r for r, _ in rows], inputs, outputs, fn=app.generate, cache_examples=True,
                        cache_mode="lazy", example_labels=[label for _, label in rows],
                        api_visibility="private", label="Examples (synthesized speech)")
        demo.unload(app.forget_session)
    demo.queue(default_concurrency_limit=2 if on_cuda() else 1, max_size=32)
    demo.ua3dtalk_app = app  # type: ignore[attr-defined]  # for warm-up and tests
    return demo


def launch(demo: gr.Blocks | None = None, host: str | None = None, port: int | None = None,
           **kwargs: Any) -> gr.Blocks:
    """Build (unless given) and serve the app. ``host``/``port`` default to
    ``GRADIO_SERVER_NAME``/``GRADIO_SERVER_PORT``, then 127.0.0.1:7860."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    demo = demo or build()
    app: App = demo.ua3dtalk_app  # type: ignore[attr-defined]
    subjects = bundled_subjects()
    if subjects:
        threading.Thread(target=app.warm_up, args=(subjects[0],), daemon=True).start()
    demo.launch(server_name=host, server_port=port, theme=gr.themes.Soft(), css=CSS, **kwargs)
    return demo
