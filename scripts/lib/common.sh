# shellcheck shell=bash
# The helpers every script in scripts/ shares; sourced, never run. A script starts with
#
#   set -euo pipefail        # (this file adds -E and an ERR trap that names the failing command)
#   cd "$(dirname "$0")/.." || exit 2          # (../.. from scripts/bench)
#   # shellcheck source=scripts/lib/common.sh
#   source scripts/lib/common.sh
#
# PROG (set it before sourcing; default: the script's file name without .sh) names the script in
# its messages:
#   say MSG...   "PROG: MSG" on stdout
#   step MSG...  "==> MSG" on stdout (==> bold on a terminal)
#   ok MSG...    "    ok MSG" on stdout (ok green on a terminal)
#   die MSG...   "PROG: MSG" on stderr, exit 2 (bad usage)
#   fail MSG...  "PROG: FAIL_TAG MSG" on stderr (red on a terminal); then the script's on_fail
#                function, if it defines one (to keep logs, show context); exit 1
# Colours (C_BOLD C_DIM C_GREEN C_RED C_OFF) are empty unless stdout is a terminal.

PROG=${PROG:-$(basename "$0" .sh)}
# A command that stops the script through set -e says so (which line, which command, its status)
# instead of ending it silently; -E extends this to functions. A script may set its own ERR trap.
set -E
_on_err() { # STATUS LINE COMMAND
  (( BASH_SUBSHELL == 0 )) || return 0
  printf '%s: line %s: "%s" exited %s (set -e stops the script here)\n' "$PROG" "$2" "$3" "$1" >&2
}
trap '_on_err $? $LINENO "$BASH_COMMAND"' ERR
FAIL_TAG=${FAIL_TAG:-}
# shellcheck disable=SC2034 # the colours are for the scripts that source this file
if [[ -t 1 ]]; then
  C_BOLD=$'\e[1m' C_DIM=$'\e[2m' C_GREEN=$'\e[32m' C_RED=$'\e[31m' C_OFF=$'\e[0m'
else
  C_BOLD='' C_DIM='' C_GREEN='' C_RED='' C_OFF=''
fi

say() { printf '%s: %s\n' "$PROG" "$*"; }
step() { printf '%s==>%s %s\n' "$C_BOLD" "$C_OFF" "$*"; }
ok() { printf '    %sok%s %s\n' "$C_GREEN" "$C_OFF" "$*"; }
die() { printf '%s: %s\n' "$PROG" "$*" >&2; exit 2; }
fail() {
  printf '%s%s: %s%s%s\n' "$C_RED" "$PROG" "$FAIL_TAG" "$*" "$C_OFF" >&2
  if declare -F on_fail >/dev/null; then on_fail "$@" || true; fi
  exit 1
}
