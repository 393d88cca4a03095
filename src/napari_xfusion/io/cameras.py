"""The files high-speed cameras write: Photron MRAW/CIH, Phantom CINE and HDF5/NeXus.

Both are read lazily, one frame at a time, like TIFF stacks (:func:`napari_xfusion.io.
read_stack` dispatches here by suffix):

* **Photron MRAW** -- a ``.cih`` (or ``.cihx``) text header and a ``.mraw`` file of raw
  frames stored back to back, 8 or 16 bits per pixel (little-endian) or 12 bits packed two
  pixels in three bytes. Give the ``.cih``, ``.cihx`` or ``.mraw`` path; the header must sit
  beside the frames under the same name. Written here from the header's description; the
  tests check it against files written by ``pyMRAW``.
* **Phantom CINE** -- the Phantom cameras' ``.cine`` files, uncompressed 8 or 16 bits per
  pixel (packed 10/12-bit files are refused with the fix). Read from the file's documented
  headers (CINEFILEHEADER, BITMAPINFOHEADER, the SETUP block's frame rate and the image
  offset table); the tests write files to that layout, which was checked against
  ``pycine``'s structure definitions.
* **HDF5 / NeXus** -- a 3-D dataset ``(frames, y, x)`` in a ``.h5``, ``.hdf5``, ``.nxs`` or
  ``.nx5`` file: ``file.h5::/entry/data/data`` names the dataset, or the file's only 3-D
  dataset is taken. Needs ``h5py`` (``pip install "napari-xfusion[cameras]"``);
  ``hdf5plugin`` adds the compression filters cameras use.

:func:`camera_timing` reads a recording's frame rate and the time of its first frame
relative to the trigger where the file records them (MRAW and CINE headers do), and
:func:`propose_time_model` turns two of those into a keyframe spacing and offset.
"""

from __future__ import annotations

import re
import struct
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .frames import FrameReader, StackError

__all__ = ["CAMERA_SUFFIXES", "CameraTiming", "camera_timing", "open_camera_file",
           "propose_time_model"]

#: Suffixes of a Photron recording's header and frames.
MRAW_SUFFIXES = (".cih", ".cihx", ".mraw")
#: Suffix of Phantom recordings.
CINE_SUFFIXES = (".cine",)
#: Suffixes of HDF5 files (NeXus included).
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".nxs", ".nx5")
#: Every suffix :func:`open_camera_file` reads.
CAMERA_SUFFIXES = MRAW_SUFFIXES + CINE_SUFFIXES + HDF5_SUFFIXES
#: Separates an HDF5 file from the dataset inside it: ``scan.h5::/entry/data/data``.
DATASET_SEPARATOR = "::"


@dataclass(frozen=True)
class CameraTiming:
    """When a recording's frames were taken.

    Attributes
    ----------
    rate : float
        Frames per second.
    first_frame : float
        Time of frame 0 relative to the trigger, in seconds (negative for frames recorded
        before it).
    """

    rate: float
    first_frame: float


def open_camera_file(source: str | Path, name: str):
    """An array-like view of a camera file, or None when ``source`` is not one."""
    text = str(source)
    if DATASET_SEPARATOR in text:
        file, dataset = text.split(DATASET_SEPARATOR, 1)
        return _HDF5Frames(Path(file).expanduser(), dataset, name)
    path = Path(source).expanduser()
    suffix = path.suffix.lower()
    if suffix in MRAW_SUFFIXES:
        return _MRAWFrames(path, name)
    if suffix in CINE_SUFFIXES:
        return _CineFrames(path, name)
    if suffix in HDF5_SUFFIXES:
        return _HDF5Frames(path, None, name)
    return None


# -- Photron MRAW ---------------------------------------------------------------------


def _header_path(path: Path) -> Path:
    if path.suffix.lower() in (".cih", ".cihx"):
        return path
    for suffix in (".cih", ".cihx", ".CIH", ".CIHX"):
        candidate = path.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    raise StackError(
        f"{path}: no .cih or .cihx header beside the frames; keep the header the camera "
        "wrote next to the .mraw file, under the same name."
    )


def _read_cih(path: Path) -> dict[str, str]:
    """The header's fields by name (the ``.cih`` ``Key : Value`` lines, or ``.cihx`` XML)."""
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix.lower() == ".cihx":
        fields = {
            "Record Rate(fps)": r"<recordRate>([^<]+)<",
            "Total Frame": r"<totalFrame>([^<]+)<",
            "Start Frame": r"<startFrame>([^<]+)<",
            "Image Width": r"<resolution>\s*<width>([^<]+)<",
            "Image Height": r"<height>([^<]+)<",
            "Color Type": r"<type>([^<]+)<",
            "Color Bit": r"<bit>([^<]+)<",
            "EffectiveBit Side": r"<side>([^<]+)<",
        }
        found = {}
        for key, pattern in fields.items():
            match = re.search(pattern, text)
            if match:
                found[key] = match.group(1).strip()
        return found
    found = {}
    for line in text.splitlines():
        if " : " in line:
            key, value = line.split(" : ", 1)
            found[key.strip()] = value.strip()
    return found


class _MRAWFrames(FrameReader):
    """A Photron recording: raw frames back to back, read one at a time."""

    def __init__(self, path: Path, name: str) -> None:
        self.name = name
        header = _header_path(path)
        if not header.is_file():
            raise StackError(f"{name}: {header} does not exist; check the path.")
        self.path = header.with_suffix(".mraw")
        if not self.path.is_file():
            raise StackError(
                f"{name}: the header {header.name} has no frames beside it ({self.path.name} "
                "is missing): copy the .mraw file the camera wrote with it."
            )
        cih = _read_cih(header)
        try:
            width, height = int(cih["Image Width"]), int(cih["Image Height"])
            frames, bits = int(cih["Total Frame"]), int(cih["Color Bit"])
        except (KeyError, ValueError) as exc:
            raise StackError(
                f"{name}: {header} lacks the frame size, count or bit depth ({exc}); it is "
                "not a Photron header, or it is damaged."
            ) from None
        if cih.get("Color Type", "Mono").lower() not in ("mono", "monochrome"):
            raise StackError(
                f"{name}: {header} describes a colour recording; export it as grey levels."
            )
        if bits not in (8, 12, 16):
            raise StackError(
                f"{name}: {header} has {bits}-bit pixels; 8, 12 and 16 are read."
            )
        self.bits = bits
        self.frame_bytes = width * height * bits // 8
        available = self.path.stat().st_size // self.frame_bytes
        if available < frames:
            raise StackError(
                f"{name}: {self.path} holds {available} whole frames of the {frames} its header "
                "promises: the file is truncated; copy it again."
            )
        self.shape = (frames, height, width)
        self.dtype = np.dtype(np.uint8 if bits == 8 else np.uint16)
        self.timing = _mraw_timing(cih)

    def _frame(self, index: int) -> np.ndarray:
        with open(self.path, "rb") as f:
            f.seek(index * self.frame_bytes)
            raw = np.fromfile(f, dtype=np.uint8, count=self.frame_bytes)
        if raw.size != self.frame_bytes:
            raise StackError(
                f"{self.name} frame {index} is cut short in {self.path}: the file is "
                "truncated; copy it again."
            )
        if self.bits == 8:
            frame = raw
        elif self.bits == 16:
            frame = raw.view("<u2")
        else:
            # Two pixels in three bytes: AAAAAAAA AAAABBBB BBBBBBBB.
            b = raw.reshape(-1, 3).astype(np.uint16)
            frame = np.empty(b.shape[0] * 2, np.uint16)
            frame[0::2] = (b[:, 0] << 4) | (b[:, 1] >> 4)
            frame[1::2] = ((b[:, 1] & 0x0F) << 8) | b[:, 2]
        return frame.reshape(self.shape[1:]).astype(self.dtype, copy=False)


def _mraw_timing(cih: dict[str, str]) -> CameraTiming | None:
    try:
        rate = float(cih["Record Rate(fps)"])
    except (KeyError, ValueError):
        return None
    if rate <= 0:
        return None
    try:
        start = int(cih.get("Start Frame", 0))
    except ValueError:
        start = 0
    return CameraTiming(rate=rate, first_frame=start / rate)


# -- Phantom CINE ---------------------------------------------------------------------

#: CINEFILEHEADER: Type, Headersize, Compression, Version, FirstMovieImage,
#: TotalImageCount, FirstImageNo, ImageCount, OffImageHeader, OffSetup, OffImageOffsets,
#: TriggerTime (fractions, seconds).
CINE_HEADER = struct.Struct("<2sHHHiIiIIIIII")
#: BITMAPINFOHEADER: biSize, biWidth, biHeight, biPlanes, biBitCount, biCompression, ...
CINE_BITMAP = struct.Struct("<IiiHHIIiiII")
#: Byte offset of the frame rate (uint32, frames/s) in the SETUP block.
CINE_SETUP_FRAME_RATE = 768


class _CineFrames(FrameReader):
    """A Phantom recording: frames at the offsets of the file's image table."""

    def __init__(self, path: Path, name: str) -> None:
        self.path, self.name = path, name
        if not path.is_file():
            raise StackError(f"{name}: {path} does not exist; check the path.")
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(CINE_HEADER.size)
            if len(head) < CINE_HEADER.size or head[:2] != b"CI":
                raise StackError(f"{name}: {path} is not a Phantom CINE file (no 'CI' header).")
            fields = CINE_HEADER.unpack(head)
            compression, first_image, count = fields[2], fields[6], fields[7]
            off_bitmap, off_setup, off_table = fields[8], fields[9], fields[10]
            f.seek(off_bitmap)
            bitmap = CINE_BITMAP.unpack(f.read(CINE_BITMAP.size))
            f.seek(off_setup + CINE_SETUP_FRAME_RATE)
            rate = struct.unpack("<I", f.read(4))[0]
            f.seek(off_table)
            table = f.read(8 * count)
        width, height, bits, packed = bitmap[1], bitmap[2], bitmap[4], bitmap[5]
        if compression or packed:
            raise StackError(
                f"{name}: {path} holds packed or compressed frames; save the recording "
                "uncompressed (16 bits per pixel) from the camera software."
            )
        if bits not in (8, 16):
            raise StackError(f"{name}: {path} has {bits}-bit pixels; 8 and 16 are read.")
        if len(table) < 8 * count:
            raise StackError(
                f"{name}: {path} is truncated inside its image table; copy it again."
            )
        self.offsets = np.frombuffer(table, "<i8")
        self.dtype = np.dtype(np.uint8 if bits == 8 else "<u2")
        # Rows stored bottom-up unless the height is negative, as in a Windows bitmap.
        self.bottom_up = height > 0
        self.shape = (count, abs(height), width)
        frame_bytes = abs(height) * width * self.dtype.itemsize
        if count and self.offsets[-1] + frame_bytes > size:
            whole = int(np.sum(self.offsets + frame_bytes <= size))
            raise StackError(
                f"{name}: {path} holds {whole} whole frames of the {count} its header "
                "promises: the file is truncated; copy it again."
            )
        self.timing = CameraTiming(rate, first_image / rate) if rate > 0 else None

    def _frame(self, index: int) -> np.ndarray:
        count = self.shape[1] * self.shape[2]
        with open(self.path, "rb") as f:
            f.seek(int(self.offsets[index]))
            # The annotation block (its size first) comes before the pixels.
            annotation = struct.unpack("<I", f.read(4))[0]
            f.seek(int(self.offsets[index]) + annotation)
            frame = np.fromfile(f, dtype=self.dtype, count=count)
        if frame.size != count:
            raise StackError(
                f"{self.name} frame {index} is cut short in {self.path}: the file is "
                "truncated; copy it again."
            )
        frame = frame.reshape(self.shape[1:])
        return (frame[::-1] if self.bottom_up else frame).astype(self.dtype.newbyteorder("="))


# -- HDF5 / NeXus ---------------------------------------------------------------------


def _h5py(name: str):
    try:
        import h5py
    except ImportError:
        raise StackError(
            f"{name}: reading HDF5 files needs h5py: `pip install \"napari-xfusion[cameras]\"`."
        ) from None
    try:  # the compression filters of camera and detector files (bitshuffle, LZ4, ...)
        import hdf5plugin  # noqa: F401
    except ImportError:
        pass
    return h5py


class _HDF5Frames(FrameReader):
    """A 3-D dataset of an HDF5 file, read one frame at a time through one handle."""

    def __init__(self, path: Path, dataset: str | None, name: str) -> None:
        self.path, self.name = path, name
        if not path.is_file():
            raise StackError(f"{name}: {path} does not exist; check the path.")
        h5py = _h5py(name)
        try:
            with h5py.File(path, "r") as f:
                self.dataset = dataset or self._only_stack(f, h5py)
                if self.dataset not in f:
                    raise StackError(
                        f"{name}: {path} has no dataset {self.dataset!r}; its 3-D datasets "
                        f"are {', '.join(self._stacks(f, h5py)) or 'none'}."
                    )
                node = f[self.dataset]
                if not isinstance(node, h5py.Dataset) or node.ndim != 3:
                    raise StackError(
                        f"{name}: {path}{DATASET_SEPARATOR}{self.dataset} is not a 3-D "
                        f"dataset (frames, y, x); name another with file.h5::/path/to/data."
                    )
                self.shape = tuple(int(n) for n in node.shape)
                self.dtype = np.dtype(node.dtype)
        except StackError:
            raise
        except OSError as exc:
            raise StackError(
                f"{name}: {path} is not a readable HDF5 file ({exc}); it may be truncated: "
                "copy it again."
            ) from None
        self._file = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        return {"path": self.path, "dataset": self.dataset, "name": self.name}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    @staticmethod
    def _stacks(f, h5py) -> list[str]:
        found = []
        f.visititems(lambda key, node: found.append("/" + key)
                     if isinstance(node, h5py.Dataset) and node.ndim == 3 else None)
        return found

    def _only_stack(self, f, h5py) -> str:
        stacks = self._stacks(f, h5py)
        if len(stacks) != 1:
            listed = ", ".join(stacks) or "none"
            raise StackError(
                f"{self.name}: {self.path} holds {len(stacks)} 3-D datasets ({listed}): name "
                f"the one to read as {self.path.name}{DATASET_SEPARATOR}/path/to/data."
            )
        return stacks[0]

    def _frame(self, index: int) -> np.ndarray:
        with self._lock:
            if self._file is None:
                self._file = _h5py(self.name).File(self.path, "r")
                weakref.finalize(self, self._file.close)
            return np.asarray(self._file[self.dataset][index])


# -- timing ---------------------------------------------------------------------------


def camera_timing(stack) -> CameraTiming | None:
    """The frame rate and first-frame time a camera file records, if it does."""
    return getattr(stack, "timing", None)


def propose_time_model(lr_timing: CameraTiming, hr_timing: CameraTiming) -> tuple[int, int]:
    """Keyframe spacing and offset from the two cameras' frame rates and trigger times.

    Returns
    -------
    spacing, offset : int
        ``rate_lr / rate_hr`` rounded, and the LR frame at which the HR camera's first
        frame was taken.

    Raises
    ------
    ValueError
        When the rates are not a whole-number ratio (within 1 %).
    """
    ratio = lr_timing.rate / hr_timing.rate
    spacing = round(ratio)
    if spacing < 1 or abs(ratio - spacing) > 0.01 * ratio:
        raise ValueError(
            f"the LR camera runs at {lr_timing.rate:g} frames/s and the HR camera at "
            f"{hr_timing.rate:g}: a ratio of {ratio:.3f}, not a whole number; give --spacing."
        )
    offset = round((hr_timing.first_frame - lr_timing.first_frame) * lr_timing.rate)
    return spacing, offset
