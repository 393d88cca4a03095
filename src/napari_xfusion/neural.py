"""The learned fusion methods, EDVR-STF (``stf``) and EDVR (``edvr``), as registered methods.

They load a network from a weights file (the bundled one by default) and run it with the
tiled :class:`~napari_xfusion.engine.Engine`. A network with random weights is never used
behind the user's back: without a weights file, the bundled file must exist.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch

from .config import EngineConfig
from .engine import Engine
from .fusion import FusionMethod, register
from .models.weights import WeightsError, bundled_weights_path, load_weights


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
    learned = True

    def __init__(
        self,
        weights: str | Path | None = None,
        engine: EngineConfig = EngineConfig(),
        model: torch.nn.Module | None = None,
    ) -> None:
        if model is None:
            path = Path(weights) if weights is not None else bundled_weights_path(self.arch)
            if weights is None and not path.exists():
                raise WeightsError(
                    f"no trained {self.label} weights are bundled with this installation; "
                    "pass a weights file (--weights FILE) or use a classical method "
                    "(--method transfer, bayes or bicubic)."
                )
            model = load_weights(path)
        if model.config.arch != self.arch:
            raise WeightsError(
                f"these weights are for the {model.config.arch!r} architecture, not "
                f"{self.arch!r}: use --method {model.config.arch} or another weights file."
            )
        self.engine = Engine(model, engine)

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
class EDVRMethod(NeuralMethod):
    """EDVR video super-resolution from three LR frames alone (Wang et al. 2019)."""

    name = "edvr"
    label = "EDVR"
    arch = "edvr"
