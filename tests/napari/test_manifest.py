"""The napari side: manifest, reader, writer, sample data, and a real viewer under Xvfb."""

from pathlib import Path

import numpy as np
import pytest
import tifffile

npe2 = pytest.importorskip("npe2")

from napari_xfusion._napari.reader import get_reader  # noqa: E402
from napari_xfusion._napari.sample_data import sample_lpbf  # noqa: E402
from napari_xfusion._napari.writer import write_stack  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def test_manifest_is_valid_and_discovered():
    manifest = npe2.PluginManifest.from_file(ROOT / "napari.yaml")
    assert manifest.name == "napari-xfusion"
    pm = npe2.PluginManager.instance()
    pm.discover()
    discovered = pm.get_manifest("napari-xfusion")
    commands = {c.id for c in manifest.contributions.commands}
    assert {c.id for c in discovered.contributions.commands} == commands
    for command in manifest.contributions.commands:
        # Every python_name resolves to a callable.
        module, func = command.python_name.split(":")
        assert callable(getattr(__import__(module, fromlist=[func]), func))


def test_reader_claims_tiffs_and_folders_only(tmp_path):
    tif = tmp_path / "lr.tif"
    tifffile.imwrite(tif, np.zeros((5, 8, 9), np.uint16), photometric="minisblack")
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in (10, 2, 1):
        tifffile.imwrite(folder / f"f{i}.tif", np.full((4, 6), i, np.uint8))
    (tmp_path / "notes.txt").write_text("x")
    assert get_reader(str(tif)) is not None
    assert get_reader(str(folder)) is not None
    assert get_reader(str(tmp_path / "notes.txt")) is None
    assert get_reader(str(tmp_path / "missing")) is None
    assert get_reader([str(tif), str(tmp_path / "notes.txt")]) is None
    data, meta, kind = get_reader(str(folder))(str(folder))[0]
    assert kind == "image" and meta["axis_labels"] == ("t", "y", "x")
    assert data.shape == (3, 4, 6)
    assert [int(np.asarray(data[i])[0, 0]) for i in range(3)] == [1, 2, 10]


def test_reader_opens_camera_files(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "scan.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("entry/data/data", data=np.arange(60, dtype=np.uint16).reshape(3, 4, 5))
    data, meta, kind = get_reader(str(path))(str(path))[0]
    assert kind == "image" and data.shape == (3, 4, 5) and meta["name"] == "scan"
    assert get_reader(str(tmp_path / "shot.cih")) is not None


def test_ordinary_images_are_left_to_napari_and_bad_stacks_explained(tmp_path):
    # 2-D and colour images are not stacks: napari's own reader opens them without asking.
    image, rgb = tmp_path / "photo.tif", tmp_path / "rgb.tif"
    tifffile.imwrite(image, np.zeros((8, 9), np.uint16))
    tifffile.imwrite(rgb, np.zeros((8, 9, 3), np.uint8), photometric="rgb")
    assert get_reader(str(image)) is None and get_reader(str(rgb)) is None
    # A damaged stack is claimed, so that reading it says what is wrong.
    bad = tmp_path / "cut.tif"
    tifffile.imwrite(bad, np.zeros((6, 32, 32), np.uint16), photometric="minisblack")
    bad.write_bytes(bad.read_bytes()[:3000])
    reader = get_reader(str(bad))
    with pytest.raises(ValueError, match="truncated"):
        reader(str(bad))


def test_writer_round_trip(tmp_path):
    data = np.arange(3 * 4 * 5, dtype=np.uint16).reshape(3, 4, 5)
    [path] = write_stack(str(tmp_path / "out.tif"), data, {"name": "fused"})
    np.testing.assert_array_equal(tifffile.imread(path), data)


def test_sample_data_layers_line_up():
    layers = {meta["name"]: (data, meta) for data, meta, _ in sample_lpbf()}
    truth, _ = layers["HR ground truth"]
    keys, key_meta = layers["HR keyframes"]
    lr, lr_meta = layers["LR stream"]
    assert lr.shape[0] == truth.shape[0] and lr.shape[1] * 4 == truth.shape[1]
    spacing = int(key_meta["scale"][0])
    np.testing.assert_array_equal(keys[1], truth[spacing])
    # Keyframe 1 is shown from its own time until the next keyframe's (napari rounds).
    shift = key_meta["translate"][0]
    assert [round((t - shift) / spacing) for t in (spacing, 2 * spacing - 1)] == [1, 1]
    assert lr_meta["scale"] == (1, 4, 4)


def test_viewer_opens_stack_and_renders(make_napari_viewer, tmp_path):
    path = tmp_path / "stack.tif"
    rng = np.random.default_rng(0)
    frames = (rng.random((4, 32, 48)) * 60000).astype(np.uint16)
    tifffile.imwrite(path, frames, photometric="minisblack")
    viewer = make_napari_viewer()
    layers = viewer.open(str(path), plugin="napari-xfusion")
    assert layers[0].data.shape == (4, 32, 48)
    assert viewer.dims.axis_labels[-3:] == ("t", "y", "x")
    shot = viewer.screenshot(canvas_only=True, flash=False)
    assert shot.std() > 0  # the canvas really drew the stack


def test_widgets_and_menus_are_contributed(make_napari_viewer):
    manifest = npe2.PluginManifest.from_file(ROOT / "napari.yaml")
    menus = manifest.contributions.menus
    assert [item.submenu for item in menus["napari/layers/filter"]] == ["napari-xfusion.menu"]
    in_submenu = {item.command for item in menus["napari-xfusion.menu"]}
    assert in_submenu == {
        "napari-xfusion.fusion_widget",
        "napari-xfusion.ratio_views",
        "napari-xfusion.side_by_side",
        "napari-xfusion.attention_plot",
    }
    viewer = make_napari_viewer()
    dock, widget = viewer.window.add_plugin_dock_widget("napari-xfusion", "Fuse LR and HR stacks")
    assert type(widget).__name__ == "FusionDock"
    # In a scroll area, the tall form does not set the window's minimum height.
    assert widget.minimumSizeHint().height() < widget.fusion.native.sizeHint().height() / 2
    dock, plot = viewer.window.add_plugin_dock_widget(
        "napari-xfusion", "Attention and quality per frame"
    )
    assert type(plot).__name__ == "AttentionPlot"
