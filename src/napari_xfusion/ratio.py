"""Division by the previous frame: a view that keeps only what moves.

Dividing each frame of an x-ray sequence by the frame before it, pixel by pixel, cancels
the static content (the substrate, the powder bed, the flat field), so moving keyholes,
spatter particles and pores stand out (figure 3 of Tang et al.). A static scene reads
about 1 everywhere; brighter than 1 means more transmitted light than one frame earlier.

Both functions stay lazy: :func:`ratio_to_previous` returns a dask array computed frame by
frame as it is viewed, and :func:`ratio_contrast_limits` reads only a few sampled frames.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .io import is_dask_array

if TYPE_CHECKING:
    import dask.array

# The ratio is float32; larger quotients (a bright pixel over a black one) are clipped here.
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def ratio_to_previous(stack: Any, eps: float | None = None) -> dask.array.Array:
    """Each frame divided by the frame before it, lazily.

    Parameters
    ----------
    stack : array_like, shape (t, y, x)
        numpy array, dask array, or anything with ``shape``, ``dtype`` and slicing by frame
        (frames are read one at a time, only when the ratio frame that needs them is
        computed). Intensities are taken as non-negative, as x-ray counts are.
    eps : float, optional
        Floor applied to both frames before dividing, so dark and zero pixels give finite
        ratios (two black pixels give 1). Default: 1 (one count) for integer stacks,
        1e-6 for float stacks.

    Returns
    -------
    dask.array.Array, shape (t, y, x), float32
        Frame ``t`` is ``max(stack[t], eps) / max(stack[t-1], eps)``, with one chunk per
        frame. Frame 0 has no previous frame and is all ones (no change). NaN in the input
        counts as 0 and quotients beyond the float32 range are clipped, so the result is
        always finite and positive.

    Raises
    ------
    ValueError
        When ``stack`` is not 3-D or ``eps`` is not positive.
    """
    import dask.array as da

    frames = _frames(stack)
    if eps is None:
        eps = 1.0 if np.issubdtype(frames.dtype, np.integer) else 1e-6
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps}.")
    n, y, x = frames.shape
    first = da.ones((min(n, 1), y, x), dtype=np.float32, chunks=(1, y, x))
    if n < 2:
        return first
    rest = da.map_blocks(
        _divide,
        frames[1:],
        frames[:-1],
        eps=float(eps),
        dtype=np.float32,
        meta=np.empty((0, 0, 0), np.float32),
    )
    return da.concatenate([first, rest], axis=0)


def ratio_contrast_limits(
    ratio: Any,
    n_samples: int = 5,
    percentile: float = 99.5,
    min_half_width: float = 0.01,
) -> tuple[float, float]:
    """Contrast limits symmetric around 1 for a ratio stack, from a few sampled frames.

    Parameters
    ----------
    ratio : array_like, shape (t, y, x)
        A ratio stack such as the one :func:`ratio_to_previous` returns; only the sampled
        frames are computed.
    n_samples : int
        Number of frames sampled, evenly spread over frames ``1..t-1`` (frame 0 is all ones).
    percentile : float
        Each sampled frame's half width is the larger distance from 1 of its
        ``percentile``-th and ``100 - percentile``-th percentiles, so a few hot pixels do
        not flatten the view; the limits use the median over the sampled frames.
    min_half_width : float
        Smallest half width, so that a static scene (ratio 1 everywhere) still gets valid
        limits.

    Returns
    -------
    tuple of float
        ``(1 - w, 1 + w)``: 1 sits in the middle of the colormap.
    """
    n = int(ratio.shape[0])
    if n < 2:
        return 1 - min_half_width, 1 + min_half_width
    indices = np.unique(np.linspace(1, n - 1, max(n_samples, 1)).round().astype(int))
    widths = np.array([_half_width(np.asarray(ratio[int(i)]), percentile) for i in indices])
    widths = widths[np.isfinite(widths)]
    # The median over frames: one odd frame (a blank one, a flash) does not set the view.
    half_width = max(float(np.median(widths)), min_half_width) if widths.size else min_half_width
    return 1 - half_width, 1 + half_width


def _half_width(frame: np.ndarray, percentile: float) -> float:
    """Distance from 1 of a frame's outer percentiles; NaN when nothing in it is finite."""
    values = frame[np.isfinite(frame)]
    if not values.size:
        return np.nan
    low, high = np.percentile(values, [100 - percentile, percentile])
    return max(1 - low, high - 1)


def _frames(stack: Any) -> dask.array.Array:
    """``stack`` as a dask array with one chunk per frame, reading nothing."""
    import dask.array as da

    if len(stack.shape) != 3:
        raise ValueError(
            f"a stack of frames (t, y, x) is needed, got shape {tuple(stack.shape)}."
        )
    if is_dask_array(stack):
        return stack.rechunk({0: 1})
    if not hasattr(stack, "dtype"):
        stack = np.asarray(stack)
    # name=False: hashing a large in-memory array to name it would read it whole; an
    # explicit meta keeps dask from slicing an empty piece out of array-likes.
    dtype = np.dtype(stack.dtype)
    return da.from_array(
        stack,
        chunks=(1, *stack.shape[1:]),
        name=False,
        meta=np.empty((0, 0, 0), dtype),
        asarray=True,
    )


def _divide(current: np.ndarray, previous: np.ndarray, eps: float) -> np.ndarray:
    current = np.maximum(np.nan_to_num(np.asarray(current, np.float64), nan=0.0), eps)
    previous = np.maximum(np.nan_to_num(np.asarray(previous, np.float64), nan=0.0), eps)
    with np.errstate(over="ignore"):  # an infinite quotient is clipped just below
        return np.minimum(current / previous, _FLOAT32_MAX).astype(np.float32)
