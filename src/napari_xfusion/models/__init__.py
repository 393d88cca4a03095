"""The fusion networks: EDVR-STF and EDVR, their deformable convolution and weight files.

- :mod:`.arch` — :class:`EDVRSTF`, :class:`EDVR` and their building blocks;
- :mod:`.deform` — :func:`deform_conv2d` (torchvision when it imports, pure PyTorch otherwise);
- :mod:`.weights` — safetensors weight files with the network's config in their metadata.
"""

from .arch import EDVR, EDVRSTF, FusionNetwork, build_model, count_parameters
from .deform import deform_conv2d, resolve_backend, torchvision_available
from .weights import (
    WeightsError,
    bundled_weights_path,
    check_weights_file,
    convert_pth,
    init_from,
    load_weights,
    read_metadata,
    save_weights,
)

__all__ = [
    "EDVR",
    "EDVRSTF",
    "FusionNetwork",
    "WeightsError",
    "build_model",
    "bundled_weights_path",
    "check_weights_file",
    "convert_pth",
    "count_parameters",
    "deform_conv2d",
    "init_from",
    "load_weights",
    "read_metadata",
    "resolve_backend",
    "save_weights",
    "torchvision_available",
]
