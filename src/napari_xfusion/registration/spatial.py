"""Estimate where the HR camera's pixels lie on the LR grid, from the recording itself.

Frame pairs the two cameras took at the same time show the same scene through different
optics. :func:`register_frames` finds the :class:`~.transform.CameraTransform` between them
in two steps:

1. **Search.** Every mirror (none, rows, columns, both), pixel-size ratio (a geometric grid
   over ``ratio_range``) and rotation (a grid over +-``max_rotation``) is tried on small
   copies of the frames: the HR frame is drawn onto the LR grid through the candidate
   transform and phase-correlated with the LR frame, which finds the shift. The images
   compared are gradient magnitudes, which do not care about the cameras' gains, offsets
   or gamma. Phase correlation is scikit-image's idea (``phase_cross_correlation``) done
   here on cross-power spectra summed over all pairs and all candidates at once, which the
   search needs for speed.
2. **Refinement.** From the best candidate, the ratios (separately along rows and columns),
   the rotation and the shift are fitted at full resolution by maximizing the agreement
   of the LR frames with the HR frames averaged over each LR pixel's footprint
   (:func:`predict_lr`) through the transform: their correlation after the best cubic
   response curve, which makes the fit blind to the cameras' gains, offsets and gamma.

The result reports how well the frames agree (``similarity``), how clearly the best
candidate beat a different one (``margin``) and the misalignment left in the four
quarters of the overlap (``residual``, LR pixels). Frames without enough common structure
are refused with a :class:`ValueError` that says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter, gaussian_gradient_magnitude, map_coordinates
from scipy.optimize import minimize

from .transform import CameraTransform

__all__ = [
    "SpatialFit", "agreement", "footprint_blur", "overlap_points", "predict_lr", "register_frames",
]

#: Side (pixels) of the small copies the search works on.
SEARCH_SIZE = 128
#: Geometric step of the ratio grid of the search (the refinement corrects the rest).
RATIO_STEP = 1.05
#: Step of the rotation grid of the search (degrees).
ANGLE_STEP = 2.5
#: Frame pairs the search uses (the refinement uses all).
SEARCH_PAIRS = 2
#: Most LR pixels the refinement evaluates (an even spread of the overlap).
MAX_POINTS = 20_000
#: Below this similarity the frames are taken to share too little structure.
MIN_SIMILARITY = 0.5
#: The best search candidate must beat the best different one by this factor.
MIN_MARGIN = 1.15


@dataclass(frozen=True)
class SpatialFit:
    """A fitted camera transform and how much to trust it.

    Attributes
    ----------
    transform : CameraTransform
    similarity : float
        Correlation of the LR frames with the HR frames seen through the transform (after
        the best cubic response curve), over the overlap (1 is perfect).
    margin : float
        Phase-correlation peak of the best search candidate over that of the best
        candidate with another mirror, a ratio off by more than 10 % or a rotation off by
        more than 5 degrees.
    residual : float
        RMS misalignment left in the four quarters of the overlap, in LR pixels.
    pairs : int
        Frame pairs used.
    """

    transform: CameraTransform
    similarity: float
    margin: float
    residual: float
    pairs: int


def _structure(image: np.ndarray) -> np.ndarray:
    """Gradient magnitude, zero mean and unit spread: edges, whatever the camera's units."""
    g = gaussian_gradient_magnitude(np.asarray(image, np.float64), 1.0)
    return (g - g.mean()) / (g.std() + 1e-12)


def _shrink(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean of ``factor x factor`` blocks (the frame cropped to whole blocks)."""
    if factor == 1:
        return np.asarray(image, np.float64)
    h, w = (s - s % factor for s in image.shape)
    return np.asarray(image[:h, :w], np.float64).reshape(
        h // factor, factor, w // factor, factor
    ).mean(axis=(1, 3))


def footprint_blur(hr_frame: np.ndarray, transform: CameraTransform) -> np.ndarray:
    """The HR frame averaged over an LR pixel's footprint around each HR pixel.

    An LR pixel covers ``ratio x ratio`` HR pixels; the average over that box is close to a
    Gaussian of the box's standard deviation (``ratio / sqrt(12)``), so sampling the
    result at an LR pixel centre is what the LR camera would record there.
    """
    sigma = (transform.ratio_y / math.sqrt(12), transform.ratio_x / math.sqrt(12))
    return gaussian_filter(np.asarray(hr_frame, np.float64), sigma)


def _sample(blurred: np.ndarray, hr_points: np.ndarray) -> np.ndarray:
    return map_coordinates(blurred, hr_points.T, order=1, mode="constant", cval=np.nan)


def predict_lr(hr_frame: np.ndarray, transform: CameraTransform, points: np.ndarray) -> np.ndarray:
    """What the LR camera would record at LR pixel centres ``points (K, 2)``, from an HR frame.

    NaN where the pixel lies outside the HR frame.
    """
    return _sample(footprint_blur(hr_frame, transform), transform.to_hr(points))


def _candidate(ratio: float, angle: float, flip: tuple[bool, bool], hr_shape, lr_shape,
               shift=(0.0, 0.0), ratio_x: float | None = None) -> CameraTransform:
    return CameraTransform(
        ratio_y=ratio, ratio_x=ratio if ratio_x is None else ratio_x, rotation_deg=angle,
        flip_y=flip[0], flip_x=flip[1], shift_y=shift[0], shift_x=shift[1],
        hr_shape=hr_shape, lr_shape=lr_shape,
    )


def _search(lr_frames, hr_frames, ratios, angles, flips):
    """The best candidates of the coarse search: (score, ratio, angle, flip, shift) sorted."""
    h, w = lr_frames[0].shape
    factor = max(1, math.ceil(max(h, w) / SEARCH_SIZE))
    small = [_structure(_shrink(f, factor)) for f in lr_frames]
    sh, sw = small[0].shape
    # Both images sit in a canvas twice the LR size, so that any shift up to the LR size
    # is found without wrapping around.
    ch, cw = 2 * sh, 2 * sw
    lr_spectra = []
    for image in small:
        canvas = np.zeros((ch, cw))
        canvas[sh // 2 : sh // 2 + sh, sw // 2 : sw // 2 + sw] = image
        lr_spectra.append(np.fft.rfft2(canvas))
    # Canvas pixel centres in LR coordinates (the LR frame's centre at the canvas centre).
    rows, cols = np.mgrid[0:ch, 0:cw]
    canvas_points = np.stack(
        [(rows - ch / 2 + 0.5) * factor + (h - 1) / 2,
         (cols - cw / 2 + 0.5) * factor + (w - 1) / 2],
        axis=-1,
    ).reshape(-1, 2)
    hr_shape = hr_frames[0].shape
    results = []
    for ratio in ratios:
        # Smooth the HR frames to the resolution of the search canvas before sampling them.
        sigma = 0.5 * ratio * factor
        structure = [_structure(gaussian_filter(np.asarray(f, np.float64), sigma))
                     for f in hr_frames]
        for flip in flips:
            for angle in angles:
                t = _candidate(ratio, angle, flip, hr_shape, (h, w))
                at = t.to_hr(canvas_points).T
                power = 0.0
                for spectrum, image in zip(lr_spectra, structure, strict=True):
                    drawn = map_coordinates(image, at, order=1, mode="constant", cval=0.0)
                    cross = spectrum * np.conj(np.fft.rfft2(drawn.reshape(ch, cw)))
                    power = power + cross / (np.abs(cross) + 1e-12)
                correlation = np.fft.irfft2(power / len(lr_spectra), s=(ch, cw))
                peak = np.unravel_index(np.argmax(correlation), correlation.shape)
                shift = [(p if p < n // 2 else p - n) for p, n in zip(peak, (ch, cw), strict=True)]
                results.append((float(correlation[peak]), ratio, angle, flip,
                                (shift[0] * factor, shift[1] * factor)))
    results.sort(key=lambda r: -r[0])
    return results


def _margin(results) -> float:
    best = results[0]
    for other in results[1:]:
        if (other[3] != best[3] or abs(math.log(other[1] / best[1])) > math.log(1.1)
                or abs(other[2] - best[2]) > 5.0):
            return best[0] / max(other[0], 1e-12)
    return float("inf")


def overlap_points(transform: CameraTransform, margin: float) -> np.ndarray:
    """LR pixel centres whose whole pixel (plus ``margin`` LR pixels) lies in the HR frame."""
    h, w = transform.lr_shape
    rows, cols = np.mgrid[0:h, 0:w]
    points = np.stack([rows, cols], axis=-1).reshape(-1, 2).astype(np.float64)
    inside = np.ones(len(points), bool)
    reach = 0.5 + margin
    hh, hw = transform.hr_shape
    for dy in (-reach, reach):
        for dx in (-reach, reach):
            p = transform.to_hr(points + [dy, dx])
            inside &= (p[:, 0] >= 0) & (p[:, 0] <= hh - 1) & (p[:, 1] >= 0) & (p[:, 1] <= hw - 1)
    return points[inside]


def _spread(points: np.ndarray, count: int) -> np.ndarray:
    if len(points) <= count:
        return points
    return points[np.linspace(0, len(points) - 1, count).round().astype(int)]


def agreement(lr_values: np.ndarray, predicted: np.ndarray) -> float:
    """How well LR values follow predicted ones, whatever the cameras' responses.

    The correlation of ``lr_values`` with the best cubic polynomial of ``predicted``:
    blind to gains and offsets and to a smooth response curve such as a gamma. (Rank
    correlation would be blind to any monotone curve, but on scenes of a few large flat
    regions its optimum lies beside the truth.) -1 when ``predicted`` has NaNs.
    """
    if np.isnan(predicted).any():
        return -1.0
    x = (predicted - predicted.mean()) / (predicted.std() + 1e-12)
    basis = np.stack([x, x * x, x * x * x, np.ones_like(x)], axis=1)
    coefficients = np.linalg.lstsq(basis, lr_values, rcond=None)[0]
    return float(np.corrcoef(basis @ coefficients, lr_values)[0, 1])


def _agreement(lr_values: list[np.ndarray], blurred, transform, points) -> float:
    """Mean :func:`agreement` of the LR values with the blurred HR frames seen through
    ``transform``."""
    hr_points = transform.to_hr(points)
    return float(np.mean([
        agreement(y, _sample(frame, hr_points))
        for y, frame in zip(lr_values, blurred, strict=True)
    ]))


def _with(fit: CameraTransform, **changes) -> CameraTransform:
    return CameraTransform(**{**{k: getattr(fit, k) for k in fit.__dataclass_fields__}, **changes})


def _refine(lr_frames, hr_frames, start: CameraTransform, anisotropic: bool):
    """Fit ratios, rotation and shift by maximizing the agreement of the frames."""
    points = _spread(overlap_points(start, margin=3.0), MAX_POINTS)
    if len(points) < 64:
        raise ValueError(
            "the two cameras' fields of view overlap by too little to register them "
            f"({len(points)} LR pixels): check that both stacks show the same event."
        )
    # The footprint changes by a few percent while fitting: blurring once is close enough.
    blurred = [footprint_blur(f, start) for f in hr_frames]
    index = points.astype(int)
    lr_values = [f[index[:, 0], index[:, 1]] for f in lr_frames]

    def build(x):
        ratio_y = math.exp(x[0])
        ratio_x = math.exp(x[1]) if anisotropic else ratio_y
        return _with(start, ratio_y=ratio_y, ratio_x=ratio_x, rotation_deg=float(x[2]),
                     shift_y=float(x[3]), shift_x=float(x[4]))

    def cost(x):
        return -_agreement(lr_values, blurred, build(x), points)

    x = np.array([math.log(start.ratio_y), math.log(start.ratio_x), start.rotation_deg,
                  start.shift_y, start.shift_x])
    # Nelder-Mead twice: a wide first simplex finds the basin, a narrow second polishes.
    for step in ((0.02, 0.02, 1.0, 1.0, 1.0), (0.002, 0.002, 0.1, 0.1, 0.1)):
        simplex = np.vstack([x] + [x + np.eye(5)[i] * step[i] for i in range(5)])
        x = minimize(cost, x, method="Nelder-Mead",
                     options=dict(initial_simplex=simplex, xatol=1e-5, fatol=1e-7,
                                  maxiter=2000)).x
    fit = build(x)
    return fit, -cost(x), _residual(lr_frames, blurred, fit, points)


def _residual(lr_frames, blurred, fit: CameraTransform, points) -> float:
    """RMS of the shifts that best align each quarter of the overlap on its own."""
    centre = np.median(points, axis=0)
    shifts = []
    for upper in (True, False):
        for left in (True, False):
            mask = ((points[:, 0] < centre[0]) == upper) & ((points[:, 1] < centre[1]) == left)
            if mask.sum() < 64:
                continue
            quarter = points[mask]
            index = quarter.astype(int)
            values = [f[index[:, 0], index[:, 1]] for f in lr_frames]

            def cost(d, values=values, quarter=quarter):
                moved = _with(fit, shift_y=fit.shift_y + d[0], shift_x=fit.shift_x + d[1])
                return -_agreement(values, blurred, moved, quarter)

            d = minimize(cost, np.zeros(2), method="Nelder-Mead",
                         options=dict(initial_simplex=[[0, 0], [0.3, 0], [0, 0.3]],
                                      xatol=1e-3, fatol=1e-7)).x
            shifts.append(d)
    if not shifts:
        return float("nan")
    return float(np.sqrt(np.mean(np.sum(np.square(shifts), axis=1))))


def register_frames(
    lr_frames,
    hr_frames,
    *,
    ratio_range: tuple[float, float] = (2.0, 8.0),
    max_rotation: float = 10.0,
    mirrors: bool = True,
    anisotropic: bool = True,
) -> SpatialFit:
    """Find the transform from HR-camera pixels to LR pixels from frames taken together.

    Parameters
    ----------
    lr_frames : sequence of ndarray, shape (h, w)
        LR frames (any units).
    hr_frames : sequence of ndarray, shape (H', W')
        HR frames taken at the same times, in the same order (any units).
    ratio_range : (float, float)
        Smallest and largest HR pixels per LR pixel to consider.
    max_rotation : float
        Largest rotation to consider, in degrees either way.
    mirrors : bool
        Consider mirrored HR images too.
    anisotropic : bool
        Fit separate ratios along rows and columns.

    Returns
    -------
    SpatialFit

    Raises
    ------
    ValueError
        When the pairs do not match up, or the frames do not share enough structure for a
        trustworthy fit (the message gives the similarity and margin found).
    """
    lr_frames = [np.asarray(f, np.float64) for f in lr_frames]
    hr_frames = [np.asarray(f, np.float64) for f in hr_frames]
    if not lr_frames or len(lr_frames) != len(hr_frames):
        raise ValueError(
            f"registration needs pairs of frames taken together: got {len(lr_frames)} LR "
            f"and {len(hr_frames)} HR frames."
        )
    low, high = ratio_range
    if not 0 < low <= high:
        raise ValueError(f"ratio_range must satisfy 0 < low <= high, got {ratio_range}.")
    count = max(1, round(math.log(high / low) / math.log(RATIO_STEP)) + 1)
    ratios = np.geomspace(low, high, count)
    angles = np.arange(-max_rotation, max_rotation + 1e-9, ANGLE_STEP) if max_rotation else [0.0]
    flips = [(False, False), (True, False), (False, True), (True, True)] if mirrors else [
        (False, False)]
    results = _search(lr_frames[:SEARCH_PAIRS], hr_frames[:SEARCH_PAIRS], ratios, angles, flips)
    score, ratio, angle, flip, shift = results[0]
    start = _candidate(ratio, angle, flip, hr_frames[0].shape, lr_frames[0].shape, shift)
    fit, similarity, residual = _refine(lr_frames, hr_frames, start, anisotropic)
    margin = _margin(results)
    if similarity < MIN_SIMILARITY or margin < MIN_MARGIN:
        raise ValueError(
            "the LR and HR frames do not share enough structure to register the cameras "
            f"(similarity {similarity:.2f}, need {MIN_SIMILARITY}; search margin "
            f"{margin:.2f}, need {MIN_MARGIN}): use frames where the scene has visible "
            "features, check that they were taken at the same time (the keyframe offset), "
            "or image a target (a grid) with both cameras."
        )
    return SpatialFit(fit, similarity, margin, residual, len(lr_frames))
