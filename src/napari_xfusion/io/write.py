"""Writing image stacks frame by frame, never leaving a partial file under the final name.

:func:`open_writer` streams frames into a temporary sibling of the output named
``<stem>.incomplete<suffix>`` (``result.tif`` -> ``result.incomplete.tif``) and renames it
onto the output only once every frame is written and checked (:func:`move_into_place`), so
a file under the output name is always complete. While it writes, the run holds
``<output>.lock`` (:mod:`.lock`): a second run to the same name is refused.

Every frame is on disk, readable, before the next one starts: a run interrupted or killed at
any moment leaves an ``.incomplete`` file that opens and holds every frame written but the
one in flight, and :func:`read_stack` and :func:`read_metadata` report exactly those
(``"complete": false``, ``frames_written``). A write error (a full disk, say) names the file
and removes the partial, which could not be trusted and would keep the disk full. The free
space is checked against the known output size before the first frame. zarr is optional and
imported only to write a zarr store.
"""

from __future__ import annotations

import errno
import json
import os
import queue
import shutil
import tempfile
import threading
import uuid
import warnings
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import tifffile

from .lock import OutputLock, check_unlocked
from .read import (
    DESCRIPTION_PREFIX,
    TIFF_SUFFIXES,
    StackError,
    _check_dtype,
    _is_zarr_store,
    _stack_shape,
    is_dask_array,
    read_stack,
)

#: Metadata keys the writers set themselves ("shape" is tifffile's, in older files).
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


def resuming_path(path: str | Path) -> Path:
    """Where a resumed run keeps an interrupted run's frames while it copies them.

    ``result.tif`` -> ``result.resuming.tif``. A resume cut short leaves them there, and
    the next resume starts from them.
    """
    path = Path(path)
    return path.with_name(f"{path.stem}.resuming{path.suffix}")


def check_output_path(
    path: str | Path,
    overwrite: bool = False,
    suffixes: tuple[str, ...] | None = None,
    resume: bool = False,
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
    resume : bool
        The run will continue an interrupted run's frames (so they may exist).

    Returns
    -------
    Path
        ``path`` as a Path, with ``~`` expanded.

    Raises
    ------
    StackError
        When the suffix is unsupported, another run is writing the output, the output or
        the frames of an interrupted run to it exist (and ``overwrite`` is False), or the
        folder is missing or cannot be written.
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
    if suffixes is None:
        check_unlocked(path)
        for partial in (incomplete_path(path), resuming_path(path)):
            if partial.exists() and not (overwrite or resume):
                raise StackError(
                    f"{partial} holds the frames of an interrupted run to {path}: pass "
                    "--resume to continue it, --overwrite to discard them and start over, "
                    "or move that file away to keep them."
                )
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
        resume: bool = False,
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
        self._lock = OutputLock(path)
        self._lock.acquire()
        try:
            # A resuming run has set the earlier frames aside itself and copies them in.
            earlier = (self._partial,) if resume else (self._partial, resuming_path(path))
            for partial in earlier:
                if partial.exists():
                    warnings.warn(
                        f"discarding {partial}, the frames of an interrupted run to {path}.",
                        stacklevel=3,
                    )
                    remove_stack(partial)
            self._open()
            self._identity = claim(self._partial)
        except BaseException:
            self._lock.release()
            raise

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
        try:
            self._append(frame.astype(self.dtype, copy=False))
        except OSError as err:
            full = err.errno == errno.ENOSPC
            self.abort(keep=False)
            raise StackError(
                f"writing frame {k} to {self._partial} failed: "
                f"{'the disk is full' if full else err.strerror or err}. The partial file is "
                f"removed{' to free the space' if full else ''}; "
                f"{'free space or write to another disk' if full else 'check the disk'} and "
                "run again."
            ) from err
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
        try:
            # Checked before it is marked complete: a temporary that was removed or replaced
            # meanwhile is left as it is, never labelled complete.
            self._verify()
            self._finish(complete=True)
            self._closed = True
            move_into_place(self._partial, self._path, self.overwrite)
        finally:
            if not self._closed:
                self._closed = True
                self._release()
            self._lock.release()

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
        try:
            self._finish(complete=False)
        except OSError:
            keep = False  # the partial's last write failed: it is not kept half-described
        finally:
            if self._frames_written == 0 or not keep:
                remove_stack(self._partial)
            self._lock.release()

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

    def _release(self) -> None:  # noqa: B027 - a hook, empty for stores without a handle
        """Let go of the temporary without writing to it (it is no longer trusted)."""

    def _verify(self) -> None:
        """Check that the finished temporary reads back with every frame written.

        Guards the final name against anything that happened to the temporary behind the
        writer's back (removed, replaced, truncated).
        """
        if file_identity(self._partial) != self._identity:
            raise StackError(
                f"{self._partial} was removed or replaced while being written, so "
                f"{self._path} was not created. Run again."
            )
        try:
            shape = read_stack(self._partial).shape
        except StackError as err:
            raise StackError(
                f"{self._partial} no longer reads back ({err}); it was changed or removed "
                f"while being written, so {self._path} was not created. Run again."
            ) from err
        if shape != (self._frames_written, *self.frame_shape):
            raise StackError(
                f"{self._partial} reads back as {shape}, not the {self._frames_written} frames "
                f"written; it was changed while being written, so {self._path} was not "
                "created. Run again."
            )


class _TiffStackWriter(StackWriter):
    """BigTIFF, uncompressed, one page per frame, each page flushed with its directory.

    Each frame is a complete page on disk before the next one starts, so a file cut short by
    a kill still opens and holds every earlier frame. The metadata is the JSON
    ImageDescription of the first page, rewritten with the final status at the end.
    """

    def _open(self) -> None:
        self._tif = tifffile.TiffWriter(self._partial, bigtiff=True)

    def _append(self, frame: np.ndarray) -> None:
        first = self._frames_written == 0
        self._tif.write(
            frame,
            contiguous=False,
            photometric="minisblack",
            metadata=None,
            description=_description(self._status(False)) if first else None,
        )
        self._tif.filehandle.flush()

    def _release(self) -> None:
        self._tif.close()

    def _finish(self, complete: bool) -> None:
        self._tif.close()
        if self._frames_written:
            description = _description(self._status(complete))
            tifffile.tiffcomment(self._partial, description.encode("ascii"))


def _description(metadata: dict) -> str:
    return DESCRIPTION_PREFIX + json.dumps(metadata)


class _ZarrStackWriter(StackWriter):
    """A zarr array chunked one frame per chunk; metadata in its attributes.

    The array grows by one frame per write and its ``frames_written`` attribute follows,
    so a store cut short by a kill has the length of what was written, and the attribute
    says whether the last frame's pixels landed.
    """

    def _open(self) -> None:
        import zarr

        self._array = zarr.open_array(
            store=str(self._partial),
            mode="w",
            shape=(0, *self.frame_shape),
            chunks=(1, *self.frame_shape),
            dtype=self.dtype,
        )
        self._array.attrs.update(self._status(False))

    def _append(self, frame: np.ndarray) -> None:
        self._array.append(frame[np.newaxis], axis=0)
        self._array.attrs["frames_written"] = self._frames_written + 1

    def _finish(self, complete: bool) -> None:
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
    resume: bool = False,
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
    resume : bool
        The caller continues an interrupted run and has set its frames aside at
        :func:`resuming_path`; they are left alone.

    Returns
    -------
    StackWriter

    Raises
    ------
    StackError
        On an unwritable path or invalid settings.
    """
    path = check_output_path(path, overwrite=overwrite, resume=resume)
    frame_shape = tuple(int(d) for d in frame_shape)
    if len(frame_shape) != 2 or min(frame_shape) < 1:
        raise StackError(f"frame_shape must be (y, x) with sizes >= 1, got {frame_shape}.")
    dtype = np.dtype(dtype)
    _check_dtype(dtype, f"output {path}")
    if n_frames is not None and n_frames < 1:
        raise StackError(f"n_frames must be >= 1 (or None when unknown), got {n_frames}.")
    if n_frames is not None:
        _check_free_space(path, n_frames * frame_shape[0] * frame_shape[1] * dtype.itemsize)
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
    return cls(path, frame_shape, dtype, n_frames, overwrite, metadata, resume)


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


#: A file in a folder being written (a zarr store) that names the run writing it.
_RUN_MARK = ".xfusion-run"


def claim(path: Path) -> object:
    """Mark ``path`` as this run's (a folder gets a run mark) and return its identity."""
    if path.is_dir():
        (path / _RUN_MARK).write_text(uuid.uuid4().hex)
    return file_identity(path)


def file_identity(path: Path) -> object:
    """What tells ``path`` apart from anything put in its place (None if it is gone).

    A file's device and inode (it is held open while written, so its inode is not reused);
    a folder's run mark (see :func:`claim`), since the inode of a removed folder is reused
    at once by the one recreated in its place.
    """
    try:
        if path.is_dir():
            return (path / _RUN_MARK).read_text()
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _check_free_space(path: Path, nbytes: int) -> None:
    """Refuse before the first frame when the output cannot fit on its disk."""
    free = shutil.disk_usage(path.parent).free
    if nbytes > free:
        raise StackError(
            f"{path} needs about {nbytes / 1e6:,.0f} MB but its disk has {free / 1e6:,.0f} MB "
            "free; free some space, write to another disk, or fuse fewer frames."
        )


def remove_stack(path: Path) -> None:
    """Delete a stack file or zarr folder, if it is there."""
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
