"""The LR camera matched to the HR keyframes' binning, from the frames both took at once.

Every method reads the LR frames as the ``scale x scale`` means of the HR frame (the
paper's model, and how the networks were trained). A real second camera is never that:
its optics blur more, a registration leaves a fraction of a pixel of misalignment, and
its gain varies across the frame otherwise than the HR camera's (shading: vignetting,
the beam's footprint, a scintillator imaged through other optics). All three cost much:
on held-out video an LR blur of 1.5 HR pixels (0.4 LR pixel) with a shift of half an HR
pixel on each axis lowered EDVR-STF with aligned keyframes by 4-10 dB
(``docs/benchmarks.md``, "A second camera's optics"): the keyframes then never agree
with the LR frames, their detail is taken for what moved, and aligning them to the LR
frames moves them by the cameras' misalignment. A relative shading of 20% (the gain falls
to 80% at the farthest corner) cost it 1.6-8.9 dB on the same videos and 11.8 dB on the
built-in sample: the fused frames take their brightness from the LR frames.

Where an LR frame and a keyframe were taken at the same time, the keyframe binned is
what the LR frame should have been. :func:`fit_lr_filter` finds the small linear map (a
5 x 5 filter on the LR grid, and a gain and an offset that vary across the frame as
polynomials of degree :data:`SHADING_DEGREE`; least squares over those pairs) that
brings the LR frames closest to it -- a deblurring, a sub-pixel shift and a flat field
at once -- and :class:`LRFilter` applies it to every LR frame. On exactly binned LR it
comes out as the identity.

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
from .simulate import bin_frames, frame_coordinates

__all__ = ["FILTER_SIZE", "MIN_SYSTEMATIC", "SHADING_DEGREE", "LRFilter", "LinearMap",
           "fit_lr_filter", "shading_columns", "shading_terms"]

#: Side of the filter, in LR pixels.
FILTER_SIZE = 5

#: Degree of the polynomials (in the frame's coordinates) that model how the LR camera's
#: gain and offset vary across the frame relative to the HR camera's. Degree 2 follows an
#: off-centre Gaussian beam footprint that falls by 20% to within 0.1% RMS.
SHADING_DEGREE = 2

#: Most frame pairs (LR frame, keyframe at the same time) read for the fit.
MAX_PAIRS = 8

#: The share of the LR frames' misfit to the binned keyframes that the camera's optics
#: must explain for the filter to be applied. Exactly binned LR with Poisson noise gives
#: about 0.001 as simulated. After the pipeline's intensity matching it gives 0.10-0.23
#: (the built-in sample at 40-20 dB LR PSNR): the matching curve pulls noisy values
#: towards the mean, a bias that follows the scene's brightness and so, in part, the
#: position in the frame, which the shading terms take up. Applied there the filter
#: gained EDVR-STF 0.2-0.9 dB and the classical methods 0.1-3.9 dB
#: (``benchmarks/lr_match.py``). An LR blur of 1.5 HR pixels, a shift of half an HR
#: pixel or a shading of 20% give 0.12-0.99.
MIN_SYSTEMATIC = 0.02

#: The systematic misfit (mean square, frames in [0, 1]) below which the LR frames count
#: as matching the binned keyframes: 50 dB. Exactly binned LR, clean, still misfits by
#: 1e-6 to 1e-5 after the pipeline's intensity matching (its curve is not linear), which
#: is not the optics; a blur of 1.5 HR pixels misfits by about 1e-4.
MIN_MISFIT = 1e-5


def shading_terms(shape: tuple[int, int]) -> np.ndarray:
    """The monomials of degree 1 to :data:`SHADING_DEGREE` in the frame's coordinates
    (each scaled to [-1, 1]), shape (terms, h, w), float32."""
    y, x = frame_coordinates(shape)
    return np.stack([y ** i * x ** (d - i) for d in range(1, SHADING_DEGREE + 1)
                     for i in range(d + 1)]).astype(np.float32)


def shading_columns(values: np.ndarray, terms: np.ndarray) -> np.ndarray:
    """The least squares columns of a gain and an offset that vary across the frame:
    ``values`` (n,) times each of ``terms`` (n, T, from :func:`shading_terms`), then the
    terms themselves; shape (n, 2T)."""
    return np.hstack([values[:, None] * terms, terms])


@dataclass(frozen=True)
class LinearMap:
    """``correlate(frame, kernel) + frame * gain_field + offset_field + bias`` on the LR
    grid, where the two fields are polynomials in the frame's coordinates
    (:func:`shading_terms`) that vary the gain and offset across the frame.

    Attributes
    ----------
    kernel : ndarray, shape (k, k), float32
    bias : float
    gain, offset : ndarray, shape (terms,), float32
        The fields' coefficients: zero for a camera whose gain and offset are the same
        everywhere (relative to the HR camera's).
    """

    kernel: np.ndarray
    bias: float
    gain: np.ndarray
    offset: np.ndarray

    @classmethod
    def from_coefficients(cls, coef: np.ndarray, size: int) -> LinearMap:
        """From the least squares coefficients, in :func:`_design`'s column order."""
        k, terms = size * size, (len(coef) - size * size - 1) // 2
        return cls(coef[:k].reshape(size, size).astype(np.float32), float(coef[-1]),
                   coef[k:k + terms].astype(np.float32),
                   coef[k + terms:k + 2 * terms].astype(np.float32))

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """The frames (..., h, w) mapped, edges extended by their nearest pixel."""
        kernel = self.kernel.reshape(*(1,) * (frames.ndim - 2), *self.kernel.shape)
        terms = shading_terms(frames.shape[-2:])
        gain = np.tensordot(self.gain, terms, axes=1)
        offset = np.tensordot(self.offset, terms, axes=1) + np.float32(self.bias)
        return (ndimage.correlate(frames, kernel, mode="nearest")
                + frames * gain + offset).astype(np.float32, copy=False)

    def to_dict(self) -> dict:
        """JSON-compatible."""
        return {"kernel": self.kernel.round(5).tolist(), "bias": round(self.bias, 6),
                "gain": self.gain.round(5).tolist(), "offset": self.offset.round(5).tolist()}


@dataclass(frozen=True)
class LRFilter:
    """The LR frames mapped to the binned keyframes, in a sharp form that keeps the noise
    and a smooth form that also smooths it.

    Attributes
    ----------
    sharp : LinearMap
        Undoes the optics and the shading, amplifying the noise as it does.
    smooth : LinearMap
        The least squares estimate of the binned keyframe from the LR frame, noise
        included (close to the sharp form on clean LR).
    misfit_before, misfit_after : float
        Mean square difference between the LR frames and the binned keyframes taken at
        the same times, without and with the sharp form (normalized units).
    systematic : float
        The share of ``misfit_before`` that the camera's own optics and shading explain
        (the rest is its noise): 0 for an LR camera that bins the HR frame exactly.
    """

    sharp: LinearMap
    smooth: LinearMap
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
        their nearest pixel; the shading is that of whole frames.
        """
        if is_dask_array(lr):
            lr = lr.rechunk({lr.ndim - 2: -1, lr.ndim - 1: -1})
            return lr.map_blocks(self.apply, smooth=smooth, dtype=np.float32)
        form = self.smooth if smooth else self.sharp
        return form(np.asarray(lr, dtype=np.float32))

    def describe(self) -> str:
        """One sentence for a user: what was found and done."""
        return (f"the LR camera's own optics (blur, misalignment, shading) explain "
                f"{100 * self.systematic:.0f}% of how its frames differ from the binned "
                "keyframes taken at the same time: its frames are filtered to match them "
                "(for the classical methods, with the noise smoothed too).")

    def to_dict(self) -> dict:
        """JSON-compatible, for the fused stack's metadata."""
        return {"sharp": self.sharp.to_dict(), "smooth": self.smooth.to_dict(),
                "misfit_before": self.misfit_before, "misfit_after": self.misfit_after,
                "systematic": self.systematic}


def _design(frame: np.ndarray, size: int) -> np.ndarray:
    """The columns of :class:`LinearMap`'s coefficients for ``frame``, one row per pixel:
    its ``size x size`` neighbourhood (edges extended), itself times each shading term,
    each shading term, and a 1."""
    r = size // 2
    windows = sliding_window_view(np.pad(frame, r, mode="edge"), (size, size))
    terms = shading_terms(frame.shape).reshape(-1, frame.size).T.astype(np.float64)
    return np.hstack([windows.reshape(-1, size * size).astype(np.float64),
                      shading_columns(frame.ravel(), terms), np.ones((frame.size, 1))])


def _least_squares(inputs: list[np.ndarray], targets: list[np.ndarray],
                   size: int) -> LinearMap:
    """The map that brings ``inputs`` closest to ``targets`` (LR-grid frames)."""
    normal, moment = 0.0, 0.0
    for x, y in zip(inputs, targets, strict=True):
        design = _design(x, size)
        normal += design.T @ design
        moment += design.T @ y.astype(np.float64).ravel()
    return LinearMap.from_coefficients(np.linalg.lstsq(normal, moment, rcond=None)[0], size)


def fit_lr_filter(lr, hr, pairs: list[tuple[int, int]], scale: int, *,
                  size: int = FILTER_SIZE) -> LRFilter | None:
    """The filter that maps LR frames closest to the binned keyframes of their time.

    The sharp form is fitted in two steps, so that it undoes the camera's optics and
    shading without smoothing its noise (a denoised LR frame misleads the networks, which
    measure and expect the noise: the smooth form cost EDVR-STF 4 dB with an LR blur at
    30 dB): first what the camera does to a binned keyframe (``LR = camera(bin(HR))``, a
    :class:`LinearMap`; least squares, unbiased by the LR noise), then the map that brings
    those noise-free predictions back to the binned keyframes. On exactly binned LR both
    steps give the identity, noise or not. The smooth form maps the LR frames as recorded
    to the binned keyframes in one step (a Wiener filter), for the methods without a noise
    model.

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
    noiseless = [camera(b) for b in binned]
    sharp = _least_squares(noiseless, binned, size)
    smooth = _least_squares(frames, binned, size)

    def misfit(filtered: list[np.ndarray], reference: list[np.ndarray]) -> float:
        return float(np.mean([np.mean((a - b) ** 2)
                              for a, b in zip(filtered, reference, strict=True)]))

    before = misfit(frames, binned)
    noise = misfit(frames, noiseless)
    after = misfit([sharp(f) for f in frames], binned)
    systematic = 1.0 - noise / before if before > 0 else 0.0
    return LRFilter(sharp, smooth, before, after, systematic)
