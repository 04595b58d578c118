#!/usr/bin/env bash
# Trains the three checkpoints shipped in src/polytok/weights/ with the shipped configs, unchanged, one
# after the other on this machine's CPU, then copies each exported tokenizer into the package.
#   bash scripts/train_shipped.sh            # about 75 minutes on 2 cores
set -euo pipefail
cd "$(dirname "$0")/.."
POLYTOK=${POLYTOK:-.venv/bin/polytok}
for preset in unitok-tiny polytok-tiny evotok-tiny; do
    "$POLYTOK" train "configs/$preset.yaml" "train.out_dir=runs/shipped/$preset" train.progress=false
    rm -rf "src/polytok/weights/$preset"
    mkdir -p src/polytok/weights
    cp -r "runs/shipped/$preset/tokenizer" "src/polytok/weights/$preset"
done
