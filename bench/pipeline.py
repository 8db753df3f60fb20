"""End-to-end inference throughput: 60 s of speech -> frames + stage-2
uncertainty maps + heatmap grid, beside the rasterization-only figure.

    python bench/pipeline.py [--subject demo] [--seconds 60] [--size 512] [--device cuda]

Prints a markdown table. Audio is a bundled example tiled to the length
(decoded with the stdlib, so no ffmpeg is needed on the GPU machine).
"""
from __future__ import annotations

import argparse
import time
import wave
from pathlib import Path

import numpy as np
import torch

from ua3dtalk.heatmaps import heatmap_grid
from ua3dtalk.model import Conditioning
from ua3dtalk.pipeline import TalkingFacePipeline, reflect_indices
from ua3dtalk.render import rasterize

EXAMPLE = Path(__file__).resolve().parents[1] / "assets" / "examples" / "happy.wav"


def speech(seconds: float) -> np.ndarray:
    with wave.open(str(EXAMPLE)) as f:
        if f.getframerate() != 16000 or f.getsampwidth() != 2:
            raise SystemExit(f"{EXAMPLE} must be 16 kHz PCM16")
        pcm = np.frombuffer(f.readframes(f.getnframes()), np.int16).astype(np.float32) / 32768
    reps = int(np.ceil(seconds * 16000 / pcm.size))
    return np.tile(pcm, reps)[: int(seconds * 16000)]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def raster_only(pipe: TalkingFacePipeline, size: int, frames: int, batch: int) -> float:
    """Frames per second of rasterizing the subject's canonical Gaussians alone."""
    model, device = pipe.model, pipe.device
    face, mouth = model.face, model.mouth
    means = torch.cat([face.xyz, mouth.xyz])
    quats = torch.cat([face.rotation, mouth.rotation])
    scales = torch.cat([face.scaling, mouth.scaling])
    opac = torch.cat([face.opacity, mouth.opacity])
    views = model.motion_viewmats[reflect_indices(batch, model.motion_viewmats.shape[0]).to(device)]
    from ua3dtalk.model import camera_centers, scale_intrinsics
    colors = torch.cat([face.colors(camera_centers(views)), mouth.colors(camera_centers(views))], 1)
    K = scale_intrinsics(model.K, size / model.background.shape[-1]).expand(batch, 3, 3)
    with torch.no_grad():
        for _ in range(3):
            rasterize(means, quats, scales, opac, colors, views, K, size, size)
        sync(device)
        start = time.perf_counter()
        for _ in range(frames // batch):
            rasterize(means, quats, scales, opac, colors, views, K, size, size)
        sync(device)
    return (frames // batch) * batch / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--subject", default="demo")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--device", default=None)
    ap.add_argument("--batch", type=int, default=None)
    a = ap.parse_args()
    pipe = TalkingFacePipeline.from_pretrained(a.subject, device=a.device)
    wav = speech(a.seconds)
    pipe(wav[:16000], emotion="happy", size=a.size, batch_size=a.batch)  # warm-up (kernels, caches)
    sync(pipe.device)
    start = time.perf_counter()
    out = pipe(wav, emotion="happy", size=a.size, batch_size=a.batch)
    pipeline_s = time.perf_counter() - start
    t0 = time.perf_counter()
    heatmap_grid(out.uncertainty, out.views, out.kinds, device=pipe.device)
    heat_s = time.perf_counter() - t0
    n = len(out.frames)
    total = pipeline_s + heat_s
    raster = raster_only(pipe, a.size, min(n, 400), a.batch or 16)
    gaussians = pipe.model.face.num_points + pipe.model.mouth.num_points
    print(f"\n{out.device}, subject {a.subject} ({gaussians} Gaussians, preset {pipe.config.preset}, "
          f"T={pipe.config.ensemble}), {a.seconds:.0f} s of audio, {n} frames at {a.size}²\n")
    print("| stage | seconds | frames/s | s per s of audio |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| decode + features | {out.timings['decode'] + out.timings['features']:.2f} | | |")
    print(f"| deformation (stage 2, all views) + rasterization + maps | {out.timings['render']:.2f} | "
          f"{n / out.timings['render']:.1f} | {out.timings['render'] / a.seconds:.3f} |")
    print(f"| heatmap grid (colouring on the same device) | {heat_s:.2f} | {n / heat_s:.1f} | {heat_s / a.seconds:.3f} |")
    print(f"| **whole pipeline** | {total:.2f} | **{n / total:.1f}** | {total / a.seconds:.3f} |")
    print(f"| rasterization only (canonical Gaussians) | | {raster:.1f} | |")


if __name__ == "__main__":
    main()
