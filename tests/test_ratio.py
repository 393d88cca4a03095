"""Division by the previous frame: values, laziness, zeros, contrast limits."""

import dask.array as da
import numpy as np
import pytest

from napari_xfusion._napari.record import ResultStack
from napari_xfusion.ratio import ratio_contrast_limits, ratio_to_previous


def test_each_frame_is_divided_by_the_previous_one():
    rng = np.random.default_rng(0)
    stack = rng.uniform(1, 100, (5, 6, 7)).astype(np.float32)
    ratio = ratio_to_previous(stack)
    assert isinstance(ratio, da.Array)
    assert ratio.shape == stack.shape and ratio.dtype == np.float32
    assert ratio.chunks[0] == (1,) * 5
    values = ratio.compute()
    np.testing.assert_array_equal(values[0], 1)
    np.testing.assert_allclose(values[1:], stack[1:] / stack[:-1], rtol=1e-6)


def test_static_scene_reads_one_and_a_moving_particle_stands_out():
    scene = np.full((4, 16, 16), 500, np.uint16)
    scene[2, 5:8, 5:8] = 100  # a dark particle in frame 2 only
    values = ratio_to_previous(scene).compute()
    np.testing.assert_array_equal(values[1], 1)
    np.testing.assert_allclose(values[2, 5:8, 5:8], 0.2)
    np.testing.assert_allclose(values[3, 5:8, 5:8], 5.0)
    assert (values[2:, 0, 0] == 1).all()


def test_zeros_and_nan_give_finite_ratios():
    stack = np.zeros((4, 3, 3), np.float32)
    stack[2] = 0.5
    stack[3, 0, 0] = np.nan
    values = ratio_to_previous(stack, eps=1e-3).compute()
    assert np.isfinite(values).all() and (values > 0).all()
    np.testing.assert_array_equal(values[1], 1)  # zero over zero: no change
    np.testing.assert_allclose(values[2], 500)  # 0.5 over the eps floor
    np.testing.assert_allclose(values[3, 0, 0], 1e-3 / 0.5)
    huge = np.array([[[0.0]], [[1e300]]])
    assert np.isfinite(ratio_to_previous(huge).compute()).all()


def test_integer_stacks_floor_at_one_count():
    stack = np.array([[[0, 10]], [[3, 0]]], np.uint16)
    np.testing.assert_allclose(ratio_to_previous(stack).compute()[1], [[3.0, 0.1]])


def test_frames_are_read_only_when_needed(counting):
    stack = counting(np.arange(1, 10 * 4 * 5 + 1, dtype=np.float32).reshape(10, 4, 5))
    ratio = ratio_to_previous(stack)
    assert stack.frames_read == []
    frame = ratio[7].compute()
    assert sorted(set(stack.frames_read)) == [6, 7]
    np.testing.assert_allclose(frame, stack.data[7] / stack.data[6])


def test_dask_input_with_any_chunks():
    values = np.arange(1, 6 * 4 * 4 + 1, dtype=np.float64).reshape(6, 4, 4)
    stack = da.from_array(values, chunks=(3, 2, 2))
    ratio = ratio_to_previous(stack)
    assert ratio.chunks[0] == (1,) * 6
    np.testing.assert_allclose(ratio.compute()[1:], (stack[1:] / stack[:-1]).compute(), rtol=1e-6)


def test_array_like_stack_with_unfused_frames():
    # The stack a running fusion fills: frames not fused yet read as NaN, counted as 0.
    result = ResultStack((4, 3, 3), np.uint16)
    result[1] = np.full((3, 3), 500)
    result[2] = np.full((3, 3), 1000)
    values = ratio_to_previous(result).compute()
    assert np.isfinite(values).all()
    np.testing.assert_allclose(values[:, 0, 0], [1, 500, 2, 1 / 1000], rtol=1e-5)


def test_short_stacks_and_bad_input():
    np.testing.assert_array_equal(ratio_to_previous(np.full((1, 2, 2), 7.0)).compute(), 1)
    assert ratio_to_previous(np.zeros((0, 2, 2))).shape == (0, 2, 2)
    with pytest.raises(ValueError, match=r"\(t, y, x\)"):
        ratio_to_previous(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="eps"):
        ratio_to_previous(np.ones((2, 2, 2)), eps=0)


def test_contrast_limits_are_symmetric_around_one():
    rng = np.random.default_rng(1)
    stack = rng.uniform(90, 110, (20, 32, 32))
    low, high = ratio_contrast_limits(ratio_to_previous(stack))
    assert low < 1 < high
    assert high - 1 == pytest.approx(1 - low)
    # Ratios of values within 90..110 stay within 0.82..1.23.
    assert 0.1 < high - 1 < 0.23


def test_contrast_limits_of_a_static_scene_are_valid():
    static = ratio_to_previous(np.full((5, 8, 8), 3.0))
    assert ratio_contrast_limits(static, min_half_width=0.05) == pytest.approx((0.95, 1.05))
    single = ratio_to_previous(np.ones((1, 2, 2)))
    assert ratio_contrast_limits(single) == pytest.approx((0.99, 1.01))


def test_contrast_limits_sample_few_frames_and_ignore_an_odd_one(counting):
    data = np.full((100, 8, 8), 100.0)
    data[1::2] = 110.0  # alternating frames: ratios 1.1 and 1/1.1
    data[50] = 1e6  # one flash
    stack = counting(data)
    low, high = ratio_contrast_limits(ratio_to_previous(stack), n_samples=5)
    assert len(set(stack.frames_read)) <= 10
    assert high == pytest.approx(1.1, abs=1e-3)
