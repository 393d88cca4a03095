#!/usr/bin/env bash
# One chunk of training on a GPU machine, at most 8 minutes; call it again to continue.
#
# The run lives in .device-run/ARCH (ignored by git): carry it to the machine and copy what
# comes back from $OUT into it, so that each chunk continues from the last checkpoint:
#
#   here:   python scripts/build_training_data.py --synthetic 0   # < 45 MB: fits the 64 MiB
#   device: bash scripts/device_train.sh stf 40000 0.5             # carry .device-data,
#                                                                  #       .device-run
#   here:   cp <files from $OUT>/* .device-run/stf/                # then again, until done
#
# The scenes the training renders itself are drawn on the machine's 16 cores, and the
# batches are made by 14 loader processes: warping keyframes (the third argument, the share
# of samples whose keyframes are warped onto LR t, as the bundled weights' last run had:
# docs/model-card.md) holds Python's lock, so threads could not keep up with the GPU. The
# recipe: 64-pixel LR crops, batch 16, 70% noise-free samples, starting from the bundled
# weights.
set -euo pipefail
cd "$(dirname "$0")/.."
arch=${1:-stf}
iterations=${2:-40000}
aligned=${3:-0.5}
run=.device-run/$arch
mkdir -p "$run"
init=()
[ -e "$run/checkpoint.pt" ] || init=(--init-weights src/napari_xfusion/models/weights/stf_default.safetensors)
PYTHONPATH=src PYTHONUNBUFFERED=1 python3 -m napari_xfusion.cli train \
    --arch "$arch" --out-dir "$run" --iterations "$iterations" --max-minutes 7.5 \
    --batch-size 16 --lr-crop 64 --noise-free-fraction 0.7 --aligned-fraction "$aligned" \
    --loader-processes 14 \
    --data-file .device-data/sequences.npz "${init[@]}"
for f in checkpoint.pt weights.safetensors log.csv log.jsonl; do
    cp "$run/$f" "${OUT:-/tmp}/" 2>/dev/null || true
done
