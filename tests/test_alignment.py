"""Keyframes moved onto the output time: flow estimates, warping, alignment, the stf-aligned
method."""

import dataclasses

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage import data
from skimage.registration import phase_cross_correlation

from napari_xfusion import pipeline
from napari_xfusion.alignment import (
    MISFIT_RATIO,
    MOVING,
    align_keyframes,
    keyframe_flow,
    keyframe_misfit,
    keyframe_motion,
    recording_moves,
    warp_keyframe,
)
from napari_xfusion.config import EngineConfig, ModelConfig, NoiseConfig, TimeModel
from napari_xfusion.engine import Engine
from napari_xfusion.methods import (
    calibrated_methods,
    create_method,
    method_aligns_keyframes,
    method_network,
)
from napari_xfusion.models import build_model
from napari_xfusion.simulate import bin_frames, simulate_experiment


def scene(height=128, width=160, seed=0):
    """Smooth random texture: structure at several scales, like a real frame."""
    noise = np.random.default_rng(seed).random((height, width))
    image = ndimage.gaussian_filter(noise, 3) + 0.5 * ndimage.gaussian_filter(noise, 1)
    return ((image - image.min()) / np.ptp(image)).astype(np.float32)


def panned(frame, shift_hr):
    """``frame`` moved by ``shift_hr`` HR pixels, as a camera pan shows it."""
    return ndimage.shift(frame, shift_hr, order=3, mode="nearest").astype(np.float32)


def photo():
    """A real photograph (scikit-image's camera man), 256 x 256: the sharp edges and flat
    areas a flow must cope with, which smooth random texture lacks."""
    return (data.camera()[::2, ::2] / 255.0).astype(np.float32)


def inner_error(a, b, margin=16):
    return float(np.abs(a - b)[margin:-margin, margin:-margin].mean())


@pytest.mark.parametrize("shift_hr", [(3.0, -5.0), (-2.0, 6.0), (6.0, 2.0), (0.0, 0.0)])
def test_the_flow_of_a_pan_is_the_pan(shift_hr):
    key = photo()
    flow = keyframe_flow(bin_frames(panned(key, shift_hr), 4), key, scale=4)
    inner = flow[:, 8:-8, 8:-8]
    # LR t shows the keyframe's content moved by shift / 4 LR pixels.
    np.testing.assert_allclose(np.median(inner, axis=(1, 2)), -np.array(shift_hr) / 4,
                               atol=0.15)
    assert inner.std(axis=(1, 2)).max() < 0.1


def test_aligned_keyframes_match_the_frame_they_were_moved_to():
    image = photo()
    shifts = [np.array([3.0, -5.0]), np.array([-2.0, 6.0])]  # HR pixels
    now = panned(image, shifts[0])
    # Both keyframes show the same scene here, each moved its own way to give LR t.
    keys = np.stack([image, panned(now, -shifts[1])])
    aligned = align_keyframes(bin_frames(now, 4), keys, scale=4)
    for key, moved in zip(keys, aligned, strict=True):
        assert inner_error(moved, now) < 0.4 * inner_error(key, now)
    assert aligned.dtype == np.float32 and aligned.shape == keys.shape
    assert not np.array_equal(aligned[0], aligned[1])  # each keeps its own detail


def test_the_misfit_ignores_brightness_and_sees_another_scene():
    key = photo()
    lr_now = bin_frames(key, 4)
    assert keyframe_misfit(lr_now, 0.6 * key + 0.2, scale=4) < 1e-6
    other = scene(256, 256, seed=3)
    assert keyframe_misfit(lr_now, other, scale=4) > 1e-2


def test_a_keyframe_the_flow_cannot_bring_close_gives_way_to_the_one_that_matches():
    key = photo()
    lr_now = bin_frames(key, 4)
    # The second keyframe was taken after the camera turned to another scene.
    keys = np.stack([key, scene(256, 256, seed=3)])
    aligned = align_keyframes(lr_now, keys, scale=4)
    np.testing.assert_array_equal(aligned[1], aligned[0])
    assert inner_error(aligned[0], key) < 1e-3
    # Under LR noise the same pair keeps both: no misfit is many times the noise.
    noisy = lr_now + np.random.default_rng(0).normal(0, 0.2, lr_now.shape).astype(np.float32)
    misfits = [keyframe_misfit(noisy, k, scale=4) for k in keys]
    assert max(misfits) < MISFIT_RATIO * min(misfits)
    kept = align_keyframes(noisy, keys, scale=4)
    assert not np.array_equal(kept[1], kept[0])


def test_a_constant_flow_warps_like_a_shift():
    key = scene(seed=5)
    flow = np.broadcast_to(np.array([0.5, -0.75], np.float32)[:, None, None], (2, 32, 40))
    warped = warp_keyframe(key, flow, scale=4)
    # Reading the keyframe at p + 4 * flow moves its content by -4 * flow.
    assert inner_error(warped, panned(key, (-2.0, 3.0))) < 1e-3
    assert warped.shape == key.shape and warped.dtype == np.float32


def test_the_flow_follows_a_rotation_that_no_translation_can():
    key = photo()
    # A camera that rolls by 4 degrees: up to 9 HR pixels of motion, opposite ways.
    now = ndimage.rotate(key, 4.0, reshape=False, order=3, mode="nearest")
    lr_now = bin_frames(now, 4)
    by_flow = align_keyframes(lr_now, key[None], scale=4)[0]
    # The one translation that maps the keyframe best (phase correlation).
    shift, _, _ = phase_cross_correlation(lr_now, bin_frames(key, 4), upsample_factor=20)
    by_shift = panned(key, 4 * shift)
    assert inner_error(by_flow, now) < 0.75 * min(inner_error(by_shift, now),
                                                  inner_error(key, now))


def test_the_flow_moves_an_object_and_leaves_the_still_background():
    key = photo()
    now = key.copy()
    now[100:164, 100:164] = key[100:164, 92:156]  # what is in the box moved 8 HR px right
    flow = keyframe_flow(bin_frames(now, 4), key, scale=4)
    # Inside the box LR t shows what the keyframe has to the left: the flow points left
    # (the smooth flow undershoots the 2 LR pixels; see ATTACHMENT), the rest stays.
    assert flow[1, 27:39, 27:39].mean() < -0.15
    assert np.abs(flow[:, 45:, :]).max() < 0.15 and np.abs(flow[:, :20, :]).max() < 0.15
    moved = warp_keyframe(key, flow, scale=4)
    box = (slice(104, 160), slice(104, 160))
    assert np.abs(moved - now)[box].mean() < 0.95 * np.abs(key - now)[box].mean()


def test_a_brighter_keyframe_of_a_still_scene_is_not_moved():
    key = photo()
    flow = keyframe_flow(bin_frames(key, 4), 0.6 * key + 0.2, scale=4)
    assert np.abs(flow).max() < 0.05


def test_a_still_scene_under_noise_mostly_keeps_its_keyframe_in_place():
    key = photo()
    lr_now = bin_frames(key, 4)
    lr_now = lr_now + np.random.default_rng(0).normal(0, 0.02, lr_now.shape).astype(np.float32)
    flow = keyframe_flow(lr_now, key, scale=4)
    # The flow that follows the noise stays under the still threshold almost everywhere.
    assert (np.hypot(*flow) == 0).mean() > 0.7 and np.abs(flow).max() < 0.15


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (2, 3), (4, 4)])
def test_tiny_and_flat_frames_are_left_in_place(shape):
    lr = np.random.default_rng(0).random(shape).astype(np.float32)
    keys = np.random.default_rng(1).random((2, 4 * shape[0], 4 * shape[1])).astype(np.float32)
    assert align_keyframes(lr, keys, scale=4).shape == keys.shape
    flat = np.full((2, 32, 32), 0.5, np.float32)
    np.testing.assert_array_equal(align_keyframes(np.full((8, 8), 0.5, np.float32), flat,
                                                  scale=4), flat)


def test_the_aligned_method_is_the_network_with_keyframes_aligned_first():
    assert method_network("stf-aligned") == "stf"
    assert method_network("stf") == "stf" and method_network("edvr") == "edvr"
    assert method_network("transfer") is None
    # Which methods align, and which a calibration serves, come from the registry.
    assert method_aligns_keyframes("stf-aligned") and not method_aligns_keyframes("stf")
    assert not method_aligns_keyframes("bayes")
    assert calibrated_methods() == ["stf", "stf-aligned"]
    torch.manual_seed(0)
    model = build_model(ModelConfig.preset("tiny"))
    engine = EngineConfig(device="cpu", precision="fp32", tile=0)
    method = create_method("stf-aligned", model=model, engine=engine)
    assert method.engine.config.align_keyframes
    assert method.engine.config.tile == 0 and method.engine.config.precision == "fp32"


def test_a_run_with_aligned_keyframes_equals_fusing_each_frame_from_aligned_keyframes():
    # A pan across a textured scene: every output aligns its own keyframes, so the feature
    # cache must never hand one output's aligned keyframes to another.
    base = scene(96, 96, seed=4)
    truth = np.stack([panned(base, (0.8 * t, -0.6 * t)) for t in range(11)])[:, 16:80, 16:80]
    exp = simulate_experiment(truth, TimeModel(spacing=5))
    torch.manual_seed(0)
    model = build_model(ModelConfig.preset("tiny"))
    with torch.no_grad():
        # Random weights give a near-bilinear output: strengthen what the features add.
        model.conv_last.weight.mul_(50.0)
    config = EngineConfig(device="cpu", precision="fp32", tile=0)
    aligned_engine = Engine(model, dataclasses.replace(config, align_keyframes=True))
    plain_engine = Engine(model, config)
    for frame in aligned_engine.run(exp.lr, exp.hr, exp.timeline):
        inputs = exp.timeline.inputs(frame.t)
        lr = exp.lr[list(inputs.lr)]
        keys = align_keyframes(exp.lr[frame.t], exp.hr[list(inputs.hr)], scale=4)
        expected, _ = plain_engine.fuse_frame(lr, keys, inputs)
        np.testing.assert_allclose(frame.image, expected, atol=1e-5)


def pan_experiment(step_hr, n_frames=21, spacing=4, noise=None):
    """A camera panning ``step_hr`` HR pixels per frame (diagonally) over a photograph."""
    image = photo()
    truth = np.stack([panned(image, (step_hr * t, -step_hr * t)) for t in range(n_frames)])
    return simulate_experiment(truth[:, 32:224, 32:224], TimeModel(spacing=spacing),
                               NoiseConfig(target_psnr=noise, seed=0))


def test_the_motion_between_keyframes_is_the_distance_travelled_halfway():
    # 1 HR pixel per frame on each axis, spacing 4: halfway (2 frames) the content has
    # moved sqrt(2) * 2 HR pixels, 0.71 LR pixels.
    exp = pan_experiment(1.0)
    assert keyframe_motion(exp.lr, exp.hr, exp.timeline) == pytest.approx(2**0.5 / 2, abs=0.12)
    # Fewer intervals measured give the same figure on a steady pan.
    assert keyframe_motion(exp.lr, exp.hr, exp.timeline, intervals=1) == pytest.approx(
        2**0.5 / 2, abs=0.12)


@pytest.mark.parametrize("noise", [None, 30.0, 15.0])
def test_a_still_scene_measures_no_motion(noise):
    # At 15 dB the flow from the noisy LR frame halfway alone reads 0.12 LR pixel; the
    # flow between the two keyframes, which the LR noise does not reach, reads 0.
    exp = pan_experiment(0.0, noise=noise)
    assert keyframe_motion(exp.lr, exp.hr, exp.timeline) < MOVING / 2


def test_a_recording_that_moves_only_for_a_while_counts_as_moving():
    # Still for 13 frames, then the 1-pixel pan: one keyframe interval of four moves, so
    # a median over the intervals would call it still.
    image = photo()
    steps = np.maximum(np.arange(21) - 12, 0).astype(float)
    truth = np.stack([panned(image, (s, -s)) for s in steps])[:, 32:224, 32:224]
    exp = simulate_experiment(truth, TimeModel(spacing=4))
    moves, motion = recording_moves(exp.lr, exp.hr, exp.timeline)
    assert moves and motion == pytest.approx(2**0.5 / 2, abs=0.12)


def test_stf_aligned_fuses_a_still_recording_as_stf_does_and_aligns_a_moving_one():
    torch.manual_seed(0)
    model = build_model(ModelConfig.preset("tiny"))
    with torch.no_grad():
        model.conv_last.weight.mul_(50.0)  # random weights: make the keyframes count
    engine = EngineConfig(device="cpu", precision="fp32", tile=0)
    for step, aligns in ((0.0, False), (1.0, True)):
        exp = pan_experiment(step, n_frames=9)
        fused = {
            name: np.stack([f.image for f in create_method(name, model=model, engine=engine)
                            .fuse(exp.lr, exp.hr, exp.timeline)])
            for name in ("stf", "stf-aligned")
        }
        method = create_method("stf-aligned", model=model, engine=engine)
        assert method.motion is None
        method.prepare(exp.lr, exp.hr, exp.timeline)
        assert method.engine.align_keyframes is aligns
        assert (method.motion >= MOVING) is aligns
        # Exactly equal only when the keyframes go in as they are.
        assert np.array_equal(fused["stf-aligned"], fused["stf"]) is not aligns


def test_without_a_frame_between_keyframes_there_is_no_motion_to_measure():
    exp = pan_experiment(1.0, n_frames=6, spacing=1)
    assert keyframe_motion(exp.lr, exp.hr, exp.timeline) == 0.0


def test_stf_on_a_moving_recording_is_told_to_use_aligned_keyframes(monkeypatch):
    moving = pan_experiment(1.0)
    inputs = pipeline.prepare_inputs(moving.lr, moving.hr, moving.timeline.model)
    (warning,) = pipeline.motion_warnings(inputs, "stf")
    assert "stf-aligned" in warning and "0.7" in warning
    assert pipeline.motion_warnings(inputs, "stf-aligned") == []
    still = pan_experiment(0.0)
    still_inputs = pipeline.prepare_inputs(still.lr, still.hr, still.timeline.model)
    assert pipeline.motion_warnings(still_inputs, "stf") == []

    def unexpected(*args, **kwargs):
        raise AssertionError("the motion was measured for a method it does not concern")

    monkeypatch.setattr(pipeline, "recording_moves", unexpected)
    for name in ("transfer", "bayes", "bicubic", "edvr"):
        assert pipeline.motion_warnings(inputs, name) == []


def test_announcing_what_stf_aligned_does_measures_the_motion_once(monkeypatch):
    import napari_xfusion.methods.neural as neural

    calls = []

    def counted(*args):
        calls.append(args)
        return recording_moves(*args)

    monkeypatch.setattr(neural, "recording_moves", counted)
    torch.manual_seed(0)
    method = create_method("stf-aligned", model=build_model(ModelConfig.preset("tiny")),
                           engine=EngineConfig(device="cpu", precision="fp32"))
    moving = pan_experiment(1.0, n_frames=9)
    inputs = pipeline.prepare_inputs(moving.lr, moving.hr, moving.timeline.model)
    (note,) = pipeline.alignment_notes(inputs, method)
    assert "move" in note and "aligned onto each frame" in note
    assert len(list(method.fuse(inputs.lr, inputs.hr, inputs.timeline))) == 9
    assert len(calls) == 1
    # Other stacks are measured afresh.
    still = pan_experiment(0.0, n_frames=9)
    still_inputs = pipeline.prepare_inputs(still.lr, still.hr, still.timeline.model)
    (note,) = pipeline.alignment_notes(still_inputs, method)
    assert "stand still" in note and not method.engine.align_keyframes and len(calls) == 2
    assert pipeline.alignment_notes(inputs, create_method("bicubic")) == []
