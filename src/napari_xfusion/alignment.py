"""Keyframes moved onto the frame being fused, for cameras that move.

When the camera (or the whole sample) moves between a keyframe and the output time ``t``,
every pixel of the keyframe sits a little off from where LR ``t`` shows it, and the detail
a method takes from the keyframe lands in the wrong place. :func:`align_keyframes` shifts
each keyframe by the one translation that best maps it onto LR ``t``: phase correlation of
LR ``t`` with the keyframe binned to the LR grid, to 1/20 of an LR pixel (scikit-image's
``phase_cross_correlation``), applied to the HR keyframe with a cubic spline.

One translation per keyframe is right for a moving camera and wrong for a still camera
that watches one object move: the shift then follows the object and misplaces the rest.
On held-out real video (``benchmarks/base_ideas.py``) it raised EDVR-STF by 0.6-1.3 dB on
a hand-held scene and lowered it by 0.3-0.5 dB on an object sliding over a still
background, so it is a separate method (``stf-aligned``) that ``xfusion assess`` weighs
against the plain one on each recording.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.registration import phase_cross_correlation

from .simulate import bin_frames

__all__ = ["align_keyframes", "keyframe_shift"]

#: Subpixel precision of the shift: 1/UPSAMPLE of an LR pixel.
UPSAMPLE = 20


def keyframe_shift(lr_frame: np.ndarray, keyframe: np.ndarray, *, scale: int) -> np.ndarray:
    """The translation, in LR pixels, that moves ``keyframe`` onto ``lr_frame``.

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
    ndarray, shape (2,)
        ``(dy, dx)``: the keyframe's content at LR pixel ``p`` appears at ``p + (dy, dx)``
        in ``lr_frame``.
    """
    shift, _, _ = phase_cross_correlation(
        np.asarray(lr_frame, np.float32), bin_frames(keyframe, scale),
        upsample_factor=UPSAMPLE, normalization=None,
    )
    return np.asarray(shift, dtype=np.float64)


def align_keyframes(lr_frame: np.ndarray, keyframes: np.ndarray, *, scale: int) -> np.ndarray:
    """Each keyframe shifted onto ``lr_frame`` (:func:`keyframe_shift`).

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
        The keyframes moved by ``scale`` times their shift, with a cubic spline; pixels
        shifted in from outside repeat the edge.
    """
    aligned = [
        ndimage.shift(np.asarray(key, np.float32),
                      scale * keyframe_shift(lr_frame, key, scale=scale), order=3,
                      mode="nearest")
        for key in keyframes
    ]
    return np.stack(aligned).astype(np.float32, copy=False)
