"""Where one deformable convolution of a training step spends its time on this machine.

Times the pure PyTorch deformable convolution (:func:`napari_xfusion.models.deform.
deform_conv2d`, the CPU path) at the size of the largest call of a ``default``-preset
training step (batch 16, LR crops 64 px: 56 feature maps of 32 channels, 64 x 64 pixels,
4 offset groups, bf16 autocast), forward and forward + backward, and the share of its
bilinear sampling (``grid_sample`` in float32): forward, backward to the input alone, and
backward to the input and the sampling grid. The input's gradient is a scatter of every
sampled value back to its four neighbours; ``--scatter`` also times the same scatter
written with ``scatter_add_`` and ``index_add_``, the alternatives to ``grid_sample``'s
own backward.

Run::

    python benchmarks/bench_deform.py
    python benchmarks/bench_deform.py --scatter
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from napari_xfusion.devices import retain_freed_memory
from napari_xfusion.models.deform import deform_conv2d


def median_seconds(fn, repeats: int) -> float:
    """Median wall time of ``repeats`` calls of ``fn`` after one untimed call."""
    fn()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=56)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scatter", action="store_true",
                        help="also time the input gradient written as scatter_add_/index_add_")
    args = parser.parse_args()
    n, c, s, g, taps = args.images, args.channels, args.size, args.groups, 9
    torch.manual_seed(0)
    channels_last = torch.channels_last

    def leaf(*shape, scale=1.0):
        x = (torch.randn(*shape) * scale).to(torch.bfloat16)
        return x.contiguous(memory_format=channels_last).requires_grad_()

    x, offset = leaf(n, c, s, s), leaf(n, 2 * g * taps, s, s, scale=2.0)
    mask = torch.rand(n, g * taps, s, s).to(torch.bfloat16).requires_grad_()
    weight = (torch.randn(c, c, 3, 3) / (3 * c**0.5)).requires_grad_()

    def forward():
        with torch.autocast("cpu", torch.bfloat16):
            return deform_conv2d(x, offset, weight, None, 1, 1, 1, mask, backend="torch")

    def forward_backward():
        forward().float().sum().backward()

    values = torch.randn(n * g, c // g, s, s, requires_grad=True)
    grid = (torch.rand(n * g, taps * s, s, 2) * 2 - 1).requires_grad_()
    fixed_grid = grid.detach()

    def sample(grid_):
        return F.grid_sample(values, grid_, align_corners=False)

    def backward(grid_):
        out = sample(grid_)
        out.backward(torch.ones_like(out))

    print(f"{n} maps of {c} channels, {s} x {s} px, {g} offset groups, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    rows = [
        ("deformable convolution, forward", forward),
        ("deformable convolution, forward + backward", forward_backward),
        ("grid_sample forward", lambda: sample(fixed_grid)),
        ("grid_sample forward + backward to the input", lambda: backward(fixed_grid)),
        ("grid_sample forward + backward to input and grid", lambda: backward(grid)),
    ]
    if args.scatter:
        # The input gradient of bilinear sampling as the library's scatters: four corner
        # gathers' worth of (image, pixel) rows of c // g channels each.
        samples = n * g * taps * s * s
        rows_grad = torch.randn(samples, c // g)
        weights = torch.rand(samples, 1)
        index = (torch.randint(0, s * s, (n * g, taps * s * s))
                 + torch.arange(n * g)[:, None] * s * s).reshape(-1)

        def scatter(method):
            grad = torch.zeros(n * g * s * s, c // g)
            for _ in range(4):
                if method == "scatter_add_":
                    grad.scatter_add_(0, index[:, None].expand(-1, c // g), rows_grad * weights)
                else:
                    grad.index_add_(0, index, rows_grad * weights)

        rows += [(f"the input gradient with {m}", lambda m=m: scatter(m))
                 for m in ("scatter_add_", "index_add_")]
    with retain_freed_memory():
        for name, fn in rows:
            print(f"{name:<50} {median_seconds(fn, args.repeats):6.3f} s")


if __name__ == "__main__":
    main()
