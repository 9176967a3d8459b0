#!/usr/bin/env bash
# Ensures a project-local Python virtualenv with pinned packages, idempotently.
#
#   scripts/lib/venv.sh NAME REQUIREMENT...      e.g. scripts/lib/venv.sh analytics duckdb==1.5.6 sqlglot==30.30.0
#
# Creates <repo>/.venv-NAME (gitignored via /.venv*) with `python3 -m venv` if missing, installs
# the requirements with pip from the package registry, and records them in
# .venv-NAME/.meshlat-requirements. When that stamp already lists exactly these requirements
# nothing is installed, so repeated calls are cheap (no network). Prints the venv's directory on
# stdout (progress goes to stderr). Exits non-zero with the command to run if python3/venv/pip
# is unavailable or an install fails.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
name=${1:?usage: scripts/lib/venv.sh NAME REQUIREMENT...}
shift
(( $# )) || { echo "venv.sh: no requirements given for .venv-$name" >&2; exit 2; }
venv="$root/.venv-$name"
stamp="$venv/.meshlat-requirements"
want="$(printf '%s\n' "$@" | sort)"

if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  echo "$venv"
  exit 0
fi
command -v python3 >/dev/null || {
  echo "venv.sh: python3 not found (install: apt-get install python3 python3-venv)" >&2; exit 1; }
if [[ ! -x "$venv/bin/python" ]]; then
  echo "venv.sh: creating $venv" >&2
  python3 -m venv "$venv" >&2 || {
    echo "venv.sh: python3 -m venv failed (install: apt-get install python3-venv)" >&2; exit 1; }
fi
echo "venv.sh: installing into .venv-$name: $*" >&2
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$@" >&2 || {
  echo "venv.sh: pip install failed (retry: $venv/bin/python -m pip install $*)" >&2; exit 1; }
printf '%s\n' "$want" > "$stamp"
echo "$venv"
