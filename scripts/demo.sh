#!/usr/bin/env bash
# meshlat local demo: a two-region mesh on this machine (loopback only).
#
#   scripts/demo.sh                  # build (debug), start the mesh, show the live matrix until Ctrl-C
#   scripts/demo.sh -d 60            # the same, stopping by itself after 60 s
#   scripts/demo.sh --dir /tmp/mesh  # records and logs there (default: ./demo-data, or $DEMO_DIR)
#
# What runs (every address is on 127.0.0.0/8):
#   controller eu-west-1   federated with us-east-1 (--peer, --peer-ca, --federation-secret);
#                          its operator policy makes eu-2 a relay (--relay-agent location=demo-eu-2)
#   controller us-east-1
#   agent eu-1             eu-west-1 (agent run mode: --controller URL --token TOKEN)
#   agent eu-2             eu-west-1, the region's relay (--relay), reached directly from eu-1
#   agent us-1, us-2       us-east-1
#   meshlat-linkemu        the "Atlantic": one route per agent and protocol adding 35 ms each way
#                          (70 ms RTT), plus 1 % loss towards UDP reflectors. Agents advertise
#                          the emulator's addresses (--advertise-endpoint PROTO=HOST:PORT), so
#                          every cross-region probe crosses it.
# Then it starts, through the eu-west-1 controller, one probe job per direction (udp, tcp, quic,
# https; eu-west-1 agents to every us-east-1 agent, us-east-1 agents to eu-1) and a relay job (eu-1
# to each us-east-1 agent through the relay eu-2, with the direct path interleaved: does the relay
# beat it?), shows the live matrix every few seconds, and on Ctrl-C (or after -d) stops everything and prints how to query the records, which
# are in the Hive layout Firehose writes to S3: DIR/records/region=R/dt=YYYY-MM-DD/hour=HH/*.ndjson.
#
# Options:
#   -d, --duration SECONDS   stop after this long once the jobs run (default 0: until Ctrl-C)
#   --dir DIR                data directory, emptied first if an earlier demo made it (default ./demo-data)
#   --refresh SECONDS        live matrix refresh period (default 5)
#   --delay MS               emulated one-way inter-region delay (default 35)
#   --no-build               use the binaries already in target/debug
#   --monitoring             also run a real Prometheus (Debian's package: scripts/setup.sh) that
#                            scrapes every agent's /metrics with the shipped rules
#                            (infra/prometheus/meshlat-rules.yml), and print its URL
#   --prometheus-port PORT   its port on 127.0.0.1 (default 9090)
#   -h, --help               this text
# Exit status: 0 after a clean stop (Ctrl-C included), 1 when a process failed (its log is named),
# 2 for bad usage. Needs cargo, and python3 for the printed queries.
set -euo pipefail
CALLER_PWD=$PWD
cd "$(dirname "$0")/.." || exit 2
# shellcheck source=scripts/lib/common.sh
source scripts/lib/common.sh
ROOT=$PWD
# Paths as the caller types them: relative when they started the demo in the repository.
show() { if [[ $CALLER_PWD == "$ROOT" && $1 == "$ROOT"/* ]]; then printf '%s' "${1#"$ROOT"/}"; else printf '%s' "$1"; fi; }

duration=0
refresh=5
delay_ms=35
build=1
monitoring=0
prom_port=9090
DEMO_DIR=${DEMO_DIR:-$ROOT/demo-data}
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
num() { [[ $2 =~ ^[0-9]+$ ]] || die "$1 needs a whole number, not '$2' (try --help)"; }
while [[ $# -gt 0 ]]; do
  case $1 in
    -d|--duration) [[ $# -ge 2 ]] || die "$1 needs SECONDS"; num "$1" "$2"; duration=$2; shift 2 ;;
    --dir) [[ $# -ge 2 ]] || die "$1 needs DIR"; DEMO_DIR=$2; shift 2 ;;
    --refresh) [[ $# -ge 2 ]] || die "$1 needs SECONDS"; num "$1" "$2"; refresh=$2; shift 2 ;;
    --delay) [[ $# -ge 2 ]] || die "$1 needs MS"; num "$1" "$2"; delay_ms=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    --monitoring) monitoring=1; shift ;;
    --prometheus-port) [[ $# -ge 2 ]] || die "$1 needs PORT"; num "$1" "$2"; prom_port=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument '$1' (try --help)" ;;
  esac
done
(( refresh >= 1 )) || die "--refresh must be at least 1"
if (( monitoring )); then
  command -v prometheus >/dev/null || die "--monitoring needs prometheus: run scripts/setup.sh (apt package prometheus)"
fi
mkdir -p "$DEMO_DIR"
DEMO_DIR=$(cd "$DEMO_DIR" && pwd)

# ---------------------------------------------------------------------------------------------
# Processes: started in the background with stdout/stderr in DIR/logs, stopped in reverse order.
pids=() names=()
declare -A PID
stopping=0
stop_all() {
  (( stopping )) && return
  stopping=1
  local i p
  # Agents first (they flush and fsync their record files), then the emulator, then controllers.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill -TERM "${pids[$i]}" 2>/dev/null || true
  done
  for _ in $(seq 100); do
    local alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    (( alive )) || break
    sleep 0.1
  done
  for i in "${!pids[@]}"; do
    if kill -0 "${pids[$i]}" 2>/dev/null; then
      echo "demo: ${names[$i]} did not stop within 10 s; killing it" >&2
      kill -KILL "${pids[$i]}" 2>/dev/null || true
    fi
  done
  wait 2>/dev/null || true
}
trap stop_all EXIT
trap 'interrupted=1' INT TERM
interrupted=0

LOGS=$DEMO_DIR/logs
start() { # NAME CMD... : runs CMD in the background, stdout to logs/NAME.out, stderr to logs/NAME.log
  local name=$1; shift
  NO_COLOR=1 "$@" > "$LOGS/$name.out" 2> "$LOGS/$name.log" &   # plain-text logs in files
  pids+=($!) names+=("$name")
  PID[$name]=$!
}
# wait_for NAME SECONDS PATTERN [COUNT]: until logs/NAME.out has COUNT lines matching PATTERN.
wait_for() {
  local name=$1 secs=$2 pattern=$3 count=${4:-1} i
  for ((i = 0; i < secs * 10; i++)); do
    [[ $(grep -c -- "$pattern" "$LOGS/$name.out" 2>/dev/null) -ge $count ]] && return 0
    (( interrupted )) && exit 130
    if ! kill -0 "${PID[$name]}" 2>/dev/null; then
      fail "$name exited during start-up; its log, $LOGS/$name.log, ends with:
$(tail -n 5 "$LOGS/$name.log" 2>/dev/null)"
    fi
    sleep 0.1
  done
  fail "$name did not start within $secs s; see $LOGS/$name.log"
}
# field NAME WORDS...: the word after WORDS on the first line of logs/NAME.out starting with them
# (e.g. `field ctl-x listening grpc` -> the gRPC address).
field() {
  local name=$1; shift
  awk -v w="$*" 'index($0, w " ") == 1 {print $(split(w, _, " ") + 1); exit}' "$LOGS/$name.out"
}

# secret REGION NAME: a secret the controller generated on first start. It never prints secrets
# (only with --print-secrets); it writes them to DATA_DIR/first-start-secrets, mode 0600.
secret() {
  awk -v w="$2" '$1 == w {print $2; exit}' "$DEMO_DIR/ctl-$1/first-start-secrets"
}

# ---------------------------------------------------------------------------------------------
if (( build )); then
  step "building (debug; the first build takes a few minutes on 2 cores)"
  cargo build --quiet --bins
fi
BIN=$ROOT/target/debug
for b in agent controller meshlat-linkemu; do
  [[ -x $BIN/$b ]] || die "$BIN/$b is missing: run without --no-build, or cargo build --bins"
done

# A fresh data directory: refuse to empty one the demo did not make.
if [[ -n $(ls -A "$DEMO_DIR") && ! -e $DEMO_DIR/.meshlat-demo ]]; then
  die "$DEMO_DIR is not empty and was not made by the demo; give --dir with a new or empty directory"
fi
find "$DEMO_DIR" -mindepth 1 -delete
touch "$DEMO_DIR/.meshlat-demo"
mkdir -p "$LOGS" "$DEMO_DIR/jobs" "$DEMO_DIR/agents" "$DEMO_DIR/records"

# This run's loopback addresses: 127.A.B.x, so that two demos (or a demo and a test) do not meet.
NET=127.$((100 + RANDOM % 120)).$((1 + RANDOM % 250))
KEY=demo-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')      # the mesh-wide UDP key
FED_SECRET=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')   # shared by the two controllers (>= 32 bytes)
REGIONS=(eu-west-1 us-east-1)
# Emulator listen ports (on per-agent addresses of this run's network); the agents' own ports are
# picked by the kernel.
declare -A EMU_PORT=([udp]=27710 [tcp]=27711 [quic]=27712 [https]=27743)

step "starting two federated controllers"
start ctl-us-east-1 "$BIN/controller" serve --region us-east-1 \
  --listen 127.0.0.1:0 --rest-listen 127.0.0.1:0 --data-dir "$DEMO_DIR/ctl-us-east-1" \
  --federation-secret "$FED_SECRET"
wait_for ctl-us-east-1 30 '^secrets-file '
start ctl-eu-west-1 "$BIN/controller" serve --region eu-west-1 \
  --listen 127.0.0.1:0 --rest-listen 127.0.0.1:0 --data-dir "$DEMO_DIR/ctl-eu-west-1" \
  --federation-secret "$FED_SECRET" \
  --peer "https://$(field ctl-us-east-1 listening grpc)" --peer-ca "$DEMO_DIR/ctl-us-east-1/ca.pem" \
  --relay-agent location=demo-eu-2
wait_for ctl-eu-west-1 30 '^secrets-file '
declare -A GRPC REST TOKEN CRED CA
for r in "${REGIONS[@]}"; do
  GRPC[$r]=$(field "ctl-$r" listening grpc)
  REST[$r]=$(field "ctl-$r" listening rest)
  TOKEN[$r]=$(secret "$r" join-token)
  CRED[$r]=$(secret "$r" operator-credential)
  CA[$r]=$DEMO_DIR/ctl-$r/ca.pem
  ok "$(printf '%-10s grpc https://%-15s  rest https://%s' "$r" "${GRPC[$r]}" "${REST[$r]}")"
  # What `controller` client commands (and curl) need, for people in another terminal.
  # shellcheck disable=SC2016  # the backquotes are text
  printf '# the %s controller, for `controller` client commands; DEMO_REST for curl\nexport MESHLAT_CONTROLLER=https://%s MESHLAT_CA=%s MESHLAT_CREDENTIAL=%s DEMO_REST=https://%s\n' "$r" \
    "${GRPC[$r]}" "${CA[$r]}" "${CRED[$r]}" "${REST[$r]}" > "$DEMO_DIR/$r.env"
done
# `controller` client commands against region R's controller.
ctl() { local r=$1; shift
  MESHLAT_CONTROLLER=https://${GRPC[$r]} MESHLAT_CREDENTIAL=${CRED[$r]} MESHLAT_CA=${CA[$r]} \
    "$BIN/controller" "$@"
}

# name region az ip-suffix [extra agent flags]
AGENTS=(
  "eu-1 eu-west-1 eu-west-1a 11"
  "eu-2 eu-west-1 eu-west-1b 12 --relay"
  "us-1 us-east-1 us-east-1a 21"
  "us-2 us-east-1 us-east-1b 22"
)
step "starting ${#AGENTS[@]} agents (agent run mode; records under $(show "$DEMO_DIR")/records)"
declare -A AGENT_IP EMU_IP
# With --monitoring every agent serves /metrics on its own address, port 9464.
STATS=()
(( monitoring )) && STATS=(--stats-port 9464)
for a in "${AGENTS[@]}"; do
  read -r name region az n extra <<< "$a"
  AGENT_IP[$name]=$NET.$n
  EMU_IP[$name]=$NET.1$n
  adv=()
  for p in udp tcp quic https; do
    # The relay's UDP is advertised as is (eu-1 reaches it without crossing the ocean); its way
    # to us-east-1 crosses the emulator like everyone's.
    [[ $extra == *--relay* && $p == udp ]] && continue
    adv+=(--advertise-endpoint "$p=${EMU_IP[$name]}:${EMU_PORT[$p]}")
  done
  # shellcheck disable=SC2086  # $extra is a flag list
  start "agent-$name" "$BIN/agent" --controller "https://${GRPC[$region]}" --token "${TOKEN[$region]}" \
    --region "$region" --az "$az" --location "demo-$name" --key "$KEY" \
    --listen "${AGENT_IP[$name]}" --udp-port 0 --tcp-port 0 --quic-port 0 --https-port 0 --http-port off \
    "${adv[@]}" $extra \
    --state-dir "$DEMO_DIR/agents/$name" --out "$DEMO_DIR" --flush-interval 1 --serve-interval 10 \
    "${STATS[@]}"
done
ROUTES=()
for a in "${AGENTS[@]}"; do
  read -r name region az n extra <<< "$a"
  wait_for "agent-$name" 30 '^listening ' 4
  for p in udp tcp quic https; do
    up=$(field "agent-$name" listening "$p")
    case $p in
      udp) spec="udp:${EMU_IP[$name]}:${EMU_PORT[$p]}=$up,loss_fwd=1,seed=$n" ;;
      quic) spec="udp:${EMU_IP[$name]}:${EMU_PORT[$p]}=$up" ;;
      *) spec="tcp:${EMU_IP[$name]}:${EMU_PORT[$p]}=$up" ;;
    esac
    ROUTES+=(--route "$spec,fwd=${delay_ms}ms,ret=${delay_ms}ms")
  done
  ok "$(printf '%-5s %-11s %-6s on %-15s advertised as %s' "$name" "$az" "${extra:+relay}" "${AGENT_IP[$name]}" "${EMU_IP[$name]}")"
done

step "starting the link emulator: +$((2 * delay_ms)) ms RTT on every path between the regions, 1 % UDP loss"
start linkemu "$BIN/meshlat-linkemu" --log "$LOGS/linkemu.ndjson" "${ROUTES[@]}"
wait_for linkemu 30 '^route ' $(( ${#ROUTES[@]} / 2 ))
ok "${#AGENTS[@]} agents x 4 protocols = $(( ${#ROUTES[@]} / 2 )) routes (logs/linkemu.out lists them)"

if (( monitoring )); then
  step "starting Prometheus on 127.0.0.1:$prom_port (every agent's /metrics, the shipped rules)"
  mkdir -p "$DEMO_DIR/prometheus"
  cp infra/prometheus/meshlat-rules.yml "$DEMO_DIR/prometheus/"
  {
    printf 'global: {scrape_interval: 5s, evaluation_interval: 5s}\nrule_files: [meshlat-rules.yml]\n'
    printf 'scrape_configs:\n  - job_name: meshlat-agent\n    static_configs:\n      - targets: ['
    sep=""
    for a in "${AGENTS[@]}"; do
      read -r name _ <<< "$a"
      printf '%s"%s:9464"' "$sep" "${AGENT_IP[$name]}"
      sep=", "
    done
    printf ']\n'
  } > "$DEMO_DIR/prometheus/prometheus.yml"
  start prometheus prometheus --config.file="$DEMO_DIR/prometheus/prometheus.yml" \
    --storage.tsdb.path="$DEMO_DIR/prometheus/data" --web.listen-address="127.0.0.1:$prom_port" --log.level=warn
  for ((i = 0; ; i++)); do
    python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$prom_port/-/ready', timeout=1)" 2>/dev/null && break
    kill -0 "${PID[prometheus]}" 2>/dev/null || fail "prometheus exited; see $LOGS/prometheus.log (port $prom_port in use? --prometheus-port)"
    (( i < 100 )) || fail "prometheus not ready within 10 s; see $LOGS/prometheus.log"
    sleep 0.1
  done
  ok "http://127.0.0.1:$prom_port  (alerts: /alerts; try meshlat:rtt_p99_seconds:pair; Grafana dashboard: infra/grafana/)"
fi

# What each controller lists and the end of every log, for a join that does not complete.
join_report() {
  local r f
  for r in "${REGIONS[@]}"; do
    echo "--- controller agents ($r):"
    ctl "$r" agents 2>&1 | sed 's/^/    /'
  done
  for f in "$LOGS"/ctl-*.log "$LOGS"/agent-*.log; do
    echo "--- $(basename "$f"), last 8 lines:"
    tail -n 8 "$f" | cut -c1-300 | sed 's/^/    /'
  done
}
step "waiting for every agent to join and the controllers to exchange directories"
for ((i = 0; ; i++)); do
  n_eu=$(ctl eu-west-1 agents 2>/dev/null | awk 'NR > 1 && $5 == "true"' | wc -l || true)
  n_us=$(ctl us-east-1 agents 2>/dev/null | awk 'NR > 1 && $5 == "true"' | wc -l || true)
  (( n_eu == ${#AGENTS[@]} && n_us == ${#AGENTS[@]} )) && break
  (( interrupted )) && exit 130
  (( i < 120 )) || fail "after 60 s the controllers see $n_eu and $n_us of ${#AGENTS[@]} agents; see $LOGS/
$(join_report)"
  sleep 0.5
done
ok "each controller lists all ${#AGENTS[@]} agents (its own and, through federation, the peer's):"
ctl eu-west-1 agents | awk 'NR > 1 { n = $4; sub(/^demo-/, "", n); printf "       %-5s %-10s %s\n", n, $2, $1 }' | sort

# ---------------------------------------------------------------------------------------------
# Jobs: JSON as in POST /api/v1/jobs, started with `controller job start` on the eu-west-1
# controller; federation hands the us-east-1 agents theirs. Every agent probes every agent of the
# other region. (Not within a region: an agent advertises one address per protocol — here the
# emulator's — so a same-region probe would cross the emulated ocean too.)
JOB_IDS=()
start_job() { # NAME JSON: start a job on the eu-west-1 controller (spec in DIR/jobs/NAME.json)
  local file=$DEMO_DIR/jobs/$1.json out
  printf '%s\n' "$2" > "$file"
  out=$(ctl eu-west-1 job start "$file" 2>&1) || fail "starting job $1 failed: $out"
  JOB_IDS+=("$(printf '%s\n' "$out" | awk -F'"' '$2 == "id" {print $4; exit}')")
  ok "$(printf '%-24s id %s' "$1" "${JOB_IDS[-1]}")"
}
probe_job() { # SRC_REGION DST_SELECTOR
  cat <<EOF
{"name": "$1->$2", "kind": "probe", "protocols": ["udp", "tcp", "quic", "https"],
 "sources": ["region=$1"], "targets": ["$2"], "strategy": "full",
 "interval_ms": 1000, "timeout_ms": 900, "packets": 10, "packet_interval_ms": 10}
EOF
}
step "starting the probe jobs: udp, tcp, quic, https every second (specs in $(show "$DEMO_DIR")/jobs/)"
start_job eu-west-1-to-us-east-1 "$(probe_job eu-west-1 region=us-east-1)"
# eu-2 is the relay: its UDP is advertised without the emulator, so it is no us -> eu target.
start_job us-east-1-to-eu-west-1 "$(probe_job us-east-1 location=demo-eu-1)"
step "starting the relay job: eu-1 -> relay eu-2 -> each us-east-1 agent, direct path interleaved"
start_job eu-1-via-eu-2 '{"name": "eu-1 via eu-2", "kind": "relay", "protocols": ["udp"],
 "sources": ["location=demo-eu-1"], "targets": ["region=us-east-1"], "relays": ["location=demo-eu-2"],
 "strategy": "full", "interval_ms": 1000, "timeout_ms": 900, "packets": 10, "packet_interval_ms": 10}'

cat <<EOF

${C_BOLD}Talk to the mesh from another terminal while it runs${C_OFF} (us-east-1.env for the other controller):
  . $(show "$DEMO_DIR")/eu-west-1.env
  $(show "$BIN/controller") agents          # also: job list, job show ID, matrix --by agent
  curl --cacert \$MESHLAT_CA -H "Authorization: Bearer \$MESHLAT_CREDENTIAL" \$DEMO_REST/api/v1/jobs
EOF

# ---------------------------------------------------------------------------------------------
# The live matrix. Each controller's matrix has its own agents as sources (`controller matrix
# --by agent`); both are merged here into one table: a row per agent pair, a column per protocol,
# agents named by their location label (ids in `controller agents`).
ctl eu-west-1 agents > "$DEMO_DIR/agents.txt"
matrix() {
  awk '
    FNR == NR { if (FNR > 1) { n = $4; sub(/^demo-/, "", n); name[$1] = n }; next }
    /p50\/p99 ms loss/ { proto = tolower($1); nd = 0; for (i = 5; i <= NF; i++) dst[++nd] = $i; next }
    NF == 0 || /^no summaries/ { next }
    proto != "" {
      j = 2
      for (k = 1; k <= nd; k++) {
        if ($j == "-") { j++; continue }
        split($j, q, "/"); cell = sprintf("%5.1f/%-5.1f %4s", q[1], q[2], $(j + 1)); j += 2
        s = ($1 in name) ? name[$1] : substr($1, 1, 8); d = (dst[k] in name) ? name[dst[k]] : substr(dst[k], 1, 8)
        pair = s " -> " d
        if (!(pair in seen)) { seen[pair] = 1; pairs[++np] = pair }
        c[proto, pair] = cell; have[proto] = 1
      }
    }
    END {
      if (np == 0) { print "    (no summaries yet: agents report every 5 s)"; exit }
      for (i = 2; i <= np; i++) { p = pairs[i]; for (j = i - 1; j >= 1 && pairs[j] > p; j--) pairs[j + 1] = pairs[j]; pairs[j + 1] = p }
      n = split("udp quic https http tcp", order, " "); m = 0
      for (o = 1; o <= n; o++) if (order[o] in have) cols[++m] = order[o]
      line = sprintf("    %-12s", "RTT ms"); for (o = 1; o <= m; o++) line = line sprintf("  %-16s", "  " cols[o]); out(line)
      line = sprintf("    %-12s", "");       for (o = 1; o <= m; o++) line = line sprintf("  %-16s", "  p50/p99   loss"); out(line)
      for (i = 1; i <= np; i++) {
        line = sprintf("    %-12s", pairs[i])
        for (o = 1; o <= m; o++) { x = ((cols[o], pairs[i]) in c) ? c[cols[o], pairs[i]] : "    -"; line = line sprintf("  %-16s", x) }
        out(line)
      }
    }
    function out(l) { sub(/ +$/, "", l); print l
    }' "$DEMO_DIR/agents.txt" <(ctl eu-west-1 matrix --by agent 2>/dev/null; ctl us-east-1 matrix --by agent 2>/dev/null)
}
# Measurements (kind probe/relay) by source region, then the servers' own records
# (kind serve/relay_serve: what each reflector and relay answered, relayed and dropped).
records_by_region() {
  find "$DEMO_DIR/records" -name '*.ndjson' -exec cat {} + 2>/dev/null |
    grep -E '"kind":"(probe|relay)"' | grep -o '"src_region":"[^"]*"' | cut -d'"' -f4 | sort | uniq -c |
    awk '{printf "%s%s %s", (NR > 1 ? ", " : ""), $1, $2} END {if (NR == 0) printf "none yet"}'
  local served
  served=$(find "$DEMO_DIR/records" -name '*.ndjson' -exec cat {} + 2>/dev/null |
    grep -cE '"kind":"(serve|relay_serve)"' || true)
  printf '; %s server records' "${served:-0}"
}

echo
if (( duration > 0 )); then
  step "live matrix, every ${refresh} s for ${duration} s (Ctrl-C stops earlier)"
else
  step "live matrix, every ${refresh} s until Ctrl-C"
fi
rtt=$((2 * delay_ms))
cat <<EOF
${C_DIM}    Expect udp and quic ${rtt} ms (one round trip across the emulator; udp also its 1 % loss), https
    $((2 * rtt)) ms (TLS handshake + request) and tcp near 0: a userspace emulator cannot delay the
    TCP handshake, which the kernel answers, so a connect ends at the emulator.${C_OFF}
EOF
t0=$SECONDS
next=$t0
shown=0
while (( ! interrupted )); do
  elapsed=$((SECONDS - t0))
  (( duration > 0 && elapsed >= duration )) && break
  if (( SECONDS >= next )); then
    next=$((SECONDS + refresh))
    block=$(printf '%s\n' "${C_DIM}--- $(date +%H:%M:%S)  +${elapsed}s  records: $(records_by_region)${C_OFF}"; matrix || true)
    # On a terminal wide and tall enough, redraw in place; otherwise append.
    width=$(printf '%s\n' "$block" | sed $'s/\e\\[[0-9;]*m//g' | awk '{ if (length > w) w = length } END { print w + 0 }')
    lines=$(printf '%s\n' "$block" | wc -l)
    if [[ -t 1 ]] && (( shown > 0 && width < $(tput cols 2>/dev/null || echo 80) && lines < $(tput lines 2>/dev/null || echo 24) )); then
      printf '\e[%dA\e[J' "$shown"
    else
      echo
    fi
    printf '%s\n' "$block"
    shown=$lines
  fi
  sleep 0.5 || true
  (( interrupted )) && break
  for i in "${!pids[@]}"; do
    if ! kill -0 "${pids[$i]}" 2>/dev/null; then
      st=0; wait "${pids[$i]}" 2>/dev/null || st=$?
      fail "${names[$i]} stopped unexpectedly (exit status $st); $LOGS/${names[$i]}.log ends with:
$(tail -n 30 "$LOGS/${names[$i]}.log" 2>/dev/null | cut -c1-300)"
    fi
  done
done

echo
step "stopping agents, link emulator and controllers"
stop_all
trap - INT TERM
files=$(find "$DEMO_DIR/records" -name '*.ndjson' 2>/dev/null | wc -l)
records=$(find "$DEMO_DIR/records" -name '*.ndjson' -exec cat {} + 2>/dev/null | wc -l)
AL=$(show "$ROOT/scripts/athena-local") DD=$(show "$DEMO_DIR") Q=$(show "$ROOT/infra/athena")
ok "$records records in $files files ($(records_by_region)) under $(show "$DEMO_DIR")/records"
cat <<EOF

${C_BOLD}The records are in the Hive layout Firehose writes to S3${C_OFF} (records/region=R/dt=YYYY-MM-DD/hour=HH/).
Query them with the shipped Athena SQL on DuckDB (region pairs, agent pairs, loss and jitter, https
phases, 5-minute series; the first query sets up .venv-analytics):
  ${AL} --data ${DD} ${Q}/latency_matrix_region.sql
  ${AL} --data ${DD} ${Q}/latency_matrix_agent.sql
  ${AL} --data ${DD} ${Q}/loss_jitter.sql
  ${AL} --data ${DD} ${Q}/http_phases.sql
  ${AL} --data ${DD} ${Q}/timeseries_region_pair.sql
  ${AL} --data ${DD} ${Q}/relay_penalty.sql      # does the relay beat the direct path?
  ${AL} --data ${DD} ${Q}/best_relay.sql
  ${AL} --data ${DD} ${Q}/server_drops_region_pair.sql   # what reflectors and relays refused
Server records (every 10 s and at shutdown; what each agent's reflector answered and its relay relayed):
  grep -h '"kind":"serve"' -r ${DD}/records | head -n 1
One record:  find ${DD}/records -name '*.ndjson' | head -1 | xargs head -n 1
Logs of every process: $(show "$LOGS")/
EOF
exit 0
