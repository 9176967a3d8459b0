#!/usr/bin/env python3
"""TCP connect accuracy on loopback: `agent probe`'s tcp_ms against a blocking connect() (stdlib only).

    scripts/bench/tcp_connect.py [--agent target/debug/agent] [-n 50] [--rounds 8]

Starts `agent serve` (its TCP and HTTP responders) on free loopback ports, then per round: N
blocking connects from Python timed with CLOCK_MONOTONIC (10 ms apart, each also reading the
kernel's tcpi_rtt from TCP_INFO), `agent probe tcp://… -n N -d 0.01`, `agent probe http://… -n N
-d 0.01`, and prints median and minimum of each with the records' tcp_time_source counts. The
rounds interleave the three, so each agent figure has a blocking connect measured within
seconds of it; the last lines give the medians over all rounds and in how many rounds the
agent's median was above the blocking connect's. Same machine, separate processes; an idle
machine gives the clearest figures (README "TCP connect accuracy" has runs). Exit status 0, or 1
when a probe produced no tcp_ms.
"""
import argparse
import collections
import json
import os
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
    p99 = sorted(v)[min(len(v) - 1, int(0.99 * len(v)))]
    return (f"{name:<34} median {statistics.median(v):.3f} ms  min {min(v):.3f} ms  p99 {p99:.3f} ms  "
            f"n={len(v)} {extra}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agent", default="target/debug/agent")
    ap.add_argument("-n", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=8)
    args = ap.parse_args()
    ports = {p: free_port() for p in ("udp", "tcp", "quic", "http", "https")}
    serve = subprocess.Popen([args.agent, "serve", "--listen", "127.0.0.1"]
                             + [a for p, port in ports.items() for a in (f"--{p}-port", str(port))],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    status = 0
    try:
        wait_listening(ports["tcp"], time.monotonic() + 10)
        wait_listening(ports["http"], time.monotonic() + 10)
        print(f"agent: {args.agent}; {args.n} samples each, 10 ms apart; load average {os.getloadavg()[0]:.2f}")
        every = collections.defaultdict(list)
        above = collections.Counter()
        for r in range(args.rounds):
            print(f"round {r + 1}")
            user, kernel = blocking(ports["tcp"], args.n)
            every["python blocking connect()"] += user
            every["python's tcpi_rtt"] += kernel
            print(line("  python blocking connect()", user))
            print(line("  python's tcpi_rtt (same conns)", kernel))
            for proto, port in (("tcp", ports["tcp"]), ("http", ports["http"])):
                target = f"{proto}://127.0.0.1:{port}" + ("/" if proto == "http" else "")
                v, src = probe(args.agent, target, args.n)
                status |= not v
                every[f"agent probe {proto} tcp_ms"] += v
                if v and statistics.median(v) > statistics.median(user):
                    above[proto] += 1
                print(line(f"  agent probe {proto} tcp_ms", v, f"source {dict(src)}"))
        print(f"all {args.rounds} rounds")
        for name, v in every.items():
            print(line(f"  {name}", v))
        for proto in ("tcp", "http"):
            print(f"  agent {proto} median above the blocking connect's in {above[proto]} of {args.rounds} rounds")
    finally:
        serve.terminate()
        serve.wait(timeout=10)
    return status


if __name__ == "__main__":
    sys.exit(main())
