"""The built-in sample experiment and the ``xfusion demo`` job.

:func:`sample_experiment` simulates the paper's numerical experiment on the synthetic
laser powder-bed fusion sequence: a full-rate HR ground truth, its 4x4-binned noisy LR
stream and HR keyframes every ``D`` frames. :func:`run_demo` fuses it with every method that
can run, writes the inputs and each fused stack, and prints their quality.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .config import NoiseConfig, TimeModel
from .evaluate import format_summary
from .io import check_output_path, read_stack, write_stack
from .methods import create_method, method_names, method_network
from .metrics import evaluate
from .models.weights import bundled_weights_path
from .normalize import Normalization
from .pipeline import FusionInputs, fuse_to_file
from .simulate import Experiment, simulate_experiment
from .synthetic import synthetic_lpbf

#: Frame size of the sample's HR ground truth.
SAMPLE_SHAPE = (256, 512)
#: Scene seed of the sample. The bundled networks were trained and validated on scenes
#: with seeds ``2 * i`` and ``2 * i + 1`` for small ``i`` (see
#: :func:`napari_xfusion.training.data.synthetic_seed`), so the sample is a scene they
#: have never seen.
SAMPLE_SEED = 999_999


def sample_experiment(
    n_frames: int = 48,
    shape: tuple[int, int] = SAMPLE_SHAPE,
    time_model: TimeModel = TimeModel(spacing=10, separation=1, scale=4),
    noise_psnr: float | None = 40.0,
    seed: int = SAMPLE_SEED,
) -> Experiment:
    """The synthetic sample: LR stream, HR keyframes and full-rate ground truth.

    Parameters
    ----------
    n_frames : int
        Number of LR frames (and ground-truth HR frames).
    shape : tuple of int
        HR frame size; multiples of the scale.
    time_model : TimeModel
        Keyframe spacing, offset, LR separation and scale.
    noise_psnr : float or None
        LR-image PSNR of the Poisson noise on the LR stream (dB); None for no noise.
    seed : int
        Seed of the scene and the noise.

    Returns
    -------
    Experiment
    """
    truth = synthetic_lpbf(n_frames=n_frames, height=shape[0], width=shape[1], seed=seed)
    noise = NoiseConfig(target_psnr=noise_psnr, seed=seed)
    return simulate_experiment(truth, time_model, noise)


def runnable_methods() -> list[str]:
    """Registered methods that can run here: the learned ones only with bundled weights."""
    networks = {name: method_network(name) for name in method_names()}
    return [
        name for name, network in networks.items()
        if network is None or bundled_weights_path(network).exists()
    ]


def run_demo(
    out_dir: str | Path = "xfusion-demo",
    n_frames: int = 48,
    methods: Sequence[str] | None = None,
    overwrite: bool = False,
    progress_factory: Callable[[str], Callable[[int, int], None]] | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, dict]:
    """Fuse the sample experiment with each method, write everything and report quality.

    Writes ``lr.tif``, ``hr_keyframes.tif``, ``truth.tif`` and ``fused_<method>.tif`` (and
    the attention scores of the neural methods) to ``out_dir``, float32 in [0, 1].

    Returns
    -------
    dict
        ``{method: Evaluation.summary()}``.
    """
    methods = list(methods) if methods else runnable_methods()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    targets = {name: out_dir / f"fused_{name}.tif" for name in methods}
    inputs_written = {n: out_dir / f"{n}.tif" for n in ("lr", "hr_keyframes", "truth")}
    for path in [*targets.values(), *inputs_written.values()]:
        check_output_path(path, overwrite=overwrite)
    built = {name: create_method(name) for name in methods}

    exp = sample_experiment(n_frames=n_frames)
    echo(
        f"sample: {n_frames} frames, LR {exp.lr.shape[1]}x{exp.lr.shape[2]} "
        f"(LR PSNR {exp.lr_psnr:.1f} dB), HR {exp.truth.shape[1]}x{exp.truth.shape[2]}, "
        f"{len(exp.hr)} keyframes every {exp.timeline.model.spacing} frames"
    )
    for stack, path in zip((exp.lr, exp.hr, exp.truth), inputs_written.values(), strict=True):
        write_stack(path, stack, overwrite=overwrite)

    identity = Normalization(low=0.0, high=1.0, dtype="float32")
    inputs = FusionInputs(exp.lr, exp.hr, exp.timeline, identity, identity)
    mask = exp.timeline.keyframe_mask()
    summaries = {}
    for name, method in built.items():
        progress = progress_factory(f"{method.label:>10s}") if progress_factory else None
        result = fuse_to_file(inputs, method, targets[name], overwrite=overwrite, progress=progress)
        fused = read_stack(result.path, name=f"{method.label} result")
        summaries[name] = evaluate((np.asarray(f) for f in fused), exp.truth, mask).summary()
    echo(format_summary({built[n].label: s for n, s in summaries.items()}))
    echo(f"results written to {out_dir.resolve()}")
    return summaries
