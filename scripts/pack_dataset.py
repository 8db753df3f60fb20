"""Move a subject dataset between machines in a fraction of its size.

    python scripts/pack_dataset.py pack DATA PACKED      # frames -> one near-lossless H.264 mp4 per clip
    python scripts/pack_dataset.py unpack PACKED DATA    # back to frames/NAME/000000.jpg (OpenCV only)

A 512² dataset keeps one JPEG per frame (fast random access for training), which
is large; packing stores each clip's frames as an x264 crf-12 video and copies
everything else as is. Unpacking needs only OpenCV, so it runs on machines
without ffmpeg or MediaPipe (e.g. a GPU box used only for training).
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import cv2

JPEG_QUALITY = 95


def pack(data: Path, packed: Path) -> None:
    import imageio_ffmpeg

    if packed.exists():
        raise SystemExit(f"{packed} exists")
    shutil.copytree(data, packed, ignore=shutil.ignore_patterns("frames"))
    (packed / "frames").mkdir()
    for clip in sorted((data / "frames").iterdir()):
        subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-framerate", "25",
                        "-i", str(clip / "%06d.jpg"), "-c:v", "libx264", "-crf", "12", "-preset", "slow",
                        "-pix_fmt", "yuv444p", str(packed / "frames" / f"{clip.name}.mp4")], check=True)


def unpack(packed: Path, data: Path) -> None:
    if data.exists():
        raise SystemExit(f"{data} exists")
    shutil.copytree(packed, data, ignore=shutil.ignore_patterns("frames"))
    for video in sorted((packed / "frames").glob("*.mp4")):
        folder = data / "frames" / video.stem
        folder.mkdir(parents=True)
        capture = cv2.VideoCapture(str(video))
        index = 0
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            cv2.imwrite(str(folder / f"{index:06d}.jpg"), frame, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            index += 1
        if index == 0:
            raise SystemExit(f"could not decode {video}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("action", choices=("pack", "unpack"))
    ap.add_argument("source", type=Path)
    ap.add_argument("dest", type=Path)
    a = ap.parse_args(argv)
    (pack if a.action == "pack" else unpack)(a.source, a.dest)


if __name__ == "__main__":
    main(sys.argv[1:])
