"""The shared preconditions: one function and one message each, wherever they are met."""

import numpy as np
import pytest

from napari_xfusion.checks import check_scale, full_rate_selection, scale_between
from napari_xfusion.config import TimeModel


def test_scale_is_derived_from_the_shapes():
    assert scale_between((10, 20), (40, 80)) == 4
    assert scale_between((3, 10, 20), (2, 40, 80)) == 4  # leading axes are frames
    assert scale_between((10, 20), (40, 60)) is None
    assert scale_between((10, 20), (41, 80)) is None


def test_check_scale_names_both_sizes_and_the_fix():
    assert check_scale((10, 20), (40, 80), 4) == 4
    assert check_scale((10, 20), (20, 40)) == 2
    with pytest.raises(ValueError, match=r"HR frames are 20x40 and LR frames 10x20: .* "
                                         r"exactly 4 times .* set the scale to 2"):
        check_scale((10, 20), (20, 40), 4)
    with pytest.raises(ValueError, match="a whole multiple of the LR size; check that the "
                                         "stacks are LR and HR in the right order"):
        check_scale((10, 20), (41, 80))


def test_full_rate_selection_keeps_every_dth_frame_or_says_why_not():
    np.testing.assert_array_equal(full_rate_selection(12, 12, TimeModel(spacing=5, offset=1)),
                                  [1, 6, 11])
    with pytest.raises(ValueError, match="one frame per LR frame \\(12\\), but this one has 3"):
        full_rate_selection(12, 3, TimeModel(spacing=5))
