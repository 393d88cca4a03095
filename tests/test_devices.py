"""Allocator settings for CPU training and fusion (devices.retain_freed_memory)."""

import subprocess
import sys

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


#: Page faults of allocating, filling and freeing a 64 MB buffer (after doing it once), from
#: glibc's defaults and inside a block. Run in a process of its own: the settings are
#: process-wide, and a thread another test left finishing would change them mid-measurement.
_MEASURE = """
import resource
import numpy as np
from napari_xfusion.devices import retain_freed_memory

def faults():
    np.ones(64 << 18, dtype=np.float32)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    np.ones(64 << 18, dtype=np.float32)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

outside = faults()
with retain_freed_memory():
    inside = faults()
print(outside, inside)
"""


@pytest.mark.skipif(devices._glibc() is None, reason="the settings exist only in glibc")
def test_freed_memory_is_reused_without_new_page_faults():
    done = subprocess.run([sys.executable, "-c", _MEASURE], capture_output=True, text=True,
                          check=True)
    outside, inside = map(int, done.stdout.split())
    assert inside * 4 < outside, (inside, outside)
