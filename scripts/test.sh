#!/usr/bin/env bash
# meshlat's one test command: installs what the tests need, then runs every suite.
#   scripts/test.sh            # everything (what CI runs)
#   scripts/test.sh --quick    # skip the slower accuracy and benchmark-harness stages
# analytics: shipped Athena SQL through scripts/athena-local on synthetic records, schema checks
# (.venv-analytics); demo: scripts/test_demo.sh runs scripts/demo.sh bounded;
# infra-lint: cfn-lint and checkov on infra/cloudformation (.venv-cfn, .venv-checkov);
# infra-invariants: scripts/test_infra.py (.venv-infra); deploy-dry-run: scripts/test_deploy.sh (no AWS);
# images: scripts/images.sh --debug test (podman, buildah; hadolint runs in infra-lint).
# Each stage is timed; a summary is printed at the end; exit status is non-zero if any stage failed.
set -uo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
quick=0
[[ "${1:-}" == "--quick" ]] && quick=1

names=(); results=(); times=()
run_stage() {
  local name=$1; shift
  echo
  echo "=== stage: $name: $*"
  local t0=$SECONDS
  if "$@"; then results+=(PASS); else results+=(FAIL); fi
  names+=("$name"); times+=($((SECONDS - t0)))
  echo "=== stage: $name: ${results[-1]} in ${times[-1]}s"
}

run_stage setup scripts/setup.sh
run_stage tools scripts/setup.sh --check
run_stage fmt cargo fmt --all -- --check
# --all-targets leaves out test targets marked `test = false` (the timing and moto suites): lint them too.
clippy_all() {
  cargo clippy --workspace --all-targets --locked -- -D warnings &&
    cargo clippy -p meshlat-agent --locked --test accuracy --test linkemu --test firehose_moto -- -D warnings &&
    cargo clippy -p meshlat-controller --locked --test state_s3_moto -- -D warnings
}
run_stage clippy clippy_all
run_stage build cargo build --workspace --bins --locked
run_stage test cargo test --workspace --locked --no-fail-fast
run_stage doc env RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked
run_stage analytics scripts/test_analytics.py
# The README's first command, bounded: scripts/demo.sh -d 20 (two federated controllers, four
# agents, the link emulator); checks records of both regions in the Hive layout, cross-region RTT
# against the emulated delay, the printed athena-local command, a clean stop. ~30 s.
run_stage demo scripts/test_demo.sh
# Soak, CI form: the demo for 3 minutes; fails if any demo process's threads or descriptors grow
# by more than 10 % (floors +4 threads, +8 fds) after the first 2 minutes. ~4 min.
run_stage soak scripts/soak_demo.sh --no-build 3
run_stage infra-lint scripts/lint-infra.sh
run_stage infra-invariants scripts/test_infra.py
run_stage deploy-dry-run scripts/test_deploy.sh
# Both images built from the debug binaries of the build stage (same Containerfiles, local bases;
# apt-installs podman/buildah/runc/busybox-static on first use) and run with podman: agent serve
# answers an agent probe from another container, controller health, non-root. ~20 s.
run_stage images scripts/images.sh --debug test
# The Firehose sink end to end through a local moto server (Firehose + S3), and the controller's
# S3 state store (controller and agent processes, a restart on an empty data dir); both are
# `test = false` targets, so only this stage runs them.
firehose_moto() {
  if ! scripts/moto.sh start >/dev/null; then
    echo "moto server did not start (scripts/moto.sh start; it installs moto[server] into .venv-moto)" >&2
    return 1
  fi
  local rc=0
  MESHLAT_TEST_MOTO_URL=$(scripts/moto.sh url) \
    cargo test -p meshlat-agent --locked --test firehose_moto -- --nocapture || rc=$?
  cargo build -p meshlat-agent --bin agent --locked &&
    MESHLAT_TEST_MOTO_URL=$(scripts/moto.sh url) \
      cargo test -p meshlat-controller --locked --test state_s3_moto -- --nocapture || rc=$?
  scripts/moto.sh stop
  return $rc
}
run_stage firehose-moto firehose_moto
if (( ! quick )); then
  run_stage accuracy cargo test -p meshlat-agent --locked --test accuracy --test linkemu -- --test-threads=1 --nocapture
  run_stage bench-harness scripts/bench/run.sh --smoke
fi

echo
echo "=== summary"
fail=0
for i in "${!names[@]}"; do
  printf '  %-14s %s %5ss\n' "${names[$i]}" "${results[$i]}" "${times[$i]}"
  [[ ${results[$i]} == PASS ]] || fail=1
done
if (( fail )); then echo "=== FAILED"; exit 1; fi
echo "=== all stages passed"
