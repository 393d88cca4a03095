"""Training of EDVR-STF and EDVR on paired samples, resumable and deterministic.

:func:`train` runs the paper's recipe (Tang et al. 2024, section 7.1.2): Charbonnier loss,
Adam at 1e-4 with cosine annealing, 64/256-pixel LR/HR crops, random flips and
transpositions, random LR separations and keyframe offsets, and Poisson noise on the LR
frames (:mod:`napari_xfusion.training.data`). Everything about a run is in a
:class:`~napari_xfusion.config.TrainConfig`.

Every random draw comes from the seed: the initial weights from ``seed``, batch ``i`` from
a generator seeded with ``(seed, i)``. A run therefore needs no random-generator state to
continue: the checkpoint (``checkpoint.pt`` in the output folder: weights, Adam moments,
schedule and iteration) is all there is, and a run continued from it gives the same
weights as one that never stopped (bit for bit on the CPU). Calling :func:`train` again
with the same configuration continues where the last call stopped, so a long training can
run in chunks that each end at a wall-clock budget (``max_minutes``).

Output folder::

    checkpoint.pt         the state to continue from (tensors and numbers only)
    log.csv, log.jsonl    loss, learning rate, speed and validation PSNR per interval
    weights.safetensors   the trained network, written when a call ends
"""

from __future__ import annotations

import csv
import json
import math
import multiprocessing
import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from ..config import TRAIN_RUN_SETTINGS, TrainConfig
from ..devices import autocast, autocast_dtype, resolve_device, retain_freed_memory
from ..methods.classical import bicubic_upsample
from ..metrics import psnr
from ..models import build_model, count_parameters, init_from, load_weights, save_weights
from .data import PairSampler, TrainingBatch, training_sequences, validation_batches

CHECKPOINT = "checkpoint.pt"
WEIGHTS = "weights.safetensors"
LOG_CSV = "log.csv"
LOG_JSONL = "log.jsonl"
LOG_COLUMNS = (
    "iteration", "elapsed_s", "iterations_per_s", "loss", "learning_rate",
    "val_psnr", "val_bicubic_psnr",
)
#: Tag that separates the batch generators from other streams derived from the seed.
_BATCH_STREAM = 1
#: Batches made ahead of the one training, per loader thread or process.
_PREFETCH_PER_WORKER = 2

Progress = Callable[[str], None]


def charbonnier(estimate: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Charbonnier loss ``mean(sqrt((estimate - target)**2 + eps**2))``.

    With ``eps = 1e-6`` this is BasicSR's ``CharbonnierLoss`` (which adds ``1e-12`` under
    the root): a smooth L1 loss.
    """
    diff = estimate.float() - target.float()
    return torch.sqrt(diff * diff + eps * eps).mean()


def batch_generator(seed: int, iteration: int) -> np.random.Generator:
    """The generator of the batch of ``iteration``: depends on nothing but its arguments."""
    return np.random.default_rng([seed, _BATCH_STREAM, iteration])


def train(
    config: TrainConfig = TrainConfig(),
    resume: bool = True,
    progress: Progress | None = print,
) -> Path:
    """Train a fusion network; continue an earlier run in ``config.out_dir`` if there is one.

    Parameters
    ----------
    config : TrainConfig
        Network, recipe, data and run settings.
    resume : bool
        Continue from ``out_dir/checkpoint.pt`` when it exists (it must come from the same
        configuration, run settings aside). False starts afresh and overwrites it.
    progress : callable, optional
        Called with each log line (default ``print``); None for silence.

    Returns
    -------
    Path
        The weights file, ``out_dir/weights.safetensors``: written when the run completes
        and when a call stops at its ``max_minutes`` budget (then with ``complete`` "false"
        in its metadata).

    Raises
    ------
    ValueError
        When the checkpoint belongs to another configuration, or the data are unusable.
    RuntimeError
        When the loss stops being finite (the last checkpoint is left intact).

    Examples
    --------
    Three chunks of eight minutes on a GPU add up to one run::

        for _ in range(3):
            train(TrainConfig(out_dir="runs/stf", max_minutes=8))
    """
    say = progress or (lambda line: None)
    started = time.monotonic()
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.device)
    amp_dtype = autocast_dtype(device, config.precision, training=True)
    if device.type == "cuda":
        # Fixed input sizes: let cuDNN pick the fastest convolution algorithms once.
        torch.backends.cudnn.benchmark = True

    torch.manual_seed(config.seed)
    model = build_model(config.model_config())
    if config.init_weights:
        fresh = init_from(model, load_weights(config.init_weights))
        if fresh:
            say(f"started from {config.init_weights}; new: {', '.join(fresh)}")
    model = model.to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=config.learning_rate, betas=config.betas
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=config.iterations, eta_min=config.min_learning_rate
    )

    iteration, elapsed_before = 0, 0.0
    checkpoint_path = out_dir / CHECKPOINT
    weights = out_dir / WEIGHTS
    if not resume:
        # A fresh start must not leave the old run's state to be continued or mistaken
        # for its result if this one stops before its first checkpoint.
        checkpoint_path.unlink(missing_ok=True)
        weights.unlink(missing_ok=True)
    elif checkpoint_path.exists():
        iteration, elapsed_before = _load_checkpoint(
            checkpoint_path, config, model, optimizer, scheduler, device
        )
        say(f"continuing from iteration {iteration} of {config.iterations} ({checkpoint_path})")
    if iteration >= config.iterations and weights.exists():
        say(f"the run is already complete: {weights}")
        return weights
    _trim_logs(out_dir, iteration)

    train_seqs, val_seqs, data = training_sequences(config)
    sampler = PairSampler(train_seqs, config)
    validation = validation_batches(
        val_seqs, config.validation_samples, config.validation_spacing, config.seed
    )
    bicubic = _bicubic_psnr(validation)
    name = "custom" if config.model is not None else config.preset
    say(
        f"{config.arch} network '{name}' ({count_parameters(model):,} parameters) on "
        f"{device}, {'fp32' if amp_dtype is None else 'bf16'}; {len(train_seqs)} training and "
        f"{len(val_seqs)} validation sequences; batch {config.batch_size}, LR crop "
        f"{config.lr_crop}"
    )

    metadata = {"data": data, "bicubic_psnr": bicubic}
    log = _Log(out_dir)
    if iteration == 0 and config.init_weights:
        # Where transfer learning starts from: the baseline of everything that follows.
        start = _validate(model, validation, device, amp_dtype)
        log.write({"iteration": 0, "elapsed_s": 0.0, "val_psnr": start.get("psnr"),
                   "val_bicubic_psnr": bicubic.get("psnr"), "validation": start})
        say(f"iter 0: val PSNR {start.get('psnr', float('nan')):.2f} dB before training")
    budget = None if config.max_minutes is None else 60.0 * config.max_minutes
    loss_sum = torch.zeros((), device=device)
    loss_count, window_start, window_iteration = 0, time.monotonic(), iteration
    val: dict[str, float] | None = None
    stopped_early = False

    with _Prefetcher(sampler, config, iteration) as batches, retain_freed_memory():
        model.train()
        while iteration < config.iterations:
            batch = batches.next(device)
            loss = _step(model, optimizer, batch, config, amp_dtype)
            scheduler.step()
            iteration += 1
            # Summed on the device: reading the loss every step would stall the GPU queue.
            loss_sum += loss.detach()
            loss_count += 1

            last = iteration == config.iterations
            out_of_time = budget is not None and time.monotonic() - started >= budget
            log_now = iteration % config.log_every == 0 or last or out_of_time
            save_now = iteration % config.checkpoint_every == 0 or last or out_of_time
            if log_now or save_now:
                # A non-finite loss leaves non-finite weights: never log on or save those.
                mean_loss = float(loss_sum) / loss_count
                if not math.isfinite(mean_loss):
                    raise RuntimeError(
                        f"the training loss is {mean_loss} at iteration {iteration}; the "
                        f"checkpoint in {checkpoint_path} is intact: continue from it with a "
                        "lower learning_rate, or precision='fp32'."
                    )
            if log_now:
                now = time.monotonic()
                speed = (iteration - window_iteration) / max(now - window_start, 1e-9)
                row = {
                    "iteration": iteration,
                    "elapsed_s": round(elapsed_before + now - started, 1),
                    "iterations_per_s": round(speed, 3),
                    "loss": mean_loss,
                    "learning_rate": scheduler.get_last_lr()[0],
                }
                val = None
                if iteration % config.validate_every == 0 or last:
                    val = _validate(model, validation, device, amp_dtype)
                    row.update(val_psnr=val.get("psnr"), val_bicubic_psnr=bicubic.get("psnr"))
                    row["validation"] = val
                log.write(row)
                say(_progress_line(row, config.iterations, speed))
                loss_sum.zero_()
                loss_count, window_start, window_iteration = 0, time.monotonic(), iteration
            if save_now:
                _save_checkpoint(
                    checkpoint_path, config, model, optimizer, scheduler, iteration,
                    elapsed_before + time.monotonic() - started,
                )
            if out_of_time and not last:
                stopped_early = True
                say(
                    f"stopped at iteration {iteration} after {config.max_minutes} minutes; "
                    "call train again with the same configuration to continue"
                )
                break

    if val is None:  # not validated at the final iteration yet
        val = _validate(model, validation, device, amp_dtype)
    return _write_weights(model, out_dir, config, iteration, not stopped_early, val, metadata)


# -- one step ----------------------------------------------------------------------------


def _step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: TrainingBatch,
    config: TrainConfig,
    amp_dtype: torch.dtype | None,
) -> torch.Tensor:
    hr = batch.hr if config.arch == "stf" else None
    optimizer.zero_grad(set_to_none=True)
    with autocast(batch.lr.device, amp_dtype):
        out, _ = model(batch.lr, hr, batch.position)
    # The loss in fp32: bf16 differences of nearly equal frames would round to zero.
    loss = charbonnier(out, batch.target, config.charbonnier_eps)
    loss.backward()
    optimizer.step()
    return loss


class _Prefetcher:
    """Makes the batches of the coming iterations on the CPU while the current one trains:
    crops, binning, noise and warped keyframes alike; in threads, or in worker processes
    when ``config.loader_processes`` asks for them.

    Batch ``i`` depends only on ``(seed, i)``, so the order in which workers finish does
    not matter and a resumed run draws the same batches as an uninterrupted one.
    """

    def __init__(self, sampler: PairSampler, config: TrainConfig, start: int) -> None:
        self.config = config
        self.next_submit = start
        if config.loader_processes:
            workers = config.loader_processes
            self.pool = ProcessPoolExecutor(
                workers, mp_context=_loader_context(), initializer=_hold_sampler,
                initargs=(sampler,),
            )
            self.make: Callable[..., TrainingBatch] = _sample_with_held
        else:
            workers = config.loader_threads
            self.pool = ThreadPoolExecutor(max_workers=workers)
            self.make = sampler.sample_batch
        self.queue: list[Future] = []
        for _ in range(workers * _PREFETCH_PER_WORKER):
            self._submit()

    def _submit(self) -> None:
        if self.next_submit >= self.config.iterations:
            return
        rng = batch_generator(self.config.seed, self.next_submit)
        self.queue.append(self.pool.submit(self.make, rng, self.config.batch_size))
        self.next_submit += 1

    def next(self, device: torch.device) -> TrainingBatch:
        batch = self.queue.pop(0).result()
        self._submit()
        return batch.to(device)

    def __enter__(self) -> "_Prefetcher":
        return self

    def __exit__(self, *exc) -> None:
        for future in self.queue:
            future.cancel()
        self.pool.shutdown(wait=True)


#: A loader process's own copy of the sampler (set by :func:`_hold_sampler`).
_held_sampler: PairSampler | None = None


def _loader_context() -> multiprocessing.context.BaseContext:
    """How loader processes start: from a clean server process where the system has one
    (forking this one would copy its threads' locks mid-use), else afresh."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def _hold_sampler(sampler: PairSampler) -> None:
    """Start of a loader process: keep the sampler; one thread each, the cores are shared."""
    global _held_sampler
    torch.set_num_threads(1)
    _held_sampler = sampler


def _sample_with_held(rng: np.random.Generator, batch_size: int) -> TrainingBatch:
    """One batch, made in a loader process."""
    assert _held_sampler is not None, "called outside a loader process"
    return _held_sampler.sample_batch(rng, batch_size)


# -- validation --------------------------------------------------------------------------


def _bicubic_psnr(batches: list[TrainingBatch]) -> dict[str, float]:
    """Mean PSNR of bicubic upsampling of LR ``t`` on the validation samples."""
    values = [
        psnr(bicubic_upsample(lr[1, 0].numpy(), 4), target[0].numpy())
        for batch in batches
        for lr, target in zip(batch.lr, batch.target, strict=True)
    ]
    return {"psnr": float(np.mean(values))} if values else {}


def _validate(
    model: torch.nn.Module,
    batches: list[TrainingBatch],
    device: torch.device,
    amp_dtype: torch.dtype | None,
) -> dict[str, float]:
    """Mean PSNR of the network on the fixed validation samples (noise-free and noisy)."""
    if not batches:
        return {}
    model.eval()
    scores: dict[str, list[float]] = {"psnr": [], "psnr_clean": [], "psnr_noisy": []}
    with torch.no_grad():
        for batch in batches:
            for i in range(batch.lr.shape[0]):
                lr = batch.lr[i : i + 1].to(device)
                hr = batch.hr[i : i + 1].to(device) if model.config.arch == "stf" else None
                position = batch.position[i : i + 1].to(device)
                with autocast(device, amp_dtype):
                    out, _ = model(lr, hr, position)
                estimate = out[0, 0].float().clamp(0, 1).cpu().numpy()
                value = psnr(estimate, batch.target[i, 0].numpy())
                scores["psnr"].append(value)
                # Validation samples alternate noise-free (even) and noisy (odd).
                scores["psnr_noisy" if i % 2 else "psnr_clean"].append(value)
    model.train()
    return {key: float(np.mean(v)) for key, v in scores.items() if v}


# -- files -------------------------------------------------------------------------------


def _identity(config: TrainConfig) -> dict:
    """The settings that fix a run's results (all but the run settings)."""
    return {k: v for k, v in config.to_dict().items() if k not in TRAIN_RUN_SETTINGS}


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _save_checkpoint(
    path: Path,
    config: TrainConfig,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    iteration: int,
    elapsed: float,
) -> None:
    state = {
        "format": "napari-xfusion-checkpoint",
        "iteration": iteration,
        "elapsed_s": elapsed,
        "config": json.dumps(_identity(config), sort_keys=True),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
    }
    # Written beside the old one and renamed over it: a run killed while saving keeps the
    # previous checkpoint.
    _atomic_write(path, lambda tmp: torch.save(state, tmp))


def _load_checkpoint(
    path: Path,
    config: TrainConfig,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
) -> tuple[int, float]:
    # Tensors, numbers and strings only: weights_only refuses anything that could run code.
    state = torch.load(path, map_location=device, weights_only=True)
    if not isinstance(state, dict) or state.get("format") != "napari-xfusion-checkpoint":
        raise ValueError(f"{path} is not a napari-xfusion training checkpoint.")
    saved = json.loads(state["config"])
    current = _identity(config)
    changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    if changed:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed)
        raise ValueError(
            f"{path} belongs to a run with other settings ({details}); continue it with its "
            "own settings, choose another out_dir, or pass resume=False to start afresh."
        )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return int(state["iteration"]), float(state["elapsed_s"])


def _write_weights(
    model: torch.nn.Module,
    out_dir: Path,
    config: TrainConfig,
    iteration: int,
    complete: bool,
    validation: dict[str, float],
    metadata: dict,
) -> Path:
    extra = {
        "iterations": str(iteration),
        "complete": "true" if complete else "false",
        "training_config": json.dumps(config.to_dict(), sort_keys=True),
        "training_data": json.dumps(metadata["data"]),
        "validation_psnr": json.dumps(validation),
        "validation_bicubic_psnr": json.dumps(metadata["bicubic_psnr"]),
    }
    return save_weights(model, out_dir / WEIGHTS, extra_metadata=extra)


class _Log:
    """Appends interval rows to ``log.csv`` (fixed columns) and ``log.jsonl`` (all fields)."""

    def __init__(self, out_dir: Path) -> None:
        self.csv_path = out_dir / LOG_CSV
        self.jsonl_path = out_dir / LOG_JSONL
        if not self.csv_path.exists():
            with self.csv_path.open("w", newline="") as f:
                csv.writer(f).writerow(LOG_COLUMNS)

    def write(self, row: dict) -> None:
        with self.csv_path.open("a", newline="") as f:
            csv.writer(f).writerow(["" if row.get(k) is None else row[k] for k in LOG_COLUMNS])
        with self.jsonl_path.open("a") as f:
            f.write(json.dumps(row) + "\n")


def _trim_logs(out_dir: Path, iteration: int) -> None:
    """Drop log rows past ``iteration``: a run continued from a checkpoint redoes them.

    A run that starts afresh (``iteration`` 0) drops them all, its starting point included.
    """
    def keep(row_iteration: int) -> bool:
        return 0 < iteration and row_iteration <= iteration

    csv_path, jsonl_path = out_dir / LOG_CSV, out_dir / LOG_JSONL
    if csv_path.exists():
        with csv_path.open(newline="") as f:
            rows = list(csv.reader(f))
        kept = rows[:1] + [r for r in rows[1:] if r and keep(int(r[0]))]
        with csv_path.open("w", newline="") as f:
            csv.writer(f).writerows(kept)
    if jsonl_path.exists():
        lines = jsonl_path.read_text().splitlines()
        kept = [ln for ln in lines if ln and keep(json.loads(ln)["iteration"])]
        jsonl_path.write_text("".join(ln + "\n" for ln in kept))


def _progress_line(row: dict, total: int, speed: float) -> str:
    remaining = (total - row["iteration"]) / max(speed, 1e-9)
    line = (
        f"iter {row['iteration']}/{total}  loss {row['loss']:.5f}  "
        f"lr {row['learning_rate']:.2e}  {speed:.2f} it/s  "
        f"eta {int(remaining // 3600)}:{int(remaining % 3600 // 60):02d}:{int(remaining % 60):02d}"
    )
    if row.get("val_psnr") is not None:
        line += f"  val PSNR {row['val_psnr']:.2f} dB (bicubic {row['val_bicubic_psnr']:.2f} dB)"
    return line
