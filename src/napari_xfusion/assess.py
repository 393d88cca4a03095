"""Which method, on this recording? Every method scored on the recording's own keyframes.

A real recording has no ground truth between its keyframes, but each keyframe can be
predicted as if it had not been taken, from the LR frames around its time and its two
neighbouring keyframes (:mod:`napari_xfusion.holdout`), and compared with the frame itself.
Done with every method, this ranks the methods on *this* recording -- its noise, its
motion, its optics -- and :func:`assess` recommends the best.

The neighbours of a keyframe lie ``D`` before and after it, so each prediction bridges
``2 D``, twice what fusion bridges in use: the PSNR estimates are conservative (lower than
the PSNR of the frames fused between keyframes), but the ranking of the methods follows
that of their true PSNR on unseen frames (tested on generated sequences with known ground
truth, ``tests/test_assess.py``).

One exception is measured and corrected: warping keyframes onto the frame being fused
(``stf-aligned``) gains most over short distances, and a prediction across ``D`` hides
that. On the held-out video carphone, EDVR-STF predicting a frame from two true frames
``d`` before and after it gained 0.5-6.9 dB from aligning them at ``d`` = 1-5, and -0.8 to
+1.3 dB at ``d`` = 10; at D = 10 on its first 41 frames the keyframe predictions ranked
``stf`` 0.6 dB above ``stf-aligned``, whose unseen frames were 3.0 dB better. Where the
keyframes move (:func:`~napari_xfusion.alignment.keyframe_motion` at least
:data:`~napari_xfusion.alignment.MOVING`) the recommendation therefore takes EDVR-STF with
aligned keyframes whenever EDVR-STF without them comes out best: on the held-out real
videos (motion 0.29-6.9 LR pixels) aligned keyframes fused better in all 12 settings, by
0.05-4.5 dB. On a still recording (the built-in sample down to 30 dB LR PSNR, the
synthetic sweep scenes down to 40 dB: motion under 0.07) ``stf-aligned`` fuses the
keyframes as they are, so the two tie.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from .alignment import MOVING
from .holdout import holdout_inputs, spread_evenly, usable_keyframes
from .methods import FusionMethod, create_method, method_names
from .metrics import psnr, ssim
from .models.weights import WeightsError
from .streaming import ProgressCallback
from .timeline import Timeline

__all__ = ["Assessment", "MethodScore", "assess", "assessable_keyframes", "candidate_methods"]

#: Keyframes predicted by default: enough for a spread, few enough for seconds on a CPU.
DEFAULT_KEYFRAMES = 12


@dataclass
class MethodScore:
    """How well one method predicted the held-out keyframes.

    Attributes
    ----------
    name : str
        The method's name as given to :func:`assess`.
    label : str
        Its display label.
    psnr, ssim : list of float
        Per keyframe, in the order of :attr:`Assessment.keyframes`.
    seconds : float
        Time taken for all keyframes (preparation included).
    network : str or None
        The network the method runs (``"stf"``, ``"edvr"``), None for a classical one.
    aligns : bool
        Whether it warps the keyframes onto each output time first.
    """

    name: str
    label: str
    psnr: list[float] = field(default_factory=list)
    ssim: list[float] = field(default_factory=list)
    seconds: float = 0.0
    network: str | None = None
    aligns: bool = False

    @property
    def psnr_mean(self) -> float:
        return float(np.mean(self.psnr))

    @property
    def psnr_spread(self) -> float:
        """Standard deviation of the per-keyframe PSNR (0 for one keyframe)."""
        return float(np.std(self.psnr, ddof=1)) if len(self.psnr) > 1 else 0.0

    @property
    def ssim_mean(self) -> float:
        return float(np.mean(self.ssim))

    @property
    def ssim_spread(self) -> float:
        return float(np.std(self.ssim, ddof=1)) if len(self.ssim) > 1 else 0.0


@dataclass
class Assessment:
    """Scores of every method on the recording's keyframes, and the recommendation.

    Attributes
    ----------
    keyframes : list of int
        The HR keyframes predicted, each from its neighbours.
    scores : list of MethodScore
        One per method, in the order given.
    motion : float or None
        :func:`~napari_xfusion.alignment.keyframe_motion` of the recording, measured when
        a method that aligns keyframes is assessed (else None).
    """

    keyframes: list[int]
    scores: list[MethodScore]
    motion: float | None = None

    @property
    def best(self) -> MethodScore:
        """The recommended method: the highest mean PSNR, except that where the keyframes
        move, EDVR-STF on keyframes as they come gives way to the best EDVR-STF on aligned
        ones (module docstring)."""
        best = max(self.scores, key=lambda score: score.psnr_mean)
        if self.prefers_aligned and best.network == "stf" and not best.aligns:
            aligned = [s for s in self.scores if s.network == "stf" and s.aligns]
            return max(aligned, key=lambda score: score.psnr_mean)
        return best

    @property
    def prefers_aligned(self) -> bool:
        """Whether the keyframes move enough for aligned keyframes to be preferred."""
        return self.motion is not None and self.motion >= MOVING

    @property
    def recommended(self) -> str:
        """Name of the method to use on this recording."""
        return self.best.name

    def table(self) -> str:
        """A plain-text table: estimated PSNR and SSIM (mean +- spread) per method."""
        width = max(len(s.name) for s in self.scores)
        lines = [
            f"{'method':<{width}}  {'PSNR (dB)':>14}  {'SSIM':>15}  {'time':>7}",
        ]
        best = self.best
        for s in sorted(self.scores, key=lambda score: -score.psnr_mean):
            mark = "  <- recommended" if s is best else ""
            lines.append(
                f"{s.name:<{width}}  {s.psnr_mean:6.2f} +- {s.psnr_spread:4.2f}  "
                f"{s.ssim_mean:6.4f} +- {s.ssim_spread:.4f}  {s.seconds:6.1f}s{mark}"
            )
        if self.motion is not None:
            lines.append(
                f"keyframe motion: {self.motion:.2f} LR pixels"
                + (" (the keyframes move: aligning them gains more at the distances fusion "
                   "bridges than these predictions show)" if self.prefers_aligned else "")
            )
        return "\n".join(lines)


def assessable_keyframes(timeline: Timeline, count: int | None = DEFAULT_KEYFRAMES) -> list[int]:
    """The keyframes that :func:`assess` predicts.

    Keyframes inside the LR sequence with other keyframes on both sides (so that each is
    predicted as fused frames are, between two keyframes); if there are none, the usable
    ones at the ends. At most ``count`` of them, evenly spread (all for None).

    Raises
    ------
    ValueError
        When fewer than 3 keyframes exist, or none lies inside the LR sequence.
    """
    if timeline.n_hr < 3:
        raise ValueError(
            f"assessing the methods needs at least 3 HR keyframes (one predicted from two "
            f"others), found {timeline.n_hr}: use a longer recording or a smaller spacing."
        )
    usable = usable_keyframes(timeline)
    if not usable:
        raise ValueError(
            "no HR keyframe lies inside the LR sequence, so none can be predicted: check the "
            "keyframe spacing and offset."
        )
    interior = [j for j in usable if 0 < j < timeline.n_hr - 1]
    return spread_evenly(interior or usable, count)


def assess(
    lr,
    hr,
    timeline: Timeline,
    methods: Mapping[str, FusionMethod],
    *,
    keyframes: int | None = DEFAULT_KEYFRAMES,
    lr_smoothed=None,
    progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Assessment:
    """Score every method by predicting the recording's keyframes from their neighbours.

    Parameters
    ----------
    lr : array_like, shape (N, h, w)
        Normalized LR stack in [0, 1] (numpy or dask; frames are read on demand).
    hr : array_like, shape (M, s*h, s*w)
        Normalized HR keyframes in [0, 1].
    timeline : Timeline
        The time model of the two stacks.
    methods : mapping of str to FusionMethod
        The methods to compare, by the name to report them under (e.g. a calibrated
        network beside the bundled one).
    keyframes : int or None
        Most keyframes to predict (evenly spread); None for all (see
        :func:`assessable_keyframes`).
    lr_smoothed : array_like, optional
        The LR stack through the LR filter's smooth form, which the methods without a noise
        model read (:attr:`napari_xfusion.pipeline.FusionInputs.lr_smoothed`); None where
        no filter was applied.
    progress : callable, optional
        Called as ``progress(done, total)`` after each prediction.
    should_stop : callable, optional
        Asked after each prediction; when it returns True, :class:`InterruptedError` is
        raised (how a GUI cancels).

    Returns
    -------
    Assessment
        Per method the PSNR and SSIM of every predicted keyframe, and the recommendation;
        with EDVR-STF on aligned keyframes among the methods, also the keyframe motion (a
        few optical flows on the LR grid), which can decide between it and plain EDVR-STF.

    Notes
    -----
    Each prediction bridges ``2 D`` instead of ``D``, so the figures are conservative
    estimates of the unseen-frame quality; they are meant for ranking the methods. Methods
    that fit a model to the whole recording first (Bayesian fusion's degradation model)
    fit it on all keyframes, the predicted one included; it has three parameters, so the
    predicted frame has no measurable say in them.
    """
    if not methods:
        raise ValueError("give at least one method to assess.")
    chosen = assessable_keyframes(timeline, keyframes)
    everyone = list(range(timeline.n_hr))
    total, done = len(chosen) * len(methods), 0
    scores = []
    for name, method in methods.items():
        score = MethodScore(name, method.label, network=method.arch,
                            aligns=method.align_keyframes)
        started = time.perf_counter()
        reads = method.lr_stack(lr, lr_smoothed)
        method.prepare(reads, hr, timeline)
        for j in chosen:
            inputs = holdout_inputs(timeline, j, everyone)
            lr_frames = np.stack([np.asarray(reads[i], np.float32) for i in inputs.lr])
            hr_frames = np.stack([np.asarray(hr[i], np.float32) for i in inputs.hr])
            truth = np.asarray(hr[j], np.float32)
            estimate = method.fuse_frame(lr_frames, hr_frames, inputs)
            score.psnr.append(psnr(estimate, truth))
            score.ssim.append(ssim(estimate, truth))
            done += 1
            if progress is not None:
                progress(done, total)
            if should_stop is not None and should_stop():
                raise InterruptedError("the assessment was cancelled.")
        score.seconds = time.perf_counter() - started
        scores.append(score)
    # A method that aligns keyframes measured the motion in prepare, to decide whether to.
    motion = next((m.motion for m in methods.values() if m.align_keyframes), None)
    return Assessment(chosen, scores, motion)


def candidate_methods(
    options: Callable[[str], dict] = lambda name: {},
) -> tuple[dict[str, FusionMethod], dict[str, str]]:
    """Every registered method that can run here, built with ``options(name)``.

    Returns
    -------
    methods : dict of str to FusionMethod
        By name, in registry order.
    skipped : dict of str to str
        Methods that cannot run (no weights for a network), with the reason.
    """
    methods, skipped = {}, {}
    for name in method_names():
        try:
            methods[name] = create_method(name, **options(name))
        except WeightsError as exc:
            skipped[name] = str(exc)
    return methods, skipped
