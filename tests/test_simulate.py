import numpy as np
import pytest
from scipy import ndimage

from napari_xfusion.config import NoiseConfig, OpticsConfig, TimeModel
from napari_xfusion.metrics import psnr
from napari_xfusion.simulate import (
    Experiment,
    b0_for_psnr,
    bin_frames,
    crop_to_multiple,
    lr_optics,
    noise_b0,
    noisy_frame,
    noisy_lr,
    poisson_noise,
    shading_field,
    simulate_experiment,
)
from napari_xfusion.synthetic import synthetic_lpbf


def labelled_stack(n=12, h=16, w=24):
    """Frames whose every pixel encodes the frame index, plus a spatial ramp."""
    yy, xx = np.mgrid[:h, :w]
    ramp = (yy * w + xx) / (h * w) * 0.5
    return np.stack([ramp + 0.5 * i / n for i in range(n)]).astype(np.float32)


@pytest.fixture(scope="module")
def lr_frame():
    # A realistic LR frame: 4x binning of the synthetic LPBF scene.
    return bin_frames(synthetic_lpbf(1, 256, 512, seed=4)[0], 4)


def test_bin_frames_means_blocks():
    frame = np.arange(16, dtype=np.float64).reshape(4, 4)
    out = bin_frames(frame, 2)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[2.5, 4.5], [10.5, 12.5]])
    stack = np.stack([frame, 2 * frame, np.ones((4, 4))])
    out = bin_frames(stack, 4)
    assert out.shape == (3, 1, 1)
    np.testing.assert_allclose(out[:, 0, 0], [7.5, 15.0, 1.0])
    np.testing.assert_array_equal(bin_frames(stack, 1), stack.astype(np.float32))


def test_bin_frames_keeps_the_mean_of_random_data():
    data = np.random.default_rng(0).random((2, 12, 20)).astype(np.float32)
    out = bin_frames(data, 4)
    assert out.shape == (2, 3, 5)
    np.testing.assert_allclose(out[1, 2, 3], data[1, 8:12, 12:16].mean(), rtol=1e-6)


def test_bin_frames_rejects_sizes_that_are_not_multiples():
    with pytest.raises(ValueError, match="crop_to_multiple"):
        bin_frames(np.zeros((10, 12)), 4)
    with pytest.raises(ValueError, match="scale"):
        bin_frames(np.zeros((8, 8)), 0)
    with pytest.raises(ValueError, match="shape"):
        bin_frames(np.zeros(8), 2)


def test_crop_to_multiple_keeps_the_top_left():
    stack = labelled_stack(2, 18, 23)
    out = crop_to_multiple(stack, 4)
    assert out.shape == (2, 16, 20)
    np.testing.assert_array_equal(out, stack[:, :16, :20])
    assert crop_to_multiple(stack[0], 1).shape == (18, 23)
    with pytest.raises(ValueError, match="smaller"):
        crop_to_multiple(np.zeros((3, 9)), 4)


def test_poisson_noise_is_reproducible_and_unbiased():
    x = np.full((200, 200), 0.4)
    a = poisson_noise(x, 1000.0, np.random.default_rng(1))
    b = poisson_noise(x, 1000.0, 1)
    assert a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert abs(a.mean() - 0.4) < 2e-3
    # Variance of Poisson(x b0) / b0 is x / b0.
    assert a.var() == pytest.approx(0.4 / 1000.0, rel=0.05)
    assert (poisson_noise(np.full(5, -0.3), 10.0, 0) == 0).all()
    with pytest.raises(ValueError, match="b0"):
        poisson_noise(x, 0.0)


@pytest.mark.parametrize("target", [20, 30, 40, 50, 60])
def test_b0_for_psnr_hits_the_target(lr_frame, target):
    b0 = b0_for_psnr(lr_frame, target)
    noisy = poisson_noise(lr_frame, b0, np.random.default_rng(target))
    assert psnr(noisy, lr_frame) == pytest.approx(target, abs=0.5)


def test_b0_for_psnr_formula_and_errors():
    assert b0_for_psnr(np.full((4, 4), 0.5), 30) == pytest.approx(500.0)
    # A stack uses the geometric mean of the frame means; all-zero frames are left out.
    stack = np.stack([np.full((4, 4), 0.2), np.full((4, 4), 0.8), np.zeros((4, 4))])
    assert b0_for_psnr(stack, 20) == pytest.approx(0.4 * 100)
    with pytest.raises(ValueError, match="all zero"):
        b0_for_psnr(np.zeros((4, 4)), 30)
    with pytest.raises(ValueError, match="PSNR"):
        b0_for_psnr(np.ones((4, 4)), -3)


def test_noisy_lr_is_independent_of_order_and_chunking():
    lr = labelled_stack(10, 8, 8)
    noise = NoiseConfig(b0=300.0, seed=7)
    full = noisy_lr(lr, noise)
    assert full.dtype == np.float32 and full.shape == lr.shape
    backwards = {i: noisy_frame(lr[i], i, 300.0, seed=7) for i in reversed(range(10))}
    for i in range(10):
        np.testing.assert_array_equal(full[i], backwards[i])
    # A chunk of the sequence gets the same noise as the same frames of the whole.
    chunk = np.stack([noisy_frame(lr[i], i, 300.0, 7) for i in range(4, 7)])
    np.testing.assert_array_equal(chunk, full[4:7])
    other_seed = noisy_lr(lr, NoiseConfig(b0=300.0, seed=8))
    assert not np.array_equal(full, other_seed)
    # Frames with equal content but different indices get different noise.
    same = np.repeat(lr[:1], 2, axis=0)
    twins = noisy_lr(same, noise)
    assert not np.array_equal(twins[0], twins[1])


def test_noisy_lr_without_noise_is_a_float32_copy():
    lr = labelled_stack(3, 4, 4)
    out = noisy_lr(lr.astype(np.float64), NoiseConfig())
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, lr)
    assert noise_b0(lr, NoiseConfig()) is None
    with pytest.raises(ValueError, match="stack"):
        noisy_lr(lr[0], NoiseConfig(b0=10.0))


def test_target_psnr_uses_one_b0_for_the_sequence():
    lr = labelled_stack(20, 32, 32) + 0.1
    noise = NoiseConfig(target_psnr=35.0, seed=1)
    b0 = noise_b0(lr, noise)
    assert noise_b0(lr, NoiseConfig(b0=b0, seed=1)) == b0
    np.testing.assert_array_equal(noisy_lr(lr, noise), noisy_lr(lr, NoiseConfig(b0=b0, seed=1)))


@pytest.mark.parametrize("spacing, offset", [(1, 0), (2, 0), (10, 0), (10, 1), (11, 0), (3, 2)])
def test_experiment_shapes_and_timeline(spacing, offset):
    n = 12
    hr_full = labelled_stack(n)
    model = TimeModel(spacing=spacing, offset=offset, separation=2, scale=4)
    exp = simulate_experiment(hr_full, model)
    assert isinstance(exp, Experiment)
    times = list(range(offset, n, spacing))
    assert exp.lr.shape == exp.lr_clean.shape == (n, 4, 6)
    assert exp.hr.shape == (len(times), 16, 24)
    assert exp.truth.shape == (n, 16, 24)
    for arr in (exp.lr, exp.lr_clean, exp.hr, exp.truth):
        assert arr.dtype == np.float32
    np.testing.assert_array_equal(exp.truth, hr_full)
    np.testing.assert_array_equal(exp.hr, hr_full[times])
    np.testing.assert_array_equal(exp.timeline.keyframe_times, times)
    assert (exp.timeline.n_lr, exp.timeline.n_hr) == (n, len(times))
    assert exp.timeline.keyframe_mask().sum() == len(times)
    np.testing.assert_allclose(exp.lr_clean, bin_frames(hr_full, 4))
    np.testing.assert_array_equal(exp.lr, exp.lr_clean)
    assert exp.b0 is None and exp.lr_psnr is None


def test_experiment_with_noise_reports_b0_and_psnr():
    hr_full = synthetic_lpbf(6, 64, 128, seed=2)
    exp = simulate_experiment(hr_full, TimeModel(spacing=5), NoiseConfig(target_psnr=30.0))
    assert exp.b0 == pytest.approx(b0_for_psnr(exp.lr_clean, 30.0), rel=0.05)
    assert exp.lr_psnr == pytest.approx(30.0, abs=0.5)
    assert not np.array_equal(exp.lr, exp.lr_clean)
    again = simulate_experiment(hr_full, TimeModel(spacing=5), NoiseConfig(target_psnr=30.0))
    np.testing.assert_array_equal(exp.lr, again.lr)
    fixed = simulate_experiment(hr_full, TimeModel(spacing=5), NoiseConfig(b0=50.0))
    assert fixed.b0 == 50.0


def test_experiment_crops_only_when_asked():
    hr_full = labelled_stack(4, 18, 27)
    with pytest.raises(ValueError, match="crop=True"):
        simulate_experiment(hr_full, TimeModel(spacing=3))
    exp = simulate_experiment(hr_full, TimeModel(spacing=3), crop=True)
    assert exp.truth.shape == (4, 16, 24) and exp.lr.shape == (4, 4, 6)


def test_experiment_rejects_bad_input():
    good = labelled_stack(6)
    with pytest.raises(ValueError, match="NaN"):
        bad = good.copy()
        bad[3, 2, 2] = np.nan
        simulate_experiment(bad, TimeModel(spacing=2))
    with pytest.raises(ValueError, match="normalize"):
        simulate_experiment(good * 4000, TimeModel(spacing=2))
    with pytest.raises(ValueError, match="only one HR keyframe"):
        simulate_experiment(good, TimeModel(spacing=6))
    with pytest.raises(ValueError, match="offset"):
        simulate_experiment(good, TimeModel(spacing=2, offset=7))
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        simulate_experiment(good[0], TimeModel(spacing=2))


def test_experiment_from_a_dask_array_matches_numpy():
    da = pytest.importorskip("dask.array")
    hr_full = labelled_stack(8)
    model = TimeModel(spacing=3, offset=1)
    noise = NoiseConfig(b0=200.0, seed=3)
    lazy = simulate_experiment(da.from_array(hr_full, chunks=(2, 16, 24)), model, noise)
    eager = simulate_experiment(hr_full, model, noise)
    for name in ("lr", "lr_clean", "hr", "truth"):
        assert isinstance(getattr(lazy, name), np.ndarray)
        np.testing.assert_array_equal(getattr(lazy, name), getattr(eager, name))


def test_lr_optics_blur_and_shift_the_frames_the_lr_camera_bins():
    rng = np.random.default_rng(0)
    frames = ndimage.gaussian_filter(rng.random((3, 64, 64)), (0, 2, 2)).astype(np.float32)
    np.testing.assert_array_equal(lr_optics(frames, OpticsConfig()), frames)
    # A whole-pixel shift moves the content by that many pixels (away from the edges).
    moved = lr_optics(frames, OpticsConfig(shift=(2.0, -3.0)))
    np.testing.assert_allclose(moved[:, 10:-10, 10:-10], frames[:, 8:-12, 13:-7], atol=1e-5)
    blurred = lr_optics(frames, OpticsConfig(blur=1.5))
    assert blurred.std() < frames.std() and abs(blurred.mean() - frames.mean()) < 1e-3
    # In an experiment only the LR stream sees the optics; keyframes and truth stay sharp.
    truth = np.repeat(frames[:1], 11, axis=0)
    exact = simulate_experiment(truth, TimeModel(spacing=5))
    seen = simulate_experiment(truth, TimeModel(spacing=5), optics=OpticsConfig(blur=1.0,
                                                                                 shift=(1, 1)))
    np.testing.assert_array_equal(seen.hr, exact.hr)
    np.testing.assert_array_equal(seen.truth, exact.truth)
    np.testing.assert_allclose(seen.lr, bin_frames(lr_optics(truth, OpticsConfig(
        blur=1.0, shift=(1, 1))), 4), atol=1e-6)
    with pytest.raises(ValueError, match="blur must be >= 0"):
        OpticsConfig(blur=-1.0)


def test_lr_shading_falls_from_the_beam_centre_to_the_farthest_corner():
    field = shading_field((65, 129), 0.2)
    # The centre sits a quarter of the way up and right of the frame's middle.
    assert np.unravel_index(np.argmax(field), field.shape) == (24, 80)
    assert field.max() == pytest.approx(1.0) and field.min() == pytest.approx(0.8)
    assert field[-1, 0] == pytest.approx(0.8)  # the corner farthest from the centre
    frames = np.full((2, 64, 64), 0.5, np.float32)
    shaded = lr_optics(frames, OpticsConfig(shading=0.2))
    np.testing.assert_allclose(shaded, 0.5 * shading_field((64, 64), 0.2)[None].repeat(2, 0),
                               rtol=1e-6)
    assert not OpticsConfig(shading=0.2).exact
    with pytest.raises(ValueError, match="shading must be in"):
        OpticsConfig(shading=1.0)
