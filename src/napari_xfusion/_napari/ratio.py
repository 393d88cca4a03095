"""Menu command: ratio views, each frame divided by the previous one (paper figure 3).

Which layers get a view: the selected image layers that are stacks of frames ``(t, y, x)``
with at least 2 frames; a selected ratio view stands for its source, so selecting one and
running the command again refreshes it. When no selected layer qualifies, every such
layer in the viewer gets one. The view of the HR keyframe layer divides each keyframe by
the previous keyframe, and, sharing that layer's scale and translate, sits at the
keyframe times. A layer being fused reads its unfused frames as NaN (counted as 0): run the command
again when the run has finished to see the whole sequence.
"""

from __future__ import annotations

import napari
from napari.layers import Image
from napari.utils.notifications import show_info, show_warning

from ..ratio import ratio_contrast_limits, ratio_to_previous

#: Metadata key of a ratio view; its value is the name of the source layer.
RATIO_SOURCE_KEY = "xfusion_ratio_of"


def add_ratio_views(viewer: napari.viewer.Viewer) -> None:
    """Add (or refresh) a lazy ratio view ``"<name> ratio"`` of image stacks.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer; napari passes it when the command runs from the menu.
    """
    sources = _sources(viewer)
    if not sources:
        show_warning(
            "Ratio views need an image layer holding a stack of 2 or more frames (t, y, x): "
            "open a stack or fuse first, then select it."
        )
        return
    views = [_add_view(viewer, layer) for layer in sources]
    # Selecting the views makes running the command again refresh the same ones.
    viewer.layers.selection.clear()
    viewer.layers.selection.update(views)
    names = ", ".join(view.name for view in views)
    show_info(f"Added ratio views (each frame / previous frame): {names}")


def ratio_view_name(layer_name: str) -> str:
    """Name of the ratio view of a layer."""
    return f"{layer_name} ratio"


def _is_stack(layer) -> bool:
    return (
        isinstance(layer, Image)
        and not layer.rgb
        and not layer.multiscale
        and layer.ndim == 3
        and layer.data.shape[0] >= 2
        and RATIO_SOURCE_KEY not in layer.metadata
    )


def _sources(viewer: napari.viewer.Viewer) -> list[Image]:
    """The layers to make views of, in layer-list order (see the module notes)."""
    selected = set()
    for layer in viewer.layers.selection:
        source_name = layer.metadata.get(RATIO_SOURCE_KEY)
        if source_name is not None and source_name in viewer.layers:
            layer = viewer.layers[source_name]
        if _is_stack(layer):
            selected.add(layer)
    chosen = [layer for layer in viewer.layers if layer in selected]
    return chosen or [layer for layer in viewer.layers if _is_stack(layer)]


def _add_view(viewer: napari.viewer.Viewer, source: Image) -> Image:
    """Add the ratio view of ``source`` just above it, or in place of an older one."""
    ratio = ratio_to_previous(source.data)
    name = ratio_view_name(source.name)
    if name in viewer.layers:
        index = viewer.layers.index(name)
        viewer.layers.remove(name)
    else:
        index = viewer.layers.index(source) + 1
    view = Image(
        ratio,
        name=name,
        scale=source.scale,
        translate=source.translate,
        axis_labels=source.axis_labels,
        colormap="gray",
        contrast_limits=ratio_contrast_limits(ratio),
        multiscale=False,
        metadata={RATIO_SOURCE_KEY: source.name},
    )
    viewer.layers.insert(index, view)
    return view
