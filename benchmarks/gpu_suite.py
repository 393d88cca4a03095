"""Checks and figures that need a GPU, in one run that fits one device call.

Writes under ``--out`` (default ``$OUT``):

* ``machine.txt``: GPU, driver, torch and CUDA versions;
* ``deform.txt``: the pure-PyTorch deformable convolution against torchvision's, forward and
  gradients, on the GPU (what ``tests/models/test_deform.py`` checks where pytest exists);
* ``flops.txt``: floating-point operations of one whole-frame forward per preset and frame
  size (``torch.utils.flop_counter``; the deformable convolutions' sampling is not counted,
  their convolution is), so that ms/frame converts to achieved TFLOP/s;
* ``engine.txt``: ``benchmarks/bench_engine.py`` for each preset, size and precision:
  the fp32 whole-frame reference, the engine, and the engine over a sequence with feature
  reuse, with peak memory and the PSNR of reduced precision against fp32.

Every step has its own time budget and the suite goes on after a failed step, so a
9-minute device call always brings back what it measured. ``--quick`` runs the same steps
small on the CPU, to try the script here before device time is spent::

    PYTHONPATH=src python benchmarks/gpu_suite.py --quick --out /tmp/suite
    # on the device machine (one call, under 9 minutes):
    PYTHONPATH=src python benchmarks/gpu_suite.py
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from napari_xfusion.config import ModelConfig
from napari_xfusion.models import build_model
from napari_xfusion.models import deform as deform_module

HERE = Path(__file__).resolve().parent


def machine(out: Path, device: str) -> None:
    lines = [f"python {platform.python_version()}, torch {torch.__version__}, "
             f"cuda {torch.version.cuda}, device {device}"]
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        lines.append(f"{props.name}, {props.total_memory / 2**30:.0f} GiB, "
                     f"{props.multi_processor_count} SMs")
        try:
            lines.append(subprocess.run(["nvidia-smi"], capture_output=True, text=True,
                                        timeout=20).stdout)
        except (OSError, subprocess.TimeoutExpired):
            lines.append("nvidia-smi not available")
    else:
        lines.append(f"{os.cpu_count()} CPU cores")
    (out / "machine.txt").write_text("\n".join(lines) + "\n")


def deform_agreement(out: Path, device: str) -> None:
    """Largest difference between the two deformable-convolution backends."""
    lines = []
    if not deform_module.torchvision_available():
        lines.append("torchvision's deformable convolution does not load here: not compared")
    else:
        gen = torch.Generator().manual_seed(6)
        for groups, stride, padding, dilation in [(1, 1, 1, 1), (2, 2, 1, 1), (1, 1, 2, 2)]:
            n, c, h, w, k = 2, 8, 12, 13, 3
            ho = (h + 2 * padding - dilation * (k - 1) - 1) // stride + 1
            wo = (w + 2 * padding - dilation * (k - 1) - 1) // stride + 1
            tensors = [
                torch.randn(n, c, h, w, generator=gen),
                2 * torch.randn(n, 2 * groups * k * k, ho, wo, generator=gen),
                torch.randn(16, c, k, k, generator=gen),
                torch.randn(16, generator=gen),
                torch.rand(n, groups * k * k, ho, wo, generator=gen),
            ]
            args = [t.to(device).requires_grad_() for t in tensors]
            x, offset, weight, bias, mask = args
            results = {}
            for backend in ("torch", "torchvision"):
                y = deform_module.deform_conv2d(x, offset, weight, bias, stride, padding,
                                                dilation, mask, backend=backend)
                grads = torch.autograd.grad(y.square().sum(), args)
                results[backend] = (y, grads)
            forward = (results["torch"][0] - results["torchvision"][0]).abs().max().item()
            backward = max((a - b).abs().max().item()
                           for a, b in zip(results["torch"][1], results["torchvision"][1],
                                           strict=True))
            verdict = "ok" if forward < 1e-4 and backward < 1e-3 else "DIFFERENT"
            lines.append(f"groups {groups} stride {stride} padding {padding} dilation "
                         f"{dilation}: forward {forward:.2e}, gradients {backward:.2e} {verdict}")
    (out / "deform.txt").write_text("\n".join(lines) + "\n")


def flops(out: Path, device: str, presets: list[str], sizes: list[str]) -> None:
    """FLOPs of one whole-frame forward (batch 1) per preset and HR size."""
    from torch.utils.flop_counter import FlopCounterMode

    lines = []
    for preset in presets:
        model = build_model(ModelConfig.preset(preset)).to(device).eval()
        for size in sizes:
            height, width = (int(v) for v in size.lower().split("x"))
            lr = torch.rand(1, 3, 1, height // 4, width // 4, device=device)
            hr = torch.rand(1, 2, 1, height, width, device=device)
            position = torch.tensor([0.25], device=device)
            counter = FlopCounterMode(display=False)
            with torch.inference_mode(), counter:
                model(lr, hr, position)
            total = counter.get_total_flops()
            lines.append(f"{preset} {size}: {total / 1e12:.3f} TFLOP per frame")
        del model
    (out / "flops.txt").write_text("\n".join(lines) + "\n")


def engine(out: Path, device: str, presets: list[str], sizes: list[str], precisions: list[str],
           budget_s: float, sequence: int, repeats: int) -> None:
    """bench_engine.py for each preset, each under its share of the budget."""
    with open(out / "engine.txt", "w") as fh:
        for preset in presets:
            command = [sys.executable, str(HERE / "bench_engine.py"), "--device", device,
                       "--presets", preset, "--sizes", *sizes, "--precisions", *precisions,
                       "--sequence", str(sequence), "--repeats", str(repeats)]
            fh.write("$ " + " ".join(command[1:]) + "\n")
            fh.flush()
            try:
                subprocess.run(command, stdout=fh, stderr=subprocess.STDOUT, check=False,
                               timeout=budget_s / len(presets))
            except subprocess.TimeoutExpired:
                fh.write(f"(stopped after {budget_s / len(presets):.0f} s)\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="small sizes on the CPU, to try the suite without a GPU")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu-suite")))
    parser.add_argument("--budget", type=float, default=420.0,
                        help="seconds for the engine timings (default 420)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.quick:
        device, presets, sizes, precisions = "cpu", ["tiny", "default"], ["64x128"], ["fp32"]
        sequence, repeats = 12, 1
    else:
        if not torch.cuda.is_available():
            sys.exit("no CUDA device here: run with --quick to try the suite on the CPU.")
        device, presets = "cuda", ["paper", "default"]
        sizes, precisions = ["400x1024", "1024x1024"], ["fp32", "bf16"]
        sequence, repeats = 12, 5
    steps = [
        ("machine", lambda: machine(args.out, device)),
        ("deform", lambda: deform_agreement(args.out, device)),
        ("flops", lambda: flops(args.out, device, presets, sizes)),
        ("engine", lambda: engine(args.out, device, presets, sizes, precisions, args.budget,
                                  sequence, repeats)),
    ]
    for name, step in steps:
        start = time.perf_counter()
        try:
            step()
            status = "done"
        except Exception as err:  # noqa: BLE001 - the suite goes on and reports it
            status = f"failed: {err!r}"
        print(f"{name}: {status} in {time.perf_counter() - start:.0f} s", flush=True)
    for path in sorted(args.out.glob("*.txt")):
        print(f"\n== {path.name}\n{path.read_text()}")


if __name__ == "__main__":
    main()
