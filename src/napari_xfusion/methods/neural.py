"""The learned fusion methods, EDVR-STF (``stf``) and EDVR (``edvr``), as registered methods.

They load a network from a weights file (the bundled one by default) and run it with the
tiled :class:`~napari_xfusion.engine.Engine`. A network with random weights is never used
behind the user's back: without a weights file, the bundled file must exist.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path
from typing import ClassVar

import torch

from ..alignment import recording_moves
from ..config import EngineConfig
from ..engine import Engine
from ..models.weights import check_weights_file, load_weights
from .base import FusionMethod, register

log = logging.getLogger(__name__)


class NeuralMethod(FusionMethod):
    """A fusion network run by the engine.

    Parameters
    ----------
    weights : str or Path, optional
        A napari-xfusion safetensors weights file; default: the weights bundled with the
        package for this architecture.
    engine : EngineConfig
        Device, tiling, batch and precision.
    model : torch.nn.Module, optional
        An already built network (for calibration and tests); overrides ``weights``.
    """

    arch: ClassVar[str]
    reads_lr_noise = True

    def __init__(
        self,
        weights: str | Path | None = None,
        engine: EngineConfig = EngineConfig(),
        model: torch.nn.Module | None = None,
    ) -> None:
        if model is None:
            model = load_weights(check_weights_file(weights, self.arch))
        elif model.config.arch != self.arch:
            raise ValueError(
                f"the {self.label} method runs an {self.arch!r} network, not this "
                f"{model.config.arch!r} one."
            )
        if self.align_keyframes:
            engine = dataclasses.replace(engine, align_keyframes=True)
        self.engine = Engine(model, engine)

    def settings(self) -> dict:
        """The network's configuration, a digest of its weights and the engine settings."""
        digest = hashlib.sha256()
        for name, tensor in sorted(self.engine.model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().numpy().tobytes())
        return {
            "model": self.engine.model.config.to_dict(),
            "weights_sha256": digest.hexdigest(),
            "engine": dataclasses.asdict(self.engine.config),
        }

    def prepare(self, lr, hr, timeline) -> None:
        if timeline.model.scale != self.engine.scale:
            raise ValueError(
                f"the network upsamples {self.engine.scale}x but the scale is set to "
                f"{timeline.model.scale}: set the scale to {self.engine.scale}."
            )

    def fuse_frame(self, lr, hr, inputs):
        return self.engine.fuse_frame(lr, hr, inputs)[0]

    def fuse(self, lr, hr, timeline, frames=None, progress=None):
        self.prepare(lr, hr, timeline)
        return self.engine.run(lr, hr, timeline, frames=frames, progress=progress)


@register
class EDVRSTFMethod(NeuralMethod):
    """EDVR-STF: three LR frames and the two bracketing HR keyframes (Tang et al. 2024)."""

    name = "stf"
    label = "EDVR-STF"
    arch = "stf"


@register
class AlignedEDVRSTFMethod(EDVRSTFMethod):
    """EDVR-STF with each keyframe first warped onto the output time's LR frame, where the
    recording moves.

    Along the optical flow between them (:mod:`napari_xfusion.alignment`): for a camera or
    a sample that moves during the recording. :meth:`prepare` measures how far the
    recording moves between keyframes (:func:`~napari_xfusion.alignment.recording_moves`,
    a few flows on the LR grid, kept in ``motion``); a still recording's keyframes are
    fused as they are, exactly as ``stf`` fuses them and as fast, since aligning them
    gains nothing there and costs a little detail.
    """

    name = "stf-aligned"
    label = "EDVR-STF, aligned keyframes"
    align_keyframes = True

    #: The stacks and time model the motion was measured on (a second prepare on the same
    #: ones, before a run that the caller announced, does not measure it again).
    _measured: tuple | None = None

    @property
    def aligning(self) -> bool:
        """Whether the last :meth:`prepare` found the recording moving, so that a run aligns
        the keyframes."""
        return self.engine.align_keyframes

    def prepare(self, lr, hr, timeline) -> None:
        super().prepare(lr, hr, timeline)
        last = self._measured
        if last is None or last[0] is not lr or last[1] is not hr or last[2] != timeline:
            self.engine.align_keyframes, self.motion = recording_moves(lr, hr, timeline)
            self._measured = (lr, hr, timeline)
            log.info("keyframe motion %.3f LR pixels: %s", self.motion,
                     "aligning the keyframes" if self.engine.align_keyframes
                     else "the keyframes are fused as they are")


@register
class EDVRMethod(NeuralMethod):
    """EDVR video super-resolution from three LR frames alone (Wang et al. 2019)."""

    name = "edvr"
    label = "EDVR"
    arch = "edvr"
