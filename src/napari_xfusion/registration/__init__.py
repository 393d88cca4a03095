"""Real two-camera recordings: register the cameras in space, time and intensity.

- :mod:`.transform` -- :class:`CameraTransform`, HR-camera pixels to LR pixels;
- :mod:`.spatial` -- :func:`register_frames`, the transform from frames taken together;
- :mod:`.timing` -- :func:`match_offsets`, when the keyframes were taken;
- :mod:`.grid` -- the common field of view and the keyframes resampled onto the fusion grid;
- :mod:`.record` -- :func:`register`, all of it from a recording, and the registration file;
- :mod:`.cameras` -- simulated camera pairs whose registration is known.

See ``docs/registration.md`` for a beamline recording step by step.
"""

from .cameras import HRCamera, TwoCameraRecording, two_camera_recording
from .grid import ResampledKeyframes, common_crop
from .record import Registration, register
from .spatial import SpatialFit, register_frames
from .timing import OffsetMatch, match_offsets
from .transform import CameraTransform

__all__ = [
    "CameraTransform",
    "HRCamera",
    "OffsetMatch",
    "Registration",
    "ResampledKeyframes",
    "SpatialFit",
    "TwoCameraRecording",
    "common_crop",
    "match_offsets",
    "register",
    "register_frames",
    "two_camera_recording",
]
