"""What one fusion run in the viewer has produced so far, shared by the widget and the plots.

The fusion widget fills a :class:`FusionRecord` frame by frame on the GUI thread and stores
it in the fused layer's ``metadata["xfusion_record"]``; the plot docks find it there and
redraw when :attr:`FusionRecord.updated` fires. Nothing here knows about Qt.
"""

from __future__ import annotations

import numpy as np
from psygnal import Signal

from ..attention import AttentionLog
from ..streaming import FusedFrame
from ..timeline import Timeline

#: Key of the record in a fused layer's metadata.
RECORD_KEY = "xfusion_record"


class FusionRecord:
    """Per-frame results of one fusion run.

    Parameters
    ----------
    timeline : Timeline
        The time model of the fused stacks.
    method : str
        Label of the fusion method.

    Attributes
    ----------
    attention : AttentionLog
        Raw attention scores of the neural methods, in arrival order.
    psnr : dict of int to float
        PSNR (dB) of each fused frame against the ground truth, when one was given.
    done : set of int
        LR times fused so far.
    """

    #: Emitted with the LR time of each frame added.
    updated = Signal(int)

    def __init__(self, timeline: Timeline, method: str) -> None:
        self.timeline = timeline
        self.method = method
        self.attention = AttentionLog()
        self.psnr: dict[int, float] = {}
        self.done: set[int] = set()

    def add(self, frame: FusedFrame, psnr: float | None = None) -> None:
        """Record one fused frame (its attention scores and PSNR) and emit :attr:`updated`."""
        self.attention.add(frame)
        if psnr is not None:
            self.psnr[frame.t] = float(psnr)
        self.done.add(frame.t)
        self.updated.emit(frame.t)

    def psnr_series(self) -> tuple[np.ndarray, np.ndarray]:
        """LR times and PSNRs of the frames with a PSNR, sorted by time."""
        times = np.array(sorted(self.psnr), dtype=int)
        return times, np.array([self.psnr[t] for t in times], dtype=float)


class ResultStack:
    """The fused frames of a run as a ``(t, y, x)`` array that napari can show while it grows.

    Frames not fused yet (or cancelled) read as NaN, which napari draws see-through: the
    input layers below show there instead of a black frame. With ``capacity`` set, only that
    many most recent frames are kept (a run streamed to a file, whose layer is reopened from
    the file when it ends), so a long run never fills the memory.

    Parameters
    ----------
    shape : tuple of int
        ``(frames, y, x)``.
    dtype : dtype-like
        Pixel type of the frames.
    capacity : int, optional
        Number of frames kept; None keeps all of them.
    """

    def __init__(self, shape: tuple[int, int, int], dtype, capacity: int | None = None) -> None:
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        self.ndim = 3
        self.capacity = capacity
        self._frames: dict[int, np.ndarray] = {}
        # Float whatever the frames' type: an integer type has no NaN.
        self._blank = np.full(self.shape[1:], np.nan, np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __setitem__(self, index: int, frame: np.ndarray) -> None:
        self._frames.pop(index, None)
        self._frames[index] = np.asarray(frame, dtype=self.dtype)
        if self.capacity is not None and len(self._frames) > self.capacity:
            del self._frames[next(iter(self._frames))]  # dicts keep insertion order

    def __contains__(self, index: int) -> bool:
        return index in self._frames

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        first, rest = key[0], key[1:]
        if isinstance(first, (int, np.integer)):
            return self._frames.get(int(first), self._blank)[rest]
        indices = np.arange(self.shape[0])[first]
        frames = np.stack([self._frames.get(int(i), self._blank) for i in indices])
        return frames[(slice(None), *rest)]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        frames = self[:]
        if dtype is None and len(self._frames) < self.shape[0]:
            return frames  # float with NaN where frames are missing
        return frames.astype(dtype or self.dtype, copy=False)
