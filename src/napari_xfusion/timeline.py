"""The time model: which LR and HR frames feed the fused frame at each LR time.

LR frame ``i`` is taken at time ``i``. HR keyframe ``j`` is taken at time
``offset + j * spacing``. For an output time ``t``:

* the LR inputs are ``t - r, t, t + r`` clamped to ``[0, N - 1]``;
* the HR inputs are the keyframes ``k0 <= t < k1``; at or past the last keyframe they are
  the last two keyframes, before the first keyframe the first two;
* ``t`` is a *keyframe time* when an HR frame was taken at ``t``. The fused output there is
  still the model's prediction; the flag lets metrics report the frames whose HR was never
  seen ("unseen") separately.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from .config import TimeModel


@dataclass(frozen=True)
class FrameInputs:
    """The inputs of one fused frame.

    Attributes
    ----------
    t : int
        Output time, an LR frame index.
    lr : tuple of int
        LR frame indices ``(t - r, t, t + r)`` after clamping; the middle one is ``t``.
    hr : tuple of int
        HR keyframe indices ``(j0, j1)`` into the HR stack.
    hr_times : tuple of int
        LR times of those keyframes.
    is_keyframe : bool
        Whether an HR frame was taken at ``t``.
    """

    t: int
    lr: tuple[int, int, int]
    hr: tuple[int, int]
    hr_times: tuple[int, int]
    is_keyframe: bool

    @property
    def position(self) -> float:
        """Where ``t`` lies between its keyframes: 0 at ``k0``, 1 at ``k1``.

        See :func:`keyframe_position`.
        """
        return keyframe_position(self.t, *self.hr_times)


@dataclass(frozen=True)
class Timeline:
    """The time model applied to two stacks of known lengths.

    Parameters
    ----------
    n_lr : int
        Number of LR frames ``N``.
    n_hr : int
        Number of HR keyframes ``M``.
    model : TimeModel
        Spacing, offset, separation and scale.

    Raises
    ------
    ValueError
        When the settings cannot describe the two stacks, with the reason and the fix.
    """

    n_lr: int
    n_hr: int
    model: TimeModel

    def __post_init__(self) -> None:
        m = self.model
        if self.n_lr < 1:
            raise ValueError("the LR stack has no frames.")
        if self.n_hr < 2:
            raise ValueError(
                f"the HR stack has {self.n_hr} frame(s); fusion needs at least 2 HR keyframes "
                "to bracket each LR time. Load an HR stack with two or more frames."
            )
        if self.n_lr > 1 and m.separation > self.n_lr - 1:
            raise ValueError(
                f"LR separation r={m.separation} does not fit a sequence of {self.n_lr} LR "
                f"frames: choose r <= {self.n_lr - 1}."
            )
        first, last = self.keyframe_time(0), self.keyframe_time(self.n_hr - 1)
        if last < 0 or first > self.n_lr - 1:
            raise ValueError(
                f"with spacing D={m.spacing} and offset {m.offset}, the {self.n_hr} HR keyframes "
                f"fall at LR times {first}..{last}, outside the LR sequence 0..{self.n_lr - 1}: "
                "check the HR keyframe offset and spacing."
            )

    def keyframe_time(self, j: int) -> int:
        """LR time of HR keyframe ``j``."""
        return self.model.offset + j * self.model.spacing

    @property
    def keyframe_times(self) -> np.ndarray:
        """LR times of all HR keyframes, shape ``(M,)``."""
        return self.model.offset + self.model.spacing * np.arange(self.n_hr)

    def warnings(self) -> list[str]:
        """Settings that are legal but probably wrong, each in a sentence with the fix.

        Most keyframes outside the LR sequence (a spacing or offset that does not fit the
        recording): fusion runs, but every output is bridged by far-away keyframes.
        """
        times = self.keyframe_times
        inside = int(np.count_nonzero((times >= 0) & (times < self.n_lr)))
        if 2 * inside < self.n_hr:
            return [
                f"only {inside} of the {self.n_hr} HR keyframes fall inside the {self.n_lr} LR "
                f"frames with spacing {self.model.spacing} and offset {self.model.offset}: "
                "check the frame-rate ratio (spacing) and the trigger offset."
            ]
        return []

    def keyframe_mask(self) -> np.ndarray:
        """Boolean mask over LR times, shape ``(N,)``: True where an HR frame was taken."""
        mask = np.zeros(self.n_lr, dtype=bool)
        times = self.keyframe_times
        inside = times[(times >= 0) & (times < self.n_lr)]
        mask[inside] = True
        return mask

    def inputs(self, t: int) -> FrameInputs:
        """The LR and HR frames that feed the fused frame at LR time ``t``."""
        if not 0 <= t < self.n_lr:
            raise IndexError(f"output time {t} is outside the LR sequence 0..{self.n_lr - 1}.")
        m = self.model
        lr = lr_indices(t, m.separation, self.n_lr)
        # Index of the last keyframe taken at or before t, kept inside 0..M-2 so that a
        # following keyframe exists (clamps both sequence ends).
        j0 = int(np.floor((t - m.offset) / m.spacing))
        j0 = min(max(j0, 0), self.n_hr - 2)
        hr = (j0, j0 + 1)
        is_key = (t - m.offset) % m.spacing == 0 and 0 <= (t - m.offset) // m.spacing < self.n_hr
        return FrameInputs(
            t=t,
            lr=lr,
            hr=hr,
            hr_times=(self.keyframe_time(hr[0]), self.keyframe_time(hr[1])),
            is_keyframe=bool(is_key),
        )

    def __iter__(self) -> Iterator[FrameInputs]:
        for t in range(self.n_lr):
            yield self.inputs(t)

    def __len__(self) -> int:
        return self.n_lr


def keyframe_position(t: float, k0: float, k1: float) -> float:
    """Position of time ``t`` relative to keyframes at ``k0 < k1``: ``(t - k0) / (k1 - k0)``.

    0 at ``k0`` and 1 at ``k1``; below 0 before the first keyframe of a sequence and above 1
    past the last, where both keyframes lie on one side of ``t``.
    """
    if not k1 > k0:
        raise ValueError(f"keyframe times must increase, got k0={k0} and k1={k1}.")
    return (t - k0) / (k1 - k0)


def lr_indices(t: int, separation: int, n_lr: int) -> tuple[int, int, int]:
    """LR frames ``t - r, t, t + r`` clamped to ``[0, n_lr - 1]``."""
    return (max(t - separation, 0), t, min(t + separation, n_lr - 1))


def full_rate_keyframes(n_lr: int, model: TimeModel) -> np.ndarray:
    """Frames of a full-rate HR sequence kept as keyframes: ``offset + j * spacing``.

    Returns
    -------
    ndarray of int, shape (keyframe_count(n_lr, model),)
    """
    return model.offset + model.spacing * np.arange(keyframe_count(n_lr, model))


def keyframe_count(n_lr: int, model: TimeModel) -> int:
    """Number of HR keyframes that fall inside an ``n_lr``-frame LR sequence.

    Used when HR keyframes are simulated from a full-rate HR sequence: keyframe ``j`` is
    full-rate frame ``offset + j * spacing``.
    """
    if model.offset < 0 or model.offset > n_lr - 1:
        raise ValueError(
            f"keyframe offset {model.offset} is outside the sequence 0..{n_lr - 1}: "
            "simulated keyframes start inside the sequence."
        )
    return (n_lr - 1 - model.offset) // model.spacing + 1
