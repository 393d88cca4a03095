"""The side-by-side command in a real viewer (Xvfb): grid, layer order, signed error."""

import numpy as np
import pytest

pytest.importorskip("napari")

from napari_xfusion._napari import compare  # noqa: E402
from napari_xfusion._napari.compare import error_contrast_limits, show_side_by_side  # noqa: E402
from napari_xfusion._napari.record import RECORD_KEY, ErrorStack, ResultStack  # noqa: E402


@pytest.fixture
def fused(open_dock, small_experiment, qtbot):
    """A viewer where the sample was fused (bicubic: quick) with its ground truth chosen."""
    viewer, widget = open_dock(small_experiment, show=True)
    widget.method.value = "bicubic"
    widget.start()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    return viewer, widget.result_layer


def test_inputs_result_and_signed_error_share_a_grid(fused, small_experiment):
    viewer, result = fused
    viewer.add_image(np.zeros((3, 8, 8)), name="something else")
    show_side_by_side(viewer)
    error = viewer.layers[f"{result.name} error"]
    shown = [layer.name for layer in viewer.layers if layer.visible]
    assert shown == ["LR stream", "HR keyframes", result.name, error.name]
    assert viewer.canvas.grid.enabled and tuple(viewer.canvas.grid.shape) == (2, 2)
    # The error is fused minus truth, in the stacks' units, on the fused layer's grid.
    t = 7
    expected = np.asarray(result.data[t], np.float32) - small_experiment.truth[t]
    np.testing.assert_allclose(error.data[t], expected, atol=1e-6)
    assert tuple(error.scale) == tuple(result.scale)
    low, high = error.contrast_limits
    assert low == -high and 0 < high < np.abs(expected).max()
    # The four cells really drew something (the canvas is not blank).
    shot = viewer.screenshot(canvas_only=True, flash=False)
    assert shot[..., :3].std() > 5
    # Running it again with the error layer selected refreshes instead of adding one.
    viewer.layers.selection.active = error
    show_side_by_side(viewer)
    assert [layer.name for layer in viewer.layers].count(error.name) == 1


def test_without_a_ground_truth_there_is_no_error_layer(fused):
    viewer, result = fused
    result.metadata[RECORD_KEY].inputs.pop("truth")
    show_side_by_side(viewer)
    assert [layer.name for layer in viewer.layers if layer.visible] == [
        "LR stream", "HR keyframes", result.name
    ]
    assert tuple(viewer.canvas.grid.shape) == (1, 3)


def test_nothing_fused_gives_a_warning(make_napari_viewer, monkeypatch):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((3, 8, 8)), name="LR stream")
    said = []
    monkeypatch.setattr(compare, "show_warning", said.append)
    show_side_by_side(viewer)
    assert said and "fuse first" in said[0]
    assert not viewer.canvas.grid.enabled


def test_error_of_unfused_frames_is_nan_and_limits_ignore_it():
    result = ResultStack((4, 2, 2), np.uint16)
    result[1] = np.full((2, 2), 110)
    truth = np.full((4, 2, 2), 100, np.uint16)
    error = ErrorStack(result, truth)
    assert np.isnan(error[0]).all() and (error[1] == 10).all()
    assert error_contrast_limits(error, [1]) == (-10.0, 10.0)
    assert error_contrast_limits(error, []) == (-1.0, 1.0)
    with pytest.raises(ValueError, match="differ in shape"):
        ErrorStack(result, truth[:3])
