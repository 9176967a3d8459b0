#!/usr/bin/env python3
"""TCP connect accuracy on loopback: `agent probe`'s tcp_ms against a blocking connect() (stdlib only).

    scripts/bench/tcp_connect.py [--agent target/debug/agent] [-n 200] [--rounds 2]

Starts `agent serve` (its TCP and HTTP responders) on free loopback ports, then per round: N
blocking connects from Python timed with CLOCK_MONOTONIC (10 ms apart, each also reading the
kernel's tcpi_rtt from TCP_INFO), `agent probe tcp://… -n N -d 0.01`, `agent probe http://… -n N
-d 0.01`, and prints median and minimum of each with the records' tcp_time_source counts. Same
machine, same minute, separate processes; an idle machine gives the clearest figures (README
"TCP connect accuracy" has a run). Exit status 0, or 1 when a probe produced no tcp_ms.
"""
import argparse
import collections
import json
import socket
import statistics
import struct
import subprocess
import sys
import time

TCPI_RTT = 68  # offset of tcpi_rtt (u32, µs) in struct tcp_info


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, deadline: float) -> None:
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def blocking(port: int, n: int) -> tuple[list[float], list[float]]:
    user, kernel = [], []
    for _ in range(n):
        s = socket.socket()
        t0 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        s.connect(("127.0.0.1", port))
        t1 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
        kernel.append(struct.unpack_from("I", info, TCPI_RTT)[0] / 1e3)
        s.close()
        user.append((t1 - t0) / 1e6)
        time.sleep(0.01)
    return user, kernel


def probe(agent: str, target: str, n: int) -> tuple[list[float], collections.Counter]:
    out = subprocess.run([agent, "probe", target, "-n", str(n), "-d", "0.01", "--format", "json"],
                         capture_output=True, text=True, check=False).stdout
    values, sources = [], collections.Counter()
    for line in out.splitlines():
        r = json.loads(line)
        if r.get("tcp_ms") is not None:
            values.append(r["tcp_ms"])
            sources[r.get("tcp_time_source")] += 1
    return values, sources


def line(name: str, v: list[float], extra: str = "") -> str:
    if not v:
        return f"{name:<34} no samples {extra}"
    return f"{name:<34} median {statistics.median(v):.3f} ms  min {min(v):.3f} ms  n={len(v)} {extra}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agent", default="target/debug/agent")
    ap.add_argument("-n", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    ports = {p: free_port() for p in ("udp", "tcp", "quic", "http", "https")}
    serve = subprocess.Popen([args.agent, "serve", "--listen", "127.0.0.1"]
                             + [a for p, port in ports.items() for a in (f"--{p}-port", str(port))],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    status = 0
    try:
        wait_listening(ports["tcp"], time.monotonic() + 10)
        wait_listening(ports["http"], time.monotonic() + 10)
        print(f"agent: {args.agent}; {args.n} samples each, 10 ms apart")
        for r in range(args.rounds):
            print(f"round {r + 1}")
            user, kernel = blocking(ports["tcp"], args.n)
            print(line("  python blocking connect()", user))
            print(line("  python's tcpi_rtt (same conns)", kernel))
            for proto, port in (("tcp", ports["tcp"]), ("http", ports["http"])):
                target = f"{proto}://127.0.0.1:{port}" + ("/" if proto == "http" else "")
                v, src = probe(args.agent, target, args.n)
                status |= not v
                print(line(f"  agent probe {proto} tcp_ms", v, f"source {dict(src)}"))
    finally:
        serve.terminate()
        serve.wait(timeout=10)
    return status


if __name__ == "__main__":
    sys.exit(main())
