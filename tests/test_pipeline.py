"""From files to a fused file: units, clipped values, inputs that change under a run."""

import os
import shutil

import numpy as np
import pytest
import tifffile

from napari_xfusion.config import TimeModel
from napari_xfusion.io import StackError, incomplete_path, open_writer, read_stack
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
    # The LR frames, normalized on their own (the spot is 0.3% of them), are the spot on a
    # background clipped to 0: there is no optics for an LR filter to match.
    inputs = prepare_inputs(lr, hr, model, match_optics=False)
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
    # Each of the three keyframes was read once in camera units, not once per output frame.
    assert inputs.hr_source.reads == 3


def test_spot_seen_in_one_keyframe_only_is_left_at_the_clip(tmp_path):
    lr, hr, model = bright_spot_pair(tmp_path)
    keyframes = tifffile.imread(hr)
    keyframes[1:, 40:46, 60:66] = 1100  # gone from the second keyframe on: it moved
    tifffile.imwrite(hr, keyframes, photometric="minisblack")
    inputs = prepare_inputs(lr, hr, model, match_optics=False)  # as above
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


class Stop(Exception):
    """Stands for a kill: not a ValueError, so the writer keeps the partial."""


def interrupted_run(inputs, method, out, after, resume=False):
    def stop_after(done, total):
        if done == after:
            raise Stop

    with pytest.raises(Stop):
        fuse_to_file(inputs, method, out, progress=stop_after, resume=resume)
    assert incomplete_path(out).exists() and not out.exists()


def tiny_stf(tmp_path):
    import torch

    from napari_xfusion.config import EngineConfig, ModelConfig
    from napari_xfusion.models import build_model, save_weights

    torch.manual_seed(0)
    path = save_weights(build_model(ModelConfig.preset("tiny")), tmp_path / "tiny.safetensors")
    return create_method("stf", weights=path, engine=EngineConfig(device="cpu", precision="fp32"))


@pytest.mark.parametrize("name", ["transfer", "stf"])
def test_a_resumed_run_equals_an_uninterrupted_one(tmp_path, name):
    lr, hr, model = bright_spot_pair(tmp_path)
    method = tiny_stf(tmp_path) if name == "stf" else create_method(name)
    inputs = prepare_inputs(lr, hr, model)
    reference = tmp_path / "reference.tif"
    fuse_to_file(inputs, method, reference)
    out = tmp_path / "fused.tif"
    interrupted_run(inputs, method, out, after=7)
    with pytest.raises(StackError, match="pass --resume to continue it"):
        fuse_to_file(inputs, method, out)
    seen = []
    result = fuse_to_file(prepare_inputs(lr, hr, model), method, out, resume=True,
                          progress=lambda done, total: seen.append((done, total)))
    assert result.frames == 21 and seen[-1] == (21, 21) and seen[0][0] >= 5
    np.testing.assert_array_equal(tifffile.imread(out), tifffile.imread(reference))
    assert not incomplete_path(out).exists() and not list(tmp_path.glob("*.resuming.*"))


def test_resuming_with_other_settings_is_refused(tmp_path):
    lr, hr, model = bright_spot_pair(tmp_path)
    inputs = prepare_inputs(lr, hr, model)
    out = tmp_path / "fused.tif"
    interrupted_run(inputs, create_method("transfer"), out, after=5)
    with pytest.raises(StackError, match="other inputs or settings"):
        fuse_to_file(inputs, create_method("bicubic"), out, resume=True)
    assert incomplete_path(out).exists()  # nothing of the interrupted run is lost


def test_a_resume_cut_short_while_copying_starts_from_the_set_aside_frames(tmp_path):
    from napari_xfusion.io import resuming_path

    lr, hr, model = bright_spot_pair(tmp_path)
    inputs = prepare_inputs(lr, hr, model)
    method = create_method("transfer")
    reference = tmp_path / "reference.tif"
    fuse_to_file(inputs, method, reference)
    out = tmp_path / "fused.zarr"
    interrupted_run(inputs, method, out, after=9)
    # As if a resume was killed after setting the frames aside and copying two of them.
    os.replace(incomplete_path(out), resuming_path(out))
    aside = read_stack(resuming_path(out))
    copy = open_writer(out, aside.shape[1:], aside.dtype, n_frames=21, resume=True)
    copy.write(np.asarray(aside[0]))
    copy.write(np.asarray(aside[1]))
    copy.abort()
    with pytest.raises(StackError, match="holds the frames of an interrupted run"):
        fuse_to_file(inputs, method, out)
    fuse_to_file(inputs, method, out, resume=True)
    np.testing.assert_array_equal(np.asarray(read_stack(out)), tifffile.imread(reference))
    assert not resuming_path(out).exists()
