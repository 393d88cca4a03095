"""napari sample data: the synthetic laser-melting experiment, ready to fuse."""

from __future__ import annotations

from ..demo import sample_experiment


def sample_lpbf() -> list[tuple]:
    """Full-rate HR ground truth, the binned noisy LR stream and the HR keyframes.

    The three layers share one world: LR pixels are scaled by 4 to overlay the HR frames,
    and keyframe ``j`` sits at time ``offset + j * D`` so scrubbing shows matching moments.
    """
    exp = sample_experiment()
    m = exp.timeline.model
    labels = ("t", "y", "x")
    return [
        (exp.truth, {"name": "HR ground truth", "axis_labels": labels, "visible": False}, "image"),
        (
            exp.hr,
            {
                "name": "HR keyframes",
                "axis_labels": labels,
                "scale": (m.spacing, 1, 1),
                "translate": (m.offset, 0, 0),
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
