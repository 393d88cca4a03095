"""Modulated deformable convolution (DCNv2) with torchvision's exact semantics.

:func:`deform_conv2d` takes the same arguments, in the same layout, as
``torchvision.ops.deform_conv2d``. When torchvision imports it is used; otherwise a pure
PyTorch version samples the input with :func:`torch.nn.functional.grid_sample` and applies
the weight with one matrix product. The PyPI torchvision does not import beside the CPU
torch wheel this project pins, so the pure version is the usual path on CPU machines.

Layout (torchvision's):

- ``offset`` has shape ``(B, 2 * G * kh * kw, H_out, W_out)``; for offset group ``g`` and
  kernel position ``k = i * kw + j`` (row-major), channel ``2 * (g * kh * kw + k)`` is the
  vertical offset ``dy`` and the next channel the horizontal offset ``dx``.
- ``mask`` has shape ``(B, G * kh * kw, H_out, W_out)``, channel ``g * kh * kw + k``.
- Kernel tap ``(i, j)`` of output pixel ``(oy, ox)`` reads the input at
  ``y = oy * stride - padding + i * dilation + dy`` (and likewise ``x``) with bilinear
  interpolation; pixels outside the input count as zero.
"""

from __future__ import annotations

import functools
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Backend = Literal["auto", "torch", "torchvision"]
BACKENDS = ("auto", "torch", "torchvision")

#: The pure version processes the batch in chunks whose sampled columns (``C * kh * kw *
#: H_out * W_out`` values per image) stay below this many bytes, so that a batch of large
#: tiles does not allocate several gigabytes at once.
COLUMN_BUDGET_BYTES = 256 * 2**20


@functools.lru_cache(maxsize=1)
def torchvision_available() -> bool:
    """Whether ``torchvision.ops.deform_conv2d`` can be used here."""
    try:
        import torchvision.ops  # noqa: F401
    except Exception:  # noqa: BLE001 - a torchvision built for another torch raises RuntimeError
        return False
    return True


def resolve_backend(backend: str = "auto") -> str:
    """The backend that ``backend`` selects: ``"torchvision"`` or ``"torch"``.

    Parameters
    ----------
    backend : {"auto", "torch", "torchvision"}
        ``"auto"`` picks torchvision when it imports and the pure PyTorch version otherwise.

    Raises
    ------
    ValueError
        For an unknown name, or ``"torchvision"`` where torchvision does not import.
    """
    if backend not in BACKENDS:
        raise ValueError(
            f"unknown deformable-convolution backend {backend!r}; use one of {', '.join(BACKENDS)}."
        )
    if backend == "auto":
        return "torchvision" if torchvision_available() else "torch"
    if backend == "torchvision" and not torchvision_available():
        raise ValueError(
            "the torchvision deformable-convolution backend was requested but torchvision "
            "does not import here; use backend='torch' (same results) or 'auto'."
        )
    return backend


def _pair(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    pair = tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) for v in pair):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}.")
    return pair  # type: ignore[return-value]


def deform_conv2d(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    mask: Tensor | None = None,
    backend: Backend = "auto",
) -> Tensor:
    """Modulated deformable 2-D convolution, as ``torchvision.ops.deform_conv2d``.

    Parameters
    ----------
    input : Tensor, shape (B, C_in, H, W)
    offset : Tensor, shape (B, 2 * G * kh * kw, H_out, W_out)
        Sampling offsets in pixels, ``(dy, dx)`` pairs in torchvision's order (module
        docstring). ``G`` (offset groups) must divide ``C_in``.
    weight : Tensor, shape (C_out, C_in / groups, kh, kw)
        Convolution weight; ``groups`` is inferred from ``C_in``, as in torchvision.
    bias : Tensor, shape (C_out,), optional
    stride, padding, dilation : int or (int, int)
    mask : Tensor, shape (B, G * kh * kw, H_out, W_out), optional
        Modulation of each sampled value (DCNv2); None means all ones (DCNv1).
    backend : {"auto", "torch", "torchvision"}
        Implementation to use; see :func:`resolve_backend`.

    Returns
    -------
    Tensor, shape (B, C_out, H_out, W_out)
    """
    stride = _pair(stride, "stride")
    padding = _pair(padding, "padding")
    dilation = _pair(dilation, "dilation")
    if resolve_backend(backend) == "torchvision":
        import torchvision.ops

        return torchvision.ops.deform_conv2d(
            input, offset, weight, bias, stride, padding, dilation, mask
        )
    return _deform_conv2d_torch(input, offset, weight, bias, stride, padding, dilation, mask)


def _check_shapes(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    mask: Tensor | None,
) -> tuple[int, int, int, int]:
    """Validate the arguments; return (groups, offset groups, H_out, W_out)."""
    if input.dim() != 4 or offset.dim() != 4 or weight.dim() != 4:
        raise ValueError(
            "deform_conv2d needs 4-D input (B, C, H, W), offset and weight; got "
            f"{tuple(input.shape)}, {tuple(offset.shape)} and {tuple(weight.shape)}."
        )
    b, c, h, w = input.shape
    c_out, c_per_group, kh, kw = weight.shape
    if c_per_group == 0 or c % c_per_group:
        raise ValueError(
            f"weight expects {c_per_group} input channels per group, which does not divide "
            f"the {c} input channels."
        )
    groups = c // c_per_group
    if c_out % groups:
        raise ValueError(f"{c_out} output channels are not divisible by {groups} groups.")
    h_out = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    w_out = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    taps = kh * kw
    if offset.shape[1] % (2 * taps) or offset.shape[1] == 0:
        raise ValueError(
            f"offset has {offset.shape[1]} channels; it needs 2 * offset_groups * {kh} * {kw}."
        )
    offset_groups = offset.shape[1] // (2 * taps)
    if c % offset_groups:
        raise ValueError(
            f"{offset_groups} offset groups do not divide the {c} input channels."
        )
    if offset.shape[0] != b or tuple(offset.shape[2:]) != (h_out, w_out):
        raise ValueError(
            f"offset of shape {tuple(offset.shape)} does not match the output "
            f"({b}, *, {h_out}, {w_out}) of this convolution."
        )
    if mask is not None and tuple(mask.shape) != (b, offset_groups * taps, h_out, w_out):
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} should be "
            f"{(b, offset_groups * taps, h_out, w_out)}."
        )
    if bias is not None and tuple(bias.shape) != (c_out,):
        raise ValueError(f"bias of shape {tuple(bias.shape)} should be ({c_out},).")
    return groups, offset_groups, h_out, w_out


def _deform_conv2d_torch(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    mask: Tensor | None,
) -> Tensor:
    """The pure PyTorch version of :func:`deform_conv2d` (same arguments, tuples resolved)."""
    groups, offset_groups, h_out, w_out = _check_shapes(
        input, offset, weight, bias, stride, padding, dilation, mask
    )
    b, c = input.shape[:2]
    taps = weight.shape[2] * weight.shape[3]
    # Columns are sampled in float32 at least (see _deform_conv2d_chunk).
    per_image = c * taps * h_out * w_out * max(input.element_size(), 4)
    chunk = max(1, COLUMN_BUDGET_BYTES // max(per_image, 1))
    if b > chunk:
        outputs = [
            _deform_conv2d_chunk(
                input[i : i + chunk],
                offset[i : i + chunk],
                weight,
                bias,
                stride,
                padding,
                dilation,
                None if mask is None else mask[i : i + chunk],
                groups,
                offset_groups,
            )
            for i in range(0, b, chunk)
        ]
        return torch.cat(outputs, dim=0)
    return _deform_conv2d_chunk(
        input, offset, weight, bias, stride, padding, dilation, mask, groups, offset_groups
    )


def _deform_conv2d_chunk(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    mask: Tensor | None,
    groups: int,
    offset_groups: int,
) -> Tensor:
    b, c, h, w = input.shape
    c_out, c_per_group, kh, kw = weight.shape
    h_out, w_out = offset.shape[2:]
    taps = kh * kw
    device = input.device
    # Sampling positions need float32 at least: in bfloat16 a coordinate near 256 is only
    # known to the nearest pixel.
    dtype = torch.promote_types(input.dtype, torch.float32)

    # Undeformed tap positions in input pixels, shape (taps, H_out, W_out).
    ys = torch.arange(h_out, device=device, dtype=dtype) * stride[0] - padding[0]
    xs = torch.arange(w_out, device=device, dtype=dtype) * stride[1] - padding[1]
    ky = torch.arange(kh, device=device, dtype=dtype) * dilation[0]
    kx = torch.arange(kw, device=device, dtype=dtype) * dilation[1]
    base_y = (ky[:, None, None, None] + ys[None, None, :, None]).expand(kh, kw, h_out, w_out)
    base_x = (kx[None, :, None, None] + xs[None, None, None, :]).expand(kh, kw, h_out, w_out)
    base_y = base_y.reshape(taps, h_out, w_out)
    base_x = base_x.reshape(taps, h_out, w_out)

    off = offset.to(dtype).reshape(b, offset_groups, taps, 2, h_out, w_out)
    y = base_y + off[:, :, :, 0]  # (B, G, taps, H_out, W_out)
    x = base_x + off[:, :, :, 1]
    # grid_sample with align_corners=False maps pixel centre p to (2p + 1) / size - 1; its
    # zero padding treats each out-of-range bilinear corner as 0, which is exactly
    # torchvision's rule (a point at or beyond one pixel outside reads 0).
    grid = torch.stack(((2 * x + 1) / w - 1, (2 * y + 1) / h - 1), dim=-1)
    grid = grid.reshape(b * offset_groups, taps * h_out, w_out, 2)
    sampled = F.grid_sample(
        input.to(dtype).reshape(b * offset_groups, c // offset_groups, h, w),
        grid,
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    )  # (B * G, C / G, taps * H_out, W_out)
    # Back to the input's dtype before the modulation: under bf16 autocast the matrix
    # product below would round the columns to it anyway, and the modulation, over the
    # largest tensor of the network, then moves half the bytes.
    sampled = sampled.to(input.dtype)
    sampled = sampled.reshape(b, offset_groups, c // offset_groups, taps, h_out, w_out)
    if mask is not None:
        # Contiguous, so that the broadcast product reads the mask in runs: a mask cut
        # from a channels-last convolution output is read with a stride of its channels.
        mask = mask.to(input.dtype, memory_format=torch.contiguous_format)
        mask = mask.reshape(b, offset_groups, 1, taps, h_out, w_out)
        # In place when no gradient is recorded: this is the largest tensor of the network.
        sampled = sampled * mask if torch.is_grad_enabled() else sampled.mul_(mask)

    # Columns ordered (channel, tap) like the flattened weight; channels are group-major,
    # so the conv groups split them into contiguous blocks.
    columns = sampled.reshape(b, groups, c_per_group * taps, h_out * w_out)
    kernel = weight.reshape(groups, c_out // groups, c_per_group * taps)
    out = torch.matmul(kernel.to(columns.dtype), columns)  # (B, groups, C_out / groups, L)
    out = out.reshape(b, c_out, h_out, w_out)
    if bias is not None:
        out = out + bias.to(out.dtype).reshape(1, c_out, 1, 1)
    return out.to(input.dtype)
