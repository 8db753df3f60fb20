"""``ua3dtalk synth``: a talking-face subject synthesized from one portrait.

Speech comes from espeak-ng with the engine's own phoneme timing, visemes and
blinks animate the face, and the eight emotions at three levels add facial
actions and prosody. Every frame's ground truth (landmarks, phoneme, mouth
opening, eye openness, emotion) is kept beside the videos (format: ``truth.py``).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from ua3dtalk.config import EMOTIONS
from ua3dtalk.data import sentences
from ua3dtalk.data.expressions import FacePose, FaceRig, prosody_for
from ua3dtalk.data.face_warp import load_portrait
from ua3dtalk.data.speech import Phoneme, Speech, speak
from ua3dtalk.data.truth import SUBJECT_FILE, ClipInfo, ClipTruth, clip_name, write_subject
from ua3dtalk.data.visemes import blink_track, frame_phonemes, mouth_track

FPS = 25
LEAD_S, TAIL_S = 0.3, 0.45  # silence around each sentence
HELDOUT_EVERY = 7            # clip 1, 8, 15, ... is held out (~14 %)
TRAIN_LEVELS = (3, 1, 2)     # strongest first, so short runs show clear emotions
PREVIEW_POSES: tuple[tuple[str, FacePose], ...] = (
    ("closed", FacePose()),
    ("open vowel", FacePose(open=1.0)),
    ("rounded", FacePose(open=0.3, round=1.0)),
    ("f / v", FacePose(open=0.12, fv=1.0)),
    ("spread", FacePose(open=0.3, spread=0.8)),
    ("blink", FacePose(eye_open=0.0)),
)


@dataclass(frozen=True)
class ClipPlan:
    split: str
    emotion: str
    level: int
    sentence: str


def plan_clip(index: int) -> ClipPlan:
    """Which split, emotion, level and sentence clip ``index`` gets.

    Train clips walk through all 24 emotion x level pairs before repeating, and
    each pass over the emotions moves the sentences on by one, so that no sentence
    is tied to one emotion (8 divides the 40 training sentences) and no two clips
    repeat both; held-out clips cycle the emotions in another order and use
    held-out sentences.
    """
    if index % HELDOUT_EVERY == 1:
        h = index // HELDOUT_EVERY
        return ClipPlan("heldout", EMOTIONS[(5 + 3 * h) % len(EMOTIONS)], (3, 2, 1)[h % 3],
                        sentences.HELDOUT[h % len(sentences.HELDOUT)])
    j = index - (index + HELDOUT_EVERY - 1) // HELDOUT_EVERY  # train clips before this one
    return ClipPlan("train", EMOTIONS[j % len(EMOTIONS)], TRAIN_LEVELS[(j // len(EMOTIONS)) % 3],
                    sentences.TRAIN[(j + j // len(EMOTIONS)) % len(sentences.TRAIN)])


def _pad(speech: Speech) -> tuple[np.ndarray, list[Phoneme], int]:
    """Audio with silence around it, whole frames long; phonemes shifted to match."""
    sr = speech.sample_rate
    n_frames = int(np.ceil((LEAD_S + speech.duration + TAIL_S) * FPS))
    audio = np.zeros(int(round(n_frames * sr / FPS)), np.int16)
    lead = int(LEAD_S * sr)
    audio[lead:lead + len(speech.audio)] = speech.audio[: len(audio) - lead]
    phonemes = [Phoneme(p.name, p.start + LEAD_S, p.end + LEAD_S) for p in speech.phonemes]
    return audio, phonemes, n_frames


def _write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(audio.astype("<i2").tobytes())


def _ffmpeg() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def _encoder(path: Path, wav: Path, size: int) -> subprocess.Popen:
    """An ffmpeg process taking raw RGB frames on stdin: H.264 yuv420p + AAC, bit-exact."""
    cmd = [_ffmpeg(), "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{size}x{size}",
           "-r", str(FPS), "-i", "-", "-i", str(wav), "-map", "0:v", "-map", "1:a",
           "-c:v", "libx264", "-preset", "veryfast", "-crf", "17", "-pix_fmt", "yuv420p", "-threads", "1",
           "-c:a", "aac", "-b:a", "128k", "-fflags", "+bitexact", "-flags:v", "+bitexact",
           "-flags:a", "+bitexact", "-map_metadata", "-1", "-movflags", "+faststart", str(path)]
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)


def render_clip(rig: FaceRig, plan: ClipPlan, speech: Speech, video: Path, rng: np.random.Generator,
                bar: tqdm | None = None) -> ClipTruth:
    """Render one clip to ``video`` and return its ground truth."""
    audio, phonemes, n_frames = _pad(speech)
    times = (np.arange(n_frames) + 0.5) / FPS
    mouth = mouth_track(phonemes, times)
    eyes = blink_track(n_frames, FPS, rng)
    wav = video.with_suffix(".wav")
    _write_wav(wav, audio, speech.sample_rate)
    proc = _encoder(video, wav, rig.portrait.size)
    landmarks = np.zeros((n_frames, 478, 2), np.float32)
    try:
        for f in range(n_frames):
            o, r, s, fv = (float(x) for x in mouth[f])
            frame, landmarks[f] = rig.render(FacePose(open=o, round=r, spread=s, fv=fv, eye_open=float(eyes[f]),
                                                      emotion=plan.emotion, level=plan.level))
            proc.stdin.write(frame.tobytes())
            if bar is not None:
                bar.update(1)
        proc.stdin.close()
        err = proc.stderr.read().decode(errors="replace")
        if proc.wait() != 0:
            raise RuntimeError(f"ffmpeg failed to encode {video.name}: {err.strip()}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        wav.unlink(missing_ok=True)
    return ClipTruth(landmarks=landmarks, phoneme=frame_phonemes(phonemes, times), viseme_open=mouth[:, 0],
                     lip_round=mouth[:, 1], eye_open=eyes, emotion=plan.emotion, level=plan.level)


def contact_sheet(rig: FaceRig, thumb: int = 160) -> np.ndarray:
    """Rows = the eight emotions (level 3), columns = mouth shapes and a blink."""
    lo, hi = rig.rest.min(0), rig.rest.max(0)
    c, half = (lo + hi) / 2, 0.62 * float(np.max(hi - lo))
    x0, y0 = np.clip(np.round(c - half).astype(int), 0, None)
    x1, y1 = x0 + int(2 * half), y0 + int(2 * half)
    label_w, head = 110, 24
    sheet = np.full((head + thumb * len(EMOTIONS), label_w + thumb * len(PREVIEW_POSES), 3), 255, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    for j, (name, _) in enumerate(PREVIEW_POSES):
        cv2.putText(sheet, name, (label_w + j * thumb + 6, 17), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    for i, emotion in enumerate(EMOTIONS):
        y = head + i * thumb
        cv2.putText(sheet, emotion, (6, y + thumb // 2), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        for j, (_, pose) in enumerate(PREVIEW_POSES):
            frame, _ = rig.render(FacePose(pose.open, pose.round, pose.spread, pose.fv, pose.eye_open, emotion, 3))
            crop = frame[y0:y1, x0:x1]
            sheet[y:y + thumb, label_w + j * thumb:label_w + (j + 1) * thumb] = cv2.resize(
                crop, (thumb, thumb), interpolation=cv2.INTER_AREA)
    return sheet


def _prepare_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / SUBJECT_FILE).is_file())):
        raise ValueError(f"{out} exists and is not an empty folder or a synthesized subject; choose another --out")


def synthesize(out: str | Path, portrait: str | Path | None = None, minutes: float = 1.0, seed: int = 0,
               size: int = 512, preview: bool = False) -> Path:
    """Synthesize a subject into ``out`` (see ``truth.py`` for the layout) and return its path.

    Clips are added until ``minutes`` of video exist (at least one train and one
    held-out clip). Output appears atomically: it is written to a temporary folder
    beside ``out`` and moved into place only when complete.
    """
    if not minutes > 0:
        raise ValueError(f"--minutes must be positive, got {minutes}")
    out = Path(out)
    _prepare_out(out)
    face = load_portrait(portrait, size)
    rig = FaceRig(face)
    # plan and speak first, so the progress bar knows the total
    clips: list[tuple[ClipPlan, Speech]] = []
    total_s = 0.0
    while total_s < minutes * 60 or len(clips) < 2:
        plan = plan_clip(len(clips))
        speech = speak(plan.sentence, prosody_for(plan.emotion, plan.level))
        clips.append((plan, speech))
        total_s += LEAD_S + speech.duration + TAIL_S
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for sub in ("train", "heldout", "truth"):
            (tmp / sub).mkdir()
        infos: list[ClipInfo] = []
        n_total = sum(_pad(s)[2] for _, s in clips)
        with tqdm(total=n_total, unit="frame", desc="synth") as bar:
            for index, (plan, speech) in enumerate(clips):
                name = clip_name(plan.emotion, plan.level, index)
                video = f"{plan.split}/{name}.mp4"
                truth = render_clip(rig, plan, speech, tmp / video, np.random.default_rng([seed, index]), bar)
                truth.save(tmp / "truth" / f"{name}.npz")
                infos.append(ClipInfo(name=name, split=plan.split, emotion=plan.emotion, level=plan.level,
                                      sentence=plan.sentence, n_frames=len(truth.landmarks), video=video))
        write_subject(tmp, fps=FPS, size=size, portrait=face.provenance, seed=seed, clips=infos)
        if preview:
            sheet = contact_sheet(rig)
            cv2.imwrite(str(tmp / "preview.png"), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
