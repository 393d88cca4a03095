import json
import os
import pickle
import sys

import dask.array as da
import numpy as np
import pytest
import tifffile

from napari_xfusion import io
from napari_xfusion.io import (
    StackError,
    check_finite,
    check_output_path,
    incomplete_path,
    open_writer,
    read_metadata,
    read_stack,
    write_stack,
)


def ramp(n=5, y=8, x=6, dtype=np.uint16):
    """A stack whose frame i is filled with values that identify it."""
    a = np.arange(n * y * x).reshape(n, y, x) % 200
    return (a + 10 * np.arange(n)[:, None, None]).astype(dtype)


# --- reading ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32, np.float64])
def test_multipage_tiff_round_trip(tmp_path, dtype):
    a = ramp(dtype=dtype)
    if np.issubdtype(dtype, np.signedinteger):
        a = a - 100
    tifffile.imwrite(tmp_path / "s.tif", a)
    stack = read_stack(tmp_path / "s.tif", name="LR stack")
    assert isinstance(stack, da.Array)
    assert stack.shape == a.shape and stack.dtype == a.dtype
    assert stack.chunks[0] == (1,) * len(a)
    np.testing.assert_array_equal(stack.compute(), a)
    np.testing.assert_array_equal(stack[3].compute(), a[3])


@pytest.mark.parametrize(
    "options",
    [{"bigtiff": True}, {"compression": "zlib"}, {"bigtiff": True, "compression": "zlib"}],
)
def test_bigtiff_and_compressed_tiffs(tmp_path, options):
    a = ramp()
    tifffile.imwrite(tmp_path / "s.tif", a, **options)
    stack = read_stack(str(tmp_path / "s.tif"))
    np.testing.assert_array_equal(stack.compute(), a)
    np.testing.assert_array_equal(stack[[4, 1]].compute(), a[[4, 1]])
    np.testing.assert_array_equal(stack[-1, 2:5].compute(), a[-1, 2:5])


def test_compressed_tiff_reads_only_the_frames_asked_for(tmp_path):
    a = ramp()
    path = tmp_path / "s.tif"
    tifffile.imwrite(path, a, compression="zlib")
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[0].dataoffsets[0]
    # Ruin page 0's compressed pixels: frames that do not touch it still read.
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"\xff" * 16)
    stack = read_stack(path, name="LR stack")
    np.testing.assert_array_equal(stack[2].compute(), a[2])
    with pytest.raises(StackError, match="LR stack frame 0 could not be read.*corrupt"):
        stack[0].compute()


def test_imagej_hyperstack_singleton_axes_are_dropped(tmp_path):
    a = ramp(n=4)
    tifffile.imwrite(tmp_path / "ij.tif", a[:, None], imagej=True, metadata={"axes": "TCYX"})
    stack = read_stack(tmp_path / "ij.tif")
    assert stack.shape == (4, 8, 6)
    np.testing.assert_array_equal(stack.compute(), a)


def test_tiff_stack_survives_pickling(tmp_path):
    # Distributed workers receive the graph pickled.
    a = ramp()
    tifffile.imwrite(tmp_path / "s.tif", a, compression="zlib")
    stack = pickle.loads(pickle.dumps(read_stack(tmp_path / "s.tif")))
    np.testing.assert_array_equal(stack.compute(), a)


@pytest.mark.parametrize("source", ["uncompressed TIFF", "numpy array"])
def test_opening_a_stack_does_not_load_or_copy_it(tmp_path, source):
    import tracemalloc

    data = np.arange(40 * 256 * 256, dtype=np.uint16).reshape(40, 256, 256)  # 5 MiB
    if source == "numpy array":
        opened = data
    else:
        tifffile.imwrite(tmp_path / "s.tif", data)
        opened = tmp_path / "s.tif"
    tracemalloc.start()
    try:
        stack = read_stack(opened)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < data.nbytes / 10
    np.testing.assert_array_equal(stack[7].compute(), data[7])


def test_folder_in_natural_order_skipping_other_files(tmp_path):
    for i in (1, 2, 10, 11):
        tifffile.imwrite(tmp_path / f"frame{i}.tif", np.full((4, 5), i, np.uint16))
    (tmp_path / "notes.txt").write_text("not a frame")
    (tmp_path / "._frame3.tif").write_bytes(b"macOS resource fork")
    stack = read_stack(tmp_path, name="HR stack")
    assert stack.shape == (4, 4, 5) and stack.chunks[0] == (1, 1, 1, 1)
    assert stack[:, 0, 0].compute().tolist() == [1, 2, 10, 11]


def test_folder_with_mismatched_last_frame_fails_at_open(tmp_path):
    tifffile.imwrite(tmp_path / "f1.tif", np.zeros((4, 5), np.uint16))
    tifffile.imwrite(tmp_path / "f2.tif", np.zeros((4, 6), np.uint16))
    with pytest.raises(StackError, match="f2.tif has shape.*must match.*remove or convert"):
        read_stack(tmp_path)


def test_folder_with_mismatched_middle_frame_fails_when_read(tmp_path):
    tifffile.imwrite(tmp_path / "f1.tif", np.zeros((4, 5), np.uint16))
    tifffile.imwrite(tmp_path / "f2.tif", np.zeros((4, 5), np.uint8))
    tifffile.imwrite(tmp_path / "f3.tif", np.zeros((4, 5), np.uint16))
    stack = read_stack(tmp_path, name="LR stack")
    stack[0].compute()
    with pytest.raises(StackError, match="LR stack: frame file f2.tif .* uint8"):
        stack.compute()


def test_folder_of_multipage_files_is_refused(tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", ramp())
    with pytest.raises(StackError, match="not one 2-D frame.*one frame per file"):
        read_stack(tmp_path)


def test_numpy_input_one_chunk_per_frame():
    a = ramp(dtype=np.float32)
    stack = read_stack(a)
    assert stack.chunks == ((1,) * 5, (8,), (6,))
    np.testing.assert_array_equal(stack.compute(), a)


def test_dask_input_is_rechunked_and_singletons_squeezed():
    a = ramp(n=6)
    stack = read_stack(da.from_array(a[:, None], chunks=(3, 1, 4, 3)))
    assert stack.shape == (6, 8, 6)
    assert stack.chunks == ((1,) * 6, (8,), (6,))
    np.testing.assert_array_equal(stack.compute(), a)


def test_list_input():
    assert read_stack([[[1, 2]], [[3, 4]]]).shape == (2, 1, 2)


def test_reading_is_lazy(counting):
    source = counting(ramp(n=50))
    stack = read_stack(source)
    assert source.frames_read == []
    np.testing.assert_array_equal(stack[17].compute(), source.data[17])
    assert source.frames_read == [17]


@pytest.mark.parametrize(
    "data, match",
    [
        (np.zeros((8, 6)), r"LR stack is a single 2-D image of shape \(8, 6\); a stack of frames"),
        (np.zeros(5), r"LR stack has shape \(5,\); a stack of frames"),
        (np.zeros((2, 8, 6, 3), np.uint8), "colour.*convert it to grayscale"),
        (np.zeros((2, 3, 8, 6)), "more than one axis besides y and x"),
        (np.zeros((0, 8, 6)), "holds no pixels"),
        (np.zeros((2, 8, 6), complex), "complex.*numpy.abs"),
        (np.zeros((2, 8, 6), bool), "boolean.*convert it to uint8"),
        (np.full((2, 3, 3), "a"), "unsupported data type"),
    ],
)
def test_bad_arrays(data, match):
    with pytest.raises(StackError, match=match):
        read_stack(data, name="LR stack")


def test_single_page_tiff_is_a_2d_image(tmp_path):
    tifffile.imwrite(tmp_path / "one.tif", np.zeros((8, 6), np.uint16))
    with pytest.raises(StackError, match="single 2-D image.*multi-page TIFF or a folder"):
        read_stack(tmp_path / "one.tif", name="HR stack")


def test_rgb_tiff(tmp_path):
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((2, 8, 6, 3), np.uint8), photometric="rgb")
    with pytest.raises(StackError, match="colour images.*grayscale"):
        read_stack(tmp_path / "rgb.tif")


@pytest.mark.parametrize("n", [3, 4])
def test_few_frames_that_tifffile_stored_as_planar_rgb_are_frames(tmp_path, n):
    a = ramp(n=n)
    with pytest.warns(DeprecationWarning):
        tifffile.imwrite(tmp_path / "s.tif", a)
    np.testing.assert_array_equal(read_stack(tmp_path / "s.tif").compute(), a)


def test_planar_rgb_image_is_colour(tmp_path):
    a = ramp(n=3, dtype=np.uint8)
    tifffile.imwrite(
        tmp_path / "rgb.tif", a, photometric="rgb", planarconfig="separate", metadata=None
    )
    with pytest.raises(StackError, match="colour images"):
        read_stack(tmp_path / "rgb.tif")


def test_empty_file(tmp_path):
    (tmp_path / "e.tif").touch()
    with pytest.raises(StackError, match="empty.*re-export"):
        read_stack(tmp_path / "e.tif")


def test_not_a_tiff(tmp_path):
    (tmp_path / "p.tif").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(StackError, match="not a readable TIFF file"):
        read_stack(tmp_path / "p.tif")


def test_truncated_tiff(tmp_path):
    path = tmp_path / "t.tif"
    tifffile.imwrite(path, ramp(n=20, y=32, x=32), compression="zlib")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(StackError, match="truncated"):
        read_stack(path)


def test_truncated_uncompressed_tiff(tmp_path):
    path = tmp_path / "t.tif"
    tifffile.imwrite(path, ramp(n=20, y=32, x=32), bigtiff=True)
    with tifffile.TiffFile(path) as tif:
        end = tif.series[0].dataoffset + 20 * 32 * 32 * 2
    path.write_bytes(path.read_bytes()[: end - 100])
    with pytest.raises(StackError, match="truncated"):
        read_stack(path)


def test_missing_path(tmp_path):
    with pytest.raises(StackError, match="LR stack: .*nope.tif does not exist; check the path"):
        read_stack(tmp_path / "nope.tif", name="LR stack")


def test_empty_folder(tmp_path):
    with pytest.raises(StackError, match="contains no .tif/.tiff files"):
        read_stack(tmp_path)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_frame_raises_on_compute(bad):
    a = np.ones((5, 4, 4), np.float32)
    a[3, 1, 2] = bad
    stack = read_stack(a, name="LR stack")
    stack[:3].compute()
    with pytest.raises(StackError, match="LR stack frame 3 contains NaN or infinite"):
        stack.compute()
    with pytest.raises(StackError, match="frame 3"):
        stack[2:].mean().compute()


def test_non_finite_frame_in_tiff(tmp_path):
    a = np.ones((4, 4, 4), np.float32)
    a[1, 0, 0] = np.nan
    tifffile.imwrite(tmp_path / "f.tif", a, photometric="minisblack")
    with pytest.raises(StackError, match="HR stack frame 1 contains NaN"):
        read_stack(tmp_path / "f.tif", name="HR stack").compute()


def test_check_finite():
    frame = np.zeros((3, 3))
    assert check_finite(frame, "LR stack", 2) is frame
    check_finite(np.zeros((3, 3), np.uint16))
    frame[1, 1] = np.inf
    with pytest.raises(ValueError, match="LR stack frame 2 contains NaN or infinite.*nan_to_num"):
        check_finite(frame, "LR stack", 2)


# --- writing ---------------------------------------------------------------------------


def test_tiff_writer_round_trip(tmp_path):
    a = ramp(n=6)
    out = tmp_path / "result.tif"
    with open_writer(out, (8, 6), np.uint16, n_frames=6, metadata={"method": "stf"}) as w:
        assert w.path == out and w.partial_path == tmp_path / "result.incomplete.tif"
        for frame in a:
            w.write(frame)
        assert w.partial_path.exists() and not out.exists()
    assert w.frames_written == 6 and not w.partial_path.exists()
    assert tifffile.imread(out).shape == (6, 8, 6)
    np.testing.assert_array_equal(read_stack(out).compute(), a)
    meta = read_metadata(out)
    assert meta["method"] == "stf" and meta["complete"] is True and meta["frames_written"] == 6
    with tifffile.TiffFile(out) as tif:
        assert tif.is_bigtiff


def test_zarr_writer_round_trip(tmp_path):
    a = ramp(n=4, dtype=np.float32)
    out = tmp_path / "result.zarr"
    with open_writer(out, (8, 6), np.float32, metadata={"info": json.dumps({"a": 1})}) as w:
        for frame in a:
            w.write(frame)
    np.testing.assert_array_equal(read_stack(out).compute(), a)
    meta = read_metadata(out)
    assert meta["complete"] is True and meta["frames_written"] == 4
    assert json.loads(meta["info"]) == {"a": 1}
    assert not incomplete_path(out).exists()


@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_error_mid_write_keeps_incomplete_file(tmp_path, suffix):
    a = ramp(n=5)
    out = tmp_path / f"result{suffix}"
    with pytest.raises(RuntimeError, match="model crashed"):
        with open_writer(out, (8, 6), np.uint16, n_frames=5) as w:
            w.write(a[0])
            w.write(a[1])
            raise RuntimeError("model crashed")
    assert not out.exists()
    partial = tmp_path / f"result.incomplete{suffix}"
    np.testing.assert_array_equal(read_stack(partial).compute(), a[:2])
    meta = read_metadata(partial)
    assert meta["complete"] is False and meta["frames_written"] == 2
    if suffix == ".tif":
        assert tifffile.imread(partial).shape == (2, 8, 6)


def test_bad_input_mid_write_leaves_nothing(tmp_path):
    # A ValueError means the input was bad: the partial result is worthless.
    with pytest.raises(ValueError, match="NaN"):
        with open_writer(tmp_path / "r.tif", (8, 6), np.uint16, n_frames=5) as w:
            w.write(ramp()[0])
            raise ValueError("LR stack frame 3 contains NaN values")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_error_before_first_frame_leaves_nothing(tmp_path, suffix):
    with pytest.raises(KeyboardInterrupt):
        with open_writer(tmp_path / f"r{suffix}", (8, 6), np.uint16):
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


def test_closing_short_keeps_partial_and_says_so(tmp_path):
    out = tmp_path / "r.tif"
    with pytest.raises(StackError, match="only 1 of 3 frames.*kept in"):
        with open_writer(out, (8, 6), np.uint16, n_frames=3) as w:
            w.write(ramp()[0])
    assert not out.exists() and incomplete_path(out).exists()


def test_writer_refuses_bad_frames(tmp_path):
    with open_writer(tmp_path / "r.tif", (8, 6), np.uint16, n_frames=1) as w:
        with pytest.raises(StackError, match=r"shape \(8, 5\).*crop or resize"):
            w.write(np.zeros((8, 5), np.uint16))
        with pytest.raises(StackError, match="float32 but .* stores uint16.*convert"):
            w.write(np.zeros((8, 6), np.float32))
        with pytest.raises(StackError, match="outside the range of uint16"):
            w.write(np.full((8, 6), 70000, np.uint32))
        w.write(np.zeros((8, 6), np.uint8))
        with pytest.raises(StackError, match="all are written"):
            w.write(np.zeros((8, 6), np.uint16))
    # A one-frame result still reads back as a stack here (elsewhere it is one image).
    assert read_stack(tmp_path / "r.tif").shape == (1, 8, 6)
    assert tifffile.imread(tmp_path / "r.tif").shape == (8, 6)


def test_metadata_must_be_json_and_not_reserved(tmp_path):
    with pytest.raises(StackError, match="JSON-serializable"):
        open_writer(tmp_path / "r.tif", (2, 2), np.uint8, metadata={"a": object()})
    with pytest.raises(StackError, match="set by the writer itself"):
        open_writer(tmp_path / "r.tif", (2, 2), np.uint8, metadata={"shape": 1})


def test_overwrite(tmp_path):
    out = tmp_path / "r.tif"
    write_stack(out, ramp(n=3))
    with pytest.raises(StackError, match="already exists; pass --overwrite"):
        write_stack(out, ramp(n=2))
    write_stack(out, ramp(n=2), overwrite=True)
    assert tifffile.imread(out).shape == (2, 8, 6)


def test_zarr_overwrite_replaces_store_but_not_other_folders(tmp_path):
    out = tmp_path / "r.zarr"
    write_stack(out, ramp(n=3))
    write_stack(out, ramp(n=2), overwrite=True)
    assert read_stack(out).shape == (2, 8, 6)
    (tmp_path / "data.zarr").mkdir()
    with pytest.raises(StackError, match="not a zarr store"):
        check_output_path(tmp_path / "data.zarr", overwrite=True)


def test_unsupported_suffix(tmp_path):
    with pytest.raises(StackError, match="unsupported output type '.png'.*\\.tif/\\.tiff"):
        check_output_path(tmp_path / "r.png")


def test_missing_parent_folder(tmp_path):
    with pytest.raises(StackError, match="does not exist; create it first"):
        check_output_path(tmp_path / "missing" / "r.tif")


def test_file_as_parent_folder(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(StackError, match="is not a folder"):
        check_output_path(tmp_path / "file" / "r.tif")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere")
def test_unwritable_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(StackError, match="cannot write in the folder.*choose a folder"):
            check_output_path(folder / "r.tif")
    finally:
        folder.chmod(0o700)


def test_folder_refusing_writes(tmp_path, monkeypatch):
    # Runs as root too, where permission bits do not stop writes.
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(io.write.tempfile, "NamedTemporaryFile", refuse)
    with pytest.raises(StackError, match="cannot write in the folder.*Permission denied"):
        check_output_path(tmp_path / "r.tif")


def test_zarr_output_without_zarr(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "zarr", None)
    with pytest.raises(StackError, match="needs the optional zarr package.*pip install zarr"):
        check_output_path(tmp_path / "r.zarr")


def test_write_stack_streams_dask_chunks_with_progress(tmp_path):
    a = ramp(n=7)
    calls = []
    out = write_stack(
        tmp_path / "r.tiff",
        da.from_array(a, chunks=(3, 4, 6)),
        progress=lambda done, total: calls.append((done, total)),
    )
    np.testing.assert_array_equal(tifffile.imread(out), a)
    assert calls == [(i, 7) for i in range(1, 8)]
