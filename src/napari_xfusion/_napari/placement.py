"""Where the HR keyframes sit on the viewer's time axis (the LR frame index)."""

from __future__ import annotations

from ..config import TimeModel

__all__ = ["keyframe_time_placement"]


def keyframe_time_placement(model: TimeModel) -> tuple[float, float]:
    """Time scale and translate of a keyframe layer, so LR time t shows the keyframe in effect.

    Keyframe ``j`` is taken at LR time ``offset + j * D``. napari shows the keyframe whose
    world time is nearest the slider; drawing keyframe ``j`` half a spacing later, at
    ``offset + j * D + (D - 1) / 2``, makes that the latest keyframe taken at or before the
    slider's time: the one the fusion uses there, held until the next one is taken. Before
    the first keyframe the layer shows nothing.

    Parameters
    ----------
    model : TimeModel

    Returns
    -------
    scale, translate : float
    """
    return float(model.spacing), model.offset + (model.spacing - 1) / 2
