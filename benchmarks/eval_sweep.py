"""Fusion quality sweeps on unseen synthetic scenes (the paper's figures 5 and 6).

For two synthetic LPBF regimes ("little motion": slow scan, few spatter; "much motion":
fast scan, many spatter) this fuses the simulated LR stream and HR keyframes with each
method and reports PSNR, AAD and SSIM over the frames whose HR frame was not given
("unseen" frames). Three one-at-a-time sweeps around the baseline D=10, r=1, no noise:

* LR noise: target LR PSNR 20, 30, 40, 50, 60 dB and none;
* HR keyframe spacing D in {2, 10, 20};
* LR separation r in {1, 2, 3}.

The scenes use seeds far from the training (2*i) and validation (2*i+1) seeds of
``training.data.synthetic_seed``, so no evaluated frame was seen in training. The default
HR frame size is 256x512, the size the STF network was trained on.

Writes a CSV of mean/median per setting and method, and box plots of the per-frame PSNR
(vs LR noise and vs D, one panel row per regime) to ``--out``.

Example::

    PYTHONPATH=src python benchmarks/eval_sweep.py            # full sweep
    PYTHONPATH=src python benchmarks/eval_sweep.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: figures go to files only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from napari_xfusion.config import EngineConfig, NoiseConfig, TimeModel  # noqa: E402
from napari_xfusion.methods import create_method, method_network  # noqa: E402
from napari_xfusion.metrics import METRICS, evaluate  # noqa: E402
from napari_xfusion.simulate import simulate_experiment  # noqa: E402
from napari_xfusion.synthetic import synthetic_lpbf  # noqa: E402

METHODS = ("bicubic", "transfer", "bayes", "edvr", "stf")
REGIMES = {
    "little motion": dict(seed=999_999, scan_speed=1.5, spatter_rate=0.1),
    "much motion": dict(seed=777_777, scan_speed=8.0, spatter_rate=1.5),
}
NOISE_LEVELS = (20.0, 30.0, 40.0, 50.0, 60.0, None)
SPACINGS = (2, 10, 20)
SEPARATIONS = (1, 2, 3)
BASELINE = dict(noise=None, spacing=10, separation=1)


def make_method(name: str):
    """Build a method; the networks are pinned to the CPU so the timings are comparable."""
    if method_network(name):
        return create_method(name, engine=EngineConfig(device="cpu"))
    return create_method(name)


def settings() -> list[tuple[str, dict]]:
    """The (sweep, setting) pairs; the baseline is shared by all three sweeps."""
    out = [("noise", {**BASELINE, "noise": n}) for n in NOISE_LEVELS]
    out += [("spacing", {**BASELINE, "spacing": d}) for d in SPACINGS]
    out += [("separation", {**BASELINE, "separation": r}) for r in SEPARATIONS]
    return out


def run_setting(scene: np.ndarray, setting: dict, methods, max_eval: int | None):
    """Per-frame metrics on unseen frames of one setting, for each method.

    Returns
    -------
    dict
        ``{method: Evaluation}`` and the simulated LR PSNR (None without noise).
    """
    model = TimeModel(spacing=setting["spacing"], offset=0,
                      separation=setting["separation"], scale=4)
    noise = NoiseConfig(target_psnr=setting["noise"], seed=1)
    exp = simulate_experiment(scene, model, noise)
    mask = exp.timeline.keyframe_mask()
    unseen = [int(t) for t in np.flatnonzero(~mask)]
    if max_eval is not None and len(unseen) > max_eval:
        # evenly spread subset, so every distance to the nearest keyframe is represented
        unseen = [unseen[i] for i in np.linspace(0, len(unseen) - 1, max_eval).round().astype(int)]
    results = {}
    for name in methods:
        fused = (f.image for f in make_method(name).fuse(exp.lr, exp.hr, exp.timeline,
                                                           frames=unseen))
        results[name] = evaluate(fused, exp.truth, mask, frames=unseen)
    return results, exp.lr_psnr


def label(sweep: str, setting: dict) -> str:
    """Short label of the swept value."""
    if sweep == "noise":
        return "none" if setting["noise"] is None else f"{setting['noise']:g} dB"
    return f"{'D' if sweep == 'spacing' else 'r'}={setting[sweep]}"


def box_figure(records, sweep: str, methods, path: Path, title: str) -> None:
    """Box plots of per-frame PSNR per method, one panel per regime and swept value."""
    regimes = list(REGIMES)
    values = [s for sw, s in settings() if sw == sweep]
    fig, axes = plt.subplots(len(regimes), len(values), sharey="row", squeeze=False,
                             figsize=(2.6 * len(values), 3.6 * len(regimes)))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, regime in enumerate(regimes):
        for j, setting in enumerate(values):
            ax = axes[i, j]
            results = records[(regime, sweep, label(sweep, setting))]
            data = [results[m].values["psnr"] for m in methods]
            box = ax.boxplot(data, patch_artist=True, widths=0.6)
            for patch, c in zip(box["boxes"], colors, strict=False):
                patch.set_facecolor(c)
                patch.set_alpha(0.6)
            ax.set_xticks(range(1, len(methods) + 1), methods, rotation=45, fontsize=8)
            ax.set_title(label(sweep, setting), fontsize=9)
            ax.grid(axis="y", alpha=0.3)
            if j == 0:
                ax.set_ylabel(f"{regime}\nPSNR (dB)")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=21, help="sequence length (21).")
    parser.add_argument("--size", type=int, nargs=2, default=(256, 512), metavar=("H", "W"),
                        help="HR frame size (256 512).")
    parser.add_argument("--max-eval", type=int, default=None,
                        help="evaluate at most this many unseen frames per setting (all).")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--out", type=Path, default=Path("docs/figures"),
                        help="folder for the CSV and PNGs (docs/figures).")
    parser.add_argument("--quick", action="store_true",
                        help="tiny smoke run: 64x128 frames, 21 frames, 3 frames evaluated.")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.frames, args.max_eval = (64, 128), 21, 3
    args.out.mkdir(parents=True, exist_ok=True)
    h, w = args.size

    start = time.perf_counter()
    records = {}
    rows = []
    for regime, opts in REGIMES.items():
        scene = synthetic_lpbf(args.frames, h, w, **opts)
        done: dict[tuple, tuple] = {}
        for sweep, setting in settings():
            key = tuple(sorted(setting.items(), key=lambda kv: kv[0]))
            if key not in done:  # the baseline appears in all three sweeps: fuse it once
                done[key] = run_setting(scene, setting, args.methods, args.max_eval)
            results, lr_psnr = done[key]
            records[(regime, sweep, label(sweep, setting))] = results
            for name, ev in results.items():
                s = ev.summary()["unseen"]
                rows.append({"regime": regime, "sweep": sweep, "setting": label(sweep, setting),
                             "lr_psnr": "" if lr_psnr is None else f"{lr_psnr:.2f}",
                             "method": name, "frames": int(s["frames"]),
                             **{f"{m}_{k}": f"{s[f'{m}_{k}']:.4f}" for m in METRICS
                                for k in ("mean", "median")}})
            print(f"[{time.perf_counter() - start:6.0f} s] {regime} / {sweep} "
                  f"{label(sweep, setting)} done", flush=True)

    fields = list(rows[0])
    with open(args.out / "eval_sweep.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    print(f"\nHR {h}x{w}, {args.frames} frames, scale 4; unseen frames only; "
          f"total {time.perf_counter() - start:.0f} s")
    print(f"{'regime':<14}{'sweep':<11}{'setting':<9}{'method':<9}"
          f"{'PSNR mean':>10}{'median':>8}{'AAD mean':>10}{'SSIM mean':>10}")
    for r in rows:
        print(f"{r['regime']:<14}{r['sweep']:<11}{r['setting']:<9}{r['method']:<9}"
              f"{float(r['psnr_mean']):>10.2f}{float(r['psnr_median']):>8.2f}"
              f"{float(r['aad_mean']):>10.4f}{float(r['ssim_mean']):>10.4f}")
    box_figure(records, "noise", args.methods, args.out / "sweep_noise_psnr.png",
               "Unseen-frame PSNR vs LR noise (target LR PSNR), D=10, r=1")
    box_figure(records, "spacing", args.methods, args.out / "sweep_spacing_psnr.png",
               "Unseen-frame PSNR vs HR spacing D, r=1, no noise")
    box_figure(records, "separation", args.methods, args.out / "sweep_separation_psnr.png",
               "Unseen-frame PSNR vs LR separation r, D=10, no noise")


if __name__ == "__main__":
    main()
