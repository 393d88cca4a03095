"""What every stack reader shares: the error it raises and the frame-by-frame base class."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FrameReader", "StackError"]


class StackError(ValueError):
    """A stack cannot be read or written; the message says why and what to do."""


class FrameReader(ABC):
    """Frames of a file stack, read on demand; dask reads it like an array.

    Subclasses set ``path``, ``name``, ``shape`` and ``dtype`` and implement ``_frame``.
    """

    path: Path
    name: str
    shape: tuple[int, int, int]
    dtype: np.dtype
    ndim = 3

    @abstractmethod
    def _frame(self, index: int) -> np.ndarray:
        """Frame ``index`` as a ``(y, x)`` array."""

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        # The first index picks frames (an int, slice or list after dask's slice fusion);
        # only those frames are read, then the rest of the key applies to them.
        key = key if isinstance(key, tuple) else (key,)
        picked = np.arange(len(self))[key[0]]
        if picked.ndim == 0:
            return self._read(int(picked))[key[1:]]
        frames = [self._read(int(i)) for i in picked]
        data = np.stack(frames) if frames else np.empty((0, *self.shape[1:]), self.dtype)
        return data[(slice(None), *key[1:])]

    def _read(self, index: int) -> np.ndarray:
        try:
            return self._frame(index)
        except StackError:
            raise
        except Exception as err:
            raise StackError(
                f"{self.name} frame {index} could not be read from {self.path} ({err}); the "
                "file may be truncated or corrupt: re-copy or re-export it."
            ) from err
