"""Onto the network's grid: the LR stack cropped to the common field of view, and the HR
keyframes resampled to exactly ``scale`` times that crop.

Every fusion method (and the network) expects HR frames that are exactly ``scale`` times
the LR frames, pixel on pixel. A real HR camera's pixels lie elsewhere (another size, a
rotation, a mirror, a shift). Of the two streams it is the HR keyframes that are
resampled, for three reasons: there are few of them (one per ``D`` LR frames), so the
work is small; they carry little noise, so interpolating them does little harm, while
resampling the LR frames would smear their noise across pixels, a noise the network was
not trained on and the classical methods copy; and the LR grid is the one on which every
output frame is made, so keeping it means the fused stack lines up with the LR recording.
The LR stack is only cropped, which loses nothing inside the crop.

:func:`common_crop` finds the largest LR rectangle that the HR camera sees entirely;
:class:`ResampledKeyframes` reads and resamples the keyframes one at a time, as they are
asked for, so a long recording is never held in memory.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import gaussian_filter, map_coordinates

from .transform import CameraTransform

__all__ = ["ResampledKeyframes", "common_crop"]


def _largest_rectangle(mask: np.ndarray) -> tuple[int, int, int, int]:
    """``(y0, y1, x0, x1)`` of the largest all-True rectangle of a 2-D mask (end exclusive)."""
    best, found = 0, (0, 0, 0, 0)
    heights = np.zeros(mask.shape[1], int)
    for row in range(mask.shape[0]):
        heights = np.where(mask[row], heights + 1, 0)
        stack: list[int] = []  # columns of increasing height
        for col in range(len(heights) + 1):
            height = heights[col] if col < len(heights) else 0
            while stack and heights[stack[-1]] >= height:
                top = heights[stack.pop()]
                left = stack[-1] + 1 if stack else 0
                area = top * (col - left)
                if area > best:
                    best, found = area, (row - top + 1, row + 1, left, col)
            stack.append(col)
    return found


def common_crop(transform: CameraTransform, multiple: int = 4) -> tuple[int, int, int, int]:
    """The largest rectangle of LR pixels that lie entirely inside the HR camera's frame.

    Parameters
    ----------
    transform : CameraTransform
    multiple : int
        Height and width are trimmed (from the bottom and right) to multiples of this.

    Returns
    -------
    (y0, y1, x0, x1) : int
        LR pixel rows ``y0 .. y1 - 1`` and columns ``x0 .. x1 - 1``.

    Raises
    ------
    ValueError
        When the HR frame covers fewer than ``multiple x multiple`` whole LR pixels.
    """
    h, w = transform.lr_shape
    rows, cols = np.mgrid[0:h, 0:w]
    points = np.stack([rows, cols], axis=-1).reshape(-1, 2).astype(np.float64)
    inside = np.ones(len(points), bool)
    hh, hw = transform.hr_shape
    for dy in (-0.5, 0.5):
        for dx in (-0.5, 0.5):
            p = transform.to_hr(points + [dy, dx])
            inside &= (p[:, 0] >= -0.5) & (p[:, 0] <= hh - 0.5)
            inside &= (p[:, 1] >= -0.5) & (p[:, 1] <= hw - 0.5)
    y0, y1, x0, x1 = _largest_rectangle(inside.reshape(h, w))
    y1 -= (y1 - y0) % multiple
    x1 -= (x1 - x0) % multiple
    if y1 - y0 < multiple or x1 - x0 < multiple:
        raise ValueError(
            "the HR camera's frame covers too few whole LR pixels to fuse anything: check "
            "the registration (or that both cameras watch the same region)."
        )
    return int(y0), int(y1), int(x0), int(x1)


class ResampledKeyframes:
    """HR keyframes resampled, frame by frame on demand, onto ``scale`` times an LR crop.

    Indexable like a stack of shape ``(M, scale * (y1 - y0), scale * (x1 - x0))`` in the
    source's dtype (integers are rounded and clipped); :func:`napari_xfusion.io.read_stack`
    opens it lazily like any other stack.

    Parameters
    ----------
    hr : array_like, shape (M, H', W')
        The HR camera's keyframes.
    transform : CameraTransform
        HR-camera pixels to LR pixels.
    crop : (y0, y1, x0, x1)
        The LR crop (:func:`common_crop`).
    scale : int
        Output pixels per LR pixel along each axis.
    """

    def __init__(self, hr, transform: CameraTransform, crop, scale: int) -> None:
        self.hr, self.transform, self.scale = hr, transform, int(scale)
        self.crop = tuple(int(v) for v in crop)
        y0, y1, x0, x1 = self.crop
        self.shape = (len(hr), self.scale * (y1 - y0), self.scale * (x1 - x0))
        self.dtype = np.dtype(hr.dtype)
        self.ndim = 3
        s = self.scale
        rows = y0 + (np.arange(self.shape[1]) + 0.5) / s - 0.5
        cols = x0 + (np.arange(self.shape[2]) + 0.5) / s - 0.5
        grid = np.stack(np.meshgrid(rows, cols, indexing="ij"), axis=-1).reshape(-1, 2)
        self._at = transform.to_hr(grid).T
        # An output pixel spans ratio / scale camera pixels; where that is more than one,
        # average over it (a Gaussian of the box's spread) before sampling.
        span = np.array([transform.ratio_y, transform.ratio_x]) / s
        self._sigma = tuple(math.sqrt(max(v * v - 1.0, 0.0) / 12.0) for v in span)

    def __len__(self) -> int:
        return self.shape[0]

    def frame(self, j: int) -> np.ndarray:
        """Keyframe ``j`` on the output grid."""
        source = np.asarray(self.hr[j], np.float64)
        if any(self._sigma):
            source = gaussian_filter(source, self._sigma)
        values = map_coordinates(source, self._at, order=3, mode="nearest")
        out = values.reshape(self.shape[1:])
        if self.dtype.kind in "iu":
            info = np.iinfo(self.dtype)
            out = np.clip(np.rint(out), info.min, info.max)
        return out.astype(self.dtype)

    def __getitem__(self, key):
        if isinstance(key, tuple):
            first, rest = key[0], key[1:]
        else:
            first, rest = key, ()
        if isinstance(first, (int, np.integer)):
            return self.frame(int(first))[rest] if rest else self.frame(int(first))
        indices = np.arange(len(self))[first]
        stack = np.stack([self.frame(int(j)) for j in np.atleast_1d(indices)])
        return stack[(slice(None), *rest)] if rest else stack
