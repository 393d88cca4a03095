"""The deformable convolution: the pure PyTorch version against a loop reference,
plain convolution, shifted convolution, gradients and (where it imports) torchvision."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from napari_xfusion.models import deform
from napari_xfusion.models.deform import deform_conv2d, resolve_backend


def _bilinear(image: torch.Tensor, y: float, x: float) -> float:
    """torchvision's rule: 0 at or beyond one pixel outside, out-of-range corners count 0."""
    h, w = image.shape
    if y <= -1 or y >= h or x <= -1 or x >= w:
        return 0.0
    y0, x0 = math.floor(y), math.floor(x)
    ly, lx = y - y0, x - x0
    total = 0.0
    for yy, wy in ((y0, 1 - ly), (y0 + 1, ly)):
        for xx, wx in ((x0, 1 - lx), (x0 + 1, lx)):
            if 0 <= yy < h and 0 <= xx < w:
                total += wy * wx * float(image[yy, xx])
    return total


def _reference(input, offset, weight, bias, stride, padding, dilation, mask):
    """Per-pixel, per-tap loops straight from the definition of (modulated) deformable conv."""
    b, c, h, w = input.shape
    c_out, cpg, kh, kw = weight.shape
    groups = c // cpg
    taps = kh * kw
    offset_groups = offset.shape[1] // (2 * taps)
    h_out, w_out = offset.shape[2:]
    out = torch.zeros(b, c_out, h_out, w_out, dtype=torch.float64)
    for n in range(b):
        for ch in range(c):
            g_off = ch // (c // offset_groups)
            g = ch // cpg
            for i in range(kh):
                for j in range(kw):
                    k = i * kw + j
                    for oy in range(h_out):
                        for ox in range(w_out):
                            dy = float(offset[n, 2 * (g_off * taps + k), oy, ox])
                            dx = float(offset[n, 2 * (g_off * taps + k) + 1, oy, ox])
                            y = oy * stride - padding + i * dilation + dy
                            x = ox * stride - padding + j * dilation + dx
                            value = _bilinear(input[n, ch], y, x)
                            if mask is not None:
                                value *= float(mask[n, g_off * taps + k, oy, ox])
                            for o in range(g * (c_out // groups), (g + 1) * (c_out // groups)):
                                out[n, o, oy, ox] += float(weight[o, ch - g * cpg, i, j]) * value
    if bias is not None:
        out += bias.double().reshape(1, -1, 1, 1)
    return out


def _random_case(seed=0, groups=1, offset_groups=2, stride=1, padding=1, dilation=1, scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    b, c, h, w = 2, 4, 5, 6
    c_out, k = 4, 3
    h_out = (h + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    w_out = (w + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    input = torch.randn(b, c, h, w, generator=gen)
    # Offsets up to +-3 px push many taps past the border, so the zero rule is exercised.
    offset = torch.rand(b, 2 * offset_groups * k * k, h_out, w_out, generator=gen)
    offset = (offset - 0.5) * 2 * scale
    mask = torch.rand(b, offset_groups * k * k, h_out, w_out, generator=gen)
    weight = torch.randn(c_out, c // groups, k, k, generator=gen)
    bias = torch.randn(c_out, generator=gen)
    return input, offset, weight, bias, mask


@pytest.mark.parametrize(
    "groups, stride, padding, dilation",
    [(1, 1, 1, 1), (2, 1, 1, 1), (1, 2, 1, 1), (1, 1, 2, 2)],
)
def test_pure_matches_loop_reference(groups, stride, padding, dilation):
    input, offset, weight, bias, mask = _random_case(
        groups=groups, stride=stride, padding=padding, dilation=dilation
    )
    out = deform_conv2d(
        input, offset, weight, bias, stride, padding, dilation, mask, backend="torch"
    )
    ref = _reference(input, offset, weight, bias, stride, padding, dilation, mask)
    assert out.shape == ref.shape
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


def test_pure_without_mask_is_dcn_v1():
    input, offset, weight, bias, _ = _random_case(seed=1)
    out = deform_conv2d(input, offset, weight, bias, 1, 1, 1, None, backend="torch")
    ref = _reference(input, offset, weight, bias, 1, 1, 1, None)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "stride, padding, dilation", [(1, 1, 1), (2, 1, 1), (1, 2, 2), (1, 0, 1)]
)
def test_zero_offsets_unit_mask_is_plain_conv(stride, padding, dilation):
    gen = torch.Generator().manual_seed(2)
    input = torch.randn(2, 6, 9, 11, generator=gen)
    weight = torch.randn(5, 6, 3, 3, generator=gen)
    bias = torch.randn(5, generator=gen)
    expected = F.conv2d(input, weight, bias, stride, padding, dilation)
    h_out, w_out = expected.shape[2:]
    offset = torch.zeros(2, 2 * 3 * 9, h_out, w_out)
    mask = torch.ones(2, 3 * 9, h_out, w_out)
    out = deform_conv2d(
        input, offset, weight, bias, stride, padding, dilation, mask, backend="torch"
    )
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dy, dx", [(1, -2), (-3, 0), (2, 2)])
def test_integer_offsets_are_a_shifted_conv(dy, dx):
    gen = torch.Generator().manual_seed(3)
    input = torch.randn(1, 4, 7, 8, generator=gen)
    weight = torch.randn(3, 4, 3, 3, generator=gen)
    offset = torch.zeros(1, 2 * 9, 7, 8)
    offset[:, 0::2] = dy
    offset[:, 1::2] = dx
    out = deform_conv2d(input, offset, weight, None, 1, 1, 1, None, backend="torch")
    # Tap (i, j) of output (oy, ox) reads the zero-extended input at (oy - 1 + i + dy, ...).
    p = 1 + max(abs(dy), abs(dx))
    full = F.conv2d(F.pad(input, (p, p, p, p)), weight)
    y0, x0 = p - 1 + dy, p - 1 + dx
    expected = full[:, :, y0 : y0 + 7, x0 : x0 + 8]
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_gradients_gradcheck():
    gen = torch.Generator().manual_seed(4)
    input = torch.randn(1, 2, 4, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    # Offsets well away from integers: bilinear sampling has kinks at whole pixels.
    offset = (torch.rand(1, 2 * 2 * 9, 4, 4, generator=gen, dtype=torch.float64) * 0.8 + 0.1)
    offset = (offset * torch.where(torch.rand(offset.shape, generator=gen) > 0.5, 1.0, -1.0))
    offset = offset.double().requires_grad_()
    weight = torch.randn(3, 2, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, generator=gen, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(1, 2 * 9, 4, 4, generator=gen, dtype=torch.float64, requires_grad=True)

    def fn(input, offset, weight, bias, mask):
        return deform_conv2d(input, offset, weight, bias, 1, 1, 1, mask, backend="torch")

    assert torch.autograd.gradcheck(fn, (input, offset, weight, bias, mask), eps=1e-6, atol=1e-5)


def test_batch_chunking_gives_the_same_result(monkeypatch):
    input, offset, weight, bias, mask = _random_case(seed=5)
    whole = deform_conv2d(input, offset, weight, bias, 1, 1, 1, mask, backend="torch")
    monkeypatch.setattr(deform, "COLUMN_BUDGET_BYTES", 1)
    chunked = deform_conv2d(input, offset, weight, bias, 1, 1, 1, mask, backend="torch")
    torch.testing.assert_close(chunked, whole, atol=0, rtol=0)


def test_channels_last_mask_and_input_give_the_same_result():
    input, offset, weight, bias, mask = _random_case(seed=7)
    plain = deform_conv2d(input, offset, weight, bias, 1, 1, 1, mask, backend="torch")
    # What a network hands over: offsets and mask cut from one channels-last conv output.
    packed = torch.cat([offset, mask], 1).contiguous(memory_format=torch.channels_last)
    n = offset.shape[1]
    cl = deform_conv2d(input.contiguous(memory_format=torch.channels_last), packed[:, :n],
                       weight, bias, 1, 1, 1, packed[:, n:], backend="torch")
    torch.testing.assert_close(cl, plain, atol=0, rtol=0)


def test_bf16_input_samples_positions_in_float32():
    """A bf16 feature map (what convolutions give under bf16 autocast) comes back in bf16
    and close to the exact result on the bf16 input, on a row wide enough that bf16
    positions would be whole pixels off (bf16 has 8 significant bits: 257.5 -> 258)."""
    gen = torch.Generator().manual_seed(8)
    input = torch.randn(1, 2, 3, 300, generator=gen).bfloat16()
    weight = torch.randn(2, 2, 3, 3, generator=gen)
    offset = torch.full((1, 2 * 9, 3, 300), 0.5)
    mask = torch.rand(1, 9, 3, 300, generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = deform_conv2d(input, offset, weight, None, 1, 1, 1, mask.bfloat16(),
                            backend="torch")
    assert out.dtype == torch.bfloat16
    ref = _reference(input.float(), offset, weight, None, 1, 1, 1, mask.bfloat16().float())
    scale = ref.abs().max()
    torch.testing.assert_close(out.double() / scale, ref / scale, atol=2e-2, rtol=0)


def test_bad_arguments_raise_value_error():
    input, offset, weight, bias, mask = _random_case()
    with pytest.raises(ValueError, match="offset has"):
        deform_conv2d(input, offset[:, :-1], weight, bias, 1, 1, 1, mask, backend="torch")
    with pytest.raises(ValueError, match="mask"):
        deform_conv2d(input, offset, weight, bias, 1, 1, 1, mask[:, :-1], backend="torch")
    with pytest.raises(ValueError, match="does not match the output"):
        deform_conv2d(input, offset, weight, bias, 2, 1, 1, mask, backend="torch")
    with pytest.raises(ValueError, match="unknown deformable-convolution backend"):
        resolve_backend("cuda")


def test_backend_resolution():
    assert resolve_backend("torch") == "torch"
    expected = "torchvision" if deform.torchvision_available() else "torch"
    assert resolve_backend("auto") == expected
    if not deform.torchvision_available():
        with pytest.raises(ValueError, match="backend='torch'"):
            resolve_backend("torchvision")


def test_pure_matches_torchvision():
    pytest.importorskip("torchvision")
    if not deform.torchvision_available():
        pytest.skip("torchvision is installed but its ops do not load with this torch")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        for groups, stride, padding, dilation in [(1, 1, 1, 1), (2, 2, 1, 1), (1, 1, 2, 2)]:
            args = [
                t.to(device).requires_grad_()
                for t in _random_case(seed=6, groups=groups, stride=stride, padding=padding,
                                      dilation=dilation)
            ]
            input, offset, weight, bias, mask = args
            ours = deform_conv2d(input, offset, weight, bias, stride, padding, dilation, mask,
                                 backend="torch")
            theirs = deform_conv2d(input, offset, weight, bias, stride, padding, dilation, mask,
                                   backend="torchvision")
            torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
            g_ours = torch.autograd.grad(ours.square().sum(), args)
            g_theirs = torch.autograd.grad(theirs.square().sum(), args)
            for a, b_ in zip(g_ours, g_theirs, strict=True):
                torch.testing.assert_close(a, b_, atol=1e-4, rtol=1e-4)
