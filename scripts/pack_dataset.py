"""Move a subject dataset between machines in a fraction of its size.

    python scripts/pack_dataset.py pack DATA PACKED      # frames -> one near-lossless H.264 mp4 per clip
    python scripts/pack_dataset.py unpack PACKED DATA    # back to frames/NAME/000000.jpg (OpenCV only)

A 512² dataset keeps one JPEG and one PNG mask per frame (fast random access
for training), which is large. Packing stores each clip's frames as an x264
crf-12 video, its masks as a lossless grey video, and the landmarks quantised
to 1/32 px (at most 0.016 px off) in a compressed archive; the rest is copied.
Unpacking needs only OpenCV, so it runs on machines without ffmpeg or
MediaPipe (e.g. a GPU box used only for training).
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

JPEG_QUALITY = 95
LANDMARK_STEP = 1 / 32  # pixels per quantisation step
MASK_SCALE = 64         # labels 0..3 spread over the grey range, robust to any decoder rounding


def pack(data: Path, packed: Path) -> None:
    import imageio_ffmpeg

    if packed.exists():
        raise SystemExit(f"{packed} exists")
    shutil.copytree(data, packed, ignore=shutil.ignore_patterns("frames", "masks", "landmarks.npy"))
    ffmpeg = [imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-framerate", "25"]
    for kind in ("frames", "masks"):
        (packed / kind).mkdir()
    for clip in sorted((data / "frames").iterdir()):
        subprocess.run([*ffmpeg, "-i", str(clip / "%06d.jpg"), "-c:v", "libx264", "-crf", "12", "-preset", "slow",
                        "-pix_fmt", "yuv444p", str(packed / "frames" / f"{clip.name}.mp4")], check=True)
        scaled = packed / "masks" / clip.name
        scaled.mkdir()
        for mask in sorted((data / "masks" / clip.name).glob("*.png")):
            cv2.imwrite(str(scaled / mask.name), cv2.imread(str(mask), cv2.IMREAD_UNCHANGED) * MASK_SCALE)
        subprocess.run([*ffmpeg, "-i", str(scaled / "%06d.png"), "-c:v", "libx264", "-qp", "0",
                        "-pix_fmt", "gray", str(packed / "masks" / f"{clip.name}.mp4")], check=True)
        shutil.rmtree(scaled)
    marks = np.load(data / "landmarks.npy")
    np.savez_compressed(packed / "landmarks.npz", q=np.round(marks / LANDMARK_STEP).astype(np.int32))


def unpack(packed: Path, data: Path) -> None:
    if data.exists():
        raise SystemExit(f"{data} exists")
    shutil.copytree(packed, data, ignore=shutil.ignore_patterns("frames", "masks", "landmarks.npz"))
    for video in sorted((packed / "frames").glob("*.mp4")):
        for index, frame in enumerate(_decode(video)):
            _write(data / "frames" / video.stem / f"{index:06d}.jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        for index, frame in enumerate(_decode(packed / "masks" / video.name)):
            labels = np.round(frame[..., 0].astype(np.float32) / MASK_SCALE).astype(np.uint8)
            _write(data / "masks" / video.stem / f"{index:06d}.png", labels, [])
    q = np.load(packed / "landmarks.npz")["q"]
    np.save(data / "landmarks.npy", (q * LANDMARK_STEP).astype(np.float32))


def _decode(video: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(video))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    if not frames:
        raise SystemExit(f"could not decode {video}")
    return frames


def _write(path: Path, image: np.ndarray, params: list[int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), image, params)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("action", choices=("pack", "unpack"))
    ap.add_argument("source", type=Path)
    ap.add_argument("dest", type=Path)
    a = ap.parse_args(argv)
    (pack if a.action == "pack" else unpack)(a.source, a.dest)


if __name__ == "__main__":
    main(sys.argv[1:])
