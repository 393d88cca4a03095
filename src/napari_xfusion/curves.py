"""Monotone response curves between paired pixel values of two cameras.

A response curve maps one camera's values to another's where the relation is not a
straight line (a gamma, a knee), or maps noisy values to the mean of what they measure (a
denoising). :func:`response_curve` fits either through the means of one in quantile bins
of the other; :mod:`napari_xfusion.normalize` fits the LR camera's response with it and
:mod:`napari_xfusion.lr_match` the denoising of its smooth form.
"""

from __future__ import annotations

import numpy as np

__all__ = ["CURVE_POINTS", "response_curve"]

#: Points of a fitted response curve (quantiles of the binned values).
CURVE_POINTS = 24


def response_curve(x: np.ndarray, y: np.ndarray, *, given: str):
    """A monotone curve from ``x`` to ``y`` through their means in quantile bins.

    Parameters
    ----------
    x, y : ndarray, shape (n,)
        Paired values, e.g. LR pixels and the binned keyframe's pixels at the same place.
    given : {"x", "y"}
        Which of the two is binned: ``"y"`` follows the mean ``x`` at each ``y`` (a
        noisy ``x``'s response to ``y``, unbiased by its noise), ``"x"`` the mean ``y``
        at each ``x`` (the best estimate of ``y`` from a noisy ``x``: a denoising that
        pulls values towards the mean).

    Returns
    -------
    tuple of two tuples of float, or None
        ``(x points, y points)``, both increasing (pool-adjacent-violators merges bins
        until they do); the ends are extended to ``y`` = 0 and 1 along the curve's end
        slopes, so that values just outside the fitted range map sensibly. None when too
        few distinct values exist.
    """
    if given not in ("x", "y"):
        raise ValueError(f'given must be "x" or "y", got {given!r}.')
    binned, other = (x, y) if given == "x" else (y, x)
    edges = np.unique(np.quantile(binned, np.linspace(0, 1, CURVE_POINTS + 1)))
    if len(edges) < 4:
        return None
    bins = np.clip(np.searchsorted(edges, binned, side="right") - 1, 0, len(edges) - 2)
    counts = np.bincount(bins, minlength=len(edges) - 1).astype(np.float64)
    keep = counts > 0
    means = [(np.bincount(bins, v, len(edges) - 1)[keep] / counts[keep]).tolist()
             for v in (binned, other)]
    weights = counts[keep].tolist()
    # Pool adjacent violators: merge neighbouring bins until both means increase.
    i = 0
    while i < len(weights) - 1:
        if means[1][i] >= means[1][i + 1]:
            w = weights[i] + weights[i + 1]
            for m in means:
                m[i] = (m[i] * weights[i] + m[i + 1] * weights[i + 1]) / w
                del m[i + 1]
            weights[i] = w
            del weights[i + 1]
            i = max(i - 1, 0)
        else:
            i += 1
    if len(weights) < 2:
        return None
    xs, ys = (np.asarray(m) for m in (means if given == "x" else means[::-1]))
    if np.any(np.diff(xs) <= 0) or np.any(np.diff(ys) <= 0):
        return None
    # Extend to y = 0 and y = 1 along the end slopes.
    low_slope = (ys[1] - ys[0]) / (xs[1] - xs[0])
    high_slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
    if ys[0] > 0 and low_slope > 0:
        xs, ys = np.r_[xs[0] - ys[0] / low_slope, xs], np.r_[0.0, ys]
    if ys[-1] < 1 and high_slope > 0:
        xs, ys = np.r_[xs, xs[-1] + (1 - ys[-1]) / high_slope], np.r_[ys, 1.0]
    return tuple(xs.tolist()), tuple(ys.tolist())
