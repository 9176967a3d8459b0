#!/usr/bin/env bash
# Installs what the dashboard stage (scripts/test_dashboard.py) needs, idempotently; scripts/setup.sh
# runs it.
#   scripts/browser/setup.sh           # install what is missing
#   scripts/browser/setup.sh --check   # only report what is missing (exit 1 if anything is)
#
# Chromium: Debian's package `chromium` (/usr/bin/chromium), only if it is absent. Node.js 20 or
# newer (playwright-core's minimum): the apt package `nodejs` if `node` or `npm` is absent.
# scripts/browser/node_modules: `npm ci` from the committed package-lock.json (playwright-core,
# pinned), only when node_modules is missing or the lock changed since the last install (its
# SHA-256 is kept in node_modules/.meshlat-lock.sha256). No browser is downloaded by npm:
# playwright-core drives the Debian Chromium.
set -euo pipefail
cd "$(dirname "$0")/../.." || exit 2
PROG=browser-setup
# shellcheck source=scripts/lib/common.sh
source scripts/lib/common.sh

DIR=scripts/browser
STAMP=$DIR/node_modules/.meshlat-lock.sha256
CHROMIUM=/usr/bin/chromium
check_only=0
[[ "${1:-}" == "--check" ]] && check_only=1

lock_sum() { sha256sum "$DIR/package-lock.json" | cut -d' ' -f1; }
node_major() { node --version 2>/dev/null | sed -n 's/^v\([0-9]*\).*/\1/p'; }
modules_ok() {
  [[ -d $DIR/node_modules/playwright-core && -f $STAMP ]] && [[ $(cat "$STAMP") == "$(lock_sum)" ]]
}

missing=()
[[ -x $CHROMIUM ]] || missing+=(chromium)
{ command -v node >/dev/null && command -v npm >/dev/null; } || missing+=(nodejs)

if (( check_only )); then
  status=0
  (( ${#missing[@]} )) && {
    echo "missing Debian packages for the dashboard stage: ${missing[*]} (install: scripts/setup.sh, or apt-get install ${missing[*]})"
    status=1
  }
  major=$(node_major)
  if command -v node >/dev/null && (( ${major:-0} < 20 )); then
    echo "node $(node --version) is too old for playwright-core (needs 20 or newer; install Node.js 20+)"
    status=1
  fi
  modules_ok || {
    echo "missing or stale $DIR/node_modules (install: scripts/setup.sh, or cd $DIR && npm ci)"
    status=1
  }
  exit $status
fi

if (( ${#missing[@]} )); then
  say "installing Debian packages: ${missing[*]}"
  SUDO=""
  [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get -o Acquire::Retries=3 update -qq
  $SUDO apt-get -o Acquire::Retries=3 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
major=$(node_major)
(( ${major:-0} >= 20 )) ||
  fail "node $(node --version 2>/dev/null || echo missing) is too old for playwright-core (needs 20 or newer; install Node.js 20+)"
if ! modules_ok; then
  say "npm ci in $DIR (playwright-core from package-lock.json)"
  (cd "$DIR" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error) ||
    fail "npm ci in $DIR failed (retry: cd $DIR && npm ci)"
  lock_sum >"$STAMP"
fi
say "ok ($($CHROMIUM --version 2>/dev/null | head -1), node $(node --version), playwright-core $(node -p "require('./$DIR/node_modules/playwright-core/package.json').version"))"
