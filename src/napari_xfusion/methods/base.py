"""The common face of every fusion method, and the registry that finds them by name.

Methods register themselves with :func:`register` when their module is imported (importing
:mod:`napari_xfusion.methods` imports them all); :func:`create_method` builds one from its
name, which is how the CLI, the widget and the API dispatch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from typing import ClassVar

import numpy as np

from ..streaming import FusedFrame, ProgressCallback, stream_frames
from ..timeline import FrameInputs, Timeline

__all__ = [
    "FusionMethod", "PerFrameMethod", "create_method", "method_labels", "method_names",
    "register",
]


class FusionMethod(ABC):
    """Base class of all fusion methods.

    Subclasses set ``name`` (the registry key) and ``label`` (for menus) and implement
    :meth:`fuse_frame` (one frame from its inputs) and :meth:`fuse` (a sequence, streamed);
    :meth:`prepare` checks the stacks and fits what a method learns from a whole recording
    before either runs. Methods that run a network set ``arch``, the architecture of the
    weights they load (``"stf"`` or ``"edvr"``), and take ``weights`` and ``engine``
    options; ``align_keyframes`` says whether the keyframes are warped onto each output
    time first where the recording moves (:mod:`napari_xfusion.alignment`), and such a
    method's :meth:`prepare` sets ``motion``, how far the recording moves between keyframes
    in LR pixels (None before). ``reads_lr_noise`` says whether the method expects the LR
    frames' noise as recorded (the networks, trained on noisy frames, measure it), which
    decides the form of the LR filter it reads (:meth:`lr_stack`).
    """

    name: ClassVar[str]
    label: ClassVar[str]
    arch: ClassVar[str | None] = None
    align_keyframes: ClassVar[bool] = False
    reads_lr_noise: ClassVar[bool] = False
    motion: float | None = None

    def lr_stack(self, lr, smoothed=None):
        """The LR stack this method reads, of the two forms the LR filter gives
        (:mod:`napari_xfusion.lr_match`): ``lr``, the optics undone and the noise kept,
        or ``smoothed``, the noise smoothed too, for a method without a noise model.

        ``smoothed`` is None where no filter was applied: ``lr`` is then returned.
        """
        return lr if smoothed is None or self.reads_lr_noise else smoothed

    def settings(self) -> dict:
        """What decides this method's output besides its inputs, JSON-serializable.

        A run resumed from a partial output must use the same settings
        (:func:`napari_xfusion.pipeline.fuse_iter`); the default: none.
        """
        return {}

    def prepare(self, lr, hr, timeline: Timeline) -> None:  # noqa: B027 - a hook, often empty
        """Check the stacks against the time model and fit what the method learns from the
        whole recording (called by :meth:`fuse`; call it before :meth:`fuse_frame`).

        Parameters are those of :meth:`fuse`. The default does nothing.
        """

    @abstractmethod
    def fuse_frame(self, lr: np.ndarray, hr: np.ndarray, inputs: FrameInputs) -> np.ndarray:
        """Fuse one frame.

        Parameters
        ----------
        lr : ndarray, shape (3, h, w)
            LR frames at ``inputs.lr``.
        hr : ndarray, shape (2, H, W)
            HR keyframes at ``inputs.hr``.
        inputs : FrameInputs
            Which frames these are and when they were taken.

        Returns
        -------
        ndarray, shape (H, W), float32
        """

    @abstractmethod
    def fuse(
        self,
        lr,
        hr,
        timeline: Timeline,
        frames: Iterable[int] | None = None,
        progress: ProgressCallback | None = None,
    ) -> Iterator[FusedFrame]:
        """Fuse the frames at ``frames`` (default: every LR time), yielding them in order.

        Parameters
        ----------
        lr : array-like, shape (N, h, w)
            LR stack, float32 in [0, 1].
        hr : array-like, shape (M, H, W)
            HR keyframes, float32 in [0, 1], ``H = scale * h``.
        timeline : Timeline
            The time model for these stacks.
        frames : iterable of int, optional
            Output LR times.
        progress : callable, optional
            Called as ``progress(done, total)`` after each frame.
        """


class PerFrameMethod(FusionMethod):
    """A method that fuses each output frame from its five input frames alone."""

    def fuse(self, lr, hr, timeline, frames=None, progress=None):
        self.prepare(lr, hr, timeline)

        def one(lr_frames, hr_frames, inputs):
            return self.fuse_frame(lr_frames, hr_frames, inputs), None

        return stream_frames(lr, hr, timeline, one, frames, progress)


_REGISTRY: dict[str, type[FusionMethod]] = {}


def register(cls: type[FusionMethod]) -> type[FusionMethod]:
    """Class decorator adding a fusion method to the registry under ``cls.name``."""
    _REGISTRY[cls.name] = cls
    return cls


def method_names() -> list[str]:
    """Names of the registered fusion methods."""
    return list(_REGISTRY)


def method_labels() -> dict[str, str]:
    """Display label of each registered fusion method, by name."""
    return {name: cls.label for name, cls in _REGISTRY.items()}


def _method_class(name: str) -> type[FusionMethod]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown fusion method {name!r}; choose one of {', '.join(sorted(_REGISTRY))}."
        ) from None


def method_network(name: str) -> str | None:
    """The network architecture that method ``name`` runs (``"stf"``, ``"edvr"``), or None
    for a classical method."""
    return _method_class(name).arch


def method_aligns_keyframes(name: str) -> bool:
    """Whether method ``name`` warps the keyframes onto each output time before fusing;
    a network calibrated for it must train on keyframes warped the same way."""
    return _method_class(name).align_keyframes


def calibrated_methods() -> list[str]:
    """The methods whose network calibration can fine-tune: those running EDVR-STF."""
    return [name for name in _REGISTRY if method_network(name) == "stf"]


def create_method(name: str, **options) -> FusionMethod:
    """Build the fusion method registered as ``name`` with its keyword options."""
    return _method_class(name)(**options)
