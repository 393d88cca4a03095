"""Image stacks in and out: lazy, frame-by-frame reading and streamed writing.

- :mod:`.read` -- :func:`read_stack` (TIFF stacks, folders of TIFF frames, zarr, arrays);
- :mod:`.cameras` -- the cameras' own files (Photron MRAW/CIH, HDF5/NeXus) and the frame
  rates and trigger times they record;
- :mod:`.write` -- :func:`open_writer` and :func:`write_stack` (BigTIFF or zarr, through an
  ``.incomplete`` file that is renamed into place only when complete).

A new file format is a :class:`~.frames.FrameReader` (in :mod:`.cameras` for a camera's
format; :func:`~.cameras.open_camera_file` dispatches on the suffix) and,
for output, a :class:`StackWriter` subclass in :mod:`.write`.
"""

from .cameras import CameraTiming, camera_timing, open_camera_file, propose_time_model
from .read import (
    TIFF_SUFFIXES,
    StackError,
    check_finite,
    is_dask_array,
    is_stack,
    read_image,
    read_metadata,
    read_stack,
    source_stamp,
)
from .write import (
    BackgroundWriter,
    StackWriter,
    check_output_path,
    incomplete_path,
    move_into_place,
    open_writer,
    remove_stack,
    resuming_path,
    write_stack,
)

__all__ = [
    "TIFF_SUFFIXES",
    "CameraTiming",
    "camera_timing",
    "open_camera_file",
    "propose_time_model",
    "BackgroundWriter",
    "StackError",
    "StackWriter",
    "check_finite",
    "check_output_path",
    "incomplete_path",
    "is_dask_array",
    "is_stack",
    "move_into_place",
    "open_writer",
    "read_image",
    "read_metadata",
    "read_stack",
    "remove_stack",
    "resuming_path",
    "source_stamp",
    "write_stack",
]
