#!/usr/bin/env bash
# meshlat benchmarks against the standard tools, on this machine, in one run.
#   scripts/bench/run.sh            # full: release build, 3 alternating rounds, medians, targets
#   scripts/bench/run.sh --smoke    # quick harness check on debug binaries (used by scripts/test.sh)
# Results: a table on stdout and JSON in target/bench/results.json.
set -euo pipefail
cd "$(dirname "$0")/../.." || exit 2
scripts/setup.sh --check >/dev/null || { echo "bench: missing tools; run scripts/setup.sh" >&2; scripts/setup.sh --check; exit 1; }
profile=release
[[ "${1:-}" == "--smoke" ]] && profile=debug
if [[ $profile == release ]]; then
  cargo build --release --locked -p meshlat-agent -p meshlat-controller --bins --examples
else
  cargo build --locked -p meshlat-agent -p meshlat-controller --bins --examples
fi
status=0
python3 scripts/bench/bench.py --profile "$profile" "$@" || status=1
if [[ $profile == release ]]; then
  echo "firehose sink:"
  BENCH_PROFILE=release scripts/bench/firehose.sh || status=1
fi
exit $status
