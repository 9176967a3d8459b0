#!/usr/bin/env bash
# Lints the repository's own scripts (the scripts/test.sh stages shellcheck and ruff).
#
#   scripts/lint-scripts.sh shellcheck   # every shell script (scripts/**/*.sh, .ci/run), default severity
#   scripts/lint-scripts.sh ruff         # every Python script (scripts/**/*.py, scripts/athena-local)
#   scripts/lint-scripts.sh              # both
#
# ShellCheck is a Debian package (scripts/setup.sh installs it; scripts/setup.sh --check reports
# it missing); it follows `source scripts/lib/common.sh` (-x, run from the repository root).
# ruff lives in the project-local virtualenv .venv-ruff, created on first use by scripts/lib/venv.sh
# (pinned; gitignored); its rules are in ruff.toml. Exit status: 0 clean, 1 findings or a missing
# tool (the message says how to install it), 2 usage.
set -euo pipefail
cd "$(dirname "$0")/.." || exit 2
# shellcheck source=scripts/lib/common.sh
source scripts/lib/common.sh

RUFF=ruff==0.17.5

# Tracked and new (not ignored) files under the given paths.
files() { git ls-files --cached --others --exclude-standard -- "$@" | sort -u; }

run_shellcheck() {
  command -v shellcheck >/dev/null ||
    fail "shellcheck is not installed (install: scripts/setup.sh, or apt-get install shellcheck)"
  local scripts=()
  mapfile -t scripts < <(files 'scripts/*.sh' .ci/run)
  (( ${#scripts[@]} )) || fail "no shell scripts found"
  say "shellcheck $(shellcheck --version | sed -n 's/^version: //p'): ${#scripts[@]} scripts"
  shellcheck -x "${scripts[@]}" || fail "shellcheck found problems (above)"
  say "shellcheck clean"
}

run_ruff() {
  local venv
  venv=$(scripts/lib/venv.sh ruff "$RUFF") ||
    fail "cannot install $RUFF (retry: scripts/lib/venv.sh ruff $RUFF)"
  local py=() f
  while read -r f; do
    if [[ $f == *.py ]] || { [[ $f != *.* ]] && head -n 1 "$f" | grep -q '^#!.*python'; }; then py+=("$f"); fi
  done < <(files scripts)
  (( ${#py[@]} )) || fail "no Python scripts found"
  say "$("$venv/bin/ruff" --version): ${#py[@]} files"
  "$venv/bin/ruff" check --no-cache --quiet "${py[@]}" || fail "ruff found problems (above)"
  say "ruff clean"
}

case ${1:-all} in
  shellcheck) run_shellcheck ;;
  ruff) run_ruff ;;
  all) run_shellcheck; run_ruff ;;
  -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' ;;
  *) die "unknown argument '$1' (shellcheck, ruff or none; --help)" ;;
esac
