"""How far each keyframe interval moves, and what ``stf-aligned`` decides per recording.

``stf-aligned`` aligns a recording's keyframes only when :func:`napari_xfusion.alignment.
keyframe_motion` (the largest mean flow length, in LR pixels, from the frame halfway
between two keyframes back to the first, over up to 8 evenly spread intervals) reaches
:data:`napari_xfusion.alignment.MOVING`. This prints the flow length of *every* interval
and the decision, on the stacks as ``xfusion fuse`` and the dock hand them to the method
(normalized by :func:`napari_xfusion.pipeline.prepare_inputs`), for:

* the built-in sample (a still camera, a moving melt pool), clean and at 40 / 30 / 20 dB
  LR PSNR;
* the synthetic sweep scenes of ``eval_sweep.py`` (every setting of its three sweeps);
* the held-out real videos of the training data file (first 61 distinct frames, D = 10
  and 20, clean and 30 dB), when the file exists.

Example (about 1 minute on a 2-core CPU)::

    python scripts/build_training_data.py
    PYTHONPATH=src python benchmarks/motion_gate.py --data-file .device-data/sequences.npz
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from eval_sweep import REGIMES, settings
from napari_xfusion.alignment import MOVING, interval_motions, keyframe_motion
from napari_xfusion.config import NoiseConfig, TimeModel
from napari_xfusion.demo import sample_experiment
from napari_xfusion.pipeline import prepare_inputs
from napari_xfusion.simulate import simulate_experiment
from napari_xfusion.synthetic import synthetic_lpbf
from napari_xfusion.training.data import REAL, distinct_frames, load_sequence_file


def report(name: str, exp) -> None:
    """One row: the stacks normalized as ``xfusion fuse`` and the dock hand them over."""
    inputs = prepare_inputs(exp.lr, exp.hr, exp.timeline.model)
    motion = keyframe_motion(inputs.lr, inputs.hr, inputs.timeline)
    decision = "aligns" if motion >= MOVING else "as they are"
    lengths = " ".join(f"{v:.3f}" for v in interval_motions(inputs.lr, inputs.hr,
                                                            inputs.timeline, intervals=None))
    print(f"| {name} | {lengths} | {motion:.3f} | {decision} |", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-file", type=Path, default=Path(".device-data/sequences.npz"))
    args = parser.parse_args(argv)
    print("| recording | flow length per interval (LR px) | keyframe motion | stf-aligned |")
    print("| --- | --- | ---: | --- |")
    for noise in (None, 40.0, 30.0, 20.0):
        report(f"sample, {'clean' if noise is None else f'{noise:g} dB'}",
               sample_experiment(noise_psnr=noise))
    for regime, options in REGIMES.items():
        scene = synthetic_lpbf(21, 256, 512, **options)
        seen = set()
        for _, setting in settings():
            key = tuple(sorted(setting.items()))
            if key in seen:  # the baseline is in all three sweeps
                continue
            seen.add(key)
            model = TimeModel(spacing=setting["spacing"], separation=setting["separation"])
            exp = simulate_experiment(scene, model, NoiseConfig(target_psnr=setting["noise"],
                                                                seed=1))
            report(f"sweep, {regime}, noise {setting['noise']}, D = {setting['spacing']}, "
                   f"r = {setting['separation']}", exp)
    if not args.data_file.is_file():
        print(f"(no {args.data_file}: the real videos are left out)")
        return
    _, validation, _ = load_sequence_file(args.data_file)
    for seq in (s for s in validation if s.group == REAL):
        frames = distinct_frames(seq.frames)[:61]
        _, h, w = frames.shape
        truth = frames[:, : h - h % 16, : w - w % 16].astype(np.float32) / 255.0
        for spacing in (10, 20):
            if len(truth) < 2 * spacing + 1:
                continue
            for noise in (None, 30.0):
                exp = simulate_experiment(truth, TimeModel(spacing=spacing),
                                          NoiseConfig(target_psnr=noise, seed=1))
                report(f"{seq.name}, D = {spacing}, {'clean' if noise is None else '30 dB'}",
                       exp)


if __name__ == "__main__":
    main()
