"""Speed and memory of the fusion engine: ms per output frame and peak memory.

For each preset and HR frame size it times

* ``reference``: one whole-frame fp32 forward at batch 1 (what the paper's code does),
* ``engine``: the tiled engine with the chosen precision, tile, overlap and batch, on one
  output frame,
* ``sequence``: the engine over a short sequence (``--sequence`` outputs, keyframes every 10
  frames), per output frame, computing every input's features for each output that reads
  it (``per output``) and computing them once and reusing them (``reuse``, the default),

and, for mixed precision, the PSNR between its output and the fp32 output (the output must
stay within 0.1 dB of fp32 quality; a PSNR far above 50 dB between them guarantees that).

Run::

    python benchmarks/bench_engine.py                      # CPU, default preset, small
    python benchmarks/bench_engine.py --device cuda --presets paper default \
        --sizes 400x1024 1024x1024 --precisions fp32 bf16
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import time

import numpy as np
import torch

from napari_xfusion.config import EngineConfig, ModelConfig, TimeModel
from napari_xfusion.devices import resolve_device
from napari_xfusion.engine import Engine
from napari_xfusion.metrics import psnr
from napari_xfusion.models import build_model, bundled_weights_path, count_parameters, load_weights
from napari_xfusion.synthetic import synthetic_lpbf
from napari_xfusion.timeline import FrameInputs, Timeline

#: Keyframe spacing of the ``sequence`` timings.
SEQUENCE_SPACING = 10


#: Where the frames of :func:`frame_inputs` were taken: LR 1, 2, 3 and keyframes 0 and 4.
FRAME = FrameInputs(t=2, lr=(1, 2, 3), hr=(0, 1), hr_times=(0, 4), is_keyframe=False)


def frame_inputs(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Three LR frames and two HR keyframes of the synthetic scene at an HR size (FRAME)."""
    truth = synthetic_lpbf(n_frames=5, height=height, width=width, seed=1)
    lr = truth[list(FRAME.lr)].reshape(3, height // 4, 4, width // 4, 4).mean(axis=(2, 4))
    return lr.astype(np.float32), truth[list(FRAME.hr_times)]


def sequence_inputs(height: int, width: int, n: int) -> tuple[np.ndarray, np.ndarray, Timeline]:
    """An LR sequence of ``n`` frames of the synthetic scene, its HR keyframes and timeline."""
    truth = synthetic_lpbf(n_frames=n, height=height, width=width, seed=1)
    lr = truth.reshape(n, height // 4, 4, width // 4, 4).mean(axis=(2, 4)).astype(np.float32)
    model = TimeModel(spacing=SEQUENCE_SPACING)
    keys = np.arange(0, n, SEQUENCE_SPACING)
    return lr, truth[keys], Timeline(n, len(keys), model)


def time_sequence(engine: Engine, lr, hr, timeline: Timeline) -> float:
    """Wall time per output frame in ms of one engine pass over a sequence, after a warm-up."""
    engine.fuse_frame(lr[:3], hr[:2], FRAME)
    sync(engine.device)
    start = time.perf_counter()
    for _ in engine.run(lr, hr, timeline):
        pass
    sync(engine.device)
    return (time.perf_counter() - start) * 1e3 / timeline.n_lr


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10


def time_call(fn, device: torch.device, repeats: int) -> float:
    """Median wall time of ``fn()`` in ms, after one warm-up call."""
    fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


def reference_forward(model, lr: np.ndarray, hr: np.ndarray, device: torch.device):
    """Whole-frame fp32 batch-1 forward, as the reference implementation runs it."""
    lr_t = torch.from_numpy(lr)[None, :, None].to(device)
    hr_t = torch.from_numpy(hr)[None, :, None].to(device)
    position = torch.tensor([FRAME.position], device=device)

    def run():
        with torch.inference_mode():
            return model(lr_t, hr_t, position)[0][0, 0].float().cpu().numpy()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--presets", nargs="+", default=["default"])
    parser.add_argument("--sizes", nargs="+", default=["400x1024"], help="HR frame sizes HxW")
    parser.add_argument("--precisions", nargs="+", default=["fp32"])
    parser.add_argument("--tile", type=int, default=None, help="LR tile size (default auto)")
    parser.add_argument("--overlap", type=int, default=EngineConfig.overlap)
    parser.add_argument("--batch", type=int, default=EngineConfig.batch)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-reference", action="store_true", help="skip the whole-frame forward")
    parser.add_argument("--sequence", type=int, default=12,
                        help="outputs of the sequence timings (0 skips them)")
    parser.add_argument(
        "--trained", action="store_true",
        help="use the bundled trained weights for the default preset (random weights otherwise)",
    )
    args = parser.parse_args()

    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {device} ({name}), torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}")
    print(f"tile {args.tile}, overlap {args.overlap}, batch {args.batch}")
    print(f"{'preset':8s} {'size':>10s} {'path':>16s} {'ms/frame':>10s} {'peak MB':>9s} "
          f"{'PSNR vs fp32':>13s}")
    for preset in args.presets:
        torch.manual_seed(0)
        if args.trained and preset == "default":
            model = load_weights(bundled_weights_path("stf"), device=device)
        else:
            model = build_model(ModelConfig.preset(preset)).to(device).eval()
        params = count_parameters(model) / 1e6
        for size in args.sizes:
            height, width = (int(v) for v in size.lower().split("x"))
            lr, hr = frame_inputs(height, width)
            reference = None
            if not args.no_reference:
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                run = reference_forward(model, lr, hr, device)
                ms = time_call(run, device, args.repeats)
                reference = run()
                print(f"{preset:8s} {size:>10s} {'reference fp32':>16s} {ms:10.1f} "
                      f"{peak_memory_mb(device):9.0f} {'':>13s}  ({params:.2f} M params)")
            for precision in args.precisions:
                engine = Engine(model, EngineConfig(
                    device=str(device), tile=args.tile, overlap=args.overlap,
                    batch=args.batch, precision=precision,
                ))
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                ms = time_call(
                    lambda engine=engine, lr=lr, hr=hr: engine.fuse_frame(lr, hr, FRAME),
                    device, args.repeats,
                )
                out, _ = engine.fuse_frame(lr, hr, FRAME)
                quality = ""
                if reference is not None:
                    quality = f"{psnr(out, np.clip(reference, 0, 1)):13.1f}"
                print(f"{preset:8s} {size:>10s} {'engine ' + precision:>16s} {ms:10.1f} "
                      f"{peak_memory_mb(device):9.0f} {quality}")
                model = engine.model  # the engine may have moved it to channels-last
                if args.sequence:
                    sequence = sequence_inputs(height, width, args.sequence)
                    caches = (("per output", 0), ("reuse", EngineConfig.feature_cache_mb))
                    for label, cache_mb in caches:
                        config = dataclasses.replace(engine.config, feature_cache_mb=cache_mb)
                        engine = Engine(model, config)
                        if device.type == "cuda":
                            torch.cuda.reset_peak_memory_stats(device)
                        ms = time_sequence(engine, *sequence)
                        print(f"{preset:8s} {size:>10s} {f'{precision} {label}':>16s} {ms:10.1f} "
                              f"{peak_memory_mb(device):9.0f}")


if __name__ == "__main__":
    main()
