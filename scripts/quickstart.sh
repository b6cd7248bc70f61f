#!/usr/bin/env bash
# The main job on embedded data, set-up included: create .venv and install what the main job needs when needed
# (lca-cli[examples]: torch, scikit-learn and the core; an environment that already has [dev] will do; see
# scripts/_setup.sh), train a small MLP on scikit-learn's digits with a checkpoint per iteration, compute LCA
# over every checkpoint pair, summarise both evaluation sets by layer and say what to try next.
# Usage: scripts/quickstart.sh [RUN_DIR]   (default runs/digits)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/_setup.sh
. scripts/_setup.sh
lca_setup examples dev
run="${1:-runs/digits}"
store="$run/lca.zarr"
python scripts/train.py configs/digits_mlp.toml "$run" --overwrite
lca compute "$run"
for set in train val; do
  echo
  lca summarize "$store" --by layer --set "$set"
done
hint=""
if ! python -c 'import matplotlib' >/dev/null 2>&1; then
  hint="(lca report needs matplotlib: python -m pip install -e '.[report]')"
fi
cat <<TXT

Made: $run (a checkpoint per iteration and lca.toml) and $store (the LCA of every
checkpoint pair, sets train and val; the two tables above sum it by layer).
Next, with .venv active (. .venv/bin/activate):
  lca report $store --out digits.html                # figures, one page
  lca summarize $store --by neuron --top 10          # the units that helped most
  lca summarize $store --by iteration --steps :10    # the first iterations
TXT
if [ -n "$hint" ]; then
  echo "$hint"
fi
