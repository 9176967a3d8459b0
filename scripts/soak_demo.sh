#!/usr/bin/env bash
# Soak check: runs the demo (scripts/demo.sh) for MINUTES and checks that its long-running
# processes stay flat and that the emulated RTT in the records does not drift.
#
#   scripts/soak_demo.sh [--no-build] [--keep] [MINUTES]    # default 10; at least 3
#
# Every demo process (two controllers, four agents, meshlat-linkemu) is sampled from /proc every
# 30 s: RSS (VmRSS), threads (/proc/PID/task) and open descriptors (/proc/PID/fd). The sample at
# 2 minutes after the probe jobs start is the reference (start-up, first connections and the
# emulator's UDP clients, which live for its 30 s idle, are done by then); the check fails if the
# last sample of any process exceeds the reference by more than 10 %, with an absolute floor for
# small counts (a few threads or descriptors come and go with in-flight probes):
#   threads  more than max(10 %, +4)        fds  more than max(10 %, +8)
#   RSS      more than max(10 %, +2 MiB)    (only for runs of 10 minutes or more)
# For runs of 10 minutes or more it also checks the emulated RTT: p50 and p99 per five-minute
# bucket of every cross-region pair and protocol (same-region pairs, which the demo measures over
# packet-level links, cross no emulated link: printed, not judged) from the shipped SQL (scripts/athena-local --data DIR
# infra/athena/timeseries_region_pair.sql, on the records from 2 minutes after the jobs start);
# it fails if a bucket's p50 or p99 exceeds the first bucket's by more than max(10 %, 5 ms).
# Buckets covering less than 60 s of the window are printed but not judged (too few samples);
# fewer than two judged buckets for a pair fails (there would be nothing to compare). The tail
# follows the machine's load: on a machine shared with builds, p99 per minute rose and fell with
# the load average (udp 71.8 ms at load 7, 96.3 ms at load 20-28), so judge drift on a quiet one.
# The 3-minute form (CI) checks threads and descriptors only: RSS needs longer to show a trend
# and the drift check needs two buckets.
#
# Exit status: 0 flat, 1 a check failed (the demo's data and logs are kept and named), 2 bad
# usage. Leaves no process behind: the demo stops its children, and an EXIT trap stops the demo.
# -E: the ERR trap below also covers failures inside functions (the samplers).
set -Eeuo pipefail
cd "$(dirname "$0")/.." || exit 2
PROG=soak
# shellcheck source=scripts/lib/common.sh
source scripts/lib/common.sh
minutes=10
build=1
keep=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --no-build) build=0; shift ;;
    --keep) keep=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *)
      [[ $1 =~ ^[0-9]+$ ]] || die "MINUTES must be a whole number, not '$1'"
      minutes=$1; shift ;;
  esac
done
(( minutes >= 3 )) || die "MINUTES must be at least 3 (the reference sample is at 2)"

dir=$(mktemp -d "${TMPDIR:-/tmp}/meshlat-soak.XXXXXX")
demo_pid=
failed=0
cleanup() {
  if [[ -n $demo_pid ]] && kill -0 "$demo_pid" 2>/dev/null; then
    kill -TERM "$demo_pid" 2>/dev/null || true
    for _ in $(seq 150); do kill -0 "$demo_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$demo_pid" 2>/dev/null || true
  fi
  wait 2>/dev/null || true
  # Anything of this run still alive (the demo kills its own children; this is the backstop).
  local left
  left=$(pgrep -f -- "$dir/data" || true)
  if [[ -n $left ]]; then
    echo "soak: stopping leftover processes: $(ps -o pid=,comm= -p "${left//$'\n'/,}" | tr '\n' ' ')" >&2
    # shellcheck disable=SC2086  # a list of pids
    kill -KILL $left 2>/dev/null || true
  fi
  if (( failed || keep )); then
    echo "soak: data, logs and samples kept in $dir"
  else
    rm -rf "$dir"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# Any command that fails outside the checks below (set -e) names itself and keeps the data: a
# silent exit 1 with the evidence deleted is what a CI failure must never look like.
trap 'rc=$?; failed=1; if (( BASH_SUBSHELL == 0 )); then echo "soak: FAIL: line $LINENO: \`$BASH_COMMAND\` exited $rc" >&2; [[ -f $dir/demo.out ]] && tail -n 40 "$dir/demo.out" >&2; fi' ERR

secs=$((minutes * 60))
if (( build )); then
  echo "soak: cargo build --locked --bins"
  cargo build --locked --quiet --bins || { failed=1; exit 1; }
fi
echo "soak: scripts/demo.sh --no-build -d $secs --dir $dir/data (${minutes} min once the jobs run)"
scripts/demo.sh --no-build -d "$secs" --refresh 30 --dir "$dir/data" > "$dir/demo.out" 2>&1 &
demo_pid=$!

# The jobs run once the demo prints its live matrix step.
for ((i = 0; ; i++)); do
  grep -q 'live matrix, every' "$dir/demo.out" 2>/dev/null && break
  kill -0 "$demo_pid" 2>/dev/null || { failed=1; tail -n 80 "$dir/demo.out" >&2; echo "soak: FAIL: the demo exited during start-up" >&2; exit 1; }
  (( i < 3000 )) || { failed=1; echo "soak: FAIL: the demo did not start its jobs within 5 min" >&2; exit 1; }
  sleep 0.1
done
t0=$(date +%s)
from_ts=$(date -u -d "@$((t0 + 120))" +%Y-%m-%dT%H:%M:%SZ)

# name pid, one per demo process (direct children of demo.sh), named by role.
procs() {
  local p args name
  for p in $(pgrep -P "$demo_pid" || true); do
    # (Short-lived children, e.g. the demo's `controller matrix` calls, may be gone by now.)
    args=$( { tr '\0' ' ' < "/proc/$p/cmdline"; } 2>/dev/null) || continue
    case $args in
      */controller\ serve*) name=ctl-$(sed -E 's/.*--region ([^ ]+).*/\1/' <<< "$args") ;;
      */agent\ *) name=agent-$(sed -E 's/.*--location demo-([^ ]+).*/\1/' <<< "$args") ;;
      */meshlat-linkemu*) name=linkemu ;;
      *) continue ;;
    esac
    echo "$name $p"
  done
}
# sample LABEL: one line per process: label elapsed name pid rss_kb threads fds
# A process may exit between `procs` and here (then /proc/PID is gone, or its status has no VmRSS
# while it is a zombie): it is left out of this sample and the demo's own watch reports the exit.
# Nothing in here may fail the script (set -e): a reader's error is a missing sample, not a FAIL.
sample() {
  local label=$1 name p rss thr fds
  while read -r name p; do
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || true)
    thr=$(find "/proc/$p/task" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l || true)
    fds=$(find "/proc/$p/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l || true)
    if [[ -n $rss && -d /proc/$p ]]; then
      echo "$label $(( $(date +%s) - t0 )) $name $p $rss $thr $fds"
    else
      echo "soak: $name (pid $p) gone while sampling at $(( $(date +%s) - t0 )) s" >&2
    fi
  done < <(procs)
  return 0
}

end=$((t0 + secs - 5))   # the demo stops at t0 + secs: the last sample just before
next=$t0
ref_done=0
while :; do
  now=$(date +%s)
  kill -0 "$demo_pid" 2>/dev/null || { failed=1; tail -n 80 "$dir/demo.out" >&2; echo "soak: FAIL: the demo stopped early" >&2; exit 1; }
  if (( ! ref_done && now >= t0 + 120 )); then
    sample ref >> "$dir/samples.txt"; ref_done=1; next=$((now + 30))
  elif (( now >= end )); then
    sample end >> "$dir/samples.txt"; break
  elif (( now >= next )); then
    sample s >> "$dir/samples.txt"; next=$((now + 30))
  fi
  sleep 1
done
wait "$demo_pid" || { failed=1; tail -n 80 "$dir/demo.out" >&2; echo "soak: FAIL: the demo exited non-zero" >&2; exit 1; }
demo_pid=

rc=0
python3 - "$dir/samples.txt" "$minutes" <<'PY' || rc=1
import sys
from collections import defaultdict

path, minutes = sys.argv[1], int(sys.argv[2])
series = defaultdict(list)
for line in open(path):
    label, t, name, pid, rss, thr, fds = line.split()
    series[name].append((label, int(t), int(rss), int(thr), int(fds)))
print("soak: samples (s after the jobs started: RSS MiB / threads / fds)")
problems = []
for name in sorted(series):
    s = series[name]
    print(f"  {name:14} " + "  ".join(f"{t:4}s {r / 1024:6.1f}/{th}/{fd}" for _, t, r, th, fd in s))
    ref = next((x for x in s if x[0] == "ref"), None)
    end = next((x for x in s if x[0] == "end"), None)
    if ref is None or end is None:
        problems.append(f"{name}: no sample at 2 min or at the end (it stopped?)")
        continue
    checks = [("threads", 3, 4), ("fds", 4, 8)]
    if minutes >= 10:
        checks.append(("RSS KiB", 2, 2048))
    for what, i, floor in checks:
        limit = max(ref[i] * 1.10, ref[i] + floor)
        verdict = "ok" if end[i] <= limit else "GREW"
        print(f"    {what:8} at 2 min {ref[i]:>8}, at the end {end[i]:>8}, limit {limit:10.0f}  {verdict}")
        if end[i] > limit:
            problems.append(f"{name}: {what} grew from {ref[i]} (2 min) to {end[i]} (end), limit {limit:.0f}")
if problems:
    sys.exit("soak: FAIL:\n  " + "\n  ".join(problems))
PY

if (( minutes >= 10 )); then
  echo "soak: p99 per five-minute bucket (scripts/athena-local infra/athena/timeseries_region_pair.sql --from $from_ts)"
  scripts/athena-local --data "$dir/data" --from "$from_ts" --format json \
    infra/athena/timeseries_region_pair.sql > "$dir/timeseries.json" || { echo "soak: athena-local failed" >&2; rc=1; }
  python3 - "$dir/timeseries.json" "$((t0 + 120))" "$((t0 + secs))" <<'PY' || rc=1
import datetime as dt, json, sys
from collections import defaultdict

# A bucket is judged when it covers this much of the window (2 min after the jobs start to the
# end). Buckets are wall-clock five-minute buckets (the shipped SQL), so the 8-minute window of a
# 10-minute soak spans one full bucket and two partial ones, of which one always covers 90 s or
# more: at 60 s every 10-minute run compares at least two buckets.
JUDGE_S = 60
rows = json.load(open(sys.argv[1]))
lo, hi = int(sys.argv[2]), int(sys.argv[3])
by = defaultdict(list)
for r in rows:
    start = int(dt.datetime.strptime(r["bucket"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc).timestamp())
    covered = max(0, min(start + 300, hi) - max(start, lo))
    by[(r["src_region"], r["dst_region"], r["protocol"])].append((r["bucket"], covered, r["samples"], r["p50_ms"], r["p99_ms"]))
problems = []
for key in sorted(by):
    # Same-region pairs (packet-level links) cross no emulated link: sub-millisecond paths whose
    # p99 is the machine's scheduling, not the emulator's; printed, not judged.
    same = key[0] == key[1]
    judged = [] if same else [b for b in by[key] if b[1] >= JUDGE_S and b[4] is not None]
    for bucket, covered, n, p50, p99 in by[key]:
        note = "" if (bucket, covered, n, p50, p99) in judged else (
            "  (not judged: same region, no emulated link)" if same else f"  (not judged: under {JUDGE_S} s of the window)")
        p50s = "-" if p50 is None else f"{p50:.2f}"
        p99s = "-" if p99 is None else f"{p99:.2f}"
        print(f"  {key[0]} -> {key[1]} {key[2]:5} {bucket}  {covered:3}s  n={n:<6} p50 {p50s:>8} ms  p99 {p99s:>8} ms{note}")
    if same:
        continue
    if len(judged) < 2:
        # Never pass by default: a window of 8 minutes always spans two buckets of 60 s or more.
        problems.append(f"{key}: {len(judged)} bucket(s) with {JUDGE_S} s or more of the window; nothing to compare")
        continue
    for i, what in ((3, "p50"), (4, "p99")):
        first = judged[0][i]
        limit = max(first * 1.10, first + 5.0)
        for b in judged[1:]:
            if b[i] > limit:
                problems.append(f"{key}: {what} {b[i]:.2f} ms in {b[0]} vs {first:.2f} ms in {judged[0][0]} (limit {limit:.2f})")
if problems:
    sys.exit("soak: FAIL: the emulated RTT drifts:\n  " + "\n  ".join(problems))
PY
fi
if (( rc )); then failed=1; exit 1; fi
echo "soak: PASS (${minutes} min)"
