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
# One installer at a time per venv (two stages' scripts, or a query and a test, may ask for it at
# once): the others wait here, then find the stamp written.
if command -v flock >/dev/null; then
  exec 9> "$root/.venv-$name.lock"
  flock 9
  if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "$venv"
    exit 0
  fi
fi
command -v python3 >/dev/null || {
  echo "venv.sh: python3 not found (install: apt-get install python3 python3-venv)" >&2; exit 1; }
if [[ ! -x "$venv/bin/python" ]]; then
  echo "venv.sh: creating $venv" >&2
  python3 -m venv "$venv" >&2 || {
    echo "venv.sh: python3 -m venv failed (install: apt-get install python3-venv)" >&2; exit 1; }
fi
echo "venv.sh: installing into .venv-$name: $*" >&2
# A registry that does not answer for a moment is not a failure of the project: three tries, 5 s
# and 15 s apart, each printing pip's own error.
for try in 1 2 3; do
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --retries 5 --timeout 30 "$@" >&2 && break
  (( try < 3 )) || {
    echo "venv.sh: pip install failed 3 times (retry: $venv/bin/python -m pip install $*)" >&2; exit 1; }
  echo "venv.sh: pip install failed (try $try of 3); trying again in $((try * try * 5)) s" >&2
  sleep $((try * try * 5))
done
printf '%s\n' "$want" > "$stamp"
echo "$venv"
