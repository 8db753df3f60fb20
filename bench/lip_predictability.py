"""How well does the audio predict the lips' true motion, and what does learning it from MediaPipe cost?

    python bench/lip_predictability.py [--data data/demo] [--synth data/demo_synth] [--window 6] [--ridge 3]

On a synthesized subject the lips' true motion is known: ``synth``'s own landmarks, which the video's
pixels follow. A ridge regression from each frame's audio window (the log-mel features the demo preset
reads, the 80 bands averaged over a frame's four hops, +-``--window`` frames) and the emotion label
(one-hot times intensity) to the 80 lip landmarks is fitted on the training clips, once to the truth and
once to the dataset's landmarks (the landmark flow's targets: MediaPipe's, or with ``preprocess
--track-lips`` the outer lips moved by optical flow), and scored against the truth on training and
held-out frames: slope of predicted on true motion and relative error, the motion taken about the
training frames' mean. A linear reference for what the audio carries, beside what the landmarks report.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ua3dtalk import audio as audio_io
from ua3dtalk.config import EMOTIONS
from ua3dtalk.data import landmarks as lmk
from ua3dtalk.data.dataset import SubjectDataset
from ua3dtalk.data.truth import landmarks_in_crop

LIPS = list(lmk.LIPS_OUTER + lmk.LIPS_INNER)


def split_arrays(data: SubjectDataset, synth: Path, window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per frame of the split: audio window and label [T, F], true and dataset lip landmarks [T, 160]."""
    extractor = audio_io.get_extractor("logmel", device="cpu")
    crops = {c["name"]: c["crop"] for c in data.meta["clips"]}
    inputs, true, measured = [], [], []
    for index, clip in enumerate(data.clips):
        n = clip.n_frames
        bands = extractor(data.audio(index)[0]).float().numpy()
        bands = bands.reshape(len(bands), 4, -1).mean(1)[:n]
        bands = np.pad(bands, ((window, window + n - len(bands)), (0, 0)), mode="edge")
        windows = np.stack([bands[t:t + 2 * window + 1].ravel() for t in range(n)])
        label = np.zeros(len(EMOTIONS), np.float32)
        label[EMOTIONS.index(clip.emotion)] = clip.intensity
        inputs.append(np.hstack([windows, np.tile(label, (n, 1))]))
        true.append(landmarks_in_crop(synth, clip.name, n, crops[clip.name], data.size)[:, LIPS].reshape(n, -1))
        rows = [data.global_index(i) for i in data.clip_frames(index)]
        measured.append((data.landmarks[rows][:, LIPS, :2] * data.size / data.source_size).reshape(n, -1))
    return np.concatenate(inputs), np.concatenate(true), np.concatenate(measured)


def score(predicted: np.ndarray, true: np.ndarray, mean: np.ndarray) -> str:
    """Slope / relative error of the predicted motion about ``mean`` against the true motion."""
    p, t = predicted - mean, true - mean
    return f"{(p * t).sum() / (t * t).sum():.2f} / {np.linalg.norm(p - t) / np.linalg.norm(t):.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="data/demo", help="dataset preprocessed from --synth")
    ap.add_argument("--synth", default="data/demo_synth", help="the synthesized subject (with truth/)")
    ap.add_argument("--window", type=int, default=6, help="audio frames on each side")
    ap.add_argument("--ridge", type=float, default=3.0, help="ridge penalty on the standardised inputs")
    args = ap.parse_args()

    train_x, train_true, train_data_lm = split_arrays(SubjectDataset(args.data, "train"), Path(args.synth), args.window)
    test_x, test_true, test_data_lm = split_arrays(SubjectDataset(args.data, "heldout"), Path(args.synth), args.window)
    centre, spread = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, test_x = (train_x - centre) / spread, (test_x - centre) / spread
    gram = train_x.T @ train_x + args.ridge * np.eye(train_x.shape[1])
    mean = train_true.mean(0)
    print(f"{len(train_x)} training and {len(test_x)} held-out frames, audio +-{args.window} frames, "
          f"ridge {args.ridge}; slope / relative error against the true lip motion\n")
    print("| lip motion | training frames | held-out frames |")
    print("| --- | ---: | ---: |")
    # the landmarks' own static offset is not motion: each source is centred on its training mean
    as_truth = mean - train_data_lm.mean(0)
    print(f"| the dataset's landmarks (the flow's targets) | {score(train_data_lm + as_truth, train_true, mean)} "
          f"| {score(test_data_lm + as_truth, test_true, mean)} |")
    for name, target in (("audio regression fitted to the dataset's landmarks", train_data_lm),
                         ("audio regression fitted to the truth", train_true)):
        weights = np.linalg.solve(gram, train_x.T @ (target - target.mean(0)))
        print(f"| {name} | {score(train_x @ weights + mean, train_true, mean)} "
              f"| {score(test_x @ weights + mean, test_true, mean)} |")


if __name__ == "__main__":
    main()
