"""Preconditions that every entry point checks alike: one function and one message each.

The CLI, the Python API, the cluster workers and the napari dock call these, so a user
meets the same explanation wherever a setting is wrong. (The weights-file check lives with
the weight files: :func:`napari_xfusion.models.weights.check_weights_file`.)
"""

from __future__ import annotations

import numpy as np

from .config import TimeModel
from .timeline import full_rate_keyframes

__all__ = ["check_scale", "full_rate_selection", "scale_between"]


def scale_between(lr_shape: tuple[int, ...], hr_shape: tuple[int, ...]) -> int | None:
    """The whole-number scale ``s`` with ``H = s * h`` and ``W = s * w``, or None.

    Parameters
    ----------
    lr_shape, hr_shape : tuple of int
        Shapes whose last two axes are ``(h, w)`` and ``(H, W)``.
    """
    (h, w), (hh, ww) = tuple(lr_shape[-2:]), tuple(hr_shape[-2:])
    if min(h, w, hh, ww) < 1 or hh % h or ww % w or hh // h != ww // w:
        return None
    return hh // h


def check_scale(
    lr_shape: tuple[int, ...], hr_shape: tuple[int, ...], scale: int | None = None
) -> int:
    """Check that HR frames are exactly ``scale`` times the LR frames; return the scale.

    Parameters
    ----------
    lr_shape, hr_shape : tuple of int
        Shapes whose last two axes are ``(h, w)`` and ``(H, W)``.
    scale : int, optional
        The scale the settings say; None accepts any whole number.

    Raises
    ------
    ValueError
        Naming both sizes and the fix: the scale to set when the frames differ by another
        whole factor, else how to make the stacks match.
    """
    (h, w), (hh, ww) = tuple(lr_shape[-2:]), tuple(hr_shape[-2:])
    actual = scale_between(lr_shape, hr_shape)
    if actual is not None and scale in (None, actual):
        return actual
    wanted = "a whole multiple of" if scale is None else f"exactly {scale} times"
    if actual is not None:
        fix = f"they differ by {actual}: set the scale to {actual}"
    else:
        fix = (
            "check that the stacks are LR and HR in the right order and show the same field "
            "of view"
        )
    fix += (
        "; if they come from two separate cameras, register them first (xfusion register, "
        "or the dock's Register cameras)."
    )
    raise ValueError(
        f"HR frames are {hh}x{ww} and LR frames {h}x{w}: the HR size must be {wanted} the "
        f"LR size; {fix}"
    )


def full_rate_selection(n_lr: int, n_hr: int, model: TimeModel) -> np.ndarray:
    """Indices of the keyframes kept from a full-rate HR stack (one frame per LR frame).

    Raises
    ------
    ValueError
        When the HR stack does not have one frame per LR frame.
    """
    if n_hr != n_lr:
        raise ValueError(
            f"a full-rate HR stack has one frame per LR frame ({n_lr}), but this one has "
            f"{n_hr}: if it holds only the keyframes, do not mark it as full-rate."
        )
    return full_rate_keyframes(n_lr, model)
