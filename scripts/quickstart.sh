#!/usr/bin/env bash
# The main job on embedded data, set-up included: create .venv and install the project when needed (see
# scripts/_setup.sh), train a small MLP on scikit-learn's digits with a checkpoint per iteration, compute LCA
# over every checkpoint pair, and summarise it by layer.
# Usage: scripts/quickstart.sh [RUN_DIR]   (default runs/digits)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/_setup.sh
. scripts/_setup.sh
lca_setup
run="${1:-runs/digits}"
python scripts/train.py configs/digits_mlp.toml "$run" --overwrite
lca compute "$run"
lca summarize "$run/lca.zarr" --by layer
