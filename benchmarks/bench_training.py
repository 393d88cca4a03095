"""Seconds per training step of a fusion network on this machine.

Times :func:`napari_xfusion.training.train`'s own step (forward, fp32 Charbonnier loss,
backward, Adam update) on a fixed batch of synthetic training samples, in each precision,
with glibc's default allocator settings and inside
:func:`~napari_xfusion.devices.retain_freed_memory` (what ``train`` and ``calibrate`` use),
and checks that the two give the same weights after the timed steps.

``--breakdown`` instead times where one step (bf16 where the CPU has it, freed memory kept)
spends its time: each top-level module's forward, the backward pass and the optimizer
step, with hooks and a clock rather than ``torch.profiler``, whose per-operation times on
a small CPU inflate memory-bound operations.

Run::

    python benchmarks/bench_training.py                        # default preset, batch 16, crop 64
    python benchmarks/bench_training.py --batch 8 --crop 32 --precisions bf16
    python benchmarks/bench_training.py --breakdown
"""

from __future__ import annotations

import argparse
import collections
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


def _setup(config: TrainConfig):
    """The device, a fresh network, its optimizer and a fixed batch of training samples."""
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    model = build_model(config.model_config()).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    sampler = PairSampler(synthetic_sequences(1, 16), config)
    batch = sampler.sample_batch(np.random.default_rng(0), config.batch_size, device)
    return device, model, optimizer, batch


def time_steps(config: TrainConfig, precision: str, allocator: str, steps: int):
    """Seconds of each of ``steps`` timed steps (after one untimed), and the final weights."""
    device, model, optimizer, batch = _setup(config)
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


def breakdown(config: TrainConfig, steps: int) -> tuple[float, dict[str, float]]:
    """Seconds of the median of ``steps`` timed steps, and that step's parts."""
    device, model, optimizer, batch = _setup(config)
    amp = autocast_dtype(device, "auto", training=True)
    parts: dict[str, float] = collections.defaultdict(float)
    started: dict[str, float] = {}

    def timed(name, method):
        def run(*args, **kwargs):
            start = time.perf_counter()
            result = method(*args, **kwargs)
            parts[name] += time.perf_counter() - start
            return result
        return run

    def before(name):
        return lambda module, args: started.__setitem__(name, time.perf_counter())

    def after(name):
        return lambda module, args, out: parts.__setitem__(
            name, parts[name] + time.perf_counter() - started[name])

    for name, module in [("forward", model), *model.named_children()]:
        module.register_forward_pre_hook(before(name))
        module.register_forward_hook(after(name))
    optimizer.step = timed("optimizer step", optimizer.step)
    backward = torch.Tensor.backward
    torch.Tensor.backward = timed("backward", backward)
    runs = []
    try:
        with retain_freed_memory():
            _step(model, optimizer, batch, config, amp)
            for _ in range(steps):
                parts.clear()
                start = time.perf_counter()
                _step(model, optimizer, batch, config, amp)
                runs.append((time.perf_counter() - start, dict(parts)))
    finally:
        torch.Tensor.backward = backward
    return sorted(runs, key=lambda run: run[0])[len(runs) // 2]


def print_breakdown(config: TrainConfig, steps: int) -> None:
    total, parts = breakdown(config, steps)
    print(f"one step: {total:.2f} s (median of {steps})")
    rows = [(name, parts.pop(name)) for name in ("forward", "backward", "optimizer step")]
    modules = sorted(parts.items(), key=lambda item: -item[1])
    for name, seconds in rows[:1] + [(f"  {n}", v) for n, v in modules] + rows[1:]:
        print(f"{name:<26} {seconds:6.3f} s {100 * seconds / total:5.1f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--crop", type=int, default=64, help="LR crop size")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per setting")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--breakdown", action="store_true",
                        help="time the parts of one step instead (bf16 where available)")
    args = parser.parse_args()

    config = TrainConfig(preset=args.preset, batch_size=args.batch, lr_crop=args.crop,
                         device=args.device)
    if args.breakdown:
        print_breakdown(config, args.steps)
        return
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
