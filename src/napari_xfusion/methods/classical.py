"""Classical fusion baselines: bicubic interpolation, detail transfer and Bayesian fusion.

Plain functions on arrays come first, the registered :class:`~napari_xfusion.methods.FusionMethod`
classes last:

* :func:`bicubic_upsample` - bicubic interpolation of LR frames, the floor every fusion
  method must beat (registered as ``bicubic``);
* :func:`detail_transfer` - bicubic LR ``t`` plus the high frequencies of the two bracketing
  HR keyframes, weighted by their distance in time (``transfer``);
* :func:`bayesian_fusion` - the Bayesian data fusion of Xue, Leung & Fung (2017) as the
  paper's supplementary section 7.1.4 uses it: a temporal Gaussian prior from the keyframes,
  updated with LR ``t`` through the binning degradation model (``bayes``).

All frames are float32 in the normalized [0, 1] units; HR frames are ``scale`` times the LR
size in both axes. Interpolation runs through PyTorch (CPU is enough): the same bicubic
kernel as ``torch.nn.functional.interpolate(mode="bicubic", align_corners=False)``, on the
same pixel grid as the bilinear base of the neural models.

References
----------
Xue, J., Leung, Y., Fung, T. (2017). A Bayesian data fusion approach to spatio-temporal
fusion of remotely sensed images. Remote Sensing 9(12), 1310.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..checks import check_scale
from ..simulate import bin_frames
from ..streaming import FusedFrame, output_times
from ..timeline import FrameInputs, Timeline, keyframe_position
from .base import PerFrameMethod, register

#: LR frames upsampled per PyTorch call when the bicubic method streams a sequence.
BICUBIC_BATCH = 16
#: Keyframe / LR pairs (evenly spread over the sequence) used to calibrate the degradation.
CALIBRATION_PAIRS = 8
# Floor of the prior variance: keeps the Kalman gain defined where a cluster's detail is
# perfectly predictable (a static, noise-free scene) without changing any real variance.
_MIN_VARIANCE = 1e-12


# --------------------------------------------------------------------------------------
# Bicubic interpolation


def bicubic_upsample(frames, scale: int, *, clip: bool = True) -> np.ndarray:
    """Bicubic ``scale`` x upsampling of one LR frame or a stack of them.

    Uses ``torch.nn.functional.interpolate(mode="bicubic", align_corners=False)``: pixel
    centres as in binning, so that HR pixel block ``(i, j)`` lies under LR pixel ``(i, j)``.
    A stack is interpolated in one call, which is much faster per frame than a loop.

    Parameters
    ----------
    frames : array_like, shape (h, w) or (n, h, w)
        LR frame(s).
    scale : int
        Upsampling factor ``s`` (>= 1).
    clip : bool
        Clip the result to [0, 1]; bicubic overshoots at sharp edges. Turn it off to take
        differences of interpolated frames without a bias.

    Returns
    -------
    ndarray, shape (s*h, s*w) or (n, s*h, s*w), float32
    """
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
        raise ValueError(f"scale must be a whole number >= 1, got {scale!r}.")
    arr = np.asarray(frames, dtype=np.float32)
    if arr.ndim not in (2, 3):
        raise ValueError(
            f"expected an LR frame (h, w) or a stack (n, h, w), got an array of shape {arr.shape}."
        )
    stack = torch.from_numpy(np.ascontiguousarray(arr.reshape(-1, 1, *arr.shape[-2:])))
    with torch.no_grad():
        out = F.interpolate(stack, scale_factor=int(scale), mode="bicubic", align_corners=False)
        if clip:
            out = out.clamp_(0.0, 1.0)
    return out.numpy().reshape(*arr.shape[:-2], *out.shape[-2:])


def high_frequencies(frames, scale: int) -> np.ndarray:
    """What binning by ``scale`` loses and bicubic interpolation does not bring back.

    ``x - bicubic(bin(x))``: the detail that has to be added to an interpolated LR frame to
    recover the HR frame ``x``. Frame sizes that are not multiples of ``scale`` are padded by
    repeating the edge pixels for the binning and cropped back.

    Parameters
    ----------
    frames : array_like, shape (y, x) or (n, y, x)
    scale : int

    Returns
    -------
    ndarray, same shape, float32
    """
    arr = np.asarray(frames, dtype=np.float32)
    y, x = arr.shape[-2:]
    pad = [(0, 0)] * (arr.ndim - 2) + [(0, -y % scale), (0, -x % scale)]
    padded = np.pad(arr, pad, mode="edge") if any(p for _, p in pad) else arr
    smooth = bicubic_upsample(bin_frames(padded, scale), scale, clip=False)
    return arr - smooth[..., :y, :x]


# --------------------------------------------------------------------------------------
# Detail transfer


def keyframe_weights(t: float, k0: float, k1: float) -> tuple[float, float]:
    """Linear time weights of the keyframes at ``k0 < k1`` for output time ``t``.

    ``w0 = (k1 - t) / (k1 - k0)`` clipped to [0, 1] and ``w1 = 1 - w0``: outside
    ``[k0, k1]`` (at the sequence ends) all weight goes to the nearer keyframe.
    """
    w1 = float(np.clip(keyframe_position(t, k0, k1), 0.0, 1.0))
    return 1.0 - w1, w1


def detail_transfer(lr_t, hr_k0, hr_k1, w0: float, scale: int) -> np.ndarray:
    """Bicubic LR ``t`` plus the time-weighted high frequencies of two HR keyframes.

    ``bicubic(LR_t) + w0 * D(HR_k0) + (1 - w0) * D(HR_k1)`` with
    ``D(x) = x - bicubic(bin(x))`` (:func:`high_frequencies`), clipped to [0, 1].

    Each keyframe's detail is taken against its own binned image, not against the LR frame
    recorded at the keyframe time. Both are the same for noise-free binned LR, but the binned
    keyframe carries no LR noise (which bicubic(LR_k) would copy into every fused frame), and
    it needs no LR frame at the keyframe time, which may not exist for real dual-camera data.
    On the noisy test scenes this is the better of the two.

    Parameters
    ----------
    lr_t : array_like, shape (h, w)
        LR frame at the output time.
    hr_k0, hr_k1 : array_like, shape (H, W)
        The HR keyframes before and after the output time.
    w0 : float
        Weight of ``hr_k0`` in [0, 1] (:func:`keyframe_weights`).
    scale : int
        ``H / h``.

    Returns
    -------
    ndarray, shape (H, W), float32
    """
    if not 0.0 <= w0 <= 1.0:
        raise ValueError(f"the keyframe weight w0 must lie in [0, 1], got {w0!r}.")
    keys = np.stack([np.asarray(hr_k0, np.float32), np.asarray(hr_k1, np.float32)])
    check_scale(np.shape(lr_t), keys.shape, scale)
    detail = high_frequencies(keys, scale)
    fused = bicubic_upsample(lr_t, scale, clip=False) + w0 * detail[0] + (1.0 - w0) * detail[1]
    return np.clip(fused, 0.0, 1.0, out=fused)


# --------------------------------------------------------------------------------------
# Bayesian fusion


@dataclass(frozen=True)
class Degradation:
    """The linear degradation model from an HR frame ``x`` to an LR frame ``y``.

    ``y = gain * bin(x) + offset + e`` with Gaussian noise ``e ~ N(0, noise_var)`` per LR
    pixel, ``bin`` being the mean over non-overlapping ``s x s`` blocks.

    Attributes
    ----------
    gain, offset : float
        Intensity scaling between the two cameras (1 and 0 for simulated LR data).
    noise_var : float
        Variance of the LR noise (and of everything the model leaves out), in squared
        normalized units.
    """

    gain: float = 1.0
    offset: float = 0.0
    noise_var: float = 0.0

    def __post_init__(self) -> None:
        if not (np.isfinite(self.gain) and self.gain > 0):
            raise ValueError(
                f"degradation gain must be > 0, got {self.gain!r}: LR and HR frames taken at "
                "the same time should be positively correlated; check the keyframe offset."
            )
        if not (np.isfinite(self.noise_var) and self.noise_var >= 0):
            raise ValueError(f"noise variance must be >= 0, got {self.noise_var!r}.")


def calibrate_degradation(lr, hr, scale: int) -> Degradation:
    """Fit the :class:`Degradation` model to LR and HR frames taken at the same times.

    Least squares of ``y = gain * bin(x) + offset`` over all pixels of all pairs; the noise
    variance is the mean squared residual.

    Parameters
    ----------
    lr : array_like, shape (n, h, w)
        LR frames at the keyframe times.
    hr : array_like, shape (n, H, W)
        The HR keyframes.
    scale : int

    Returns
    -------
    Degradation
    """
    y = np.asarray(lr, dtype=np.float64).ravel()
    c = bin_frames(np.asarray(hr, dtype=np.float32), scale).astype(np.float64).ravel()
    if y.size != c.size:
        raise ValueError(
            f"{np.shape(lr)} LR frames do not pair with {np.shape(hr)} HR frames at scale {scale}."
        )
    spread = c.var()
    # Flat frames say nothing about the gain; keep the offset only.
    gain = float(np.mean((c - c.mean()) * (y - y.mean())) / spread) if spread > 1e-12 else 1.0
    offset = float(y.mean() - gain * c.mean())
    residual = y - gain * c - offset
    return Degradation(gain=gain, offset=offset, noise_var=float(np.mean(residual**2)))


def _kmeans(points: np.ndarray, k: int, iterations: int) -> np.ndarray:
    """Centroids of ``k`` clusters of ``points`` (n, d) by Lloyd's algorithm.

    Deterministic: the initial centroids are the points at the ``k`` evenly spaced quantiles
    of the point means, so that the same frame always gives the same clusters.
    """
    n, d = points.shape
    order = np.argsort(points.mean(axis=1), kind="stable")
    centroids = points[order[((np.arange(k) + 0.5) * n / k).astype(int)]].copy()
    for _ in range(iterations):
        labels = _nearest(points, centroids)
        counts = np.bincount(labels, minlength=k)
        sums = np.stack([np.bincount(labels, points[:, j], minlength=k) for j in range(d)], 1)
        filled = counts > 0
        # An emptied cluster keeps its centroid rather than dying: k stays what was asked.
        centroids[filled] = sums[filled] / counts[filled, None]
    return centroids


def _nearest(points: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    # |p - c|^2 = |p|^2 - 2 p.c + |c|^2, and |p|^2 does not change the argmin. Summed per
    # coordinate rather than by a matrix product: a BLAS product this thin is up to ten
    # times slower, and float32 is precise enough to compare intensities.
    c = centroids.astype(np.float32)
    p = points.astype(np.float32, copy=False)
    scores = np.broadcast_to((c**2).sum(axis=1), (len(p), len(c))).copy()
    for j in range(p.shape[1]):
        scores -= 2.0 * p[:, j : j + 1] * c[:, j]
    return scores.argmin(axis=1)


def _detail_regression(
    detail: np.ndarray, labels: np.ndarray, k: int, lag_stretch: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster Gaussian conditioning of the detail at ``t`` on the keyframe details.

    Parameters
    ----------
    detail : ndarray, shape (n, 3)
        Detail series ``(k0, t, k1)`` of the n LR pixels.
    labels : ndarray, shape (n,)
        Cluster of each pixel.

    Returns
    -------
    beta : ndarray, shape (k, 2)
        ``Sigma_to Sigma_oo^-1`` of each cluster.
    variance : ndarray, shape (k,)
        ``Sigma_tt - Sigma_to Sigma_oo^-1 Sigma_ot``.
    """
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    outer = (detail[:, :, None] * detail[:, None, :]).reshape(len(detail), 9)
    sums = np.stack([np.bincount(labels, detail[:, j], minlength=k) for j in range(3)], 1)
    products = np.stack([np.bincount(labels, outer[:, j], minlength=k) for j in range(9)], 1)
    n = np.maximum(counts, 1.0)[:, None]
    mean = sums / n
    cov = (products / n).reshape(k, 3, 3) - mean[:, :, None] * mean[:, None, :]
    sd = np.sqrt(np.maximum(np.diagonal(cov, axis1=1, axis2=2), _MIN_VARIANCE))
    corr = np.clip(cov / (sd[:, :, None] * sd[:, None, :]), -1.0, 1.0)
    corr = np.sign(corr) * np.abs(corr) ** lag_stretch
    corr[:, np.arange(3), np.arange(3)] = 1.0
    # Raising correlations to a power can leave a matrix that is not positive semi-definite.
    eigval, eigvec = np.linalg.eigh(corr)
    corr = (eigvec * np.maximum(eigval, 1e-9)[:, None, :]) @ eigvec.transpose(0, 2, 1)
    cov = corr * sd[:, :, None] * sd[:, None, :]
    obs = [0, 2]
    s_oo = cov[:, obs][:, :, obs]
    s_to = cov[:, 1, obs]
    beta = np.linalg.solve(s_oo, s_to[:, :, None])[:, :, 0]
    variance = cov[:, 1, 1] - (beta * s_to).sum(axis=1)
    # Clusters too small for a covariance fall back to plain interpolation.
    small = counts < 4
    beta[small] = 0.0
    variance[small] = cov[small, 1, 1]
    return beta, np.maximum(variance, _MIN_VARIANCE)


def _check_bayes_options(n_clusters: int, iterations: int, lag_stretch: float) -> None:
    for name, value, low in (("n_clusters", n_clusters, 1), ("iterations", iterations, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be a whole number >= {low}, got {value!r}.")
    if not (np.isfinite(lag_stretch) and lag_stretch >= 1.0):
        raise ValueError(
            f"lag_stretch must be >= 1 (1 = same temporal correlation at both scales), "
            f"got {lag_stretch!r}."
        )


def bayesian_fusion(
    lr_t,
    hr_k0,
    hr_k1,
    scale: int,
    degradation: Degradation = Degradation(),
    *,
    n_clusters: int = 10,
    iterations: int = 8,
    lag_stretch: float = 2.0,
) -> np.ndarray:
    r"""Bayesian spatio-temporal fusion after Xue, Leung & Fung (2017).

    The HR frame ``x_t`` is estimated as the mean of its Gaussian posterior given the two HR
    keyframes (a temporal prior) and LR ``t`` (the likelihood of a linear degradation model);
    the Kalman update has a closed form per LR pixel because binning blocks do not overlap.

    **Model.** Write ``u`` for bicubic x``s`` interpolation, ``B`` for ``s x s`` binning and
    ``c = (B x_k0, y_t, B x_k1)`` for the coarse series at the three times, with
    ``y_t = (LR_t - offset) / gain`` in HR units.

    1. *Pixel-wise mean.* The mean vector of HR pixel ``i`` over the three times is the
       interpolated coarse series ``m_i = u(c)_i``; the detail ``d = x - m`` is modelled as
       zero-mean Gaussian.
    2. *Clusters.* K-means (``n_clusters``, Euclidean) groups the LR pixels by their coarse
       series ``c``; each HR pixel takes the cluster whose centroid is nearest to ``m_i``.
    3. *Temporal covariance.* For each cluster ``k`` the 3 x 3 covariance ``Sigma_k`` of the
       detail series ``(d_k0, d_t, d_k1)`` is learned from the LR-scale detail
       ``c - u(B c)`` of its LR pixels (assumed to carry the same temporal correlations as
       the HR detail), with each correlation ``rho`` replaced by
       ``sign(rho) |rho|^lag_stretch``.
    4. *Prediction* (Gaussian conditioning on the keyframes, ``o = (k0, k1)``):

       .. math::
          \mu_i = m_{t,i} + \Sigma_{to}\Sigma_{oo}^{-1}(x_{o,i} - m_{o,i}), \quad
          v_i = \Sigma_{tt} - \Sigma_{to}\Sigma_{oo}^{-1}\Sigma_{ot}

       with the covariance of pixel ``i``'s cluster; pixels are independent a priori.
    5. *Update* with ``y_t = B x_t + e``, ``e ~ N(0, sigma^2)`` (``sigma^2 =
       noise_var / gain^2``). For the block ``b`` of ``s^2`` HR pixels under LR pixel
       ``b``:

       .. math::
          \hat x_i = \mu_i + \frac{v_i / s^2}{\sum_{j \in b} v_j / s^4 + \sigma^2}
          \left(y_{t,b} - \frac{1}{s^2}\sum_{j \in b} \mu_j\right)

       With no noise and equal ``v_i`` in a block this is the orthogonal projection onto
       the HR frames whose binning is ``y_t``, which can only bring the estimate closer
       to the truth. The result is clipped to [0, 1].

    **Choices where the paper's description is open.** The paper learns each cluster's mean
    vector and covariance from three LR frames and calibrates the degradation on HR and LR
    frames taken at the same times. Here the coarse values at the keyframe times are the
    binned keyframes rather than the LR frames recorded then: identical without noise, free
    of LR noise with it (so noise cannot bias ``Sigma_oo`` and ``Sigma_to``), and available
    for any keyframe spacing; the LR frames at ``t - r`` and ``t + r`` are not used. The
    mean vectors are pixel-wise (interpolated) rather than the cluster centroids, which
    would make the prior flat within a cluster and the result blocky. ``lag_stretch``
    accounts for fine detail losing its correlation faster than the coarse features it is
    learned from (a shift of ``v`` HR pixels is only ``v / s`` LR pixels): with an
    exponential correlation ``rho(dt) = exp(-dt / tau)`` it makes ``tau`` ``lag_stretch``
    times shorter at HR. 1 is Xue et al.'s scale-invariance assumption, ``s`` the limit of
    pure translation; 2 fused best on scenes with both static and moving texture.

    Parameters
    ----------
    lr_t : array_like, shape (h, w)
        LR frame at the output time.
    hr_k0, hr_k1 : array_like, shape (H, W)
        HR keyframes before and after it.
    scale : int
        ``H / h``.
    degradation : Degradation
        LR camera model (:func:`calibrate_degradation`); identity without noise by default.
    n_clusters : int
        Number of K-means clusters (the paper uses about 10).
    iterations : int
        K-means iterations.
    lag_stretch : float
        Exponent (>= 1) applied to the LR-learned temporal correlations.

    Returns
    -------
    ndarray, shape (H, W), float32
    """
    _check_bayes_options(n_clusters, iterations, lag_stretch)
    keys = np.stack([np.asarray(hr_k0, np.float32), np.asarray(hr_k1, np.float32)])
    y = (np.asarray(lr_t, np.float32) - degradation.offset) / degradation.gain
    check_scale(y.shape, keys.shape, scale)
    h, w = y.shape
    coarse = np.stack([bin_frames(keys[0], scale), y, bin_frames(keys[1], scale)])
    n_clusters = min(int(n_clusters), h * w)

    series = coarse.reshape(3, -1).T.astype(np.float64)
    centroids = _kmeans(series, n_clusters, iterations)
    labels = _nearest(series, centroids)
    lr_detail = high_frequencies(coarse, scale).reshape(3, -1).T.astype(np.float64)
    beta, variance = _detail_regression(lr_detail, labels, n_clusters, lag_stretch)

    mean = bicubic_upsample(coarse, scale, clip=False)  # (3, H, W)
    big_h, big_w = mean.shape[1:]
    hr_labels = _nearest(mean.reshape(3, -1).T, centroids).reshape(big_h, big_w)
    b = beta[hr_labels].astype(np.float32)
    prior = mean[1] + b[..., 0] * (keys[0] - mean[0]) + b[..., 1] * (keys[1] - mean[2])
    var = variance[hr_labels]

    innovation = y - bin_frames(prior, scale)
    noise_var = degradation.noise_var / degradation.gain**2
    total = bin_frames(var, scale).astype(np.float64) / scale**2 + noise_var
    gain = (innovation / (scale**2 * total)).astype(np.float32)
    blocks = (big_h // scale, scale, big_w // scale, scale)
    fused = prior.reshape(blocks) + var.reshape(blocks).astype(np.float32) * gain[:, None, :, None]
    return np.clip(fused.reshape(big_h, big_w), 0.0, 1.0)


# --------------------------------------------------------------------------------------
# Registered methods


@register
class Bicubic(PerFrameMethod):
    """Bicubic interpolation of LR ``t``; ignores the HR keyframes."""

    name = "bicubic"
    label = "Bicubic interpolation"

    def fuse_frame(self, lr: np.ndarray, hr: np.ndarray, inputs: FrameInputs) -> np.ndarray:
        return bicubic_upsample(lr[1], check_scale(lr.shape, hr.shape))

    def prepare(self, lr, hr, timeline: Timeline) -> None:
        check_scale(np.shape(lr), np.shape(hr), timeline.model.scale)

    def fuse(self, lr, hr, timeline, frames=None, progress=None):
        # HR frames are never read, and LR frames are interpolated in batches.
        self.prepare(lr, hr, timeline)
        scale = timeline.model.scale
        times = output_times(timeline, frames)
        for start in range(0, len(times), BICUBIC_BATCH):
            batch = times[start : start + BICUBIC_BATCH]
            stack = np.stack([np.asarray(lr[t], np.float32) for t in batch])
            images = bicubic_upsample(stack, scale)
            for done, (t, image) in enumerate(zip(batch, images, strict=True), start=start + 1):
                inputs = timeline.inputs(t)
                yield FusedFrame(
                    t=t, image=image, is_keyframe=inputs.is_keyframe, hr_times=inputs.hr_times
                )
                if progress is not None:
                    progress(done, len(times))


@register
class DetailTransfer(PerFrameMethod):
    """Bicubic LR ``t`` plus the keyframes' high frequencies, weighted by time.

    See :func:`detail_transfer`. The weights are linear in time between the bracketing
    keyframes; at the sequence ends (``t`` outside them) the nearer keyframe gets all of it.
    """

    name = "transfer"
    label = "Detail transfer"

    def fuse_frame(self, lr: np.ndarray, hr: np.ndarray, inputs: FrameInputs) -> np.ndarray:
        w0, _ = keyframe_weights(inputs.t, *inputs.hr_times)
        return detail_transfer(lr[1], hr[0], hr[1], w0, check_scale(lr.shape, hr.shape))

    def prepare(self, lr, hr, timeline: Timeline) -> None:
        check_scale(np.shape(lr), np.shape(hr), timeline.model.scale)


@register
class BayesianFusion(PerFrameMethod):
    """Bayesian data fusion (Xue et al. 2017), see :func:`bayesian_fusion`.

    Parameters
    ----------
    n_clusters : int
        K-means clusters of the temporal model.
    iterations : int
        K-means iterations.
    lag_stretch : float
        How much faster HR detail decorrelates in time than the LR-scale detail the
        temporal covariances are learned from (>= 1).
    noise_var : float, optional
        Fix the degradation model to gain 1, offset 0 and this LR noise variance. By default
        :meth:`prepare` calibrates all three on up to :data:`CALIBRATION_PAIRS` keyframes paired
        with the LR frames taken at the same times (Xue et al.'s calibration).

    Attributes
    ----------
    degradation : Degradation
        The degradation model :meth:`fuse_frame` uses: set by :meth:`prepare` (which
        :meth:`fuse` calls); before that the identity with ``noise_var`` (0 if not given).
        Since :meth:`prepare` replaces it, one instance fuses one sequence at a time.
    """

    name = "bayes"
    label = "Bayesian fusion"

    def __init__(
        self,
        n_clusters: int = 10,
        iterations: int = 8,
        lag_stretch: float = 2.0,
        noise_var: float | None = None,
    ) -> None:
        self.options = dict(n_clusters=n_clusters, iterations=iterations, lag_stretch=lag_stretch)
        self.noise_var = noise_var
        self.degradation = Degradation(noise_var=0.0 if noise_var is None else float(noise_var))
        _check_bayes_options(n_clusters, iterations, lag_stretch)

    def settings(self) -> dict:
        return {**self.options, "noise_var": self.noise_var}

    def fuse_frame(self, lr: np.ndarray, hr: np.ndarray, inputs: FrameInputs) -> np.ndarray:
        return bayesian_fusion(
            lr[1], hr[0], hr[1], check_scale(lr.shape, hr.shape), self.degradation, **self.options
        )

    def prepare(self, lr, hr, timeline: Timeline) -> None:
        scale = check_scale(np.shape(lr), np.shape(hr), timeline.model.scale)
        if self.noise_var is None:
            self.degradation = self.calibrate(lr, hr, timeline, scale)

    @staticmethod
    def calibrate(lr, hr, timeline: Timeline, scale: int) -> Degradation:
        """Fit the degradation on keyframes paired with the LR frames taken at their times.

        Up to :data:`CALIBRATION_PAIRS` pairs, evenly spread over the keyframes that fall
        inside the LR sequence; the identity without noise when none does.
        """
        times = timeline.keyframe_times
        inside = np.flatnonzero((times >= 0) & (times < timeline.n_lr))
        if inside.size == 0:
            return Degradation()
        spread = np.linspace(0, inside.size - 1, CALIBRATION_PAIRS).round().astype(int)
        pick = inside[np.unique(spread)]
        return calibrate_degradation(
            np.stack([np.asarray(lr[int(times[j])], np.float32) for j in pick]),
            np.stack([np.asarray(hr[int(j)], np.float32) for j in pick]),
            scale,
        )
