"""Frames per second of EDVR-STF (default preset, bundled weights) on the built-in sample.

The sample is the one ``xfusion demo`` fuses: 48 frames, HR 256x512, keyframes every 10
frames. For each engine setting it fuses the whole sample once (after a one-frame warm-up)
and prints frames/s and the PSNR of the unseen frames against the ground truth, so a speed-up
that costs quality shows. ``--profile`` adds the operators that take the most CPU time in the
fastest setting.

Run::

    python benchmarks/bench_sample.py
    python benchmarks/bench_sample.py --device cuda --profile
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from napari_xfusion.config import EngineConfig
from napari_xfusion.demo import sample_experiment
from napari_xfusion.devices import resolve_device
from napari_xfusion.engine import Engine
from napari_xfusion.metrics import psnr
from napari_xfusion.models import bundled_weights_path, load_weights

#: (label, engine settings): the plain path first, then one change at a time.
SETTINGS = [
    ("fp32, features per output", dict(precision="fp32", feature_cache_mb=0)),
    ("fp32, features reused", dict(precision="fp32")),
    ("auto precision, features reused (default)", dict()),
    ("the default, keyframes aligned to each output (stf-aligned)", dict(align_keyframes=True)),
]


def fuse_sample(engine: Engine, exp) -> tuple[float, float]:
    """Frames/s of one pass over the sample, and the mean PSNR of its unseen frames."""
    inputs = exp.timeline.inputs(1)
    engine.fuse_frame(np.asarray(exp.lr[list(inputs.lr)]), np.asarray(exp.hr[list(inputs.hr)]),
                      inputs)  # warm-up
    start = time.perf_counter()
    frames = list(engine.run(exp.lr, exp.hr, exp.timeline))
    fps = len(frames) / (time.perf_counter() - start)
    unseen = [psnr(f.image, exp.truth[f.t]) for f in frames if not f.is_keyframe]
    return fps, float(np.mean(unseen))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--profile", action="store_true",
                        help="list the operators that cost most in the default setting")
    args = parser.parse_args()

    device = resolve_device(args.device)
    exp = sample_experiment()
    model = load_weights(bundled_weights_path("stf"))
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"sample {exp.timeline.n_lr} frames, HR {exp.truth.shape[1]}x{exp.truth.shape[2]}")
    print(f"{'setting':60s} {'frames/s':>9s} {'PSNR unseen dB':>15s}")
    for label, options in SETTINGS:
        engine = Engine(model, EngineConfig(device=str(device), **options))
        fps, quality = fuse_sample(engine, exp)
        print(f"{label:60s} {fps:9.2f} {quality:15.2f}")
    if args.profile:
        engine = Engine(model, EngineConfig(device=str(device)))
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(ProfilerActivity.CUDA)
        with profile(activities=activities) as prof:
            for _ in engine.run(exp.lr, exp.hr, exp.timeline):
                pass
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
