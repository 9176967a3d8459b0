#!/usr/bin/env bash
# Runs meshlat's coverage-guided fuzz targets (cargo fuzz, libFuzzer) for a bounded time each,
# starting from the committed seed corpus.
#   scripts/fuzz.sh                 # every target, 20 s each (the `fuzz` stage of scripts/test.sh)
#   scripts/fuzz.sh -t 300 udp_wire # one target, five minutes
#   scripts/fuzz.sh --list
#
# Fuzz crates live next to what they fuzz, outside the workspace: proto/fuzz (join token, relay
# grants, job specs, the protobuf messages the controller accepts from agents and peers) and
# agent/fuzz (the UDP wire decoder, the Firehose spool batch reader), controller/fuzz (the JSON job
# spec of the REST API and CLI). Seeds: scripts/lib/fuzz_seeds.py writes the binary ones. Needs the machine's nightly
# toolchain (`cargo +nightly`) and cargo-fuzz (scripts/setup.sh installs it).
#
# Built with `--sanitizer none` and debug assertions: the workspace denies `unsafe_code`, so what a
# fuzzer can find is a panic, an overflow, an abort, unbounded memory or a hang — all caught by
# libFuzzer itself (-rss_limit_mb, -timeout) — and the build is much cheaper on 2 cores.
# New inputs go to target/fuzz/corpus/TARGET (the committed seeds stay untouched); a crash is
# saved under target/fuzz/artifacts/TARGET/ and fails the run with the command to reproduce it.
# A crash found and fixed becomes a committed seed (the regression test) in FUZZ_DIR/corpus/TARGET.
set -euo pipefail
cd "$(dirname "$0")/.." || exit 2
root=$PWD
secs=20
list=0
only=()
while (( $# )); do
  case $1 in
    -t) secs=${2:?-t needs seconds}; shift ;;
    --list) list=1 ;;
    -h|--help) sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "fuzz.sh: unknown flag $1 (try --help)" >&2; exit 2 ;;
    *) only+=("$1") ;;
  esac
  shift
done

dirs=(proto/fuzz agent/fuzz controller/fuzz)
declare -A dir_of=()
for d in "${dirs[@]}"; do
  [[ -f $d/Cargo.toml ]] || continue
  for f in "$d"/fuzz_targets/*.rs; do
    t=$(basename "$f" .rs)
    dir_of[$t]=$d
  done
done
if (( list )); then
  for t in "${!dir_of[@]}"; do echo "$t (${dir_of[$t]})"; done | sort
  exit 0
fi
if (( ${#only[@]} == 0 )); then
  mapfile -t only < <(printf '%s\n' "${!dir_of[@]}" | sort)
fi
for t in "${only[@]}"; do
  [[ -n ${dir_of[$t]:-} ]] || { echo "fuzz.sh: no fuzz target '$t' (--list shows them)" >&2; exit 2; }
done

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz.sh: the nightly toolchain is missing: 'cargo +nightly' does not run. cargo fuzz needs it;" >&2
  echo "  install it with 'rustup toolchain install nightly' where a toolchain can be downloaded." >&2
  exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: cargo-fuzz is missing: run scripts/setup.sh (or: cargo install cargo-fuzz --locked)" >&2
  exit 1
fi

tdir=$root/target/fuzz
mkdir -p "$tdir"
# Build each fuzz crate once (all its targets), then run the targets.
declare -A built=()
fail=0
summary=()
for t in "${only[@]}"; do
  d=${dir_of[$t]}
  if [[ -z ${built[$d]:-} ]]; then
    echo "fuzz: building $d (nightly, no sanitizer, debug assertions)"
    t0=$SECONDS
    cargo +nightly fuzz build --fuzz-dir "$d" --sanitizer none --debug-assertions \
      --target-dir "$tdir/build" 2>&1 | grep -Ev '^\s+(Compiling|Downloaded|Downloading)' || {
      echo "fuzz: FAIL: building $d" >&2; exit 1; }
    echo "fuzz: built $d in $((SECONDS - t0)) s"
    built[$d]=1
  fi
  corpus=$tdir/corpus/$t
  art=$tdir/artifacts/$t
  rm -rf "$art"; mkdir -p "$corpus" "$art"
  seeds=$d/corpus/$t
  mkdir -p "$seeds"
  log=$tdir/$t.log
  echo "fuzz: $t for ${secs}s (seeds: $(find "$seeds" -type f | wc -l) in $seeds)"
  rc=0
  # -rss_limit_mb: a decoder that allocates from a length field fails here, not the host.
  MESHLAT_FUZZ_TMP=${MESHLAT_FUZZ_TMP:-$( [[ -d /dev/shm && -w /dev/shm ]] && echo /dev/shm || echo "${TMPDIR:-/tmp}")} \
  cargo +nightly fuzz run --fuzz-dir "$d" --sanitizer none --debug-assertions \
    --target-dir "$tdir/build" "$t" "$corpus" "$seeds" -- \
    -max_total_time="$secs" -rss_limit_mb=1024 -malloc_limit_mb=512 -timeout=5 \
    -artifact_prefix="$art/" -print_final_stats=1 >"$log" 2>&1 || rc=$?
  runs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -Eo '[0-9]+$' || echo "?")
  cov=$(grep -Eo 'cov: [0-9]+' "$log" | tail -1 | grep -Eo '[0-9]+' || echo "?")
  if (( rc != 0 )); then
    fail=1
    crash=$(find "$art" -type f 2>/dev/null | head -1 || true)
    echo "fuzz: FAIL: $t (exit $rc) after $runs runs; last lines of $log:" >&2
    tail -n 25 "$log" | sed 's/^/    /' >&2
    echo "fuzz: reproduce: cargo +nightly fuzz run --fuzz-dir $d -s none -a $t ${crash:-<artifact>}" >&2
    echo "fuzz: once fixed, commit the input as a seed: cp ${crash:-<artifact>} $seeds/" >&2
    summary+=("$t FAIL")
  else
    summary+=("$t ok: $runs runs, coverage $cov")
  fi
done
echo "fuzz: summary"
printf '  %s\n' "${summary[@]}"
exit $fail
