"""Assessment from the viewer: which method suits the loaded recording (background work)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Callable

from .assess import Assessment, assess, candidate_methods
from .config import MODEL_ARCHS
from .pipeline import prepare_inputs

if TYPE_CHECKING:
    from ._widget import FusionPlan


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
