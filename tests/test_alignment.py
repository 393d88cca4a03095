"""Keyframes moved onto the output time: shift estimates, alignment, the stf-aligned method."""

import dataclasses

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_xfusion.alignment import align_keyframes, keyframe_shift
from napari_xfusion.config import EngineConfig, ModelConfig, TimeModel
from napari_xfusion.engine import Engine
from napari_xfusion.methods import create_method, method_network
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


@pytest.mark.parametrize("shift_lr", [(0.75, -1.5), (-2.25, 0.4), (0.0, 0.0)])
def test_the_shift_between_a_keyframe_and_a_panned_lr_frame_is_found(shift_lr):
    keyframe = scene()
    lr_now = bin_frames(panned(keyframe, 4 * np.array(shift_lr)), 4)
    np.testing.assert_allclose(keyframe_shift(lr_now, keyframe, scale=4), shift_lr, atol=0.1)


def test_aligned_keyframes_match_the_frame_they_were_moved_to():
    keys = np.stack([scene(seed=1), scene(seed=2)])
    shifts = [np.array([3.0, -5.0]), np.array([-2.0, 6.0])]  # HR pixels
    now = panned(keys[0], shifts[0])
    # Both keyframes show the same scene here, each moved its own way to give LR t.
    keys[1] = panned(now, -shifts[1])
    aligned = align_keyframes(bin_frames(now, 4), keys, scale=4)
    inner = (slice(16, -16), slice(16, -16))
    for key, moved in zip(keys, aligned, strict=True):
        before = np.abs(key - now)[inner].mean()
        after = np.abs(moved - now)[inner].mean()
        assert after < 0.25 * before, (before, after)
    assert aligned.dtype == np.float32 and aligned.shape == keys.shape


def test_the_aligned_method_is_the_network_with_keyframes_aligned_first():
    assert method_network("stf-aligned") == "stf"
    assert method_network("stf") == "stf" and method_network("edvr") == "edvr"
    assert method_network("transfer") is None
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
