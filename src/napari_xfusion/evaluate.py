"""Quality of fused stacks against ground truth: files in, tables out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .config import NormalizationConfig, TimeModel
from .io import read_metadata, read_stack
from .metrics import Evaluation, evaluate
from .normalize import fit_normalization
from .streaming import MappedFrames
from .timeline import Timeline, keyframe_count


def keyframe_mask_from_metadata(path: str | Path) -> np.ndarray | None:
    """The keyframe mask stored in a fused file written by napari-xfusion, or None."""
    info = read_metadata(path).get("napari_xfusion")
    if info is None:
        return None
    info = json.loads(info) if isinstance(info, str) else info
    return np.asarray(info["keyframe_mask"], dtype=bool)


def evaluate_files(
    fused: str | Path,
    truth: str | Path,
    time_model: TimeModel | None = None,
    normalization: NormalizationConfig = NormalizationConfig(),
) -> Evaluation:
    """PSNR, AAD and SSIM of a fused stack against a ground-truth stack, frame by frame.

    Both stacks are mapped to [0, 1] with the normalization fitted to the ground truth, so
    the figures are in the same units as the paper's.

    Parameters
    ----------
    fused, truth : str or Path
        Stacks with one frame per LR time and equal frame sizes.
    time_model : TimeModel, optional
        Where the HR keyframes were, to report unseen frames apart. Default: the keyframe
        mask stored in the fused file's metadata.
    normalization : NormalizationConfig

    Returns
    -------
    Evaluation
    """
    fused_stack = read_stack(fused, name="fused stack")
    truth_stack = read_stack(truth, name="ground-truth stack")
    if fused_stack.shape != truth_stack.shape:
        raise ValueError(
            f"the fused stack {fused_stack.shape} and the ground truth {truth_stack.shape} "
            "differ in shape: evaluate against a truth stack with one HR frame per fused frame."
        )
    if time_model is not None:
        n = len(truth_stack)
        mask = Timeline(n, keyframe_count(n, time_model), time_model).keyframe_mask()
    else:
        mask = keyframe_mask_from_metadata(fused)
        if mask is None:
            raise ValueError(
                f"{fused} does not say where the HR keyframes were: pass --spacing and --offset."
            )
    norm = fit_normalization(truth_stack, normalization)
    frames = (norm.apply(np.asarray(fused_stack[i])) for i in range(len(fused_stack)))
    return evaluate(frames, MappedFrames(truth_stack, norm.apply), mask)


def format_summary(summaries: dict[str, dict[str, dict[str, float]]]) -> str:
    """A plain-text table of :meth:`Evaluation.summary` results, one row per named result."""
    width = max([24, *(len(name) for name in summaries)])
    header = (
        f"{'':{width}s} {'frames':>6s} {'PSNR mean':>10s} {'median':>8s} "
        f"{'AAD mean':>9s} {'SSIM mean':>9s}"
    )
    lines = []
    for group in ("unseen", "all"):
        lines.append(f"{group} frames")
        lines.append(header)
        for name, summary in summaries.items():
            row = summary[group]
            lines.append(
                f"{name:{width}s} {int(row['frames']):6d} {row['psnr_mean']:10.2f} "
                f"{row['psnr_median']:8.2f} {row['aad_mean']:9.4f} {row['ssim_mean']:9.4f}"
            )
        lines.append("")
    return "\n".join(lines).rstrip()
