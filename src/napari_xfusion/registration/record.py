"""Registering two cameras from their recording, and the registration file.

:func:`register` estimates, from the stacks alone (or from a target imaged by both
cameras), where the HR camera's pixels lie on the LR grid (:mod:`.spatial`), checks or
estimates when its frames were taken (:mod:`.timing`), finds the common field of view
(:mod:`.grid`) and maps the cameras' intensities onto each other
(:func:`napari_xfusion.normalize.match_normalization`, with a response curve). The result,
a :class:`Registration`, is saved as a small JSON file (:meth:`Registration.save`) that
``xfusion fuse/calibrate/assess --registration`` and :func:`napari_xfusion.pipeline.
prepare_inputs` read back, so the slow part runs once per pair of cameras.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..config import TimeModel
from ..holdout import spread_evenly
from ..io import read_stack
from ..normalize import fit_normalization, match_normalization
from .grid import ResampledKeyframes, common_crop
from .spatial import register_frames
from .timing import OffsetMatch, match_offsets
from .transform import CameraTransform

__all__ = ["FORMAT", "Registration", "register"]

FORMAT = "napari-xfusion-registration"
FORMAT_VERSION = 1
#: Frame pairs the spatial fit uses by default.
DEFAULT_PAIRS = 4
#: A better-matching offset (or spacing) is a clear disagreement when the given one leaves
#: this many times more disagreement (1 - agreement).
CLEAR_FACTOR = 1.5


@dataclass(frozen=True)
class Registration:
    """Everything that puts a real camera pair onto the fusion grid.

    Attributes
    ----------
    transform : CameraTransform
        HR-camera pixels to LR pixels.
    crop : (y0, y1, x0, x1)
        The LR pixels fused (the common field of view).
    time_model : TimeModel
        Spacing, offset and scale to fuse with.
    offset_estimated : bool
        Whether the offset is the estimate rather than the one given.
    offsets : dict or None
        Agreement of the best and second-best offsets (:class:`~.timing.OffsetMatch`).
    spacings : dict of int to float
        Best agreement with the given spacing and its neighbours.
    similarity, margin, residual : float
        Quality of the spatial fit (:class:`~.spatial.SpatialFit`); residual in LR pixels.
    intensity : dict
        The LR camera's mapping into the HR camera's normalized units: ``low``, ``high``,
        ``curve`` (:class:`~napari_xfusion.normalize.Normalization`); empty when no
        mapping could be fitted.
    pairs : list of (int, int)
        ``(LR frame, HR frame)`` pairs the spatial fit used (empty for a target).
    warnings : list of str
        Settings that look wrong.
    software : str
    """

    transform: CameraTransform
    crop: tuple[int, int, int, int]
    time_model: TimeModel
    offset_estimated: bool
    offsets: dict | None
    spacings: dict[int, float]
    similarity: float
    margin: float
    residual: float
    intensity: dict
    pairs: list[tuple[int, int]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    software: str = ""

    # -- applying it ------------------------------------------------------------------

    def check_stacks(self, lr_shape: tuple[int, ...], hr_shape: tuple[int, ...]) -> None:
        """Raise a :class:`ValueError` unless the stacks are the cameras registered."""
        for name, shape, expected in (("LR", lr_shape, self.transform.lr_shape),
                                      ("HR", hr_shape, self.transform.hr_shape)):
            if tuple(shape[-2:]) != tuple(expected):
                raise ValueError(
                    f"the {name} frames are {shape[-2]}x{shape[-1]} but the registration is "
                    f"for {expected[0]}x{expected[1]}: use the registration of these "
                    "cameras (xfusion register), or the stacks it was made from."
                )

    def crop_lr(self, lr):
        """The LR stack cropped to the common field of view (lazy for dask arrays)."""
        y0, y1, x0, x1 = self.crop
        return lr[:, y0:y1, x0:x1]

    def resample_hr(self, hr) -> ResampledKeyframes:
        """The HR keyframes resampled onto ``scale`` times the crop, frame by frame."""
        return ResampledKeyframes(hr, self.transform, self.crop, self.time_model.scale)

    # -- the file ---------------------------------------------------------------------

    def to_dict(self) -> dict:
        """The registration as plain JSON values."""
        m = self.time_model
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "software": self.software,
            "transform": self.transform.to_dict(),
            "grid": {"crop": list(self.crop), "scale": m.scale},
            "time": {
                "spacing": m.spacing, "offset": m.offset, "separation": m.separation,
                "offset_estimated": self.offset_estimated, "offsets": self.offsets,
                "spacings": {str(k): v for k, v in self.spacings.items()},
            },
            "intensity": self.intensity,
            "quality": {"similarity": self.similarity, "margin": self.margin,
                        "residual_lr_px": self.residual},
            "pairs": [list(p) for p in self.pairs],
            "warnings": list(self.warnings),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Registration:
        """Rebuild from :meth:`to_dict`'s output; a foreign dict is a :class:`ValueError`."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError("not a napari-xfusion registration (it lacks the format field).")
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"registration format version {data.get('format_version')!r}; this "
                f"napari-xfusion reads version {FORMAT_VERSION}: register the cameras again."
            )
        time = data["time"]
        return cls(
            transform=CameraTransform.from_dict(data["transform"]),
            crop=tuple(data["grid"]["crop"]),
            time_model=TimeModel(spacing=time["spacing"], offset=time["offset"],
                                 separation=time["separation"], scale=data["grid"]["scale"]),
            offset_estimated=time["offset_estimated"],
            offsets=time["offsets"],
            spacings={int(k): v for k, v in time["spacings"].items()},
            similarity=data["quality"]["similarity"],
            margin=data["quality"]["margin"],
            residual=data["quality"]["residual_lr_px"],
            intensity=data["intensity"],
            pairs=[tuple(p) for p in data["pairs"]],
            warnings=list(data["warnings"]),
            software=data["software"],
        )

    def save(self, path: str | os.PathLike) -> Path:
        """Write the JSON file (atomically: an interrupted save leaves no half file)."""
        path = Path(path).expanduser()
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self.to_dict(), f, indent=2)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Registration:
        """Read a file written by :meth:`save`.

        Raises
        ------
        ValueError
            When the file is missing, not JSON, or not a registration; the message names
            the file and what to do.
        """
        path = Path(path).expanduser()
        try:
            data = json.loads(path.read_text())
            return cls.from_dict(data)
        except FileNotFoundError:
            raise ValueError(f"no registration file at {path}: check the path.") from None
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f"{path} is not a usable registration file ({exc}): make it with "
                "`xfusion register`."
            ) from None


def _clearly_better(score: float, other: float) -> bool:
    """Whether an agreement ``score`` clearly beats ``other`` (both at most 1)."""
    return 1.0 - other > CLEAR_FACTOR * (1.0 - score) + 1e-4


def _say(messages: list[str], text: str) -> None:
    messages.append(text)
    warnings.warn(text, stacklevel=3)


def _pairs(n_lr: int, n_hr: int, model: TimeModel, count: int) -> list[tuple[int, int]]:
    inside = [j for j in range(n_hr) if 0 <= model.offset + j * model.spacing < n_lr]
    return [(model.offset + j * model.spacing, j) for j in spread_evenly(inside, count)]


def register(
    lr,
    hr,
    time_model: TimeModel,
    *,
    estimate_offset: bool = False,
    offset_window: int | None = None,
    pairs: int = DEFAULT_PAIRS,
    target: tuple | None = None,
    ratio_range: tuple[float, float] = (2.0, 8.0),
    max_rotation: float = 10.0,
) -> Registration:
    """Register a real camera pair: space, time and intensity, from the recording itself.

    Parameters
    ----------
    lr, hr : str, Path or array_like
        The LR stack and the HR keyframes, as the cameras recorded them.
    time_model : TimeModel
        The spacing, the nominal offset (the trigger offset as far as it is known), the LR
        separation and the scale to fuse at.
    estimate_offset : bool
        Use the best-matching offset instead of the given one. Without it the given offset
        is kept, and a clearly better-matching one is reported as a warning.
    offset_window : int, optional
        Candidate offsets lie within this many LR frames of the given one (default: the
        spacing).
    pairs : int
        Keyframes (with the LR frames taken at their times) the spatial fit uses.
    target : (array_like, array_like), optional
        One image of the same object (a grid, say) from each camera, ``(lr_image,
        hr_image)``, to register from instead of the recording.
    ratio_range : (float, float)
        HR pixels per LR pixel to consider.
    max_rotation : float
        Largest rotation to consider, in degrees.

    Returns
    -------
    Registration

    Raises
    ------
    ValueError
        When the frames do not share enough structure, the fields of view hardly overlap,
        or no offset puts two keyframes inside the LR sequence.
    """
    from .. import __version__

    lr_stack = read_stack(lr, name="LR stack")
    hr_stack = read_stack(hr, name="HR stack")
    notes: list[str] = []
    window = time_model.spacing if offset_window is None else int(offset_window)

    def spatial(model: TimeModel):
        chosen = _pairs(len(lr_stack), len(hr_stack), model, pairs)
        if not chosen:
            raise ValueError(
                f"with spacing {model.spacing} and offset {model.offset} no keyframe falls "
                "inside the LR sequence, so no frame pair shows one moment: check the "
                "offset, or register from a target."
            )
        fit = register_frames(
            [np.asarray(lr_stack[t]) for t, _ in chosen],
            [np.asarray(hr_stack[j]) for _, j in chosen],
            ratio_range=ratio_range, max_rotation=max_rotation,
        )
        return fit, chosen

    if target is not None:
        target_lr, target_hr = (np.squeeze(np.asarray(image)) for image in target)
        fit, chosen = register_frames([target_lr], [target_hr], ratio_range=ratio_range,
                                      max_rotation=max_rotation), []
    else:
        fit, chosen = spatial(time_model)

    def offsets_for(spacing: int) -> OffsetMatch:
        candidates = range(time_model.offset - window, time_model.offset + window + 1)
        return match_offsets(lr_stack, hr_stack, fit.transform, spacing, candidates)

    match = offsets_for(time_model.spacing)
    given = match.scores.get(time_model.offset, float("-inf"))
    model = time_model
    if estimate_offset:
        model = replace(time_model, offset=match.best)
        if match.best != time_model.offset and target is None:
            fit, chosen = spatial(model)  # the pairs were not simultaneous: fit again
    elif match.best != time_model.offset and _clearly_better(match.best_score, given):
        _say(notes, (
            f"the keyframes match the LR frames best at offset {match.best} (agreement "
            f"{match.best_score:.3f}, {given:.3f} at the offset given, {time_model.offset}): "
            "check the trigger offset, or ask for the estimate."
        ))
    spacings = {time_model.spacing: match.best_score}
    for spacing in (time_model.spacing - 1, time_model.spacing + 1):
        if spacing >= 1:
            try:
                spacings[spacing] = offsets_for(spacing).best_score
            except ValueError:
                continue
    better = [d for d, score in spacings.items()
              if d != time_model.spacing and _clearly_better(score, match.best_score)]
    if better:
        _say(notes, (
            f"the keyframes match better with spacing {better[0]} (agreement "
            f"{spacings[better[0]]:.3f} against {match.best_score:.3f} with {time_model.spacing}):"
            " check the cameras' frame-rate ratio."
        ))

    crop = common_crop(fit.transform, multiple=4)
    registration = Registration(
        transform=fit.transform, crop=crop, time_model=model,
        offset_estimated=estimate_offset, offsets=match.to_dict(),
        spacings={int(d): round(float(v), 6) for d, v in spacings.items()},
        similarity=round(fit.similarity, 6), margin=round(fit.margin, 4),
        residual=round(fit.residual, 4), intensity={}, pairs=chosen, warnings=notes,
        software=f"napari-xfusion {__version__}",
    )
    return replace(registration, intensity=_intensity(lr_stack, hr_stack, registration))


def _intensity(lr_stack, hr_stack, registration: Registration) -> dict:
    """The LR camera's mapping into the HR camera's normalized units, as fusion fits it."""
    lr = registration.crop_lr(lr_stack)
    hr = read_stack(registration.resample_hr(hr_stack), name="HR stack")
    model = registration.time_model
    hr_norm = fit_normalization(hr)
    pairs = [(model.offset + j * model.spacing, j) for j in range(len(hr))
             if 0 <= model.offset + j * model.spacing < len(lr)]
    mapping = match_normalization(lr, hr, hr_norm, pairs, model.scale)
    if mapping is None:
        return {}
    curve = None if mapping.curve is None else [list(v) for v in mapping.curve]
    return {"low": mapping.low, "high": mapping.high, "curve": curve}
