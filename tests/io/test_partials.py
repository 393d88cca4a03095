"""One run per output, readable partials after any stop, honest counts, write errors."""

import errno
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tifffile

from napari_xfusion.io import (
    StackError,
    check_output_path,
    incomplete_path,
    open_writer,
    read_metadata,
    read_stack,
)
from napari_xfusion.io import write as write_module
from napari_xfusion.io.lock import lock_path

SHAPE = (16, 24)


def frame(k):
    return np.full(SHAPE, k, np.uint16)


def killed_writer(path, frames):
    """Write ``frames`` of 20 frames to ``path`` in a child process that then dies at once."""
    script = textwrap.dedent(f"""
        import os, numpy as np
        from napari_xfusion.io import open_writer
        w = open_writer({str(path)!r}, {SHAPE}, np.uint16, n_frames=20, metadata={{"a": 1}})
        for k in range({frames}):
            w.write(np.full({SHAPE}, k, np.uint16))
        os._exit(0)
    """)
    subprocess.run([sys.executable, "-c", script], check=True)


@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_second_run_to_the_same_output_is_refused(tmp_path, suffix):
    out = tmp_path / f"r{suffix}"
    first = open_writer(out, SHAPE, np.uint16, n_frames=2)
    with pytest.raises(StackError, match=f"being written by another run: process {os.getpid()}"):
        open_writer(out, SHAPE, np.uint16, n_frames=2, overwrite=True)
    with pytest.raises(StackError, match="being written by another run"):
        check_output_path(out, overwrite=True)
    first.write(frame(1))
    first.write(frame(2))
    first.close()
    assert not lock_path(out).exists()
    assert read_stack(out)[:, 0, 0].compute().tolist() == [1, 2]


def test_lock_of_a_dead_process_is_taken_over(tmp_path):
    out = tmp_path / "r.tif"
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    import socket

    lock_path(out).write_text(
        f'{{"pid": {int(child.stdout)}, "host": "{socket.gethostname()}"}}'
    )
    with open_writer(out, SHAPE, np.uint16, n_frames=1) as w:
        w.write(frame(3))
    assert out.exists() and not lock_path(out).exists()


def test_lock_from_another_host_names_the_lock_file(tmp_path):
    out = tmp_path / "r.tif"
    lock_path(out).write_text('{"pid": 1, "host": "some-other-node", "started": "then"}')
    with pytest.raises(StackError, match=f"some-other-node since then.*remove {lock_path(out)}"):
        check_output_path(out)


@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_partial_of_a_killed_run_holds_every_frame_written(tmp_path, suffix):
    out = tmp_path / f"r{suffix}"
    killed_writer(out, 7)
    partial = incomplete_path(out)
    stack = read_stack(partial)
    assert stack.shape == (7, *SHAPE)
    assert stack[:, 0, 0].compute().tolist() == list(range(7))
    meta = read_metadata(partial)
    assert meta["complete"] is False and meta["frames_written"] == 7 and meta["a"] == 1
    if suffix == ".tif":
        assert tifffile.imread(partial).shape == (7, *SHAPE)
    # The next run neither deletes it silently nor waits for the dead run's lock.
    with pytest.raises(StackError, match="interrupted run.*--overwrite"):
        check_output_path(out)
    with pytest.warns(UserWarning, match="discarding"):
        with open_writer(out, SHAPE, np.uint16, n_frames=1, overwrite=True) as w:
            w.write(frame(9))
    assert read_stack(out).shape == (1, *SHAPE)


@pytest.mark.parametrize(
    "where, expected",
    [("last pixels", 5), ("last directory", 5), ("second-last pixels", 4)],
)
def test_frame_cut_short_by_a_kill_is_the_only_one_lost(tmp_path, where, expected):
    out = tmp_path / "r.tif"
    killed_writer(out, 6)
    partial = incomplete_path(out)
    with tifffile.TiffFile(partial) as tif:
        last, second_last = tif.pages[5], tif.pages[4]
        ends = {
            "last pixels": last.dataoffsets[0] + 100,
            "last directory": last.offset + 20,
            "second-last pixels": second_last.dataoffsets[0] + 100,
        }
    data = partial.read_bytes()
    partial.write_bytes(data[: ends[where]])
    assert read_stack(partial)[:, 0, 0].compute().tolist() == list(range(expected))
    assert read_metadata(partial)["frames_written"] == expected


def test_free_space_is_checked_before_the_first_frame(tmp_path, monkeypatch):
    usage = write_module.shutil.disk_usage(tmp_path)
    monkeypatch.setattr(
        write_module.shutil, "disk_usage", lambda p: usage._replace(free=1_000_000)
    )
    with pytest.raises(StackError, match="needs about 10 MB but its disk has 1 MB free"):
        open_writer(tmp_path / "r.tif", (500, 1000), np.uint16, n_frames=10)
    assert not list(tmp_path.iterdir())


def test_full_disk_names_the_file_and_frees_the_space(tmp_path, monkeypatch):
    out = tmp_path / "r.tif"
    writer = open_writer(out, SHAPE, np.uint16, n_frames=3)
    writer.write(frame(0))

    def full(frame):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer, "_append", full)
    with pytest.raises(StackError, match=f"frame 1 to {incomplete_path(out)}.*disk is full"):
        writer.write(frame(1))
    assert not incomplete_path(out).exists() and not out.exists()
    assert not lock_path(out).exists()


def test_zarr_removed_while_written_is_not_reported_complete(tmp_path):
    import shutil

    out = tmp_path / "r.zarr"
    writer = open_writer(out, SHAPE, np.uint16, n_frames=3)
    writer.write(frame(1))
    shutil.rmtree(incomplete_path(out))
    writer.write(frame(2))
    writer.write(frame(3))
    with pytest.raises(StackError, match="removed or replaced while being written"):
        writer.close()
    assert not out.exists()


def test_tiff_replaced_while_written_is_not_moved_into_place(tmp_path):
    out = tmp_path / "r.tif"
    writer = open_writer(out, SHAPE, np.uint16, n_frames=2)
    writer.write(frame(1))
    other = tmp_path / "other.tif"
    tifffile.imwrite(other, np.zeros((2, *SHAPE), np.uint16))
    os.replace(other, incomplete_path(out))
    writer.write(frame(2))
    with pytest.raises(StackError, match="removed or replaced"):
        writer.close()
    assert not out.exists()
