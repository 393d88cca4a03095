"""napari-xfusion: fuse a fast low-resolution x-ray video with a slow high-resolution one.

The public API a script needs, importable from the package itself::

    from napari_xfusion import TimeModel, create_method, fuse_to_file, prepare_inputs

    inputs = prepare_inputs("lr.tif", "hr.tif", TimeModel(spacing=20, offset=3))
    fuse_to_file(inputs, create_method("transfer"), "fused.tif")

The names are imported on first use, so ``import napari_xfusion`` is cheap and does not
import PyTorch (the napari plugin manifest imports the package to find itself). The layout
is described in ``docs/architecture.md``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

#: Public name -> module that defines it (relative to this package).
_API = {
    # settings
    "TimeModel": "config",
    "NoiseConfig": "config",
    "NormalizationConfig": "config",
    "EngineConfig": "config",
    "ModelConfig": "config",
    "TrainConfig": "config",
    "CalibrationConfig": "config",
    # the time model
    "Timeline": "timeline",
    # files to fused files
    "prepare_inputs": "pipeline",
    "fuse_to_file": "pipeline",
    "fuse_iter": "pipeline",
    "simulate_to_files": "pipeline",
    "read_stack": "io",
    "write_stack": "io",
    # methods
    "create_method": "methods",
    "method_names": "methods",
    "FusionMethod": "methods",
    # which method, and calibration
    "assess": "assess",
    "calibrate": "training.calibrate",
    # networks and weights
    "load_weights": "models",
    "save_weights": "models",
    # simulation and quality
    "simulate_experiment": "simulate",
    "synthetic_lpbf": "synthetic",
    "evaluate": "metrics",
    "psnr": "metrics",
    "ssim": "metrics",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
