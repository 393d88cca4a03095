"""When the HR camera's frames were taken, from the frames themselves.

With the cameras registered in space, keyframe ``j`` seen through the transform
(:func:`~.spatial.predict_lr`) should look like the LR frame taken at the same time,
``offset + j * spacing``. :func:`match_offsets` scores every candidate offset by that
agreement, averaged over a handful of keyframes, and reports the best and the second best
(:func:`~napari_xfusion.registration.register` also scores the spacings next to the one
given). The estimate never replaces the user's setting by itself: the caller decides, and
says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..holdout import spread_evenly
from .spatial import agreement, overlap_points, predict_lr
from .transform import CameraTransform

__all__ = ["OffsetMatch", "match_offsets"]

#: Keyframes compared per candidate offset.
KEYFRAMES = 8


@dataclass(frozen=True)
class OffsetMatch:
    """How well each keyframe offset lines the HR frames up with the LR frames.

    Attributes
    ----------
    scores : dict of int to float
        Mean agreement (1 is perfect) per candidate offset.
    best, second : int
        The offsets with the highest and second-highest scores.
    """

    scores: dict[int, float]
    best: int
    second: int | None

    @property
    def best_score(self) -> float:
        return self.scores[self.best]

    @property
    def second_score(self) -> float:
        return float("nan") if self.second is None else self.scores[self.second]

    def to_dict(self) -> dict:
        return {"best": [self.best, round(self.best_score, 6)],
                "second": None if self.second is None else [self.second,
                                                            round(self.second_score, 6)]}


class _Predictions:
    """Keyframes seen on the LR grid through the transform, computed once each."""

    def __init__(self, hr, transform: CameraTransform) -> None:
        self.hr, self.transform = hr, transform
        points = overlap_points(transform, margin=1.0)
        self.points = points[:: max(1, len(points) // 20_000)]
        self.index = self.points.astype(int)
        self._done: dict[int, np.ndarray] = {}

    def __getitem__(self, j: int) -> np.ndarray:
        if j not in self._done:
            self._done[j] = predict_lr(np.asarray(self.hr[j], np.float64), self.transform,
                                       self.points)
        return self._done[j]


def match_offsets(
    lr, hr, transform: CameraTransform, spacing: int, offsets
) -> OffsetMatch:
    """Score candidate keyframe offsets by how well the keyframes match the LR frames.

    Parameters
    ----------
    lr : array_like, shape (N, h, w)
        The LR stack (any units; frames are read as needed).
    hr : array_like, shape (M, H', W')
        The HR keyframes (any units).
    transform : CameraTransform
        HR-camera pixels to LR pixels.
    spacing : int
        Keyframe spacing ``D``.
    offsets : iterable of int
        Candidate offsets; those that put fewer than two keyframes inside the LR sequence
        are skipped.

    Returns
    -------
    OffsetMatch

    Raises
    ------
    ValueError
        When no candidate puts two keyframes inside the LR sequence.
    """
    n, m = len(lr), len(hr)
    predictions = _Predictions(hr, transform)
    frames: dict[int, np.ndarray] = {}

    def lr_values(t: int) -> np.ndarray:
        if t not in frames:
            frame = np.asarray(lr[t], np.float64)
            frames[t] = frame[predictions.index[:, 0], predictions.index[:, 1]]
        return frames[t]

    scores = {}
    for offset in offsets:
        inside = [j for j in range(m) if 0 <= offset + j * spacing < n]
        if len(inside) < 2:
            continue
        picked = spread_evenly(inside, KEYFRAMES)
        scores[int(offset)] = float(np.mean([
            agreement(lr_values(offset + j * spacing), predictions[j]) for j in picked
        ]))
    if not scores:
        raise ValueError(
            f"no candidate keyframe offset puts two of the {m} keyframes (spacing {spacing}) "
            f"inside the {n} LR frames: check the spacing."
        )
    ranked = sorted(scores, key=lambda o: -scores[o])
    return OffsetMatch(scores, ranked[0], ranked[1] if len(ranked) > 1 else None)
