#!/usr/bin/env bash
# A local AWS emulator (moto server: Firehose + S3, in memory) for the Firehose sink's tests.
#   scripts/moto.sh start   # create .venv-moto if needed, start moto_server on a free 127.0.0.1 port
#   scripts/moto.sh url     # print its URL (also in target/moto/url)
#   scripts/moto.sh stop
# Then: MESHLAT_TEST_MOTO_URL=$(scripts/moto.sh url) cargo test -p meshlat-agent --test firehose_moto
# moto keeps everything in memory: a restart wipes streams, buckets and objects.
set -euo pipefail
cd "$(dirname "$0")/.." || exit 2
root=$PWD
venv=$root/.venv-moto
state=$root/target/moto
mkdir -p "$state"

ensure_venv() {
  if [[ ! -x $venv/bin/moto_server ]] || ! "$venv/bin/python" -c 'import boto3, moto' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'moto[server]' boto3
  fi
}

running() { [[ -f $state/pid ]] && kill -0 "$(cat "$state/pid")" 2>/dev/null; }

case "${1:-}" in
  start)
    ensure_venv
    if running; then cat "$state/url"; exit 0; fi
    port=$("$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    "$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$state/server.log" 2>&1 &
    echo $! >"$state/pid"
    url="http://127.0.0.1:$port"
    for _ in $(seq 1 100); do
      if "$venv/bin/python" -c "import urllib.request,sys; urllib.request.urlopen('$url/moto-api/', timeout=1)" 2>/dev/null; then
        echo "$url" >"$state/url"; echo "$url"; exit 0
      fi
      sleep 0.2
    done
    echo "moto did not start; see $state/server.log" >&2; exit 1 ;;
  url)
    running || { echo "moto is not running: scripts/moto.sh start" >&2; exit 1; }
    cat "$state/url" ;;
  stop)
    if running; then kill "$(cat "$state/pid")"; fi
    rm -f "$state/pid" "$state/url" ;;
  python)
    # The virtualenv's python, for helpers such as scripts/moto_admin.py.
    ensure_venv; echo "$venv/bin/python" ;;
  *) echo "usage: $0 start|stop|url|python" >&2; exit 2 ;;
esac
