#!/usr/bin/env bash
# meshlat local demo: a two-region mesh on this machine.
#
#   scripts/demo.sh                  # build (debug), start the mesh, show the live matrix until Ctrl-C
#   scripts/demo.sh -d 60            # the same, stopping by itself after 60 s
#   scripts/demo.sh --dir /tmp/mesh  # records and logs there (default: ./demo-data, or $DEMO_DIR)
#
# What runs:
#   controller eu-west-1   federated with us-east-1 (--peer, --peer-ca, --federation-secret);
#                          its operator policy makes eu-2 a relay (--relay-agent location=demo-eu-2)
#   controller us-east-1
#   agent eu-1             eu-west-1 (agent run mode: --controller URL --token TOKEN)
#   agent eu-2             eu-west-1, the region's relay (--relay), reached directly from eu-1
#   agent us-1, us-2       us-east-1
#   meshlat-linkemu        the "Atlantic": 35 ms each way (70 ms RTT) between the regions, plus
#                          1 % loss towards the UDP reflectors (--delay sets the one-way delay).
# The link between the regions is one of two kinds (the demo prints which, and why):
#   packet-level (as root, with `ip netns` and /dev/net/tun; this machine and CI): each region is
#     a network namespace (meshlat-demo-PID-eu, meshlat-demo-PID-us) holding its controller and
#     its agents, each agent on its own address; two linkemu tun routes join the namespaces, one
#     for everything and one that also drops 1 % of the requests to the UDP reflectors (`ip rule`s
#     pick them), so every packet between the regions gets the delay: TCP, TLS and QUIC
#     handshakes included, so the tcp column shows the 70 ms too. Within a region packets stay in
#     its namespace: same-region probes (a job per region) are undelayed. The controllers are
#     reached from this shell over a veth pair per namespace (the *.env files name them), and
#     federate across the emulated link. Namespaces, veths and TUN devices go when the demo
#     stops; a namespace left by a killed demo is removed (its processes stopped) on the next start.
#   loopback (otherwise, or with --loopback-links): every address is on 127.0.0.0/8 and the
#     emulator forwards one udp or tcp route per agent and protocol; agents advertise the
#     emulator's addresses (--advertise-endpoint PROTO=HOST:PORT), so every cross-region probe
#     crosses it. The emulator answers TCP handshakes itself, so TCP connect times (and the
#     connect phase of https) do not carry the delay, and there are no same-region probes (an
#     agent advertises one address per protocol, the emulator's).
# Then it starts, through the eu-west-1 controller, one probe job per direction (udp, tcp, quic,
# https; eu-west-1 agents to every us-east-1 agent, us-east-1 agents to eu-1, or to both eu-west-1
# agents over packet-level links), one per region within it (packet-level links only) and a relay
# job (eu-1 to each us-east-1 agent through the relay eu-2, with the direct path interleaved: does
# the relay beat it?), shows the live matrix every few seconds, and on Ctrl-C (or after -d) stops
# everything and prints how to query the records, which are in the Hive layout Firehose writes to
# S3: DIR/records/region=R/dt=YYYY-MM-DD/hour=HH/*.ndjson.
#
# Options:
#   -d, --duration SECONDS   stop after this long once the jobs run (default 0: until Ctrl-C)
#   --dir DIR                data directory, emptied first if an earlier demo made it (default ./demo-data)
#   --refresh SECONDS        live matrix refresh period (default 5)
#   --delay MS               emulated one-way inter-region delay (default 35)
#   --loopback-links         use the loopback emulator even where packet-level links are possible
#   --tun-links              require packet-level links (fail, saying why, where they are not possible)
#   --no-build               use the binaries already in target/debug
#   --monitoring             also run a real Prometheus (Debian's package: scripts/setup.sh) that
#                            scrapes every agent's /metrics with the shipped rules
#                            (infra/prometheus/meshlat-rules.yml), and print its URL
#   --prometheus-port PORT   its port on 127.0.0.1 (default 9090)
#   -h, --help               this text
# Exit status: 0 after a clean stop (Ctrl-C included), 1 when a process failed (its log is named),
# 2 for bad usage. Needs cargo, and python3 for the printed queries; packet-level links need root,
# iproute2 (ip netns, veth) and /dev/net/tun.
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
links=auto   # auto, tun or loopback
DEMO_DIR=${DEMO_DIR:-$ROOT/demo-data}
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
num() { [[ $2 =~ ^[0-9]+$ ]] || die "$1 needs a whole number, not '$2' (try --help)"; }
while [[ $# -gt 0 ]]; do
  case $1 in
    -d|--duration) [[ $# -ge 2 ]] || die "$1 needs SECONDS"; num "$1" "$2"; duration=$2; shift 2 ;;
    --dir) [[ $# -ge 2 ]] || die "$1 needs DIR"; DEMO_DIR=$2; shift 2 ;;
    --refresh) [[ $# -ge 2 ]] || die "$1 needs SECONDS"; num "$1" "$2"; refresh=$2; shift 2 ;;
    --delay) [[ $# -ge 2 ]] || die "$1 needs MS"; num "$1" "$2"; delay_ms=$2; shift 2 ;;
    --loopback-links) links=loopback; shift ;;
    --tun-links) links=tun; shift ;;
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
  local i p ns
  # Agents first (they flush and fsync their record files), then the controllers and the emulator
  # (in reverse order of starting).
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
  # Then the network namespaces (packet-level links) and their veth pairs (the emulator's TUN
  # devices went with it). The pairs are deleted by name: a namespace outlives its name while
  # the kernel still holds sockets of it (closing connections whose link is gone), for minutes.
  for ns in "${NAMESPACES[@]}"; do
    ip link del "mld$$${ns##*-}" 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || echo "demo: could not remove network namespace $ns (ip netns del $ns)" >&2
  done
}
NAMESPACES=()
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

KEY=demo-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')      # the mesh-wide UDP key
FED_SECRET=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')   # shared by the two controllers (>= 32 bytes)
REGIONS=(eu-west-1 us-east-1)
# name region az ip-suffix [extra agent flags]
AGENTS=(
  "eu-1 eu-west-1 eu-west-1a 11"
  "eu-2 eu-west-1 eu-west-1b 12 --relay"
  "us-1 us-east-1 us-east-1a 21"
  "us-2 us-east-1 us-east-1b 22"
)
# Ports: the emulator's (loopback links, on per-agent addresses of this run's network) or every
# agent's own (packet-level links, where each agent has an address of its own).
declare -A PORT=([udp]=27710 [tcp]=27711 [quic]=27712 [https]=27743)

# ---------------------------------------------------------------------------------------------
# The links between the regions: packet-level where this machine allows it, else loopback.
NS_PREFIX=meshlat-demo-
# Why packet-level links cannot be used here (nothing when they can).
tun_unavailable() {
  (( EUID == 0 )) || { echo "not running as root"; return; }
  command -v ip >/dev/null || { echo "no ip command (iproute2)"; return; }
  [[ -c /dev/net/tun ]] || { echo "no /dev/net/tun"; return; }
  ip netns list >/dev/null 2>&1 || echo "ip netns does not work here"
}
# Namespaces meshlat-demo-PID-* whose demo (PID) is gone, from a demo killed before its cleanup:
# stops the processes still in them and the emulator holding their TUN devices, then removes
# them and their veth pairs.
remove_stale_namespaces() {
  local ns pid left emu
  while read -r ns _; do
    [[ $ns =~ ^${NS_PREFIX}([0-9]+)- ]] || continue
    pid=${BASH_REMATCH[1]}
    if [[ $pid != "$$" ]] && tr '\0' ' ' 2>/dev/null < "/proc/$pid/cmdline" | grep -q 'demo\.sh'; then
      continue   # a demo still running
    fi
    left=$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')
    emu=$(pgrep -f -- "tun:$ns/" | tr '\n' ' ' || true)
    # shellcheck disable=SC2086  # lists of pids
    if [[ -n ${left// } || -n ${emu// } ]]; then
      kill -TERM $left $emu 2>/dev/null || true
      for _ in $(seq 50); do
        kill -0 $left $emu 2>/dev/null || break
        sleep 0.1
      done
      kill -KILL $left $emu 2>/dev/null || true
    fi
    ip link del "mld$pid${ns##*-}" 2>/dev/null || true
    if ip netns del "$ns" 2>/dev/null; then
      say "removed the network namespace $ns left by a demo (pid $pid) that did not stop cleanly${left:+ (stopped pids $left)}"
    fi
  done < <(ip netns list 2>/dev/null)
}
# Sets up this run's namespaces and veth pairs (packet-level links); when the kernel refuses,
# sets `why` and returns 1.
make_namespaces() {
  local r ns out
  for r in "${REGIONS[@]}"; do
    ns=$NS_PREFIX$$-${r%%-*}
    NS[$r]=$ns
    out=$(ip netns add "$ns" 2>&1) || { why="ip netns add failed: $out"; return 1; }
    NAMESPACES+=("$ns")
    out=$( {
      ip -n "$ns" link set lo up &&
        # The root end named after this demo and region (mldPIDeu: at most 15 characters), the
        # namespace end veth0.
        ip link add "mld$$${ns##*-}" type veth peer name veth0 netns "$ns" &&
        ip addr add "${ROOT_IP[$r]}/30" dev "mld$$${ns##*-}" &&
        ip link set "mld$$${ns##*-}" up &&
        ip -n "$ns" addr add "${CTL_IP[$r]}/30" dev veth0 &&
        ip -n "$ns" link set veth0 up
    } 2>&1) || { why="setting up $ns failed: $out"; return 1; }
  done
}
# Sets every interface of namespace NS to accept packets whose reply would leave by another
# interface (the lossy route's packets come back over the other one).
no_rp_filter() {
  # shellcheck disable=SC2016  # $f is the inner shell's
  ip netns exec "$1" sh -c 'for f in /proc/sys/net/ipv4/conf/*/rp_filter; do echo 0 > "$f"; done'
}

declare -A NS ROOT_IP CTL_IP AGENT_IP EMU_IP
why=""
if [[ $links != loopback ]]; then
  why=$(tun_unavailable)
  [[ -z $why ]] && remove_stale_namespaces
  if [[ -z $why ]]; then
    # This run's addresses: 198.18.0.0/15 (the range RFC 2544 keeps for test networks), one /24
    # that no interface here uses, so two demos (or a demo and a test) do not meet. Only the
    # roots of the veth pairs (.1, .5) are in the root namespace.
    for _ in $(seq 20); do
      NET=198.$((18 + RANDOM % 2)).$((RANDOM % 256))
      ip -4 -o addr show | grep -q " inet ${NET//./\\.}\." || break
    done
    ROOT_IP=([eu-west-1]=$NET.1 [us-east-1]=$NET.5)
    CTL_IP=([eu-west-1]=$NET.2 [us-east-1]=$NET.6)
    if ! make_namespaces; then
      for ns in "${NAMESPACES[@]}"; do
        ip link del "mld$$${ns##*-}" 2>/dev/null || true
        ip netns del "$ns" 2>/dev/null || true
      done
      NAMESPACES=()
      why=${why//$'\n'/ }
    fi
  fi
  if [[ -n $why && $links == tun ]]; then
    fail "packet-level links (--tun-links) are not possible here: $why"
  fi
  [[ -n $why ]] && links=loopback || links=tun
fi

if [[ $links == tun ]]; then
  step "links: packet-level (tun routes between the namespaces ${NS[eu-west-1]} and ${NS[us-east-1]}: every packet between the regions is delayed)"
  # The tun routes' ends: .65 (eu) = .66 (us) for everything, .69 = .70 with 1 % loss for the
  # requests to the UDP reflectors' port, which `ip rule`s send there (packets to that port, and a
  # relay's from it, but not the reflectors' replies from it); its `src` is the first route's
  # address, so the replies come back over the lossless one (loss one way, as the loopback
  # emulator's loss_fwd). Agents: eu .11 .12 (.8/29), us .21 .22 (.16/28).
  start linkemu "$BIN/meshlat-linkemu" --log "$LOGS/linkemu.ndjson" \
    --route "tun:${NS[eu-west-1]}/$NET.65=${NS[us-east-1]}/$NET.66,fwd=${delay_ms}ms,ret=${delay_ms}ms" \
    --route "tun:${NS[eu-west-1]}/$NET.69=${NS[us-east-1]}/$NET.70,fwd=${delay_ms}ms,ret=${delay_ms}ms,loss_fwd=1,loss_ret=1,seed=$((RANDOM))"
  wait_for linkemu 30 '^route ' 2
  # region: its agents' subnet, the far end of each tun route, the other region's agents' subnet
  declare -A SUBNET=([eu-west-1]=$NET.8/29 [us-east-1]=$NET.16/28) PEER=([eu-west-1]=$NET.66 [us-east-1]=$NET.65) \
    PEER_LOSSY=([eu-west-1]=$NET.70 [us-east-1]=$NET.69) OTHER=([eu-west-1]=us-east-1 [us-east-1]=eu-west-1)
  for r in "${REGIONS[@]}"; do
    ns=${NS[$r]} o=${OTHER[$r]}
    out=$( {
      ip -n "$ns" route add "${SUBNET[$o]}" via "${PEER[$r]}" &&
        ip -n "$ns" route add "${CTL_IP[$o]}/32" via "${PEER[$r]}" &&    # federation
        ip -n "$ns" route add "${SUBNET[$o]}" via "${PEER_LOSSY[$r]}" src "${PEER[$o]}" table 101 &&
        ip -n "$ns" rule add ipproto udp sport "${PORT[udp]}" lookup main priority 100 &&
        ip -n "$ns" rule add ipproto udp dport "${PORT[udp]}" lookup 101 priority 101 &&
        ip route add "${SUBNET[$r]}" via "${CTL_IP[$r]}" &&               # this shell (Prometheus) to the agents
        no_rp_filter "$ns"
    } 2>&1) || fail "routing between the namespaces failed: $out"
    # A relay forwards from its reflector's port to the far reflector: a request (lossy), where
    # the rule above takes packets from that port for replies.
    for a in "${AGENTS[@]}"; do
      read -r _ region _ n extra <<< "$a"
      [[ $region == "$r" && $extra == *--relay* ]] || continue
      out=$(ip -n "$ns" rule add from "$NET.$n" ipproto udp sport "${PORT[udp]}" dport "${PORT[udp]}" lookup 101 priority 99 2>&1) ||
        fail "routing between the namespaces failed: $out"
    done
  done
  for r in "${REGIONS[@]}"; do
    ok "$(printf '%-10s namespace %s: controller %s (veth from here), agents %s' "$r" "${NS[$r]}" "${CTL_IP[$r]}" "${SUBNET[$r]}")"
  done
  ok "2 tun routes: +$((2 * delay_ms)) ms RTT for every packet between the regions, 1 % loss on the way to the UDP reflectors"
else
  if [[ $why ]]; then
    step "links: loopback emulator, as packet-level links are not possible here ($why): TCP connect times, https's included, do not carry the emulated delay"
  else
    step "links: loopback emulator (--loopback-links): TCP connect times, https's included, do not carry the emulated delay"
  fi
  # This run's loopback addresses: 127.A.B.x, so that two demos (or a demo and a test) do not meet.
  NET=127.$((100 + RANDOM % 120)).$((1 + RANDOM % 250))
  ROOT_IP=([eu-west-1]=127.0.0.1 [us-east-1]=127.0.0.1)
  CTL_IP=([eu-west-1]=127.0.0.1 [us-east-1]=127.0.0.1)
fi
# exec_in REGION CMD...: becomes CMD (exec, so that `start` has its pid), in the region's
# namespace with packet-level links (`ip netns exec` execs it in turn).
# shellcheck disable=SC2317  # called through `start`
exec_in() { local r=$1; shift
  if [[ $links == tun ]]; then exec ip netns exec "${NS[$r]}" "$@"; else exec "$@"; fi
}

# With packet-level links an agent's connection to its controller comes from the controller's own
# address (they share the namespace), so the controller is told which addresses agents may
# advertise: the region's agent subnet (--agent-cidr).
declare -A CTL_FLAGS=([eu-west-1]="" [us-east-1]="")
if [[ $links == tun ]]; then
  for r in "${REGIONS[@]}"; do CTL_FLAGS[$r]="--agent-cidr ${SUBNET[$r]}"; done
fi
step "starting two federated controllers"
# shellcheck disable=SC2086  # CTL_FLAGS are flag lists
start ctl-us-east-1 exec_in us-east-1 "$BIN/controller" serve --region us-east-1 \
  --listen "${CTL_IP[us-east-1]}:0" --rest-listen "${CTL_IP[us-east-1]}:0" --data-dir "$DEMO_DIR/ctl-us-east-1" \
  --federation-secret "$FED_SECRET" ${CTL_FLAGS[us-east-1]}
wait_for ctl-us-east-1 30 '^secrets-file '
# shellcheck disable=SC2086  # CTL_FLAGS are flag lists
start ctl-eu-west-1 exec_in eu-west-1 "$BIN/controller" serve --region eu-west-1 \
  --listen "${CTL_IP[eu-west-1]}:0" --rest-listen "${CTL_IP[eu-west-1]}:0" --data-dir "$DEMO_DIR/ctl-eu-west-1" \
  --federation-secret "$FED_SECRET" \
  --peer "https://$(field ctl-us-east-1 listening grpc)" --peer-ca "$DEMO_DIR/ctl-us-east-1/ca.pem" \
  --relay-agent location=demo-eu-2 ${CTL_FLAGS[eu-west-1]}
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

step "starting ${#AGENTS[@]} agents (agent run mode; records under $(show "$DEMO_DIR")/records)"
# With --monitoring every agent serves /metrics on its own address, port 9464.
STATS=()
(( monitoring )) && STATS=(--stats-port 9464)
for a in "${AGENTS[@]}"; do
  read -r name region az n extra <<< "$a"
  AGENT_IP[$name]=$NET.$n
  adv=()
  if [[ $links == tun ]]; then
    # Each agent on its own address in its region's namespace, advertised as is, on fixed ports
    # (the lossy route's rule names the UDP one).
    ip -n "${NS[$region]}" addr add "${AGENT_IP[$name]}/32" dev lo
    adv=(--advertise "${AGENT_IP[$name]}")
    ports=(--udp-port "${PORT[udp]}" --tcp-port "${PORT[tcp]}" --quic-port "${PORT[quic]}" --https-port "${PORT[https]}")
  else
    EMU_IP[$name]=$NET.1$n
    for p in udp tcp quic https; do
      # The relay's UDP is advertised as is (eu-1 reaches it without crossing the ocean); its way
      # to us-east-1 crosses the emulator like everyone's.
      [[ $extra == *--relay* && $p == udp ]] && continue
      adv+=(--advertise-endpoint "$p=${EMU_IP[$name]}:${PORT[$p]}")
    done
    ports=(--udp-port 0 --tcp-port 0 --quic-port 0 --https-port 0)
  fi
  # shellcheck disable=SC2086  # $extra is a flag list
  start "agent-$name" exec_in "$region" "$BIN/agent" --controller "https://${GRPC[$region]}" --token "${TOKEN[$region]}" \
    --region "$region" --az "$az" --location "demo-$name" --key "$KEY" \
    --listen "${AGENT_IP[$name]}" "${ports[@]}" --http-port off \
    "${adv[@]}" $extra \
    --state-dir "$DEMO_DIR/agents/$name" --out "$DEMO_DIR" --flush-interval 1 --serve-interval 10 \
    "${STATS[@]}"
done
ROUTES=()
for a in "${AGENTS[@]}"; do
  read -r name region az n extra <<< "$a"
  wait_for "agent-$name" 30 '^listening ' 4
  if [[ $links == tun ]]; then
    ok "$(printf '%-5s %-11s %-6s on %-15s in %s' "$name" "$az" "${extra:+relay}" "${AGENT_IP[$name]}" "${NS[$region]}")"
    continue
  fi
  for p in udp tcp quic https; do
    up=$(field "agent-$name" listening "$p")
    case $p in
      udp) spec="udp:${EMU_IP[$name]}:${PORT[$p]}=$up,loss_fwd=1,seed=$n" ;;
      quic) spec="udp:${EMU_IP[$name]}:${PORT[$p]}=$up" ;;
      *) spec="tcp:${EMU_IP[$name]}:${PORT[$p]}=$up" ;;
    esac
    ROUTES+=(--route "$spec,fwd=${delay_ms}ms,ret=${delay_ms}ms")
  done
  ok "$(printf '%-5s %-11s %-6s on %-15s advertised as %s' "$name" "$az" "${extra:+relay}" "${AGENT_IP[$name]}" "${EMU_IP[$name]}")"
done

if [[ $links == loopback ]]; then
  step "starting the link emulator: +$((2 * delay_ms)) ms RTT on every path between the regions, 1 % UDP loss"
  start linkemu "$BIN/meshlat-linkemu" --log "$LOGS/linkemu.ndjson" "${ROUTES[@]}"
  wait_for linkemu 30 '^route ' $(( ${#ROUTES[@]} / 2 ))
  ok "${#AGENTS[@]} agents x 4 protocols = $(( ${#ROUTES[@]} / 2 )) routes (logs/linkemu.out lists them)"
fi

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
# other region and, over packet-level links, of its own. (With loopback links not within a region:
# an agent advertises one address per protocol — there the emulator's — so a same-region probe
# would cross the emulated ocean too.)
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
if [[ $links == tun ]]; then
  start_job us-east-1-to-eu-west-1 "$(probe_job us-east-1 region=eu-west-1)"
  start_job eu-west-1-within "$(probe_job eu-west-1 region=eu-west-1)"
  start_job us-east-1-within "$(probe_job us-east-1 region=us-east-1)"
else
  # eu-2 is the relay: its UDP is advertised without the emulator, so it is no us -> eu target.
  start_job us-east-1-to-eu-west-1 "$(probe_job us-east-1 location=demo-eu-1)"
fi
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
    # Relayed paths, a line each after their protocol'"'"'s table: SRC -> DST via RELAY p50/p99 loss [penalty +X ms].
    / relayed paths: / { proto = ""; rproto = tolower($1); next }
    rproto != "" && $2 == "->" && $4 == "via" {
      # (Both controllers list a relayed path of eu-1: its own, and its peer'"'"'s through federation.)
      if ((rproto, $1, $3, $5) in rseen) next
      rseen[rproto, $1, $3, $5] = 1
      split($6, q, "/"); pen = ($8 == "penalty") ? $9 " ms" : "-"
      rl[++nr] = sprintf("    %-24s %-5s %5.1f/%-5.1f %5s  penalty %s", nm($1) " -> " nm($3) " via " nm($5), rproto, q[1], q[2], $7, pen)
      next
    }
    /p50\/p99 ms loss/ { rproto = ""; proto = tolower($1); nd = 0; for (i = 5; i <= NF; i++) dst[++nd] = $i; next }
    NF == 0 || /^no summaries/ { next }
    proto != "" {
      j = 2
      for (k = 1; k <= nd; k++) {
        if ($j == "-") { j++; continue }
        split($j, q, "/"); cell = sprintf("%5.1f/%-5.1f %4s", q[1], q[2], $(j + 1)); j += 2
        pair = nm($1) " -> " nm(dst[k])
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
      if (nr > 0) {
        out(sprintf("    %-24s %-5s %-11s %5s  %s", "relayed paths", "", "  p50/p99", "loss", "penalty (relayed - direct)"))
        for (i = 1; i <= nr; i++) out(rl[i])
      }
    }
    function nm(id) { return (id in name) ? name[id] : substr(id, 1, 8) }
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
if [[ $links == tun ]]; then
  cat <<EOF
${C_DIM}    Expect between the regions udp, quic and tcp ${rtt} ms (one round trip across the link; udp
    also its 1 % loss) and https $((3 * rtt)) ms (TCP handshake, TLS handshake, request); within a
    region (eu-1 -> eu-2, ...) well under 1 ms for udp, a few ms at most for the others.${C_OFF}
EOF
else
  cat <<EOF
${C_DIM}    Expect udp and quic ${rtt} ms (one round trip across the emulator; udp also its 1 % loss), https
    $((2 * rtt)) ms (TLS handshake + request) and tcp near 0: a userspace emulator cannot delay the
    TCP handshake, which the kernel answers, so a connect ends at the emulator.${C_OFF}
EOF
fi
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
step "stopping agents, controllers and link emulator"
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
