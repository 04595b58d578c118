#!/usr/bin/env bash
# Trains the three checkpoints shipped in src/polytok/weights/ with the shipped configs, unchanged, side
# by side on this machine's two CPU cores (one thread each), then copies each exported tokenizer into
# the package. About an hour here.
#   bash scripts/shipped/train_shipped.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
POLYTOK=${POLYTOK:-.venv/bin/polytok}
PRESETS=(unitok-tiny polytok-tiny evotok-tiny)
mkdir -p runs
pids=()
for preset in "${PRESETS[@]}"; do
    OMP_NUM_THREADS=1 "$POLYTOK" train "configs/$preset.yaml" "train.out_dir=runs/shipped/$preset" \
        train.progress=false train.overwrite=true > "runs/shipped-$preset.log" 2>&1 &
    pids+=("$!")
done
# a bare `wait` returns 0 whatever the runs did: wait on each, so a failed run stops the script here
for pid in "${pids[@]}"; do
    wait "$pid"
done
for preset in "${PRESETS[@]}"; do
    rm -rf "src/polytok/weights/$preset"
    mkdir -p src/polytok/weights
    cp -r "runs/shipped/$preset/tokenizer" "src/polytok/weights/$preset"
done
