"""Where and how the networks run: devices that work here, autocast dtypes, CPU memory.

Shared by inference (:mod:`napari_xfusion.engine`), training and calibration, so that
"auto" means the same everywhere, and so that all three keep freed memory for their next
step (:func:`retain_freed_memory`).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import threading
from collections.abc import Iterator

import torch

__all__ = [
    "autocast", "autocast_dtype", "available_devices", "cpu_has_native_bf16", "resolve_device",
    "retain_freed_memory",
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


# glibc's mallopt parameters (malloc.h) and its documented defaults, restored on leaving.
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_DEFAULT_TRIM_THRESHOLD, _DEFAULT_MMAP_MAX = 128 * 1024, 65536
_retain_lock = threading.Lock()
_retain_depth = 0


@functools.lru_cache(maxsize=1)
def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (it has ``mallopt`` and ``malloc_trim``), else None."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):
        return None
    return libc


@contextlib.contextmanager
def retain_freed_memory() -> Iterator[bool]:
    """Keep memory freed by PyTorch in the process while a network trains or fuses on the CPU.

    glibc's ``malloc`` maps each block above a few MiB freshly from the system and
    unmaps it when freed, so every step of CPU training (or fused frame), which allocates and frees
    gigabytes of such blocks, pays again for the system zero-filling its pages: 40% of a
    step of the default preset (2-core AMD EPYC, batch 16, 64-pixel LR crops, bf16: 9.4 s
    -> 5.9 s per step inside this block; the results are the same bit for bit). Inside the
    block every allocation comes from the heap, which keeps what is freed for the next
    step; on leaving, glibc's default settings come back and the free memory is returned
    to the system. Blocks may nest and may be entered from several threads; the settings
    are restored when the last one leaves. Where the C library is not glibc (macOS,
    Windows, musl) nothing changes.

    Yields
    ------
    bool
        Whether the allocator settings are in effect.
    """
    global _retain_depth
    libc = _glibc()
    if libc is None:
        yield False
        return
    with _retain_lock:
        if _retain_depth == 0:
            libc.mallopt(_M_MMAP_MAX, 0)
            libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
        _retain_depth += 1
    try:
        yield True
    finally:
        with _retain_lock:
            _retain_depth -= 1
            if _retain_depth == 0:
                libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
                libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
                libc.malloc_trim(0)
