"""How well does ``preprocess`` recover what ``synth`` put into the video?

Synthesizes a subject (or reuses one), preprocesses all its clips into one
dataset, and compares per frame with the synthesized ground truth:
landmark error in source-video pixels, the correlation of the eye-blink
and mouth-opening signals with the true eye openness and viseme opening, and
how faithfully the landmarks' motion (what the landmark flow loss fits) follows
the true motion. Runs on CPU:
    python bench/preprocess_accuracy.py [--minutes 0.5] [--synth DIR [--data DATASET]]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ua3dtalk.data import landmarks as lmk  # noqa: E402
from ua3dtalk.data.preprocess import preprocess_videos  # noqa: E402
from ua3dtalk.data.truth import ClipTruth, read_subject  # noqa: E402

GROUPS = {"all 478": slice(None), "lips": list(lmk.LIPS_OUTER + lmk.LIPS_INNER),
          "outer lips": list(lmk.LIPS_OUTER), "inner lips": list(lmk.LIPS_INNER),
          "eyes": list(lmk.LEFT_EYE + lmk.RIGHT_EYE), "face oval": list(lmk.FACE_OVAL)}


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else float("nan")


def motion_agreement(measured: list[np.ndarray], true: list[np.ndarray]) -> None:
    """Per clip, each landmark's motion about its clip mean, measured against true, per group and axis.

    Slope < 1 means the measured landmarks move less than the face does; the relative
    error is the part of the true motion the measured one misses or adds.
    """
    m = np.concatenate([c - c.mean(0) for c in measured])
    t = np.concatenate([c - c.mean(0) for c in true])
    print("\nlandmark motion about each clip's mean, measured vs true (what the landmark flow fits):")
    print(f"  {'group':10s} axis  rms true px  slope  corr  rel. error")
    for g in ("outer lips", "inner lips", "eyes", "face oval"):
        for axis, name in enumerate("xy"):
            mm, tt = m[:, GROUPS[g], axis].ravel(), t[:, GROUPS[g], axis].ravel()
            print(f"  {g:10s} {name:4s} {np.sqrt((tt ** 2).mean()):11.2f} {(mm * tt).sum() / (tt * tt).sum():6.2f} "
                  f"{_corr(mm, tt):5.2f} {np.linalg.norm(mm - tt) / np.linalg.norm(tt):11.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--synth", default=None, help="existing synth output folder (default: synthesize one)")
    ap.add_argument("--minutes", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=512, help="dataset crop size")
    ap.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    ap.add_argument("--data", default=None, help="a dataset already preprocessed from --synth (default: preprocess)")
    a = ap.parse_args()
    if a.data and not a.synth:
        raise SystemExit("--data needs --synth: the synthesized subject it was preprocessed from")

    work = Path(a.work or tempfile.mkdtemp(prefix="ua3dtalk-bench-"))
    synth_dir = Path(a.synth) if a.synth else work / "synth"
    if not a.synth:
        from ua3dtalk.data.synth import synthesize
        t0 = time.perf_counter()
        synthesize(str(synth_dir), portrait=None, minutes=a.minutes, seed=a.seed, size=512, preview=False)
        print(f"synth: {time.perf_counter() - t0:.1f} s")
    subject = read_subject(synth_dir)
    videos = [str(synth_dir / c.video) for c in subject["clips"]]
    t0 = time.perf_counter()
    data = Path(a.data) if a.data else preprocess_videos(videos, str(work / "data"), size=a.size)
    elapsed = time.perf_counter() - t0
    meta = json.loads((data / "meta.json").read_text())
    lm_all = np.load(data / "landmarks.npy")
    eye_all, mouth_all = np.load(data / "eye.npy"), np.load(data / "mouth_open.npy")
    n_total = sum(c["n_frames"] for c in meta["clips"])
    if not a.data:
        print(f"preprocess: {len(videos)} clips, {n_total} frames in {elapsed:.1f} s "
              f"({n_total / elapsed:.1f} frames/s)")

    errs = {g: [] for g in GROUPS}
    eye, eye_true, mouth, mouth_true, lens, measured, true = [], [], [], [], [], [], []
    rows = []
    for c in meta["clips"]:
        truth = ClipTruth.load(synth_dir / "truth" / f"{c['name']}.npz")
        n = min(c["n_frames"], len(truth.landmarks))
        x0, y0, side = c["crop"]
        lm = lm_all[c["start"]:c["start"] + n, :, :2] * (side / meta["size"]) + np.array([x0, y0])
        d = np.linalg.norm(lm - truth.landmarks[:n], axis=-1)
        measured.append(lm), true.append(truth.landmarks[:n])
        for g, idx in GROUPS.items():
            errs[g].append(d[:, idx].reshape(-1))
        sl = slice(c["start"], c["start"] + n)
        eye.append(eye_all[sl]), eye_true.append(truth.eye_open[:n])
        mouth.append(mouth_all[sl]), mouth_true.append(truth.viseme_open[:n])
        lens.append(n)
        rows.append((c["name"], c["split"], n, float(d.mean()), _corr(eye_all[sl], truth.eye_open[:n]),
                     _corr(mouth_all[sl], truth.viseme_open[:n]), c["reprojection_px"]))

    print(f"\n{'clip':28s} {'split':8s} {'frames':>6s} {'lm err px':>9s} {'eye r':>6s} {'mouth r':>7s} {'reproj px':>9s}")
    for r in rows:
        print(f"{r[0]:28s} {r[1]:8s} {r[2]:6d} {r[3]:9.2f} {r[4]:6.3f} {r[5]:7.3f} {r[6]:9.2f}")
    print("\nlandmark error vs ground truth (source 512x512 pixels):")
    for g in GROUPS:
        e = np.concatenate(errs[g])
        print(f"  {g:10s} mean {e.mean():5.2f}  median {np.median(e):5.2f}  p95 {np.percentile(e, 95):5.2f}")
    motion_agreement(measured, true)
    w = np.array(lens, float) / sum(lens)
    e_clip = float(np.dot(w, [r[4] for r in rows]))
    m_clip = float(np.dot(w, [r[5] for r in rows]))
    e_pool = _corr(np.concatenate(eye), np.concatenate(eye_true))
    m_pool = _corr(np.concatenate(mouth), np.concatenate(mouth_true))
    mean_err = float(np.concatenate(errs["all 478"]).mean())
    # Within a clip is the fair comparison: truth eye_open is the blink state
    # (1 = open whatever the emotion), while the measured eye aspect ratio also
    # follows expression (squint, wide eyes), which shifts its level per clip.
    print(f"\nblink signal vs truth eye_open:         r = {e_clip:.3f} within clips (frame-weighted), {e_pool:.3f} pooled")
    print(f"mouth-open signal vs truth viseme_open:  r = {m_clip:.3f} within clips (frame-weighted), {m_pool:.3f} pooled")
    print(f"camera reprojection (mean over frames):  {meta['reprojection_px']:.2f} px at {meta['size']}x{meta['size']}")
    ok = mean_err < 3.0 and e_clip > 0.8 and m_clip > 0.8
    print(f"\ntargets (landmarks < 3 px, both within-clip r > 0.8): {'MET' if ok else 'NOT MET'}")
    print(f"dataset: {data}")


if __name__ == "__main__":
    main()
