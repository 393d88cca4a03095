"""Tests of the classical baselines: bicubic, detail transfer and Bayesian fusion."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_xfusion.config import TimeModel
from napari_xfusion.methods import create_method, method_names
from napari_xfusion.methods.classical import (
    BayesianFusion,
    Bicubic,
    Degradation,
    DetailTransfer,
    bayesian_fusion,
    bicubic_upsample,
    calibrate_degradation,
    detail_transfer,
    high_frequencies,
    keyframe_weights,
)
from napari_xfusion.metrics import psnr
from napari_xfusion.simulate import bin_frames, poisson_noise
from napari_xfusion.streaming import FusedFrame
from napari_xfusion.timeline import Timeline

SCALE = 4
SPACING = 4


def texture(height: int, width: int, seed: int) -> np.ndarray:
    """Multi-scale random texture in [0.1, 0.9] (away from the clipping limits)."""
    rng = np.random.default_rng(seed)
    img = sum(ndi.gaussian_filter(rng.standard_normal((height, width)), s) * s**0.5
              for s in (1.0, 3.0, 10.0))
    img = (img - img.min()) / (img.max() - img.min())
    return (0.1 + 0.8 * img).astype(np.float32)


def moving_sequence(n: int = 13, height: int = 96, width: int = 128, speed: float = 2.0,
                    seed: int = 0) -> np.ndarray:
    """A static textured background with three textured discs moving ``speed`` px/frame.

    Like an x-ray video of a process: most of the field is still, features move across it.
    """
    background = texture(height, width, seed)
    foreground = texture(height + 64, width + 64, seed + 1)
    yy, xx = np.mgrid[:height, :width]
    frames = []
    for i in range(n):
        frame = 0.2 + 0.6 * background
        moved = ndi.shift(foreground, (0.5 * speed * i, speed * i), order=1, mode="wrap")
        for cy, cx, radius in ((30, 20, 16), (65, 70, 20), (40, 100, 12)):
            disc = (yy - cy - 0.7 * speed * i) ** 2 + (xx - cx - speed * i) ** 2 < radius**2
            frame[disc] = moved[32:32 + height, 32:32 + width][disc]
        frames.append(frame)
    return np.stack(frames).astype(np.float32)


def translating_sequence(n: int = 13, height: int = 96, width: int = 128, speed: float = 2.0,
                         seed: int = 0) -> np.ndarray:
    """A textured image translating ``speed`` px/frame along x (half of it along y)."""
    big = texture(height + 64, width + 64, seed)
    return np.stack([
        ndi.shift(big, (0.5 * speed * i, speed * i), order=1, mode="wrap")[32:32 + height,
                                                                           32:32 + width]
        for i in range(n)
    ]).astype(np.float32)


def simulate(truth: np.ndarray, b0: float | None = None):
    """LR = binning (+ Poisson noise), keyframes every SPACING frames, and the timeline."""
    lr = bin_frames(truth, SCALE)
    if b0 is not None:
        lr = poisson_noise(lr, b0, rng=0).astype(np.float32)
    hr = truth[::SPACING].copy()
    timeline = Timeline(n_lr=len(truth), n_hr=len(hr),
                        model=TimeModel(spacing=SPACING, offset=0, scale=SCALE))
    return lr, hr, timeline


def mean_unseen_psnr(method, truth, lr, hr, timeline) -> float:
    """Mean PSNR over the frames whose HR frame was not given."""
    values = [psnr(f.image, truth[f.t]) for f in method.fuse(lr, hr, timeline)
              if not f.is_keyframe]
    return float(np.mean(values))


# ------------------------------------------------------------------------------ bicubic


def test_bicubic_of_a_constant_is_constant_with_the_right_shapes():
    frame = np.full((5, 7), 0.3, np.float32)
    up = bicubic_upsample(frame, 4)
    assert up.shape == (20, 28) and up.dtype == np.float32
    np.testing.assert_allclose(up, 0.3, atol=1e-6)
    stack = bicubic_upsample(np.stack([frame, frame + 0.2]), 3)
    assert stack.shape == (2, 15, 21)
    np.testing.assert_allclose(stack[1], 0.5, atol=1e-6)


def test_bicubic_of_a_bilinear_ramp_is_accurate_away_from_the_border():
    yy, xx = np.mgrid[:64, :96].astype(np.float64)
    truth = (0.1 + 0.004 * yy + 0.003 * xx + 0.00005 * yy * xx).astype(np.float32)
    up = bicubic_upsample(bin_frames(truth, SCALE), SCALE)
    border = 2 * SCALE
    inner = (slice(border, -border), slice(border, -border))
    # PyTorch's kernel (a = -0.75) keeps constants exactly but bends ramps slightly: the
    # error stays a few per cent of the intensity step across one LR pixel per axis.
    lr_step = SCALE * np.hypot(*np.gradient(truth.astype(np.float64))).max()
    assert np.abs(up - truth)[inner].max() < 0.1 * lr_step


def test_bicubic_clips_overshoot_only_when_asked():
    step = np.zeros((8, 8), np.float32)
    step[:, 4:] = 1.0
    assert bicubic_upsample(step, 4, clip=False).max() > 1.0
    clipped = bicubic_upsample(step, 4)
    assert clipped.min() >= 0.0 and clipped.max() <= 1.0


def test_bicubic_method_streams_the_same_frames_as_fuse_frame():
    truth = moving_sequence(n=20, height=32, width=48)
    lr, hr, timeline = simulate(truth)
    method = Bicubic()
    frames = list(method.fuse(lr, hr, timeline))
    assert [f.t for f in frames] == list(range(20))
    for f in frames:
        inputs = timeline.inputs(f.t)
        expected = method.fuse_frame(lr[list(inputs.lr)], hr[list(inputs.hr)], inputs)
        np.testing.assert_array_equal(f.image, expected)
        assert f.is_keyframe == inputs.is_keyframe and f.hr_times == inputs.hr_times


# ------------------------------------------------------------------------------ transfer


def test_keyframe_weights_are_linear_inside_and_clamped_outside():
    assert keyframe_weights(4, 4, 8) == (1.0, 0.0)
    assert keyframe_weights(5, 4, 8) == (0.75, 0.25)
    assert keyframe_weights(10, 4, 8) == (0.0, 1.0)
    assert keyframe_weights(1, 4, 8) == (1.0, 0.0)


def test_high_frequencies_vanish_for_a_constant_and_handle_odd_sizes():
    np.testing.assert_allclose(high_frequencies(np.full((10, 13), 0.4), 4), 0.0, atol=1e-6)
    frame = texture(30, 45, seed=3)
    assert high_frequencies(frame, 4).shape == (30, 45)


def test_transfer_returns_the_keyframe_at_a_keyframe_time_on_a_static_scene():
    still = np.repeat(texture(64, 96, seed=1)[None], 9, axis=0)
    lr, hr, timeline = simulate(still)
    frames = {f.t: f for f in DetailTransfer().fuse(lr, hr, timeline)}
    for t in (0, 4, 8):
        assert frames[t].is_keyframe
        np.testing.assert_allclose(frames[t].image, still[t], atol=1e-5)


def test_transfer_equals_bicubic_when_the_keyframes_carry_no_detail():
    lr_t = bin_frames(texture(64, 96, seed=2), SCALE)
    flat0, flat1 = np.full((2, 64, 96), 0.3, np.float32) + np.array([0.0, 0.4])[:, None, None]
    fused = detail_transfer(lr_t, flat0, flat1, 0.25, SCALE)
    np.testing.assert_allclose(fused, bicubic_upsample(lr_t, SCALE), atol=1e-6)


@pytest.mark.parametrize("b0", [None, 300.0])
def test_transfer_beats_bicubic_on_a_static_textured_scene(b0):
    still = np.repeat(texture(64, 96, seed=4)[None], 9, axis=0)
    lr, hr, timeline = simulate(still, b0)
    gain = (mean_unseen_psnr(DetailTransfer(), still, lr, hr, timeline)
            - mean_unseen_psnr(Bicubic(), still, lr, hr, timeline))
    assert gain > 3.0


def test_transfer_takes_keyframe_detail_from_binned_keyframes_not_noisy_lr():
    # The design choice of detail_transfer: against the LR frames recorded at the keyframe
    # times, the keyframe detail would carry their noise into every fused frame.
    truth = moving_sequence()
    lr, hr, timeline = simulate(truth, b0=300.0)
    ours, via_lr = [], []
    for t in range(len(truth)):
        inputs = timeline.inputs(t)
        if inputs.is_keyframe:
            continue
        (j0, j1), (k0, k1) = inputs.hr, inputs.hr_times
        w0, w1 = keyframe_weights(t, k0, k1)
        ours.append(psnr(detail_transfer(lr[t], hr[j0], hr[j1], w0, SCALE), truth[t]))
        alt = (bicubic_upsample(lr[t], SCALE, clip=False)
               + w0 * (hr[j0] - bicubic_upsample(lr[k0], SCALE, clip=False))
               + w1 * (hr[j1] - bicubic_upsample(lr[k1], SCALE, clip=False)))
        via_lr.append(psnr(np.clip(alt, 0, 1), truth[t]))
    assert np.mean(ours) > np.mean(via_lr) + 0.3


# ------------------------------------------------------------------------------ Bayesian


@pytest.mark.parametrize("seed", [0, 1])
def test_bayes_beats_bicubic_on_a_moving_sequence(seed):
    truth = moving_sequence(seed=seed)
    lr, hr, timeline = simulate(truth)
    bayes = mean_unseen_psnr(BayesianFusion(), truth, lr, hr, timeline)
    bicubic = mean_unseen_psnr(Bicubic(), truth, lr, hr, timeline)
    assert bayes > bicubic + 1.5


def test_bayes_is_not_worse_than_bicubic_on_a_translating_texture():
    # Nothing stays in place, so the keyframes' detail is of little use at the same pixels:
    # the method must recognise that and fall back to (LR-consistent) interpolation.
    truth = translating_sequence()
    lr, hr, timeline = simulate(truth)
    bayes = mean_unseen_psnr(BayesianFusion(), truth, lr, hr, timeline)
    bicubic = mean_unseen_psnr(Bicubic(), truth, lr, hr, timeline)
    assert bayes > bicubic - 0.1


def test_bayes_output_bins_back_to_the_lr_frame_without_noise():
    truth = moving_sequence()
    lr, hr, _ = simulate(truth)
    fused = bayesian_fusion(lr[6], hr[1], hr[2], SCALE)
    np.testing.assert_allclose(bin_frames(fused, SCALE), lr[6], atol=1e-4)


def test_bayes_stays_consistent_with_noisy_lr_within_the_noise():
    truth = moving_sequence()
    clean = bin_frames(truth, SCALE)
    lr, hr, timeline = simulate(truth, b0=300.0)
    method = BayesianFusion()
    frames = {f.t: f.image for f in method.fuse(lr, hr, timeline, frames=[5, 6, 7])}
    noise_rms = np.sqrt(np.mean((lr - clean) ** 2))
    assert method.degradation.noise_var == pytest.approx(noise_rms**2, rel=0.3)
    for t, image in frames.items():
        binned = bin_frames(image, SCALE)
        assert np.sqrt(np.mean((binned - lr[t]) ** 2)) < noise_rms
        # Pulled towards the prior, the output's LR image is closer to the truth than LR is.
        assert np.sqrt(np.mean((binned - clean[t]) ** 2)) < noise_rms


def test_bayes_at_a_keyframe_time_of_a_static_scene_returns_the_keyframe():
    still = np.repeat(texture(64, 96, seed=5)[None], 9, axis=0)
    lr, hr, timeline = simulate(still)
    fused = next(BayesianFusion().fuse(lr, hr, timeline, frames=[4]))
    assert fused.is_keyframe
    assert psnr(fused.image, still[4]) > 60.0


def test_calibration_recovers_gain_offset_and_noise():
    hr = np.stack([texture(64, 96, seed=s) for s in (6, 7)])
    rng = np.random.default_rng(0)
    lr = 0.8 * bin_frames(hr, SCALE) + 0.05 + rng.normal(0.0, 0.01, (2, 16, 24))
    model = calibrate_degradation(lr, hr, SCALE)
    assert model.gain == pytest.approx(0.8, abs=0.02)
    assert model.offset == pytest.approx(0.05, abs=0.01)
    assert model.noise_var == pytest.approx(1e-4, rel=0.2)


def test_bayes_undoes_a_calibrated_gain_and_offset():
    truth = moving_sequence()
    lr, hr, timeline = simulate(truth)
    scaled = (0.7 * lr + 0.1).astype(np.float32)
    method = BayesianFusion()
    image = next(method.fuse(scaled, hr, timeline, frames=[6])).image
    assert method.degradation.gain == pytest.approx(0.7, abs=1e-3)
    assert psnr(image, truth[6]) > psnr(bicubic_upsample(lr[6], SCALE), truth[6]) + 1.5


def test_bayes_rejects_bad_options():
    with pytest.raises(ValueError, match="n_clusters"):
        BayesianFusion(n_clusters=0)
    with pytest.raises(ValueError, match="lag_stretch"):
        BayesianFusion(lag_stretch=0.5)
    with pytest.raises(ValueError, match="gain"):
        Degradation(gain=-1.0)


# ------------------------------------------------------------------------------ registry


def test_methods_are_registered():
    assert {"bicubic", "transfer", "bayes"} <= set(method_names())
    assert isinstance(create_method("bayes"), BayesianFusion)
    assert isinstance(create_method("transfer"), DetailTransfer)
    assert isinstance(create_method("bicubic"), Bicubic)
    assert create_method("bayes", n_clusters=4).options["n_clusters"] == 4


@pytest.mark.parametrize("name", ["bicubic", "transfer", "bayes"])
def test_methods_iterate_over_a_sequence(name):
    truth = moving_sequence(n=7, height=32, width=48)
    lr, hr, timeline = simulate(truth)
    done = []
    frames = list(create_method(name).fuse(lr, hr, timeline,
                                           progress=lambda i, n: done.append((i, n))))
    assert [f.t for f in frames] == list(range(7))
    assert done[-1] == (7, 7)
    for f in frames:
        assert isinstance(f, FusedFrame)
        assert f.image.shape == (32, 48) and f.image.dtype == np.float32
        assert f.is_keyframe == (f.t % SPACING == 0)
        assert f.hr_times == timeline.inputs(f.t).hr_times


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("name", ["bicubic", "transfer", "bayes"])
def test_mismatched_lr_and_hr_shapes_raise_a_clear_error(name):
    truth = moving_sequence(n=5, height=32, width=48)
    lr, hr, timeline = simulate(truth)
    with pytest.raises(ValueError, match="show the same field of view"):
        next(create_method(name).fuse(lr[:, :, :10], hr, timeline))
    with pytest.raises(ValueError, match="set the scale to 4"):
        wrong = Timeline(n_lr=5, n_hr=2, model=TimeModel(spacing=SPACING, scale=2))
        next(create_method(name).fuse(lr, hr, wrong))


def test_functions_reject_a_wrong_scale():
    lr_t = np.zeros((8, 12), np.float32)
    keys = np.zeros((2, 32, 48), np.float32)
    with pytest.raises(ValueError, match="set the scale to 4"):
        detail_transfer(lr_t, keys[0], keys[1], 0.5, 2)
    with pytest.raises(ValueError, match="set the scale to 4"):
        bayesian_fusion(lr_t, keys[0], keys[1], 3)
    with pytest.raises(ValueError, match="w0"):
        detail_transfer(lr_t, keys[0], keys[1], 1.5, 4)
