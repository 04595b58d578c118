#!/usr/bin/env bash
# Trains the unified model shipped in src/polytok/weights/ with configs/unified-shipped.yaml, unchanged
# (an hour on the clock, train.max_minutes), then copies the exported model folder (with its image
# tokenizer in image_tokenizer/) into the package with a manifest of checksums, so that
# `polytok generate unified-evotok-tiny "..."` and `polytok caption unified-evotok-tiny image.png` work by
# name. Run from a checkout:
#   bash scripts/shipped/train_shipped_unified.sh [key=value ...]     # overrides go to polytok train
# NAME, CONFIG, RUN_DIR and WEIGHTS_DIR (default src/polytok/weights) may be set in the environment.
set -euo pipefail
cd "$(dirname "$0")/../.."
POLYTOK=${POLYTOK:-.venv/bin/polytok}
PYTHON=${PYTHON:-.venv/bin/python}
NAME=${NAME:-unified-evotok-tiny}
CONFIG=${CONFIG:-configs/unified-shipped.yaml}
RUN_DIR=${RUN_DIR:-runs/shipped/$NAME}
WEIGHTS_DIR=${WEIGHTS_DIR:-src/polytok/weights}
mkdir -p "$(dirname "$RUN_DIR")"
"$POLYTOK" train "$CONFIG" "train.out_dir=$RUN_DIR" train.progress=false train.overwrite=true "$@" \
    > "$RUN_DIR.log" 2>&1
# copied into a staging folder, checksummed, then put in place in one rename (an interrupted copy
# never leaves a half model under the shipped name)
"$PYTHON" - "$RUN_DIR/model" "$WEIGHTS_DIR/$NAME" "$CONFIG" <<'PY'
import shutil
import sys
from pathlib import Path

from polytok.storage import publish, staging_dir, write_manifest

model, final, config = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
staging = staging_dir(final)
shutil.copytree(model, staging, dirs_exist_ok=True)
write_manifest(staging, {"kind": "unified model", "config": config})
publish(staging, final)
print(final)
PY
