"""napari writer: an image layer streamed frame by frame to a BigTIFF stack."""

from __future__ import annotations

import numpy as np

from ..io import write_stack as _write_stack


def write_stack(path: str, data, attributes: dict) -> list[str]:
    """Write an image layer's data ``(t, y, x)`` (or one 2-D image) to ``path``.

    Frames are written one at a time, so a lazy layer of any length is never loaded whole.
    """
    stack = data if np.ndim(data) == 3 else np.asarray(data)[None]
    written = _write_stack(
        path, stack, metadata={"napari_layer": attributes.get("name", "")}, overwrite=True
    )
    return [str(written)]
