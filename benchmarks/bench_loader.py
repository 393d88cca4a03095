"""Training samples per second that the loader makes, in threads and in worker processes.

Warping keyframes onto LR ``t`` (``TrainConfig.aligned_fraction``) runs mostly in Python and
holds the global interpreter lock, so loader threads do not make such batches side by
side; worker processes (``TrainConfig.loader_processes``, ``xfusion train
--loader-processes``) do. Each setting first lets its workers start and fill the queue,
drains what they made, then times the batches that follow.

Run::

    python benchmarks/bench_loader.py                         # 1 and 2 workers, LR crop 64
    python benchmarks/bench_loader.py --workers 1 4 14 --batches 60
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from napari_xfusion.config import TrainConfig
from napari_xfusion.training.data import PairSampler, synthetic_sequences
from napari_xfusion.training.train import _PREFETCH_PER_WORKER, _Prefetcher


def samples_per_second(sampler: PairSampler, config: TrainConfig, workers: int,
                       batches: int) -> float:
    """Samples/s that ``workers`` loader workers make once started."""
    queued = workers * _PREFETCH_PER_WORKER
    cpu = torch.device("cpu")
    with _Prefetcher(sampler, dataclasses.replace(config, iterations=2 * queued + batches),
                     0) as loader:
        for _ in range(queued):
            loader.next(cpu)  # started, and what was made before the clock starts is spent
        start = time.perf_counter()
        for _ in range(batches):
            loader.next(cpu)
        return batches * config.batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--aligned", type=float, nargs="+", default=[0.0, 1.0],
                        help="aligned_fraction values to measure")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--crop", type=int, default=64, help="LR crop size")
    parser.add_argument("--batches", type=int, default=20, help="timed batches per setting")
    args = parser.parse_args()

    base = TrainConfig(batch_size=args.batch, lr_crop=args.crop)
    sequences = synthetic_sequences(2, 24)
    print(f"batch {args.batch}, LR crop {args.crop}; samples/s")
    print(f"{'aligned':>7} {'workers':>7} {'threads':>8} {'processes':>9}")
    for aligned in args.aligned:
        config = dataclasses.replace(base, aligned_fraction=aligned)
        sampler = PairSampler(sequences, config)
        for workers in args.workers:
            threads = samples_per_second(
                sampler, dataclasses.replace(config, loader_threads=workers), workers,
                args.batches)
            processes = samples_per_second(
                sampler, dataclasses.replace(config, loader_processes=workers), workers,
                args.batches)
            print(f"{aligned:>7g} {workers:>7} {threads:>8.1f} {processes:>9.1f}")


if __name__ == "__main__":
    main()
