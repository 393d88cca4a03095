"""What aligning keyframes gains, by how far the keyframes are from the frame fused.

Held-out real videos (the ``val/`` sequences of the training data file, as
``benchmarks/eval_real.py`` uses them; clean 4 x 4 binned LR): at a few times ``t``,
EDVR-STF (bundled weights) fuses frame ``t`` from LR ``t-1, t, t+1`` and the true HR frames
``t - d`` and ``t + d`` as keyframes, with them as they are (``stf``) and warped onto LR
``t`` first (``stf-aligned``), for several distances ``d``. Fusion at spacing ``D`` bridges
``d`` up to ``D / 2`` to the nearer keyframe; ``xfusion assess`` predicts keyframes from
neighbours ``D`` away. Then, per spacing, the assessment's estimates of the two methods
beside their true unseen-frame PSNR, the recording's keyframe motion and what the
assessment recommends.

Example (2-core CPU, about 4 minutes)::

    PYTHONPATH=src python benchmarks/align_distance.py --sequences carphone
"""

from __future__ import annotations

import argparse

import numpy as np

from napari_xfusion.assess import assess
from napari_xfusion.config import EngineConfig, TimeModel
from napari_xfusion.methods import create_method
from napari_xfusion.metrics import evaluate, psnr
from napari_xfusion.simulate import bin_frames, simulate_experiment
from napari_xfusion.timeline import FrameInputs
from napari_xfusion.training.data import REAL, distinct_frames, load_sequence_file

METHODS = ("stf", "stf-aligned")


def by_distance(methods: dict, truth: np.ndarray, times: list[int],
                distances: list[int]) -> list[str]:
    """Markdown rows: per time, PSNR of each method with true keyframes ``d`` away."""
    lr = bin_frames(truth, 4)
    rows = []
    for t in times:
        cells = []
        for d in distances:
            inputs = FrameInputs(t=t, lr=(t - 1, t, t + 1), hr=(0, 1),
                                 hr_times=(t - d, t + d), is_keyframe=False)
            plain, aligned = (
                psnr(method.fuse_frame(lr[[t - 1, t, t + 1]], truth[[t - d, t + d]], inputs),
                     truth[t])
                for method in methods.values()
            )
            cells.append(f"{plain:.2f} / {aligned:.2f} ({aligned - plain:+.2f})")
        rows.append(f"| {t} | " + " | ".join(cells) + " |")
    return rows


def assessed(methods: dict, truth: np.ndarray, spacing: int) -> str:
    """A Markdown row: estimates, true unseen PSNR, motion and the recommendation."""
    exp = simulate_experiment(truth, TimeModel(spacing=spacing))
    assessment = assess(exp.lr, exp.hr, exp.timeline, methods)
    mask = exp.timeline.keyframe_mask()
    frames = [int(t) for t in np.flatnonzero(~mask)]
    true = {}
    for name, method in methods.items():
        fused = (f.image for f in method.fuse(exp.lr, exp.hr, exp.timeline, frames=frames))
        true[name] = float(np.mean(evaluate(fused, exp.truth, mask, frames=frames)
                                   .values["psnr"]))
    estimate = {s.name: s.psnr_mean for s in assessment.scores}
    # Both EDVR-STF methods are assessed, so the assessment has measured the motion.
    return (f"| {len(truth)} | {spacing} | " + " | ".join(f"{estimate[m]:.2f}" for m in METHODS)
            + " | " + " | ".join(f"{true[m]:.2f}" for m in METHODS)
            + f" | {assessment.motion:.2f} | {assessment.recommended} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-file", default=".device-data/sequences.npz")
    parser.add_argument("--sequences", nargs="+", default=["carphone"])
    parser.add_argument("--times", type=int, nargs="+", default=[10, 20, 30, 40, 50])
    parser.add_argument("--distances", type=int, nargs="+", default=[1, 2, 3, 5, 10])
    parser.add_argument("--frames", type=int, nargs="+", default=[41, 61],
                        help="sequence lengths the assessment is tried on")
    parser.add_argument("--spacing", type=int, default=10)
    args = parser.parse_args(argv)

    _, validation, _ = load_sequence_file(args.data_file)
    engine = EngineConfig(device="cpu")
    methods = {name: create_method(name, engine=engine) for name in METHODS}
    for seq in validation:
        if seq.group != REAL or seq.name not in args.sequences:
            continue
        frames = distinct_frames(seq.frames)
        _, h, w = frames.shape
        truth = frames[:, : h - h % 16, : w - w % 16].astype(np.float32) / 255.0
        print(f"\n{seq.name}: unseen-frame PSNR (dB) of stf / stf-aligned (gain), keyframes "
              "the true frames t - d and t + d\n")
        print("| t | " + " | ".join(f"d = {d}" for d in args.distances) + " |")
        print("| ---: |" + " ---: |" * len(args.distances))
        usable = [t for t in args.times if t - max(args.distances) >= 0
                  and t + max(args.distances) < len(truth)]
        print("\n".join(by_distance(methods, truth, usable, args.distances)), flush=True)
        print(f"\n{seq.name}, D = {args.spacing}: `assess` estimates against the truth\n")
        print("| frames | D | estimate stf | estimate stf-aligned | unseen stf | "
              "unseen stf-aligned | keyframe motion (LR px) | recommended |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
        for n in args.frames:
            print(assessed(methods, truth[:n], args.spacing), flush=True)


if __name__ == "__main__":
    main()
