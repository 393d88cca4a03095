"""Per-experiment calibration: fine-tune a trained fusion network on the user's own data.

The only ground truth an experiment has is its HR keyframes. Calibration therefore turns
each keyframe ``j`` whose LR time ``k_j`` lies inside the LR sequence into a training
sample (:mod:`napari_xfusion.holdout`): the target is ``HR_j``; the inputs are the LR
frames ``k_j - r, k_j, k_j + r`` (clamped) and, as HR inputs, the neighbouring keyframes on
either side of ``j`` -- never ``j`` itself. At the sequence ends both neighbours lie on one
side, as the engine does past the last keyframe. The network so sees brackets about ``2 D``
wide instead of the ``D`` it meets in use: that is the price of never showing it its own
target.

Some keyframes are held out for validation. They are never used while training, neither
as targets nor as inputs: the neighbours of a training target are its nearest keyframes
that are not held out. Each held-out keyframe is predicted from its neighbours before and
after fine-tuning, and the per-keyframe PSNR gains decide the verdict (:func:`judge_gain`):
calibration *helped* only when the mean gain exceeds its own uncertainty across the
held-out keyframes; with a single held-out keyframe or a handful of steps it *cannot
tell*, and the original weights stay recommended.

No synthetic noise is added: the LR frames already carry the experiment's real noise.
With ``CalibrationConfig(align_keyframes=True)`` the neighbours are first warped onto the
target's LR frame where the recording moves, as the ``stf-aligned`` method fuses.
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
from scipy import stats

from ..alignment import align_keyframes, recording_moves
from ..config import CalibrationConfig
from ..devices import autocast, autocast_dtype, resolve_device, retain_freed_memory
from ..holdout import holdout_inputs, split_keyframes
from ..methods.classical import bicubic_upsample
from ..metrics import psnr
from ..models import bundled_weights_path, load_weights, save_weights
from ..timeline import FrameInputs, Timeline
from .data import augment
from .train import charbonnier

__all__ = ["CalibrationResult", "calibrate", "judge_gain"]

Progress = Callable[[str], None]

#: Verdicts of a calibration (:func:`judge_gain`).
HELPED, NOT_HELPED, CANNOT_TELL = "helped", "did not help", "cannot tell"
#: One-sided confidence with which "helped" must hold across the held-out keyframes.
CONFIDENCE = 0.95


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
    keyframe_psnr_before, keyframe_psnr_after : list of float
        PSNR (dB) of each held-out keyframe predicted from its neighbours, before and after
        fine-tuning.
    bicubic_psnr : float
        Mean PSNR (dB) of bicubic upsampling of the LR frames at the held-out keyframes.
    verdict : str
        ``"helped"``, ``"did not help"`` or ``"cannot tell"`` (:func:`judge_gain`).
    reason : str
        Why, in words.
    gain, gain_error : float
        Mean PSNR gain over the held-out keyframes (dB) and its standard error (NaN with a
        single held-out keyframe).
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
    keyframe_psnr_before: list[float]
    keyframe_psnr_after: list[float]
    bicubic_psnr: float
    verdict: str
    reason: str
    gain: float
    gain_error: float
    iterations: int
    seconds: float
    training_keyframes: list[int]
    validation_keyframes: list[int]
    losses: list[float] = field(repr=False)

    @property
    def psnr_before(self) -> float:
        """Mean PSNR (dB) of the held-out keyframes before fine-tuning."""
        return float(np.mean(self.keyframe_psnr_before))

    @property
    def psnr_after(self) -> float:
        """Mean PSNR (dB) of the held-out keyframes after fine-tuning."""
        return float(np.mean(self.keyframe_psnr_after))

    @property
    def helped(self) -> bool:
        """Whether the gain is larger than its uncertainty (the verdict is "helped")."""
        return self.verdict == HELPED

    def summary(self) -> str:
        """One line: PSNR before and after, the gain with its uncertainty, the verdict."""
        error = "" if math.isnan(self.gain_error) else f" +- {self.gain_error:.2f}"
        return (
            f"held-out keyframes {self.validation_keyframes}: {self.psnr_before:.2f} -> "
            f"{self.psnr_after:.2f} dB (gain {self.gain:+.2f}{error} dB, bicubic "
            f"{self.bicubic_psnr:.2f} dB) after {self.iterations} steps: {self.verdict} "
            f"({self.reason})"
        )


def judge_gain(
    before, after, iterations: int, min_iterations: int = 1
) -> tuple[str, str, float, float]:
    """Whether a change of weights helped, judged on held-out keyframes.

    The gains ``after - before`` of the held-out keyframes are a sample; "helped" needs
    their mean to be positive with one-sided 95 % confidence (Student's t over the
    keyframes), "did not help" a mean that is negative with the same confidence. Anything
    in between -- and any judgement on one keyframe or on fewer than ``min_iterations``
    steps -- is "cannot tell".

    Parameters
    ----------
    before, after : array_like, shape (n,)
        PSNR (dB) of each held-out keyframe with the old and the new weights.
    iterations : int
        Optimizer steps taken.
    min_iterations : int
        Fewer steps than this cannot be judged.

    Returns
    -------
    verdict : str
        ``"helped"``, ``"did not help"`` or ``"cannot tell"``.
    reason : str
        Why, in words.
    gain, error : float
        Mean gain (dB) and its standard error (NaN for one keyframe).
    """
    gains = np.asarray(after, dtype=np.float64) - np.asarray(before, dtype=np.float64)
    gain = float(gains.mean())
    n = gains.size
    error = float(gains.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    if iterations < min_iterations:
        return CANNOT_TELL, f"only {iterations} steps; give it more time", gain, error
    if n < 2:
        return (
            CANNOT_TELL,
            "a single held-out keyframe cannot show a gain beyond chance; use a recording "
            "with more keyframes",
            gain,
            error,
        )
    margin = stats.t.ppf(CONFIDENCE, n - 1) * error
    if gain > margin:
        return HELPED, f"the gain exceeds its uncertainty across {n} keyframes", gain, error
    if gain < -margin:
        return NOT_HELPED, f"it lost on {n} held-out keyframes", gain, error
    return (
        CANNOT_TELL,
        f"the gain is within its uncertainty (+- {margin:.2f} dB at 95 %) across {n} keyframes",
        gain,
        error,
    )


class _FrameStore:
    """Whole frames of a stack, read once on first use and kept (numpy or dask stacks)."""

    def __init__(self, stack) -> None:
        self.stack = stack
        self.frames: dict[int, np.ndarray] = {}

    def frame(self, index: int) -> np.ndarray:
        frame = self.frames.get(index)
        if frame is None:
            frame = self.frames[index] = np.asarray(self.stack[index], dtype=np.float32)
        return frame

    def crop(self, index: int, y: int, x: int, size_y: int, size_x: int) -> np.ndarray:
        return self.frame(index)[y : y + size_y, x : x + size_x]


class _AlignedKeyframes:
    """The neighbour keyframes of each output time warped onto its LR frame
    (:func:`align_keyframes`, which weighs them against each other), each set once."""

    def __init__(self, lr: _FrameStore, hr: _FrameStore, scale: int) -> None:
        self.lr, self.hr, self.scale = lr, hr, scale
        self.frames: dict[tuple[int, tuple[int, ...]], np.ndarray] = {}

    def crop(self, t: int, keyframes: tuple[int, ...], y: int, x: int, size_y: int,
             size_x: int) -> np.ndarray:
        """A crop of ``keyframes`` warped onto LR frame ``t``, shape (K, size_y, size_x)."""
        frames = self.frames.get((t, keyframes))
        if frames is None:
            frames = self.frames[(t, keyframes)] = align_keyframes(
                self.lr.frame(t), np.stack([self.hr.frame(j) for j in keyframes]),
                scale=self.scale,
            )
        return frames[:, y : y + size_y, x : x + size_x]


def _sample(lr: _FrameStore, hr: _FrameStore, inputs: FrameInputs, j: int, scale: int,
            y: int, x: int, size_y: int, size_x: int,
            aligned: _AlignedKeyframes | None = None):
    """LR frames, HR neighbours and target ``HR_j`` of one crop, for ``inputs``; the
    neighbours warped onto LR ``t`` when ``aligned`` holds them."""
    s = scale
    lr_frames = np.stack([lr.crop(i, y, x, size_y, size_x) for i in inputs.lr])
    hr_crop = (s * y, s * x, s * size_y, s * size_x)
    if aligned is None:
        neighbours = [hr.crop(i, *hr_crop) for i in inputs.hr]
    else:
        neighbours = list(aligned.crop(inputs.t, tuple(inputs.hr), *hr_crop))
    hr_frames = np.stack([*neighbours, hr.crop(j, *hr_crop)])
    return lr_frames, hr_frames


def _forward(model, lr: np.ndarray, hr: np.ndarray, position: np.ndarray, device, amp):
    """Network output for stacked samples ``lr (B, 3, h, w)``, ``hr (B, 2, H, W)``."""
    lr_t = torch.from_numpy(lr).to(device).unsqueeze(2)
    hr_t = torch.from_numpy(hr).to(device).unsqueeze(2) if model.config.arch == "stf" else None
    position_t = torch.from_numpy(position.astype(np.float32)).to(device)
    with autocast(device, amp):
        out, _ = model(lr_t, hr_t, position_t)
    return out


def _validation_samples(lr, hr, timeline, held_out, crop, aligned=None):
    """Inputs and target of each held-out keyframe, predicted from all other keyframes."""
    _, h, w = lr.stack.shape
    size_y, size_x = (h, w) if crop is None else (min(crop, h), min(crop, w))
    # The network takes LR sides that are multiples of 4.
    size_y, size_x = size_y - size_y % 4, size_x - size_x % 4
    y, x = (h - size_y) // 2, (w - size_x) // 2
    samples = []
    for j in held_out:
        inputs = holdout_inputs(timeline, j, list(range(timeline.n_hr)))
        lr_frames, hr_frames = _sample(
            lr, hr, inputs, j, timeline.model.scale, y, x, size_y, size_x, aligned
        )
        samples.append((lr_frames, hr_frames[:2], hr_frames[2], inputs.position))
    return samples


def _validate(model, samples, device, amp) -> list[float]:
    """PSNR of the network's prediction of each validation sample."""
    model.eval()
    scores = []
    with torch.no_grad():
        for lr, hr, target, position in samples:
            out = _forward(model, lr[None], hr[None], np.array([position]), device, amp)
            estimate = out.float().clamp(0.0, 1.0)[0, 0].cpu().numpy()
            scores.append(psnr(estimate, target))
    return scores


def _draw_batch(rng, lr, hr, timeline, train, pool, config, aligned=None):
    """A batch of random crops of training samples, with the same flips for all frames.

    Returns the stacked LR frames, HR neighbours, targets and positions, and for
    inspection the ``(target keyframe, FrameInputs)`` of each sample.
    """
    n_lr, h, w = lr.stack.shape
    s = timeline.model.scale
    crop = min(config.lr_crop, h - h % 4, w - w % 4)
    max_r = max(min(config.max_separation, n_lr - 1), 1)
    lr_batch, hr_batch, targets, positions, drawn = [], [], [], [], []
    for _ in range(config.batch_size):
        j = int(rng.choice(train))
        r = int(rng.integers(1, max_r + 1))
        inputs = holdout_inputs(timeline, j, pool, separation=r)
        y, x = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
        lr_frames, hr_frames = _sample(lr, hr, inputs, j, s, y, x, crop, crop, aligned)
        flips = rng.random(3) < 0.5
        lr_frames, hr_frames = augment(lr_frames, *flips), augment(hr_frames, *flips)
        lr_batch.append(lr_frames)
        hr_batch.append(hr_frames[:2])
        targets.append(hr_frames[2:])
        positions.append(inputs.position)
        drawn.append((j, inputs))
    return (
        np.ascontiguousarray(np.stack(lr_batch)),
        np.ascontiguousarray(np.stack(hr_batch)),
        np.ascontiguousarray(np.stack(targets)),
        np.array(positions),
        drawn,
    )


def _check_inputs(lr, hr, timeline: Timeline) -> None:
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
    ground truth beyond the keyframes. Held-out keyframes are never used during training,
    neither as targets nor as inputs; their PSNR before and after decides the verdict
    (:func:`judge_gain`). The frames that serve are read once and kept in memory, so the
    steps of a short budget go to training, not to reading.

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
        The fine-tuned network, the held-out PSNRs, the verdict and the recommended
        weights: the fine-tuned ones only when they helped, else the starting ones.

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
        print(result.summary())
        method = create_method("stf-aligned", weights=result.recommended)
    """
    say = progress or (lambda line: None)
    started = time.monotonic()
    if model is not None and weights is not None:
        raise ValueError(
            "pass either weights (a file) or model (a network) to start from, not both."
        )
    _check_inputs(lr, hr, timeline)
    train, held_out = split_keyframes(timeline, config.holdout_every)
    pool = [j for j in range(timeline.n_hr) if j not in held_out]
    s = timeline.model.scale

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

    say(f"calibrating: reading the keyframes and predicting the {len(held_out)} held out")
    lr_store, hr_store = _FrameStore(lr), _FrameStore(hr)
    aligned = None
    if config.align_keyframes:
        moves, motion = recording_moves(lr, hr, timeline)
        say(f"calibrating: keyframe motion {motion:.2f} LR pixels: "
            + ("the keyframes are aligned" if moves else "the keyframes stand still, as they are"))
        if moves:
            aligned = _AlignedKeyframes(lr_store, hr_store, s)
    validation = _validation_samples(lr_store, hr_store, timeline, held_out,
                                     config.validation_crop, aligned)
    bicubic = float(np.mean([
        psnr(bicubic_upsample(sample_lr[1], s), target) for sample_lr, _, target, _ in validation
    ]))
    before = _validate(net, validation, device, amp)
    say(
        f"calibrating on {device} ({'fp32' if amp is None else 'bf16'}): training targets "
        f"{train}, held out {held_out}; before {np.mean(before):.2f} dB (bicubic "
        f"{bicubic:.2f} dB)"
    )

    optimizer = torch.optim.Adam(net.parameters(), lr=config.learning_rate, betas=(0.9, 0.99))
    rng = np.random.default_rng(config.seed)
    budget = None if config.max_minutes is None else 60.0 * config.max_minutes
    training_started = time.monotonic()

    def done() -> float:
        # The share of the run behind us, by steps or by time, whichever runs out first.
        share = iteration / config.iterations
        if budget is not None:
            share = max(share, (time.monotonic() - training_started) / budget)
        return share

    losses: list[float] = []
    iteration, next_report = 0, 0.1
    net.train()
    with retain_freed_memory():
        while done() < 1.0:
            # Cosine annealing to zero over the run, whether steps or minutes bound it.
            for group in optimizer.param_groups:
                group["lr"] = 0.5 * config.learning_rate * (1.0 + math.cos(math.pi * done()))
            lr_b, hr_b, target, position, _ = _draw_batch(
                rng, lr_store, hr_store, timeline, train, pool, config, aligned
            )
            optimizer.zero_grad(set_to_none=True)
            out = _forward(net, lr_b, hr_b, position, device, amp)
            # The loss in fp32: bf16 differences of nearly equal frames would round to zero.
            loss = charbonnier(out, torch.from_numpy(target).to(device), config.charbonnier_eps)
            loss.backward()
            optimizer.step()
            iteration += 1
            losses.append(float(loss.detach()))
            if not math.isfinite(losses[-1]):
                raise RuntimeError(
                    f"the calibration loss is {losses[-1]} at iteration {iteration}: lower the "
                    "learning_rate or use precision='fp32'."
                )
            if done() >= next_report:
                next_report = math.floor(done() * 10 + 1) / 10
                recent = float(np.mean(losses[-max(iteration // 10, 1):]))
                say(f"step {iteration} ({min(done(), 1.0):.0%} of the run): loss {recent:.5f}")
            if should_stop is not None and should_stop():
                say(f"stopped at step {iteration} on request")
                break

    after = _validate(net, validation, device, amp)
    verdict, reason, gain, error = judge_gain(before, after, len(losses), config.min_iterations)
    net = net.cpu().eval()
    weights_path = None
    if config.out is not None:
        metadata = {
            "calibrated_from": source,
            "training_keyframes": json.dumps(train),
            "validation_keyframes": json.dumps(held_out),
            "keyframe_psnr_before": json.dumps([round(v, 4) for v in before]),
            "keyframe_psnr_after": json.dumps([round(v, 4) for v in after]),
            "psnr_before": f"{np.mean(before):.4f}",
            "psnr_after": f"{np.mean(after):.4f}",
            "bicubic_psnr": f"{bicubic:.4f}",
            "verdict": verdict,
            "helped": str(verdict == HELPED).lower(),
            "iterations": str(len(losses)),
            "aligned_keyframes": str(config.align_keyframes).lower(),
        }
        weights_path = save_weights(net, config.out, metadata)
    result = CalibrationResult(
        model=net,
        weights_path=weights_path,
        recommended=weights_path if verdict == HELPED else start_path,
        keyframe_psnr_before=before,
        keyframe_psnr_after=after,
        bicubic_psnr=bicubic,
        verdict=verdict,
        reason=reason,
        gain=gain,
        gain_error=error,
        iterations=len(losses),
        seconds=time.monotonic() - started,
        training_keyframes=train,
        validation_keyframes=held_out,
        losses=losses,
    )
    say(result.summary())
    return result
