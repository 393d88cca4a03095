"""The fusion dock end to end in a real viewer (Xvfb): settings, runs, cancel, errors."""

import dataclasses
import json

import numpy as np
import pytest
import tifffile
from scipy import ndimage
from skimage import data

pytest.importorskip("napari")

from napari_xfusion import devices  # noqa: E402
from napari_xfusion._napari import widget as _widget  # noqa: E402
from napari_xfusion._napari.record import RECORD_KEY  # noqa: E402
from napari_xfusion._napari.widget import FusionWidget  # noqa: E402
from napari_xfusion.config import (  # noqa: E402
    CalibrationConfig,
    ModelConfig,
    OpticsConfig,
    TimeModel,
)
from napari_xfusion.io import read_metadata  # noqa: E402
from napari_xfusion.models import build_model, save_weights  # noqa: E402
from napari_xfusion.models import read_metadata as read_weights_metadata  # noqa: E402
from napari_xfusion.simulate import simulate_experiment  # noqa: E402

WAIT_MS = 120_000


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """Tiny EDVR-STF and EDVR weights files (random, but real files of each architecture)."""
    folder = tmp_path_factory.mktemp("weights")
    paths = {}
    for arch in ("stf", "edvr"):
        config = dataclasses.replace(ModelConfig.preset("tiny"), arch=arch)
        paths[arch] = save_weights(build_model(config), folder / f"{arch}.safetensors")
    return paths


def activities() -> list[str]:
    """What napari's activity panel lists now."""
    from napari.utils import progress

    return [p.desc for p in progress._all_instances]


@pytest.fixture
def dock(open_dock, small_experiment, tiny_weights):
    return open_dock(small_experiment, tiny_weights["stf"])


def run(qtbot, widget):
    widget.start()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)


def test_guesses_layers_and_places_them_on_one_time_axis(dock, small_experiment):
    viewer, widget = dock
    assert widget.lr.value.name == "LR stream"
    assert widget.hr.value.name == "HR keyframes"
    assert widget.truth.value.name == "HR ground truth"
    assert widget.run_button.enabled, widget.message.value
    widget.offset.value = 1
    hr, lr = viewer.layers["HR keyframes"], viewer.layers["LR stream"]
    assert tuple(lr.scale) == (1, 4, 4) and tuple(lr.translate[1:]) == (1.5, 1.5)
    # At LR time t the keyframe in effect shows: j = (t - offset) // D, from its own time
    # until the next keyframe's; none before the first keyframe.
    viewer.dims.set_point(0, 0)
    assert hr._data_view.size == 1
    for t in range(1, lr.data.shape[0]):
        viewer.dims.set_point(0, t)
        np.testing.assert_array_equal(hr._data_view, hr.data[(t - 1) // 5], err_msg=f"t={t}")
        np.testing.assert_array_equal(lr._data_view, lr.data[t])


@pytest.mark.parametrize(
    "change, reason",
    [
        (lambda w, v, tmp: setattr(w.hr, "value", v.layers["LR stream"]), "same layer"),
        (lambda w, v, tmp: setattr(w.scale, "value", 2), "exactly 2 times"),
        (lambda w, v, tmp: setattr(w.offset, "value", 30), "keyframe"),
        (lambda w, v, tmp: setattr(w.separation, "value", 20), "separation"),
        (lambda w, v, tmp: setattr(w.full_rate, "value", True), "full-rate"),
        (lambda w, v, tmp: setattr(w.method, "value", "edvr"), "'stf' weights"),
        (lambda w, v, tmp: setattr(w.output, "value", "/nonexistent/out.tif"), "does not exist"),
        (lambda w, v, tmp: setattr(w.output, "value", str(tmp / "out.png")), "unsupported output"),
    ],
)
def test_invalid_settings_are_flagged_before_running(dock, tmp_path, change, reason):
    viewer, widget = dock
    change(widget, viewer, tmp_path)
    assert reason in widget.message.value
    assert not widget.run_button.enabled


def test_a_two_dimensional_layer_is_refused(dock):
    viewer, widget = dock
    image = viewer.add_image(np.zeros((16, 24), np.float32), name="single image")
    widget.lr.value = image
    assert "not a (t, y, x) grayscale stack" in widget.message.value
    assert not widget.run_button.enabled


def test_fuses_into_a_layer_and_a_file(dock, qtbot, tmp_path, small_experiment):
    viewer, widget = dock
    output = tmp_path / "fused.tif"
    widget.output.value = str(output)
    run(qtbot, widget)
    layer = viewer.layers["LR stream fused (EDVR-STF, aligned keyframes)"]
    record = layer.metadata[RECORD_KEY]
    n = len(small_experiment.lr)
    assert record.done == set(range(n))
    assert len(record.attention) == n and len(record.psnr) == n
    assert all(np.isfinite(list(record.psnr.values())))
    written = tifffile.imread(output)
    assert written.shape == (n, *small_experiment.truth.shape[1:])
    # When the run ends the layer shows the file, every frame filled in.
    np.testing.assert_array_equal(np.asarray(layer.data), written)
    assert widget.speed.value.startswith(f"{n}/{n} frames") and "left" not in widget.speed.value
    assert record.inputs == {"lr": "LR stream", "hr": "HR keyframes", "truth": "HR ground truth"}
    assert all(written[t].std() > 0 for t in range(n))
    assert (tmp_path / "fused.attention.csv").exists()
    assert read_metadata(output)["napari_xfusion"]
    assert "fused 16 frames" in widget.message.value and "Warning" not in widget.message.value
    # The default method found the sample still and took its keyframes as they are.
    assert "The keyframes stand still" in widget.message.value
    assert widget.progress.value == n


def test_a_panning_recording_fuses_and_says_to_align_the_keyframes(open_dock, qtbot,
                                                                    tiny_weights):
    image = data.camera()[::2, ::2] / 255.0
    truth = np.stack([ndimage.shift(image, (t, -t), order=1, mode="nearest")
                      for t in range(11)])[:, 64:192, 64:192].astype(np.float32)
    viewer, widget = open_dock(simulate_experiment(truth, TimeModel(spacing=5)),
                               tiny_weights["stf"])
    assert widget.method.value == "stf-aligned"  # the default
    widget.method.value = "stf"
    run(qtbot, widget)
    message = widget.message.value
    assert message.startswith("fused 11 frames")
    assert "Warning: the scene moves between keyframes" in message and "stf-aligned" in message
    widget.method.value = "stf-aligned"
    run(qtbot, widget)
    message = widget.message.value
    assert "fused 11 frames" in message and "Warning" not in message
    assert "The keyframes move" in message and "aligned onto each frame" in message


def test_a_blurred_lr_camera_is_matched_and_the_dock_says_so(open_dock, qtbot,
                                                             small_experiment):
    blurred = simulate_experiment(small_experiment.truth, small_experiment.timeline.model,
                                  optics=OpticsConfig(blur=1.5, shift=(0.5, 0.5)))
    viewer, widget = open_dock(blurred)
    widget.method.value = "transfer"
    run(qtbot, widget)
    message = widget.message.value
    assert message.startswith("fused 16 frames")
    assert "The LR camera's own optics" in message and "filtered to match" in message


def test_rerunning_replaces_the_result_layer(dock, qtbot):
    viewer, widget = dock
    widget.method.value = "bicubic"
    run(qtbot, widget)
    first = viewer.layers["LR stream fused (Bicubic interpolation)"]
    run(qtbot, widget)
    names = [layer.name for layer in viewer.layers]
    assert names.count("LR stream fused (Bicubic interpolation)") == 1
    assert viewer.layers["LR stream fused (Bicubic interpolation)"] is not first
    widget.method.value = "transfer"
    run(qtbot, widget)
    assert {"LR stream fused (Bicubic interpolation)", "LR stream fused (Detail transfer)"} <= {
        layer.name for layer in viewer.layers
    }


def test_another_datasets_result_is_never_replaced(dock, qtbot, small_experiment):
    viewer, widget = dock
    widget.method.value = "bicubic"
    run(qtbot, widget)
    first = viewer.layers["LR stream fused (Bicubic interpolation)"]
    # A second experiment, with its own name and no ground truth of the first one's length.
    viewer.add_image(small_experiment.lr[:10].copy(), name="scan42 lr")
    viewer.add_image(small_experiment.hr[:2].copy(), name="scan42 hr")
    widget.lr.value, widget.hr.value = viewer.layers["scan42 lr"], viewer.layers["scan42 hr"]
    assert widget.truth.value is None  # the first experiment's truth no longer applies
    run(qtbot, widget)
    assert viewer.layers["LR stream fused (Bicubic interpolation)"] is first
    assert viewer.layers["scan42 lr fused (Bicubic interpolation)"].data.shape[0] == 10


def test_deleting_the_result_layer_stops_the_run(dock, qtbot):
    viewer, widget = dock
    widget.start()
    qtbot.waitUntil(lambda: widget.result_layer is not None
                    and len(widget.result_layer.metadata[RECORD_KEY].done) >= 1,
                    timeout=WAIT_MS)
    viewer.layers.remove(widget.result_layer)
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    assert "cancelled after" in widget.message.value


def test_closing_the_dock_while_fusing_stops_the_work_cleanly(dock, qtbot, tmp_path):
    viewer, widget = dock
    output = tmp_path / "fused.tif"
    widget.output.value = str(output)
    retaining = devices._retain_depth
    widget.start()
    worker = widget.worker
    qtbot.waitUntil(lambda: widget.result_layer is not None, timeout=WAIT_MS)
    finished = []
    worker.finished.connect(lambda: finished.append(True))
    viewer.window.remove_dock_widget("all")  # the dock's widgets are deleted
    widget.native.deleteLater()
    # The worker stops at its next frame; nothing reaches the deleted widgets (pytest-qt
    # would fail the test on an exception in a Qt slot), and the frames made are kept.
    qtbot.waitUntil(lambda: bool(finished), timeout=WAIT_MS)
    assert (tmp_path / "fused.incomplete.tif").exists() and not output.exists()
    # The fusion was closed, not left suspended: its allocator settings are gone with it.
    assert devices._retain_depth == retaining


def test_a_spacing_that_leaves_most_keyframes_outside_runs_but_says_so(dock):
    viewer, widget = dock
    widget.spacing.value = 60
    assert widget.run_button.enabled
    assert "only 1 of the 4 HR keyframes fall inside the 16 LR frames" in widget.message.value


def test_cancel_stops_after_the_current_frame_and_keeps_what_was_written(dock, qtbot, tmp_path):
    viewer, widget = dock
    output = tmp_path / "fused.tif"
    widget.output.value = str(output)
    widget.start()
    widget.cancel()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    record = viewer.layers["LR stream fused (EDVR-STF, aligned keyframes)"].metadata[RECORD_KEY]
    assert record.done == {0}
    assert not output.exists()
    kept = tmp_path / "fused.incomplete.tif"
    assert kept.exists() and "cancelled after 1 of 16 frames" in widget.message.value
    assert widget.run_button.enabled and not widget.cancel_button.enabled
    assert "left" not in widget.speed.value and "cancelled" in widget.speed.value


def test_unfused_frames_let_the_inputs_show_through(
    open_dock, small_experiment, tiny_weights, qtbot
):
    # Shown: a hidden window with a dock widget renders a blank canvas.
    viewer, widget = open_dock(small_experiment, tiny_weights["stf"], show=True)
    widget.start()
    widget.cancel()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    result = widget.result_layer
    assert result.metadata[RECORD_KEY].done == {0}
    viewer.layers["HR ground truth"].visible = False
    viewer.dims.set_point(0, 8)  # not fused: the HR keyframe and LR frame below must show
    with_result = viewer.screenshot(canvas_only=True, flash=False)
    result.visible = False
    without = viewer.screenshot(canvas_only=True, flash=False)
    assert without[..., :3].std() > 5
    np.testing.assert_array_equal(with_result, without)


def test_settings_are_locked_while_a_run_goes(dock, qtbot):
    from napari.utils import progress

    viewer, widget = dock
    widget.start()
    assert not widget.spacing.enabled and not widget.method.enabled
    # The run also shows in napari's activity panel, and leaves it when done.
    assert [p.total for p in progress._all_instances] == [16]
    assert activities() == ["fusing (stf-aligned)"]
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    assert widget.spacing.enabled and widget.method.enabled and widget.output.enabled
    assert not activities()


def test_closing_the_dock_ends_its_activity(dock, qtbot):
    viewer, widget = dock
    widget.start_assessment()
    assert activities()
    viewer.window.remove_dock_widget("all")
    widget.native.deleteLater()
    qtbot.waitUntil(lambda: not activities(), timeout=WAIT_MS)


def test_settings_a_beginner_never_needs_are_folded_away(dock):
    viewer, widget = dock
    sections = {
        widget.network_section: ("weights", "device", "precision", "batch", "tile", "overlap"),
        widget.calibration_section: ("calibrate_minutes", "calibrated_out", "calibrate_button"),
    }
    for section, names in sections.items():
        # Folded: the section's content takes no height in the form until opened.
        assert not section.isExpanded() and section.content().maximumHeight() == 0
        for name in names:
            assert section.isAncestorOf(getattr(widget, name).native), name
        section.expand(animate=False)
        assert section.content().maximumHeight() > 0
    for name in ("lr", "hr", "spacing", "method", "run_button", "assess_button"):
        assert not any(s.isAncestorOf(getattr(widget, name).native) for s in sections), name
    # What they say reaches the run.
    widget.precision.value, widget.batch.value = "fp32", 2
    engine = widget.plan().engine
    assert (engine.precision, engine.batch) == ("fp32", 2)


def test_the_view_shows_the_whole_rescaled_lr_layer(make_napari_viewer, small_experiment):
    viewer = make_napari_viewer()
    viewer.add_image(small_experiment.lr, name="LR stream")
    viewer.add_image(small_experiment.hr, name="HR keyframes")
    FusionWidget(viewer)  # rescales the LR layer 4x onto the fusion grid
    _, h, w = small_experiment.hr.shape
    np.testing.assert_allclose(viewer.scene.camera.center[-2:], ((h - 1) / 2, (w - 1) / 2), atol=2)


def test_own_file_names_are_recognised(make_napari_viewer, small_experiment):
    viewer = make_napari_viewer()
    viewer.add_image(small_experiment.hr, name="scan42_hr")
    viewer.add_image(small_experiment.lr, name="scan42_lr")
    widget = FusionWidget(viewer)
    assert widget.lr.value.name == "scan42_lr" and widget.hr.value.name == "scan42_hr"


def test_every_setting_explains_itself(dock):
    _, widget = dock
    for name in ("lr", "hr", "spacing", "offset", "separation", "tile", "overwrite"):
        assert len(getattr(widget, name).tooltip or "") > 20, name


def test_errors_during_a_run_are_reported(dock, qtbot, monkeypatch, small_experiment):
    viewer, widget = dock
    bad = small_experiment.lr.copy()
    bad[7, 2, 3] = np.nan
    widget.lr.value = viewer.add_image(bad, name="LR with a NaN")
    shown = []
    monkeypatch.setattr(_widget, "show_error", shown.append)
    run(qtbot, widget)
    assert shown and "NaN" in shown[0]
    assert "failed" in widget.message.value and "NaN" in widget.message.value
    assert widget.run_button.enabled


def test_fused_layer_renders(open_dock, small_experiment, tiny_weights, qtbot):
    # Shown: a hidden window with a dock widget renders a blank canvas.
    viewer, widget = open_dock(small_experiment, tiny_weights["stf"], show=True)
    widget.method.value = "bicubic"
    run(qtbot, widget)
    for layer in viewer.layers:
        layer.visible = "fused (" in layer.name
    viewer.dims.set_point(0, 3)
    shot = viewer.screenshot(canvas_only=True, flash=False)
    assert shot[..., :3].std() > 5  # the fused frame really drew


def test_calibration_runs_in_the_background_and_reports(dock, qtbot, monkeypatch, tmp_path):
    viewer, widget = dock

    def quick(**settings):
        return CalibrationConfig(iterations=3, batch_size=2, lr_crop=8, **settings)

    monkeypatch.setattr(_widget, "CalibrationConfig", quick)
    # Calibrated for the method chosen: the aligned one trains on aligned keyframes.
    widget.method.value = "stf-aligned"
    assert widget.calibrate_button.enabled
    chosen = tmp_path / "scan42-calibrated.safetensors"
    widget.calibrated_out.value = str(chosen)
    widget.start_calibration()
    assert activities() == ["calibrating the network"]
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    assert not activities()
    assert "held-out keyframes" in widget.message.value or "calibration" in widget.message.value
    # Saved where the user chose (whatever the verdict), not in a temporary folder.
    assert read_weights_metadata(chosen)["format"] == "napari-xfusion-weights"
    assert read_weights_metadata(chosen)["aligned_keyframes"] == "true"
    widget.method.value = "stf"
    # It now exists: a second calibration to it needs the replace box ticked.
    widget.calibrated_out.value = ""
    widget.calibrated_out.value = str(chosen)
    assert not widget.calibrate_button.enabled and "exists" in widget.message.value
    widget.calibrated_out.value = ""
    views = [
        w for w in viewer.window.dock_widgets.values()
        if w.__class__.__name__ == "CalibrationView"
    ]
    assert len(views) == 1
    # A second calibration replaces the first one's dock instead of adding another.
    widget.start_calibration()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    views = [
        w for w in viewer.window.dock_widgets.values()
        if w.__class__.__name__ == "CalibrationView"
    ]
    assert len(views) == 1
    result = views[0].result
    assert result.iterations == 3 and np.isfinite(result.psnr_after)
    assert len(views[0].figure.axes) == 2
    # The figure wears the viewer's colours, and changes with them.
    from matplotlib.colors import to_rgba
    from napari.utils.theme import get_theme

    for theme in ("light", "dark"):
        viewer.theme = theme
        background = to_rgba(get_theme(theme).background.as_hex())
        assert views[0].figure.get_facecolor() == background
        assert all(ax.get_facecolor() == background for ax in views[0].figure.axes)
    # Three steps cannot show a gain: the weights in use stay selected.
    assert result.verdict == "cannot tell"
    assert widget._path(widget.weights) != result.weights_path


def test_assessment_shows_the_table_and_selects_the_best(dock, qtbot):
    viewer, widget = dock
    widget.method.value = "bicubic"
    widget.start_assessment()
    assert activities() == ["assessing the methods"]
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    assert not activities()
    table = widget.assessment.value
    # The networks run with their bundled weights (the weights file is bicubic's here).
    for name in ("bicubic", "transfer", "bayes", "stf"):
        assert f"\n{name} " in table
    [recommended] = [line.split()[0] for line in table.splitlines() if "<- recommended" in line]
    assert widget.method.value == recommended != "bicubic"
    assert "is recommended for this recording: selected" in widget.message.value
    assert widget.run_button.enabled


def test_a_weights_file_without_arch_is_read_as_the_library_reads_it(dock, tmp_path):
    from safetensors.torch import load_file, save_file

    viewer, widget = dock
    source = widget._path(widget.weights)
    meta = read_weights_metadata(source)
    config = {k: v for k, v in json.loads(meta["model_config"]).items() if k != "arch"}
    no_arch = tmp_path / "no-arch.safetensors"
    save_file(load_file(str(source)), str(no_arch),
              metadata=meta | {"model_config": json.dumps(config)})
    widget.weights.value = str(no_arch)
    assert widget.run_button.enabled, widget.message.value


def test_registering_two_cameras_lets_them_fuse(make_napari_viewer, qtbot):
    from napari_xfusion.config import NoiseConfig, TimeModel
    from napari_xfusion.registration import CameraTransform, HRCamera, two_camera_recording
    from napari_xfusion.synthetic import synthetic_lpbf

    scene = synthetic_lpbf(n_frames=21, height=560, width=800, seed=5)
    true = CameraTransform(3.3, 3.27, 4.0, False, True, 2.3, -5.7, (300, 480), (100, 160))
    rec = two_camera_recording(scene, true, TimeModel(spacing=10, offset=3), HRCamera(),
                               NoiseConfig(target_psnr=35, seed=1), margin=80)
    viewer = make_napari_viewer()
    viewer.add_image((rec.lr * 3000 + 200).astype(np.uint16), name="LR stream")
    viewer.add_image(rec.hr, name="HR keyframes")
    widget = FusionWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.spacing.value, widget.offset.value = 10, 1
    # Two separate cameras: the sizes do not fit until they are registered.
    assert not widget.run_button.enabled and "register them first" in widget.message.value
    widget.estimate_offset.value = True
    widget.start_registration()
    assert activities() == ["registering the cameras"]
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    assert not activities()
    assert widget.registration is not None, widget.message.value
    assert widget.offset.value == 3 and "registered:" in widget.message.value
    assert "Registration check (checkerboard)" in viewer.layers
    assert widget.run_button.enabled
    # The HR camera's frames are drawn through the transform, over the LR frames.
    world = viewer.layers["HR keyframes"].data_to_world((0, 149.5, 239.5))
    np.testing.assert_allclose(world[1:], 4 * true.to_lr([149.5, 239.5]) + 1.5, atol=0.2)
    widget.method.value = "transfer"
    run(qtbot, widget)
    fused = viewer.layers["LR stream fused (Detail transfer)"]
    y0, y1, x0, x1 = widget.registration.crop
    assert fused.data.shape == (21, 4 * (y1 - y0), 4 * (x1 - x0))
    # Choosing another HR layer drops the registration that was made for the old one.
    widget.hr.value = viewer.layers["LR stream"]
    assert widget.registration is None
