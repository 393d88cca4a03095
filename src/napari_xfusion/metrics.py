"""Image quality metrics of fused frames against ground truth, as in the paper.

All functions take float frames in the normalized [0, 1] units (``data_range = 1``):

* :func:`psnr` - peak signal-to-noise ratio in dB;
* :func:`aad` - average absolute difference;
* :func:`ssim` - structural similarity (Wang et al. 2004, Gaussian window sigma 1.5, by
  scikit-image);
* :func:`evaluate` - all three per frame, summarized over all frames and over the frames
  whose HR frame was never given to the method ("unseen").
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from skimage.metrics import structural_similarity

METRICS = ("psnr", "aad", "ssim")


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"cannot compare frames of shapes {a.shape} and {b.shape}.")
    return a, b


def psnr(estimate, truth, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB.

    Parameters
    ----------
    estimate, truth : array_like
        Frames of the same shape.
    data_range : float
        Peak value (1 for normalized frames).

    Returns
    -------
    float
        ``10 log10(data_range^2 / MSE)``; ``inf`` for identical frames.
    """
    a, b = _pair(estimate, truth)
    mse = float(np.mean((a - b) ** 2))
    if mse == 0.0:
        return float("inf")
    return float(10.0 * np.log10(data_range**2 / mse))


def aad(estimate, truth) -> float:
    """Average absolute difference (mean of ``|estimate - truth|``)."""
    a, b = _pair(estimate, truth)
    return float(np.mean(np.abs(a - b)))


def ssim(estimate, truth, data_range: float = 1.0, sigma: float = 1.5) -> float:
    """Mean structural similarity of two 2-D frames (Wang et al. 2004).

    scikit-image's ``structural_similarity`` with Gaussian-weighted local statistics
    (``sigma``, an 11-pixel window for 1.5), ``K1 = 0.01``, ``K2 = 0.03`` and population
    (not sample) covariances, the paper's definition; the mean leaves out the 5-pixel
    border where the window is truncated.

    Parameters
    ----------
    estimate, truth : array_like, shape (y, x)
        At least as large as the window (11 x 11 pixels for ``sigma`` 1.5).
    data_range : float
    sigma : float
        Standard deviation of the Gaussian window.

    Returns
    -------
    float
    """
    a, b = _pair(estimate, truth)
    if a.ndim != 2:
        raise ValueError(f"ssim takes 2-D frames, got shape {a.shape}.")
    window = 2 * int(3.5 * sigma + 0.5) + 1
    if min(a.shape) < window:
        raise ValueError(
            f"ssim needs frames of at least {window} x {window} pixels (its window), got "
            f"{a.shape[0]} x {a.shape[1]}."
        )
    return float(structural_similarity(
        a, b, gaussian_weights=True, sigma=sigma, use_sample_covariance=False,
        data_range=data_range,
    ))


def frame_metrics(estimate, truth) -> dict[str, float]:
    """PSNR, AAD and SSIM of one frame, as a dict keyed by :data:`METRICS`."""
    return {
        "psnr": psnr(estimate, truth), "aad": aad(estimate, truth), "ssim": ssim(estimate, truth)
    }


@dataclass
class Evaluation:
    """Per-frame metrics of a fused sequence and their summaries.

    Attributes
    ----------
    frames : list of int
        LR times evaluated.
    keyframe : ndarray of bool
        Whether the HR frame at that time was given to the method.
    values : dict of str to ndarray
        Per-frame values of each metric in :data:`METRICS`.
    """

    frames: list[int]
    keyframe: np.ndarray
    values: dict[str, np.ndarray] = field(default_factory=dict)

    def summary(self) -> dict[str, dict[str, float]]:
        """Mean and median of each metric over ``all`` frames and ``unseen`` frames.

        Returns
        -------
        dict
            ``{"all": {"psnr_mean": ..., "psnr_median": ..., ...}, "unseen": {...}}``;
            a group with no frames has NaN entries. Infinite PSNRs (exact frames) are
            left out of the PSNR mean so that one exact frame does not make it infinite.
        """
        out: dict[str, dict[str, float]] = {}
        for group, mask in (("all", np.ones_like(self.keyframe)), ("unseen", ~self.keyframe)):
            row: dict[str, float] = {"frames": float(mask.sum())}
            for name in METRICS:
                v = self.values[name][mask]
                v = v[np.isfinite(v)]
                row[f"{name}_mean"] = float(v.mean()) if v.size else float("nan")
                row[f"{name}_median"] = float(np.median(v)) if v.size else float("nan")
            out[group] = row
        return out

    def write_csv(self, path: str | Path) -> None:
        """Write one row per frame: ``frame, keyframe, psnr, aad, ssim``."""
        with open(path, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["frame", "keyframe", *METRICS])
            for i, t in enumerate(self.frames):
                writer.writerow(
                    [t, int(self.keyframe[i])]
                    + [f"{self.values[name][i]:.6g}" for name in METRICS]
                )


def evaluate(
    fused: Iterable,
    truth,
    keyframe_mask: Sequence[bool] | np.ndarray,
    frames: Sequence[int] | None = None,
) -> Evaluation:
    """Per-frame PSNR, AAD and SSIM of a fused sequence against ground truth.

    Parameters
    ----------
    fused : iterable of array_like
        Fused frames in the order of ``frames`` (a stack, or a generator of frames, so
        that long sequences are compared frame by frame).
    truth : array_like, shape (N, H, W)
        Ground-truth HR frames, indexed by LR time.
    keyframe_mask : array_like of bool, shape (N,)
        True at the LR times where an HR frame was given to the method.
    frames : sequence of int, optional
        LR times of the fused frames; default ``0, 1, 2, ...``.

    Returns
    -------
    Evaluation
    """
    keyframe_mask = np.asarray(keyframe_mask, dtype=bool)
    times: list[int] = []
    values: dict[str, list[float]] = {name: [] for name in METRICS}
    for i, frame in enumerate(fused):
        t = i if frames is None else int(frames[i])
        if not 0 <= t < len(truth):
            raise ValueError(f"fused frame {t} has no ground-truth frame (truth has {len(truth)}).")
        for name, value in frame_metrics(frame, np.asarray(truth[t])).items():
            values[name].append(value)
        times.append(t)
    if not times:
        raise ValueError("there are no fused frames to evaluate.")
    return Evaluation(
        frames=times,
        keyframe=keyframe_mask[times],
        values={name: np.asarray(v) for name, v in values.items()},
    )


def lr_psnr(noisy, clean) -> float:
    """The paper's "LR image PSNR": mean PSNR of noisy LR frames against noise-free ones."""
    noisy, clean = np.asarray(noisy), np.asarray(clean)
    if noisy.shape != clean.shape:
        raise ValueError(
            f"noisy and clean LR stacks differ in shape: {noisy.shape} vs {clean.shape}."
        )
    frames = noisy[None] if noisy.ndim == 2 else noisy
    ref = clean[None] if clean.ndim == 2 else clean
    return float(np.mean([psnr(a, b) for a, b in zip(frames, ref, strict=True)]))
