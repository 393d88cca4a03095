"""Allocator settings for CPU training and fusion (devices.retain_freed_memory)."""

import resource

import numpy as np
import pytest

from napari_xfusion import devices
from napari_xfusion.devices import retain_freed_memory


class FakeLibc:
    """Records the allocator calls a block makes."""

    def __init__(self):
        self.calls = []

    def mallopt(self, param, value):
        self.calls.append(("mallopt", param, value))
        return 1

    def malloc_trim(self, pad):
        self.calls.append(("malloc_trim", pad))
        return 1


@pytest.fixture
def fake_libc(monkeypatch):
    libc = FakeLibc()
    monkeypatch.setattr(devices, "_glibc", lambda: libc)
    monkeypatch.setattr(devices, "_retain_depth", 0)
    return libc


def test_settings_apply_once_and_are_restored_when_the_outermost_block_leaves(fake_libc):
    with retain_freed_memory() as applied:
        assert applied
        assert fake_libc.calls == [
            ("mallopt", devices._M_MMAP_MAX, 0),
            ("mallopt", devices._M_TRIM_THRESHOLD, 2**31 - 1),
        ]
        with retain_freed_memory():
            pass
        assert len(fake_libc.calls) == 2, "an inner block must not restore the defaults"
    assert fake_libc.calls[2:] == [
        ("mallopt", devices._M_MMAP_MAX, devices._DEFAULT_MMAP_MAX),
        ("mallopt", devices._M_TRIM_THRESHOLD, devices._DEFAULT_TRIM_THRESHOLD),
        ("malloc_trim", 0),
    ]


def test_defaults_come_back_after_an_error(fake_libc):
    with pytest.raises(RuntimeError), retain_freed_memory():
        raise RuntimeError("a failed step")
    assert fake_libc.calls[-1] == ("malloc_trim", 0)
    assert devices._retain_depth == 0


def test_nothing_changes_without_glibc(monkeypatch):
    monkeypatch.setattr(devices, "_glibc", lambda: None)
    with retain_freed_memory() as applied:
        assert not applied


def _faults_of_reallocating(megabytes: int) -> int:
    """Page faults of allocating, filling and freeing a buffer, after doing it once."""
    np.ones(megabytes << 18, dtype=np.float32)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    np.ones(megabytes << 18, dtype=np.float32)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@pytest.mark.skipif(devices._glibc() is None, reason="the settings exist only in glibc")
def test_freed_memory_is_reused_without_new_page_faults(monkeypatch):
    # From glibc's defaults, whatever another test left running (a block leaving restores them).
    monkeypatch.setattr(devices, "_retain_depth", 0)
    with retain_freed_memory():
        pass
    outside = _faults_of_reallocating(64)
    with retain_freed_memory():
        inside = _faults_of_reallocating(64)
    assert inside * 4 < outside, (inside, outside)
