#!/usr/bin/env bash
# Builds and runs the meshlat container images on this machine (no base image can be pulled here).
#
#   scripts/images.sh [--debug] CMD   --debug: use the host's debug binaries (target/debug; fast,
#                               for the scripts/test.sh stage: same Containerfiles and mechanics,
#                               bigger images) instead of a release build
#   scripts/images.sh setup     # apt: podman buildah runc busybox-static (idempotent)
#   scripts/images.sh build     # release binaries (cargo, host), local bases, both images
#   scripts/images.sh test      # build, then run them with podman: agent serve answers an agent
#                               # probe from another container, the controller starts and passes
#                               # its health check, both as uid 65532; prints sizes and cold starts
#
# Local bases (made from files of this host, no registry):
#   localhost/meshlat-build-base    FROM scratch + busybox-static (a shell for the build stage's
#                                   RUN; the build stage copies the host-built binaries: PREBUILT=1)
#   localhost/meshlat-runtime-base  FROM scratch + the shared libraries the binaries need (ldd:
#                                   glibc, libgcc_s), CA certificates, /etc/passwd with nonroot 65532
# The same infra/docker/*.Containerfile build in a normal pipeline with the public defaults
# (rust:1-bookworm, gcr.io/distroless/cc-debian12:nonroot) and PREBUILT=0.
# Containers run with: podman --runtime runc --cgroup-manager cgroupfs run --network=host
#   --ulimit nofile=1024:1024 --ulimit nproc=1000:1000 (crun fails here; see ENVIRONMENT.md).
set -euo pipefail
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
APT=(podman buildah runc busybox-static)
PODMAN=(podman --runtime runc --cgroup-manager cgroupfs)
PROFILE=release
# MESHLAT_IMAGE_TAG: tag of the built images (default latest; scripts/test_aws_local.sh builds its own)
TAG=${MESHLAT_IMAGE_TAG:-latest}
if [[ ${1:-} == --debug ]]; then PROFILE=debug; shift; fi
RUN=("${PODMAN[@]}" run --no-healthcheck --network=host --ulimit nofile=1024:1024 --ulimit nproc=1000:1000)

setup() {
  local missing=() p
  for p in "${APT[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  (( ${#missing[@]} )) || return 0
  echo "images: installing ${missing[*]}" >&2
  local sudo=""; [[ $(id -u) -ne 0 ]] && sudo=sudo
  DEBIAN_FRONTEND=noninteractive $sudo apt-get -o Acquire::Retries=3 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || { DEBIAN_FRONTEND=noninteractive $sudo apt-get -o Acquire::Retries=3 update -qq && \
         DEBIAN_FRONTEND=noninteractive $sudo apt-get -o Acquire::Retries=3 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
}

make_base() {  # NAME ROOTFS_DIR
  local ctr
  ctr=$(buildah from scratch)
  buildah copy --quiet "$ctr" "$2" / >/dev/null
  buildah commit --quiet --rm "$ctr" "localhost/$1" >/dev/null
}

bases() {
  local tmp; tmp=$(mktemp -d)
  # build base: busybox as /bin/sh and the few applets the RUN uses
  mkdir -p "$tmp/build/bin" "$tmp/build/tmp"
  cp /bin/busybox "$tmp/build/bin/busybox"
  for a in sh mkdir cp test echo true; do ln -s busybox "$tmp/build/bin/$a"; done
  make_base meshlat-build-base "$tmp/build"
  # runtime base: the binaries' shared libraries, CA certificates, users
  mkdir -p "$tmp/run/etc/ssl/certs" "$tmp/run/tmp"
  local lib
  for lib in $(ldd "$CARGO_TARGET_DIR/$PROFILE/agent" "$CARGO_TARGET_DIR/$PROFILE/controller" \
               | grep -oE '/[^ ]+\.so[^ ]*' | sort -u); do
    mkdir -p "$tmp/run$(dirname "$lib")"
    cp -L "$lib" "$tmp/run$lib"
  done
  cp -L /etc/ssl/certs/ca-certificates.crt "$tmp/run/etc/ssl/certs/"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > "$tmp/run/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' > "$tmp/run/etc/group"
  chmod 1777 "$tmp/run/tmp"
  make_base meshlat-runtime-base "$tmp/run"
  rm -rf "$tmp"
}

build() {
  setup
  echo "images: cargo build ($PROFILE, host)" >&2
  if [[ $PROFILE == release ]]; then
    cargo build --release --locked -p meshlat-agent -p meshlat-controller --bins -q
  else
    cargo build --locked --workspace --bins -q
  fi
  bases
  local img
  for img in agent controller; do
    echo "images: buildah bud meshlat-$img" >&2
    buildah bud --quiet --isolation chroot --layers=false --format docker -f "infra/docker/$img.Containerfile" \
      --build-arg BUILD_BASE=localhost/meshlat-build-base \
      --build-arg RUNTIME_BASE=localhost/meshlat-runtime-base \
      --build-arg PREBUILT=1 --build-arg PROFILE="$PROFILE" -t "localhost/meshlat-$img:$TAG" . >/dev/null
  done
  podman images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep meshlat- >&2
}

# ms since epoch
now_ms() { date +%s%3N; }

test_images() {
  build
  local fail=0 t0 t1 out name
  cleanup() { "${PODMAN[@]}" rm -f -t 0 meshlat-test-agent meshlat-test-ctl >/dev/null 2>&1 || true; }
  cleanup; trap cleanup EXIT
  # agent serve on loopback-free ports of the host network, probed from a second container
  t0=$(now_ms)
  "${RUN[@]}" -d --name meshlat-test-agent localhost/meshlat-agent:latest serve \
    --udp-port 17710 --tcp-port 17711 --quic-port 17712 --http-port 17780 --https-port 17743 >/dev/null
  for _ in $(seq 100); do
    "${PODMAN[@]}" logs meshlat-test-agent 2>&1 | grep -q "listening udp" && break; sleep 0.05
  done
  t1=$(now_ms); echo "images: agent cold start (podman run -> listening): $((t1 - t0)) ms"
  if out=$("${RUN[@]}" --rm localhost/meshlat-agent:latest probe -n 1 --packets 5 --format json udp://127.0.0.1:17710 2>/dev/null) \
      && grep -q '"ok":true' <<< "$out"; then
    echo "ok   agent probe container -> agent serve container (UDP)"
  else echo "FAIL agent probe: $out"; fail=1; fi
  if "${RUN[@]}" --rm localhost/meshlat-agent:latest probe -n 1 --format json http://127.0.0.1:17780/health 2>/dev/null | grep -q '"ok":true'; then
    echo "ok   agent probe container -> agent serve container (HTTP /health)"
  else echo "FAIL agent HTTP probe"; fail=1; fi
  # perftest's `docker run IMAGE URL`: the entry point is the agent, a target means probe
  if out=$("${RUN[@]}" --rm localhost/meshlat-agent:latest http://127.0.0.1:17780/health -n 2 -d 0.2 2>/dev/null) \
      && grep -q '^Recorded 2 samples in ' <<< "$out"; then
    echo "ok   IMAGE URL probes as perftest's image did (the table, 2 samples)"
  else echo "FAIL IMAGE URL: $out"; fail=1; fi
  # controller: starts, passes its image health check
  t0=$(now_ms)
  "${RUN[@]}" -d --name meshlat-test-ctl -e MESHLAT_REGION=local \
    localhost/meshlat-controller:latest serve --listen 127.0.0.1:17400 --rest-listen 127.0.0.1:17401 >/dev/null
  for _ in $(seq 200); do
    "${PODMAN[@]}" logs meshlat-test-ctl 2>&1 | grep -q "listening grpc" && break; sleep 0.05
  done
  t1=$(now_ms); echo "images: controller cold start (podman run -> listening grpc): $((t1 - t0)) ms"
  # the image's own HEALTHCHECK command, on the test ports (the image checks the default 7400/7711)
  if "${PODMAN[@]}" exec meshlat-test-ctl /usr/local/bin/controller health --url https://127.0.0.1:17400 --timeout 3 >/dev/null 2>&1; then
    echo "ok   controller health: gRPC health over TLS SERVING (17400, from inside the container)"
  else echo "FAIL controller health check"; "${PODMAN[@]}" logs meshlat-test-ctl 2>&1 | tail -5; fail=1; fi
  if "${PODMAN[@]}" exec meshlat-test-ctl /usr/local/bin/controller health --url https://127.0.0.1:17409 --timeout 1 >/dev/null 2>&1; then
    echo "FAIL controller health says ok with nothing listening"; fail=1
  else echo "ok   controller health fails with nothing listening"; fi
  if "${PODMAN[@]}" exec meshlat-test-agent /usr/local/bin/agent probe -n 1 --timeout 1 --format json tcp://127.0.0.1:17711 >/dev/null 2>&1; then
    echo "ok   agent answers the health check probe (TCP 17711 from inside the container)"
  else echo "FAIL agent health check"; fail=1; fi
  for name in agent controller; do
    if "${PODMAN[@]}" image inspect -f '{{.Config.Healthcheck.Test}}' "localhost/meshlat-$name:latest" | grep -Eq 'probe|health'; then
      echo "ok   meshlat-$name image carries its HEALTHCHECK"
    else echo "FAIL meshlat-$name image has no HEALTHCHECK"; fail=1; fi
  done
  for name in meshlat-test-agent meshlat-test-ctl; do
    local uid; uid=$("${PODMAN[@]}" top "$name" huser user 2>/dev/null | tail -n +2 | head -1 || true)
    local cuser; cuser=$("${PODMAN[@]}" inspect -f '{{.Config.User}}' "$name")
    if [[ $cuser == 65532:65532 ]]; then echo "ok   $name runs as $cuser (top: ${uid:-?})"; else echo "FAIL $name user '$cuser'"; fail=1; fi
  done
  podman images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep meshlat-
  return $fail
}

case ${1:-} in
  setup) setup ;;
  build) build ;;
  test) test_images ;;
  *) sed -n '2,20p' "$0"; exit 2 ;;
esac
