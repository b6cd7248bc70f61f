#!/usr/bin/env bash
# The main job on embedded data: train a small MLP on scikit-learn's digits with a checkpoint per
# iteration, compute LCA over every checkpoint pair, and summarise it by layer.
# Usage: bash scripts/quickstart.sh [RUN_DIR]   (default runs/digits)
set -euo pipefail
cd "$(dirname "$0")/.."
run="${1:-runs/digits}"
python scripts/train.py configs/digits_mlp.toml "$run" --overwrite
lca compute "$run"
lca summarize "$run/lca.zarr" --by layer
