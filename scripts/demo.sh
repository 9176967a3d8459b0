#!/usr/bin/env bash
# meshlat local demo: responders, a link emulator standing in for an inter-region path, and
# probes over every protocol, with records written in the Hive layout Firehose uses in S3.
#
#   scripts/demo.sh              # 10 samples per target, then a summary
#   scripts/demo.sh -n 0         # run until Ctrl-C
#   DEMO_DIR=/tmp/x scripts/demo.sh
#
# What runs (all on 127.0.0.1):
#   agent serve          UDP reflector, TCP, QUIC, HTTP, HTTPS responders ("us-east-1")
#   meshlat-linkemu      adds 35 ms each way (70 ms RTT) with 1 % loss on the UDP path, 35 ms each
#                        way on the QUIC path: what eu-west-1 -> us-east-1 looks like
#   agent serve --relay  a relay R ("eu-central-1"), 5 ms each way from the prober
#   agent probe          from "eu-west-1": udp + quic through the emulator, tcp + https direct,
#                        and udp relayed A -> R -> B with a direct A <-> B probe interleaved
set -euo pipefail
cd "$(dirname "$0")/.."
count=10
while [[ $# -gt 0 ]]; do
  case $1 in
    -n) count=$2; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "demo.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
done
DEMO_DIR=${DEMO_DIR:-$PWD/demo-data}
mkdir -p "$DEMO_DIR"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

echo "demo: building (first build takes a few minutes on 2 cores)..."
cargo build --quiet --bins
BIN=target/debug

MESHLAT_KEY=demo-shared-key "$BIN/agent" serve --listen 127.0.0.1 --udp-port 0 --tcp-port 0 --quic-port 0 --http-port 0 --https-port 0 \
  > "$DEMO_DIR/serve.out" 2> "$DEMO_DIR/serve.log" &
pids+=($!)
for _ in $(seq 100); do [[ $(grep -c '^listening' "$DEMO_DIR/serve.out" 2>/dev/null) -ge 5 ]] && break; sleep 0.1; done
addr() { awk -v p="$1" '$1=="listening" && $2==p {print $3}' "$DEMO_DIR/serve.out"; }
UDP=$(addr udp); TCP=$(addr tcp); QUIC=$(addr quic); HTTPS=$(addr https)
[[ -n $UDP && -n $HTTPS ]] || { echo "demo: agent serve did not start; see $DEMO_DIR/serve.log" >&2; exit 1; }
echo "demo: responders up: udp $UDP, tcp $TCP, quic $QUIC, https $HTTPS"

MESHLAT_KEY=demo-shared-key "$BIN/agent" serve --relay --listen 127.0.0.1 --udp-port 0 --tcp-port off --quic-port off --http-port off \
  --https-port off > "$DEMO_DIR/relay.out" 2> "$DEMO_DIR/relay.log" &
pids+=($!)
for _ in $(seq 100); do grep -q '^listening udp' "$DEMO_DIR/relay.out" 2>/dev/null && break; sleep 0.1; done
RELAY=$(awk '$1=="listening" && $2=="udp" {print $3}' "$DEMO_DIR/relay.out")
[[ -n $RELAY ]] || { echo "demo: relay did not start; see $DEMO_DIR/relay.log" >&2; exit 1; }

"$BIN/meshlat-linkemu" \
  --route "udp:127.0.0.1:0=$UDP,fwd=35ms,ret=35ms,loss_fwd=1,seed=1" \
  --route "udp:127.0.0.1:0=$QUIC,fwd=35ms,ret=35ms" \
  --route "udp:127.0.0.1:0=$RELAY,fwd=5ms,ret=5ms" \
  --log "$DEMO_DIR/linkemu.ndjson" > "$DEMO_DIR/linkemu.out" 2> "$DEMO_DIR/linkemu.log" &
pids+=($!)
for _ in $(seq 100); do [[ $(grep -c '^route' "$DEMO_DIR/linkemu.out" 2>/dev/null) -ge 3 ]] && break; sleep 0.1; done
EMU_UDP=$(awk '$1=="route" && $2==0 {print $4}' "$DEMO_DIR/linkemu.out")
EMU_QUIC=$(awk '$1=="route" && $2==1 {print $4}' "$DEMO_DIR/linkemu.out")
EMU_RELAY=$(awk '$1=="route" && $2==2 {print $4}' "$DEMO_DIR/linkemu.out")
[[ -n $EMU_UDP && -n $EMU_QUIC ]] || { echo "demo: link emulator did not start; see $DEMO_DIR/linkemu.log" >&2; exit 1; }
echo "demo: emulated eu-west-1 -> us-east-1 path (70 ms RTT, 1 % loss): udp $EMU_UDP, quic $EMU_QUIC"
echo

set +e
MESHLAT_KEY=demo-shared-key "$BIN/agent" probe -n "$count" -d 1 --region eu-west-1 --location "demo-laptop" --tls-skip-verify \
  --out "$DEMO_DIR" \
  "udp://$EMU_UDP" "quic://$EMU_QUIC" "tcp://$TCP" "https://$HTTPS/bytes/2048" \
  "relay://$EMU_RELAY/$EMU_UDP"
status=$?
set -e
echo
files=$(find "$DEMO_DIR/records" -name '*.ndjson' | wc -l)
records=$(find "$DEMO_DIR/records" -name '*.ndjson' -exec cat {} + | wc -l)
echo "demo: $records records in $files file(s) under $DEMO_DIR/records (Hive layout: region=/dt=/hour=)"
echo "demo: look at them with, for example:"
echo "  scripts/athena-local --data $DEMO_DIR infra/athena/latency_matrix_agent.sql   # the shipped Athena SQL, on DuckDB"
echo "  scripts/athena-local --data $DEMO_DIR infra/athena/http_phases.sql"
echo "  scripts/athena-local --data $DEMO_DIR infra/athena/relay_penalty.sql          # does the relay beat the direct path?"
echo "  find $DEMO_DIR/records -name '*.ndjson' | head -1 | xargs head -1"
exit $status
