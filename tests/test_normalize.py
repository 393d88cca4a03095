import dask.array as da
import numpy as np
import pytest

import napari_xfusion.normalize as normalize
from napari_xfusion.config import NormalizationConfig
from napari_xfusion.io import read_stack
from napari_xfusion.normalize import Normalization, fit_normalization, sample_indices


def camera_stack(n=12, shape=(16, 20), dtype=np.uint16, seed=0):
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=(n, *shape), endpoint=True).astype(dtype)


def test_apply_clips_and_scales_to_unit_range():
    norm = Normalization(low=100.0, high=300.0, dtype="uint16")
    x = np.array([[0, 100, 200], [300, 400, 65535]], np.uint16)
    y = norm.apply(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, [[0, 0, 0.5], [1, 1, 1]])


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_invert_apply_round_trip_within_one_step(dtype):
    x = camera_stack(dtype=dtype)
    norm = fit_normalization(x)
    back = norm.invert(norm.apply(x))
    assert back.dtype == dtype
    clipped = np.clip(x, norm.low, norm.high).astype(np.float64)
    assert np.abs(back - clipped).max() <= 1


def test_invert_of_int_dtype_rounds_and_clips_to_the_type():
    norm = Normalization(low=0.0, high=255.0, dtype="uint8")
    np.testing.assert_array_equal(norm.invert(np.array([-0.5, 0.2, 1.5])), [0, 51, 255])


def test_float_source_stays_float():
    norm = Normalization(low=-1.0, high=3.0, dtype="float32")
    y = np.array([0.0, 0.25, 1.0], np.float32)
    back = norm.invert(y)
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, [-1.0, 0.0, 3.0])


def test_constant_stack_maps_to_zero():
    x = np.full((3, 4, 4), 7, np.uint16)
    norm = fit_normalization(x)
    assert norm.low == norm.high == 7.0
    y = norm.apply(x)
    assert y.dtype == np.float32 and not y.any()
    np.testing.assert_array_equal(norm.invert(y), x)


def test_dask_stacks_stay_lazy():
    x = camera_stack()
    norm = fit_normalization(x)
    lazy = norm.apply(da.from_array(x, chunks=(1, 16, 20)))
    assert isinstance(lazy, da.Array) and lazy.dtype == np.float32
    np.testing.assert_array_equal(lazy.compute(), norm.apply(x))
    back = norm.invert(lazy)
    assert isinstance(back, da.Array) and back.dtype == np.uint16
    np.testing.assert_array_equal(back.compute(), norm.invert(norm.apply(x)))


def test_fit_matches_the_paper_percentiles_when_every_frame_is_sampled():
    x = camera_stack(n=10)
    norm = fit_normalization(x, NormalizationConfig(max_sample_frames=64))
    low, high = np.percentile(x, [0.35, 99.65])
    assert (norm.low, norm.high, norm.dtype) == (low, high, "uint16")


def test_fit_reads_only_the_sampled_frames(counting):
    stack = counting(camera_stack(n=100, shape=(4, 4)))
    fit_normalization(stack, NormalizationConfig(max_sample_frames=5))
    assert stack.frames_read == [0, 25, 50, 74, 99]


def test_fit_reads_only_sampled_frames_of_a_lazy_stack(counting):
    source = counting(camera_stack(n=40, shape=(4, 4)))
    stack = read_stack(source)
    fit_normalization(stack, NormalizationConfig(max_sample_frames=3))
    assert sorted(source.frames_read) == [0, 20, 39]


@pytest.mark.parametrize(
    "n, most, expected",
    [(100, 5, [0, 25, 50, 74, 99]), (3, 64, [0, 1, 2]), (10, 2, [0, 9]), (10, 1, [0]), (1, 4, [0])],
)
def test_sample_indices_spread_evenly_with_both_ends(n, most, expected):
    assert sample_indices(n, most).tolist() == expected


def test_huge_samples_are_subsampled_deterministically(monkeypatch):
    x = camera_stack(n=8, shape=(64, 64))
    monkeypatch.setattr(normalize, "MAX_SAMPLE_PIXELS", 4096)
    first, second = fit_normalization(x), fit_normalization(x)
    assert first == second
    low, high = np.percentile(x, [0.35, 99.65])
    assert abs(first.low - low) < 0.02 * 65535 and abs(first.high - high) < 0.02 * 65535


def test_non_finite_values_are_refused():
    x = np.ones((4, 3, 3), np.float32)
    x[3, 0, 0] = np.nan
    with pytest.raises(ValueError, match="frame 3 contains NaN or infinite"):
        fit_normalization(x)


def test_bad_stacks_are_refused():
    with pytest.raises(ValueError, match="no frames"):
        fit_normalization(np.zeros((0, 4, 4)))
    with pytest.raises(ValueError, match="2-D frames"):
        fit_normalization(np.zeros((4, 4)))


def test_normalization_checks_its_fields():
    with pytest.raises(ValueError, match="low <= high"):
        Normalization(low=2.0, high=1.0, dtype="uint16")
    with pytest.raises(ValueError, match="integer or float"):
        Normalization(low=0.0, high=1.0, dtype="complex64")


def test_cameras_with_different_responses_get_a_curve_and_linear_ones_a_line():
    from napari_xfusion.normalize import match_normalization
    from napari_xfusion.synthetic import synthetic_lpbf

    scene = synthetic_lpbf(n_frames=4, height=32, width=48, seed=2)
    binned = scene.reshape(4, 8, 4, 12, 4).mean(axis=(2, 4))
    lr = (binned * 3000 + 200).astype(np.float32)
    pairs = [(i, i) for i in range(4)]
    linear_hr = scene * 50_000 + 800
    hr_norm = fit_normalization(linear_hr)
    mapping = match_normalization(lr, linear_hr, hr_norm, pairs, 4)
    assert mapping.curve is None
    # An HR camera with a gamma: bin(HR) is no longer linear in LR; a curve fits it.
    curved_hr = scene**0.6 * 50_000 + 800
    hr_norm = fit_normalization(curved_hr)
    mapping = match_normalization(lr, curved_hr, hr_norm, pairs, 4)
    assert mapping.curve is not None
    target = np.stack([hr_norm.apply(c).reshape(8, 4, 12, 4).mean(axis=(1, 3))
                       for c in curved_hr])
    error = np.abs(mapping.apply(lr) - target).mean()
    assert error < 0.01
    back = mapping.invert(mapping.apply(lr))
    inside = (mapping.apply(lr) > 0.01) & (mapping.apply(lr) < 0.99)
    np.testing.assert_allclose(back[inside], lr[inside], rtol=1e-3)


def test_an_lr_camera_with_its_own_shading_keeps_a_line(monkeypatch):
    """A gain that varies across the LR frame scatters bin(HR) against LR; a curve fitted
    through that scatter would bend the response, where the LR filter undoes the shading
    only after a straight one."""
    from napari_xfusion import lr_match
    from napari_xfusion.normalize import match_normalization
    from napari_xfusion.simulate import shading_field
    from napari_xfusion.synthetic import synthetic_lpbf

    scene = synthetic_lpbf(n_frames=4, height=64, width=96, seed=2)
    binned = scene.reshape(4, 16, 4, 24, 4).mean(axis=(2, 4))
    hr = scene * 50_000 + 800
    hr_norm = fit_normalization(hr)
    pairs = [(i, i) for i in range(4)]
    shaded = (binned * shading_field(binned.shape[1:], 0.3) * 3000 + 200).astype(np.float32)
    assert match_normalization(shaded, hr, hr_norm, pairs, 4).curve is None
    # Judged without a shading across the frame, the same scatter bends it.
    monkeypatch.setattr(lr_match, "shading_terms",
                        lambda shape: np.zeros((0, *shape), np.float32))
    assert match_normalization(shaded, hr, hr_norm, pairs, 4).curve is not None
