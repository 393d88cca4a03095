"""Ideas for the network's inputs and residual base, tried without training on held-out video.

On the real validation videos of ``scripts/build_training_data.py`` (the protocol of
``benchmarks/eval_real.py``: 4 x 4 binning, clean or 30 dB LR noise, D = 10 and 20, scores
over unseen frames, the first ``--frames`` distinct frames), this prints the mean unseen PSNR
(dB) of:

* **LR consistency**: each method's output ``f`` projected onto the frames whose 4 x 4 mean
  is LR ``t`` (``f + up(LR_t - bin(f))``, nearest ``up``: the orthogonal projection, which
  can only help when the LR is noise-free binning), and the same step scaled by a Wiener
  weight ``max(0, 1 - s2 / var(LR_t - bin(f)))``, ``s2`` the LR noise variance measured at
  the keyframe times (LR against the binned keyframe), so it fades under noise;
* **keyframe agreement**: the network's untrained ``base="agreement"``
  (:class:`napari_xfusion.models.arch.KeyframeDetailBase`, no learned correction: detail
  transfer whose keyframe weights are scaled by the keyframes' agreement with LR ``t``) at
  several widths, against plain detail transfer and Bayesian fusion;
* **keyframe alignment**: each keyframe warped onto LR ``t`` along their optical flow
  (:func:`napari_xfusion.alignment.align_keyframes`, what ``stf-aligned`` does: TV-L1 flow
  from LR ``t`` to the binned keyframe, upsampled, cubic-spline warp of the HR frame; until
  2026-11-30 one global translation) before the bundled network
  (``stf+align``) or the agreement base at width 0.06 (``agree0.06+align``) sees it; a camera
  that moves between the keyframes and ``t`` moves the whole frame. ``stf+against`` warps
  the other way: if the gain came from the warp's interpolation and not from alignment, it
  would gain too;
* **trusting the agreement**: the network with ``ModelConfig(trust_agreement)`` switched
  (on: its learned corrections scaled by ``1 - a``, ``a`` the better keyframe's
  noise-discounted agreement with LR ``t``, and LR ``t`` averaged with the keyframes that
  agree with it), without training for it, as ``stf+trust`` (or ``stf-trust`` when the
  weights already trust) and with aligned keyframes ``stf-aligned+trust``.

``stf`` is the bundled network unless ``--weights`` names another weights file.

Example (2-core CPU, about 20 minutes)::

    PYTHONPATH=src python benchmarks/base_ideas.py --data-file .device-data/sequences.npz
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import torch

from napari_xfusion.alignment import align_keyframes, keyframe_flow, warp_keyframe
from napari_xfusion.config import EngineConfig, NoiseConfig, TimeModel
from napari_xfusion.engine import Engine
from napari_xfusion.methods import create_method, method_network
from napari_xfusion.metrics import psnr
from napari_xfusion.models import build_model, bundled_weights_path, load_weights
from napari_xfusion.models.arch import KeyframeDetailBase
from napari_xfusion.simulate import bin_frames, simulate_experiment
from napari_xfusion.timeline import keyframe_position
from napari_xfusion.training.data import REAL, distinct_frames, load_sequence_file

WIDTHS = (0.03, 0.06, 0.1)


def project(fused: np.ndarray, lr: np.ndarray, weight: float = 1.0) -> np.ndarray:
    """``fused`` moved (by ``weight`` of the way) onto the frames whose binning is ``lr``."""
    residual = lr - bin_frames(fused, 4)
    return fused + weight * np.kron(residual, np.ones((4, 4), np.float32))


def shifted_against(lr_t: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """HR keyframes ``(2, H, W)`` moved as far as alignment would move them, the other way."""
    return np.stack([
        warp_keyframe(key, -keyframe_flow(lr_t, key, scale=4), scale=4) for key in keys
    ])


def options(name: str) -> dict:
    """Networks on the CPU."""
    return {"engine": EngineConfig(device="cpu")} if method_network(name) else {}


def switched_trust(network: torch.nn.Module) -> tuple[torch.nn.Module, str]:
    """The EDVR-STF network with ``trust_agreement`` switched, and the column's suffix."""
    trust = not network.config.trust_agreement
    switched = build_model(dataclasses.replace(network.config, trust_agreement=trust))
    switched.load_state_dict(network.state_dict())
    return switched.eval(), "+trust" if trust else "-trust"


def untrained_base(width: float) -> KeyframeDetailBase:
    """The network's agreement base at ``width``, with no learned correction (zero gate)."""
    base = KeyframeDetailBase(channels=1, agreement=True)
    with torch.no_grad():
        base.log_width.fill_(np.log(width))
    return base.eval()


def agreement_transfer(base: KeyframeDetailBase, lr: np.ndarray, keys: np.ndarray,
                       position: float) -> np.ndarray:
    """What ``base`` makes of LR ``t`` and its two keyframes."""
    lr_t = torch.from_numpy(lr)[None, None]
    with torch.no_grad():
        out, _ = base(lr_t, torch.from_numpy(keys)[None, :, None], torch.tensor([position]),
                      torch.zeros_like(lr_t))
    return out[0, 0].numpy()


def run_setting(truth: np.ndarray, spacing: int, noise: float | None,
                network: torch.nn.Module) -> dict[str, float]:
    exp = simulate_experiment(truth, TimeModel(spacing=spacing),
                              NoiseConfig(target_psnr=noise, seed=1))
    timeline, lr = exp.timeline, np.asarray(exp.lr, np.float32)
    hr = np.asarray(exp.hr, np.float32)
    inside = [(j, int(t)) for j, t in enumerate(timeline.keyframe_times) if 0 <= t < len(lr)]
    noise_var = float(np.mean([np.var(lr[t] - bin_frames(hr[j], 4)) for j, t in inside]))
    frames = [int(t) for t in np.flatnonzero(~timeline.keyframe_mask())]
    scores: dict[str, list[float]] = {}

    def add(name: str, image: np.ndarray, t: int) -> None:
        scores.setdefault(name, []).append(psnr(np.clip(image, 0, 1), truth[t]))

    switched, suffix = switched_trust(network)
    runs = [(name, create_method(name, **options(name))) for name in ("transfer", "bayes")]
    runs += [("stf", create_method("stf", model=network, **options("stf")))]
    runs += [(f"{name}{suffix}", create_method(name, model=switched, **options(name)))
             for name in ("stf", "stf-aligned")]
    for name, method in runs:
        for frame in method.fuse(exp.lr, exp.hr, timeline, frames=frames):
            image, t = np.asarray(frame.image, np.float32), frame.t
            residual_var = np.var(lr[t] - bin_frames(image, 4))
            wiener = max(0.0, 1.0 - noise_var / max(residual_var, 1e-12))
            add(name, image, t)
            if name in ("transfer", "bayes", "stf"):
                add(f"{name}+proj", project(image, lr[t]), t)
                add(f"{name}+wiener", project(image, lr[t], wiener), t)
    bases = {width: untrained_base(width) for width in WIDTHS}
    engine = Engine(network, EngineConfig(device="cpu"))
    for t in frames:
        inputs = timeline.inputs(t)
        keys = hr[list(inputs.hr)]
        position = keyframe_position(t, *inputs.hr_times)
        for width, base in bases.items():
            add(f"agree{width:g}", agreement_transfer(base, lr[t], keys, position), t)
        aligned = align_keyframes(lr[t], keys, scale=4)
        add("agree0.06+align", agreement_transfer(bases[0.06], lr[t], aligned, position), t)
        add("stf+align", engine.fuse_frame(lr[list(inputs.lr)], aligned, inputs)[0], t)
        against = shifted_against(lr[t], keys)
        add("stf+against", engine.fuse_frame(lr[list(inputs.lr)], against, inputs)[0], t)
    return {name: float(np.mean(values)) for name, values in scores.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-file", default=".device-data/sequences.npz")
    parser.add_argument("--frames", type=int, default=61, help="most frames per sequence")
    parser.add_argument("--weights", default=str(bundled_weights_path("stf")),
                        help="EDVR-STF weights file (default: the bundled one)")
    parser.add_argument("--sequences", nargs="+", default=["visp-cube", "carphone",
                                                           "visp-ellipse"])
    args = parser.parse_args(argv)
    _, validation, _ = load_sequence_file(args.data_file)
    network = load_weights(args.weights).eval()
    rows = []
    for seq in [s for s in validation if s.group == REAL and s.name in args.sequences]:
        frames = distinct_frames(seq.frames)[: args.frames]
        _, h, w = frames.shape
        truth = frames[:, : h - h % 16, : w - w % 16].astype(np.float32) / 255.0
        for spacing in (10, 20):
            for noise in (None, 30.0):
                label = f"{seq.name} D={spacing} {'clean' if noise is None else '30 dB'}"
                rows.append((label, run_setting(truth, spacing, noise, network)))
                print(label, {k: round(v, 2) for k, v in rows[-1][1].items()}, flush=True)
    names = list(rows[0][1])
    print("\n| setting | " + " | ".join(names) + " |")
    print("| --- |" + " ---: |" * len(names))
    for label, scores in rows:
        print(f"| {label} | " + " | ".join(f"{scores[n]:.2f}" for n in names) + " |")


if __name__ == "__main__":
    main()
