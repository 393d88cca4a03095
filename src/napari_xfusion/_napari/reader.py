"""napari reader: TIFF stacks, folders of TIFF frames and the cameras' own files (Photron
MRAW/CIH, HDF5/NeXus), opened lazily as ``(t, y, x)``."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..io import TIFF_SUFFIXES, read_stack
from ..io.cameras import CAMERA_SUFFIXES

LayerData = list[tuple]


def _is_tiff_folder(path: Path) -> bool:
    return path.is_dir() and any(
        p.suffix.lower() in TIFF_SUFFIXES for p in path.iterdir() if p.is_file()
    )


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], LayerData] | None:
    """The reader for ``path`` if it is a TIFF file, a folder of TIFF frames or a camera
    file, else None.

    Never raises: napari asks every plugin about every file, and a file this reader does
    not handle is simply not claimed.
    """
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    try:
        ok = all(
            Path(p).suffix.lower() in (*TIFF_SUFFIXES, *CAMERA_SUFFIXES)
            or _is_tiff_folder(Path(p))
            for p in paths
        )
    except OSError:
        return None
    return read_layers if ok and paths else None


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
