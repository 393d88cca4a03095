"""Menu command: a fused result beside its inputs, and its signed error, in a linked grid.

For visual checks of moving features (keyholes, spatter, pores): the LR stream (drawn
upscaled on the fusion grid), the HR keyframe in effect, the fused frame and, when the run
had a ground truth, the signed error ``fused - truth`` each get a cell of napari's grid.
The cells share one camera and one time slider, so panning, zooming and scrubbing move them
together. Which result: the selected fused layer (a selected error layer stands for its
result), else the last fused layer. Other layers are hidden; the grid button under the
layer list returns to the overlay.
"""

from __future__ import annotations

import napari
import numpy as np
from napari.layers import Image
from napari.utils.notifications import show_info, show_warning

from .record import RECORD_KEY, ErrorStack

__all__ = ["error_contrast_limits", "show_side_by_side"]

#: Metadata key of an error layer; its value is the name of the fused layer.
ERROR_SOURCE_KEY = "xfusion_error_of"


def show_side_by_side(viewer: napari.viewer.Viewer) -> None:
    """Lay out a fused result, its inputs and its signed error in a linked grid.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer; napari passes it when the command runs from the menu.
    """
    fused = _fused_layer(viewer)
    if fused is None:
        show_warning(
            "Nothing to compare yet: fuse first (Layers > Filter > X-ray fusion > Fuse LR and "
            "HR stacks), then select the fused layer."
        )
        return
    record = fused.metadata[RECORD_KEY]
    names = [record.inputs.get("lr"), record.inputs.get("hr")]
    shown = [viewer.layers[n] for n in names if n in viewer.layers]
    error = None
    truth_name = record.inputs.get("truth")
    if truth_name in viewer.layers:
        error = _add_error_layer(viewer, fused, viewer.layers[truth_name])
    # The grid fills row by row in layer-list order: inputs on top, result and error below.
    cells = [*shown, fused, *([error] if error is not None else [])]
    for layer in viewer.layers:
        layer.visible = layer in cells
    for index, layer in enumerate(cells):
        viewer.layers.move(viewer.layers.index(layer), index)
    # napari 0.9 moved the grid to viewer.canvas; older versions keep it on the viewer.
    grid = getattr(viewer, "canvas", viewer).grid
    grid.shape = (2, 2) if len(cells) == 4 else (1, len(cells))
    grid.enabled = True
    missing = [n for n in names if n is not None and n not in viewer.layers]
    note = f" ({', '.join(missing)} no longer in the viewer)" if missing else ""
    show_info(f"Side by side: {', '.join(layer.name for layer in cells)}{note}.")


def error_contrast_limits(
    error, frames: list[int], n_samples: int = 5, percentile: float = 99.5
) -> tuple[float, float]:
    """Limits symmetric around 0 for a signed-error stack, from a few of ``frames``.

    The half width is the median over sampled frames of each frame's ``percentile``-th
    percentile of ``|error|``, so a few outliers do not flatten the view; 0 stays in the
    middle of the colormap.
    """
    frames = sorted(frames)
    if frames:
        picks = np.unique(np.linspace(0, len(frames) - 1, n_samples).round().astype(int))
        widths = []
        for i in picks:
            values = np.abs(np.asarray(error[frames[i]]))
            values = values[np.isfinite(values)]
            if values.size:
                widths.append(float(np.percentile(values, percentile)))
        width = float(np.median(widths)) if widths else 0.0
    else:
        width = 0.0
    width = width if width > 0 else 1.0
    return -width, width


def _fused_layer(viewer: napari.viewer.Viewer) -> Image | None:
    """The selected fused layer (or the source of a selected error layer), else the last."""
    for layer in viewer.layers.selection:
        source = layer.metadata.get(ERROR_SOURCE_KEY)
        if source in viewer.layers:
            layer = viewer.layers[source]
        if RECORD_KEY in layer.metadata:
            return layer
    fused = [layer for layer in viewer.layers if RECORD_KEY in layer.metadata]
    return fused[-1] if fused else None


def _add_error_layer(viewer: napari.viewer.Viewer, fused: Image, truth: Image) -> Image:
    """Add (or refresh) ``"<fused> error"``: fused minus truth, frame by frame."""
    error = ErrorStack(fused.data, truth.data)
    name = f"{fused.name} error"
    if name in viewer.layers:
        viewer.layers.remove(name)
    return viewer.add_image(
        error,
        name=name,
        scale=fused.scale,
        translate=fused.translate,
        axis_labels=fused.axis_labels,
        colormap="PiYG",
        contrast_limits=error_contrast_limits(error, list(fused.metadata[RECORD_KEY].done)),
        multiscale=False,
        metadata={ERROR_SOURCE_KEY: fused.name},
    )
