#!/usr/bin/env bash
# Runs the demo (scripts/demo.sh) for a bounded time, as the README's first command, and checks
# what it promises:
#   - it starts, shows the live matrix with both directions, stops by itself and exits 0, leaving
#     no process behind;
#   - records from both regions (src_region eu-west-1 and us-east-1) in the Hive layout
#     DIR/records/region=R/dt=YYYY-MM-DD/hour=HH/*.ndjson, from every protocol of the probe jobs;
#   - server records: every agent's reflector (kind serve, as dst_agent) answered packets, and the
#     relay eu-2 wrote relay_serve records of what it forwarded and returned;
#   - the cross-region RTT reflects the emulator's delay: udp/quic at least the emulated RTT and
#     p50 not far above it, https at least two emulated round trips;
#   - the printed athena-local command works on the directory (latency_matrix_region.sql).
# Bounds are generous (a loaded 2-core machine): the emulator cannot deliver early, so lower bounds
# are tight and upper bounds loose. ~40 s.
#   scripts/test_demo.sh [SECONDS]      # demo run length, default 20
set -euo pipefail
cd "$(dirname "$0")/.." || exit 2
FAIL_TAG="FAIL: "
# shellcheck source=scripts/lib/common.sh
source scripts/lib/common.sh
secs=${1:-20}
delay_ms=35
dir=$(mktemp -d "${TMPDIR:-/tmp}/meshlat-test-demo.XXXXXX")
keep=0   # set by on_fail: keep the demo's output and logs for a look
trap '(( keep )) || rm -rf "$dir"' EXIT
# Called by fail (scripts/lib/common.sh) after its message.
# shellcheck disable=SC2034  # keep is read in the EXIT trap
on_fail() { keep=1; echo "test_demo: demo output and logs kept in $dir" >&2; }

scripts/demo.sh --help | grep -q -- '--duration' || fail "demo --help lacks --duration"
rc=0; scripts/demo.sh --bogus >/dev/null 2>&1 || rc=$?
[[ $rc == 2 ]] || fail "demo --bogus exited $rc, expected 2"

echo "test_demo: running scripts/demo.sh -d $secs --delay $delay_ms --dir $dir"
t0=$SECONDS
rc=0
scripts/demo.sh -d "$secs" --delay "$delay_ms" --refresh 4 --dir "$dir/data" > "$dir/demo.out" 2>&1 || rc=$?
echo "test_demo: demo exited $rc after $((SECONDS - t0)) s"
[[ $rc == 0 ]] || { tail -n 30 "$dir/demo.out" >&2; fail "demo exited $rc"; }
left=$(pgrep -f -- "$dir/data" || true)
[[ -z $left ]] || fail "processes left running: $(ps -o pid=,args= -p "${left//$'\n'/,}")"
grep -Eq '^ +eu-[0-9] -> us-[0-9] +[0-9]' "$dir/demo.out" || fail "no eu -> us row in the live matrix"
grep -Eq '^ +us-[0-9] -> eu-[0-9] +[0-9]' "$dir/demo.out" || fail "no us -> eu row in the live matrix"
grep -q 'athena-local --data' "$dir/demo.out" || fail "the demo did not print how to query the records"

python3 - "$dir/data" "$delay_ms" <<'PY' || fail "records check"
import glob, json, statistics, sys
from collections import defaultdict

data, delay = sys.argv[1], float(sys.argv[2])
rtt = 2 * delay
files = glob.glob(f"{data}/records/region=*/dt=*/hour=*/*.ndjson")
assert files, f"no records in the Hive layout under {data}/records"
recs = []
for f in files:
    part = f.split("/records/")[1].split("/")[0].removeprefix("region=")
    for line in open(f):
        r = json.loads(line)
        # The partition is the writer's region: the measuring agent's, or the server's for the
        # records servers write about what they answered (dst) and relayed (relay).
        writer = {"serve": "dst_region", "relay_serve": "relay_region"}.get(r["kind"], "src_region")
        assert r[writer] == part, f"{f}: {writer} {r[writer]} in partition {part}"
        recs.append(r)
by = defaultdict(list)
for r in recs:
    if r["kind"] == "probe":
        by[(r["src_region"], r["dst_region"], r["protocol"])].append(r)
print(f"test_demo: {len(recs)} records in {len(files)} files")
problems = []
for src, dst in (("eu-west-1", "us-east-1"), ("us-east-1", "eu-west-1")):
    for proto in ("udp", "quic", "https", "tcp"):
        ok = [r for r in by[(src, dst, proto)] if r["ok"] or r["error_kind"] == "loss"]
        total = len(by[(src, dst, proto)])
        if len(ok) < 3:
            problems.append(f"{src} -> {dst} {proto}: {len(ok)} ok of {total} records (want >= 3)")
            continue
        if proto in ("udp", "quic"):
            lo = min(r["rtt_min_ms"] for r in ok if r["rtt_min_ms"] is not None)
            p50 = statistics.median(r["rtt_p50_ms"] for r in ok if r["rtt_p50_ms"] is not None)
            print(f"test_demo: {src} -> {dst} {proto:5}: {len(ok)} ok, rtt min {lo:.2f} ms, median p50 {p50:.2f} ms (emulated {rtt:.0f})")
            if lo < rtt - 1:
                problems.append(f"{src} -> {dst} {proto}: min RTT {lo} ms below the emulated {rtt} ms")
            if p50 > rtt + 80:
                problems.append(f"{src} -> {dst} {proto}: median p50 {p50} ms far above the emulated {rtt} ms")
        elif proto == "https":
            med = statistics.median(r["total_ms"] for r in ok if r["total_ms"] is not None)
            print(f"test_demo: {src} -> {dst} {proto:5}: {len(ok)} ok, median total {med:.2f} ms (2 x emulated {rtt:.0f})")
            if med < 2 * rtt - 2 or med > 2 * rtt + 200:
                problems.append(f"{src} -> {dst} https: median total {med} ms, want about {2 * rtt}")
        else:
            print(f"test_demo: {src} -> {dst} {proto:5}: {len(ok)} ok (connect ends at the emulator)")
# The relay job: eu-1 -> eu-2 (no emulator) -> us-x (emulator), direct eu-1 -> us-x interleaved.
relay = [r for r in recs if r["kind"] == "relay" and r["ok"]]
if len(relay) < 3:
    problems.append(f"relay job: {len(relay)} ok relay records (want >= 3)")
else:
    med = lambda f: statistics.median(r[f] for r in relay if r[f] is not None)
    src_leg, dst_leg = med("leg_src_relay_rtt_ms"), med("leg_relay_dst_rtt_ms")
    direct, penalty = med("direct_rtt_ms"), med("relay_penalty_ms")
    print(f"test_demo: relay eu-1 -> eu-2 -> us: {len(relay)} ok, legs {src_leg:.2f} + {dst_leg:.2f} ms, "
          f"direct {direct:.2f} ms, penalty {penalty:.2f} ms")
    for r in relay:
        if (r["relay_region"], r["src_region"], r["dst_region"]) != ("eu-west-1", "eu-west-1", "us-east-1"):
            problems.append(f"relay record with the wrong identity: {r}")
            break
    if src_leg > 20:
        problems.append(f"relay: source leg {src_leg} ms, but eu-2 is reached without the emulator")
    if dst_leg < rtt - 1 or direct < rtt - 1:
        problems.append(f"relay: relay leg {dst_leg} / direct {direct} ms below the emulated {rtt} ms")
    if not -5 < penalty < 40:
        problems.append(f"relay: penalty {penalty} ms, want a small positive value (the dwell and the short leg)")
# Server records: every agent the UDP probes target answered (kind serve, the agent as dst), at
# least every reply its probers counted (its relayed and direct trains of the relay job too);
# the relay eu-2 forwarded at least the relayed packets the source got back, and returned them.
served = defaultdict(int)
for r in recs:
    if r["kind"] == "serve" and r["ok"]:
        served[r["dst_agent"]] += r["packets"]
got_back = defaultdict(int)
for r in recs:
    if r["protocol"] == "udp" and r["kind"] in ("probe", "relay") and r["samples"]:
        got_back[r["dst_agent"]] += r["samples"]
relayed = sum(r["packets"] for r in recs if r["kind"] == "relay_serve" and r["ok"])
returned = sum(r["returned"] for r in recs if r["kind"] == "relay_serve" and r["ok"])
relay_got = sum(r["samples"] or 0 for r in recs if r["kind"] == "relay")
print(f"test_demo: server records: answered per agent {sorted(served.values())} (probers got back "
      f"{sorted(got_back.values())}), relay forwarded {relayed}, returned {returned} (sources got {relay_got})")
for agent, n in got_back.items():
    if served.get(agent, 0) < n:
        problems.append(f"serve records: {agent} answered {served.get(agent, 0)}, but its probers got {n} replies")
if len(got_back) < 3:
    problems.append(f"serve records: UDP targets {sorted(got_back)}, want the three probed agents")
if relay_got < 3 or returned < relay_got or relayed < returned:
    problems.append(f"relay_serve records: forwarded {relayed}, returned {returned}, sources got {relay_got}")
if problems:
    sys.exit("test_demo: " + "\n  ".join(problems))
PY

echo "test_demo: scripts/athena-local on the demo's records"
scripts/athena-local --data "$dir/data" --format csv infra/athena/latency_matrix_region.sql > "$dir/athena.csv" ||
  fail "athena-local failed"
for pair in eu-west-1,us-east-1,udp us-east-1,eu-west-1,udp; do
  grep -q "^$pair," "$dir/athena.csv" || fail "latency_matrix_region.sql has no $pair row: $(cat "$dir/athena.csv")"
done
scripts/athena-local --data "$dir/data" --format csv infra/athena/relay_penalty.sql > "$dir/relay.csv" ||
  fail "athena-local relay_penalty.sql failed"
grep -q "eu-west-1,us-east-1" "$dir/relay.csv" || fail "relay_penalty.sql has no eu-west-1 -> us-east-1 row: $(cat "$dir/relay.csv")"
scripts/athena-local --data "$dir/data" --format csv infra/athena/server_drops_region_pair.sql > "$dir/drops.csv" ||
  fail "athena-local server_drops_region_pair.sql failed"
head -n 1 "$dir/drops.csv" | grep -q '^src_region,server_region,kind,protocol,drop_reason,packets' ||
  fail "server_drops_region_pair.sql: unexpected output: $(head -n 3 "$dir/drops.csv")"
echo "test_demo: PASS in $SECONDS s"
