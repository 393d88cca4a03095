"""The attention plot dock and the ratio views, in a real viewer under Xvfb."""

import dask.array as da
import numpy as np
import pytest

pytest.importorskip("napari")

from matplotlib.backend_bases import MouseEvent  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402
from napari.utils.theme import get_theme  # noqa: E402

from napari_xfusion._napari import ratio as _ratio  # noqa: E402
from napari_xfusion._napari.plots import AttentionPlot  # noqa: E402
from napari_xfusion._napari.ratio import add_ratio_views  # noqa: E402
from napari_xfusion._napari.record import RECORD_KEY, FusionRecord, ResultStack  # noqa: E402
from napari_xfusion.config import TimeModel  # noqa: E402
from napari_xfusion.streaming import FusedFrame  # noqa: E402
from napari_xfusion.timeline import Timeline  # noqa: E402

N_FRAMES, SPACING = 12, 4


def fused_frame(timeline: Timeline, t: int) -> FusedFrame:
    """A frame whose raw HR scores drift from k0 to k1 with the distance from k0."""
    inputs = timeline.inputs(t)
    d = t - inputs.hr_times[0]
    attention = np.array([1.0, 2.0, 1.5, 4.0 - 0.5 * d, 1.0 + 0.5 * d])
    image = np.zeros((8, 8), np.float32)
    return FusedFrame(t, image, inputs.is_keyframe, attention, inputs.hr_times)


def expected_scores(t: int) -> tuple[float, float]:
    """Normalized backward and forward scores: raw HR scores over the backward score at k0 (4)."""
    k0 = min(t // SPACING, N_FRAMES // SPACING - 2) * SPACING
    d = t - k0
    return (4.0 - 0.5 * d) / 4.0, (1.0 + 0.5 * d) / 4.0


def add_fused_layer(viewer, name="Fused (EDVR-STF)", frames=range(6), psnr=False):
    timeline = Timeline(N_FRAMES, N_FRAMES // SPACING, TimeModel(spacing=SPACING))
    record = FusionRecord(timeline, "EDVR-STF")
    for t in frames:
        record.add(fused_frame(timeline, t), 30.0 + t if psnr else None)
    data = ResultStack((N_FRAMES, 8, 8), np.float32)
    viewer.add_image(data, name=name, metadata={RECORD_KEY: record}, multiscale=False)
    return record


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


@pytest.fixture
def plot(viewer):
    widget = AttentionPlot(viewer)
    viewer.window.add_dock_widget(widget)
    return widget


def lines_by_label(widget):
    return {line.get_label(): line for ax in widget.figure.axes for line in ax.get_lines()}


def test_without_a_record_the_plot_asks_to_fuse_first(viewer, plot):
    viewer.add_image(np.zeros((3, 4, 4)))
    assert plot.record is None
    assert plot.figure.axes == []
    assert any("Fuse first" in text.get_text() for text in plot.figure.texts)


def test_scores_keyframes_and_raw_scores_are_plotted(viewer, plot):
    record = add_fused_layer(viewer, frames=[5, 0, 4, 1, 2, 3, 8, 9])  # out of order
    assert plot.record is record
    lines = lines_by_label(plot)
    times = [0, 1, 2, 3, 4, 5, 8, 9]
    expected = np.array([expected_scores(t) for t in times])
    np.testing.assert_array_equal(lines["backward (HR k0)"].get_xdata(), times)
    np.testing.assert_allclose(lines["backward (HR k0)"].get_ydata(), expected[:, 0])
    np.testing.assert_allclose(lines["forward (HR k1)"].get_ydata(), expected[:, 1])
    assert "PSNR" not in lines and len(plot.figure.axes) == 1
    [keyframes] = plot.figure.axes[0].collections
    assert sorted(seg[0, 0] for seg in keyframes.get_segments()) == [0, 4, 8]
    assert "raw score" not in [ax.get_ylabel() for ax in plot.figure.axes]

    plot.raw_scores.setChecked(True)
    lines = lines_by_label(plot)
    assert len(plot.figure.axes) == 2
    np.testing.assert_array_equal(lines["lr_ref"].get_ydata(), 2.0)
    np.testing.assert_allclose(lines["hr_k1"].get_ydata(), 4 * expected[:, 1])  # un-normalized
    assert {"lr_prev", "lr_ref", "lr_next", "hr_k0", "hr_k1"} <= set(lines)


def test_cursor_follows_the_viewer_time(viewer, plot):
    add_fused_layer(viewer)
    viewer.dims.set_point(0, 7)
    assert [list(c.get_xdata()) for c in plot.cursors] == [[7, 7]]
    plot.raw_scores.setChecked(True)
    viewer.dims.set_point(0, 3)
    assert [list(c.get_xdata()) for c in plot.cursors] == [[3, 3], [3, 3]]


def click(widget, ax, t, button=1):
    widget.canvas.draw()  # lay the axes out, so data and pixel positions agree
    x, y = ax.transData.transform((t, np.mean(ax.get_ylim())))
    event = MouseEvent("button_press_event", widget.canvas, x, y, button=button)
    widget.canvas.callbacks.process("button_press_event", event)


def test_click_moves_the_viewer_to_the_frame(viewer, plot):
    add_fused_layer(viewer)
    viewer.dims.set_point(0, 0)
    click(plot, plot.figure.axes[0], 6.2)
    assert viewer.dims.point[0] == 6
    click(plot, plot.figure.axes[0], 2, button=3)  # only the left button seeks
    assert viewer.dims.point[0] == 6
    assert [list(c.get_xdata()) for c in plot.cursors] == [[6, 6]]


def test_new_frames_update_the_plot_throttled(viewer, plot, qtbot):
    record = add_fused_layer(viewer, frames=range(3))
    refreshes = []
    refresh = plot.refresh
    plot.refresh = lambda: (refreshes.append(len(record.done)), refresh())
    for t in range(3, 7):
        record.add(fused_frame(record.timeline, t))
    # Redrawn later, once, not on every frame.
    assert len(lines_by_label(plot)["backward (HR k0)"].get_xdata()) == 3
    qtbot.waitUntil(lambda: len(lines_by_label(plot)["backward (HR k0)"].get_xdata()) == 7)
    qtbot.wait(300)
    assert refreshes == [7]
    assert "7 of 12 frames" in plot.figure.axes[0].get_title()


def test_the_last_frame_is_drawn_at_once(viewer, plot):
    record = add_fused_layer(viewer, frames=range(N_FRAMES - 1))
    record.add(fused_frame(record.timeline, N_FRAMES - 1))
    assert f"{N_FRAMES} of {N_FRAMES} frames" in plot.figure.axes[0].get_title()


def test_redraws_back_off_with_their_own_cost(viewer, plot, qtbot):
    from napari_xfusion._napari import plots

    record = add_fused_layer(viewer, frames=range(3))
    plot.last_draw_seconds = 0.0
    refresh = plot.refresh

    def slow_refresh():
        refresh()
        plot.last_draw_seconds = 0.08

    plot.refresh = slow_refresh
    record.add(fused_frame(record.timeline, 3))
    qtbot.waitUntil(lambda: "4 of 12" in plot.figure.axes[0].get_title())
    assert plot._schedule_redraw.timeout() == round(1000 * plots.REDRAW_BACKOFF * 0.08)


def test_scrubbing_moves_the_cursor_without_redrawing_the_figure(viewer, plot, qtbot):
    add_fused_layer(viewer)
    plot.canvas.draw()
    full_draws = []
    plot.canvas.mpl_connect("draw_event", full_draws.append)
    for t in range(N_FRAMES):
        viewer.dims.set_point(0, t)
    qtbot.wait(300)  # a deferred redraw would have come by now
    assert not full_draws
    assert [list(c.get_xdata()) for c in plot.cursors] == [[N_FRAMES - 1] * 2]


def test_psnr_axis_appears_only_with_a_ground_truth(viewer, plot, qtbot):
    record = add_fused_layer(viewer, frames=range(4))
    assert len(plot.figure.axes) == 1
    record.add(fused_frame(record.timeline, 4), psnr=31.5)
    qtbot.waitUntil(lambda: len(plot.figure.axes) == 2)
    psnr_axis = plot.figure.axes[1]
    assert psnr_axis.get_ylabel() == "PSNR (dB)"
    [line] = psnr_axis.get_lines()
    np.testing.assert_array_equal(line.get_xdata(), [4])
    np.testing.assert_array_equal(line.get_ydata(), [31.5])


def test_a_classical_method_plots_its_psnr_on_the_only_axis(viewer, plot, qtbot):
    timeline = Timeline(N_FRAMES, N_FRAMES // SPACING, TimeModel(spacing=SPACING))
    record = FusionRecord(timeline, "Detail transfer")
    for t in range(3):
        inputs = timeline.inputs(t)
        frame = FusedFrame(t, np.zeros((8, 8), np.float32), inputs.is_keyframe, None,
                           inputs.hr_times)
        record.add(frame, 30.0 + t)
    viewer.add_image(ResultStack((N_FRAMES, 8, 8), np.float32), name="transfer",
                     metadata={RECORD_KEY: record}, multiscale=False)
    qtbot.waitUntil(lambda: len(plot.figure.axes) == 1 and bool(plot.figure.axes[0].get_lines()))
    [ax] = plot.figure.axes
    assert ax.get_ylabel() == "PSNR (dB)"
    # The PSNR alone (the time cursor is an unlabelled line).
    labels = [line.get_label() for line in ax.get_lines()]
    assert [label for label in labels if not label.startswith("_")] == ["PSNR"]


def test_theme_change_recolours(viewer, plot):
    add_fused_layer(viewer, psnr=True)
    viewer.theme = "dark"
    dark = get_theme("dark")
    assert plot.figure.get_facecolor() == to_rgba(dark.background.as_hex())
    viewer.theme = "light"
    light = get_theme("light")
    assert plot.figure.get_facecolor() == to_rgba(light.background.as_hex())
    for ax in plot.figure.axes:
        assert ax.get_facecolor() == to_rgba(light.background.as_hex())
        assert ax.yaxis.label.get_color() == light.text.as_hex()
    assert to_rgba(dark.background.as_hex()) != to_rgba(light.background.as_hex())


def test_plot_follows_the_selected_fused_layer(viewer, plot, qtbot):
    first = add_fused_layer(viewer, name="run 1", frames=range(2))
    second = add_fused_layer(viewer, name="run 2", frames=range(5))
    assert plot.record is second  # the latest layer is selected
    viewer.layers.selection.active = viewer.layers["run 1"]
    assert plot.record is first
    assert len(lines_by_label(plot)["backward (HR k0)"].get_xdata()) == 2
    viewer.layers.selection.active = viewer.add_image(np.zeros((3, 4, 4)), name="plain")
    assert plot.record is second  # no record selected: the topmost one
    viewer.layers.remove("run 1")
    viewer.layers.remove("run 2")
    assert plot.record is None
    assert any("Fuse first" in text.get_text() for text in plot.figure.texts)
    # A record no longer shown does not redraw the plot.
    first.add(fused_frame(first.timeline, 2))
    qtbot.wait(300)
    assert any("Fuse first" in text.get_text() for text in plot.figure.texts)


# --- ratio views -------------------------------------------------------------------


def add_stream_layers(viewer):
    rng = np.random.default_rng(0)
    lr = viewer.add_image(rng.uniform(1, 2, (N_FRAMES, 4, 4)).astype(np.float32), name="LR stream",
                          scale=(1, 4, 4), translate=(0, 1.5, 1.5))
    hr = viewer.add_image(da.from_array(rng.uniform(1, 2, (3, 16, 16)), chunks=(1, 16, 16)),
                          name="HR keyframes", scale=(SPACING, 1, 1), translate=(2, 0, 0))
    add_fused_layer(viewer)
    return lr, hr, viewer.layers["Fused (EDVR-STF)"]


ALL_VIEWS = ["LR stream ratio", "HR keyframes ratio", "Fused (EDVR-STF) ratio"]


def ratio_layers(viewer):
    return [layer.name for layer in viewer.layers if layer.name.endswith("ratio")]


def test_ratio_views_of_all_stacks_when_none_is_selected(viewer):
    lr, hr, fused = add_stream_layers(viewer)
    viewer.add_image(np.zeros((16, 16)), name="single image")
    viewer.layers.selection.clear()
    add_ratio_views(viewer)
    assert ratio_layers(viewer) == ALL_VIEWS
    for source in (lr, hr, fused):
        view = viewer.layers[f"{source.name} ratio"]
        assert viewer.layers.index(view) == viewer.layers.index(source) + 1
        np.testing.assert_array_equal(view.scale, source.scale)
        np.testing.assert_array_equal(view.translate, source.translate)
        assert view.axis_labels == source.axis_labels
        assert isinstance(view.data, da.Array) and view.data.shape == source.data.shape
        low, high = view.contrast_limits
        assert low < 1 < high and high - 1 == pytest.approx(1 - low)
    # The keyframe view divides by the previous keyframe.
    hr_view = viewer.layers["HR keyframes ratio"].data
    np.testing.assert_allclose(hr_view[2].compute(), (hr.data[2] / hr.data[1]).compute(), rtol=1e-6)
    np.testing.assert_allclose(viewer.layers["LR stream ratio"].data[5].compute(),
                               lr.data[5] / lr.data[4], rtol=1e-6)


def test_running_again_replaces_instead_of_duplicating(viewer):
    lr, _, _ = add_stream_layers(viewer)
    viewer.layers.selection.clear()
    add_ratio_views(viewer)
    first = viewer.layers["LR stream ratio"]
    count = len(viewer.layers)
    add_ratio_views(viewer)  # the three views are selected now: each is refreshed
    assert len(viewer.layers) == count
    assert ratio_layers(viewer) == ALL_VIEWS
    assert viewer.layers["LR stream ratio"] is not first


def test_only_selected_stacks_get_a_view(viewer):
    lr, _, _ = add_stream_layers(viewer)
    viewer.layers.selection = {lr}
    add_ratio_views(viewer)
    assert ratio_layers(viewer) == ["LR stream ratio"]


def test_no_stack_gives_a_warning(viewer, monkeypatch):
    warnings = []
    monkeypatch.setattr(_ratio, "show_warning", warnings.append)
    viewer.add_image(np.zeros((16, 16)), name="single image")
    viewer.add_image(np.zeros((1, 16, 16)), name="one frame")
    add_ratio_views(viewer)
    assert len(viewer.layers) == 2
    assert len(warnings) == 1 and "2 or more frames" in warnings[0]


def test_manifest_command_and_dock_open_through_napari(viewer):
    from napari._app_model import get_app_model

    viewer.add_image(np.ones((3, 8, 8)), name="stack")
    get_app_model().commands.execute_command("napari-xfusion.ratio_views").result()
    assert "stack ratio" in viewer.layers  # napari passed the viewer in
    _, widget = viewer.window.add_plugin_dock_widget(
        "napari-xfusion", "Attention and quality per frame"
    )
    assert isinstance(widget, AttentionPlot)
