# Sourced by scripts/quickstart.sh and scripts/test.sh: make sure .venv exists and holds this project
# installed exactly as the README's "Install" section says, then activate it.
#
# Idempotent and quick when nothing changed: the install is skipped while .venv/.lca-install-stamp matches
# the hash of pyproject.toml and of the install command below. Set LCA_PYTHON to choose the interpreter
# (default python3; Python 3.11 or newer). Set LCA_SKIP_SETUP=1 to use whatever environment is active.

lca_setup() {
  local root install stamp want python
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  if [ "${LCA_SKIP_SETUP:-0}" = "1" ]; then
    return 0
  fi
  # The README's install command, verbatim (torch is pinned so that pip takes the CPU wheel on this kind of
  # machine instead of downloading a CUDA build; see README "Install").
  install=(python -m pip install torch==2.13.0 -e ".[dev]")
  python="${LCA_PYTHON:-python3}"
  if ! command -v "$python" >/dev/null 2>&1; then
    echo "Error: $python not found; install Python 3.11+ or set LCA_PYTHON=/path/to/python3.11" >&2
    return 1
  fi
  if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "Error: $("$python" --version 2>&1) is too old; lca needs Python 3.11+ (set LCA_PYTHON)" >&2
    return 1
  fi
  if [ ! -x "$root/.venv/bin/python" ]; then
    echo "setup: creating $root/.venv" >&2
    "$python" -m venv "$root/.venv" || return 1
  fi
  # shellcheck disable=SC1091
  . "$root/.venv/bin/activate" || return 1
  want="$( (cat "$root/pyproject.toml"; echo "${install[*]}") | sha256sum | cut -d' ' -f1)"
  stamp="$root/.venv/.lca-install-stamp"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && command -v lca >/dev/null 2>&1; then
    return 0
  fi
  echo "setup: installing lca-cli and its dependencies into .venv (about a minute the first time)" >&2
  (cd "$root" && python -m pip install --quiet --upgrade pip && "${install[@]}" --quiet) || return 1
  echo "$want" > "$stamp"
}
