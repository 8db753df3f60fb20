"""Held-out evaluation: render each held-out clip from its audio and
ground-truth emotion, and compare with the ground-truth frames.

Image quality (PSNR, SSIM over the head region; LPIPS when its weights are
available), lip sync (mouth LMD and mouth-opening correlation with MediaPipe
landmarks of renders vs ground truth; the lip expert's SyncNet-style offset and
confidence), emotion (an expression classifier fitted on the *training* split's
ground-truth landmarks, applied to renders; a Fréchet distance between
expression features of renders and ground truth per emotion) and speed.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from ua3dtalk import audio as audio_io
from ua3dtalk.config import EMOTIONS
from ua3dtalk.data.dataset import SubjectDataset, head_region
from ua3dtalk.data.landmarks import detect_landmarks, mouth_opening
from ua3dtalk.metrics import (
    MOUTH, ExpressionClassifier, expression_features, frechet_distance, landmark_distance, lpips_or_none,
    pearson, psnr, ssim, sync_offset_confidence,
)
from ua3dtalk.model import Conditioning, TalkingHead

MIN_FRECHET_SAMPLES = 8


def _landmarks_or_none(frames: np.ndarray) -> np.ndarray | None:
    """MediaPipe landmarks of rendered frames, or None where MediaPipe is not
    installed (e.g. a training-only GPU machine): the landmark metrics are then
    reported as unavailable rather than failing the whole evaluation."""
    try:
        import mediapipe  # noqa: F401
    except ImportError:
        return None
    return detect_landmarks(frames)


def items_conditioning(items: list[dict], features: torch.Tensor) -> Conditioning:
    """Conditioning of dataset frames (one clip's items) with their own poses, blinks and labels."""
    device = features.device
    return Conditioning(
        features=features,
        frames=torch.tensor([it["frame"] for it in items], device=device),
        viewmats=torch.stack([torch.as_tensor(it["viewmat"]) for it in items]).float().to(device),
        eye=torch.tensor([float(it["eye"]) for it in items], device=device),
        emotion=torch.tensor([int(it["emotion"]) for it in items], device=device),
        intensity=torch.tensor([float(it["intensity"]) for it in items], device=device))


@torch.no_grad()
def render_clip(model: TalkingHead, data: SubjectDataset, clip: int, features: torch.Tensor,
                fusion: str | None, batch_size: int = 8, max_frames: int | None = None) -> tuple[np.ndarray, float]:
    """Render one dataset clip with its own poses, blinks and labels: (uint8 [T,H,W,3], seconds)."""
    device = features.device
    indices = list(data.clip_frames(clip))[:max_frames]
    frames = np.empty((len(indices), data.size, data.size, 3), np.uint8)
    start = time.perf_counter()
    for lo in range(0, len(indices), batch_size):
        cond = items_conditioning([data[i] for i in indices[lo:lo + batch_size]], features)
        out = model(cond, size=data.size, fusion=fusion, with_maps=False)
        frames[lo:lo + len(cond.frames)] = (out.image.clamp(0, 1) * 255 + 0.5).byte().cpu().numpy()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return frames, time.perf_counter() - start


def clip_ground_truth(data: SubjectDataset, clip: int, max_frames: int | None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A clip's first ``max_frames`` frames as rendered ones come: uint8 images [T,H,W,3], masks, landmarks."""
    items = [data[i] for i in list(data.clip_frames(clip))[:max_frames]]
    images = np.stack([(np.asarray(it["image"]).transpose(1, 2, 0) * 255 + 0.5).astype(np.uint8) for it in items])
    masks = np.stack([np.asarray(it["mask"]) for it in items])
    landmarks = np.stack([np.asarray(it["landmarks"]) for it in items])
    return images, masks, landmarks


def _sync(model: TalkingHead, features: torch.Tensor, frames: np.ndarray, landmarks: np.ndarray) -> tuple[int, float]:
    """Lip expert's offset/confidence of rendered mouths against the audio."""
    from ua3dtalk.train import mouth_windows

    expert = model.prior.lip_expert
    window = model.cfg.content_window
    device = features.device
    images = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div(255).to(device)
    marks = torch.from_numpy(landmarks).float().to(device)
    n = len(frames) - window + 1
    if n <= 2 * 3:
        return 0, float("nan")
    mouth = torch.cat([expert.mouth_embedding(mouth_windows(images[t:t + window], marks[t:t + window]))
                       for t in range(n)])
    audio = expert.audio_embedding(features, torch.arange(window // 2, window // 2 + n, device=device))
    return sync_offset_confidence(audio, mouth, max_offset=min(7, n - 1))


def _expression_classifier(data_dir: Path, size: int | None) -> tuple[ExpressionClassifier, dict[int, np.ndarray]]:
    """Fitted on the training split's ground-truth landmarks only."""
    train = SubjectDataset(data_dir, "train", size=size)
    marks = np.stack([np.asarray(train[i]["landmarks"]) for i in range(len(train))])
    labels = np.array([int(train[i]["emotion"]) for i in range(len(train))])
    feats = expression_features(marks)
    classifier = ExpressionClassifier(len(EMOTIONS), seed=0).fit(feats, labels)
    return classifier, {e: feats[labels == e] for e in np.unique(labels)}


@torch.no_grad()
def evaluate_model(model: TalkingHead, data_dir: str | Path, split: str = "heldout", size: int | None = None,
                   fusion: str | None = None, max_frames: int | None = None) -> dict:
    """Metrics of ``model`` on a dataset split, as a JSON-ready dict. ``max_frames``
    keeps only the first frames of each clip (a quicker check, e.g. on a CPU)."""
    model = model.eval()
    device = next(model.parameters()).device
    data = SubjectDataset(data_dir, split, size=size)
    if len(data) == 0:
        raise ValueError(f"{data_dir} has no {split} frames to evaluate")
    extractor = audio_io.get_extractor(model.cfg.audio_features, device=str(device))
    audio_io.check_features(model.cfg.audio_features, model.cfg.audio_dim, extractor)
    per_clip, psnrs, ssims, lpips_values = [], [], [], []
    all_pred, all_true, emotions_true, render_seconds, n_frames = [], [], [], 0.0, 0
    lpips_note = ""
    for clip in range(len(data.clips)):
        wav, _ = data.audio(clip)
        features = extractor(wav).to(device, torch.float32)
        frames, seconds = render_clip(model, data, clip, features, fusion, max_frames=max_frames)
        render_seconds += seconds
        n_frames += len(frames)
        gt, masks, gt_marks = clip_ground_truth(data, clip, max_frames)
        head = torch.from_numpy(head_region(masks))
        pred_t = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
        gt_t = torch.from_numpy(gt).permute(0, 3, 1, 2).float() / 255
        clip_psnr = psnr(pred_t, gt_t, head).numpy()
        clip_ssim = ssim(pred_t, gt_t, head).numpy()
        value, lpips_note = lpips_or_none(pred_t, gt_t)
        if value is not None:
            lpips_values.append(value.cpu().numpy())
        offset, confidence = _sync(model, features, frames, gt_marks)
        emotion = data.clips[clip].emotion
        row = {"clip": data.clips[clip].name, "emotion": emotion, "level": data.clips[clip].level,
               "psnr": float(np.mean(clip_psnr)), "ssim": float(np.mean(clip_ssim)),
               "sync_offset": offset, "sync_confidence": confidence}
        pred_marks = _landmarks_or_none(frames)
        if pred_marks is not None:
            row["lmd_mouth"] = landmark_distance(pred_marks, gt_marks, MOUTH)
            row["mouth_open_corr"] = pearson(mouth_opening(pred_marks), mouth_opening(gt_marks))
            all_pred.append(pred_marks)
        per_clip.append(row)
        psnrs.append(clip_psnr)
        ssims.append(clip_ssim)
        all_true.append(gt_marks)
        emotions_true.append(np.full(len(frames), EMOTIONS.index(emotion)))
    report = {
        "split": split, "frames": n_frames, "max_frames_per_clip": max_frames, "size": data.size,
        "fusion": fusion or model.cfg.fusion,
        "psnr": float(np.mean(np.concatenate(psnrs))), "ssim": float(np.mean(np.concatenate(ssims))),
        "lpips": float(np.mean(np.concatenate(lpips_values))) if lpips_values else None,
        "lpips_note": lpips_note or None,
        "sync_confidence": float(np.nanmean([c["sync_confidence"] for c in per_clip])),
        "render_fps": n_frames / max(render_seconds, 1e-9),
    }
    labels, true_marks = np.concatenate(emotions_true), np.concatenate(all_true)
    if all_pred:
        classifier, train_feats = _expression_classifier(Path(data_dir), size)
        report.update(_landmark_metrics(np.concatenate(all_pred), true_marks, labels, classifier, train_feats))
    else:
        report["landmark_note"] = "landmark metrics (LMD, mouth opening, emotion) skipped: MediaPipe is not installed"
    report["clips"] = per_clip
    return report


def _landmark_metrics(pred_marks: np.ndarray, true_marks: np.ndarray, labels: np.ndarray,
                      classifier: ExpressionClassifier, train_feats: dict[int, np.ndarray]) -> dict:
    """Lip-sync and emotion metrics from landmarks of renders vs ground truth."""
    pred_feats = expression_features(pred_marks)
    valid = np.isfinite(pred_feats).all(1)
    frechet = {}
    for e in np.unique(labels):
        rendered = pred_feats[(labels == e) & valid]
        reference = train_feats.get(int(e))
        if reference is not None and len(rendered) >= MIN_FRECHET_SAMPLES and len(reference) >= MIN_FRECHET_SAMPLES:
            frechet[EMOTIONS[int(e)]] = frechet_distance(rendered, reference)
    return {
        "lmd_mouth": landmark_distance(pred_marks, true_marks, MOUTH),
        "mouth_open_corr": pearson(mouth_opening(pred_marks), mouth_opening(true_marks)),
        "emotion_accuracy": classifier.accuracy(pred_feats[valid], labels[valid]) if valid.any() else None,
        "emotion_accuracy_ground_truth": classifier.accuracy(expression_features(true_marks), labels),
        "expression_frechet": frechet,
        "expression_frechet_mean": float(np.mean(list(frechet.values()))) if frechet else None,
        "face_detected": float(valid.mean()),
    }


def evaluate_subject(subject: str, data: str | Path, out: str | Path, fusion: str | None = None,
                     device: str | None = None, size: int | None = None, max_frames: int | None = None) -> dict:
    """The ``ua3dtalk eval`` command."""
    from ua3dtalk.pipeline import TalkingFacePipeline

    pipe = TalkingFacePipeline.from_pretrained(subject, device=device)
    report = evaluate_model(pipe.model, data, size=size, fusion=fusion, max_frames=max_frames)
    report["subject"] = subject
    report["device"] = pipe.device.type if pipe.device.type != "cuda" else torch.cuda.get_device_name(pipe.device)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "clips"}, indent=2))
    return report
