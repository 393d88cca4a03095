"""From files to a fused file: units, clipped values, inputs that change under a run."""

import os
import shutil

import numpy as np
import pytest
import tifffile

from napari_xfusion.config import TimeModel
from napari_xfusion.io import StackError, incomplete_path, read_stack
from napari_xfusion.methods import create_method
from napari_xfusion.pipeline import fuse_to_file, prepare_inputs


def bright_spot_pair(tmp_path):
    """LR and HR of a static scene with one small spot far above the 99.65th percentile."""
    rng = np.random.default_rng(0)
    n, h, w, spacing = 21, 24, 32, 10
    truth = (1000 + 200 * rng.random((n, 4 * h, 4 * w))).astype(np.float64)
    truth[:, 40:46, 60:66] = 60000.0
    lr = truth.reshape(n, h, 4, w, 4).mean(axis=(2, 4))
    lr_path, hr_path = tmp_path / "lr.tif", tmp_path / "hr.tif"
    tifffile.imwrite(lr_path, lr.astype(np.uint16), photometric="minisblack")
    tifffile.imwrite(hr_path, truth[::spacing].astype(np.uint16), photometric="minisblack")
    return lr_path, hr_path, TimeModel(spacing=spacing)


@pytest.mark.parametrize("method", ["transfer", "bicubic"])
def test_values_the_normalization_clipped_come_back_where_the_hr_camera_saw_them(
    tmp_path, method
):
    lr, hr, model = bright_spot_pair(tmp_path)
    inputs = prepare_inputs(lr, hr, model)
    assert inputs.hr_norm.high < 30000  # the spot is far beyond the clip
    out = tmp_path / "fused.tif"
    fuse_to_file(inputs, create_method(method), out)
    fused = tifffile.imread(out)
    # At the keyframes' own times and between them (the spot did not move).
    for t in (0, 5, 10, 15):
        spot = fused[t, 42:44, 62:64]  # the middle: methods differ at the edges
        assert spot.min() > 55000, (t, spot.min())
    # Around the spot the scene stays in its own range: nothing else is lifted.
    assert fused[:, :30].max() < 2000


def test_spot_seen_in_one_keyframe_only_is_left_at_the_clip(tmp_path):
    lr, hr, model = bright_spot_pair(tmp_path)
    keyframes = tifffile.imread(hr)
    keyframes[1:, 40:46, 60:66] = 1100  # gone from the second keyframe on: it moved
    tifffile.imwrite(hr, keyframes, photometric="minisblack")
    inputs = prepare_inputs(lr, hr, model)
    out = tmp_path / "fused.tif"
    fuse_to_file(inputs, create_method("transfer"), out)
    fused = tifffile.imread(out)
    assert fused[0, 42:44, 62:64].min() > 55000  # the keyframe's own time still knows it
    assert fused[5, 41:45, 61:65].max() <= inputs.hr_norm.high + 1


def test_input_replaced_during_a_run_is_an_error(tmp_path):
    lr, hr, model = bright_spot_pair(tmp_path)
    inputs = prepare_inputs(lr, hr, model)
    copy = tmp_path / "copy.tif"
    shutil.copy(lr, copy)
    out = tmp_path / "fused.tif"

    def replace_after_first(done, total):
        if done == 1:
            os.replace(copy, lr)

    with pytest.raises(StackError, match="lr.tif changed while it was being fused"):
        fuse_to_file(inputs, create_method("bicubic"), out, progress=replace_after_first)
    assert not out.exists() and not incomplete_path(out).exists()


def test_unchanged_inputs_pass_the_end_check(tmp_path):
    lr, hr, model = bright_spot_pair(tmp_path)
    out = tmp_path / "fused.tif"
    result = fuse_to_file(prepare_inputs(lr, hr, model), create_method("bicubic"), out)
    assert result.frames == 21 and read_stack(out).shape == (21, 96, 128)
