"""A second camera watching a simulated scene: recordings whose registration is known.

The paper's numerical experiment makes both streams from one full-rate HR sequence, on
grids that are exact multiples of each other. Real cameras differ (DESIGN.md): pixel sizes
whose ratio is no whole number, separate x and y scales, a mirror, a rotation, a shift, a
partial overlap, their own blur, gain, offset and gamma, noise, a trigger offset.
:func:`two_camera_recording` makes such a pair from a full-rate scene with a
:class:`~.transform.CameraTransform` and camera settings that are known, so the
registration can be checked against the truth.

The LR camera is the paper's: ``scale x scale`` binning of the scene (its pixel ``i``
covers scene pixels ``scale * i .. scale * i + scale - 1``). The HR camera samples the
scene through the transform, integrating over its own pixel, then blurs, applies its
gamma, gain and offset, and quantizes to 16 bits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter, map_coordinates

from ..config import NoiseConfig, TimeModel
from ..simulate import bin_frames, noisy_lr
from .transform import CameraTransform

__all__ = ["HRCamera", "TwoCameraRecording", "hr_camera_frame", "two_camera_recording"]


@dataclass(frozen=True)
class HRCamera:
    """How the HR camera renders what it sees.

    Parameters
    ----------
    blur : float
        Optical blur (Gaussian sigma) in HR-camera pixels.
    gamma : float
        Response curve: the recorded value is ``gain * x ** gamma + dark``.
    gain, dark : float
        In 16-bit counts.
    """

    blur: float = 0.7
    gamma: float = 1.0
    gain: float = 50_000.0
    dark: float = 800.0


def hr_camera_frame(
    scene: np.ndarray, transform: CameraTransform, camera: HRCamera, scale: int = 4,
    margin: int = 0,
) -> np.ndarray:
    """What the HR camera records of one scene frame, as uint16.

    Parameters
    ----------
    scene : ndarray, shape (Y, X)
        The scene in [0, 1] on the fine grid, ``scale`` times the LR grid.
    transform : CameraTransform
        HR-camera pixels to LR pixels.
    camera : HRCamera
    scale : int
        Scene pixels per LR pixel.
    margin : int
        Scene pixels around the LR camera's field of view on each side (the scene extends
        beyond what the LR camera sees, as a real one does).
    """
    rows, cols = np.mgrid[0 : transform.hr_shape[0], 0 : transform.hr_shape[1]]
    lr = transform.to_lr(np.stack([rows, cols], axis=-1).reshape(-1, 2))
    # LR pixel q covers scene pixels scale*q .. scale*q + scale - 1, centred between them.
    at = scale * lr + (scale - 1) / 2 + margin
    # An HR-camera pixel spans scale / ratio scene pixels: integrate over it where it is
    # larger than one (a Gaussian of the box's standard deviation).
    footprint = scale / min(transform.ratio_y, transform.ratio_x)
    smooth = gaussian_filter(scene, np.sqrt(max(footprint**2 - 1.0, 0.0) / 12.0))
    values = map_coordinates(smooth, at.T, order=1, mode="constant", cval=0.0)
    frame = gaussian_filter(values.reshape(transform.hr_shape), camera.blur)
    counts = camera.gain * np.clip(frame, 0.0, 1.0) ** camera.gamma + camera.dark
    return np.clip(np.rint(counts), 0, 65535).astype(np.uint16)


@dataclass
class TwoCameraRecording:
    """A simulated two-camera recording and everything known about it.

    Attributes
    ----------
    lr : ndarray, shape (N, h, w), float32
        The LR camera: the scene binned ``scale x scale`` (noisy if asked), in [0, 1].
    hr : ndarray, shape (M, H', W'), uint16
        The HR camera's keyframes, taken at LR times ``offset + j * spacing``.
    truth : ndarray, shape (N, Y, X), float32
        The scene the LR camera sees, at every LR time, ``scale`` times the LR grid.
    transform : CameraTransform
        The true HR-to-LR map.
    time_model : TimeModel
        The true spacing and offset of the keyframes.
    camera : HRCamera
    """

    lr: np.ndarray
    hr: np.ndarray
    truth: np.ndarray
    transform: CameraTransform
    time_model: TimeModel
    camera: HRCamera


def two_camera_recording(
    truth,
    transform: CameraTransform,
    time_model: TimeModel,
    camera: HRCamera = HRCamera(),
    noise: NoiseConfig = NoiseConfig(),
    margin: int = 0,
) -> TwoCameraRecording:
    """Record a full-rate scene with an LR camera and a registered-differently HR camera.

    Parameters
    ----------
    truth : array_like, shape (N, Y + 2 margin, X + 2 margin)
        The scene in [0, 1]; ``Y`` and ``X`` multiples of ``time_model.scale``.
    transform : CameraTransform
        Where the HR camera's pixels lie on the LR grid (its ``lr_shape`` must be the LR
        frame size ``(Y, X) / scale``).
    time_model : TimeModel
        Keyframe spacing and offset (>= 0: the HR camera starts at LR frame ``offset``).
    camera : HRCamera
    noise : NoiseConfig
        Poisson noise on the LR camera.
    margin : int
        Scene pixels on each side beyond the LR camera's field of view, which an HR camera
        whose field of view reaches further sees (without them it would see black there).
    """
    scene = np.asarray(truth, dtype=np.float32)
    truth = scene[:, margin : scene.shape[1] - margin, margin : scene.shape[2] - margin]
    s = time_model.scale
    lr_clean = bin_frames(truth, s)
    if tuple(lr_clean.shape[1:]) != transform.lr_shape:
        raise ValueError(
            f"the transform is for LR frames of {transform.lr_shape}, but the scene bins "
            f"to {lr_clean.shape[1:]}."
        )
    times = range(time_model.offset, len(truth), time_model.spacing)
    hr = np.stack([hr_camera_frame(scene[t], transform, camera, s, margin) for t in times])
    return TwoCameraRecording(
        lr=noisy_lr(lr_clean, noise), hr=hr, truth=truth, transform=transform,
        time_model=time_model, camera=camera,
    )
