"""Keyframes moved onto the frame being fused, for scenes that move.

When the camera or the sample moves between a keyframe and the output time ``t``, every
pixel of the keyframe sits a little off from where LR ``t`` shows it, and the detail a
method takes from the keyframe lands in the wrong place. :func:`align_keyframes` warps each
keyframe onto LR ``t`` along the optical flow between them: TV-L1 flow (scikit-image's
``optical_flow_tvl1``, coarse to fine) from LR ``t`` to the keyframe binned to the LR grid
and matched to its brightness, upsampled to the HR grid and applied to the HR keyframe with
a cubic spline (:func:`keyframe_flow`, :func:`warp_keyframe`). A flow field follows a
camera that pans, rotates or tilts and an object that moves over a still background alike.
A keyframe the flow cannot bring close (taken after the camera moved on, say) gives way
to the one that matches (:data:`MISFIT_RATIO`).

Aligning costs a little detail where nothing moves (the flow follows the LR noise) and
the flow takes time, so ``stf-aligned`` first asks :func:`recording_moves` and fuses a
still recording's keyframes as they are, as ``stf`` does.

One global translation per keyframe (phase correlation) was the first form of this: on
held-out real video it raised EDVR-STF on a hand-held scene and lowered it on an object
sliding over a still background; the flow gains on both, by more (``docs/benchmarks.md``,
"Keyframes aligned along the optical flow"). The network never sees the flow, so
``stf-aligned`` stays a method of its own that ``xfusion assess`` weighs against the
plain one on each recording.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.registration import optical_flow_tvl1

from .holdout import spread_evenly
from .simulate import bin_frames
from .timeline import Timeline

__all__ = [
    "MOVING", "align_keyframes", "interval_motions", "keyframe_flow", "keyframe_misfit",
    "keyframe_motion", "recording_moves", "warp_keyframe",
]

#: Weight of the data term of the TV-L1 flow (its lambda) for frames in [0, 1]: smaller
#: is smoother. A smooth flow is what carries HR detail well, and it does not follow LR
#: noise: on the held-out real videos (D = 10, clean and 30 dB LR noise) 3 fused best of
#: 2, 3, 5, 8 and scikit-image's default 15, which lost up to 2 dB under noise.
ATTACHMENT = 3.0

#: Flow below ``STILL[0]`` LR pixels counts as none, and rises to its full size at
#: ``STILL[1]``: the flow of a still scene is not quite zero (it follows the LR noise and
#: what changed), and warping by it costs a little detail for nothing. On the built-in
#: sample (a still camera) this took the loss against unaligned keyframes from 0.36 to
#: 0.07 dB; on the held-out real videos it changed the result by -0.12 to +0.16 dB.
STILL = (0.05, 0.15)

#: A warped keyframe whose binned image still differs from LR ``t`` this many times more
#: (mean square, plus :data:`MISFIT_FLOOR`) than the best warped keyframe is replaced by
#: that one. This happens where one keyframe was taken from where the camera stands at
#: ``t`` and the other after it moved on: the flow carries the far one most of the way,
#: and a keyframe that half agrees lends its detail where it is wrong, so that fusing
#: with it was up to 6 dB worse on such frames than with the near keyframe alone. On the
#: held-out real videos with clean LR, 100 raised visp-cube by 0.39 dB at D = 10 and 1.37
#: dB at D = 20 and moved the others by -0.03 to +0.01 dB (30: +0.42, +1.42, and -0.05 to
#: +0.01; 10 cost carphone 0.08 dB). Under LR noise both misfits hold the noise variance,
#: so only a keyframe much further off passes the limit: with 30 dB LR noise the videos'
#: results did not change.
MISFIT_RATIO = 100.0

#: A recording whose content travels this many LR pixels or more from a keyframe by the
#: middle of its interval (:func:`keyframe_motion`, the largest over the intervals
#: measured) moves enough for aligned keyframes to matter. Measured on normalized stacks
#: (``benchmarks/motion_gate.py``; ``docs/benchmarks.md``, "Aligning only recordings that
#: move"): the held-out real videos 0.29-4.5, where aligning gained 0.05-4.5 dB in every
#: setting; still synthetic scenes (the built-in sample, the sweep scenes), where it cost
#: 0.02-0.31 dB, 0.004-0.068 down to 20 dB LR PSNR. A still scene aligned loses little, a
#: moving one left as it is much, hence a threshold nearer the still ones.
MOVING = 0.1

#: Misfits this small (in squared units of frames in [0, 1]: 50 dB) count as a match.
MISFIT_FLOOR = 1e-5

#: Keyframe intervals :func:`keyframe_motion` measures (evenly spread): one TV-L1 flow on
#: the LR grid each.
MOTION_INTERVALS = 8


def _binned_like(lr_frame: np.ndarray, keyframe: np.ndarray, scale: int) -> np.ndarray:
    """``keyframe`` binned to the LR grid and given the mean and spread of ``lr_frame``."""
    binned = bin_frames(keyframe, scale)
    spread = binned.std()
    if spread > 0:
        binned = (binned - binned.mean()) * (lr_frame.std() / spread) + lr_frame.mean()
    return binned


def keyframe_misfit(lr_frame: np.ndarray, keyframe: np.ndarray, *, scale: int) -> float:
    """Mean square difference of ``lr_frame`` and ``keyframe`` binned to it and matched
    to its mean and spread: how far a keyframe is from showing what LR ``t`` shows.

    Shapes: lr_frame (h, w), keyframe (scale*h, scale*w).
    """
    lr_frame = np.asarray(lr_frame, np.float64)
    return float(np.mean((lr_frame - _binned_like(lr_frame, keyframe, scale)) ** 2))


def keyframe_flow(lr_frame: np.ndarray, keyframe: np.ndarray, *, scale: int) -> np.ndarray:
    """Where each pixel of ``lr_frame`` is found in ``keyframe``, in LR pixels.

    The keyframe is binned to the LR grid and given the mean and spread of ``lr_frame``
    first, so that a flicker of the source or two cameras' gains do not pass for motion.

    Parameters
    ----------
    lr_frame : ndarray, shape (h, w)
        The LR frame at the output time.
    keyframe : ndarray, shape (scale*h, scale*w)
        An HR keyframe on the same field of view.
    scale : int
        HR pixels per LR pixel.

    Returns
    -------
    ndarray, shape (2, h, w), float32
        ``(dy, dx)`` per LR pixel ``p``: ``lr_frame`` at ``p`` shows the binned keyframe at
        ``p + (dy, dx)``; 0 where it moved less than :data:`STILL` says.
    """
    lr_frame = np.asarray(lr_frame, np.float32)
    if min(lr_frame.shape) < 2:  # a line of pixels has no gradient to follow across it
        return np.zeros((2, *lr_frame.shape), np.float32)
    binned = _binned_like(lr_frame, keyframe, scale)
    flow = optical_flow_tvl1(lr_frame, binned.astype(np.float32), attachment=ATTACHMENT)
    low, high = STILL
    return flow * np.clip((np.hypot(*flow) - low) / (high - low), 0.0, 1.0)


def warp_keyframe(keyframe: np.ndarray, flow: np.ndarray, *, scale: int) -> np.ndarray:
    """``keyframe`` resampled along an LR-grid ``flow`` (:func:`keyframe_flow`).

    The flow is interpolated bilinearly to the centres of the HR pixels and scaled to HR
    pixels; the keyframe is read there with a cubic spline, repeating its edge where the
    flow points outside it.

    Shapes: keyframe (scale*h, scale*w), flow (2, h, w) -> (scale*h, scale*w), float32.
    """
    height, width = keyframe.shape
    # HR pixel centres in LR pixel coordinates (LR pixel centres at integers).
    ys = (np.arange(height) + 0.5) / scale - 0.5
    xs = (np.arange(width) + 0.5) / scale - 0.5
    at = np.meshgrid(ys, xs, indexing="ij")
    hr_flow = [scale * ndimage.map_coordinates(f, at, order=1, mode="nearest") for f in flow]
    grid = np.mgrid[:height, :width].astype(np.float32)
    return ndimage.map_coordinates(
        np.asarray(keyframe, np.float32), [grid[0] + hr_flow[0], grid[1] + hr_flow[1]],
        order=3, mode="nearest",
    ).astype(np.float32, copy=False)


def align_keyframes(lr_frame: np.ndarray, keyframes: np.ndarray, *, scale: int) -> np.ndarray:
    """Each keyframe warped onto ``lr_frame`` along its optical flow.

    Parameters
    ----------
    lr_frame : ndarray, shape (h, w)
        The LR frame at the output time.
    keyframes : ndarray, shape (K, scale*h, scale*w)
        HR keyframes on the same field of view.
    scale : int
        HR pixels per LR pixel.

    Returns
    -------
    ndarray, shape (K, scale*h, scale*w), float32
        The keyframes, each moved to where ``lr_frame`` shows its content
        (:func:`keyframe_flow`, :func:`warp_keyframe`); one that still misfits
        ``lr_frame`` :data:`MISFIT_RATIO` times more than the best is replaced by it.
    """
    aligned = [
        warp_keyframe(key, keyframe_flow(lr_frame, key, scale=scale), scale=scale)
        for key in keyframes
    ]
    misfits = [keyframe_misfit(lr_frame, key, scale=scale) for key in aligned]
    best = int(np.argmin(misfits))
    limit = MISFIT_RATIO * misfits[best] + MISFIT_FLOOR
    aligned = [aligned[best] if misfit > limit else key
               for key, misfit in zip(aligned, misfits, strict=True)]
    return np.stack(aligned).astype(np.float32, copy=False)


def interval_motions(lr, hr, timeline: Timeline, *,
                     intervals: int | None = MOTION_INTERVALS) -> list[float]:
    """How far the scene moves in each keyframe interval, in LR pixels.

    For up to ``intervals`` evenly spread keyframes inside the LR sequence (all of them
    for None), two mean lengths of optical flow (:func:`keyframe_flow`) back to the
    keyframe: from the LR frame halfway to the next keyframe, and from the next keyframe
    binned; the smaller of the two. A still scene gives about 0 (the flow's own noise stays
    under :data:`STILL`), a moving one how far the keyframe's content travelled by
    mid-interval. Both must see motion because each alone mistakes something else for
    it: strong LR noise moves the first flow (up to 0.12 LR pixel on still synthetic
    scenes at 20-30 dB LR PSNR), and the second, between keyframes only, is blind to
    what moves and comes back within an interval.

    Parameters
    ----------
    lr : array_like, shape (N, h, w)
        Normalized LR stack in [0, 1] (frames are read on demand).
    hr : array_like, shape (M, scale*h, scale*w)
        Normalized HR keyframes in [0, 1].
    timeline : Timeline
        The time model of the two stacks.
    intervals : int or None
        Most keyframe intervals to measure (each two TV-L1 flows on the LR grid).

    Returns
    -------
    list of float
        In keyframe order; empty where no interval has a frame halfway (a spacing of 1,
        or fewer than two keyframes inside the LR sequence).
    """
    half = timeline.model.spacing // 2
    scale = timeline.model.scale
    times = timeline.keyframe_times
    starts = [j for j in range(timeline.n_hr - 1)
              if half > 0 and times[j] >= 0 and times[j] + half < timeline.n_lr]

    def flow_length(frame: np.ndarray, keyframe) -> float:
        flow = keyframe_flow(frame, np.asarray(keyframe, np.float32), scale=scale)
        return float(np.mean(np.hypot(*flow)))

    return [
        min(flow_length(np.asarray(lr[times[j] + half], np.float32), hr[j]),
            flow_length(bin_frames(hr[j + 1], scale), hr[j]))
        for j in spread_evenly(starts, intervals)
    ]


def keyframe_motion(lr, hr, timeline: Timeline, *, intervals: int = MOTION_INTERVALS) -> float:
    """How far the scene moves between keyframes, in LR pixels: the largest of
    :func:`interval_motions`, so that a recording that stands still for a while and then
    moves counts as moving; 0 where no interval can be measured."""
    return max(interval_motions(lr, hr, timeline, intervals=intervals), default=0.0)


def recording_moves(lr, hr, timeline: Timeline) -> tuple[bool, float]:
    """Whether the recording moves enough between keyframes for aligning them to pay.

    Returns
    -------
    moves : bool
        :func:`keyframe_motion` is :data:`MOVING` or more.
    motion : float
        The keyframe motion, in LR pixels.
    """
    motion = keyframe_motion(lr, hr, timeline)
    return motion >= MOVING, motion
