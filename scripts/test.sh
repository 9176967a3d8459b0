#!/usr/bin/env bash
# meshlat's one test command: installs what the tests need, then runs every suite.
#   scripts/test.sh                  # everything (what CI runs)
#   scripts/test.sh --quick          # skip the slower accuracy and benchmark-harness stages
#   scripts/test.sh --only A,B       # only the named stages (e.g. --only fmt,clippy); names as printed
# stages shellcheck and ruff: scripts/lint-scripts.sh (shellcheck from scripts/setup.sh, ruff in .venv-ruff);
# docs: scripts/check_docs.py (README paths) and the crates' readme_commands tests (command lines);
# analytics: shipped Athena SQL through scripts/athena-local on synthetic records, schema checks
# (.venv-analytics); demo: scripts/test_demo.sh runs scripts/demo.sh bounded;
# infra-lint: cfn-lint and checkov on infra/cloudformation (.venv-cfn, .venv-checkov);
# infra-invariants: scripts/test_infra.py (.venv-infra); deploy-dry-run: scripts/test_deploy.sh (no AWS);
# images: scripts/images.sh --debug test (podman, buildah; hadolint runs in infra-lint);
# prometheus: scripts/test_prometheus.py (promtool and a real Prometheus from scripts/setup.sh);
# dashboard: scripts/test_dashboard.py (Chromium and scripts/browser/node_modules from scripts/setup.sh).
#
# Every stage runs under its own time budget (`timeout`, printed with the stage): a hung stage fails
# by itself, named, instead of eating CI's limit. Every stage must also leave nothing running: its
# processes carry MESHLAT_TEST_STAGE=<token> in their environment and run in the process group of
# the stage's `timeout`; after the stage, any process still carrying either (and any new podman
# container) is listed, killed and fails the stage that leaked it.
# Each stage is timed; a summary is printed at the end; exit status is non-zero if any stage failed.
# A stage's command runs in `bash -euo pipefail` (a stage that is a function stops at its first
# failing command); this script itself goes on after a failed stage and reports it.
set -euo pipefail
cd "$(dirname "$0")/.." || exit 2
PROG=test.sh
# shellcheck source=scripts/lib/common.sh
source scripts/lib/common.sh
export CARGO_TERM_COLOR=never
quick=0
only=""
while (( $# )); do
  case $1 in
    --quick) quick=1 ;;
    --only) only=${2:?--only needs a comma-separated list of stage names}; shift ;;
    --only=*) only=${1#--only=} ;;
    -h|--help) sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (try --help)" ;;
  esac
  shift
done

# PIDs of processes still alive that carry the stage token in their environment or sit in process
# group PGID (zombies and this shell excluded). Prints "pid command-line" lines.
stage_leftovers() {
  local token=$1 pgid=$2 d pid
  for d in /proc/[0-9]*; do
    pid=${d#/proc/}
    [[ $pid == "$$" || $pid == "$BASHPID" ]] && continue
    local stat
    stat=$(cat "$d/stat" 2>/dev/null) || continue
    # fields after the ")" of the command name: state ppid pgrp ...
    local rest=${stat##*) } state pg
    read -r state _ pg _ <<<"$rest"
    [[ $state == Z || $state == X ]] && continue
    if [[ $pg == "$pgid" ]] || grep -qaF "MESHLAT_TEST_STAGE=$token" "$d/environ" 2>/dev/null; then
      echo "$pid $(tr '\0' ' ' <"$d/cmdline" 2>/dev/null | cut -c1-160)"
    fi
  done
}
# Running podman containers (rootful podman is shared by every session on the machine): those
# labelled meshlat-test-stage=<another token> belong to someone else's stage and are left out;
# unlabelled ones and this stage's count. (scripts/test_aws_local.sh labels its containers.)
containers() {
  command -v podman >/dev/null 2>&1 || return 0
  { podman ps --no-trunc --format '{{.ID}} {{index .Labels "meshlat-test-stage"}}' 2>/dev/null || true; } |
    awk -v t="${1:-}" '$2 == "" || $2 == "<no" || $2 == t { print $1 }' | sort
}

names=(); results=(); times=(); budgets=()
logs=$PWD/target/test-logs
mkdir -p "$logs"
# The stage runs in its own process group (timeout's), which a terminal's Ctrl-C does not reach:
# pass INT/TERM on to it and stop.
cur_pg=""
on_signal() {
  [[ -n $cur_pg ]] && kill -TERM -- "-$cur_pg" 2>/dev/null
  echo; echo "=== interrupted"; exit 130
}
trap on_signal INT TERM

run_stage() {
  local name=$1 budget=$2; shift 2
  if [[ -n $only && ",$only," != *",$name,"* ]]; then return 0; fi
  echo
  echo "=== stage: $name (budget ${budget}s): $*"
  local t0=$SECONDS rc=0 token="$name-$$-$RANDOM$RANDOM" before
  before=$(containers "$token")
  # `timeout` puts itself and the stage in a new process group and, on expiry, signals the whole
  # group (TERM, then KILL 20 s later). Shell functions are exported so the stage can be one.
  # The stage's output goes to the terminal and to target/test-logs/NAME.log: the summary repeats
  # the end of a failed stage's log (CI shows only the end of a long run's output).
  local log=$logs/$name.log
  : > "$log"
  MESHLAT_TEST_STAGE=$token timeout --kill-after=20 "$budget" bash -euo pipefail -c '"$@"' "stage-$name" "$@" \
    > >(tee -a "$log") 2>&1 &
  local pg=$!
  cur_pg=$pg
  wait "$pg" || rc=$?
  cur_pg=""
  if (( rc == 124 || rc == 137 )); then
    echo "=== stage: $name: TIMED OUT: over its budget of ${budget}s (exit $rc)" | tee -a "$log"
  fi
  # Give stopping processes a moment, then anything left is a leak.
  local left="" i
  for i in $(seq 1 20); do
    left=$(stage_leftovers "$token" "$pg")
    [[ -z $left ]] && break
    sleep 0.5
  done
  if [[ -n $left ]]; then
    { echo "=== stage: $name: LEAK: these processes it started are still running (killed now):"
      # shellcheck disable=SC2001 # indents every line
      sed 's/^/      /' <<<"$left"; } | tee -a "$log"
    # shellcheck disable=SC2046
    kill -KILL $(cut -d' ' -f1 <<<"$left") 2>/dev/null || true
    rc=1
  fi
  local new
  new=$(comm -13 <(echo "$before") <(containers "$token") | grep . || true)
  if [[ -n $new ]]; then
    echo "=== stage: $name: LEAK: containers still running (removed now): $new" | tee -a "$log"
    # shellcheck disable=SC2086
    podman rm -f $new >/dev/null 2>&1 || true
    rc=1
  fi
  if (( rc == 0 )); then results+=(PASS); else results+=(FAIL); fi
  names+=("$name"); times+=($((SECONDS - t0))); budgets+=("$budget")
  echo "=== stage: $name: ${results[-1]} in ${times[-1]}s (budget ${budget}s)"
}

run_stage setup 900 scripts/setup.sh
run_stage tools 60 scripts/setup.sh --check
run_stage fmt 120 cargo fmt --all -- --check
# The scripts' own lints, clean at the default severity: shellcheck (every shell script) and ruff
# (every Python script; rules in ruff.toml; .venv-ruff made on first use). A few seconds each.
run_stage shellcheck 60 scripts/lint-scripts.sh shellcheck
run_stage ruff 120 scripts/lint-scripts.sh ruff
# --all-targets leaves out test targets marked `test = false` (the timing and moto suites): lint them too.
clippy_all() {
  cargo clippy --workspace --all-targets --locked -- -D warnings &&
    cargo clippy -p meshlat-agent --locked --test accuracy --test linkemu --test firehose_moto --test secrets_moto -- -D warnings &&
    cargo clippy -p meshlat-controller --locked --test state_s3_moto -- -D warnings
}
export -f clippy_all
run_stage clippy 1500 clippy_all
run_stage build 1200 cargo build --workspace --bins --locked
# The READMEs tell the truth: every repository path they name exists (scripts/check_docs.py), and
# every `agent ...`/`controller ...` command line in their sh blocks parses with the binary's own
# parser (tests/readme_commands.rs of each crate; nothing is started). After build: the two test
# binaries are all it compiles.
docs_check() {
  scripts/check_docs.py
  cargo test --locked -p meshlat-agent --test readme_commands -- --nocapture
  cargo test --locked -p meshlat-controller --test readme_commands -- --nocapture
}
export -f docs_check
run_stage docs 600 docs_check
# Runs as root, as CI does: controller/tests/netns_addresses.rs creates network namespaces (and
# fails, saying so, without the capability; ~5 s).
run_stage test 1800 cargo test --workspace --locked --no-fail-fast
run_stage doc 900 env RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked
run_stage analytics 600 scripts/test_analytics.py
# The README's first command, bounded: scripts/demo.sh -d 20 (two federated controllers, four
# agents, the link emulator); checks records of both regions in the Hive layout, cross-region RTT
# against the emulated delay, the printed athena-local command, a clean stop. As root (CI) the
# demo must use packet-level links (network namespaces joined by linkemu tun routes): tcp and https
# carry the emulated RTT, and a SIGKILLed demo's namespaces and processes are cleaned up by the
# next start. ~60 s.
run_stage demo 300 scripts/test_demo.sh
# Soak, CI form: the demo for 3 minutes; fails if any demo process's threads or descriptors grow
# by more than 10 % (floors +4 threads, +8 fds) after the first 2 minutes. ~4 min.
run_stage soak 420 scripts/soak_demo.sh --no-build 3
# The shipped Prometheus rules (infra/prometheus) checked and unit-tested with promtool, then a
# real Prometheus scraping a local mesh (controller, 4 agents, the link emulator) with the rules at
# a 30 s window: baseline p50 against the injected RTT, every Grafana panel query returns data,
# HighLatency and ProtocolDifferential fire for the one delayed path only and resolve. ~1 min.
run_stage prometheus 180 scripts/test_prometheus.py
# The web dashboard in headless Chromium (playwright-core, scripts/browser; Chromium and
# node_modules from scripts/setup.sh) against a local mesh (controller, 3 agents in 2 regions, the
# link emulator delaying eu -> us by 40 ms RTT): sign-in, the region heatmap's p50 against the
# injected RTT and GET /api/v1/matrix, keyboard, agent view with a relay path, agents tab, a job
# started, acked, updated and stopped, the >60-agent canvas path on 130 faked agents, no console
# errors or CSP violations, sign-out. ~20 s.
run_stage dashboard 240 scripts/test_dashboard.py
run_stage infra-lint 900 scripts/lint-infra.sh
run_stage infra-invariants 600 scripts/test_infra.py
run_stage deploy-dry-run 300 scripts/test_deploy.sh
# Both images built from the debug binaries of the build stage (same Containerfiles, local bases;
# apt-installs podman/buildah/runc/busybox-static on first use) and run with podman: agent serve
# answers an agent probe from another container, controller health, non-root. ~20 s.
run_stage images 900 scripts/images.sh --debug test
# The Firehose sink end to end through a local moto server (Firehose + S3), a load job's
# credentials from moto's Secrets Manager, and the controller's S3 state store (controller and
# agent processes, a restart on an empty data dir); all are `test = false` targets, so only this
# stage runs them.
firehose_moto() {
  if ! scripts/moto.sh start >/dev/null; then
    echo "moto server did not start (scripts/moto.sh start; it installs moto[server] into .venv-moto)" >&2
    return 1
  fi
  local rc=0
  MESHLAT_TEST_MOTO_URL=$(scripts/moto.sh url) \
    cargo test -p meshlat-agent --locked --test firehose_moto -- --nocapture || rc=$?
  MESHLAT_TEST_MOTO_URL=$(scripts/moto.sh url) \
    cargo test -p meshlat-agent --locked --test secrets_moto -- --nocapture || rc=$?
  cargo build -p meshlat-agent --bin agent --locked &&
    MESHLAT_TEST_MOTO_URL=$(scripts/moto.sh url) \
      cargo test -p meshlat-controller --locked --test state_s3_moto -- --nocapture || rc=$?
  scripts/moto.sh stop || true
  return $rc
}
export -f firehose_moto
run_stage firehose-moto 1200 firehose_moto
# The AWS deployment run locally: scripts/test_aws_local.sh renders a three-region
# `deploy.sh --dry-run` and runs its stacks as written in network namespaces (one per VPC and per
# ECS task; nftables from the security groups, NLB and endpoints at the VPC router), podman
# containers (images from the build stage's debug binaries) and moto (Firehose, S3, Secrets
# Manager); asserts the cross-region mesh, relays, records in S3, the athena-local matrix,
# fail-static and a controller restart on an empty disk. Root only. ~3 min.
run_stage aws-local 420 scripts/test_aws_local.sh
# The REST API against its OpenAPI document: schemathesis (.venv-api) on a live controller over
# TLS, 25 examples per operation, seeded; no 5xx, documented statuses and bodies, still healthy.
run_stage api-fuzz 420 scripts/test_api.sh
# Coverage-guided fuzzing (cargo fuzz, nightly): every target of proto/fuzz and agent/fuzz for 20 s
# from its committed seed corpus; a crash fails the stage with the command to reproduce it.
run_stage fuzz 600 scripts/fuzz.sh -t 20
if (( ! quick )); then
  # The accuracy tests run the meshlat-linkemu binary (crate linkemu/): built first, so a stage
  # run alone (--only accuracy) does not use a stale one.
  run_stage accuracy 900 bash -c 'cargo build -p meshlat-linkemu --locked --bins &&
    cargo test -p meshlat-agent --locked --test accuracy --test linkemu -- --test-threads=1 --nocapture'
  run_stage bench-harness 900 scripts/bench/run.sh --smoke
fi

echo
echo "=== summary"
fail=0
for i in "${!names[@]}"; do
  printf '  %-16s %s %5ss  (budget %ss)\n' "${names[$i]}" "${results[$i]}" "${times[$i]}" "${budgets[$i]}"
  [[ ${results[$i]} == PASS ]] || fail=1
done
if (( fail )); then
  for i in "${!names[@]}"; do
    [[ ${results[$i]} == PASS ]] && continue
    echo
    echo "=== ${names[$i]} failed; its failure lines (panics, FAILED tests, FAIL:, errors), then the"
    echo "    last 40 lines of its output ($logs/${names[$i]}.log):"
    # cargo test prints its failures in the middle of a long run, before the last suites.
    grep -aE "panicked at|^test .* FAILED|FAIL:|^error(\[|:)|TIMED OUT|LEAK" "$logs/${names[$i]}.log" |
      head -n 30 | cut -c1-300 | sed 's/^/  ! /' || true
    tail -n 40 "$logs/${names[$i]}.log" | sed 's/^/  | /'
  done
  echo "=== FAILED"
  exit 1
fi
echo "=== all stages passed"
