"""Attention scores of the neural methods: the paper's backward and forward scores.

For every output frame the network reports the raw score of each of its five inputs: the
spatial mean of the pre-sigmoid temporal-attention map of that input against the reference
LR frame. The paper (section 7.1.5) groups output frames by their preceding HR keyframe
``k0`` and divides the scores of HR ``k0`` (*backward*) and HR ``k1`` (*forward*) by the
backward score at ``t = k0``, where the LR and HR frames were taken at the same time. High
normalized scores mean the network leans on that keyframe; they are a quality indicator that
needs no ground truth.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .streaming import FusedFrame

#: Names of the five raw scores of EDVR-STF, in input order.
INPUT_NAMES = ("lr_prev", "lr_ref", "lr_next", "hr_k0", "hr_k1")


@dataclass
class AttentionLog:
    """Collects the attention scores of fused frames as they arrive.

    Only a few numbers per frame are kept, so a log of many thousand frames is small.
    """

    times: list[int] = field(default_factory=list)
    hr_times: list[tuple[int, int]] = field(default_factory=list)
    keyframe: list[bool] = field(default_factory=list)
    raw: list[np.ndarray] = field(default_factory=list)

    def add(self, frame: FusedFrame) -> None:
        """Record the scores of one fused frame (frames without scores are ignored)."""
        if frame.attention is None:
            return
        self.times.append(frame.t)
        self.hr_times.append(frame.hr_times)
        self.keyframe.append(frame.is_keyframe)
        self.raw.append(np.asarray(frame.attention, dtype=np.float64))

    def __len__(self) -> int:
        return len(self.times)

    def normalized(self) -> tuple[np.ndarray, np.ndarray]:
        """The paper's normalized backward and forward scores, one per recorded frame.

        Returns
        -------
        backward, forward : ndarray, shape (n,)
            NaN where the normalizing frame (``t = k0``) was not fused, or for EDVR, which
            has no HR inputs.
        """
        n = len(self.times)
        backward = np.full(n, np.nan)
        forward = np.full(n, np.nan)
        if n == 0 or len(self.raw[0]) < 5:
            return backward, forward
        raw = np.stack(self.raw)
        # Backward score of the frame taken at each keyframe time: the normalizer.
        at_key = {t: raw[i, 3] for i, t in enumerate(self.times) if t == self.hr_times[i][0]}
        for i, (k0, _) in enumerate(self.hr_times):
            ref = at_key.get(k0)
            if ref is not None and ref != 0:
                backward[i] = raw[i, 3] / ref
                forward[i] = raw[i, 4] / ref
        return backward, forward

    def write_csv(self, path: str | Path) -> None:
        """Write one row per frame: times, raw scores and normalized scores.

        The file appears under its name only once complete (it is written next to it first).
        """
        backward, forward = self.normalized()
        n_inputs = len(self.raw[0]) if self.raw else 5
        names = INPUT_NAMES[:n_inputs]
        path = Path(path)
        partial = path.with_name(path.name + ".incomplete")
        with open(partial, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(
                ["frame", "keyframe", "hr_k0_time", "hr_k1_time", "frames_after_k0", *names,
                 "backward", "forward"]
            )
            for i, t in enumerate(self.times):
                k0, k1 = self.hr_times[i]
                writer.writerow(
                    [t, int(self.keyframe[i]), k0, k1, t - k0]
                    + [f"{v:.6g}" for v in self.raw[i]]
                    + [f"{backward[i]:.6g}", f"{forward[i]:.6g}"]
                )
        partial.replace(path)


def attention_csv_path(output: str | Path) -> Path:
    """Where the attention scores of an output stack are saved: ``<stem>.attention.csv``."""
    output = Path(output)
    return output.with_name(output.name.split(".")[0] + ".attention.csv")
