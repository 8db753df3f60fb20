"""Real monocular talking-face video(s) -> subject dataset (the layout that
``ua3dtalk.data.dataset.SubjectDataset`` reads; see its module docstring).

Steps per video: probe (video + audio stream), audio to 16 kHz mono, frames
resampled by ffmpeg to a constant 25 fps (variable or other frame rates are
converted, not refused), face mesh on the full frames; one static crop box
per camera (all videos of one frame size share it), then crop/resize, face
mesh + selfie segmentation on the crops. After all videos: gap filling and
zero-lag smoothing of the landmarks, a shared reference head shape and
per-frame cameras (smoothed in time per clip), label masks, eye/mouth signals
and a background plate. Everything is written to a temporary sibling folder
that is renamed into place only when complete.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from ua3dtalk.config import EMOTIONS
from ua3dtalk.data import landmarks as lmk
from ua3dtalk.data import lip_tracking

DATASET_VERSION = 1
FPS = 25
SAMPLE_RATE = 16000
MIN_SECONDS = 1.0
MAX_MISSING_FACE = 0.2
FOCAL_FACTOR = 2.0        # focal = 2 * size: a narrow field of view, like a portrait lens
CROP_SCALE = 1.9          # crop side / landmark-bbox extent: hair, ears and neck stay in view
POSE_SMOOTHING = 3.0      # Gaussian sigma in frames: head pose moves slower than the mouth
RIGID_SHARE = 0.3         # share of the landmarks, those that move least, the head pose is fitted to
BACKGROUND_SAMPLES = 64
HELDOUT_FOLDERS = frozenset({"heldout", "test", "val"})
_MEAD_STEM = re.compile(r"^(?P<emotion>[a-z]+)_level_(?P<level>\d+)(?:_(?P<rest>.+))?$")
_MEAD_LEVEL_DIR = re.compile(r"^level_(?P<level>\d+)$")


@dataclass
class _Video:
    """One input video and what is known about it before decoding."""

    path: Path
    name: str
    split: str
    emotion: str
    level: int
    label_source: str
    meta: dict = field(default_factory=dict)


@dataclass
class _ClipResult:
    """Per-clip arrays produced by decoding (landmarks in crop pixels)."""

    landmarks: np.ndarray        # [T,478,3], NaN rows where no face
    person: np.ndarray           # [T, ceil(S*S/8)] packed person masks
    crop: tuple[int, int, int]   # x0, y0, side in source pixels
    samples: list[tuple[np.ndarray, np.ndarray]]  # (crop RGB, person bool) for the background


def parse_mead_label(path: str | Path) -> tuple[str, int] | None:
    """Emotion and level from a MEAD-style name: ``angry_level_2_001.mp4`` or
    ``.../angry/level_2/001.mp4``; None when the name does not follow MEAD."""
    p = Path(path)
    m = _MEAD_STEM.match(p.stem.lower())
    if m and m["emotion"] in EMOTIONS:
        return m["emotion"], int(m["level"])
    d = _MEAD_LEVEL_DIR.match(p.parent.name.lower())
    if d and p.parent.parent.name.lower() in EMOTIONS:
        return p.parent.parent.name.lower(), int(d["level"])
    return None


def split_of(path: str | Path) -> str:
    """``heldout`` for videos inside a heldout/test/val folder, else ``train``."""
    return "heldout" if Path(path).parent.name.lower() in HELDOUT_FOLDERS else "train"


def _describe(paths: list[str], emotion: str | None, intensity: int | None) -> list[_Video]:
    if emotion is not None and emotion not in EMOTIONS:
        raise ValueError(f"unknown emotion {emotion!r}; choose one of {', '.join(EMOTIONS)}")
    if intensity is not None and intensity not in (1, 2, 3):
        raise ValueError(f"intensity must be 1, 2 or 3, got {intensity}")
    videos, used = [], set()
    for s in paths:
        p = Path(s)
        if not p.is_file():
            raise FileNotFoundError(f"video not found: {p}")
        parsed = parse_mead_label(p)
        source = "options" if emotion is not None else "filename" if parsed else "default"
        emo = emotion or (parsed[0] if parsed else "neutral")
        level = intensity or (parsed[1] if parsed else 1)
        if not 1 <= level <= 3:
            raise ValueError(f"{p}: MEAD level must be 1-3, got {level}")
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", p.stem)
        base = stem if _MEAD_STEM.match(stem.lower()) or not parsed else f"{emo}_level_{level}_{stem}"
        name, k = base, 2
        while name in used:
            name, k = f"{base}_{k}", k + 1
        used.add(name)
        videos.append(_Video(p, name, split_of(p), emo, level, source))
    return videos


def _probe(v: _Video) -> None:
    """Fail early, with the reason, on files that are not usable talking-face videos."""
    import imageio_ffmpeg
    try:
        reader = imageio_ffmpeg.read_frames(str(v.path))
        meta = next(reader)
        reader.close()
    except (OSError, RuntimeError, StopIteration) as e:
        raise ValueError(f"{v.path}: not a readable video ({str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__})") from None
    if not meta.get("size") or not meta.get("fps"):
        raise ValueError(f"{v.path}: no video stream")
    if not meta.get("audio_codec"):
        raise ValueError(f"{v.path}: the video has no audio track (speech is needed to train lip-sync)")
    duration = float(meta.get("duration") or 0.0)
    if 0.0 < duration < MIN_SECONDS:
        raise ValueError(f"{v.path}: too short ({duration:.2f} s; at least {MIN_SECONDS:.0f} s needed)")
    v.meta = meta


def _frames(path: Path) -> Iterator[np.ndarray]:
    """Decoded RGB frames resampled to a constant FPS (handles variable frame rate)."""
    import imageio_ffmpeg
    reader = imageio_ffmpeg.read_frames(str(path), output_params=["-vf", f"fps={FPS}"])
    w, h = next(reader)["size"]
    for buf in reader:
        yield np.frombuffer(buf, np.uint8).reshape(h, w, 3)


def _extract_audio(path: Path, dst: Path) -> None:
    import imageio_ffmpeg
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-nostdin", "-y", "-i", str(path),
           "-vn", "-ac", "1", "-ar", str(SAMPLE_RATE), "-c:a", "pcm_s16le", str(dst)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0 or not dst.exists() or dst.stat().st_size <= 44:
        raise ValueError(f"{path}: could not extract the audio track: {res.stderr.strip()[-300:]}")


def _missing_check(v: _Video, lm: np.ndarray, where: str) -> None:
    n = len(lm)
    if n < MIN_SECONDS * FPS:
        raise ValueError(f"{v.path}: too short ({n} frames at {FPS} fps; at least {MIN_SECONDS:.0f} s needed)")
    missing = float(np.isnan(lm[:, 0, 0]).mean())
    if missing > MAX_MISSING_FACE:
        raise ValueError(f"{v.path}: no face found in {missing:.0%} of the frames{where} "
                         f"(at most {MAX_MISSING_FACE:.0%} allowed)")


def crop_box(landmarks: np.ndarray, width: int, height: int) -> tuple[int, int, int]:
    """One square box (x0, y0, side) around all frames' faces, enlarged and kept
    inside the frame, so the camera stays static and the head moves inside it."""
    xy = landmarks[..., :2].reshape(-1, 2)
    xy = xy[~np.isnan(xy[:, 0])]
    (x0, y0), (x1, y1) = xy.min(0), xy.max(0)
    side = int(round(min(CROP_SCALE * max(x1 - x0, y1 - y0), width, height)))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    bx = int(round(np.clip(cx - side / 2, 0, width - side)))
    by = int(round(np.clip(cy - side / 2, 0, height - side)))
    return bx, by, side


def _find_faces(v: _Video) -> np.ndarray:
    """First pass: face mesh on the full frames, [T, 478, 3] source pixels."""
    est = int(float(v.meta.get("duration") or 0) * FPS) or None
    with lmk.FaceMeshTracker() as mesh:
        full = np.stack([mesh(f) for f in tqdm(_frames(v.path), total=est, desc=f"{v.name}: find face", unit="fr")])
    _missing_check(v, full, "")
    return full


def subject_crop_boxes(videos: list[_Video], faces: list[np.ndarray]) -> list[tuple[int, int, int]]:
    """One crop box per camera: clips of one frame size share the box fitted to
    all of their faces, so the camera (and the background plate behind the
    head) is the same in every clip, as the model's single scene assumes."""
    groups: dict[tuple[int, int], list[np.ndarray]] = {}
    for v, full in zip(videos, faces):
        groups.setdefault(tuple(v.meta["size"]), []).append(full.reshape(-1, *full.shape[-2:]))
    boxes = {size: crop_box(np.concatenate(marks), *size) for size, marks in groups.items()}
    return [boxes[tuple(v.meta["size"])] for v in videos]


def _decode_clip(v: _Video, box: tuple[int, int, int], n: int, frames_dir: Path, size: int,
                 n_samples: int) -> _ClipResult:
    """Second pass over the ``n`` frames: crops are written with their landmarks and person masks."""
    x0, y0, side = box
    pick = set(np.linspace(0, n - 1, n_samples).round().astype(int).tolist())
    interp = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
    lms, person, samples = [], [], []
    frames_dir.mkdir(parents=True)
    # per-frame detection (no tracking) on the crops: measured more accurate on
    # synthesized video with known landmarks (1.9 vs 2.3 px), jitter is smoothed later
    with lmk.FaceMeshTracker(video=False) as mesh, lmk.PersonSegmenter() as seg:
        for i, f in enumerate(tqdm(_frames(v.path), total=n, desc=f"{v.name}: crop, mesh, masks", unit="fr")):
            if i >= n:
                break
            crop = cv2.resize(f[y0:y0 + side, x0:x0 + side], (size, size), interpolation=interp)
            cv2.imwrite(str(frames_dir / f"{i:06d}.jpg"), crop[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
            lms.append(mesh(crop))
            body = seg(crop) > 0.5
            person.append(np.packbits(body))
            if i in pick:
                samples.append((crop, body))
    lm = np.stack(lms)
    if len(lm) != n:
        raise ValueError(f"{v.path}: decoding gave {len(lm)} frames on the second pass, {n} on the first")
    _missing_check(v, lm, " after cropping")
    return _ClipResult(lm, np.stack(person), (x0, y0, side), samples)


def fill_and_smooth(lm: np.ndarray) -> np.ndarray:
    """Fill frames without a face by linear interpolation in time, then a
    Savitzky-Golay filter (window 5, quadratic): removes detector jitter with
    zero lag, so fast mouth closures keep their timing."""
    from scipy.signal import savgol_filter
    out = lm.astype(np.float64).copy()
    t = np.arange(len(out))
    ok = ~np.isnan(out[:, 0, 0])
    flat = out.reshape(len(out), -1)
    for j in range(flat.shape[1]):
        flat[:, j] = np.interp(t, t[ok], flat[ok, j])
    if len(out) >= 5:
        out = savgol_filter(out, 5, 2, axis=0, mode="interp")
    return out.astype(np.float32)


def _similarity(src: np.ndarray, dst: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Batched weighted Umeyama: dst[t] ~ s[t] R[t] src[t] + c[t] for [T,N,3] point sets."""
    w = w / w.sum()
    ms, md = np.einsum("n,tnk->tk", w, src), np.einsum("n,tnk->tk", w, dst)
    xs, xd = src - ms[:, None], dst - md[:, None]
    cov = np.einsum("n,tni,tnj->tij", w, xd, xs)
    u, sv, vt = np.linalg.svd(cov)
    d = np.ones_like(sv)
    d[:, 2] = np.sign(np.linalg.det(u) * np.linalg.det(vt))
    rot = u @ (d[:, :, None] * vt)
    var = np.einsum("n,tn->t", w, (xs ** 2).sum(-1))
    s = (sv * d).sum(-1) / var
    c = md - s[:, None] * np.einsum("tij,tj->ti", rot, ms)
    return s, rot, c


def intrinsics(size: int) -> np.ndarray:
    """Shared pinhole camera: focal 2*size, principal point at the image centre."""
    f = FOCAL_FACTOR * size
    return np.array([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1]], np.float64)


def project(points: np.ndarray, viewmats: np.ndarray, K: np.ndarray) -> np.ndarray:
    """[N,3] world points through [T,4,4] world->camera and K -> [T,N,2] pixels."""
    cam = np.einsum("tij,nj->tni", viewmats[:, :3, :3], points) + viewmats[:, None, :3, 3]
    uv = np.einsum("ij,tnj->tni", K, cam)
    return uv[..., :2] / uv[..., 2:3]


def smooth_poses(viewmats: np.ndarray, clip_lengths: list[int], sigma: float = POSE_SMOOTHING) -> np.ndarray:
    """Gaussian smoothing of [T,4,4] cameras in time, clip by clip.

    A monocular landmark fit reads part of every mouth movement as a small head
    rotation (measured: 1.5° of pitch jitter within clips of a synthesized
    subject whose head never moves); real head motion is slower than speech,
    so a 0.12 s filter removes the jitter and keeps the motion. Rotations are
    averaged as matrices and projected back onto SO(3)."""
    from scipy.ndimage import gaussian_filter1d

    out = viewmats.astype(np.float64).copy()
    start = 0
    for n in clip_lengths:
        seg = out[start:start + n]
        if n > 1 and sigma > 0:
            seg[:, :3, :] = gaussian_filter1d(seg[:, :3, :], sigma, axis=0, mode="nearest")
            u, _, vt = np.linalg.svd(seg[:, :3, :3])
            fix = np.ones((n, 3))
            fix[:, 2] = np.sign(np.linalg.det(u @ vt))
            seg[:, :3, :3] = u @ (fix[:, :, None] * vt)
        start += n
    return out.astype(viewmats.dtype)


def fit_head_pose(landmarks: np.ndarray, size: int, clip_lengths: list[int] | None = None,
                  smoothing: float = POSE_SMOOTHING, iterations: int = 3, rigid_share: float = RIGID_SHARE
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Reference head shape and per-frame cameras from [T,478,3] landmarks in
    crop pixels (MediaPipe's z in the same scale).

    Generalised Procrustes (similarity) over frames gives the mean shape; the
    points that move least are the rigid part used for pose, chosen again after
    each alignment to that part (an expression moves the whole first alignment,
    so the first choice still holds moving points). MediaPipe's
    geometry is close to weak perspective, so the shape is pre-distorted by
    depth to make a perspective camera at the average distance reproduce the
    same image, and each frame's pose (from the similarity fit) is then
    refined by PnP against the 2D landmarks.

    Returns K [3,3], viewmats [T,4,4] (world -> camera, OpenCV: x right, y
    down, z forward; world axes match the camera's at the average head pose),
    canonical [478,3] (world units: outer-eye-corner distance 1, centred),
    reprojection error [T] (mean px over all 478 points). Cameras are smoothed
    in time within each clip (``clip_lengths``; default: one clip) with a
    Gaussian of ``smoothing`` frames (0: raw per-frame fits); ``rigid_share``
    of the landmarks (those that move least) define the pose.
    """
    pts = landmarks.astype(np.float64)
    weights = np.ones(pts.shape[1])
    ref = pts[len(pts) // 2]
    for _ in range(iterations):
        s, rot, c = _similarity(pts, np.broadcast_to(ref, pts.shape), weights)
        aligned = s[:, None, None] * np.einsum("tij,tnj->tni", rot, pts) + c[:, None]
        ref = aligned.mean(0)
        if len(pts) > 2:
            spread = aligned.std(0).sum(-1)
            weights = (spread <= np.quantile(spread, rigid_share)).astype(np.float64)
    ref = ref - (weights[:, None] * ref).sum(0) / weights.sum()
    ref = ref / float(lmk.inter_ocular(ref))
    # frame pose as a similarity: pixels ~ s R ref + c
    s, rot, c = _similarity(np.broadcast_to(ref, pts.shape), pts, weights)
    K = intrinsics(size)
    f, cx, cy = K[0, 0], K[0, 2], K[1, 2]
    depth = f / s
    trans = np.stack([(c[:, 0] - cx) / s, (c[:, 1] - cy) / s, depth], -1)
    dist = float(np.median(depth))
    canonical = ref.copy()
    canonical[:, :2] *= (1.0 + ref[:, 2:3] / dist)
    rigid = weights > 0
    viewmats = np.tile(np.eye(4), (len(pts), 1, 1))
    for t in range(len(pts)):
        rvec, _ = cv2.Rodrigues(rot[t])
        ok, rvec, tvec = cv2.solvePnP(canonical[rigid], pts[t, rigid, :2], K, None, rvec, trans[t].copy(),
                                      useExtrinsicGuess=True, flags=cv2.SOLVEPNP_ITERATIVE)
        if ok:
            viewmats[t, :3, :3] = cv2.Rodrigues(rvec)[0]
            viewmats[t, :3, 3] = tvec.ravel()
        else:
            viewmats[t, :3, :3], viewmats[t, :3, 3] = rot[t], trans[t]
    viewmats = smooth_poses(viewmats, clip_lengths or [len(pts)], smoothing)
    err = np.linalg.norm(project(canonical, viewmats, K) - pts[..., :2], axis=-1).mean(-1)
    return K, viewmats.astype(np.float32), canonical.astype(np.float32), err.astype(np.float32)


def label_mask(person: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """[S,S] bool person + [478,>=2] landmarks -> uint8 labels
    (0 background, 1 person, 2 face oval, 3 inside the inner lip contour)."""
    out = person.astype(np.uint8)
    cv2.fillPoly(out, [np.round(lm[list(lmk.FACE_OVAL), :2]).astype(np.int32)], 2)
    cv2.fillPoly(out, [np.round(lm[list(lmk.LIPS_INNER), :2]).astype(np.int32)], 3)
    return out


def background_plate(samples: list[tuple[np.ndarray, np.ndarray]], size: int) -> np.ndarray:
    """Per-pixel median over the sampled crops of pixels outside the (dilated)
    person mask; pixels the person always covers are inpainted."""
    grow = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * (size // 50) + 1,) * 2)
    stack = np.full((len(samples), size, size, 3), np.nan, np.float32)
    for k, (img, body) in enumerate(samples):
        keep = cv2.dilate(body.astype(np.uint8), grow) == 0
        stack[k][keep] = img[keep]
    covered = np.isnan(stack[..., 0]).all(0)
    if covered.all():
        return np.full((size, size, 3), 127, np.uint8)
    with warnings.catch_warnings():  # all-NaN pixels are expected: those are inpainted below
        warnings.simplefilter("ignore", RuntimeWarning)
        plate = np.clip(np.nan_to_num(np.nanmedian(stack, axis=0)), 0, 255).astype(np.uint8)
    if covered.any():
        plate = cv2.inpaint(plate, covered.astype(np.uint8), max(3, size // 64), cv2.INPAINT_TELEA)
    return plate


def _grey_frames(folder: Path, n: int) -> list[np.ndarray]:
    return [cv2.imread(str(folder / f"{i:06d}.jpg"), cv2.IMREAD_GRAYSCALE) for i in range(n)]


def _write(tmp: Path, videos: list[_Video], results: list[_ClipResult], size: int, track_lips: bool) -> dict:
    lms = [fill_and_smooth(r.landmarks) for r in results]
    K, viewmats, canonical, err = fit_head_pose(np.concatenate(lms), size, [len(lm) for lm in lms])
    if track_lips:   # after the pose: the lips never define it
        lms = [lip_tracking.track_lips(_grey_frames(tmp / "frames" / v.name, len(lm)), lm)
               for v, lm in zip(tqdm(videos, desc="track the lips", unit="clip"), lms, strict=True)]
    all_lm = np.concatenate(lms)
    clips, start = [], 0
    for v, r, lm in zip(videos, results, lms, strict=True):
        mdir = tmp / "masks" / v.name
        mdir.mkdir(parents=True)
        for i in tqdm(range(len(lm)), desc=f"{v.name}: write masks", unit="fr"):
            body = np.unpackbits(r.person[i], count=size * size).reshape(size, size).astype(bool)
            cv2.imwrite(str(mdir / f"{i:06d}.png"), label_mask(body, lm[i]))
        n = len(lm)
        clips.append({
            "name": v.name, "split": v.split, "emotion": v.emotion, "level": v.level,
            "intensity": v.level / 3, "start": start, "n_frames": n, "source": str(v.path),
            "label_source": v.label_source, "crop": list(r.crop),
            "source_fps": float(v.meta.get("fps", FPS)),
            "reprojection_px": float(err[start:start + n].mean()),
        })
        start += n
    np.save(tmp / "landmarks.npy", all_lm.astype(np.float32))
    np.save(tmp / "viewmats.npy", viewmats)
    np.save(tmp / "canonical.npy", canonical)
    np.save(tmp / "eye.npy", lmk.eye_openness(all_lm).astype(np.float32))
    np.save(tmp / "mouth_open.npy", lmk.mouth_opening(all_lm).astype(np.float32))
    plate = background_plate([s for r in results for s in r.samples], size)
    cv2.imwrite(str(tmp / "background.png"), plate[..., ::-1])
    meta = {"version": DATASET_VERSION, "fps": FPS, "size": size, "K": K.tolist(),
            "emotions": list(EMOTIONS), "clips": clips,
            "lips": "optical flow" if track_lips else "mediapipe",
            "reprojection_px": float(err.mean()), "frame_rate_policy": f"resampled to constant {FPS} fps"}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    return meta


def _prepare_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "meta.json").exists())):
        raise ValueError(f"{out} exists and is not a subject dataset; choose another --out or remove it")


def _move_into_place(tmp: Path, out: Path) -> None:
    """Swap the finished temporary folder in; an older dataset there is removed only afterwards."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        old.rmdir()
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def preprocess_videos(videos: list[str], out: str, emotion: str | None = None,
                      intensity: int | None = None, size: int = 512, track_lips: bool = False) -> Path:
    """Turn one or more videos of the same person into a subject dataset at
    ``out`` and return its path. Emotion/level come from the options, else
    from MEAD-style names, else neutral level 1 (recorded per clip as
    ``label_source``). Videos in a heldout/test/val folder form the held-out split.
    ``track_lips`` moves the lip landmarks by optical flow (ua3dtalk.data.lip_tracking)."""
    if not videos:
        raise ValueError("no video given")
    if size < 32:
        raise ValueError(f"size must be at least 32 pixels, got {size}")
    out_path = Path(out).resolve()
    _prepare_out(out_path)
    descs = _describe(list(videos), emotion, intensity)
    for v in descs:
        _probe(v)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.partial-", dir=out_path.parent))
    try:
        per_clip = max(2, BACKGROUND_SAMPLES // len(descs))
        faces = [_find_faces(v) for v in descs]
        boxes = subject_crop_boxes(descs, faces)
        results = []
        (tmp / "audio").mkdir()
        for v, full, box in zip(descs, faces, boxes):
            _extract_audio(v.path, tmp / "audio" / f"{v.name}.wav")
            results.append(_decode_clip(v, box, len(full), tmp / "frames" / v.name, size, per_clip))
        _write(tmp, descs, results, size, track_lips)
        _move_into_place(tmp, out_path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_path
