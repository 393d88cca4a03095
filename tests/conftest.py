from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_xfusion.config import NoiseConfig, TimeModel
from napari_xfusion.simulate import simulate_experiment
from napari_xfusion.synthetic import synthetic_lpbf


class CountingStack:
    """An array-like stack that records which frames were read (by int, slice or tuple)."""

    def __init__(self, data):
        self.data, self.shape, self.dtype = data, data.shape, data.dtype
        self.frames_read = []

    def __len__(self):
        return len(self.data)

    def __getitem__(self, key):
        first = key[0] if isinstance(key, tuple) else key
        self.frames_read.extend(np.atleast_1d(np.arange(len(self.data))[first]).tolist())
        return self.data[key]


@pytest.fixture
def counting():
    """The :class:`CountingStack` class, to wrap arrays whose reads a test checks."""
    return CountingStack


def assert_same_network_output(actual, expected):
    """Two network runs of the same frames in camera units (an integer dtype), fused in
    different groups (a resumed run, cluster chunks): the same but for the last unit of a
    few pixels. On some CPUs (without AVX-512) fp32 matrix products round differently with
    the batch they are in, so a frame fused in another group may round the other way."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.dtype == expected.dtype and actual.dtype.kind in "ui"
    assert actual.shape == expected.shape
    off = np.abs(actual.astype(np.int64) - expected.astype(np.int64))
    assert off.max() <= 1 and np.mean(off > 0) < 1e-3, (off.max(), np.mean(off > 0))


@pytest.fixture
def same_network_output():
    """:func:`assert_same_network_output`, for tests that compare two network runs."""
    return assert_same_network_output


@pytest.fixture(scope="session")
def small_experiment():
    """A short simulated experiment: 16 frames, HR 64x96, keyframes every 5 frames."""
    truth = synthetic_lpbf(n_frames=16, height=64, width=96, seed=3)
    return simulate_experiment(truth, TimeModel(spacing=5), NoiseConfig())


@pytest.fixture
def stack_files(tmp_path, small_experiment):
    """The small experiment as uint16 TIFFs, the way a camera would write them."""
    exp = small_experiment
    lr = tmp_path / "lr.tif"
    hr = tmp_path / "hr.tif"
    truth = tmp_path / "truth.tif"
    tifffile.imwrite(lr, (exp.lr * 4000 + 100).astype(np.uint16), photometric="minisblack")
    tifffile.imwrite(hr, (exp.hr * 60000).astype(np.uint16), photometric="minisblack")
    tifffile.imwrite(truth, (exp.truth * 60000).astype(np.uint16), photometric="minisblack")
    return lr, hr, truth


def pytest_collection_modifyitems(config, items):
    """Every test of the napari side drives a viewer: mark it ``gui``."""
    napari_tests = Path(__file__).parent / "napari"
    for item in items:
        if napari_tests in Path(item.fspath).parents:
            item.add_marker(pytest.mark.gui)
