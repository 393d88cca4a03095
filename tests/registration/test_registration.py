"""Registering a camera pair whose registration is known: space, time, intensity, file."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from napari_xfusion.config import NoiseConfig, TimeModel
from napari_xfusion.methods import create_method
from napari_xfusion.metrics import psnr
from napari_xfusion.pipeline import prepare_inputs
from napari_xfusion.registration import (
    CameraTransform,
    HRCamera,
    Registration,
    ResampledKeyframes,
    common_crop,
    register,
    register_frames,
    two_camera_recording,
)
from napari_xfusion.synthetic import synthetic_lpbf

#: A pair of cameras as a beamline has them: about 3.3 HR pixels per LR pixel (not 4, and
#: not the same along both axes), a small rotation, a mirror, a shift, an HR field of view
#: smaller than the LR one, a blurrier and non-linear HR camera, LR noise, and a trigger
#: offset of 3 LR frames.
TRUE = CameraTransform(3.3, 3.27, 4.0, False, True, 2.3, -5.7, (300, 480), (100, 160))
CAMERA = HRCamera(blur=0.8, gamma=0.8, gain=40_000, dark=1_000)
TIME = TimeModel(spacing=10, offset=3)


@pytest.fixture(scope="module")
def recording():
    truth = synthetic_lpbf(n_frames=81, height=400, width=640, seed=5)
    return two_camera_recording(truth, TRUE, TIME, CAMERA, NoiseConfig(target_psnr=35, seed=1))


@pytest.fixture(scope="module")
def estimated(recording):
    # The trigger offset is only roughly known (0 instead of 3): estimate it.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return register(recording.lr, recording.hr, TimeModel(spacing=10, offset=0),
                        estimate_offset=True)


def test_transform_maps_both_ways_and_round_trips():
    points = np.array([[10.0, 20.0], [299.0, 0.0], [150.5, 239.5]])
    np.testing.assert_allclose(TRUE.to_hr(TRUE.to_lr(points)), points, atol=1e-9)
    assert CameraTransform.from_dict(json.loads(json.dumps(TRUE.to_dict()))) == TRUE
    # The HR frame's centre lands at the LR centre plus the shift.
    centre = TRUE.to_lr([(300 - 1) / 2, (480 - 1) / 2])
    np.testing.assert_allclose(centre, [(100 - 1) / 2 + 2.3, (160 - 1) / 2 - 5.7])
    with pytest.raises(ValueError, match="ratios must be > 0"):
        CameraTransform(0, 3, 0, False, False, 0, 0, (10, 10), (4, 4))


@pytest.mark.slow
def test_recovers_space_and_time_of_a_known_pair(recording, estimated):
    fit = estimated.transform
    assert abs(fit.shift_y - TRUE.shift_y) < 0.1 and abs(fit.shift_x - TRUE.shift_x) < 0.1
    assert abs(fit.rotation_deg - TRUE.rotation_deg) < 0.05
    assert abs(fit.ratio_y / TRUE.ratio_y - 1) < 1e-3
    assert abs(fit.ratio_x / TRUE.ratio_x - 1) < 1e-3
    assert (fit.flip_y, fit.flip_x) == (False, True)
    assert estimated.time_model.offset == 3 and estimated.offset_estimated
    assert estimated.offsets["best"][0] == 3 and estimated.offsets["second"][0] != 3
    assert estimated.similarity > 0.95 and estimated.residual < 0.1
    assert estimated.spacings[10] > max(estimated.spacings[9], estimated.spacings[11])
    # The HR camera's gamma of 0.8 is found as a curve, not a line.
    assert estimated.intensity["curve"] is not None


@pytest.mark.slow
def test_a_wrong_offset_is_kept_but_reported(recording):
    with pytest.warns(UserWarning, match="match the LR frames best at offset 3"):
        kept = register(recording.lr, recording.hr, TimeModel(spacing=10, offset=0))
    assert kept.time_model.offset == 0 and not kept.offset_estimated
    assert any("offset 3" in line for line in kept.warnings)


@pytest.mark.slow
def test_fusing_after_registration_loses_little_against_the_true_registration(
    recording, estimated
):
    truth_registration = Registration(
        transform=TRUE, crop=estimated.crop, time_model=TIME, offset_estimated=False,
        offsets=None, spacings={}, similarity=1.0, margin=float("inf"), residual=0.0,
        intensity={},
    )
    y0, y1, x0, x1 = estimated.crop
    truth = recording.truth[:, 4 * y0 : 4 * y1, 4 * x0 : 4 * x1]
    scores = {}
    for label, registration in (("estimated", estimated), ("true", truth_registration)):
        inputs = prepare_inputs(recording.lr, recording.hr, TIME, registration=registration)
        method = create_method("transfer")
        fused = [f for f in method.fuse(inputs.lr, inputs.hr, inputs.timeline)
                 if not f.is_keyframe]
        # Both compared in the truth's units: the fused frames mapped back through the HR
        # camera's normalization and response.
        camera = [(inputs.hr_norm.invert(f.image).astype(np.float64) - CAMERA.dark)
                  / CAMERA.gain for f in fused]
        scores[label] = np.mean([
            psnr(np.clip(c, 0, 1) ** (1 / CAMERA.gamma), truth[f.t])
            for c, f in zip(camera, fused, strict=True)
        ])
    assert scores["estimated"] > scores["true"] - 0.5, scores


def test_common_crop_is_covered_by_the_hr_frame():
    y0, y1, x0, x1 = common_crop(TRUE)
    assert (y1 - y0) % 4 == 0 and (x1 - x0) % 4 == 0 and y1 - y0 >= 60 and x1 - x0 >= 100
    corners = np.array([[y0 - 0.5, x0 - 0.5], [y0 - 0.5, x1 - 0.5], [y1 - 0.5, x0 - 0.5],
                        [y1 - 0.5, x1 - 0.5]])
    hr = TRUE.to_hr(corners)
    assert (hr >= -0.5).all() and (hr[:, 0] <= 299.5).all() and (hr[:, 1] <= 479.5).all()
    tiny = CameraTransform(40.0, 40.0, 0, False, False, 0, 0, (20, 20), (100, 160))
    with pytest.raises(ValueError, match="covers too few whole LR pixels"):
        common_crop(tiny)


def test_resampled_keyframes_show_the_scene_on_the_fusion_grid():
    scene = synthetic_lpbf(n_frames=1, height=400, width=640, seed=5)
    camera = HRCamera(blur=0.5, gamma=1.0, gain=60_000, dark=0)
    rec = two_camera_recording(scene, TRUE, TimeModel(spacing=1), camera)
    crop = common_crop(TRUE)
    resampled = ResampledKeyframes(rec.hr, TRUE, crop, 4)
    assert resampled.shape == (1, 4 * (crop[1] - crop[0]), 4 * (crop[3] - crop[2]))
    frame = resampled[0]
    assert frame.dtype == np.uint16 and frame.shape == resampled.shape[1:]
    y0, y1, x0, x1 = crop
    expected = scene[0, 4 * y0 : 4 * y1, 4 * x0 : 4 * x1]
    # The HR camera is coarser than the fusion grid (3.3 < 4 pixels per LR pixel), so it
    # cannot give the scene's finest detail, but it lines up with it.
    assert psnr(frame / 60_000, expected) > 28
    shifted = ResampledKeyframes(rec.hr, CameraTransform(**{**TRUE.__dict__, "shift_x": -5.2}),
                                 crop, 4)[0]
    assert psnr(shifted / 60_000, expected) < psnr(frame / 60_000, expected) - 3


def test_frames_without_common_structure_are_refused():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="do not share enough structure"):
        register_frames([rng.random((100, 160))], [rng.random((300, 480))])


@pytest.mark.slow
def test_the_registration_file_round_trips_and_bad_files_are_named(estimated, tmp_path):
    path = estimated.save(tmp_path / "cameras.json")
    loaded = Registration.load(path)
    assert loaded == estimated
    data = json.loads(path.read_text())
    assert data["format"] == "napari-xfusion-registration"
    assert data["software"].startswith("napari-xfusion ")
    assert data["grid"]["crop"] == list(estimated.crop)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="bad.json is not a usable registration"):
        Registration.load(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="no registration file"):
        Registration.load(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="registration is for 100x160"):
        estimated.check_stacks((5, 90, 160), (3, 300, 480))


@pytest.mark.slow
def test_register_then_fuse_from_the_command_line(recording, tmp_path, capsys):
    import tifffile

    from napari_xfusion.cli import main
    from napari_xfusion.io import read_metadata, read_stack

    lr, hr = tmp_path / "lr.tif", tmp_path / "hr.tif"
    tifffile.imwrite(lr, (recording.lr * 3000 + 200).astype(np.uint16), photometric="minisblack")
    tifffile.imwrite(hr, recording.hr, photometric="minisblack")
    cameras = tmp_path / "cameras.json"
    code = main(["register", str(lr), str(hr), "-o", str(cameras), "--spacing", "10",
                 "--offset", "1", "--estimate-offset"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "keyframe offset 3 (estimated)" in out and "mirrored columns" in out
    # Spacing and offset come from the registration; the output records it.
    fused = tmp_path / "fused.tif"
    code = main(["fuse", str(lr), str(hr), "-o", str(fused), "--registration", str(cameras),
                 "--method", "transfer"])
    out, err = capsys.readouterr()
    assert code == 0, err
    registration = Registration.load(cameras)
    y0, y1, x0, x1 = registration.crop
    stack = read_stack(fused)
    assert stack.shape == (81, 4 * (y1 - y0), 4 * (x1 - x0)) and stack.dtype == np.uint16
    meta = json.loads(read_metadata(fused)["napari_xfusion"])
    assert meta["time_model"]["offset"] == 3
    assert meta["registration"]["transform"]["flip_x"] is True
    # A registration of other cameras is refused with the reason.
    code = main(["fuse", str(hr), str(hr), "-o", str(tmp_path / "x.tif"),
                 "--registration", str(cameras)])
    assert code == 2 and "registration is for 100x160" in capsys.readouterr().err


@pytest.mark.slow
def test_register_proposes_the_timing_recorded_in_camera_files(recording, tmp_path, capsys):
    pymraw = pytest.importorskip("pyMRAW")
    from napari_xfusion.cli import main

    # LR at 5 MHz from 43 frames before the trigger; HR at 500 kHz from 4 frames before it:
    # the HR camera's first frame is LR frame 3, and D = 10.
    _, lr = pymraw.save_mraw((recording.lr * 3000 + 200).astype(np.uint16),
                             str(tmp_path / "lr.cih"),
                             info_dict={"Record Rate(fps)": 5_000_000, "Start Frame": -43})
    _, hr = pymraw.save_mraw(recording.hr, str(tmp_path / "hr.cih"),
                             info_dict={"Record Rate(fps)": 500_000, "Start Frame": -4})
    code = main(["register", lr, hr, "-o", str(tmp_path / "cameras.json")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "spacing 10, offset 3 (used where not given; checked below)" in out
    assert "keyframe offset 3 (as given); best match 3" in out and not err
