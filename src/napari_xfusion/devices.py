"""Where and in what precision the networks run: devices that work here, autocast dtypes.

Shared by inference (:mod:`napari_xfusion.engine`), training and calibration, so that
"auto" means the same everywhere.
"""

from __future__ import annotations

import contextlib

import torch

__all__ = [
    "autocast", "autocast_dtype", "available_devices", "cpu_has_native_bf16", "resolve_device",
]


def available_devices() -> list[str]:
    """Devices that can run a network here: ``"cpu"`` and every CUDA GPU that works."""
    devices = ["cpu"]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            try:
                torch.zeros(1, device=f"cuda:{i}")
            except RuntimeError:
                continue
            devices.append(f"cuda:{i}")
    return devices


def resolve_device(name: str = "auto") -> torch.device:
    """The torch device for a device setting.

    ``"auto"`` picks the first working CUDA GPU, else the CPU. An explicit device that does
    not work raises a :class:`ValueError` listing the devices that do.
    """
    working = available_devices()
    if name == "auto":
        return torch.device(working[1] if len(working) > 1 else "cpu")
    wanted = "cuda:0" if name == "cuda" else name
    if wanted not in working:
        raise ValueError(
            f"device {name!r} is not available here; use one of {', '.join(working)} or 'auto'."
        )
    return torch.device(wanted)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), where it is faster."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_dtype(
    device: torch.device, precision: str, training: bool = False
) -> torch.dtype | None:
    """The autocast dtype for a precision setting on a device, or None for fp32.

    ``"auto"`` means bf16 on CUDA, and fp16 on GPUs without bf16 except for ``training``
    (fp16 needs loss scaling). On a CPU it means bf16 where the CPU computes bf16 natively
    (1.3-1.7x faster there, for inference at ~66 dB PSNR from the fp32 output; training
    keeps fp32 weights and an fp32 loss, as on GPUs) and fp32 otherwise.
    """
    if precision == "auto" and device.type != "cuda":
        return torch.bfloat16 if cpu_has_native_bf16() else None
    if precision == "fp32":
        return None
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        if precision == "auto":
            return None if training else torch.float16
        raise ValueError(f"bf16 is not supported on {device}; use precision fp32 or fp16.")
    return torch.bfloat16


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` to ``dtype`` on ``device``, or no autocast for None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
