#!/usr/bin/env bash
# Installs what meshlat's tests, benchmarks and demo need, idempotently.
#   scripts/setup.sh            # everything
#   scripts/setup.sh --check    # only report what is missing (exit 1 if anything is)
#
# Debian packages: sockperf, irtt, fping, wrk (reference tools for accuracy and speed comparisons;
# wrk: scripts/bench's load_vs_wrk);
# iproute2 (`ip netns`: controller/tests/netns_addresses.rs runs agents in network namespaces);
# ShellCheck (the shellcheck stage: scripts/lint-scripts.sh); prometheus (the server and promtool:
# the prometheus stage checks, unit-tests and runs the shipped alert rules against a local mesh).
# Rust components: rustfmt, clippy (from the machine's rustup toolchain).
# The dashboard stage's browser test: scripts/browser/setup.sh (Debian's chromium, Node.js 20+,
# playwright-core from scripts/browser/package-lock.json with npm ci).
set -euo pipefail
cd "$(dirname "$0")/.." || exit 2

APT_PKGS=(sockperf irtt fping wrk iproute2 shellcheck prometheus)
check_only=0
[[ "${1:-}" == "--check" ]] && check_only=1

missing_apt=()
for p in "${APT_PKGS[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing_apt+=("$p")
done

missing_rust=()
cargo fmt --version >/dev/null 2>&1 || missing_rust+=(rustfmt)
cargo clippy --version >/dev/null 2>&1 || missing_rust+=(clippy)
# The fuzz stage (scripts/fuzz.sh) needs the machine's preinstalled nightly toolchain (it cannot
# be downloaded here) and cargo-fuzz from crates.io.
nightly_ok=1
cargo +nightly --version >/dev/null 2>&1 || nightly_ok=0
fuzz_ok=1
cargo fuzz --version >/dev/null 2>&1 || fuzz_ok=0

if (( check_only )); then
  ok=0
  (( ${#missing_apt[@]} )) && { echo "missing Debian packages: ${missing_apt[*]} (install: scripts/setup.sh, or apt-get install ${missing_apt[*]})"; ok=1; }
  (( ${#missing_rust[@]} )) && { echo "missing Rust components: ${missing_rust[*]} (install: rustup component add ${missing_rust[*]})"; ok=1; }
  (( nightly_ok )) || { echo "missing the nightly toolchain ('cargo +nightly' fails); the fuzz stage needs it (rustup toolchain install nightly, where downloads work)"; ok=1; }
  (( fuzz_ok )) || { echo "missing cargo-fuzz (install: scripts/setup.sh, or cargo install cargo-fuzz --locked)"; ok=1; }
  scripts/browser/setup.sh --check || ok=1
  exit $ok
fi

if (( ${#missing_apt[@]} )); then
  echo "setup: installing Debian packages: ${missing_apt[*]}"
  SUDO=""
  [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get -o Acquire::Retries=3 update -qq
  $SUDO apt-get -o Acquire::Retries=3 install -y -qq --no-install-recommends "${missing_apt[@]}" >/dev/null
fi
if (( ${#missing_rust[@]} )); then
  echo "setup: installing Rust components: ${missing_rust[*]}"
  rustup component add "${missing_rust[@]}"
fi
if (( ! nightly_ok )); then
  echo "setup: the nightly toolchain is missing ('cargo +nightly --version' fails): the fuzz stage needs" >&2
  echo "  it, and it cannot be downloaded here; on a machine with downloads: rustup toolchain install nightly" >&2
  exit 1
fi
if (( ! fuzz_ok )); then
  echo "setup: installing cargo-fuzz (cargo install cargo-fuzz --locked)"
  cargo install cargo-fuzz --locked --quiet
fi
scripts/browser/setup.sh
echo "setup: ok (sockperf $(sockperf --version 2>/dev/null | grep -o 'version [0-9.]*' | head -1), $(irtt version 2>/dev/null | head -1), fping $(fping -v 2>&1 | grep -o '[0-9][0-9.]*' | head -1), $(cargo fuzz --version 2>/dev/null))"
