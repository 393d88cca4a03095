"""Fixtures of the viewer tests: a viewer with an experiment loaded and the fusion dock."""

import pytest


@pytest.fixture
def open_dock(make_napari_viewer):
    """Open a viewer with an experiment's three stacks and the fusion dock set to its time
    model: ``open_dock(exp, weights=None, show=False) -> (viewer, widget)``."""
    from napari_xfusion._napari.widget import FusionWidget

    def open_(exp, weights=None, show=False):
        viewer = make_napari_viewer(show=show)
        viewer.add_image(exp.truth, name="HR ground truth")
        viewer.add_image(exp.hr, name="HR keyframes")
        viewer.add_image(exp.lr, name="LR stream")
        widget = FusionWidget(viewer)
        viewer.window.add_dock_widget(widget)
        widget.spacing.value = exp.timeline.model.spacing
        if weights is not None:
            widget.weights.value = str(weights)
        return viewer, widget

    return open_
