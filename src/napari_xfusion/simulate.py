"""The paper's numerical experiment: an LR stream and HR keyframes made from one HR sequence.

Given a full-rate HR sequence ``(N, H, W)`` in [0, 1] (a real high-speed video or the
synthetic scene of :mod:`napari_xfusion.synthetic`):

* the **LR stream** is the ``s x s`` mean binning of every frame (:func:`bin_frames`), with
  optional Poisson noise (:func:`noisy_lr`), ``noisy = Poisson(x * b0) / b0`` for a
  blank-scan factor ``b0``, and optionally the LR camera's own blur, misalignment and
  shading first (:func:`lr_optics`), as a second camera never bins the HR frame exactly;
* the **HR keyframes** are the full-rate frames ``offset + j * D`` (:func:`keyframes`);
* the full-rate sequence itself is the ground truth of every fused frame.

:func:`simulate_experiment` does all three and returns an :class:`Experiment`.

Noise is drawn frame by frame from a generator seeded with ``(seed, frame index)``
(:func:`noisy_frame`), so a frame's noise does not depend on which other frames were
processed before it or on how a stack is chunked.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .config import NoiseConfig, OpticsConfig, TimeModel
from .metrics import lr_psnr as _mean_psnr
from .timeline import Timeline, keyframe_count

#: How far outside [0, 1] input values may stray before they are taken for unnormalized data.
RANGE_TOLERANCE = 0.1


def crop_to_multiple(stack, multiple: int):
    """Crop the last two axes (y, x) down to a multiple of ``multiple``.

    Rows and columns are dropped at the bottom and right, so pixel ``(y, x)`` of the result
    is pixel ``(y, x)`` of the input.

    Parameters
    ----------
    stack : array_like, shape (y, x) or (n, y, x)
        A frame or a stack; anything sliceable (numpy, dask) keeps its type.
    multiple : int
        The size both axes must be a multiple of (the binning scale).

    Returns
    -------
    array
        A view (slice) of ``stack`` of shape ``(..., y - y % multiple, x - x % multiple)``.
    """
    _check_scale(multiple, "multiple")
    y, x = stack.shape[-2:]
    if y < multiple or x < multiple:
        raise ValueError(
            f"frames of {y}x{x} pixels are smaller than {multiple} pixels in y or x and "
            "cannot be cropped to a multiple of it: use larger frames or a smaller scale."
        )
    return stack[..., : y - y % multiple, : x - x % multiple]


def bin_frames(stack, scale: int) -> np.ndarray:
    """Mean of every ``scale x scale`` block of pixels: the LR image of an HR frame.

    Parameters
    ----------
    stack : array_like, shape (y, x) or (n, y, x)
        HR frame or stack; ``y`` and ``x`` must be multiples of ``scale``.
    scale : int
        Binning factor ``s``.

    Returns
    -------
    ndarray, shape (y // s, x // s) or (n, y // s, x // s), float32

    Raises
    ------
    ValueError
        When ``y`` or ``x`` is not a multiple of ``scale`` (crop first with
        :func:`crop_to_multiple`).
    """
    _check_scale(scale, "scale")
    arr = np.asarray(stack)
    if arr.ndim not in (2, 3):
        raise ValueError(
            f"expected a frame (y, x) or a stack (n, y, x), got an array of shape {arr.shape}."
        )
    y, x = arr.shape[-2:]
    if y % scale or x % scale:
        raise ValueError(
            f"frame size {y}x{x} is not a multiple of the scale {scale}: crop it first with "
            f"crop_to_multiple(stack, {scale}) (or pass crop=True to simulate_experiment)."
        )
    blocks = arr.reshape(*arr.shape[:-2], y // scale, scale, x // scale, scale)
    # Accumulate in float64 so that the block means of float32 data carry no rounding bias.
    return blocks.mean(axis=(-3, -1), dtype=np.float64).astype(np.float32)


#: Where the beam footprint of :func:`shading_field` is centred, in coordinates that run
#: from -1 to 1 across the frame (y, x): off the centre, as a beam seldom hits it.
SHADING_CENTRE = (-0.25, 0.25)


def frame_coordinates(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The ``(y, x)`` coordinate of every pixel of a frame of ``shape``, each running from
    -1 to 1 across it (float64 arrays of ``shape``)."""
    return np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]),
                       indexing="ij")


def shading_field(shape: tuple[int, int], shading: float) -> np.ndarray:
    """A relative gain across a frame: an off-centre Gaussian beam footprint, 1 at
    :data:`SHADING_CENTRE` and ``1 - shading`` at the farthest corner.

    Returns
    -------
    ndarray, shape ``shape``, float32
    """
    y, x = frame_coordinates(shape)
    cy, cx = SHADING_CENTRE
    distance = (y - cy) ** 2 + (x - cx) ** 2
    return ((1.0 - shading) ** (distance / distance.max())).astype(np.float32)


def lr_optics(frames, optics: OpticsConfig) -> np.ndarray:
    """HR frames as the LR camera's optics pass them to its pixels: blurred, shifted, then
    shaded.

    Parameters
    ----------
    frames : array_like, shape (y, x) or (n, y, x)
        HR frames.
    optics : OpticsConfig
        Gaussian blur and shift, in HR pixels, and shading (:func:`shading_field`).

    Returns
    -------
    ndarray, same shape, float32
        Edges extended by their nearest pixel; ``frames`` as float32 for exact optics.
    """
    arr = np.asarray(frames, dtype=np.float32)
    if optics.exact:
        return arr
    lead = (0,) * (arr.ndim - 2)
    if optics.blur > 0:
        arr = ndimage.gaussian_filter(arr, (*lead, optics.blur, optics.blur), mode="nearest")
    if any(optics.shift):
        arr = ndimage.shift(arr, (*lead, *optics.shift), order=3, mode="nearest")
    if optics.shading > 0:
        arr = arr * shading_field(arr.shape[-2:], optics.shading)
    return arr.astype(np.float32, copy=False)


def poisson_noise(x, b0: float, rng: np.random.Generator | int | None = None) -> np.ndarray:
    """Shot noise of a detector that counts ``x * b0`` photons: ``Poisson(x * b0) / b0``.

    Parameters
    ----------
    x : array_like
        Clean intensities in [0, 1]; negative values are clipped to 0.
    b0 : float
        Blank-scan factor: the expected photon count of a fully transmitting pixel.
        Larger is less noisy (the paper uses 10 to 10^7).
    rng : numpy.random.Generator or int or None
        Random generator, or a seed for one.

    Returns
    -------
    ndarray, float32, same shape as ``x``
    """
    b0 = _check_b0(b0)
    lam = np.clip(np.asarray(x, dtype=np.float64), 0.0, None) * b0
    counts = np.random.default_rng(rng).poisson(lam)
    return (counts / b0).astype(np.float32)


def b0_for_psnr(clean, target_psnr: float) -> float:
    """Blank-scan factor that gives LR images of about ``target_psnr`` dB (data range 1).

    The noise of ``Poisson(x * b0) / b0`` has variance ``x / b0``, so the expected MSE of a
    noisy frame is ``mean(x) / b0`` and its PSNR is ``10 log10(b0 / mean(x))``. Hence::

        b0 = mean(x) * 10 ** (target_psnr / 10)

    For a stack, ``mean(x)`` is the geometric mean of the per-frame means, which makes the
    *mean per-frame PSNR* (the paper's "LR image PSNR") hit the target. Frames that are all
    zero carry no noise and are left out.

    Parameters
    ----------
    clean : array_like, shape (y, x) or (n, y, x)
        Noise-free LR frame(s) in [0, 1].
    target_psnr : float
        Wanted LR-image PSNR in dB (the paper uses 20 to 60).

    Returns
    -------
    float
        The blank-scan factor ``b0``.
    """
    if not np.isfinite(target_psnr) or target_psnr <= 0:
        raise ValueError(f"target PSNR must be a finite number of dB > 0, got {target_psnr!r}.")
    arr = np.clip(np.asarray(clean, dtype=np.float64), 0.0, None)
    if arr.ndim not in (2, 3):
        raise ValueError(
            f"expected a frame (y, x) or a stack (n, y, x), got an array of shape {arr.shape}."
        )
    means = arr.reshape(-1, arr.shape[-2] * arr.shape[-1]).mean(axis=1)
    means = means[means > 0]
    if means.size == 0:
        raise ValueError(
            "the clean frames are all zero, so Poisson noise has no PSNR to aim at: "
            "check that the data is normalized to [0, 1]."
        )
    return float(np.exp(np.mean(np.log(means))) * 10.0 ** (target_psnr / 10.0))


def noise_b0(lr_clean, noise: NoiseConfig, n_samples: int = 8) -> float | None:
    """The one blank-scan factor used for a whole LR sequence, as one camera would have.

    Parameters
    ----------
    lr_clean : array_like, shape (n, h, w)
        Noise-free LR stack (numpy, dask or any frame-indexable stack).
    noise : NoiseConfig
        ``b0`` is returned as given; ``target_psnr`` is solved with :func:`b0_for_psnr`
        on ``n_samples`` evenly spread frames, so long stacks are not read in full.
    n_samples : int
        Number of frames sampled to solve for ``b0``.

    Returns
    -------
    float or None
        ``b0``, or None when ``noise`` is disabled.
    """
    if noise.b0 is not None:
        return float(noise.b0)
    if noise.target_psnr is None:
        return None
    n = len(lr_clean)
    picks = np.unique(np.linspace(0, n - 1, min(n, max(int(n_samples), 1))).round().astype(int))
    sample = np.stack([np.asarray(lr_clean[int(i)], dtype=np.float32) for i in picks])
    return b0_for_psnr(sample, noise.target_psnr)


def noisy_frame(frame, index: int, b0: float, seed: int = 0) -> np.ndarray:
    """Poisson noise on LR frame ``index``, drawn from a generator seeded by ``(seed, index)``.

    The same frame, index, ``b0`` and seed always give the same noise, whatever else was
    computed before, so frames can be made in any order or chunking.

    Parameters
    ----------
    frame : array_like, shape (h, w)
        Clean LR frame.
    index : int
        Its frame index in the sequence.
    b0 : float
        Blank-scan factor.
    seed : int
        Sequence seed.

    Returns
    -------
    ndarray, shape (h, w), float32
    """
    return poisson_noise(frame, b0, np.random.default_rng([int(seed), int(index)]))


def noisy_lr(lr_clean, noise: NoiseConfig) -> np.ndarray:
    """Apply the noise of ``noise`` to a whole LR stack, frame by frame.

    Parameters
    ----------
    lr_clean : array_like, shape (n, h, w)
        Noise-free LR stack (numpy, dask or any frame-indexable stack; read one frame at a
        time).
    noise : NoiseConfig
        Blank-scan factor or target PSNR (one ``b0`` for the whole sequence, see
        :func:`noise_b0`) and seed.

    Returns
    -------
    ndarray, shape (n, h, w), float32
        Noisy stack; a float32 copy of ``lr_clean`` when ``noise`` is disabled.
    """
    shape = tuple(lr_clean.shape)
    if len(shape) != 3:
        raise ValueError(f"expected an LR stack (n, h, w), got shape {shape}.")
    out = np.empty(shape, dtype=np.float32)
    b0 = noise_b0(lr_clean, noise)
    for i in range(shape[0]):
        frame = np.asarray(lr_clean[i], dtype=np.float32)
        out[i] = frame if b0 is None else noisy_frame(frame, i, b0, noise.seed)
    return out


@dataclass
class Experiment:
    """A simulated dual-camera acquisition with its ground truth.

    Attributes
    ----------
    lr : ndarray, shape (N, h, w), float32
        LR stream as the fusion methods see it (noisy when noise was asked for).
    lr_clean : ndarray, shape (N, h, w), float32
        LR stream without noise.
    hr : ndarray, shape (M, H, W), float32
        HR keyframes.
    truth : ndarray, shape (N, H, W), float32
        The full-rate HR sequence: the ground truth at every LR time.
    timeline : Timeline
        The time model tying ``lr`` and ``hr`` together.
    b0 : float or None
        Blank-scan factor of the LR noise, None without noise.
    lr_psnr : float or None
        Mean PSNR (dB) of ``lr`` against ``lr_clean``, None without noise.
    """

    lr: np.ndarray
    lr_clean: np.ndarray
    hr: np.ndarray
    truth: np.ndarray
    timeline: Timeline
    b0: float | None
    lr_psnr: float | None


def simulate_experiment(
    hr_full,
    model: TimeModel,
    noise: NoiseConfig = NoiseConfig(),
    *,
    crop: bool = False,
    optics: OpticsConfig = OpticsConfig(),
) -> Experiment:
    """Simulate the LR stream and the HR keyframes from one full-rate HR sequence.

    LR frame ``i`` is the ``model.scale``-fold mean binning of full-rate frame ``i`` (with
    Poisson noise if ``noise`` is enabled); HR keyframe ``j`` is full-rate frame
    ``model.offset + j * model.spacing``.

    The input is read one frame at a time, so a dask array is computed frame by frame, but
    the result holds every array in memory (``truth`` is the whole input as float32): this
    is meant for test and demonstration sizes, not for 10,000-frame stacks.

    Parameters
    ----------
    hr_full : array_like, shape (N, H, W)
        Full-rate HR sequence, normalized to [0, 1].
    model : TimeModel
        Keyframe spacing and offset, LR separation, and the binning scale.
    noise : NoiseConfig
        Poisson noise on the LR stream; none by default.
    crop : bool
        Crop ``H`` and ``W`` down to multiples of ``model.scale`` (bottom and right) instead
        of raising when they are not.
    optics : OpticsConfig
        Blur, shift and shading of the LR camera before binning (:func:`lr_optics`); the HR
        keyframes and the truth stay sharp and in place. Exact binning by default.

    Returns
    -------
    Experiment

    Raises
    ------
    ValueError
        On a badly shaped input, a frame size that is not a multiple of the scale (unless
        ``crop``), NaN or values far outside [0, 1] (normalize first), or a time model that
        leaves fewer than two keyframes.
    """
    shape = tuple(hr_full.shape)
    if len(shape) != 3 or shape[0] < 2:
        raise ValueError(
            f"expected a full-rate HR sequence (N, H, W) with N >= 2 frames, got shape {shape}."
        )
    if crop:
        hr_full = crop_to_multiple(hr_full, model.scale)
    n, height, width = hr_full.shape
    if height % model.scale or width % model.scale:
        raise ValueError(
            f"frame size {height}x{width} is not a multiple of the scale {model.scale}: pass "
            f"crop=True, or crop the frames yourself with crop_to_multiple(stack, {model.scale})."
        )
    count = keyframe_count(n, model)
    if count < 2:
        raise ValueError(
            f"keyframe spacing D={model.spacing} with offset {model.offset} leaves only one HR "
            f"keyframe in {n} frames; fusion needs two: choose D <= {n - 1 - model.offset}."
        )
    timeline = Timeline(n_lr=n, n_hr=count, model=model)

    truth = np.empty((n, height, width), dtype=np.float32)
    lr_clean = np.empty((n, height // model.scale, width // model.scale), dtype=np.float32)
    for i in range(n):
        frame = np.asarray(hr_full[i], dtype=np.float32)
        _check_normalized(frame, i)
        truth[i] = frame
        lr_clean[i] = bin_frames(lr_optics(frame, optics), model.scale)

    b0 = noise_b0(lr_clean, noise)
    lr = noisy_lr(lr_clean, noise)
    return Experiment(
        lr=lr,
        lr_clean=lr_clean,
        hr=truth[timeline.keyframe_times].copy(),
        truth=truth,
        timeline=timeline,
        b0=b0,
        lr_psnr=None if b0 is None else _mean_psnr(lr, lr_clean),
    )


def _check_scale(value: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a whole number >= 1, got {value!r}.")


def _check_b0(b0: float) -> float:
    b0 = float(b0)
    if not np.isfinite(b0) or b0 <= 0:
        raise ValueError(f"the blank-scan factor b0 must be a finite number > 0, got {b0!r}.")
    return b0


def _check_normalized(frame: np.ndarray, index: int) -> None:
    if np.isnan(frame).any():
        raise ValueError(
            f"frame {index} contains NaN values: remove or fill them before simulating."
        )
    low, high = float(frame.min()), float(frame.max())
    if low < -RANGE_TOLERANCE or high > 1.0 + RANGE_TOLERANCE:
        raise ValueError(
            f"frame {index} has values in [{low:g}, {high:g}], far outside [0, 1]: normalize "
            "the sequence to [0, 1] first (clip at percentiles, then min-max scale, as in "
            "NormalizationConfig)."
        )
