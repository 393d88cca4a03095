"""Writing image stacks frame by frame, never leaving a partial file under the final name.

:func:`open_writer` streams frames into a temporary sibling of the output named
``<stem>.incomplete<suffix>`` (``result.tif`` -> ``result.incomplete.tif``) and renames it
onto the output only once every frame is written (:func:`move_into_place`), so a file under
the output name is always complete. An interrupted write keeps the frames written so far
in the ``.incomplete`` file, whose metadata says ``"complete": false`` and how many frames it
holds. zarr is optional and imported only to write a zarr store.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import tempfile
import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np
import tifffile

if TYPE_CHECKING:
    pass

from .read import (
    TIFF_SUFFIXES,
    StackError,
    _check_dtype,
    _is_zarr_store,
    _stack_shape,
    is_dask_array,
)

#: Metadata keys the writers set themselves.
RESERVED_METADATA_KEYS = ("shape", "complete", "frames_written")


def incomplete_path(path: str | Path) -> Path:
    """Where a stack bound for ``path`` is written until it is complete.

    ``result.tif`` -> ``result.incomplete.tif``; ``result.zarr`` -> ``result.incomplete.zarr``.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    Path
    """
    path = Path(path)
    return path.with_name(f"{path.stem}.incomplete{path.suffix}")


def check_output_path(
    path: str | Path, overwrite: bool = False, suffixes: tuple[str, ...] | None = None
) -> Path:
    """Check that a stack can be written to ``path``; call it before any work starts.

    Parameters
    ----------
    path : str or Path
        ``.tif``/``.tiff`` (written as BigTIFF) or ``.zarr`` (needs the optional zarr).
    overwrite : bool
        Allow replacing an existing output.
    suffixes : tuple of str, optional
        The file types accepted instead of stacks (e.g. ``(".safetensors",)``).

    Returns
    -------
    Path
        ``path`` as a Path, with ``~`` expanded.

    Raises
    ------
    StackError
        When the suffix is unsupported, the output exists (and ``overwrite`` is False), or
        the folder is missing or cannot be written.
    """
    path = Path(path).expanduser()
    suffix = path.suffix.lower()
    if suffixes is not None:
        if suffix not in suffixes:
            raise StackError(
                f"cannot write {path}: name the output {' or '.join(suffixes)}."
            )
    elif suffix not in (*TIFF_SUFFIXES, ".zarr"):
        raise StackError(
            f"cannot write {path}: unsupported output type {suffix or '(no suffix)'!r}; name "
            "the output .tif/.tiff (BigTIFF) or .zarr."
        )
    if suffix == ".zarr":
        try:
            import zarr  # noqa: F401
        except ImportError:
            raise StackError(
                f"writing {path} needs the optional zarr package: install it with "
                "`pip install zarr`, or write a .tif instead."
            ) from None
    if path.exists():
        if not overwrite:
            raise StackError(
                f"{path} already exists; pass --overwrite to replace it or choose another name."
            )
        if suffix == ".zarr" and not (path.is_dir() and _is_zarr_store(path)):
            raise StackError(
                f"{path} exists and is not a zarr store, so it is not replaced; choose "
                "another name or remove it yourself."
            )
        if suffix != ".zarr" and not path.is_file():
            raise StackError(f"{path} exists and is a folder, not a file; choose another name.")
    parent = path.parent
    if not parent.exists():
        raise StackError(
            f"cannot write {path}: the folder {parent} does not exist; create it first or "
            "choose another folder."
        )
    if not parent.is_dir():
        raise StackError(f"cannot write {path}: {parent} is not a folder; choose another folder.")
    try:
        # Permission bits, ACLs and read-only mounts all show up in an actual attempt.
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".xfusion-write-test-"):
            pass
    except OSError as err:
        raise StackError(
            f"cannot write in the folder {parent} ({err.strerror or err}); choose a folder "
            "you can write to."
        ) from err
    return path


class StackWriter(ABC):
    """Writes a stack one frame at a time; the output appears only once complete.

    Create one with :func:`open_writer` and use it as a context manager. Frames go to
    :attr:`partial_path` (``<stem>.incomplete<suffix>``); :meth:`close` renames it onto
    :attr:`path`. If the ``with`` block raises, nothing is put at :attr:`path`: with no
    frame written the temporary is removed, otherwise it is kept, readable, holding the
    frames written, with ``"complete": false`` and ``frames_written`` in its metadata.
    """

    def __init__(
        self,
        path: Path,
        frame_shape: tuple[int, int],
        dtype: np.dtype,
        n_frames: int | None,
        overwrite: bool,
        metadata: dict,
    ) -> None:
        self._path = path
        self._partial = incomplete_path(path)
        self.frame_shape = frame_shape
        self.dtype = dtype
        self.n_frames = n_frames
        self.overwrite = overwrite
        self.metadata = metadata
        self._frames_written = 0
        self._closed = False
        self._open()

    @property
    def path(self) -> Path:
        """The final output path."""
        return self._path

    @property
    def partial_path(self) -> Path:
        """The temporary the frames are written to until the stack is complete."""
        return self._partial

    @property
    def frames_written(self) -> int:
        """Frames written so far."""
        return self._frames_written

    def write(self, frame: np.ndarray) -> None:
        """Append one frame ``(y, x)``.

        Parameters
        ----------
        frame : array_like
            Same shape as ``frame_shape``; its dtype must convert to the writer's dtype
            without loss of kind (no float into an integer stack) and its values must fit.

        Raises
        ------
        StackError
            On a wrong shape or dtype, too many frames, or a closed writer.
        """
        if self._closed:
            raise StackError(f"the writer for {self._path} is closed; open a new one.")
        k = self._frames_written
        if self.n_frames is not None and k >= self.n_frames:
            raise StackError(
                f"{self._path} was opened for {self.n_frames} frames and all are written; "
                "pass the right n_frames to open_writer."
            )
        frame = np.asarray(frame)
        if frame.shape != self.frame_shape:
            raise StackError(
                f"frame {k} has shape {frame.shape} but {self._path} holds frames of shape "
                f"{self.frame_shape}; crop or resize the frame to match."
            )
        if not np.can_cast(frame.dtype, self.dtype, casting="same_kind"):
            raise StackError(
                f"frame {k} is {frame.dtype} but {self._path} stores {self.dtype}: convert it "
                f"to {self.dtype} first (Normalization.invert maps [0, 1] back to the "
                "source units)."
            )
        if self.dtype.kind in "iu" and frame.dtype.kind in "iu" and frame.size:
            info = np.iinfo(self.dtype)
            if frame.min() < info.min or frame.max() > info.max:
                raise StackError(
                    f"frame {k} has values {frame.min()}..{frame.max()} outside the range of "
                    f"{self.dtype} ({info.min}..{info.max}); clip or rescale it first."
                )
        self._append(frame.astype(self.dtype, copy=False))
        self._frames_written += 1

    def close(self) -> None:
        """Finish the stack and move it onto :attr:`path`.

        Raises
        ------
        StackError
            When fewer frames than ``n_frames`` (or none) were written; the frames written
            are then kept at :attr:`partial_path`.
        """
        if self._closed:
            return
        k, n = self._frames_written, self.n_frames
        if k == 0 or (n is not None and k != n):
            self.abort()
            expected = f" of {n}" if n is not None else ""
            kept = f"; the {k} frames written are kept in {self._partial}" if k else ""
            raise StackError(
                f"only {k}{expected} frames were written to {self._path}, so it was not "
                f"created{kept}. Write every frame before closing."
            )
        self._finish(complete=True)
        self._closed = True
        move_into_place(self._partial, self._path, self.overwrite)

    def abort(self, keep: bool = True) -> None:
        """Stop writing without putting anything at :attr:`path`.

        Parameters
        ----------
        keep : bool
            Keep the frames written so far at :attr:`partial_path`, marked incomplete (with
            none written, the temporary is removed anyway); False removes them.
        """
        if self._closed:
            return
        self._closed = True
        self._finish(complete=False)
        if self._frames_written == 0 or not keep:
            _remove(self._partial)

    def __enter__(self) -> StackWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            # Bad input (a ValueError, such as a NaN frame) makes the partial result
            # worthless, so nothing is left behind; after an interruption or a crash the
            # frames already made are kept, marked incomplete.
            self.abort(keep=not issubclass(exc_type, ValueError))

    def _status(self, complete: bool) -> dict:
        return {**self.metadata, "complete": complete, "frames_written": self._frames_written}

    @abstractmethod
    def _open(self) -> None:
        """Create the temporary at :attr:`partial_path`."""

    @abstractmethod
    def _append(self, frame: np.ndarray) -> None:
        """Store the next frame, already of the writer's shape and dtype."""

    @abstractmethod
    def _finish(self, complete: bool) -> None:
        """Flush and close the temporary, recording ``complete`` and the frame count."""


class _TiffStackWriter(StackWriter):
    """BigTIFF, uncompressed, one page per frame in one contiguous series.

    Contiguous pixels let :func:`read_stack` read each frame with one read. The metadata is the
    JSON ImageDescription of the first page, as tifffile writes it (``shape`` first).
    """

    def _open(self) -> None:
        self._tif = tifffile.TiffWriter(self._partial, bigtiff=True)

    def _append(self, frame: np.ndarray) -> None:
        self._tif.write(
            frame, contiguous=True, photometric="minisblack", metadata=self._status(False)
        )

    def _finish(self, complete: bool) -> None:
        self._tif.close()
        if self._frames_written:
            # The status is known only now. The shape is set too because tifffile records
            # a single frame as (y, x), which would read back as an image, not a stack.
            description = json.loads(tifffile.tiffcomment(self._partial))
            description.update(
                shape=[self._frames_written, *self.frame_shape],
                complete=complete,
                frames_written=self._frames_written,
            )
            tifffile.tiffcomment(self._partial, json.dumps(description).encode("ascii"))


class _ZarrStackWriter(StackWriter):
    """A zarr array chunked one frame per chunk; metadata in its attributes."""

    def _open(self) -> None:
        import zarr

        self._array = zarr.open_array(
            store=str(self._partial),
            mode="w",
            shape=(self.n_frames or 0, *self.frame_shape),
            chunks=(1, *self.frame_shape),
            dtype=self.dtype,
        )
        self._array.attrs.update(self._status(False))

    def _append(self, frame: np.ndarray) -> None:
        if self.n_frames is None:
            self._array.append(frame[np.newaxis], axis=0)
        else:
            self._array[self._frames_written] = frame

    def _finish(self, complete: bool) -> None:
        if self._array.shape[0] != self._frames_written:
            # An interrupted write keeps exactly the frames written, no blank tail.
            self._array.resize((self._frames_written, *self.frame_shape))
        self._array.attrs.update(self._status(complete))


class BackgroundWriter:
    """Hands frames to a :class:`StackWriter` that writes them in a thread of its own.

    The caller computes the next frame while earlier ones are converted and written; at
    most ``depth`` frames wait, so memory stays bounded when the disk is the slower side.
    Used as a context manager around the writer's own: leaving the block waits for the
    queued frames, then closes (or, after an error, aborts) the writer as the writer's own
    ``with`` block would. An error in the writing thread is raised by the next
    :meth:`write`, or when the block ends.

    Parameters
    ----------
    writer : StackWriter
    convert : callable, optional
        Applied to each frame in the writing thread before it is written (e.g.
        ``Normalization.invert``).
    depth : int
        Frames that may wait to be written.
    """

    _DONE = object()

    def __init__(
        self, writer: StackWriter, convert: Callable[[Any], Any] | None = None, depth: int = 4
    ) -> None:
        self.writer = writer
        self.convert = convert
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="xfusion-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            frame = self._queue.get()
            if frame is self._DONE:
                return
            if self._error is not None:
                continue  # drain: the caller learns of the error and stops
            try:
                self.writer.write(frame if self.convert is None else self.convert(frame))
            except BaseException as err:  # noqa: BLE001 - handed to the caller's thread
                self._error = err

    def write(self, frame: np.ndarray) -> None:
        """Queue one frame; raises the error of an earlier write, if one failed."""
        if self._error is not None:
            raise self._error
        self._queue.put(frame)

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._queue.put(self._DONE)
        self._thread.join()
        if exc_type is None and self._error is not None:
            err = self._error
            self.writer.__exit__(type(err), err, err.__traceback__)
            raise err
        self.writer.__exit__(exc_type, exc, tb)


def open_writer(
    path: str | Path,
    frame_shape: tuple[int, int],
    dtype: Any,
    n_frames: int | None = None,
    overwrite: bool = False,
    metadata: dict | None = None,
) -> StackWriter:
    """Open a :class:`StackWriter` that streams frames to ``path``.

    Parameters
    ----------
    path : str or Path
        ``.tif``/``.tiff`` (BigTIFF) or ``.zarr``; checked with :func:`check_output_path`.
    frame_shape : tuple of int
        ``(y, x)`` of every frame.
    dtype : dtype-like
        Pixel type stored (integer or float).
    n_frames : int, optional
        Number of frames that will be written; :meth:`StackWriter.close` checks it.
    overwrite : bool
        Replace an existing output (only once the new one is complete).
    metadata : dict, optional
        JSON-serializable entries stored with the stack (TIFF ImageDescription, zarr
        attributes); read them back with :func:`read_metadata`.

    Returns
    -------
    StackWriter

    Raises
    ------
    StackError
        On an unwritable path or invalid settings.
    """
    path = check_output_path(path, overwrite=overwrite)
    frame_shape = tuple(int(d) for d in frame_shape)
    if len(frame_shape) != 2 or min(frame_shape) < 1:
        raise StackError(f"frame_shape must be (y, x) with sizes >= 1, got {frame_shape}.")
    dtype = np.dtype(dtype)
    _check_dtype(dtype, f"output {path}")
    if n_frames is not None and n_frames < 1:
        raise StackError(f"n_frames must be >= 1 (or None when unknown), got {n_frames}.")
    metadata = dict(metadata or {})
    reserved = sorted(set(metadata) & set(RESERVED_METADATA_KEYS))
    if reserved:
        raise StackError(
            f"metadata keys {reserved} are set by the writer itself; rename them."
        )
    try:
        json.dumps(metadata)
    except TypeError as err:
        raise StackError(
            f"metadata must be JSON-serializable ({err}); convert values to str, numbers, "
            "lists or dicts."
        ) from err
    cls = _ZarrStackWriter if path.suffix.lower() == ".zarr" else _TiffStackWriter
    return cls(path, frame_shape, dtype, n_frames, overwrite, metadata)


def write_stack(
    path: str | Path,
    stack: Any,
    overwrite: bool = False,
    metadata: dict | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write a whole stack, streaming it frame by frame (dask chunk by chunk).

    Parameters
    ----------
    path : str or Path
        ``.tif``/``.tiff`` or ``.zarr``.
    stack : array_like, shape (frames, y, x)
        numpy or dask array; singleton axes besides y and x are dropped.
    overwrite : bool
        Replace an existing output.
    metadata : dict, optional
        JSON-serializable entries stored with the stack.
    progress : callable, optional
        Called as ``progress(done, total)`` after each frame.

    Returns
    -------
    Path
        The written output.
    """
    if not is_dask_array(stack):
        stack = np.asarray(stack)
    n, y, x = _stack_shape(stack.shape, "stack to write")
    stack = stack.reshape(n, y, x)
    with open_writer(path, (y, x), stack.dtype, n, overwrite, metadata) as writer:
        for done, frame in enumerate(_iter_frames(stack), start=1):
            writer.write(frame)
            if progress is not None:
                progress(done, n)
    return writer.path


def _iter_frames(stack: Any) -> Iterator[np.ndarray]:
    """Frames of a numpy or dask stack; dask chunks are computed once each."""
    if is_dask_array(stack):
        stack = stack.rechunk({1: -1, 2: -1})
        for k in range(stack.numblocks[0]):
            yield from np.asarray(stack.blocks[k])
    else:
        yield from stack


def move_into_place(partial_path: Path, path: Path, overwrite: bool) -> None:
    """Put a finished stack at ``path``: the last step of every writer.

    Raises
    ------
    StackError
        When ``path`` appeared while the stack was being written and ``overwrite`` is not
        set: the stack stays at ``partial_path``, and the message says so.
    """
    if path.exists() and not overwrite:
        raise StackError(
            f"{path} appeared while the stack was being written and is left as it is; the "
            f"result is in {partial_path}: rename it, or pass --overwrite."
        )
    if path.is_dir():
        # os.replace cannot replace a non-empty folder (a zarr store): move the old one
        # aside, put the new one in place, then delete the old.
        old = path.with_name(f"{path.name}.replaced-{os.getpid()}")
        os.replace(path, old)
        os.replace(partial_path, path)
        shutil.rmtree(old)
    else:
        os.replace(partial_path, path)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
