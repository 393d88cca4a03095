"""Per-experiment calibration: fine-tune a trained fusion network on the user's own data.

The only ground truth an experiment has is its HR keyframes. Calibration therefore turns
each keyframe ``j`` whose LR time ``k_j`` lies inside the LR sequence into a training
sample: the target is ``HR_j``; the inputs are the LR frames ``k_j - r, k_j, k_j + r``
(clamped) and, as HR inputs, the neighbouring keyframes on either side of ``j`` -- never
``j`` itself. At the sequence ends both neighbours lie on one side, as the engine does past
the last keyframe. The network so sees brackets about ``2 D`` wide instead of the ``D`` it
meets in use: that is the price of never showing it its own target.

Some keyframes are held out for validation. They are never read while training, neither
as targets nor as inputs: the neighbours of a training target are its nearest keyframes
that are not held out. The PSNR of the network's prediction of the held-out keyframes from
their neighbours, before and after fine-tuning, says whether calibration helped; bicubic
interpolation of the LR frame is reported for reference.

No synthetic noise is added: the LR frames already carry the experiment's real noise.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .baselines import bicubic_upsample
from .config import CalibrationConfig
from .engine import autocast, autocast_dtype, resolve_device
from .metrics import psnr
from .models import bundled_weights_path, load_weights, save_weights
from .timeline import Timeline, lr_indices
from .train import charbonnier
from .training_data import augment

Progress = Callable[[str], None]


@dataclass
class CalibrationResult:
    """What a calibration did and whether it helped.

    Attributes
    ----------
    model : torch.nn.Module
        The fine-tuned network (in eval mode, on the CPU).
    weights_path : Path or None
        Where the fine-tuned weights were written (``config.out``); None if not written.
    recommended : Path or None
        The weights to use: ``weights_path`` when calibration helped, else the starting
        weights file (None when starting from an in-memory network).
    psnr_before, psnr_after : float
        Mean PSNR (dB) of the held-out keyframes predicted from their neighbours, before
        and after fine-tuning.
    bicubic_psnr : float
        Mean PSNR (dB) of bicubic upsampling of the LR frames at the held-out keyframes.
    helped : bool
        Whether ``psnr_after > psnr_before``.
    iterations : int
        Optimizer steps taken (fewer than asked when ``max_minutes`` ran out).
    seconds : float
        Wall-clock time of the whole calibration.
    training_keyframes, validation_keyframes : list of int
        HR keyframe indices used as training targets, and held out.
    losses : list of float
        Training loss of every step.
    """

    model: torch.nn.Module = field(repr=False)
    weights_path: Path | None
    recommended: Path | None
    psnr_before: float
    psnr_after: float
    bicubic_psnr: float
    helped: bool
    iterations: int
    seconds: float
    training_keyframes: list[int]
    validation_keyframes: list[int]
    losses: list[float] = field(repr=False)


def split_keyframes(timeline: Timeline, holdout_every: int) -> tuple[list[int], list[int]]:
    """Training targets and held-out keyframes of an experiment.

    Keyframes inside the LR sequence are usable; every ``holdout_every``-th of them,
    starting with the second (an interior one, bracketed on both sides), is held out. The
    training targets are the other usable keyframes, provided at least two keyframes that
    are not held out remain as their inputs.

    Returns
    -------
    train, held_out : list of int
        HR keyframe indices.

    Raises
    ------
    ValueError
        With fewer than 3 keyframes inside the LR sequence, or too few left to train on.
    """
    times = timeline.keyframe_times
    usable = [j for j in range(timeline.n_hr) if 0 <= times[j] < timeline.n_lr]
    if len(usable) < 3:
        raise ValueError(
            f"calibration needs at least 3 HR keyframes inside the LR sequence, found "
            f"{len(usable)}: use a longer recording, or check the keyframe spacing and offset."
        )
    held_out = usable[1::holdout_every]
    pool = [j for j in range(timeline.n_hr) if j not in held_out]
    if len(pool) < 3:
        raise ValueError(
            f"after holding out keyframe(s) {held_out} for validation, only {len(pool)} "
            "keyframes are left; training needs 3 (a target and two neighbours): calibrate "
            "on a recording with at least 4 HR keyframes."
        )
    train = [j for j in usable if j not in held_out]
    return train, held_out


def neighbours(j: int, available: list[int]) -> tuple[int, int]:
    """The two keyframes from ``available`` (sorted, without ``j``) that bracket ``j``.

    The nearest one on each side; at either end the two nearest on the one side there is.
    """
    before = [i for i in available if i < j]
    after = [i for i in available if i > j]
    if before and after:
        return before[-1], after[0]
    if after:
        return after[0], after[1]
    return before[-2], before[-1]


def _read(stack, index: int, y: int, x: int, size_y: int, size_x: int) -> np.ndarray:
    # One crop of one frame: dask stacks read only the chunks it touches.
    return np.asarray(stack[index, y : y + size_y, x : x + size_x], dtype=np.float32)


def _forward(model, lr: np.ndarray, hr: np.ndarray, device, amp) -> torch.Tensor:
    """Network output for stacked samples ``lr (B, 3, h, w)`` and ``hr (B, 2, H, W)``."""
    lr_t = torch.from_numpy(lr).to(device).unsqueeze(2)
    hr_t = torch.from_numpy(hr).to(device).unsqueeze(2) if model.config.arch == "stf" else None
    with autocast(device, amp):
        out, _ = model(lr_t, hr_t)
    return out


def _validate(model, samples, device, amp) -> float:
    model.eval()
    scores = []
    with torch.no_grad():
        for lr, hr, target in samples:
            out = _forward(model, lr[None], hr[None], device, amp)
            estimate = out.float().clamp(0.0, 1.0)[0, 0].cpu().numpy()
            scores.append(psnr(estimate, target))
    return float(np.mean(scores))


def _validation_samples(lr_stack, hr_stack, timeline, held_out, crop):
    """Inputs and target of each held-out keyframe, from all other keyframes."""
    n_lr, h, w = lr_stack.shape
    s = timeline.model.scale
    size_y, size_x = (h, w) if crop is None else (min(crop, h), min(crop, w))
    # The network takes LR sides that are multiples of 4.
    size_y, size_x = size_y - size_y % 4, size_x - size_x % 4
    y, x = (h - size_y) // 2, (w - size_x) // 2
    r = timeline.model.separation
    samples = []
    for j in held_out:
        k = int(timeline.keyframe_time(j))
        lr = np.stack([_read(lr_stack, i, y, x, size_y, size_x) for i in lr_indices(k, r, n_lr)])
        hr = np.stack([
            _read(hr_stack, i, s * y, s * x, s * size_y, s * size_x)
            for i in neighbours(j, [other for other in range(timeline.n_hr) if other != j])
        ])
        target = _read(hr_stack, j, s * y, s * x, s * size_y, s * size_x)
        samples.append((lr, hr, target))
    return samples


def _draw_batch(rng, lr_stack, hr_stack, timeline, train, pool, config):
    """A batch of random crops of training samples, with the same flips for all frames."""
    n_lr, h, w = lr_stack.shape
    s = timeline.model.scale
    crop = min(config.lr_crop, h - h % 4, w - w % 4)
    max_r = max(min(config.max_separation, n_lr - 1), 1)
    lr_batch, hr_batch, targets = [], [], []
    for _ in range(config.batch_size):
        j = int(rng.choice(train))
        k = int(timeline.keyframe_time(j))
        r = int(rng.integers(1, max_r + 1))
        y, x = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
        lr = np.stack([_read(lr_stack, i, y, x, crop, crop) for i in lr_indices(k, r, n_lr)])
        hr = np.stack([
            _read(hr_stack, i, s * y, s * x, s * crop, s * crop)
            for i in (*neighbours(j, [other for other in pool if other != j]), j)
        ])
        flips = rng.random(3) < 0.5
        lr, hr = augment(lr, *flips), augment(hr, *flips)
        lr_batch.append(lr)
        hr_batch.append(hr[:2])
        targets.append(hr[2:])
    return (
        np.ascontiguousarray(np.stack(lr_batch)),
        np.ascontiguousarray(np.stack(hr_batch)),
        np.ascontiguousarray(np.stack(targets)),
    )


def calibrate(
    lr,
    hr,
    timeline: Timeline,
    config: CalibrationConfig = CalibrationConfig(),
    weights: str | Path | None = None,
    progress: Progress | None = print,
    model: torch.nn.Module | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> CalibrationResult:
    """Fine-tune a trained fusion network on one experiment, using only its keyframes.

    Each training sample predicts a keyframe ``HR_j`` from the LR frames around its time and
    its neighbouring keyframes (never ``HR_j`` itself), so the network trains on brackets
    about twice as wide (``2 D``) as those it fuses in use; that is the price of needing no
    ground truth beyond the keyframes. Held-out keyframes are never read during training,
    neither as targets nor as inputs; they measure the PSNR before and after.

    Parameters
    ----------
    lr : array_like, shape (N, h, w)
        Normalized LR stack in [0, 1] (numpy or dask; frames are read on demand).
    hr : array_like, shape (M, s*h, s*w)
        Normalized HR keyframes in [0, 1].
    timeline : Timeline
        The time model of the two stacks.
    config : CalibrationConfig
        Iterations, crops, learning rate, hold-out, device and output file.
    weights : str or Path, optional
        The weights to start from; default: the bundled EDVR-STF weights.
    progress : callable, optional
        Called with each report line (default ``print``); None for silence.
    model : torch.nn.Module, optional
        Start from this network instead of a weights file (it is copied, not changed);
        not together with ``weights``.
    should_stop : callable, optional
        Asked after every step; when it returns True, training stops there and the
        network is validated as it is (how a GUI cancels a calibration).

    Returns
    -------
    CalibrationResult
        The fine-tuned network, validation PSNRs and the recommended weights: the
        fine-tuned ones when they helped, else the starting ones.

    Raises
    ------
    ValueError
        With fewer than 3 keyframes inside the LR sequence, too few left after holding
        out validation keyframes, stacks that do not match the timeline, or both
        ``weights`` and ``model``.
    RuntimeError
        When the training loss stops being finite.

    Examples
    --------
    ::

        inputs = prepare_inputs(...)
        result = calibrate(inputs.lr, inputs.hr, inputs.timeline,
                           CalibrationConfig(out="my-experiment.safetensors"))
        if result.helped:
            method = EDVRSTFMethod(weights=result.weights_path)
    """
    say = progress or (lambda line: None)
    started = time.monotonic()
    if model is not None and weights is not None:
        raise ValueError(
            "pass either weights (a file) or model (a network) to start from, not both."
        )
    lr_shape, hr_shape = tuple(lr.shape), tuple(hr.shape)
    s = timeline.model.scale
    if (
        len(lr_shape) != 3 or len(hr_shape) != 3
        or lr_shape[0] != timeline.n_lr or hr_shape[0] != timeline.n_hr
        or hr_shape[1:] != (s * lr_shape[1], s * lr_shape[2])
    ):
        raise ValueError(
            f"an LR stack {lr_shape} and an HR stack {hr_shape} do not fit the timeline "
            f"({timeline.n_lr} LR frames, {timeline.n_hr} keyframes, scale {s}): pass the "
            "normalized stacks and timeline from prepare_inputs."
        )
    if min(lr_shape[1:]) < 4:
        raise ValueError(f"LR frames of {lr_shape[1:]} pixels are too small; they need >= 4.")
    train, held_out = split_keyframes(timeline, config.holdout_every)
    pool = [j for j in range(timeline.n_hr) if j not in held_out]

    device = resolve_device(config.device)
    amp = autocast_dtype(device, config.precision, training=True)
    if model is not None:
        source, start_path = "in-memory model", None
        net = copy.deepcopy(model)
    else:
        start_path = Path(weights) if weights is not None else bundled_weights_path("stf")
        source = str(start_path)
        net = load_weights(start_path)
    net = net.to(device)

    validation = _validation_samples(lr, hr, timeline, held_out, config.validation_crop)
    bicubic = float(np.mean([
        psnr(bicubic_upsample(sample_lr[1], s), target) for sample_lr, _, target in validation
    ]))
    before = _validate(net, validation, device, amp)
    say(
        f"calibrating on {device} ({'fp32' if amp is None else 'bf16'}): training targets "
        f"{train}, held out {held_out}; before {before:.2f} dB (bicubic {bicubic:.2f} dB)"
    )

    optimizer = torch.optim.Adam(net.parameters(), lr=config.learning_rate, betas=(0.9, 0.99))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.iterations)
    rng = np.random.default_rng(config.seed)
    budget = None if config.max_minutes is None else 60.0 * config.max_minutes
    log_every = max(config.iterations // 10, 1)
    losses: list[float] = []
    net.train()
    for iteration in range(1, config.iterations + 1):
        lr_b, hr_b, target = _draw_batch(rng, lr, hr, timeline, train, pool, config)
        optimizer.zero_grad(set_to_none=True)
        out = _forward(net, lr_b, hr_b, device, amp)
        # The loss in fp32: bf16 differences of nearly equal frames would round to zero.
        loss = charbonnier(out, torch.from_numpy(target).to(device), config.charbonnier_eps)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]):
            raise RuntimeError(
                f"the calibration loss is {losses[-1]} at iteration {iteration}: lower the "
                "learning_rate or use precision='fp32'."
            )
        if iteration % log_every == 0:
            recent = float(np.mean(losses[-log_every:]))
            say(f"iteration {iteration}/{config.iterations}: loss {recent:.5f}")
        if budget is not None and time.monotonic() - started >= budget:
            say(f"stopped at iteration {iteration} after {config.max_minutes} minutes")
            break
        if should_stop is not None and should_stop():
            say(f"stopped at iteration {iteration} on request")
            break

    after = _validate(net, validation, device, amp)
    helped = after > before
    net = net.cpu().eval()
    weights_path = None
    if config.out is not None:
        metadata = {
            "calibrated_from": source,
            "training_keyframes": json.dumps(train),
            "validation_keyframes": json.dumps(held_out),
            "psnr_before": f"{before:.4f}",
            "psnr_after": f"{after:.4f}",
            "bicubic_psnr": f"{bicubic:.4f}",
            "helped": str(helped).lower(),
            "iterations": str(len(losses)),
        }
        weights_path = save_weights(net, config.out, metadata)
    if helped:
        say(f"calibration helped: {before:.2f} -> {after:.2f} dB on held-out keyframes")
    else:
        say(
            f"calibration did not help ({before:.2f} -> {after:.2f} dB on held-out "
            "keyframes): keep using the original weights"
        )
    return CalibrationResult(
        model=net,
        weights_path=weights_path,
        recommended=weights_path if helped else start_path,
        psnr_before=before,
        psnr_after=after,
        bicubic_psnr=bicubic,
        helped=helped,
        iterations=len(losses),
        seconds=time.monotonic() - started,
        training_keyframes=train,
        validation_keyframes=held_out,
        losses=losses,
    )
