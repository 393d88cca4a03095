"""Reading image stacks lazily, a frame at a time.

:func:`read_stack` opens a multi-page TIFF, a folder of single-frame TIFFs, a zarr array or
an in-memory array as a dask array ``(frames, y, x)`` with one chunk per frame, so that a
10,000-frame recording is only read where it is used. Float stacks are checked for NaN and
infinite values frame by frame, as each frame is read. zarr is optional and imported only
to read a zarr store.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import weakref
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import tifffile

from .cameras import CAMERA_SUFFIXES, DATASET_SEPARATOR, open_camera_file
from .frames import FrameReader, StackError

if TYPE_CHECKING:
    import dask.array

#: Suffixes of the TIFF files read from a folder of frames and accepted for output.
TIFF_SUFFIXES = (".tif", ".tiff")

# Photometric interpretations whose pixel values are not grey levels.
_COLOUR_PHOTOMETRICS = {
    tifffile.PHOTOMETRIC.RGB,
    tifffile.PHOTOMETRIC.YCBCR,
    tifffile.PHOTOMETRIC.SEPARATED,
    tifffile.PHOTOMETRIC.PALETTE,
}

_STACK_SOURCES = "load a multi-page TIFF, a folder of TIFF frames or an array (frames, y, x)"


def is_dask_array(x: Any) -> bool:
    """Whether ``x`` is a dask array, without importing dask.

    Parameters
    ----------
    x : object

    Returns
    -------
    bool
    """
    # If dask.array was never imported, nothing can be a dask array.
    da = sys.modules.get("dask.array")
    return da is not None and isinstance(x, da.Array)


def check_finite(frame: np.ndarray, name: str = "stack", index: int | None = None) -> np.ndarray:
    """Raise unless every value of a float frame is finite.

    Parameters
    ----------
    frame : ndarray
        One frame (or any array); integer arrays pass unchecked.
    name : str
        Name of the stack in the message, e.g. ``"LR stack"``.
    index : int, optional
        Frame index in the stack, for the message.

    Returns
    -------
    ndarray
        ``frame``, unchanged.

    Raises
    ------
    StackError
        When the frame holds NaN or infinite values.
    """
    if np.issubdtype(frame.dtype, np.floating) and not np.isfinite(frame).all():
        where = f"{name} frame {index}" if index is not None else name
        raise StackError(
            f"{where} contains NaN or infinite values: replace them (e.g. with "
            "numpy.nan_to_num) or remove the frame before fusing."
        )
    return frame


def read_stack(source: Any, name: str = "stack") -> dask.array.Array:
    """Open a stack of frames lazily, as a dask array with one chunk per frame.

    Parameters
    ----------
    source : str, Path or array_like
        A multi-page TIFF (BigTIFF, ImageJ hyperstacks and compressed pages included), a
        folder of single-frame TIFFs (read in natural order: ``frame2`` before
        ``frame10``), a ``.zarr`` array, a camera's own file (a Photron ``.cih``/``.mraw``
        recording, or an HDF5/NeXus file: ``scan.h5`` or ``scan.h5::/entry/data/data``;
        :mod:`.cameras`), or an array ``(frames, y, x)`` (numpy, dask, or anything with
        ``shape``, ``dtype`` and slicing). Singleton axes besides ``y, x``
        are dropped, so ``(frames, 1, y, x)`` is accepted.
    name : str
        What the stack is, for error messages (e.g. ``"LR stack"``).

    Returns
    -------
    dask.array.Array
        Shape ``(frames, y, x)``, chunks of one frame, in the source's dtype. Computing a
        frame of a float stack that holds NaN or infinite values raises :class:`StackError`
        naming the frame.

    Raises
    ------
    StackError
        When the source is missing, not a readable TIFF, not a stack of grey-level
        frames, or of an unsupported dtype.
    """
    if isinstance(source, (str, os.PathLike)):
        camera = open_camera_file(source, name)
        source = camera if camera is not None else _open_path(Path(source).expanduser(), name)
    elif not is_dask_array(source) and not (hasattr(source, "shape") and hasattr(source, "dtype")):
        source = np.asarray(source)
    return _as_frames(source, name)


def is_stack(path: str | os.PathLike) -> bool:
    """Whether :func:`read_stack` opens ``path`` as a stack of frames, judged from names and
    headers only (nothing else is read); never raises.

    A 2-D image or a colour TIFF is not a stack; a camera file, a folder of TIFF frames or
    a zarr array is. A damaged TIFF counts as a stack, so that reading it says what is
    wrong.
    """
    path = Path(path)
    try:
        if path.suffix.lower() in CAMERA_SUFFIXES or DATASET_SEPARATOR in str(path):
            return True
        if path.is_dir():
            return _is_zarr_store(path) or path.suffix.lower() == ".zarr" or any(
                f.suffix.lower() in TIFF_SUFFIXES for f in path.iterdir() if f.is_file()
            )
        if path.suffix.lower() not in TIFF_SUFFIXES:
            return False
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            if _is_colour(tif, series):
                return False
            shape = tuple(series.shape)
    except OSError:
        return False
    except Exception:  # a damaged TIFF: read_stack will say what is wrong with it
        return True
    return len([n for n in shape if n > 1]) >= 3


def read_image(source: Any, name: str = "image") -> np.ndarray:
    """One grey-level image: a 2-D TIFF, a one-frame stack, or an array.

    For what a camera records once, such as a calibration target.

    Parameters
    ----------
    source : str, Path or array_like
    name : str
        What the image is, for error messages.

    Returns
    -------
    ndarray, shape (y, x)

    Raises
    ------
    StackError
        When the source is missing, unreadable, in colour, or holds several frames.
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        if not path.is_file():
            raise StackError(f"{name}: no file at {path}; check the path.")
        try:
            source = tifffile.imread(path)
        except Exception as exc:  # tifffile raises many kinds for a damaged file
            raise StackError(f"{name}: {path} is not a readable TIFF ({exc}).") from None
    image = np.squeeze(np.asarray(source))
    if image.ndim != 2:
        raise StackError(
            f"{name} has shape {image.shape}: give one grey-level image (y, x), not a stack "
            "or a colour image."
        )
    _check_dtype(image.dtype, name)
    return image


def read_metadata(path: str | Path) -> dict:
    """The metadata a stack file written by :func:`open_writer` carries.

    Parameters
    ----------
    path : str or Path
        A ``.tif``/``.tiff`` or ``.zarr`` stack.

    Returns
    -------
    dict
        The metadata given to the writer, plus ``complete`` and ``frames_written`` (for a
        file a stopped or killed run left, the frames it really holds); TIFFs of earlier
        versions also carry ``shape``; empty for TIFFs written by other programs.
    """
    path = Path(path)
    if path.suffix.lower() == ".zarr":
        return dict(_open_zarr_array(path, "stack").attrs)
    with tifffile.TiffFile(path) as tif:
        own = _own_description(tif)
        if own is not None:
            if own.get("complete") is False:
                # Written by a run that was stopped or killed: the pages on disk are the truth.
                own["frames_written"] = _intact_pages(tif, path)
            return own
        shaped = tif.shaped_metadata
    return dict(shaped[0]) if shaped else {}


def source_stamp(source: Any) -> tuple | None:
    """What identifies an input file as it is now: path, inode, size and modification time.

    Compare the stamps taken before and after a long run to learn that an input was
    replaced or rewritten meanwhile. Folders (of frames, or zarr stores) are stamped by
    their own entry and that of their ``zarr.json``/``.zarray``, if any, which change when
    files are added, removed or replaced. Arrays give None: they are the caller's to keep.
    """
    if not isinstance(source, (str, os.PathLike)):
        return None
    path = Path(source).expanduser()
    entries = [path] + [path / f for f in ("zarr.json", ".zarray") if path.is_dir()]
    stamps = []
    for entry in entries:
        try:
            st = entry.stat()
        except FileNotFoundError:
            continue
        stamps.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return (str(path), tuple(stamps))


#: Starts the first page's description of the TIFFs :func:`open_writer` writes. Not plain
#: JSON: tifffile takes any JSON description with a "shape" key for its own and then reads
#: the pages as one contiguous block, which these are not.
DESCRIPTION_PREFIX = "napari-xfusion stack "


def _own_description(tif: tifffile.TiffFile) -> dict | None:
    """The JSON metadata :func:`open_writer` puts in the first page, if this is its file."""
    description = tif.pages.first.description
    if not description.startswith(DESCRIPTION_PREFIX):
        return None
    try:
        info = json.loads(description[len(DESCRIPTION_PREFIX):])
    except ValueError:
        return None
    return info if isinstance(info, dict) and "complete" in info else None


def _intact_pages(tif: tifffile.TiffFile, path: Path) -> int:
    """Leading pages whose directory and pixels lie wholly in the file.

    A writer killed mid-frame leaves at most one page cut short, the last.
    """
    size = path.stat().st_size
    count = 0
    log = logging.getLogger("tifffile")
    level = log.level
    log.setLevel(logging.CRITICAL)  # the cut directory is expected here, not news
    try:
        for page in tif.pages:
            ends = [o + c for o, c in zip(page.dataoffsets, page.databytecounts, strict=True)]
            if not ends or max(ends) > size:
                break
            count += 1
    except Exception:  # noqa: BLE001 - a directory cut short by the kill ends the count
        pass
    finally:
        log.setLevel(level)
    return count


def _stack_shape(shape: tuple[int, ...], name: str) -> tuple[int, int, int]:
    """``(frames, y, x)`` of a source shape, or a StackError saying why it is not a stack."""
    shape = tuple(int(d) for d in shape)
    if len(shape) == 2:
        raise StackError(
            f"{name} is a single 2-D image of shape {shape}; a stack of frames (t, y, x) is "
            f"needed: load a multi-page TIFF or a folder of frames."
        )
    if len(shape) < 2:
        raise StackError(f"{name} has shape {shape}; a stack of frames (t, y, x) is needed.")
    extra = [d for d in shape[:-2] if d != 1]
    if len(extra) > 1 and shape[-1] in (3, 4):
        raise StackError(
            f"{name} has shape {shape}, which looks like colour (RGB/RGBA) frames: convert "
            "it to grayscale (one value per pixel) first."
        )
    if len(extra) > 1:
        raise StackError(
            f"{name} has shape {shape}: more than one axis besides y and x (e.g. time and "
            "z or channel); a stack of frames (t, y, x) is needed: save one series per "
            "file (pick one channel or z-slice)."
        )
    n, y, x = int(np.prod(shape[:-2])), shape[-2], shape[-1]
    if n == 0 or y == 0 or x == 0:
        raise StackError(f"{name} has shape {shape} and holds no pixels: {_STACK_SOURCES}.")
    return n, y, x


def _check_dtype(dtype: np.dtype, name: str) -> None:
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        raise StackError(
            f"{name} is boolean (a mask?): convert it to uint8 or float32 grey levels first."
        )
    if dtype.kind == "c":
        raise StackError(
            f"{name} is complex ({dtype}): convert it to real grey levels first, e.g. its "
            "magnitude with numpy.abs."
        )
    if dtype.kind not in "iuf":
        raise StackError(
            f"{name} has unsupported data type {dtype}: integer or floating-point grey "
            "levels are needed."
        )


def _as_frames(source: Any, name: str) -> dask.array.Array:
    """Validate an array-like and make it ``(frames, y, x)`` with one chunk per frame."""
    import dask.array as da

    n, y, x = _stack_shape(source.shape, name)
    _check_dtype(source.dtype, name)
    dtype = np.dtype(source.dtype)
    if is_dask_array(source):
        stack = source
    else:
        # name=False: hashing a large in-memory array to name it would cost a full pass.
        chunks = (1,) * (len(source.shape) - 2) + (y, x)
        meta = np.empty((0,) * len(source.shape), dtype)
        stack = da.from_array(_SliceView(source), chunks=chunks, name=False, meta=meta)
    stack = stack.reshape(n, y, x).rechunk((1, y, x))
    if not dtype.isnative:
        stack = stack.astype(dtype.newbyteorder("="))
    if dtype.kind == "f":
        stack = stack.map_blocks(
            partial(_check_finite_block, name=name),
            dtype=stack.dtype,
            meta=np.empty((0, 0, 0), stack.dtype),
        )
    return stack


class _SliceView:
    """An array seen only through slicing, optionally only its first ``frames`` frames.

    ``dask.array.from_array`` copies any array that has a ``copy`` method, so a
    memory-mapped file would be read whole into memory on opening and an in-memory stack
    held twice; through this view dask reads the frames where they are, when asked.
    """

    def __init__(self, array: Any, frames: int | None = None) -> None:
        self.array = array
        self.shape, self.dtype = tuple(array.shape), array.dtype
        if frames is not None:
            self.shape = (frames, *self.shape[1:])
        self.ndim = len(self.shape)

    def __getitem__(self, key: Any) -> Any:
        return self.array[key]


def _check_finite_block(block: np.ndarray, name: str, block_info: dict | None = None) -> np.ndarray:
    # Each block is one frame (read_stack chunks that way); its location is the frame index.
    index = block_info[0]["array-location"][0][0]
    check_finite(block, name, index)
    return block


def _open_path(path: Path, name: str) -> Any:
    """An array-like view of a file or folder, reading nothing but headers."""
    if not path.exists():
        raise StackError(f"{name}: {path} does not exist; check the path.")
    if path.is_dir():
        if path.suffix.lower() == ".zarr" or _is_zarr_store(path):
            return _written_frames(_open_zarr_array(path, name))
        return _TiffFolder(path, name)
    return _open_tiff(path, name)


def _written_frames(array: Any) -> Any:
    """A zarr stack that a stopped or killed run wrote, seen as the frames it finished.

    The streaming writer grows the array before it writes a frame's pixels and counts the
    frame after, so the count is exact (frames a cluster run wrote out of order are listed
    in ``written_frames`` instead, and the array is left whole).
    """
    attrs = array.attrs
    count = attrs.get("frames_written")
    if (
        attrs.get("complete") is False
        and "written_frames" not in attrs
        and isinstance(count, int)
        and 0 < count < array.shape[0]
    ):
        return _SliceView(array, frames=count)
    return array


def _is_zarr_store(path: Path) -> bool:
    return any((path / f).exists() for f in (".zarray", "zarr.json", ".zgroup"))


def _open_zarr_array(path: Path, name: str) -> Any:
    try:
        import zarr
    except ImportError:
        raise StackError(
            f"{name}: reading {path} needs the optional zarr package: install it with "
            "`pip install zarr`, or convert the stack to TIFF."
        ) from None
    try:
        return zarr.open_array(store=str(path), mode="r")
    except Exception as err:
        raise StackError(
            f"{name}: {path} is not a readable zarr array ({err}); point to the array "
            "itself (not a group) or re-export it."
        ) from err


@dataclass(frozen=True)
class _TiffInfo:
    """What a TIFF's first series holds, read from its headers."""

    shape: tuple[int, ...]
    dtype: np.dtype
    pages: int
    dataoffset: int | None
    byteorder: str
    #: Written by open_writer: its pages are the frames, whatever tifffile's series say.
    by_pages: bool = False


def _inspect_tiff(path: Path, name: str) -> _TiffInfo:
    """The first series of a TIFF, checked for colour and truncation."""
    if path.stat().st_size == 0:
        raise StackError(f"{name}: {path} is empty (0 bytes); re-export or re-copy the file.")
    try:
        with tifffile.TiffFile(path) as tif:
            own = _own_description(tif)
            if own is not None:
                # One frame per page; a stopped or killed run's partial holds its intact ones.
                first = tif.pages.first
                n = len(tif.pages) if own.get("complete") else _intact_pages(tif, path)
                return _TiffInfo((n, *first.shape), first.dtype, n, None, tif.byteorder,
                                 by_pages=True)
            series = tif.series[0]
            photometric = series.keyframe.photometric
            colour = _is_colour(tif, series)
            promised = _promised_size(tif)
            info = _TiffInfo(
                tuple(series.shape), series.dtype, len(series), series.dataoffset, tif.byteorder
            )
    except Exception as err:
        raise StackError(
            f"{name}: {path} is not a readable TIFF file ({err}); it may be truncated or "
            f"corrupt: re-export it, or {_STACK_SOURCES}."
        ) from err
    if colour:
        raise StackError(
            f"{name}: {path} holds colour images ({photometric.name}, shape {info.shape}); "
            "convert the stack to grayscale (one value per pixel) first."
        )
    if promised is not None and np.prod(info.shape) < promised:
        raise StackError(
            f"{name}: {path} is a truncated TIFF file: its metadata promises {promised} "
            f"pixels but only {np.prod(info.shape)} can be found; re-copy or re-export it."
        )
    return info


def _is_colour(tif: tifffile.TiffFile, series: tifffile.TiffPageSeries) -> bool:
    """Whether a TIFF holds colour images rather than grey-level frames."""
    if "S" not in series.axes and series.keyframe.photometric not in _COLOUR_PHOTOMETRICS:
        return False
    # tifffile itself stores a plain 3- or 4-frame array as one planar RGB(A) image; its
    # shape record then matches the samples-first series, so those are frames after all.
    written_from_frames = (
        series.axes == "SYX"
        and tif.is_shaped
        and tuple(tif.shaped_metadata[0].get("shape", ())) == tuple(series.shape)
    )
    return not written_from_frames


def _promised_size(tif: tifffile.TiffFile) -> int | None:
    """Pixels that tifffile- and ImageJ-written files say they hold (a truncation check)."""
    if tif.is_shaped and tif.shaped_metadata and "shape" in tif.shaped_metadata[0]:
        return int(np.prod(tif.shaped_metadata[0]["shape"]))
    if tif.is_imagej and tif.imagej_metadata and "images" in tif.imagej_metadata:
        return int(tif.imagej_metadata["images"]) * int(np.prod(tif.pages.first.shape))
    return None


def _open_tiff(path: Path, name: str) -> Any:
    info = _inspect_tiff(path, name)
    n, y, x = _stack_shape(info.shape, name)
    if info.dataoffset is None:
        if info.pages != n:
            raise StackError(
                f"{name}: {path} stores its {n} frames in {info.pages} page(s), which is not "
                "supported: re-save it with one frame per page (with tifffile: "
                "photometric='minisblack')."
            )
        return _TiffPages(path, name, (n, y, x), info.dtype, info.by_pages)
    dtype = np.dtype(info.dtype).newbyteorder(info.byteorder)
    if info.dataoffset + n * y * x * dtype.itemsize > path.stat().st_size:
        raise StackError(
            f"{name}: {path} is a truncated TIFF file: it ends before its {n} frames of "
            f"{y}x{x} pixels; re-copy or re-export it."
        )
    return _ContiguousTiff(path, name, (n, y, x), dtype, info.dataoffset)


class _ContiguousTiff(FrameReader):
    """A TIFF whose uncompressed frames are stored back to back: one plain read per frame.

    Reading at a computed offset is the fastest way to get a frame. It is used rather than
    a memory map because mapped pages count as the process's resident memory for as long as
    the kernel keeps them, which grows with the part of a long file read so far.
    """

    def __init__(self, path: Path, name: str, shape: tuple[int, int, int], dtype: np.dtype,
                 offset: int):
        self.path, self.name, self.shape, self.dtype = path, name, shape, np.dtype(dtype)
        self.offset = offset

    def _frame(self, index: int) -> np.ndarray:
        count = self.shape[1] * self.shape[2]
        with open(self.path, "rb") as f:
            f.seek(self.offset + index * count * self.dtype.itemsize)
            frame = np.fromfile(f, dtype=self.dtype, count=count)
        if frame.size != count:
            raise StackError(
                f"{self.name} frame {index} is cut short in {self.path}: the file is truncated "
                "(did it change after it was opened?); re-copy or re-export it."
            )
        return frame.reshape(self.shape[1:])


class _TiffPages(FrameReader):
    """A multi-page TIFF read one page at a time through one shared file handle.

    The handle is opened on the first read (in each process, when the dask graph is
    shipped to workers) and shared by dask's threads under the handle's lock.
    """

    def __init__(self, path: Path, name: str, shape: tuple[int, int, int], dtype: np.dtype,
                 by_pages: bool = False):
        self.path, self.name, self.shape, self.dtype = path, name, shape, np.dtype(dtype)
        # Our own files: a partial's last directory may be cut short, which tifffile's
        # series refuse, and a one-frame stack is one page that a series reads as an image.
        self.by_pages = by_pages
        self._series: tifffile.TiffPageSeries | tifffile.TiffPages | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        return {"path": self.path, "name": self.name, "shape": self.shape, "dtype": self.dtype,
                "by_pages": self.by_pages}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def _open(self) -> tifffile.TiffPageSeries | tifffile.TiffPages:
        with self._lock:
            if self._series is None:
                tif = tifffile.TiffFile(self.path)
                tif.filehandle.set_lock(True)
                weakref.finalize(self, tif.close)
                self._series = tif.pages if self.by_pages else tif.series[0]
        return self._series

    def _frame(self, index: int) -> np.ndarray:
        series = self._open()
        # Looking a page up may read its IFD from the file; page.asarray takes the same lock
        # for its reads only, so pages decode in parallel.
        with series.parent.filehandle.lock:
            page = series[index]
        return page.asarray().reshape(self.shape[1:])


class _TiffFolder(FrameReader):
    """A folder of single-frame TIFFs, one file per frame in natural sort order."""

    def __init__(self, path: Path, name: str):
        files = sorted(
            (
                f
                for f in path.iterdir()
                # Names starting with "." are hidden files, e.g. macOS "._frame1.tif".
                if f.suffix.lower() in TIFF_SUFFIXES and not f.name.startswith(".") and f.is_file()
            ),
            key=_natural_key,
        )
        if not files:
            raise StackError(
                f"{name}: the folder {path} contains no .tif/.tiff files; choose the folder "
                "that holds the frames, or load a multi-page TIFF."
            )
        self.path, self.name, self.files = path, name, files
        first = _inspect_tiff(files[0], name)
        if len(first.shape) != 2:
            raise StackError(
                f"{name}: {files[0]} in the frame folder holds {first.shape} pixels, not one "
                "2-D frame; save one frame per file, or load that file as the stack."
            )
        self.shape, self.dtype = (len(files), *first.shape), np.dtype(first.dtype)
        # The first and last frames catch most mixed folders without opening every file;
        # the others are checked as they are read.
        last = _inspect_tiff(files[-1], name)
        self._check_matches(files[-1], last.shape, last.dtype)

    def _check_matches(self, file: Path, shape: tuple[int, ...], dtype: np.dtype) -> None:
        if tuple(shape) != self.shape[1:] or dtype != self.dtype:
            y, x = self.shape[1:]
            raise StackError(
                f"{self.name}: frame file {file.name} has shape {tuple(shape)} and dtype "
                f"{dtype} but {self.files[0].name} has ({y}, {x}) and {self.dtype}; all "
                f"frames in {self.path} must match: remove or convert {file.name}."
            )

    def _frame(self, index: int) -> np.ndarray:
        file = self.files[index]
        frame = tifffile.imread(file)
        self._check_matches(file, frame.shape, frame.dtype)
        return frame


def _natural_key(path: Path) -> list:
    """Sort key putting ``frame2`` before ``frame10``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]
