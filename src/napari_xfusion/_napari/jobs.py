"""The long work of the docks, without Qt: fusion, calibration, assessment, registration.

A dock builds a :class:`FusionPlan` from its settings (checked with the library's own
checks), then runs one of the functions here in a napari thread worker: :func:`fusion_steps`
yields its progress frame by frame; :func:`calibration_steps` and :func:`assessment_steps`
report lines through a callback and return their result. Nothing here touches a widget or a
layer, so the science stays testable without a viewer.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..assess import Assessment, assess, candidate_methods
from ..config import CalibrationConfig, EngineConfig, TimeModel
from ..io import read_stack
from ..methods import create_method, method_network
from ..metrics import psnr
from ..normalize import fit_normalization
from ..pipeline import alignment_notes, fuse_iter, motion_warnings, prepare_inputs
from ..registration import Registration, register
from ..streaming import FusedFrame
from ..timeline import Timeline
from ..training.calibrate import CalibrationResult, calibrate

__all__ = [
    "FrameReady", "FusionPlan", "Prepared", "assessment_steps", "calibration_steps",
    "checkerboard", "fusion_steps", "registration_steps",
]


@dataclass(frozen=True)
class FusionPlan:
    """Everything one run needs, checked; built by the fusion dock from its settings."""

    lr: object
    hr: object
    truth: object | None
    time_model: TimeModel
    hr_full_rate: bool
    method: str
    weights: Path | None
    engine: EngineConfig
    output: Path | None
    overwrite: bool
    n_frames: int
    frame_shape: tuple[int, int]
    registration: Registration | None = None


@dataclass(frozen=True)
class Prepared:
    """Yielded once the stacks are normalized and the method is built, with what the
    method probably gets wrong on them (:func:`~napari_xfusion.pipeline.motion_warnings`)
    and what it does with their keyframes (:func:`~napari_xfusion.pipeline.
    alignment_notes`)."""

    timeline: Timeline
    device: str
    warnings: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class FrameReady:
    """Yielded per frame: the fused frame, in the HR layer's units, and its PSNR."""

    frame: FusedFrame
    image: np.ndarray
    psnr: float | None


def fusion_steps(plan: FusionPlan, stop: threading.Event) -> Iterator[Prepared | FrameReady]:
    """The work of one run: prepare, then fuse frame after frame until done or stopped.

    Runs in a worker thread. Stopping closes the fusion generator, so frames already
    streamed to an output file are kept in its ``.incomplete`` file.
    """
    inputs = prepare_inputs(plan.lr, plan.hr, plan.time_model, hr_full_rate=plan.hr_full_rate,
                            registration=plan.registration)
    options = {}
    if method_network(plan.method):
        options = {"weights": plan.weights, "engine": plan.engine}
    method = create_method(plan.method, **options)
    engine = getattr(method, "engine", None)
    notes = [] if inputs.lr_filter is None else [inputs.lr_filter.describe()]
    notes += alignment_notes(inputs, method)
    yield Prepared(inputs.timeline, str(engine.device) if engine is not None else "cpu",
                   tuple(motion_warnings(inputs, plan.method)), tuple(notes))
    truth, truth_norm = None, None
    if plan.truth is not None:
        # The units of `xfusion evaluate`: both stacks mapped by the truth's normalization.
        truth = read_stack(plan.truth, name="ground truth")
        truth_norm = fit_normalization(truth)
    frames = fuse_iter(inputs, method, plan.output, overwrite=plan.overwrite)
    try:
        for frame in frames:
            image = inputs.camera_units(frame)
            score = None
            if truth is not None:
                score = psnr(
                    truth_norm.apply(image), truth_norm.apply(np.asarray(truth[frame.t]))
                )
            yield FrameReady(frame, image, score)
            if stop.is_set():
                return
    finally:
        frames.close()


def calibration_steps(
    plan: FusionPlan,
    config: CalibrationConfig,
    stop: threading.Event,
    say: Callable[[str], None],
) -> CalibrationResult:
    """Normalize the plan's stacks and fine-tune its network on their keyframes.

    Runs in a worker thread; ``say`` receives the report lines and ``stop`` ends the
    training early (the network is still validated, so the result stays honest).
    """
    inputs = prepare_inputs(plan.lr, plan.hr, plan.time_model, hr_full_rate=plan.hr_full_rate,
                            registration=plan.registration)
    return calibrate(
        inputs.lr, inputs.hr, inputs.timeline, config, weights=plan.weights,
        progress=say, should_stop=stop.is_set,
    )


def assessment_steps(
    plan: FusionPlan, stop: threading.Event, say: Callable[[str], None]
) -> Assessment:
    """Normalize the plan's stacks and score every method that runs here on their keyframes.

    Runs in a worker thread. The networks run on the plan's device; a weights file chosen
    in the plan replaces the bundled weights of every method that runs the same network as
    the plan's method. ``say`` receives progress lines; ``stop`` cancels between two
    predictions (:class:`InterruptedError`).
    """
    inputs = prepare_inputs(plan.lr, plan.hr, plan.time_model, hr_full_rate=plan.hr_full_rate,
                            registration=plan.registration)

    def options(name: str) -> dict:
        network = method_network(name)
        if network is None:
            return {}
        weights = plan.weights if network == method_network(plan.method) else None
        return {"weights": weights, "engine": plan.engine}

    methods, skipped = candidate_methods(options)
    if skipped:
        say(f"assessing; left out (no weights): {', '.join(skipped)}")
    return assess(
        inputs.lr, inputs.hr, inputs.timeline, methods, lr_smoothed=inputs.lr_smoothed,
        progress=lambda done, total: say(f"assessing: {done}/{total} keyframe predictions"),
        should_stop=stop.is_set,
    )


def registration_steps(
    lr, hr, time_model: TimeModel, estimate_offset: bool
) -> tuple[Registration, np.ndarray, tuple[float, float]]:
    """Register the two cameras, and make a checkerboard to judge the result by eye.

    Runs in a worker thread. Returns the registration, a checkerboard of the LR frame
    (upsampled) and the registered HR keyframe taken at the same moment, in [0, 1] on the
    fusion grid over the common field of view, and where that grid's first pixel lies in
    LR pixels. Warnings the registration raises are in its ``warnings``.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        registration = register(lr, hr, time_model, estimate_offset=estimate_offset)
    model = registration.time_model
    inside = [j for j in range(len(hr)) if 0 <= model.offset + j * model.spacing < len(lr)]
    j = inside[len(inside) // 2]
    s = model.scale
    lr_frame = np.asarray(registration.crop_lr(lr)[model.offset + j * model.spacing], np.float64)
    hr_frame = registration.resample_hr(hr).frame(j).astype(np.float64)
    upsampled = np.kron(lr_frame, np.ones((s, s)))
    board = checkerboard(_stretch(upsampled), _stretch(hr_frame), 8 * s)
    y0, _, x0, _ = registration.crop
    return registration, board, (y0, x0)


def _stretch(image: np.ndarray) -> np.ndarray:
    low, high = np.percentile(image, [0.5, 99.5])
    return np.clip((image - low) / max(high - low, 1e-12), 0.0, 1.0)


def checkerboard(first: np.ndarray, second: np.ndarray, square: int) -> np.ndarray:
    """``first`` on the white squares, ``second`` on the black ones (same shapes)."""
    rows, cols = np.indices(first.shape)
    white = ((rows // square) + (cols // square)) % 2 == 0
    return np.where(white, first, second).astype(np.float32)
