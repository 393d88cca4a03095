"""Speed and quality of the classical baselines (bicubic, detail transfer, Bayesian fusion).

Prints, for each method, the time per fused frame (median over ``--repeats`` passes over
``--timing-frames`` frames, streamed through ``method.fuse`` as the CLI does) and the mean
PSNR against the ground truth over the frames whose HR frame was not given ("unseen"), on
two simulated sequences of the same size:

* ``lpbf`` - the package's synthetic laser powder-bed fusion video (static background and
  substrate, moving keyhole, pores and spatter);
* ``translate`` - a random texture translating 2 px per frame along x and 1 px along y,
  where nothing stays in place (the hard case for methods without motion compensation).

LR frames are the ``scale`` x ``scale`` binning of every frame (optionally with Poisson
noise ``--b0``), HR keyframes every ``--spacing`` frames, as in the paper's numerical
experiment.

Example::

    PYTHONPATH=src python benchmarks/bench_baselines.py --height 400 --width 1024
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch
from scipy import ndimage as ndi

from napari_xfusion.config import NoiseConfig, TimeModel
from napari_xfusion.methods import create_method
from napari_xfusion.metrics import psnr
from napari_xfusion.simulate import Experiment, simulate_experiment
from napari_xfusion.synthetic import synthetic_lpbf

METHODS = ("bicubic", "transfer", "bayes")


def translating_texture(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """A multi-scale random texture in [0.1, 0.9] moving (1, 2) px per frame (y, x)."""
    rng = np.random.default_rng(seed)
    pad = 2 * n + 8
    noise = rng.standard_normal((height + 2 * pad, width + 2 * pad))
    big = sum(ndi.gaussian_filter(noise, s) * s**0.5 for s in (1.0, 3.0, 10.0))
    big = 0.1 + 0.8 * (big - big.min()) / (big.max() - big.min())
    return np.stack([
        big[pad - i : pad - i + height, pad - 2 * i : pad - 2 * i + width] for i in range(n)
    ]).astype(np.float32)


def unseen_psnr(name: str, experiment: Experiment) -> float:
    """Mean PSNR (dB) of a method over the frames without a keyframe."""
    method = create_method(name)
    values = [
        psnr(f.image, experiment.truth[f.t])
        for f in method.fuse(experiment.lr, experiment.hr, experiment.timeline)
        if not f.is_keyframe
    ]
    return float(np.mean(values))


def ms_per_frame(name: str, experiment: Experiment, frames: int, repeats: int) -> float:
    """Median over ``repeats`` passes of the wall time per frame of ``method.fuse``."""
    method = create_method(name)
    times = list(range(min(frames, experiment.timeline.n_lr)))
    for _ in method.fuse(experiment.lr, experiment.hr, experiment.timeline, frames=times[:1]):
        pass  # warm-up: first-call allocations and library initialization
    passes = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in method.fuse(experiment.lr, experiment.hr, experiment.timeline, frames=times):
            pass
        passes.append((time.perf_counter() - start) / len(times))
    return 1000.0 * float(np.median(passes))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--height", type=int, default=400, help="HR frame height (400).")
    parser.add_argument("--width", type=int, default=1024, help="HR frame width (1024).")
    parser.add_argument("--scale", type=int, default=4, help="HR/LR scale (4).")
    parser.add_argument("--spacing", type=int, default=10, help="keyframe spacing D (10).")
    parser.add_argument("--frames", type=int, default=41, help="sequence length (41).")
    parser.add_argument("--timing-frames", type=int, default=10,
                        help="frames per timed pass (10).")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes (5).")
    parser.add_argument("--b0", type=float, default=None,
                        help="Poisson noise blank-scan factor on LR; none by default.")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    args = parser.parse_args(argv)

    model = TimeModel(spacing=args.spacing, offset=0, separation=1, scale=args.scale)
    noise = NoiseConfig(b0=args.b0)
    scenes = {
        "lpbf": synthetic_lpbf(args.frames, args.height, args.width, seed=0),
        "translate": translating_texture(args.frames, args.height, args.width),
    }
    experiments = {name: simulate_experiment(seq, model, noise) for name, seq in scenes.items()}

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__} with {torch.get_num_threads()} threads")
    lr_note = "" if args.b0 is None else (
        f", LR Poisson noise b0={args.b0:g} "
        f"(LR PSNR {experiments['lpbf'].lr_psnr:.1f} dB lpbf, "
        f"{experiments['translate'].lr_psnr:.1f} dB translate)")
    print(f"HR {args.height}x{args.width}, LR {args.height // args.scale}x"
          f"{args.width // args.scale}, {args.frames} frames, keyframes every {args.spacing}"
          f"{lr_note}")
    print(f"{'method':<10} {'ms/frame':>9} {'PSNR lpbf':>10} {'PSNR translate':>15}")
    for name in args.methods:
        ms = ms_per_frame(name, experiments["lpbf"], args.timing_frames, args.repeats)
        quality = [unseen_psnr(name, experiments[scene]) for scene in ("lpbf", "translate")]
        print(f"{name:<10} {ms:>9.1f} {quality[0]:>10.2f} {quality[1]:>15.2f}")


if __name__ == "__main__":
    main()
