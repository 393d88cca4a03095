"""The cameras' own files: Photron MRAW/CIH and HDF5/NeXus, read lazily, and their timing."""

from __future__ import annotations

import numpy as np
import pytest

from napari_xfusion.io import StackError, open_camera_file, propose_time_model, read_stack
from napari_xfusion.io.cameras import CameraTiming


def frames(n=5, h=12, w=16, high=4095, seed=0):
    return np.random.default_rng(seed).integers(0, high + 1, (n, h, w)).astype(np.uint16)


# -- Photron MRAW ---------------------------------------------------------------------


@pytest.mark.parametrize("bits", [8, 16])
def test_mraw_written_by_pymraw_reads_back(tmp_path, bits):
    pymraw = pytest.importorskip("pyMRAW")
    data = frames(high=255 if bits == 8 else 4095)
    _, cih = pymraw.save_mraw(data, str(tmp_path / "shot.cih"), bit_depth=bits,
                              info_dict={"Record Rate(fps)": 5_000_000, "Start Frame": -20})
    for path in (cih, tmp_path / "shot.mraw"):
        stack = read_stack(path, name="LR stack")
        assert stack.shape == data.shape and stack.dtype == (np.uint8 if bits == 8 else np.uint16)
        np.testing.assert_array_equal(np.asarray(stack[3]), data[3])
        np.testing.assert_array_equal(np.asarray(stack), data)
    timing = open_camera_file(cih, "LR stack").timing
    assert timing == CameraTiming(rate=5e6, first_frame=-20 / 5e6)


def test_12_bit_packed_frames(tmp_path):
    data = frames(n=3, h=4, w=6)
    flat = data.reshape(3, -1)
    # Two pixels in three bytes, as Photron packs them: AAAAAAAA AAAABBBB BBBBBBBB.
    a, b = flat[:, 0::2].astype(np.uint32), flat[:, 1::2].astype(np.uint32)
    packed = np.stack([a >> 4, ((a & 0xF) << 4) | (b >> 8), b & 0xFF], axis=-1).astype(np.uint8)
    (tmp_path / "shot.mraw").write_bytes(packed.tobytes())
    (tmp_path / "shot.cih").write_text(
        "#Camera Information Header\nRecord Rate(fps) : 250000\nTotal Frame : 3\n"
        "Image Width : 6\nImage Height : 4\nColor Type : Mono\nColor Bit : 12\n"
        "File Format : MRaw\n"
    )
    np.testing.assert_array_equal(np.asarray(read_stack(tmp_path / "shot.cih")), data)


def test_broken_mraw_recordings_are_named(tmp_path):
    pymraw = pytest.importorskip("pyMRAW")
    data = frames()
    mraw, cih = pymraw.save_mraw(data, str(tmp_path / "shot.cih"), bit_depth=16)
    with open(mraw, "r+b") as f:
        f.truncate(2 * data[0].size * 3 + 7)  # three frames and a bit
    with pytest.raises(StackError, match="holds 3 whole frames of the 5 its header promises"):
        read_stack(cih)
    (tmp_path / "lonely.mraw").write_bytes(b"\0" * 100)
    with pytest.raises(StackError, match="no .cih or .cihx header"):
        read_stack(tmp_path / "lonely.mraw")
    (tmp_path / "colour.cih").write_text("Image Width : 4\nImage Height : 4\nTotal Frame : 1\n"
                                         "Color Bit : 24\nColor Type : Color\n")
    (tmp_path / "colour.mraw").write_bytes(b"\0" * 48)
    with pytest.raises(StackError, match="colour recording"):
        read_stack(tmp_path / "colour.cih")


# -- Phantom CINE ---------------------------------------------------------------------


def write_cine(path, data, rate, first_image, annotation=8, bottom_up=True, compression=0):
    """A CINE file laid out as the format documents it (the structure offsets were checked
    against pycine's definitions): header, bitmap header, SETUP with the frame rate at byte
    768, the image offset table, then per frame an annotation block and the pixels."""
    import struct

    n, h, w = data.shape
    setup = bytearray(12432)
    setup[768:772] = struct.pack("<I", rate)
    off_bitmap, off_setup = 44, 84
    off_table = off_setup + len(setup)
    frame_bytes = h * w * data.dtype.itemsize
    first = off_table + 8 * n
    offsets = [first + i * (annotation + frame_bytes) for i in range(n)]
    with open(path, "wb") as f:
        f.write(struct.pack("<2sHHHiIiIIIIII", b"CI", 44, compression, 1, first_image, n,
                            first_image, n, off_bitmap, off_setup, off_table, 0, 0))
        f.write(struct.pack("<IiiHHIIiiII", 40, w, h if bottom_up else -h, 1,
                            8 * data.dtype.itemsize, 0, frame_bytes, 0, 0, 0, 0))
        f.write(setup)
        f.write(np.asarray(offsets, "<i8").tobytes())
        for frame in data:
            f.write(struct.pack("<I", annotation) + b"\0" * (annotation - 8))
            f.write(struct.pack("<I", frame_bytes))
            f.write((frame[::-1] if bottom_up else frame).tobytes())


@pytest.mark.parametrize("dtype, bottom_up", [(np.uint16, True), (np.uint8, False)])
def test_cine_frames_and_timing(tmp_path, dtype, bottom_up):
    data = frames(high=255 if dtype == np.uint8 else 4095).astype(dtype)
    path = tmp_path / "phantom.cine"
    write_cine(path, data, rate=250_000, first_image=-3, annotation=24, bottom_up=bottom_up)
    stack = read_stack(path, name="HR stack")
    assert stack.dtype == dtype
    np.testing.assert_array_equal(np.asarray(stack), data)
    assert open_camera_file(path, "HR stack").timing == CameraTiming(250_000, -3 / 250_000)


def test_broken_cine_files_are_named(tmp_path):
    data = frames()
    path = tmp_path / "cut.cine"
    write_cine(path, data, rate=1000, first_image=0)
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 100)
    with pytest.raises(StackError, match="holds 4 whole frames of the 5 .* truncated"):
        read_stack(path)
    write_cine(tmp_path / "packed.cine", data, rate=1000, first_image=0, compression=1)
    with pytest.raises(StackError, match="packed or compressed frames"):
        read_stack(tmp_path / "packed.cine")
    (tmp_path / "fake.cine").write_bytes(b"not a cine file at all" * 3)
    with pytest.raises(StackError, match="not a Phantom CINE file"):
        read_stack(tmp_path / "fake.cine")


# -- HDF5 / NeXus ---------------------------------------------------------------------


def test_the_only_3d_dataset_or_the_named_one(tmp_path):
    h5py = pytest.importorskip("h5py")
    data = frames()
    path = tmp_path / "scan.nxs"
    with h5py.File(path, "w") as f:
        f.create_dataset("entry/data/data", data=data, chunks=(1, 12, 16))
        f.create_dataset("entry/instrument/dark", data=data[0])  # 2-D: not a stack
    stack = read_stack(path, name="HR stack")
    np.testing.assert_array_equal(np.asarray(stack[2]), data[2])
    np.testing.assert_array_equal(np.asarray(read_stack(f"{path}::/entry/data/data")), data)
    two = tmp_path / "two.h5"
    with h5py.File(two, "w") as f:
        f.create_dataset("entry/data/data", data=data)
        f.create_dataset("entry/other", data=data)
    with pytest.raises(StackError, match="holds 2 3-D datasets .*two.h5::/path/to/data"):
        read_stack(two)
    with pytest.raises(StackError, match="is not a 3-D dataset"):
        read_stack(f"{path}::/entry/instrument/dark")
    with pytest.raises(StackError, match="no dataset '/nope'"):
        read_stack(f"{path}::/nope")


def test_compressed_and_truncated_hdf5(tmp_path):
    h5py = pytest.importorskip("h5py")
    hdf5plugin = pytest.importorskip("hdf5plugin")
    data = frames()
    path = tmp_path / "camera.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("frames", data=data, chunks=(1, 12, 16), **hdf5plugin.LZ4())
    np.testing.assert_array_equal(np.asarray(read_stack(path)), data)
    cut = tmp_path / "cut.h5"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(StackError, match="not a readable HDF5 file .*copy it again"):
        read_stack(cut)


# -- timing ---------------------------------------------------------------------------


def test_spacing_and_offset_from_frame_rates_and_trigger_times():
    lr = CameraTiming(rate=5e6, first_frame=-40 / 5e6)
    hr = CameraTiming(rate=2.5e5, first_frame=-1 / 2.5e5)
    # The HR camera's first frame, 4 us before the trigger, is LR frame 20 (8 us before).
    assert propose_time_model(lr, hr) == (20, 20)
    with pytest.raises(ValueError, match="not a whole number; give --spacing"):
        propose_time_model(lr, CameraTiming(rate=3e5, first_frame=0.0))
