"""The paper's intensity normalization: percentile clip, then min-max scaling to [0, 1].

Tang et al. clip each sequence at its 0.35th and 99.65th percentiles and min-max normalize
it, so the networks see float32 frames in [0, 1]. :func:`fit_normalization` estimates the
two percentiles from a few frames spread over the stack (a long recording is never read in
full for it); the resulting :class:`Normalization` maps frames to [0, 1] with
:meth:`~Normalization.apply` and fused frames back to the camera's units and dtype with
:meth:`~Normalization.invert`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .config import NormalizationConfig
from .io import check_finite, is_dask_array

#: Pixels pooled for the percentile estimate at most; beyond it frames are subsampled on
#: a regular grid. 2**24 values keep the estimate's error far below one grey level while
#: bounding memory (128 MiB as float64).
MAX_SAMPLE_PIXELS = 1 << 24


@dataclass(frozen=True)
class Normalization:
    """A fitted intensity mapping between a camera's units and [0, 1].

    Values at or below ``low`` map to 0, at or above ``high`` to 1, linearly between. A
    constant stack (``low == high``) has no range to scale: every value maps to 0, and
    :meth:`invert` returns ``low``.

    Parameters
    ----------
    low, high : float
        Clip limits in the source units (the fitted percentiles).
    dtype : str
        The source stack's dtype name, e.g. ``"uint16"``; :meth:`invert` returns it.
    curve : tuple of two tuples of float, optional
        A monotone response curve ``(source values, [0, 1] values)`` used instead of the
        linear map between ``low`` and ``high`` (which are then its ends): set by
        :func:`match_normalization` when one camera's response is not linear in the
        other's (a gamma, a knee). None for the paper's linear normalization.
    """

    low: float
    high: float
    dtype: str
    curve: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    def __post_init__(self) -> None:
        if not (np.isfinite(self.low) and np.isfinite(self.high) and self.low <= self.high):
            raise ValueError(
                f"normalization limits must be finite with low <= high, got low={self.low} "
                f"and high={self.high}."
            )
        if np.dtype(self.dtype).kind not in "iuf":
            raise ValueError(
                f"normalization dtype must be an integer or float type, got {self.dtype!r}."
            )
        if self.curve is not None:
            xs, ys = (np.asarray(v, np.float64) for v in self.curve)
            if not (len(xs) == len(ys) >= 2 and np.all(np.diff(xs) > 0)
                    and np.all(np.diff(ys) > 0) and np.isfinite(xs).all()):
                raise ValueError(
                    "a normalization curve needs two or more points, increasing in both "
                    f"coordinates; got {self.curve!r}."
                )
            object.__setattr__(self, "curve", (tuple(map(float, xs)), tuple(map(float, ys))))

    @property
    def limits(self) -> tuple[float, float]:
        """The source values that :meth:`apply` clips at (the curve's ends, if it has one)."""
        if self.curve is not None:
            return self.curve[0][0], self.curve[0][-1]
        return self.low, self.high

    @property
    def _scale(self) -> float:
        return 1.0 / (self.high - self.low) if self.high > self.low else 0.0

    def apply(self, x: Any) -> Any:
        """Clip to ``[low, high]`` and scale to [0, 1].

        Parameters
        ----------
        x : array_like or dask.array.Array
            Frames in the source units. A dask array stays lazy.

        Returns
        -------
        ndarray or dask.array.Array
            float32 in [0, 1], same shape.
        """
        if is_dask_array(x):
            return x.map_blocks(self.apply, dtype=np.float32)
        # float64 arithmetic: a float32 offset would lose detail on large float values.
        x = np.asarray(x, dtype=np.float64)
        if self.curve is not None:
            y = np.interp(x, *self.curve)
        else:
            y = (x - self.low) * self._scale
        return np.clip(y, 0.0, 1.0).astype(np.float32)

    def invert(self, y: Any) -> Any:
        """Map [0, 1] values back to the source units and dtype.

        Parameters
        ----------
        y : array_like or dask.array.Array
            Normalized frames (values outside [0, 1] extrapolate linearly; through a curve
            they are held at its ends).

        Returns
        -------
        ndarray or dask.array.Array
            In :attr:`dtype`: integer types are rounded and clipped to the type's range,
            float types are kept as they come out.
        """
        dtype = np.dtype(self.dtype)
        if is_dask_array(y):
            return y.map_blocks(self.invert, dtype=dtype)
        y = np.asarray(y, dtype=np.float64)
        if self.curve is not None:
            x = np.interp(y, self.curve[1], self.curve[0])
        else:
            x = y * (self.high - self.low) + self.low
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            x = np.clip(np.rint(x), info.min, info.max)
        return x.astype(dtype)


#: How close to a clip limit (in [0, 1] units) a fused value counts as clipped.
CLIP_TOLERANCE = 0.02


def restore_clipped(
    frame: np.ndarray,
    fused: np.ndarray,
    keyframes: np.ndarray,
    position: float,
    norm: Normalization,
) -> np.ndarray:
    """Give back the values the normalization clipped, where the HR camera saw them.

    The networks work on values clipped at the normalization's limits (the 0.35th and
    99.65th percentiles by default), so a bright, sparse feature above the upper limit comes
    out at that limit. Where a fused value is at a limit (within :data:`CLIP_TOLERANCE`)
    and every keyframe that counts at this time (both, between keyframes; the one, at a
    keyframe's own time) is beyond the same limit -- a feature that stayed put -- the
    keyframes' own values, interpolated in time, replace it. A feature beyond a limit in
    only one keyframe moved, so nothing known replaces the limit there.

    Parameters
    ----------
    frame : ndarray, shape (H, W)
        The fused frame in the HR camera's units (``norm.invert(fused)``).
    fused : ndarray, shape (H, W)
        The same frame in [0, 1].
    keyframes : ndarray, shape (2, H, W)
        The bracketing HR keyframes in the camera's units, unclipped.
    position : float
        Where the frame lies between them, 0 at the first and 1 at the second.
    norm : Normalization
        The HR stack's normalization.

    Returns
    -------
    ndarray
        ``frame`` with the restored values, same dtype.
    """
    low, high = norm.limits
    weights = (1.0 - position, position)
    keyframes = np.asarray(keyframes, np.float64)
    counted = [k for k, w in zip(keyframes, weights, strict=True) if w > 0]
    blend = weights[0] * keyframes[0] + weights[1] * keyframes[1]
    above = (fused >= 1.0 - CLIP_TOLERANCE) & np.all([k > high for k in counted], axis=0)
    below = (fused <= CLIP_TOLERANCE) & np.all([k < low for k in counted], axis=0)
    restore = above | below
    if not restore.any():
        return frame
    out = frame.copy()
    dtype = np.dtype(frame.dtype)
    values = blend[restore]
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        values = np.clip(np.rint(values), info.min, info.max)
    out[restore] = values.astype(dtype)
    return out


def sample_indices(n_frames: int, max_frames: int) -> np.ndarray:
    """Indices of at most ``max_frames`` frames spread evenly over ``n_frames``.

    The first and last frames are included whenever two or more are sampled.

    Parameters
    ----------
    n_frames : int
        Frames in the stack.
    max_frames : int
        Most frames to pick.

    Returns
    -------
    ndarray of int
        Sorted, unique indices.
    """
    count = min(n_frames, max_frames)
    return np.unique(np.round(np.linspace(0, n_frames - 1, count)).astype(int))


def fit_normalization(
    stack: Any, config: NormalizationConfig = NormalizationConfig()
) -> Normalization:
    """Fit the paper's percentile normalization to a stack, reading only a sample of it.

    Parameters
    ----------
    stack : array_like, shape (frames, y, x)
        numpy or dask array, or anything with ``len`` whose ``stack[i]`` is one frame.
        Only the sampled frames are read.
    config : NormalizationConfig
        Percentiles and the most frames to sample.

    Returns
    -------
    Normalization

    Raises
    ------
    ValueError
        When the stack is empty or not a stack of 2-D frames, or a sampled frame holds
        NaN or infinite values.
    """
    n = len(stack)
    if n == 0:
        raise ValueError("cannot fit a normalization to a stack with no frames: load frames.")
    indices = sample_indices(n, config.max_sample_frames)
    samples = []
    step = None
    for i in indices:
        frame = np.asarray(stack[int(i)])
        if frame.ndim != 2:
            raise ValueError(
                f"normalization needs a stack of 2-D frames, but frame {i} has shape "
                f"{frame.shape}: load the stack with read_stack."
            )
        check_finite(frame, "stack", int(i))
        if step is None:
            # One grid for every frame, so each sampled frame weighs the same.
            step = max(1, int(np.ceil(np.sqrt(len(indices) * frame.size / MAX_SAMPLE_PIXELS))))
        samples.append(frame[::step, ::step].ravel())
    pooled = np.concatenate(samples)
    low, high = np.percentile(pooled, [config.low_percentile, config.high_percentile])
    return Normalization(low=float(low), high=float(high), dtype=np.dtype(pooled.dtype).name)


def match_normalization(
    lr: Any,
    hr: Any,
    hr_norm: Normalization,
    pairs: list[tuple[int, int]],
    scale: int,
    config: NormalizationConfig = NormalizationConfig(),
) -> Normalization | None:
    """An LR normalization that puts LR frames in the HR stack's normalized units.

    The two cameras see the same scene, so at a time when both took a frame, the binned HR
    frame and the LR frame differ only by the cameras' responses: gains, offsets and, for
    two different cameras, a response curve (a gamma, a knee). Fitting the LR mapping to
    that (least squares, ``bin(hr_norm(HR)) ~ a * LR + b``, or a monotone curve through
    the binned means when it fits clearly better) makes the LR and HR inputs agree in
    brightness, which separate percentile normalizations do not: binning compresses the
    extremes, so the percentiles of the two streams differ.

    Parameters
    ----------
    lr, hr : array_like, shape (frames, y, x)
        Raw LR stack and HR keyframes (only the paired frames are read).
    hr_norm : Normalization
        The HR stack's normalization.
    pairs : list of (int, int)
        ``(lr_index, hr_index)`` of frames taken at the same time.
    scale : int
        HR/LR pixel size ratio.
    config : NormalizationConfig
        Caps the number of pairs read at ``max_sample_frames``.

    Returns
    -------
    Normalization or None
        None when there is no pair, or the fit is unreliable (flat frames, or LR and HR
        brightness not positively related), in which case the caller should fall back to
        :func:`fit_normalization`.
    """
    from .lr_match import shading_columns, shading_terms
    from .simulate import bin_frames

    if not pairs:
        return None
    picks = sample_indices(len(pairs), config.max_sample_frames)
    xs, ys = [], []
    for p in picks:
        i, j = pairs[int(p)]
        x = check_finite(np.asarray(lr[i], dtype=np.float64), "LR stack", i)
        frame_shape, frame_size = x.shape, x.size
        y = bin_frames(hr_norm.apply(np.asarray(hr[j])), scale)
        xs.append(x.ravel())
        ys.append(y.ravel().astype(np.float64))
    x, y = np.concatenate(xs), np.concatenate(ys)
    if x.std() == 0 or y.std() == 0 or np.corrcoef(x, y)[0, 1] < 0.5:
        return None
    a, b = np.polyfit(x, y, 1)
    if a <= 0:
        return None
    dtype = np.dtype(lr.dtype).name
    # y = a x + b maps x = -b/a to 0 and x = (1 - b)/a to 1.
    linear = Normalization(low=float(-b / a), high=float((1 - b) / a), dtype=dtype)
    curve = _response_curve(x, y)
    if curve is None:
        return linear
    bent = Normalization(low=curve[0][0], high=curve[0][-1], dtype=dtype, curve=curve)

    # Judged after a gain and an offset across the frame, which the LR filter fits next
    # (lr_match): a curve must not bend to explain the LR camera's shading, which it
    # cannot undo and the filter can no longer undo after it (a relative shading of 20%
    # bent it and cost every method 1-4 dB on the built-in sample's clean LR).
    rows = np.arange(0, x.size, max(1, x.size // _SHADING_ROWS))
    terms = shading_terms(frame_shape).reshape(-1, frame_size)[:, rows % frame_size]
    terms = terms.T.astype(np.float64)

    def error(norm: Normalization) -> float:
        mapped = norm.apply(x[rows]).astype(np.float64)
        design = np.column_stack([mapped, shading_columns(mapped, terms), np.ones_like(mapped)])
        coef = np.linalg.lstsq(design, y[rows], rcond=None)[0]
        return float(np.mean((design @ coef - y[rows]) ** 2))

    # The linear map stays unless a curve fits clearly better, in proportion and in
    # absolute terms: noise, and the clipped extremes of an otherwise straight relation,
    # must not bend it.
    straight = error(linear)
    gain = straight - error(bent)
    return bent if gain > max(_CURVE_GAIN * straight, _CURVE_MIN_GAIN) else linear


#: Most pixels the choice between a linear map and a curve reads (evenly strided).
_SHADING_ROWS = 1 << 20
#: Points of a fitted response curve (quantiles of the source values).
_CURVE_POINTS = 24
#: A curve replaces the linear map only if it lowers the mean squared error by this share,
#: and by at least this much (an RMS difference of about 0.3 % of the range).
_CURVE_GAIN = 0.05
_CURVE_MIN_GAIN = 1e-5


def _response_curve(x: np.ndarray, y: np.ndarray):
    """A monotone curve ``y ~ f(x)`` through the mean of ``y`` in quantile bins of ``x``.

    Pool-adjacent-violators makes the bin means increase; the ends are extended to 0 and
    1 along the curve's end slopes, so that values just outside the fitted range map
    sensibly. None when too few distinct values exist.
    """
    edges = np.unique(np.quantile(x, np.linspace(0, 1, _CURVE_POINTS + 1)))
    if len(edges) < 4:
        return None
    bins = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, len(edges) - 2)
    counts = np.bincount(bins, minlength=len(edges) - 1).astype(np.float64)
    keep = counts > 0
    xs = (np.bincount(bins, x, len(edges) - 1)[keep] / counts[keep]).tolist()
    ys = (np.bincount(bins, y, len(edges) - 1)[keep] / counts[keep]).tolist()
    weights = counts[keep].tolist()
    # Pool adjacent violators: merge neighbouring bins until the means increase.
    i = 0
    while i < len(ys) - 1:
        if ys[i] >= ys[i + 1]:
            w = weights[i] + weights[i + 1]
            xs[i] = (xs[i] * weights[i] + xs[i + 1] * weights[i + 1]) / w
            ys[i] = (ys[i] * weights[i] + ys[i + 1] * weights[i + 1]) / w
            weights[i] = w
            del xs[i + 1], ys[i + 1], weights[i + 1]
            i = max(i - 1, 0)
        else:
            i += 1
    if len(xs) < 2:
        return None
    xs, ys = np.asarray(xs), np.asarray(ys)
    if np.any(np.diff(xs) <= 0):
        return None
    # Extend to y = 0 and y = 1 along the end slopes.
    low_slope = (ys[1] - ys[0]) / (xs[1] - xs[0])
    high_slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
    if ys[0] > 0 and low_slope > 0:
        xs, ys = np.r_[xs[0] - ys[0] / low_slope, xs], np.r_[0.0, ys]
    if ys[-1] < 1 and high_slope > 0:
        xs, ys = np.r_[xs, xs[-1] + (1 - ys[-1]) / high_slope], np.r_[ys, 1.0]
    return tuple(xs.tolist()), tuple(ys.tolist())
