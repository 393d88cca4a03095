"""napari reader: TIFF stacks, folders of TIFF frames and the cameras' own files (Photron
MRAW/CIH, HDF5/NeXus), opened lazily as ``(t, y, x)``."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..io import is_stack, read_stack

LayerData = list[tuple]


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], LayerData] | None:
    """The reader for ``path`` if it is a stack of frames (a TIFF stack, a folder of TIFF
    frames, a camera file), else None.

    Never raises: napari asks every plugin about every file. A 2-D TIFF image is left to
    napari's own reader, so that opening an ordinary image asks nothing.
    """
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    return read_layers if paths and all(is_stack(p) for p in paths) else None


def read_layers(path: str | list[str]) -> LayerData:
    """One lazy image layer per path, with ``t, y, x`` axis labels.

    Raises
    ------
    ValueError
        For files that cannot be read as stacks (the message names the problem and the
        fix; napari shows it as a notification).
    """
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    layers = []
    for p in paths:
        name = Path(p).name.split(".")[0]
        stack = read_stack(p, name=name)
        layers.append(
            (
                stack,
                {"name": name, "axis_labels": ("t", "y", "x"), "metadata": {"source": str(p)}},
                "image",
            )
        )
    return layers
