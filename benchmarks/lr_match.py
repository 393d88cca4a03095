"""The LR filter (:mod:`napari_xfusion.lr_match`) on the built-in sample, as ``fuse`` runs.

The sample's scene (HR 256 x 512, 48 frames, D = 10) simulated with exactly binned LR, an
LR blur of 1.5 HR pixels, an LR shift of half an HR pixel on each axis, or an LR camera
whose gain falls by 20% across the frame relative to the HR camera's
(:class:`napari_xfusion.config.OpticsConfig`), clean and at 40, 30 and 20 dB LR PSNR;
opened with :func:`napari_xfusion.pipeline.prepare_inputs` with and without
``match_optics`` and fused by ``stf-aligned`` (the default), Bayesian fusion and detail
transfer (each reading the LR filter's form for it, as ``fuse`` gives it). Prints
the share of the LR frames' misfit that the camera's optics explain, whether the filter
was applied, and the mean PSNR of the unseen frames against the truth in the fused
stack's normalized units.

Example (5.5 minutes on a 2-core CPU with AVX-512 before detail transfer was added; 20
with it on one without AVX-512, tests running alongside)::

    PYTHONPATH=src python benchmarks/lr_match.py
"""

from __future__ import annotations

import numpy as np

from napari_xfusion.config import EngineConfig, NoiseConfig, OpticsConfig, TimeModel
from napari_xfusion.demo import sample_experiment
from napari_xfusion.lr_match import fit_lr_filter
from napari_xfusion.methods import create_method
from napari_xfusion.metrics import psnr
from napari_xfusion.pipeline import prepare_inputs
from napari_xfusion.simulate import simulate_experiment

VARIANTS = {
    "exact binning": OpticsConfig(),
    "blur 1.5": OpticsConfig(blur=1.5),
    "shift 0.5, 0.5": OpticsConfig(shift=(0.5, 0.5)),
    "shading 0.2": OpticsConfig(shading=0.2),
}
METHODS = {"stf-aligned": {"engine": EngineConfig(device="cpu")}, "bayes": {}, "transfer": {}}


def unseen_psnr(inputs, truth: np.ndarray, method: str, frames: list[int]) -> float:
    """Mean PSNR of ``method`` on ``frames``, in the HR stack's normalized units."""
    reference = inputs.hr_norm.apply(truth)
    fusion = create_method(method, **METHODS[method])
    fused = fusion.fuse(inputs.lr_for(fusion), inputs.hr, inputs.timeline, frames)
    return float(np.mean([psnr(f.image, reference[f.t]) for f in fused]))


def main() -> None:
    truth = sample_experiment(noise_psnr=None).truth
    print("| LR optics | LR noise | systematic | filter | " + " | ".join(
        f"{m} | {m} matched" for m in METHODS) + " |")
    print("| --- | --- | ---: | --- |" + " ---: | ---: |" * len(METHODS))
    for name, optics in VARIANTS.items():
        for noise in (None, 40.0, 30.0, 20.0):
            exp = simulate_experiment(truth, TimeModel(spacing=10),
                                      NoiseConfig(target_psnr=noise, seed=1), optics=optics)
            frames = [int(t) for t in np.flatnonzero(~exp.timeline.keyframe_mask())]
            plain = prepare_inputs(exp.lr, exp.hr, exp.timeline.model, match_optics=False)
            matched = prepare_inputs(exp.lr, exp.hr, exp.timeline.model)
            timeline = plain.timeline
            pairs = [(int(t), j) for j, t in enumerate(timeline.keyframe_times)
                     if 0 <= t < timeline.n_lr]
            found = fit_lr_filter(plain.lr, plain.hr, pairs, timeline.model.scale)
            scores = " | ".join(
                f"{unseen_psnr(plain, exp.truth, m, frames):.2f} | "
                f"{unseen_psnr(matched, exp.truth, m, frames):.2f}" for m in METHODS)
            print(f"| {name} | {'clean' if noise is None else f'{noise:g} dB'} | "
                  f"{found.systematic:.3f} | {'applied' if found.needed else 'no'} | "
                  f"{scores} |", flush=True)


if __name__ == "__main__":
    main()
