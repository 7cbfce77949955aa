#!/usr/bin/env bash
# Build (once) and link the two virtual environments the project needs:
#   .venv            -> the app's, on the machine's python3, from requirements-dev.txt
#   .venv-localstack -> LocalStack's, on Python 3.13, from infra/localstack/*.txt
# Both live in a cache outside the clone (CSV_OPENER_CACHE, default ~/.cache/csv-opener), keyed
# by a hash of their requirement files and interpreter, so fresh clones reuse them while any
# change to the pins builds new ones.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${CSV_OPENER_CACHE:-$HOME/.cache/csv-opener}
mkdir -p "$CACHE"

find_python313() {
  local candidates=("${LOCALSTACK_PYTHON:-}")
  if command -v pyenv >/dev/null 2>&1; then
    candidates+=("$(pyenv root)"/versions/3.13*/bin/python3.13)
  fi
  candidates+=(/usr/bin/python3.13 /usr/local/bin/python3.13 python3.13 python3)
  local py
  for py in "${candidates[@]}"; do
    [ -n "$py" ] || continue
    if "$py" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 13))' >/dev/null 2>&1; then
      command -v "$py" || echo "$py"
      return 0
    fi
  done
  echo "error: LocalStack needs Python 3.13 and none was found (tried pyenv versions, python3.13, python3)." >&2
  echo "       Install it (e.g. 'pyenv install 3.13') or point LOCALSTACK_PYTHON at one." >&2
  return 1
}

# ensure_venv LINK PYTHON FILE... : build $CACHE/<name>-<hash> from the pip arguments in FILE...
ensure_venv() {
  local link=$1 python=$2; shift 2
  local key
  key=$( { "$python" -c 'import sys; print(sys.version)'; cat "$@"; } | sha256sum | cut -c1-16)
  local dir="$CACHE/${link#.}-$key"
  (
    flock 9  # a concurrent make waits for the build instead of racing it
    if [ ! -f "$dir/.complete" ]; then
      echo "building $link in $dir (first run with these requirements; a minute or two)" >&2
      rm -rf "$dir"
      "$python" -m venv "$dir"
      "$dir/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
      "$dir/bin/python" -m pip install --quiet --disable-pip-version-check "${PIP_ARGS[@]}" >&2
      touch "$dir/.complete"
    fi
  ) 9>"$dir.lock"
  ln -sfn "$dir" "$link"
}

APP_PYTHON=${APP_PYTHON:-python3}
PIP_ARGS=(-r requirements-dev.txt)
ensure_venv .venv "$APP_PYTHON" requirements.txt requirements-dev.txt

LS_PYTHON=$(find_python313)
PIP_ARGS=(-r infra/localstack/requirements.txt -c infra/localstack/constraints.txt)
ensure_venv .venv-localstack "$LS_PYTHON" infra/localstack/requirements.txt infra/localstack/constraints.txt
