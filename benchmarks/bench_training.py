"""Seconds per training step of a fusion network on this machine.

Times :func:`napari_xfusion.training.train`'s own step (forward, fp32 Charbonnier loss,
backward, Adam update) on a fixed batch of synthetic training samples, in each precision,
with glibc's default allocator settings and inside
:func:`~napari_xfusion.devices.retain_freed_memory` (what ``train`` and ``calibrate`` use),
and checks that the two give the same weights after the timed steps.

Run::

    python benchmarks/bench_training.py                        # default preset, batch 16, crop 64
    python benchmarks/bench_training.py --batch 8 --crop 32 --precisions bf16
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import numpy as np
import torch

from napari_xfusion.config import TrainConfig
from napari_xfusion.devices import autocast_dtype, resolve_device, retain_freed_memory
from napari_xfusion.models import build_model
from napari_xfusion.training.data import PairSampler, synthetic_sequences
from napari_xfusion.training.train import _step

ALLOCATORS = ("default", "retained")


def time_steps(config: TrainConfig, precision: str, allocator: str, steps: int):
    """Seconds of each of ``steps`` timed steps (after one untimed), and the final weights."""
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    model = build_model(config.model_config()).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    sampler = PairSampler(synthetic_sequences(1, 16), config)
    batch = sampler.sample_batch(np.random.default_rng(0), config.batch_size, device)
    amp = autocast_dtype(device, precision, training=True)
    held = retain_freed_memory() if allocator == "retained" else contextlib.nullcontext()
    seconds = []
    with held:
        _step(model, optimizer, batch, config, amp)
        for _ in range(steps):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            _step(model, optimizer, batch, config, amp)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - start)
    return seconds, [p.detach().clone() for p in model.parameters()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--crop", type=int, default=64, help="LR crop size")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per setting")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    config = TrainConfig(preset=args.preset, batch_size=args.batch, lr_crop=args.crop,
                         device=args.device)
    print(f"{args.preset} preset, batch {args.batch}, LR crop {args.crop}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'precision':>9} {'allocator':>9} {'s/step':>7} {'steps/s':>7}  same weights")
    baseline = None
    for precision in args.precisions:
        weights = {}
        for allocator in ALLOCATORS:
            seconds, weights[allocator] = time_steps(config, precision, allocator, args.steps)
            median = statistics.median(seconds)
            baseline = baseline or median
            same = ""
            if allocator == "retained":
                same = str(all(torch.equal(a, b) for a, b in
                               zip(weights["default"], weights["retained"], strict=True)))
            print(f"{precision:>9} {allocator:>9} {median:7.2f} {1 / median:7.3f}  {same}"
                  f"   ({baseline / median:.2f}x the first row)")


if __name__ == "__main__":
    main()
