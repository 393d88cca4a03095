"""The ``xfusion`` command line.

Stateless: every setting is a flag with a default, and ``--help`` works before anything is
configured. Errors in the input print one line naming the problem and the fix, and exit with
status 2; no half-written output is left under the output name.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from .config import EngineConfig, NoiseConfig, OpticsConfig, TimeModel, TrainConfig
from .methods import (
    calibrated_methods,
    create_method,
    method_aligns_keyframes,
    method_names,
    method_network,
)

#: Keyframe spacing when neither a flag nor a registration gives one.
DEFAULT_SPACING = 10

if TYPE_CHECKING:
    from .pipeline import FusionResult


class ProgressBar:
    """A text progress bar on stderr: frames done, frames/s and time left.

    On a terminal it redraws one line at most ten times a second; in a log file it writes a
    line every 10% so that logs stay short.
    """

    def __init__(self, label: str, stream=None) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.start = time.perf_counter()
        self.interactive = self.stream.isatty()
        self._last_draw = 0.0
        self._last_decile = -1

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        finished = done >= total
        decile = 10 * done // max(total, 1)
        if self.interactive and not finished and now - self._last_draw < 0.1:
            return
        if not self.interactive and not finished and decile == self._last_decile:
            return
        self._last_draw, self._last_decile = now, decile
        elapsed = now - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        left = (total - done) / rate if rate > 0 else 0.0
        width = 24
        filled = int(width * done / max(total, 1))
        bar = "#" * filled + "-" * (width - filled)
        line = f"{self.label} [{bar}] {done}/{total} frames, {rate:.2f} frames/s, {left:.0f} s left"
        if self.interactive:
            self.stream.write("\r" + line + ("\n" if finished else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def _add_time_model(parser: argparse.ArgumentParser, keyframes_default: bool = True) -> None:
    group = parser.add_argument_group("time model")
    default = (
        "Default: from --registration if given, else {}." if keyframes_default
        else "Default: read from the fused file."
    )
    group.add_argument(
        "--spacing", "-D", type=int, default=None,
        help="HR keyframe spacing D: LR frames per HR frame (the frame-rate ratio). "
        + default.format(DEFAULT_SPACING),
    )
    group.add_argument(
        "--offset", type=int, default=None,
        help="LR frame index at which the first HR frame was taken (trigger offset). "
        + default.format(0),
    )
    group.add_argument(
        "--separation", "-r", type=int, default=1,
        help="LR frame separation r: the inputs are LR frames t-r, t, t+r. Default 1.",
    )
    group.add_argument("--scale", type=int, default=4, help="HR/LR pixel size ratio. Default 4.")


def _add_stack_inputs(parser: argparse.ArgumentParser, output_help: str | None = None) -> None:
    """The LR and HR stacks, the output (if any), the time model and the cameras'
    registration, shared by the commands that read a recording."""
    parser.add_argument("lr", help="LR stack: multi-page TIFF, folder of TIFF frames, Photron "
                        ".cih/.mraw, Phantom .cine, or HDF5 (file.h5 or file.h5::/path/to/data)")
    parser.add_argument("hr", help="HR keyframes, in the same forms")
    if output_help is not None:
        parser.add_argument("-o", "--output", required=True, help=output_help)
    _add_time_model(parser)
    parser.add_argument(
        "--hr-full-rate", action="store_true",
        help="the HR stack has a frame at every LR time; keep every D-th from the offset",
    )
    parser.add_argument(
        "--registration", metavar="FILE",
        help="the cameras' registration (from xfusion register): crop the LR stack to the "
        "common field of view and resample the HR keyframes onto it",
    )


def _add_network_options(parser: argparse.ArgumentParser) -> None:
    net = parser.add_argument_group("neural methods (stf, edvr)")
    net.add_argument("--weights", help="weights file (default: the bundled weights)")
    net.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    net.add_argument("--tile", type=int, default=None,
                     help="tile size in LR pixels, 0 = whole frames (default: whole frames up "
                     "to 256x256 LR pixels, 256-pixel tiles above)")
    net.add_argument("--overlap", type=int, default=EngineConfig.overlap,
                     help=f"tile overlap in LR pixels (default {EngineConfig.overlap})")
    net.add_argument("--batch", type=int, default=EngineConfig.batch,
                     help=f"tiles per forward pass (default {EngineConfig.batch})")
    net.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                     help="auto = bf16 on CUDA and on CPUs with native bf16, else fp32")


def _time_model(args: argparse.Namespace, registration=None) -> TimeModel:
    """The time model of the flags; those not given come from the registration, if any."""
    spacing, offset = args.spacing, args.offset
    if registration is not None:
        known = registration.time_model
        spacing = known.spacing if spacing is None else spacing
        offset = known.offset if offset is None else offset
    return TimeModel(
        spacing=DEFAULT_SPACING if spacing is None else spacing,
        offset=0 if offset is None else offset,
        separation=args.separation, scale=args.scale,
    )


def _propose_timing(args: argparse.Namespace) -> None:
    """Fill a missing --spacing/--offset from the frame rates and trigger times the
    cameras' files record, and say so."""
    if args.spacing is not None and args.offset is not None:
        return
    from .io import open_camera_file, propose_time_model

    timings = []
    for path, name in ((args.lr, "LR stack"), (args.hr, "HR stack")):
        reader = open_camera_file(path, name)
        timings.append(getattr(reader, "timing", None))
    if None in timings:
        return
    spacing, offset = propose_time_model(*timings)
    lr, hr = timings
    if args.spacing is None:
        args.spacing = spacing
    if args.offset is None:
        args.offset = offset
    print(
        f"from the files: LR {lr.rate:g} frames/s, HR {hr.rate:g} frames/s, first frames at "
        f"{lr.first_frame * 1e6:+.3f} and {hr.first_frame * 1e6:+.3f} us from the trigger: "
        f"spacing {spacing}, offset {offset} (used where not given; checked below)"
    )


def _registration(args: argparse.Namespace):
    """The registration named by ``--registration``, or None."""
    if getattr(args, "registration", None) is None:
        return None
    from .registration import Registration

    return Registration.load(args.registration)


def _open_recording(args: argparse.Namespace):
    """The recording's normalized stacks (:func:`~napari_xfusion.pipeline.prepare_inputs`)."""
    from .pipeline import prepare_inputs

    registration = _registration(args)
    inputs = prepare_inputs(
        args.lr, args.hr, _time_model(args, registration), hr_full_rate=args.hr_full_rate,
        registration=registration,
    )
    _warn(inputs.timeline.warnings())
    if inputs.lr_filter is not None:
        print(inputs.lr_filter.describe())
    return inputs


def _warn(lines: list[str]) -> None:
    """Print each sentence as a warning on stderr."""
    for line in lines:
        print(f"warning: {line}", file=sys.stderr)


def _frames(spec: str | None) -> list[int] | None:
    """Parse ``--frames``: ``START:STOP`` (stop exclusive) or a comma-separated list."""
    if spec is None:
        return None
    try:
        if ":" in spec:
            start, stop = spec.split(":", 1)
            return list(range(int(start or 0), int(stop)))
        return [int(t) for t in spec.split(",")]
    except ValueError:
        raise ValueError(
            f"--frames {spec!r} is not understood: use START:STOP (e.g. 0:100) or a list (3,7,9)."
        ) from None


def _method_options(args: argparse.Namespace, name: str) -> dict:
    """Keyword options of method ``name`` from the command line (networks only)."""
    arch = method_network(name)
    if arch is None:
        return {}
    engine = EngineConfig(
        device=args.device, tile=args.tile, overlap=args.overlap, batch=args.batch,
        precision=args.precision,
    )
    weights = args.weights
    if weights is not None and getattr(args, "method", "auto") == "auto":
        # Among several candidate networks, a weights file serves the one of its architecture.
        from .models import read_metadata

        weights_arch = json.loads(read_metadata(weights)["model_config"]).get("arch")
        weights = weights if weights_arch == arch else None
    return {"weights": weights, "engine": engine}


def _choose_method(args: argparse.Namespace, inputs) -> str:
    """``--method auto``: assess every method that runs here on the keyframes, pick the best."""
    from .assess import assess, candidate_methods

    methods, skipped = candidate_methods(lambda name: _method_options(args, name))
    for name, reason in skipped.items():
        print(f"auto: leaving out {name}: {reason}", file=sys.stderr)
    assessment = assess(
        inputs.lr, inputs.hr, inputs.timeline, methods, lr_smoothed=inputs.lr_smoothed,
        progress=ProgressBar("assessing the methods on the keyframes"),
    )
    print(assessment.table())
    best = assessment.best
    print(f"auto: fusing with {best.name} ({best.label}), the best on this recording's keyframes")
    return best.name


def cmd_fuse(args: argparse.Namespace) -> int:
    from .io import check_output_path
    from .pipeline import alignment_notes, fuse_to_file, motion_warnings

    if args.workers is not None or args.chunk_frames is not None:
        if args.scheduler is None:
            raise ValueError(
                "--workers and --chunk-frames apply to a dask cluster: add --scheduler ADDRESS "
                "(or --scheduler local)."
            )
    if args.scheduler is not None:
        if args.resume:
            raise ValueError(
                "--resume continues runs of one process; a cluster run starts afresh: drop "
                "--resume and pass --overwrite."
            )
        check_output_path(args.output, overwrite=args.overwrite)
        # Opened lazily here for what is decided before the cluster starts: the method for
        # auto, the motion warning otherwise (a few frames read).
        inputs = _open_recording(args)
        if args.method == "auto":
            args.method = _choose_method(args, inputs)
        else:
            _warn(motion_warnings(inputs, args.method))
        result = _fuse_on_cluster(args, inputs)
    else:
        # Options and the output path are checked before the slow work starts.
        if args.method != "auto":
            method = create_method(args.method, **_method_options(args, args.method))
        check_output_path(args.output, overwrite=args.overwrite, resume=args.resume)
        inputs = _open_recording(args)
        if args.method == "auto":
            chosen = _choose_method(args, inputs)
            method = create_method(chosen, **_method_options(args, chosen))
        else:  # auto weighed the methods on the recording already
            _warn(motion_warnings(inputs, args.method))
        for line in alignment_notes(inputs, method):
            print(f"{method.name}: {line}")
        result = fuse_to_file(
            inputs, method, args.output, overwrite=args.overwrite, frames=_frames(args.frames),
            progress=ProgressBar(f"fusing ({method.label})"), resume=args.resume,
        )
    print(f"wrote {result.frames} fused frames to {result.path} in {result.seconds:.1f} s")
    if result.attention_path is not None:
        print(f"attention scores: {result.attention_path}")
    return 0


def _fuse_on_cluster(args: argparse.Namespace, inputs) -> FusionResult:
    """Fuse on the dask cluster of ``--scheduler``, from the recording opened already."""
    from .distributed import DEFAULT_CHUNK_FRAMES, connect, fuse_distributed

    registration = _registration(args)
    with connect(args.scheduler, args.workers) as client:
        return fuse_distributed(
            args.lr, args.hr, _time_model(args, registration), args.method, args.output, client,
            method_options=_method_options(args, args.method), hr_full_rate=args.hr_full_rate,
            chunk_frames=args.chunk_frames or DEFAULT_CHUNK_FRAMES, overwrite=args.overwrite,
            frames=_frames(args.frames), progress=ProgressBar(f"fusing ({args.method}, cluster)"),
            registration=registration, prepared=inputs,
        )


def cmd_assess(args: argparse.Namespace) -> int:
    from .assess import assess, candidate_methods

    methods, skipped = candidate_methods(lambda name: _method_options(args, name))
    if args.methods:
        unknown = sorted(set(args.methods) - set(methods) - set(skipped))
        if unknown:
            raise ValueError(
                f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(methods)}."
            )
        methods = {name: m for name, m in methods.items() if name in args.methods}
        skipped = {name: r for name, r in skipped.items() if name in args.methods}
    for name, reason in skipped.items():
        print(f"leaving out {name}: {reason}", file=sys.stderr)
    from .models import check_weights_file, read_metadata

    for path in args.calibrated or []:
        # Weights calibrated on aligned keyframes are meant for a method that aligns them.
        aligned = read_metadata(check_weights_file(path, "stf")).get("aligned_keyframes")
        name = next(m for m in calibrated_methods()
                    if method_aligns_keyframes(m) == (aligned == "true"))
        engine = _method_options(args, name)["engine"]
        methods[f"{name} ({Path(path).name})"] = create_method(name, weights=path,
                                                               engine=engine)
    inputs = _open_recording(args)
    assessment = assess(
        inputs.lr, inputs.hr, inputs.timeline, methods, lr_smoothed=inputs.lr_smoothed,
        keyframes=None if args.keyframes == 0 else args.keyframes,
        progress=ProgressBar("predicting keyframes"),
    )
    print(
        f"each of keyframes {assessment.keyframes} predicted from its neighbours "
        f"({2 * inputs.timeline.model.spacing} frames apart, twice the spacing: the figures "
        "are conservative, the ranking is what counts)"
    )
    print(assessment.table())
    print(f"recommended: --method {assessment.recommended}"
          if assessment.recommended in method_names() else
          f"recommended: {assessment.recommended}")
    return 0


def cmd_register(args: argparse.Namespace) -> int:
    from .io import check_output_path, read_image
    from .registration import register

    out = check_output_path(args.output, overwrite=args.overwrite, suffixes=(".json",))
    _propose_timing(args)
    target = None
    if args.target:
        target = [read_image(path, name=f"{camera} target image")
                  for camera, path in zip(("LR", "HR"), args.target, strict=True)]
    with warnings.catch_warnings(record=True):  # the registration lists its own warnings
        warnings.simplefilter("always")
        registration = register(
            args.lr, args.hr, _time_model(args), estimate_offset=args.estimate_offset,
            offset_window=args.offset_window, pairs=args.pairs, target=target,
            ratio_range=tuple(args.ratio_range), max_rotation=args.max_rotation,
        )
    registration.save(out)
    t, m = registration.transform, registration.time_model
    y0, y1, x0, x1 = registration.crop
    offsets = registration.offsets
    print(
        f"HR pixels per LR pixel {t.ratio_y:.4f} (rows) x {t.ratio_x:.4f} (columns), rotation "
        f"{t.rotation_deg:+.3f} deg, mirrored {'rows ' if t.flip_y else ''}"
        f"{'columns' if t.flip_x else ''}{'' if t.flip_y or t.flip_x else 'no'}, shift "
        f"({t.shift_y:+.2f}, {t.shift_x:+.2f}) LR px"
    )
    print(
        f"agreement {registration.similarity:.3f}, search margin {registration.margin:.2f}, "
        f"residual misalignment {registration.residual:.3f} LR px"
    )
    print(
        f"common field of view: LR rows {y0}..{y1 - 1}, columns {x0}..{x1 - 1} "
        f"({y1 - y0}x{x1 - x0} LR px, fused at {m.scale}x)"
    )
    second = "" if offsets["second"] is None else (
        f"; second best {offsets['second'][0]} ({offsets['second'][1]:.4f})")
    source = "estimated" if registration.offset_estimated else "as given"
    print(f"keyframe offset {m.offset} ({source}); best match {offsets['best'][0]} "
          f"({offsets['best'][1]:.4f}){second}")
    _warn(registration.warnings)
    print(f"wrote {out}: use it with --registration {out}")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from .pipeline import simulate_to_files

    noise = NoiseConfig(b0=args.b0, target_psnr=args.noise_psnr, seed=args.seed)
    optics = OpticsConfig(blur=args.lr_blur, shift=tuple(args.lr_shift),
                          shading=args.lr_shading)
    written = simulate_to_files(
        args.hr, args.out_dir, _time_model(args), noise, overwrite=args.overwrite,
        progress=ProgressBar("simulating"), optics=optics,
    )
    for label, path in written.items():
        print(f"{label}: {path}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_files, format_summary

    time_model = None
    if (args.spacing is None) != (args.offset is None):
        raise ValueError(
            "give both --spacing and --offset, or neither to read them from the fused file."
        )
    if args.spacing is not None:
        time_model = TimeModel(spacing=args.spacing, offset=args.offset)
    evaluation = evaluate_files(args.fused, args.truth, time_model)
    print(format_summary({Path(args.fused).name: evaluation.summary()}))
    if args.csv:
        evaluation.write_csv(args.csv)
        print(f"per-frame metrics: {args.csv}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(
        args.out_dir, n_frames=args.frames, overwrite=args.overwrite, methods=args.methods,
        progress_factory=ProgressBar,
    )
    return 0


def cmd_convert_weights(args: argparse.Namespace) -> int:
    from .config import ModelConfig
    from .models.weights import convert_pth

    config = ModelConfig.preset(args.preset, arch=args.arch)
    path = convert_pth(args.src, args.dst, config)
    print(f"wrote {path} ({args.arch}, preset {args.preset})")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .training.train import train

    config = replace(
        TrainConfig(),
        preset=args.preset, arch=args.arch, iterations=args.iterations,
        batch_size=args.batch_size, seed=args.seed, device=args.device,
        out_dir=args.out_dir, data_file=args.data_file, real_dir=args.real_dir,
        max_minutes=args.max_minutes, init_weights=args.init_weights,
        lr_crop=args.lr_crop, noise_free_fraction=args.noise_free_fraction,
        aligned_fraction=args.aligned_fraction, pan_fraction=args.pan_fraction,
        optics_fraction=args.optics_fraction, loader_processes=args.loader_processes,
    )
    path = train(config, resume=not args.restart)
    print(f"weights: {path}")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from .config import CalibrationConfig
    from .io import check_output_path
    from .training.calibrate import calibrate

    out = check_output_path(args.output, overwrite=args.overwrite, suffixes=(".safetensors",))
    config = CalibrationConfig(
        iterations=args.iterations, max_minutes=args.max_minutes, device=args.device,
        out=str(out), align_keyframes=method_aligns_keyframes(args.method),
    )
    inputs = _open_recording(args)
    result = calibrate(inputs.lr, inputs.hr, inputs.timeline, config, weights=args.weights)
    if result.helped:
        print(f"use the calibrated weights: --method {args.method} --weights "
              f"{result.weights_path}")
    else:
        print(
            f"keep using --weights {result.recommended} (the calibrated ones are in "
            f"{result.weights_path} should you want to compare them yourself)"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``xfusion`` and its subcommands."""
    parser = argparse.ArgumentParser(
        prog="xfusion",
        description="Fuse a fast low-resolution (LR) x-ray video with a slow high-resolution "
        "(HR) one into a sequence with both the frame rate and the detail.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log details to stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("fuse", help="fuse an LR stack and HR keyframes into one HR stack")
    _add_stack_inputs(p, "output stack (.tif BigTIFF or .zarr)")
    p.add_argument(
        "--method", "-m", default="stf-aligned", choices=[*method_names(), "auto"],
        help="fusion method (default: stf-aligned, the bundled network with the keyframes "
        "aligned where the recording moves, as in the napari dock); auto: the best on this "
        "recording's keyframes (see xfusion assess)",
    )
    p.add_argument("--frames", help="fuse only these LR times: START:STOP or a list 1,5,9")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument(
        "--resume", action="store_true",
        help="continue an interrupted run to this output from its .incomplete file (same "
        "inputs and settings); the result equals an uninterrupted run",
    )
    _add_network_options(p)
    dist = p.add_argument_group(
        "many GPUs or nodes (dask.distributed; pip install \"napari-xfusion[distributed]\")"
    )
    dist.add_argument("--scheduler", metavar="ADDRESS",
                      help="fuse on the dask cluster at this address (tcp://host:8786), or "
                      "'local' to start one on this machine; see docs/cluster.md")
    dist.add_argument("--workers", type=int,
                      help="workers of --scheduler local (default: one per GPU, else one per "
                      "CPU core)")
    dist.add_argument("--chunk-frames", type=int,
                      help="output frames per cluster task (default 64)")
    p.set_defaults(func=cmd_fuse)

    p = sub.add_parser(
        "assess",
        help="which method suits this recording: predict each keyframe from its neighbours "
        "with every method and compare",
    )
    _add_stack_inputs(p)
    p.add_argument("--methods", nargs="+", help="methods to compare (default: all that run here)")
    p.add_argument("--calibrated", nargs="+", metavar="WEIGHTS",
                   help="also compare EDVR-STF with these weights (e.g. from xfusion calibrate)")
    p.add_argument("--keyframes", type=int, default=12,
                   help="most keyframes to predict, evenly spread; 0 = all (default 12)")
    _add_network_options(p)
    p.set_defaults(func=cmd_assess)

    p = sub.add_parser(
        "register",
        help="register a real camera pair in space, time and intensity from its recording",
    )
    _add_stack_inputs(p, "registration file to write (.json)")
    p.add_argument("--estimate-offset", action="store_true",
                   help="use the keyframe offset that matches best instead of --offset")
    p.add_argument("--offset-window", type=int,
                   help="search offsets within this many LR frames of --offset "
                   "(default: the spacing)")
    p.add_argument("--pairs", type=int, default=4,
                   help="keyframes (with their LR frames) the spatial fit uses (default 4)")
    p.add_argument("--target", nargs=2, metavar=("LR_IMAGE", "HR_IMAGE"),
                   help="register from one image of a target (a grid) taken by each camera")
    p.add_argument("--ratio-range", nargs=2, type=float, default=(2.0, 8.0),
                   metavar=("LOW", "HIGH"), help="HR pixels per LR pixel to consider (2 8)")
    p.add_argument("--max-rotation", type=float, default=10.0,
                   help="largest rotation to consider, degrees (default 10)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing file")
    p.set_defaults(func=cmd_register)

    p = sub.add_parser(
        "simulate",
        help="make the paper's numerical experiment from a full-rate HR stack "
        "(binned LR stack, HR keyframes, noise)",
    )
    p.add_argument("hr", help="full-rate HR stack: multi-page TIFF or folder of TIFF frames")
    p.add_argument("--out-dir", "-o", required=True,
                   help="folder for lr.tif, hr_keyframes.tif, truth.tif")
    _add_time_model(p)
    noise = p.add_mutually_exclusive_group()
    noise.add_argument("--noise-psnr", type=float, help="Poisson noise on LR at this LR PSNR (dB)")
    noise.add_argument("--b0", type=float, help="Poisson noise on LR with this blank-scan factor")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    p.add_argument("--lr-blur", type=float, default=0.0,
                   help="Gaussian blur of the LR camera before binning, in HR pixels, as a "
                   "real second camera's optics add (default 0: exact binning)")
    p.add_argument("--lr-shift", type=float, nargs=2, default=(0.0, 0.0), metavar=("DY", "DX"),
                   help="misalignment of the LR camera before binning, in HR pixels "
                   "(default 0 0)")
    p.add_argument("--lr-shading", type=float, default=0.0,
                   help="how far the LR camera's gain falls across the frame relative to "
                   "the HR camera's, as an off-centre beam footprint (0.2: to 80%% at the "
                   "farthest corner; default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("evaluate", help="PSNR, AAD and SSIM of a fused stack against ground truth")
    p.add_argument("fused", help="fused stack")
    p.add_argument("truth", help="ground-truth HR stack with one frame per LR time")
    _add_time_model(p, keyframes_default=False)
    p.add_argument("--csv", help="write per-frame metrics to this CSV file")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "demo",
        help="fuse the built-in synthetic sample with every method, write the results "
        "and print their quality",
    )
    p.add_argument("--out-dir", "-o", default="xfusion-demo",
                   help="output folder (default xfusion-demo)")
    p.add_argument("--frames", type=int, default=48, help="sequence length (default 48)")
    p.add_argument("--methods", nargs="+", help="methods to run (default: all that can run)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "train",
        help="train EDVR-STF or EDVR (continues the run in --out-dir if there is one)",
    )
    # Defaults from TrainConfig: a run started from Python continues from the command line.
    defaults = TrainConfig()
    p.add_argument("--out-dir", "-o", default=defaults.out_dir,
                   help=f"checkpoints, logs, weights (default {defaults.out_dir})")
    p.add_argument("--arch", default=defaults.arch, choices=["stf", "edvr"])
    p.add_argument("--preset", default=defaults.preset,
                   help="network size: default, paper or tiny")
    p.add_argument("--iterations", type=int, default=defaults.iterations,
                   help=f"optimizer steps of the whole run (default {defaults.iterations})")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--device", default=defaults.device)
    p.add_argument("--init-weights",
                   help="start from this weights file of a related network (what fits is copied)")
    p.add_argument("--lr-crop", type=int, default=defaults.lr_crop,
                   help=f"LR crop size in pixels (default {defaults.lr_crop})")
    p.add_argument("--noise-free-fraction", type=float, default=defaults.noise_free_fraction,
                   help="share of samples without LR noise "
                   f"(default {defaults.noise_free_fraction})")
    p.add_argument("--aligned-fraction", type=float, default=defaults.aligned_fraction,
                   help="share of samples whose keyframes are warped onto LR t first, as "
                   f"stf-aligned fuses (default {defaults.aligned_fraction:g})")
    p.add_argument("--pan-fraction", type=float, default=defaults.pan_fraction,
                   help="share of samples cut as a panning camera sees the scene, keyframes "
                   f"shifted up to {defaults.max_pan} HR pixels (default "
                   f"{defaults.pan_fraction:g})")
    p.add_argument("--optics-fraction", type=float, default=defaults.optics_fraction,
                   help="share of samples whose LR frames are blurred (up to "
                   f"{defaults.max_lr_blur:g}) and shifted (up to {defaults.max_lr_shift:g} "
                   "HR pixels) before binning, as a real second camera sees the scene, then "
                   "matched to the binning as fuse matches such a camera "
                   f"(default {defaults.optics_fraction:g})")
    p.add_argument("--loader-processes", type=int, default=defaults.loader_processes,
                   help="worker processes that make the batches (default 0: threads); use on "
                   "many cores with --aligned-fraction, whose warping threads cannot share")
    p.add_argument("--data-file", help=".npz of sequences from scripts/build_training_data.py")
    p.add_argument("--real-dir", help="folder of .npy/.tif full-rate HR sequences to train on")
    p.add_argument("--max-minutes", type=float, help="stop with a checkpoint after this long")
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "calibrate",
        help="fine-tune EDVR-STF on one experiment's own keyframes, checked on held-out keyframes",
    )
    _add_stack_inputs(p, "fine-tuned weights file (.safetensors)")
    p.add_argument("--weights", help="weights to start from (default: the bundled weights)")
    p.add_argument("--method", default="stf-aligned", choices=calibrated_methods(),
                   help="the method to calibrate the network for: stf-aligned (the default) "
                        "trains on keyframes warped onto each target's time where the "
                        "recording moves, stf on keyframes as they are")
    p.add_argument("--max-minutes", type=float, default=5.0,
                   help="minutes of fine-tuning: as many steps as fit (default 5)")
    p.add_argument("--iterations", type=int, default=100_000,
                   help="most fine-tuning steps, if they come before --max-minutes")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser(
        "convert-weights",
        help="convert a PyTorch .pth checkpoint (e.g. from the paper's code) to a weights file",
    )
    p.add_argument("src", help=".pth checkpoint (loaded with weights_only=True: no code runs)")
    p.add_argument("dst", help="output .safetensors file")
    p.add_argument("--arch", default="stf", choices=["stf", "edvr"])
    p.add_argument("--preset", default="paper",
                   help="network size of the checkpoint (default paper)")
    p.set_defaults(func=cmd_convert_weights)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``xfusion`` with ``argv`` (default: the process arguments); returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="xfusion: %(message)s",
    )
    previous = _terminate_like_interrupt()
    try:
        return args.func(args)
    except _user_errors() as exc:
        print(f"xfusion {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"\nxfusion {args.command}: interrupted.", file=sys.stderr)
        return 143 if isinstance(exc, _Terminated) else 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors that end a command with one line: bad input, files, missing packages, and a
    cluster that could not finish (only if the cluster module was used)."""
    errors = (ValueError, OSError, ImportError)
    cluster = sys.modules.get("napari_xfusion.distributed")
    return errors + ((cluster.ClusterError,) if cluster is not None else ())


class _Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler ending the job): handled as Ctrl-C, so partials stay readable."""


def _raise_terminated(signum, frame) -> None:
    raise _Terminated


def _terminate_like_interrupt():
    """Make SIGTERM stop the run as Ctrl-C does; returns the previous handler (None when
    signals cannot be set here, outside the main thread)."""
    try:
        return signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:
        return None


if __name__ == "__main__":
    sys.exit(main())
