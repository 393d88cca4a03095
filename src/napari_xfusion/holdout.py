"""Leave-keyframe-out: predicting an HR keyframe from the frames around it.

The only ground truth a real recording has is its HR keyframes. Keyframe ``j``, taken at LR
time ``k_j``, can be predicted like any fused frame -- from the LR frames ``k_j - r, k_j,
k_j + r`` and two other keyframes that bracket it -- and compared with the frame itself.
:mod:`napari_xfusion.training.calibrate` trains on such predictions and
:mod:`napari_xfusion.assess` scores every method with them.

The bracketing keyframes are the nearest ones on either side of ``j`` that may be used: the
prediction spans about ``2 D`` where fusion in use spans ``D``, so its PSNR is a
conservative estimate of the PSNR of unseen frames.
"""

from __future__ import annotations

import numpy as np

from .timeline import FrameInputs, Timeline, lr_indices

__all__ = [
    "holdout_inputs", "neighbours", "split_keyframes", "spread_evenly", "usable_keyframes",
]


def usable_keyframes(timeline: Timeline) -> list[int]:
    """HR keyframes taken inside the LR sequence: those whose LR frames exist."""
    times = timeline.keyframe_times
    return [j for j in range(timeline.n_hr) if 0 <= times[j] < timeline.n_lr]


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
    usable = usable_keyframes(timeline)
    if len(usable) < 3:
        raise ValueError(
            f"this needs at least 3 HR keyframes inside the LR sequence, found "
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


def holdout_inputs(
    timeline: Timeline, j: int, available: list[int], separation: int | None = None
) -> FrameInputs:
    """The inputs that predict keyframe ``j`` as if it had not been taken.

    Parameters
    ----------
    timeline : Timeline
    j : int
        The keyframe to predict; its LR time must lie inside the LR sequence.
    available : list of int
        Keyframes that may serve as HR inputs (``j`` itself is never used).
    separation : int, optional
        LR separation ``r``; default the time model's.

    Returns
    -------
    FrameInputs
        LR frames around ``k_j``, the bracketing keyframes from ``available`` and their
        times; ``is_keyframe`` is False, since the keyframe at ``k_j`` is not an input.
    """
    t = int(timeline.keyframe_time(j))
    if not 0 <= t < timeline.n_lr:
        raise ValueError(f"keyframe {j} at LR time {t} lies outside the LR sequence.")
    r = timeline.model.separation if separation is None else separation
    pair = neighbours(j, [i for i in available if i != j])
    return FrameInputs(
        t=t,
        lr=lr_indices(t, r, timeline.n_lr),
        hr=pair,
        hr_times=tuple(int(timeline.keyframe_time(i)) for i in pair),
        is_keyframe=False,
    )


def spread_evenly(items: list[int], count: int | None) -> list[int]:
    """At most ``count`` of ``items``, evenly spread (all of them for None)."""
    if count is None or len(items) <= count:
        return list(items)
    picks = np.unique(np.linspace(0, len(items) - 1, count).round().astype(int))
    return [items[i] for i in picks]
