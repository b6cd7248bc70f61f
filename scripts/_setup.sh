# Sourced by scripts/quickstart.sh and scripts/test.sh: make sure .venv exists and holds this project installed
# as the README's "Install" section says, with the extra the calling script needs, then activate it.
#
#   lca_setup EXTRA [ALSO_FINE...]   e.g. `lca_setup examples dev`: install ".[examples]" unless .venv already
#                                    holds this pyproject.toml installed with `examples` or `dev` (a superset)
#
# Idempotent and quick when nothing changed: the install is skipped while .venv/.lca-install-stamp holds the
# hash of pyproject.toml and of the install command, and an extra that will do. Set LCA_PYTHON to choose the
# interpreter (default python3; Python 3.11 or newer). Set LCA_SKIP_SETUP=1 to use whatever environment is
# active.

lca_setup() {
  local root extra install stamp want have python ok
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  extra="${1:?lca_setup needs the extra to install}"
  if [ "${LCA_SKIP_SETUP:-0}" = "1" ]; then
    return 0
  fi
  # The README's install command, the extra appended (torch is pinned so that pip takes the CPU wheel on this kind
  # of machine instead of downloading a CUDA build; see README "Install").
  install=(python -m pip install torch==2.13.0 -e)
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
  # The stamp is "<hash> <extra>": any extra named in the arguments will do (dev holds examples).
  have="$(cat "$stamp" 2>/dev/null || true)"
  for ok in "$@"; do
    if [ "$have" = "$want $ok" ] && command -v lca >/dev/null 2>&1; then
      return 0
    fi
  done
  echo "setup: installing lca-cli[$extra] and its dependencies into .venv (a minute or more the first time)" >&2
  # -qq: pip prints errors only, not the warning it gives for every index location a package is missing from.
  # setuptools reports every editable install as a warning ("Editable installation ... be careful with
  # folders ... with the same name as your package"): expected here, so filtered out; other warnings show.
  (cd "$root" && python -m pip install -qq --upgrade pip \
    && PYTHONWARNINGS="ignore:Editable installation" "${install[@]}" ".[$extra]" -qq) || return 1
  echo "$want $extra" > "$stamp"
}
