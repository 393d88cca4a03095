"""napari sample data: the synthetic laser-melting experiment, ready to fuse."""

from __future__ import annotations

from ..demo import sample_experiment
from .placement import keyframe_time_placement


def sample_lpbf() -> list[tuple]:
    """Full-rate HR ground truth, the binned noisy LR stream and the HR keyframes.

    The three layers share one world: LR pixels are scaled by 4 to overlay the HR frames,
    and at each LR time the keyframe in effect shows (see :func:`.keyframe_time_placement`).
    """
    exp = sample_experiment()
    m = exp.timeline.model
    time_scale, time_shift = keyframe_time_placement(m)
    labels = ("t", "y", "x")
    return [
        (exp.truth, {"name": "HR ground truth", "axis_labels": labels, "visible": False}, "image"),
        (
            exp.hr,
            {
                "name": "HR keyframes",
                "axis_labels": labels,
                "scale": (time_scale, 1, 1),
                "translate": (time_shift, 0, 0),
                "metadata": {"time_model": m},
            },
            "image",
        ),
        (
            exp.lr,
            {
                "name": "LR stream",
                "axis_labels": labels,
                "scale": (1, m.scale, m.scale),
                # An LR pixel covers HR pixels 0..s-1, so its centre sits at (s - 1) / 2.
                "translate": (0, (m.scale - 1) / 2, (m.scale - 1) / 2),
            },
            "image",
        ),
    ]
