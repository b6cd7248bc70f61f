#!/usr/bin/env bash
# The test suite, set-up included: create .venv and install the project with its dev extra when needed (see
# scripts/_setup.sh), then run pytest. Extra arguments go to pytest, e.g. scripts/test.sh -m "not slow" -x
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/_setup.sh
. scripts/_setup.sh
lca_setup dev
python -m pytest "$@"
