"""Stage-2 precision fusion: the official dense-inverse formulation vs ours.

Same inputs, same run: V=4 views, T=10 members, D=48 latent dims, N Gaussians.
The official code builds every Σ_v and calls torch.inverse on five D x D
matrices per Gaussian (four Σ_v⁻¹ and the fused inverse); ours
(ua3dtalk.uncertainty.precision_fusion) only factorises one V(T-1) square
system per Gaussian, in fused Triton kernels on CUDA; its batched-PyTorch path
is timed beside them. Then the whole face-branch MotionNetwork forward per frame
(paper preset). Prints a markdown table.

    python bench/fusion.py                 # CUDA: N = 20k, 50k, 100k; CPU: small N
    python bench/fusion.py --n 50000 --repeats 20
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ua3dtalk.config import preset  # noqa: E402
from ua3dtalk.deform import face_network  # noqa: E402
from ua3dtalk.uncertainty import LOG_VAR_RANGE, precision_fusion  # noqa: E402


def official_fusion(mu: torch.Tensor, log_var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's stage 2 as the official code computes it: explicit dense inverses."""
    log_var = log_var.clamp(*LOG_VAR_RANGE)
    mean_v = mu.mean(dim=2)
    dev = mu - mean_v.unsqueeze(2)
    cov = dev.transpose(-1, -2) @ dev / (mu.shape[2] - 1)
    sigma = cov + torch.diag_embed(log_var.exp().mean(dim=2))
    prec = torch.inverse(sigma)                                        # four D x D inverses
    fused_cov = torch.inverse(prec.sum(dim=0))                         # the fifth
    mean = (fused_cov @ (prec @ mean_v.unsqueeze(-1)).sum(dim=0)).squeeze(-1)
    traces = prec.diagonal(dim1=-2, dim2=-1).sum(-1)
    return mean, traces / traces.sum(dim=0, keepdim=True)


def ours(mu: torch.Tensor, log_var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ours as the package runs it: the fused Triton kernels for float32 CUDA inputs."""
    out = precision_fusion(mu, log_var)
    return out.mean, out.weight


def ours_pytorch(mu: torch.Tensor, log_var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ours through batched PyTorch only (the CPU path, and the GPU path without Triton)."""
    out = precision_fusion(mu, log_var, kernel=False)
    return out.mean, out.weight


def timer(device: torch.device) -> Callable[[Callable[[], object]], float]:
    def run(fn: Callable[[], object]) -> float:
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end)
        t0 = time.perf_counter()
        fn()
        return 1e3 * (time.perf_counter() - t0)
    return run


def median_ms(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> float:
    run = timer(device)
    for _ in range(warmup):
        run(fn)
    return statistics.median(run(fn) for _ in range(repeats))


def inputs(n: int, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(4, n, 10, 48, generator=g)
    log_var = 4 * torch.rand(4, n, 10, 48, generator=g) - 2
    return mu.to(device), log_var.to(device)


def fusion_rows(ns: list[int], device: torch.device, warmup: int, repeats: int) -> list[str]:
    rows = []
    for n in ns:
        mu, log_var = inputs(n, device)
        probe_mean = torch.randn(n, 48, device=device)
        probe_weight = torch.randn(4, n, device=device)
        ref_mean, ref_weight = official_fusion(mu.double(), log_var.double())
        times = {}
        methods = [("official", official_fusion), ("ours", ours)]
        if device.type == "cuda":
            methods.append(("pytorch", ours_pytorch))
        for name, fn in methods:
            mean, weight = fn(mu, log_var)
            err = float(((mean.double() - ref_mean).norm(dim=-1) / ref_mean.norm(dim=-1)).max())
            with torch.no_grad():
                fwd = median_ms(lambda: fn(mu, log_var), device, warmup, repeats)

            def fwd_bwd() -> None:
                m, lv = mu.detach().requires_grad_(), log_var.detach().requires_grad_()
                mean, weight = fn(m, lv)
                ((mean * probe_mean).sum() + (weight * probe_weight).sum()).backward()

            times[name] = (fwd, median_ms(fwd_bwd, device, warmup, repeats), err)
        del ref_mean, ref_weight
        (of, ob, oe), (uf, ub, ue) = times["official"], times["ours"]
        pf, pb, pe = times.get("pytorch", (float("nan"),) * 3)
        rows.append(f"| {n:,} | {of:.2f} | {uf:.2f} | {of / uf:.1f}x | {ob:.2f} | {ub:.2f} | {ob / ub:.1f}x "
                    f"| {oe:.1e} | {ue:.1e} | {pf:.2f} | {pb:.2f} | {pe:.1e} |")
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def face_branch_rows(n: int, device: torch.device, warmup: int, repeats: int) -> list[str]:
    cfg = preset("paper")
    view_dims = {"audio": cfg.audio_feat_dim + 1, "content": cfg.content_dim, "style": cfg.style_dim,
                 "emotion": cfg.emotion_hexplane_dim * len(cfg.emotion_multires)}
    torch.manual_seed(0)
    net = face_network(cfg, view_dims).to(device)
    xyz = torch.rand(n, 3, device=device) * 2 - 1
    rows = []
    for batch in (1, 4):
        views = {name: torch.randn(batch, view_dims[name], device=device) for name in ("audio", "content", "style")}
        views["emotion"] = torch.randn(batch, n, view_dims["emotion"], device=device)
        for fusion, stage in (("uncertainty", 2), ("uncertainty", 1), ("uniform", 2)):
            with torch.no_grad():
                fwd = median_ms(lambda: net(xyz, views, fusion=fusion, stage=stage), device, warmup, repeats)

            def fwd_bwd() -> None:
                out = net(xyz, views, fusion=fusion, stage=stage)
                (out.d_xyz.sum() + out.d_rotation.sum() + out.d_scale.sum() + out.nll).backward()

            both = median_ms(fwd_bwd, device, warmup, repeats)
            label = f"stage {stage}" if fusion == "uncertainty" else "uniform"
            rows.append(f"| {label} | {batch} | {fwd / batch:.2f} | {both / batch:.2f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="*", default=None, help="Gaussian counts for the fusion table")
    parser.add_argument("--face-n", type=int, default=None, help="Gaussians for the face-branch timing")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    ns = args.n or ([20_000, 50_000, 100_000] if cuda else [512, 2048])
    face_n = args.face_n or (50_000 if cuda else 2_000)
    repeats = args.repeats or (20 if cuda else 3)
    name = torch.cuda.get_device_name() if cuda else "CPU"

    print(f"## Precision fusion, V=4, T=10, D=48, float32 ({name}, torch {torch.__version__})\n")
    print("median ms over", repeats, "runs after", args.warmup, "warm-up runs; error: worst per-Gaussian "
          "relative error of the fused mean vs a float64 dense reference\n")
    print("| N | official fwd | ours fwd | speed-up | official fwd+bwd | ours fwd+bwd | speed-up "
          "| official err | ours err | PyTorch-path fwd | PyTorch-path fwd+bwd | PyTorch-path err |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in fusion_rows(ns, device, args.warmup, repeats):
        print(row, flush=True)
    print(f"\n## Face-branch MotionNetwork (paper preset, 4 views), N={face_n:,}, ms per frame\n")
    print("| fusion | frames per call | forward (no grad) | forward+backward |")
    print("|---|---|---|---|")
    for row in face_branch_rows(face_n, device, args.warmup, repeats):
        print(row, flush=True)


if __name__ == "__main__":
    main()
