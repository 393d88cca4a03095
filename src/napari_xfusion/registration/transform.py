"""Where the HR camera's pixels lie on the LR camera's pixel grid.

Coordinates are ``(row, column)`` pixel centres; pixel ``i`` of a frame covers ``[i - 0.5,
i + 0.5]``. :class:`CameraTransform` maps HR-camera pixel coordinates ``p`` to LR-camera
pixel coordinates::

    q = R(rotation) @ diag(1 / ratio_y, 1 / ratio_x) @ F @ (p - hr_centre) + lr_centre + shift

with ``ratio`` the number of HR pixels per LR pixel along each axis (any value, not only
whole ones), ``F`` the mirror flips and ``shift`` where the HR frame's centre lands relative
to the LR frame's centre, in LR pixels. The parametrisation around the centres keeps the
parameters nearly independent, which the fit in :mod:`.spatial` relies on.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["CameraTransform"]


@dataclass(frozen=True)
class CameraTransform:
    """The map from HR-camera pixels to LR-camera pixels (module docstring).

    Parameters
    ----------
    ratio_y, ratio_x : float
        HR pixels per LR pixel along rows and columns (> 0).
    rotation_deg : float
        Rotation of the HR image on the LR grid, counter-clockwise in degrees.
    flip_y, flip_x : bool
        Whether the HR image is mirrored top-bottom / left-right relative to the LR one.
    shift_y, shift_x : float
        Where the HR frame's centre lies relative to the LR frame's centre (LR pixels).
    hr_shape, lr_shape : tuple of int
        Frame sizes ``(rows, columns)`` of the two cameras.
    """

    ratio_y: float
    ratio_x: float
    rotation_deg: float
    flip_y: bool
    flip_x: bool
    shift_y: float
    shift_x: float
    hr_shape: tuple[int, int]
    lr_shape: tuple[int, int]

    def __post_init__(self) -> None:
        if not (self.ratio_y > 0 and self.ratio_x > 0):
            raise ValueError(
                f"pixel-size ratios must be > 0, got {self.ratio_y} and {self.ratio_x}."
            )
        object.__setattr__(self, "hr_shape", tuple(int(v) for v in self.hr_shape))
        object.__setattr__(self, "lr_shape", tuple(int(v) for v in self.lr_shape))

    @property
    def matrix(self) -> np.ndarray:
        """The 2 x 2 linear part: ``q = matrix @ p + offset``."""
        theta = math.radians(self.rotation_deg)
        # Rows point down: a point to the right of the centre, (0, 1), turns upwards (to a
        # negative row) for a positive angle, counter-clockwise as displayed.
        rotation = np.array([[math.cos(theta), -math.sin(theta)],
                             [math.sin(theta), math.cos(theta)]])
        flips = np.diag([-1.0 if self.flip_y else 1.0, -1.0 if self.flip_x else 1.0])
        return rotation @ np.diag([1.0 / self.ratio_y, 1.0 / self.ratio_x]) @ flips

    @property
    def offset(self) -> np.ndarray:
        """The translation: ``q = matrix @ p + offset``."""
        hr_centre = (np.asarray(self.hr_shape, float) - 1) / 2
        lr_centre = (np.asarray(self.lr_shape, float) - 1) / 2
        return lr_centre + np.array([self.shift_y, self.shift_x]) - self.matrix @ hr_centre

    def to_lr(self, points) -> np.ndarray:
        """LR coordinates of HR-camera points ``(..., 2)``."""
        p = np.asarray(points, dtype=np.float64)
        return p @ self.matrix.T + self.offset

    def to_hr(self, points) -> np.ndarray:
        """HR-camera coordinates of LR points ``(..., 2)``."""
        q = np.asarray(points, dtype=np.float64)
        return (q - self.offset) @ np.linalg.inv(self.matrix).T

    def to_dict(self) -> dict:
        """The parameters, the affine map and the frame sizes as plain JSON values."""
        out = asdict(self)
        out["hr_shape"], out["lr_shape"] = list(self.hr_shape), list(self.lr_shape)
        out["matrix"] = self.matrix.round(12).tolist()
        out["offset"] = self.offset.round(9).tolist()
        return out

    @classmethod
    def from_dict(cls, data: dict) -> CameraTransform:
        """Rebuild from :meth:`to_dict`'s output (the affine map in it is derived, not read)."""
        fields = {k: data[k] for k in cls.__dataclass_fields__}
        return cls(**fields)
