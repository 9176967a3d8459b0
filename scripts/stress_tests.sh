#!/usr/bin/env bash
# Proof under load: runs the timing-sensitive suites N times while a busy loop keeps one core
# busy, and prints pass counts per test and the figures each test printed (min/median/max).
#
#   scripts/stress_tests.sh [--accuracy-only] [--no-load] [N]     # default N = 10
#
# Suites, each run N times, one after the other:
#   accuracy  cargo test -p meshlat-agent --test accuracy --test linkemu -- --test-threads=1
#             (the accuracy stage of scripts/test.sh)
#   e2e       cargo test -p meshlat-controller --test mesh_e2e
#             cargo test -p meshlat-agent --test relay --test udp_loopback --test http_probe
#                                         --test tcp_probe --test quic_probe --test owd --test packet_truth
# (--accuracy-only: the first only.) The test executables are built once and copied to the log
# directory, then run directly (in their package directory, as cargo does), so editing sources
# meanwhile changes nothing. Passes are counted from each executable's test list (`--list`) and
# its `failures:` block; an executable that ends without `test result:` fails all its tests.
# Tests print their measured figures on lines of the form
#   figures <test> key=value key=value ...
# which this script gathers. The busy loop (`while :; do :; done` in sh) runs in its own process
# group and is killed on every exit path (EXIT trap); --no-load runs without it for comparison.
# Not part of scripts/test.sh (10 runs take about 30 minutes). Logs stay in the printed
# directory. Exit status: 0 when every run of every test passed, 1 otherwise, 2 bad usage.
set -euo pipefail
cd "$(dirname "$0")/.." || exit 2
PROG=stress
# shellcheck source=scripts/lib/common.sh
source scripts/lib/common.sh
n=10
load=1
suites=(accuracy e2e)
while [[ $# -gt 0 ]]; do
  case $1 in
    --accuracy-only) suites=(accuracy); shift ;;
    --no-load) load=0; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *)
      [[ $1 =~ ^[1-9][0-9]*$ ]] || die "N must be a positive whole number, not '$1'"
      n=$1; shift ;;
  esac
done

logs=$(mktemp -d "${TMPDIR:-/tmp}/meshlat-stress.XXXXXX")
busy_pid=
stop_busy() {
  if [[ -n $busy_pid ]]; then
    kill -KILL -- "-$busy_pid" 2>/dev/null || true
    wait "$busy_pid" 2>/dev/null || true
    busy_pid=
  fi
}
trap stop_busy EXIT
trap 'exit 130' INT TERM

echo "stress: building the test targets (copied to $logs/bin, so later edits do not change them)"
cargo build --locked --quiet --bins || exit 1
mkdir -p "$logs/bin"
for spec in "meshlat-agent accuracy linkemu relay udp_loopback http_probe tcp_probe quic_probe owd packet_truth" \
            "meshlat-controller mesh_e2e"; do
  read -r pkg targets <<< "$spec"
  args=()
  for t in $targets; do args+=(--test "$t"); done
  cargo test --locked --no-run --message-format=json -p "$pkg" "${args[@]}" 2>/dev/null |
    python3 -c '
import json, shutil, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        shutil.copy2(m["executable"], sys.argv[1] + "/" + m["target"]["name"])
        print(m["target"]["name"], m["manifest_path"].rsplit("/", 1)[0])
' "$logs/bin" >> "$logs/bin/index" || exit 1
done
# Each executable's test names (`--list`), to count passes from the failures list: with
# --nocapture, child processes' output can split libtest's `test NAME ... ok` lines.
while read -r name _; do
  "$logs/bin/$name" --list 2>/dev/null | sed -n "s/: test\$//p" | sed "s/^/$name::/" >> "$logs/bin/tests"
done < "$logs/bin/index"
# run_target NAME [ARGS...]: a copied test executable, in its package directory (as cargo runs it).
run_target() {
  local name=$1; shift
  local dir
  dir=$(awk -v n="$name" '$1 == n {print $2}' "$logs/bin/index")
  [[ -n $dir ]] || { echo "stress: no test executable $name" >&2; return 1; }
  echo "     Running tests/$name.rs"
  (cd "$dir" && "$logs/bin/$name" "$@")
}

if (( load )); then
  # setsid: its own session and process group (the group id is its pid), killed as a group.
  setsid sh -c 'while :; do :; done' &
  busy_pid=$!
  echo "stress: busy loop running (pid and process group $busy_pid): one core kept busy"
fi

run_suite() { # SUITE RUN: runs the suite once, output to $logs/SUITE-RUN.log
  local suite=$1 run=$2 log=$logs/$1-$2.log t
  case $suite in
    accuracy)
      # a failing test is counted from the log below, not a reason to stop
      for t in accuracy linkemu; do run_target "$t" --test-threads=1 --nocapture || true; done > "$log" 2>&1 ;;
    e2e)
      for t in mesh_e2e relay udp_loopback http_probe tcp_probe quic_probe owd packet_truth; do
        run_target "$t" --nocapture || true
      done > "$log" 2>&1 ;;
  esac
}

t0=$SECONDS
for ((run = 1; run <= n; run++)); do
  for suite in "${suites[@]}"; do
    s0=$SECONDS
    run_suite "$suite" "$run"
    echo "stress: run $run/$n $suite: $(grep -E '^test result:' "$logs/$suite-$run.log" | tr '\n' ' ') in $((SECONDS - s0)) s"
  done
done
stop_busy

rc=0
python3 - "$logs" "${suites[@]}" <<'PY' || rc=$?
import glob, re, statistics, sys
from collections import defaultdict

logs, suites = sys.argv[1], sys.argv[2:]
members = {"accuracy": ["accuracy", "linkemu"],
           "e2e": ["mesh_e2e", "relay", "udp_loopback", "http_probe", "tcp_probe", "quic_probe"]}
tests = defaultdict(list)
for line in open(f"{logs}/bin/tests"):
    target, _, name = line.strip().partition("::")
    tests[target].append(name)
runs = defaultdict(lambda: [0, 0])
figures = defaultdict(list)
failures = []
for path in sorted(glob.glob(f"{logs}/*-*.log")):
    text = open(path, errors="replace").read()
    suite = path.rsplit("/", 1)[1].split("-")[0]
    # Split at the "Running tests/NAME.rs" line this script prints before each executable.
    sections = re.split(r"^\s*Running tests/(\S+)\.rs$", text, flags=re.M)
    seen = {}
    for i in range(1, len(sections), 2):
        seen[sections[i]] = sections[i + 1]
    for target in members.get(suite, []):
        body = seen.get(target)
        done = body is not None and re.search(r"^test result: ", body, re.M)
        failed = set()
        if body is not None:
            for block in re.findall(r"^failures:\n((?:    \S+\n)+)", body, re.M):
                failed |= {l.strip() for l in block.splitlines()}
        for name in tests[target]:
            ok = bool(done) and name not in failed
            runs[f"{target}::{name}"][0 if ok else 1] += 1
            if not ok:
                failures.append(f"{target}::{name} in {path}")
        if body is not None:
            for m in re.finditer(r"figures (\S+) (.*)$", body, re.M):
                for kv in m.group(2).split():
                    k, _, v = kv.partition("=")
                    try:
                        x = float(v)
                    except ValueError:
                        continue
                    figures[(m.group(1), k)].append(x)
print("stress: pass counts per test")
for t in sorted(runs):
    ok, bad = runs[t]
    print(f"  {ok:3}/{ok + bad:<3} {t}{'' if bad == 0 else '   <-- FAILED ' + str(bad)}")
if figures:
    print("stress: figures over the runs (min / median / max, n)")
    for (t, k) in sorted(figures):
        v = figures[(t, k)]
        print(f"  {t:60} {k:24} {min(v):10.3f} {statistics.median(v):10.3f} {max(v):10.3f}  n={len(v)}")
if failures:
    print("stress: failed runs:\n  " + "\n  ".join(failures))
    sys.exit(1)
PY
echo "stress: $n runs in $((SECONDS - t0)) s; logs in $logs"
exit $rc
