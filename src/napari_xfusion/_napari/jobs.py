"""The long work of the docks, without Qt: fusion, calibration and assessment.

A dock builds a :class:`FusionPlan` from its settings (checked with the library's own
checks), then runs one of the functions here in a napari thread worker: :func:`fusion_steps`
yields its progress frame by frame; :func:`calibration_steps` and :func:`assessment_steps`
report lines through a callback and return their result. Nothing here touches a widget or a
layer, so the science stays testable without a viewer.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..assess import Assessment, assess, candidate_methods
from ..config import MODEL_ARCHS, CalibrationConfig, EngineConfig, TimeModel
from ..io import read_stack
from ..methods import create_method
from ..metrics import psnr
from ..normalize import fit_normalization
from ..pipeline import fuse_iter, prepare_inputs
from ..streaming import FusedFrame
from ..timeline import Timeline
from ..training.calibrate import CalibrationResult, calibrate

__all__ = [
    "FrameReady", "FusionPlan", "Prepared", "assessment_steps", "calibration_steps",
    "fusion_steps",
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


@dataclass(frozen=True)
class Prepared:
    """Yielded once the stacks are normalized and the method is built."""

    timeline: Timeline
    device: str


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
    inputs = prepare_inputs(plan.lr, plan.hr, plan.time_model, hr_full_rate=plan.hr_full_rate)
    options = {}
    if plan.method in MODEL_ARCHS:
        options = {"weights": plan.weights, "engine": plan.engine}
    method = create_method(plan.method, **options)
    engine = getattr(method, "engine", None)
    yield Prepared(inputs.timeline, str(engine.device) if engine is not None else "cpu")
    truth, truth_norm = None, None
    if plan.truth is not None:
        # The units of `xfusion evaluate`: both stacks mapped by the truth's normalization.
        truth = read_stack(plan.truth, name="ground truth")
        truth_norm = fit_normalization(truth)
    frames = fuse_iter(inputs, method, plan.output, overwrite=plan.overwrite)
    try:
        for frame in frames:
            image = inputs.hr_norm.invert(frame.image)
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
    inputs = prepare_inputs(plan.lr, plan.hr, plan.time_model, hr_full_rate=plan.hr_full_rate)
    return calibrate(
        inputs.lr, inputs.hr, inputs.timeline, config, weights=plan.weights,
        progress=say, should_stop=stop.is_set,
    )


def assessment_steps(
    plan: FusionPlan, stop: threading.Event, say: Callable[[str], None]
) -> Assessment:
    """Normalize the plan's stacks and score every method that runs here on their keyframes.

    Runs in a worker thread. The networks run on the plan's device; a weights file chosen
    in the plan replaces the bundled weights of its own method. ``say`` receives progress
    lines; ``stop`` cancels between two predictions (:class:`InterruptedError`).
    """
    inputs = prepare_inputs(plan.lr, plan.hr, plan.time_model, hr_full_rate=plan.hr_full_rate)

    def options(name: str) -> dict:
        if name not in MODEL_ARCHS:
            return {}
        weights = plan.weights if name == plan.method else None
        return {"weights": weights, "engine": plan.engine}

    methods, skipped = candidate_methods(options)
    if skipped:
        say(f"assessing; left out (no weights): {', '.join(skipped)}")
    return assess(
        inputs.lr, inputs.hr, inputs.timeline, methods,
        progress=lambda done, total: say(f"assessing: {done}/{total} keyframe predictions"),
        should_stop=stop.is_set,
    )
