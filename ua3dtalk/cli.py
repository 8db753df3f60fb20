"""The ``ua3dtalk`` command. Each subcommand parses its arguments here and
hands them to the package function that does the work (imported lazily, so
``ua3dtalk --help`` stays fast)."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from ua3dtalk import __version__

Handler = Callable[[argparse.Namespace], None]


def _synth(sub: argparse._SubParsersAction) -> Handler:
    p = sub.add_parser("synth", help="synthesize a talking-face subject from a portrait (video + ground truth)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--portrait", default=None, help="frontal portrait image (default: scikit-image's astronaut)")
    p.add_argument("--minutes", type=float, default=1.0, help="total length of speech to synthesize")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=512, help="frame size in pixels (square)")
    p.add_argument("--preview", action="store_true", help="also save a contact sheet PNG (emotions x mouth shapes)")

    def run(a: argparse.Namespace) -> None:
        from ua3dtalk.data.synth import synthesize
        synthesize(a.out, portrait=a.portrait, minutes=a.minutes, seed=a.seed, size=a.size, preview=a.preview)
    return run


def _preprocess(sub: argparse._SubParsersAction) -> Handler:
    p = sub.add_parser("preprocess", help="turn a talking-face video into a subject dataset")
    p.add_argument("video", nargs="+", help="one or more videos of the same person")
    p.add_argument("--out", required=True, help="output dataset folder")
    p.add_argument("--emotion", default=None, help="emotion label (default: from MEAD-style file names, else neutral)")
    p.add_argument("--intensity", type=int, default=None, choices=(1, 2, 3))
    p.add_argument("--size", type=int, default=512, help="crop size in pixels")
    p.add_argument("--track-lips", action="store_true",
                   help="move the lip landmarks by optical flow within each clip (MediaPipe's mesh "
                        "under-states the lips' motion; see bench/preprocess_accuracy.py)")

    def run(a: argparse.Namespace) -> None:
        from ua3dtalk.data.preprocess import preprocess_videos
        preprocess_videos(a.video, a.out, emotion=a.emotion, intensity=a.intensity, size=a.size,
                          track_lips=a.track_lips)
    return run


def _fusion_option(p: argparse.ArgumentParser) -> None:
    """``--fusion`` of the commands that render a trained subject."""
    p.add_argument("--fusion", default=None, choices=("uncertainty", "uniform"),
                   help="default: the fusion the subject was trained with")


def _train(sub: argparse._SubParsersAction) -> Handler:
    p = sub.add_parser("train", help="train a subject checkpoint from a subject dataset")
    p.add_argument("data", help="subject dataset folder (from synth or preprocess)")
    p.add_argument("--out", required=True, help="checkpoint folder")
    p.add_argument("--preset", default="demo", choices=("demo", "paper"))
    p.add_argument("--iterations", type=int, default=None, help="total iterations (default: the preset's)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint folder's training state")
    p.add_argument("--finetune", default=None, metavar="SUBJECT",
                   help="start from a trained subject (bundled name, folder or Hub repo id) and train the "
                        "schedule's last --finetune-steps again with a fresh optimiser; give the flags it was "
                        "trained with")
    p.add_argument("--finetune-steps", type=int, default=800, metavar="STEPS",
                   help="steps of a --finetune, all in the fusion phase (default 800)")
    p.add_argument("--fusion", default="uncertainty", choices=("uncertainty", "uniform"))
    p.add_argument("--no-codebooks", action="store_true", help="ablation: no emotion code-books")
    p.add_argument("--size", type=int, default=None, help="train at this image size (default: the dataset's)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--no-eval", action="store_true",
                   help="skip the final held-out evaluation (run `ua3dtalk eval` later, e.g. on another machine)")
    p.add_argument("--max-mouth-gaussians", type=int, default=None,
                   help="cap the inside-mouth Gaussians (default: they share the preset's budget with the face)")
    p.add_argument("--mouth-emotion", action="store_true",
                   help="the inside-mouth branch reads the emotion view too (default: the audio views only)")
    p.add_argument("--motion-basis", action="store_true",
                   help="decoders add a bilinear term: each Gaussian's own motion basis times the fused latent")
    p.add_argument("--deform-opacity", action="store_true",
                   help="the face branch offsets each Gaussian's opacity per frame too, so the skin across "
                        "the mouth's opening can clear as the lips part")
    p.add_argument("--mouth-init-frames", type=int, default=None,
                   help="draw the first inside-mouth Gaussians from this many clips' widest-open frames, "
                        "largest mouth first (default: every training clip's)")
    p.add_argument("--flow-emphasis", type=float, default=0.0,
                   help="weight each landmark's motion target by its typical motion to this power "
                        "(0: every Gaussian alike; see ua3dtalk/landmark_flow.py)")
    p.add_argument("--flow-priors", type=int, default=0, metavar="STEPS",
                   help="add STEPS to the priors phase, which then also fits the face branch and its views to "
                        "the landmark motion (no rendering), so that the audio path learns the lips' motion "
                        "before the render phases (default 0: off)")
    p.add_argument("--flow-warmup", type=int, default=0, metavar="STEPS",
                   help="first, STEPS that fit only the face branch and its views to the landmark motion "
                        "(no experts, no rendering: cheaper steps than --flow-priors; default 0: off)")
    p.add_argument("--flow-sample", type=int, default=0, metavar="N",
                   help="run the flow-only steps (--flow-warmup, --flow-priors) on N face Gaussians drawn "
                        "afresh each step: an unbiased estimate of the flow term at a fraction of the cost "
                        "(default 0: all)")
    p.add_argument("--hold-audio-views", action="store_true",
                   help="after the priors phase, the windowed audio net and style encoder stop learning, "
                        "so the lips' motion that --flow-priors puts in them stays (default: they learn "
                        "from the image loss too)")
    p.add_argument("--flow-weight", type=float, default=5.0,
                   help="weight of the landmark-flow term beside the image loss, in every phase")
    p.add_argument("--lip-weight", type=float, default=0.0,
                   help="extra image-loss weight inside the lip box (0: none)")
    p.add_argument("--opening-weight", type=float, default=0.0,
                   help="weight of a term that keeps the face Gaussians out of the ground truth's mouth "
                        "opening and over closed lips, moving them rather than fading them (0: off)")
    p.add_argument("--mouth-flow-weight", type=float, default=0.0,
                   help="weight of the landmark flow on the inside-mouth Gaussians' offsets, each tied to the "
                        "nearest skin (lower teeth to the jaw), so the inside of the mouth opens (0: off)")
    p.add_argument("--stage2-at", type=float, default=0.5,
                   help="share of the iterations after which uncertainty fusion uses the whole ensemble "
                        "(stage 2); before it, one random member per view (stage 1)")
    p.add_argument("--frames-per-step", type=int, default=10,
                   help="consecutive frames of one clip rendered per step (at least the lip expert's window)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the initial Gaussians, the networks and the batches (to measure seed spread)")
    p.add_argument("--until", type=int, default=None,
                   help="stop at this step with a resumable save (for time-limited machines; --resume goes on)")
    p.add_argument("--minutes", type=float, default=None,
                   help="stop after this many minutes of training with a resumable save (--resume goes on)")

    def run(a: argparse.Namespace) -> None:
        from ua3dtalk.train import TrainOptions, train
        train(a.data, a.out, TrainOptions(
            preset=a.preset, iterations=a.iterations, resume=a.resume, fusion=a.fusion,
            finetune=a.finetune, finetune_steps=a.finetune_steps,
            codebooks=not a.no_codebooks, size=a.size, device=a.device,
            max_mouth_gaussians=a.max_mouth_gaussians, mouth_emotion=a.mouth_emotion, seed=a.seed,
            motion_basis=a.motion_basis, deform_opacity=a.deform_opacity, flow_emphasis=a.flow_emphasis,
            lip_weight=a.lip_weight,
            stage2_at=a.stage2_at, mouth_init_frames=a.mouth_init_frames,
            frames_per_step=a.frames_per_step, flow_priors=a.flow_priors,
            flow_warmup=a.flow_warmup, flow_sample=a.flow_sample, flow_weight=a.flow_weight,
            hold_audio_views=a.hold_audio_views, opening_weight=a.opening_weight,
            mouth_flow_weight=a.mouth_flow_weight),
            evaluate=not a.no_eval, until=a.until, minutes=a.minutes)
    return run


def _render(sub: argparse._SubParsersAction) -> Handler:
    p = sub.add_parser("render", help="speech + emotion -> talking-face video (+ uncertainty heatmaps)")
    p.add_argument("--subject", default="demo", help="bundled name, local folder, or Hub repo id[/subfolder]")
    p.add_argument("--audio", required=True, help="speech file (wav, mp3, m4a, ogg, flac, ...)")
    p.add_argument("--emotion", default="neutral", help="one of the eight emotions, or 'auto' (from the audio)")
    p.add_argument("--intensity", type=float, default=1.0, help="emotion intensity in [0, 1]")
    p.add_argument("--out", required=True, help="output .mp4")
    p.add_argument("--heatmaps", default=None, help="folder for the uncertainty heatmap video and key-frame grid")
    _fusion_option(p)
    p.add_argument("--size", type=int, default=None, help="output size (default: the subject's)")
    p.add_argument("--device", default=None, choices=("cpu", "cuda"))
    p.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit)")

    def run(a: argparse.Namespace) -> None:
        from ua3dtalk.pipeline import render_to_files
        render_to_files(a.subject, a.audio, a.out, emotion=a.emotion, intensity=a.intensity,
                        fusion=a.fusion, heatmaps=a.heatmaps, size=a.size, device=a.device,
                        revision=a.revision)
    return run


def _eval(sub: argparse._SubParsersAction) -> Handler:
    p = sub.add_parser("eval", help="render held-out clips and measure image, lip-sync and emotion metrics")
    p.add_argument("--subject", default="demo")
    p.add_argument("--data", required=True, help="subject dataset folder with held-out clips")
    p.add_argument("--out", required=True, help="metrics .json")
    _fusion_option(p)
    p.add_argument("--device", default=None, choices=("cpu", "cuda"))
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--max-frames", type=int, default=None, help="only the first N frames of each clip (quicker)")

    def run(a: argparse.Namespace) -> None:
        from ua3dtalk.evaluate import evaluate_subject
        evaluate_subject(a.subject, a.data, a.out, fusion=a.fusion, device=a.device, size=a.size,
                         max_frames=a.max_frames)
    return run


def _average(sub: argparse._SubParsersAction) -> Handler:
    p = sub.add_parser("average", help="average sibling warm restarts of one subject (train --finetune from one start, "
                       "other --seed) into one checkpoint (a model soup)")
    p.add_argument("subjects", nargs="+", help="two or more checkpoints: bundled names, folders or Hub repo ids")
    p.add_argument("--out", required=True, help="checkpoint folder to write")

    def run(a: argparse.Namespace) -> None:
        from ua3dtalk.soup import average_checkpoints
        print(average_checkpoints(a.subjects, a.out))
    return run


def _push(sub: argparse._SubParsersAction) -> Handler:
    p = sub.add_parser("push", help="upload a checkpoint folder to the Hugging Face Hub with a model card")
    p.add_argument("ckpt", help="checkpoint folder (config.json + model.safetensors)")
    p.add_argument("--repo", required=True, help="USER/NAME")
    p.add_argument("--private", action="store_true")
    p.add_argument("--subfolder", default=None, help="path inside the repo, for repos holding several subjects")

    def run(a: argparse.Namespace) -> None:
        from ua3dtalk.hub import push_checkpoint
        url = push_checkpoint(a.ckpt, a.repo, private=a.private, subfolder=a.subfolder)
        print(url)
    return run


def _serve(sub: argparse._SubParsersAction) -> Handler:
    p = sub.add_parser("serve", help="start the Gradio app")
    p.add_argument("--host", default=None)
    p.add_argument("--port", type=int, default=None)

    def run(a: argparse.Namespace) -> None:
        from ua3dtalk.webapp import launch
        launch(host=a.host, port=a.port)
    return run


COMMANDS = (_synth, _preprocess, _train, _average, _render, _eval, _push, _serve)


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Handler]]:
    parser = argparse.ArgumentParser(prog="ua3dtalk", description="Speech + emotion -> emotional talking-face video rendered from 3D Gaussians, with uncertainty maps.")
    parser.add_argument("--version", action="version", version=f"ua3dtalk {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    handlers = {}
    for make in COMMANDS:
        handler = make(sub)
        handlers[list(sub.choices)[-1]] = handler
    return parser, handlers


def main(argv: Sequence[str] | None = None) -> int:
    parser, handlers = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        handlers[args.command](args)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        # user-facing failures carry a message meant to be read; no traceback
        print(f"ua3dtalk {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
