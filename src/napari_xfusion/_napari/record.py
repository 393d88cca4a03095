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
    inputs : dict of str to str, optional
        Names of the layers the run fused: ``"lr"``, ``"hr"`` and, when one was chosen,
        ``"truth"``.

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

    def __init__(self, timeline: Timeline, method: str, inputs: dict | None = None) -> None:
        self.timeline = timeline
        self.method = method
        self.inputs: dict[str, str] = dict(inputs or {})
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


class _FrameStack:
    """A ``(t, y, x)`` array-like that makes each frame when napari asks for it.

    Subclasses set ``shape`` and ``dtype`` and define :meth:`frame`.
    """

    ndim = 3
    shape: tuple[int, int, int]
    dtype: np.dtype

    def frame(self, t: int) -> np.ndarray:
        """Frame ``t`` as an array of shape ``shape[1:]``."""
        raise NotImplementedError

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        first, rest = key[0], key[1:]
        if isinstance(first, (int, np.integer)):
            return self.frame(int(first))[rest]
        indices = np.arange(self.shape[0])[first]
        frames = np.stack([self.frame(int(i)) for i in indices])
        return frames[(slice(None), *rest)]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        frames = self[:]
        return frames if dtype is None else frames.astype(dtype, copy=False)


class ResultStack(_FrameStack):
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
        self.capacity = capacity
        self._frames: dict[int, np.ndarray] = {}
        # Float whatever the frames' type: an integer type has no NaN.
        self._blank = np.full(self.shape[1:], np.nan, np.float32)

    def __setitem__(self, index: int, frame: np.ndarray) -> None:
        self._frames.pop(index, None)
        self._frames[index] = np.asarray(frame, dtype=self.dtype)
        if self.capacity is not None and len(self._frames) > self.capacity:
            del self._frames[next(iter(self._frames))]  # dicts keep insertion order

    def __contains__(self, index: int) -> bool:
        return index in self._frames

    def frame(self, t: int) -> np.ndarray:
        return self._frames.get(t, self._blank)


class ErrorStack(_FrameStack):
    """The signed error ``fused - truth`` of two ``(t, y, x)`` stacks, frame by frame.

    Computed when a frame is shown, in float32 and the stacks' own units: positive where
    the fused frame is brighter than the truth. Frames not fused yet are NaN.

    Parameters
    ----------
    fused, truth : array_like, shape (t, y, x)
        The same shape; anything that reads one frame by indexing.
    """

    dtype = np.dtype(np.float32)

    def __init__(self, fused, truth) -> None:
        if tuple(fused.shape) != tuple(truth.shape):
            raise ValueError(
                f"the fused stack {tuple(fused.shape)} and the ground truth "
                f"{tuple(truth.shape)} differ in shape: choose the truth of this recording."
            )
        self.shape = tuple(int(n) for n in fused.shape)
        self.fused, self.truth = fused, truth

    def frame(self, t: int) -> np.ndarray:
        fused = np.asarray(self.fused[t], np.float32)
        return fused - np.asarray(self.truth[t], np.float32)
