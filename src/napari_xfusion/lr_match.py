"""The LR camera matched to the HR keyframes' binning, from the frames both took at once.

Every method reads the LR frames as the ``scale x scale`` means of the HR frame (the
paper's model, and how the networks were trained). A real second camera is never that:
its optics blur more, and a registration leaves a fraction of a pixel of misalignment.
Both cost much: on held-out video an LR blur of 1.5 HR pixels (0.4 LR pixel) with a shift
of half an HR pixel on each axis lowered EDVR-STF with aligned keyframes by 4-10 dB
(``docs/benchmarks.md``, "A second camera's optics"): the keyframes then never agree with
the LR frames, their detail is taken for what moved, and aligning them to the LR frames
moves them by the cameras' misalignment.

Where an LR frame and a keyframe were taken at the same time, the keyframe binned is
what the LR frame should have been. :func:`fit_lr_filter` finds the small linear filter
(5 x 5 LR pixels and an offset, least squares over those pairs) that maps the LR frames
closest to it -- a deblurring and a sub-pixel shift at once -- and :class:`LRFilter`
applies it to every LR frame. On exactly binned LR it comes out as the identity.

The deblurring amplifies the camera's noise. The networks want it so: trained on noisy LR
frames, they measure the noise and expect it. The classical methods have no such model,
and for them the filter comes in a second form that also smooths the noise (the least
squares estimate of the binned keyframe from the LR frame as recorded): on the built-in
sample with an LR blur of 1.5 HR pixels at 20 dB LR PSNR, Bayesian fusion reads
20.68 dB from the sharp form and 24.63 dB from the smooth one, where EDVR-STF (aligned)
reads 26.33 and 24.62 dB (``benchmarks/lr_match.py``). Each method reads the form it
can use (:meth:`~napari_xfusion.methods.FusionMethod.lr_stack`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import ndimage

from .holdout import spread_evenly
from .io import is_dask_array
from .simulate import bin_frames

__all__ = ["FILTER_SIZE", "MIN_SYSTEMATIC", "LRFilter", "fit_lr_filter"]

#: Side of the filter, in LR pixels.
FILTER_SIZE = 5

#: Most frame pairs (LR frame, keyframe at the same time) read for the fit.
MAX_PAIRS = 8

#: The share of the LR frames' misfit to the binned keyframes that the camera's optics
#: must explain for the filter to be applied. Exactly binned LR with Poisson noise gives
#: about 0.001 as simulated, and up to 0.06 after the pipeline's intensity matching (the
#: built-in sample from clean to 20 dB LR PSNR); an LR blur of 1.5 HR pixels or a shift of
#: half an HR pixel 0.07-0.92. Applied at 0.019 (the sample at 30 dB) the filter cost
#: EDVR-STF 0.15 dB, at 0.06 (20 dB) it gained 0.75 dB (``benchmarks/lr_match.py``).
MIN_SYSTEMATIC = 0.02

#: The systematic misfit (mean square, frames in [0, 1]) below which the LR frames count
#: as matching the binned keyframes: 50 dB. Exactly binned LR, clean, still misfits by
#: 1e-6 to 1e-5 after the pipeline's intensity matching (its curve is not linear), which
#: is not the optics; a blur of 1.5 HR pixels misfits by about 1e-4.
MIN_MISFIT = 1e-5


@dataclass(frozen=True)
class LRFilter:
    """A linear filter on the LR grid: ``correlate(frame, kernel) + bias``, in a sharp form
    that keeps the noise and a smooth form that also smooths it.

    Attributes
    ----------
    kernel : ndarray, shape (k, k), float32
    bias : float
        The sharp form: undoes the optics, amplifying the noise as it does.
    smooth_kernel : ndarray, shape (k, k), float32
    smooth_bias : float
        The smooth form: the least squares estimate of the binned keyframe from the LR
        frame, noise included (close to the sharp form on clean LR).
    misfit_before, misfit_after : float
        Mean square difference between the LR frames and the binned keyframes taken at
        the same times, without and with the filter (normalized units).
    systematic : float
        The share of ``misfit_before`` that the camera's own optics explain (the rest is
        its noise): 0 for an LR camera that bins the HR frame exactly.
    """

    kernel: np.ndarray
    bias: float
    smooth_kernel: np.ndarray
    smooth_bias: float
    misfit_before: float
    misfit_after: float
    systematic: float = 0.0

    @property
    def needed(self) -> bool:
        """Whether the camera departs from exact binning by more than its noise explains
        (``systematic`` at least :data:`MIN_SYSTEMATIC`) and by more than
        :data:`MIN_MISFIT`; otherwise the LR frames are best left as they are."""
        return (self.systematic >= MIN_SYSTEMATIC
                and self.systematic * self.misfit_before >= MIN_MISFIT)

    def apply(self, lr, *, smooth: bool = False):
        """The filtered LR frame or stack (a dask stack stays lazy), float32.

        ``smooth`` chooses the form that also smooths the noise. Edges are extended by
        their nearest pixel.
        """
        if is_dask_array(lr):
            lr = lr.rechunk({lr.ndim - 2: -1, lr.ndim - 1: -1})
            return lr.map_blocks(self.apply, smooth=smooth, dtype=np.float32)
        kernel, bias = ((self.smooth_kernel, self.smooth_bias) if smooth
                        else (self.kernel, self.bias))
        arr = np.asarray(lr, dtype=np.float32)
        kernel = kernel.reshape(*(1,) * (arr.ndim - 2), *kernel.shape)
        return _correlate(arr, kernel, bias).astype(np.float32, copy=False)

    def describe(self) -> str:
        """One sentence for a user: what was found and done."""
        return (f"the LR camera's own optics (blur, misalignment) explain "
                f"{100 * self.systematic:.0f}% of how its frames differ from the binned "
                "keyframes taken at the same time: its frames are filtered to match them "
                "(for the classical methods, with the noise smoothed too).")

    def to_dict(self) -> dict:
        """JSON-compatible, for the fused stack's metadata."""
        return {"kernel": self.kernel.round(5).tolist(), "bias": round(self.bias, 6),
                "smooth_kernel": self.smooth_kernel.round(5).tolist(),
                "smooth_bias": round(self.smooth_bias, 6),
                "misfit_before": self.misfit_before, "misfit_after": self.misfit_after,
                "systematic": self.systematic}


def _windows(frame: np.ndarray, size: int) -> np.ndarray:
    """Every ``size x size`` neighbourhood of ``frame`` (edges extended) and a 1, as rows."""
    r = size // 2
    windows = sliding_window_view(np.pad(frame, r, mode="edge"), (size, size))
    return np.hstack([windows.reshape(-1, size * size).astype(np.float64),
                      np.ones((frame.size, 1))])


def _least_squares(inputs: list[np.ndarray], targets: list[np.ndarray],
                   size: int) -> tuple[np.ndarray, float]:
    """The kernel and bias that map ``inputs`` closest to ``targets`` (LR-grid frames)."""
    normal = np.zeros((size * size + 1,) * 2)
    moment = np.zeros(size * size + 1)
    for x, y in zip(inputs, targets, strict=True):
        design = _windows(x, size)
        normal += design.T @ design
        moment += design.T @ y.astype(np.float64).ravel()
    coef = np.linalg.lstsq(normal, moment, rcond=None)[0]
    return coef[:-1].reshape(size, size).astype(np.float32), float(coef[-1])


def _correlate(frames: np.ndarray, kernel: np.ndarray, bias: float) -> np.ndarray:
    """``correlate(frames, kernel) + bias``, edges extended by their nearest pixel."""
    return ndimage.correlate(frames, kernel, mode="nearest") + np.float32(bias)


def fit_lr_filter(lr, hr, pairs: list[tuple[int, int]], scale: int, *,
                  size: int = FILTER_SIZE) -> LRFilter | None:
    """The filter that maps LR frames closest to the binned keyframes of their time.

    The sharp form is fitted in two steps, so that it undoes the camera's optics without
    smoothing its noise (a denoised LR frame misleads the networks, which measure and
    expect the noise: the smooth form cost EDVR-STF 4 dB with an LR blur at 30 dB): first
    what the camera does to a binned keyframe (``LR = correlate(bin(HR), g) + b``, least
    squares, unbiased by the LR noise), then the filter that maps those noise-free
    predictions back to the binned keyframes. On exactly binned LR both steps give the
    identity, noise or not. The smooth form maps the LR frames as recorded to the binned keyframes
    in one step (a Wiener filter), for the methods without a noise model.

    Parameters
    ----------
    lr : array_like, shape (N, h, w)
        Normalized LR stack (frames are read on demand).
    hr : array_like, shape (M, scale*h, scale*w)
        Normalized HR keyframes, in the same units.
    pairs : list of (int, int)
        ``(LR index, keyframe index)`` of frames taken at the same time; up to
        :data:`MAX_PAIRS` of them, evenly spread, are read.
    scale : int
        HR pixels per LR pixel.
    size : int
        Side of the filter (odd).

    Returns
    -------
    LRFilter or None
        None without a pair.
    """
    if not pairs:
        return None
    chosen = spread_evenly(pairs, MAX_PAIRS)
    frames = [np.asarray(lr[t], np.float32) for t, _ in chosen]
    binned = [bin_frames(np.asarray(hr[j], np.float32), scale) for _, j in chosen]
    camera = _least_squares(binned, frames, size)
    noiseless = [_correlate(b, *camera) for b in binned]
    sharp = _least_squares(noiseless, binned, size)
    smooth = _least_squares(frames, binned, size)

    def misfit(filtered: list[np.ndarray], reference: list[np.ndarray]) -> float:
        return float(np.mean([np.mean((a - b) ** 2)
                              for a, b in zip(filtered, reference, strict=True)]))

    before = misfit(frames, binned)
    noise = misfit(frames, noiseless)
    after = misfit([_correlate(f, *sharp) for f in frames], binned)
    systematic = 1.0 - noise / before if before > 0 else 0.0
    return LRFilter(*sharp, *smooth, before, after, systematic)
