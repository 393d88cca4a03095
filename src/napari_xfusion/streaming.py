"""Frame-by-frame fusion of a sequence: the fused-frame record and the streaming loop.

Every method turns an LR stack ``(N, h, w)`` and an HR keyframe stack ``(M, H, W)`` (float32
in [0, 1], numpy or dask) into fused HR frames, one at a time, as :class:`FusedFrame`
objects, so that callers can stream them to a writer or a GUI and stop between frames.
:func:`stream_frames` is the loop they share: it reads each input frame once per pass, in a
background thread while the current output is fused.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .timeline import FrameInputs, Timeline

__all__ = [
    "FrameCache", "FusedFrame", "MappedFrames", "ProgressCallback", "output_times",
    "stream_frames",
]

#: Signature of a progress callback: ``progress(done, total)``.
ProgressCallback = Callable[[int, int], None]


@dataclass
class FusedFrame:
    """One fused output frame.

    Attributes
    ----------
    t : int
        LR time (frame index) of the output.
    image : ndarray
        The fused HR frame, float32 ``(H, W)`` in the normalized [0, 1] units.
    is_keyframe : bool
        Whether an HR frame was given at ``t`` (metrics report unseen frames separately).
    attention : ndarray or None
        Raw attention scores of the five inputs ``[LR t-r, LR t, LR t+r, HR k0, HR k1]``
        for the neural methods, None for the others.
    hr_times : tuple of int
        LR times of the two HR keyframes used.
    """

    t: int
    image: np.ndarray
    is_keyframe: bool
    attention: np.ndarray | None = None
    hr_times: tuple[int, int] = (0, 0)


class FrameCache:
    """Reads frames of a stack on demand and keeps the last few in memory.

    Consecutive outputs share most of their inputs, so a small cache means every input
    frame is read from storage once per pass. Frames asked for with :meth:`prefetch` are
    read in a background thread while the caller works.

    Frames may be asked for from several threads; they are read one at a time.

    Parameters
    ----------
    stack : array-like, shape (n, y, x)
        numpy array, dask array, or anything indexable by frame that ``np.asarray`` accepts.
    capacity : int
        Number of frames kept.
    dtype : dtype-like or None
        Type the frames are converted to (None: kept as the stack stores them).
    """

    def __init__(self, stack, capacity: int = 8, dtype=np.float32) -> None:
        self.stack = stack
        self.capacity = max(int(capacity), 1)
        self.dtype = dtype
        self._frames: OrderedDict[int, np.ndarray] = OrderedDict()
        self._pending: dict[int, Future] = {}
        self._reader: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self.reads = 0

    def _read(self, i: int) -> np.ndarray:
        return np.asarray(self.stack[i], dtype=self.dtype)

    def __getitem__(self, i: int) -> np.ndarray:
        with self._lock:
            frame = self._frames.get(i)
            if frame is None:
                pending = self._pending.pop(i, None)
                frame = self._read(i) if pending is None else pending.result()
                self.reads += 1
                self._frames[i] = frame
                if len(self._frames) > self.capacity:
                    self._frames.popitem(last=False)
            else:
                self._frames.move_to_end(i)
            return frame

    def take(self, indices: Sequence[int]) -> np.ndarray:
        """Frames at ``indices`` stacked into ``(len(indices), y, x)``."""
        return np.stack([self[i] for i in indices])

    def prefetch(self, indices: Sequence[int]) -> None:
        """Start reading the frames at ``indices`` that are neither kept nor on their way."""
        with self._lock:
            for i in indices:
                if i not in self._frames and i not in self._pending:
                    if self._reader is None:
                        self._reader = ThreadPoolExecutor(1, thread_name_prefix="xfusion-reader")
                    self._pending[i] = self._reader.submit(self._read, i)

    def close(self) -> None:
        """Stop the background reader (frames on their way are dropped)."""
        if self._reader is not None:
            self._reader.shutdown(wait=True, cancel_futures=True)
            self._reader = None
        self._pending.clear()


class MappedFrames:
    """A frame-indexable view of a stack through a per-frame function, read on demand.

    ``MappedFrames(stack, f)[i]`` is ``f(np.asarray(stack[i]))``; nothing is computed
    until a frame is asked for, so long stacks are never held in memory.
    """

    def __init__(self, stack, func: Callable[[np.ndarray], np.ndarray]) -> None:
        self.stack = stack
        self.func = func

    def __len__(self) -> int:
        return len(self.stack)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.func(np.asarray(self.stack[i]))


def output_times(timeline: Timeline, frames: Iterable[int] | None) -> list[int]:
    """The LR times to fuse: all of them, or the given ones (validated, in the given order)."""
    if frames is None:
        return list(range(timeline.n_lr))
    times = [int(t) for t in frames]
    bad = [t for t in times if not 0 <= t < timeline.n_lr]
    if bad:
        raise ValueError(
            f"requested output frames {bad[:5]} are outside the LR sequence 0..{timeline.n_lr - 1}."
        )
    return times


def stream_frames(
    lr,
    hr,
    timeline: Timeline,
    fuse_one: Callable[[np.ndarray, np.ndarray, FrameInputs], tuple[np.ndarray, np.ndarray | None]],
    frames: Iterable[int] | None = None,
    progress: ProgressCallback | None = None,
) -> Iterator[FusedFrame]:
    """Fuse frame after frame, reading each input frame once per pass.

    Reading overlaps computing: the frames the next output needs are read in a background
    thread while the current one is fused.

    Parameters
    ----------
    lr, hr, timeline, frames, progress
        As for :meth:`FusionMethod.fuse`.
    fuse_one : callable
        ``fuse_one(lr (3, h, w), hr (2, H, W), inputs) -> (image, attention or None)``.

    Yields
    ------
    FusedFrame
    """
    times = output_times(timeline, frames)
    lr_cache = FrameCache(lr, capacity=2 * timeline.model.separation + 2)
    hr_cache = FrameCache(hr, capacity=3)
    try:
        for done, t in enumerate(times, start=1):
            inputs = timeline.inputs(t)
            lr_frames, hr_frames = lr_cache.take(inputs.lr), hr_cache.take(inputs.hr)
            if done < len(times):
                # The next output's new frames are read while this one is fused.
                following = timeline.inputs(times[done])
                lr_cache.prefetch(following.lr)
                hr_cache.prefetch(following.hr)
            image, attention = fuse_one(lr_frames, hr_frames, inputs)
            yield FusedFrame(
                t=t,
                image=np.asarray(image, dtype=np.float32),
                is_keyframe=inputs.is_keyframe,
                attention=attention,
                hr_times=inputs.hr_times,
            )
            if progress is not None:
                progress(done, len(times))
    finally:
        lr_cache.close()
        hr_cache.close()
