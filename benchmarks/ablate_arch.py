"""Architecture ablation of EDVR-STF at an equal training budget.

Every variant starts from the bundled weights (:func:`napari_xfusion.models.init_from`
copies what fits; new heads start at zero) and is fine-tuned with the same data, seed,
batches and number of steps. The held-out validation samples of
:func:`napari_xfusion.training.train.train` (whole frames of the validation sequences, keyframes
every 20 frames, every other sample with LR Poisson noise) score each variant before and
after. A variant whose run folder is complete is not trained again, so the script can be
stopped and restarted. ``--noise-free-fraction`` varies the share of noise-free training
samples (the recipe, not the network), which decides the trade between clean and noisy LR.

Variants (``--variants``):

* ``control``: the bundled network as it is;
* ``transfer``: the residual added to detail transfer with learned keyframe weights;
* ``agreement``: the same, each keyframe's weight also scaled by how well it agrees with
  LR ``t`` around each pixel;
* ``trust``: the same, trusting the agreement (``trust_agreement``: the learned
  corrections fade where a keyframe agrees with LR ``t`` within the LR noise);
* ``transfer+time``: detail transfer, plus the position of ``t`` between its keyframes as
  input;
* ``transfer+time+narrow``: the same with 16-channel layers at full HR resolution (the
  reconstruction tail and the keyframe branch), which start afresh.

Example (a 2-core CPU; about 10 minutes per variant)::

    PYTHONPATH=src python benchmarks/ablate_arch.py --data-file .device-data/sequences.npz
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from napari_xfusion.config import ModelConfig, TrainConfig
from napari_xfusion.models import bundled_weights_path, load_weights
from napari_xfusion.training.train import LOG_JSONL, train

VARIANTS = {
    "control": {},
    "transfer": {"base": "transfer", "trust_agreement": False},
    "agreement": {"base": "agreement", "trust_agreement": False},
    "trust": {"base": "agreement", "trust_agreement": True},
    "transfer+time": {"base": "transfer", "trust_agreement": False, "time_input": True},
    "transfer+time+narrow": {
        "base": "transfer", "trust_agreement": False, "time_input": True,
        "hr_tail_channels": 16, "hr_branch_channels": 16,
    },
}


def run_variant(name: str, args: argparse.Namespace) -> dict:
    """Fine-tune one variant (or find it done) and read its log."""
    start = load_weights(bundled_weights_path("stf")).config
    model = ModelConfig.from_dict({**start.to_dict(), **VARIANTS[name]})
    config = replace(
        TrainConfig(),
        model=model,
        iterations=args.iterations,
        batch_size=args.batch_size,
        lr_crop=args.lr_crop,
        learning_rate=args.learning_rate,
        synthetic_sequences=args.synthetic,
        synthetic_frames=96,
        data_file=args.data_file,
        noise_free_fraction=args.noise_free_fraction,
        init_weights=str(bundled_weights_path("stf")),
        validate_every=args.iterations,
        checkpoint_every=100,
        log_every=50,
        out_dir=str(args.out / f"{name}-nf{args.noise_free_fraction:g}"),
    )
    began = time.monotonic()
    train(config, progress=lambda line: print(f"[{name}] {line}", flush=True))
    log = Path(config.out_dir) / LOG_JSONL
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    validated = [r for r in rows if r.get("validation")]
    speeds = [r["iterations_per_s"] for r in rows if r.get("iterations_per_s")]
    return {
        "variant": name,
        "before": validated[0]["validation"],
        "after": validated[-1]["validation"],
        "bicubic": validated[-1]["val_bicubic_psnr"],
        "it_per_s": sum(speeds) / len(speeds) if speeds else float("nan"),
        "seconds": time.monotonic() - began,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr-crop", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--synthetic", type=int, default=6, help="synthetic training scenes")
    parser.add_argument("--noise-free-fraction", type=float,
                        default=TrainConfig.noise_free_fraction,
                        help="share of training samples without LR noise")
    parser.add_argument("--data-file", help=".npz of scripts/build_training_data.py")
    parser.add_argument("--out", type=Path, default=Path("xfusion-ablation"))
    args = parser.parse_args(argv)

    results = [run_variant(name, args) for name in args.variants]
    print(f"\n{args.iterations} steps, batch {args.batch_size}, LR crop {args.lr_crop}, "
          f"{args.noise_free_fraction:.0%} noise-free samples; validation PSNR (dB), D = 20, "
          "whole frames")
    print("| variant | steps/s | before: clean / noisy | after: clean / noisy | after, all |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in results:
        b, a = r["before"], r["after"]
        print(f"| {r['variant']} | {r['it_per_s']:.2f} | {b['psnr_clean']:.2f} / "
              f"{b['psnr_noisy']:.2f} | {a['psnr_clean']:.2f} / {a['psnr_noisy']:.2f} | "
              f"{a['psnr']:.2f} |")
    print(f"bicubic: {results[0]['bicubic']:.2f} dB")


if __name__ == "__main__":
    main()
