#!/usr/bin/env python3
"""The prometheus stage: meshlat's rules and dashboards against a real Prometheus and a real mesh.

  1. scripts/gen_prometheus_rules.py --check (the shipped rules are what the generator writes),
     `promtool check rules` and `promtool test rules infra/prometheus/tests.yml` (unit tests).
  2. A mesh on this machine's loopback: a controller (region eu), agents a1 (eu, the source), r1
     (eu, a relay), b1 (us) and c1 (ap), and meshlat-linkemu in front of b1's and c1's UDP and TCP
     responders (20 ms RTT each). a1 probes b1 and c1 over udp and tcp, and b1 through the relay
     r1. A real Prometheus (Debian's 2.42) scrapes every agent's /metrics (and the controller's)
     every second with the rules rendered at a 30 s window and a 10 s `for:` (the shipped file
     keeps five minutes).
  3. Baseline: p99 of both UDP paths is read back near the injected 20 ms, and no HighLatency is
     pending or firing. Every Grafana panel's query (infra/grafana/dashboards/*.json) returns data.
  4. The link emulator adds 200 ms RTT to b1's UDP only: HighLatency fires for a1 -> b1 udp and for
     no other path, ProtocolDifferential fires for that path (its TCP stays healthy), both seen in
     Prometheus's /api/v1/alerts. Removing the delay resolves HighLatency.

Bounded: the whole stage stops within --deadline seconds (default 170). Exit 0 pass, 1 fail,
2 bad usage or missing tools (scripts/setup.sh installs prometheus). Logs stay in the printed
directory when it fails.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target" / "debug"
STATS_PORT = 9464
BASE_MS = 10  # one-way delay of every emulated route
EXTRA_MS = 100  # added one way to b1's UDP: +200 ms RTT
WINDOW, FOR = "30s", "10s"


class Fail(Exception):
    pass


def say(msg: str) -> None:
    print(f"prometheus: {msg}", flush=True)


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Mesh:
    def __init__(self, work: Path, deadline: float):
        self.work = work
        self.logs = work / "logs"
        self.logs.mkdir(parents=True)
        self.procs: dict[str, subprocess.Popen] = {}
        self.deadline = deadline
        self.net = f"127.{100 + random.randrange(120)}.{1 + random.randrange(250)}"

    # --- processes ---------------------------------------------------------------------------
    def start(self, name: str, *cmd: str) -> None:
        out = open(self.logs / f"{name}.out", "w")
        err = open(self.logs / f"{name}.log", "w")
        env = dict(os.environ, NO_COLOR="1")
        self.procs[name] = subprocess.Popen([str(c) for c in cmd], stdout=out, stderr=err, env=env,
                                            start_new_session=True)

    def stop(self, name: str) -> None:
        p = self.procs.pop(name, None)
        if p and p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def stop_all(self) -> None:
        for name in reversed(list(self.procs)):
            self.stop(name)

    def lines(self, name: str, prefix: str, count: int = 1, secs: float = 30) -> list[str]:
        """The stdout lines of `name` starting with prefix, once there are `count` of them."""
        end = time.time() + secs
        while True:
            text = (self.logs / f"{name}.out").read_text()
            found = [line for line in text.splitlines() if line.startswith(prefix)]
            if len(found) >= count:
                return found
            p = self.procs[name]
            if p.poll() is not None:
                raise Fail(f"{name} exited ({p.returncode}) during start-up; {self.logs / (name + '.log')} ends:\n"
                           + "\n".join((self.logs / f"{name}.log").read_text().splitlines()[-8:]))
            if time.time() > min(end, self.deadline):
                raise Fail(f"{name} printed no '{prefix}' within {secs} s; see {self.logs}")
            time.sleep(0.1)

    def field(self, name: str, *words: str) -> str:
        line = self.lines(name, " ".join(words) + " ")[0]
        return line.split()[len(words)]

    # --- the mesh ----------------------------------------------------------------------------
    def up(self) -> None:
        data = self.work / "ctl"
        self.ctl_stats = f"{self.net}.2:{STATS_PORT + 1}"
        self.start("ctl", BIN / "controller", "serve", "--region", "eu", "--listen", "127.0.0.1:0",
                   "--rest-listen", "127.0.0.1:0", "--data-dir", data, "--relay-agent", "location=r1",
                   *self.controller_stats_flags())
        self.lines("ctl", "secrets-file ")
        self.grpc = self.field("ctl", "listening", "grpc")
        secrets = dict(line.split(None, 1) for line in (data / "first-start-secrets").read_text().splitlines()
                       if line.strip() and not line.startswith("#"))
        self.token, self.cred = secrets["join-token"].strip(), secrets["operator-credential"].strip()
        self.ca = data / "ca.pem"
        key = f"prom-{random.getrandbits(64):016x}"
        # name region ip-suffix behind-emulator extra
        agents = [("a1", "eu", 11, False, []), ("r1", "eu", 12, False, ["--relay"]),
                  ("b1", "us", 21, True, []), ("c1", "ap", 31, True, [])]
        self.agent_stats = []
        self.emu_ports = {"udp": 27810, "tcp": 27811}
        for name, region, n, behind, extra in agents:
            ip = f"{self.net}.{n}"
            adv = []
            if behind:
                for proto, port in self.emu_ports.items():
                    adv += ["--advertise-endpoint", f"{proto}={self.net}.1{n}:{port}"]
            self.start(f"agent-{name}", BIN / "agent", "--controller", f"https://{self.grpc}", "--token", self.token,
                       "--region", region, "--location", name, "--key", key, "--listen", ip,
                       "--udp-port", "0", "--tcp-port", "0", "--quic-port", "off", "--https-port", "off",
                       "--http-port", "off", *adv, *extra, "--state-dir", self.work / "agents" / name,
                       "--out", self.work / "records", "--stats-port", str(STATS_PORT))
            self.agent_stats.append(f"{ip}:{STATS_PORT}")
        self.routes = {}
        for name, _, n, behind, _ in agents:
            self.lines(f"agent-{name}", "listening ", 2)
            if behind:
                for proto, port in self.emu_ports.items():
                    upstream = self.field(f"agent-{name}", "listening", proto)
                    self.routes[(name, proto)] = f"{proto}:{self.net}.1{n}:{port}={upstream}"
        self.emulate(extra_b1_udp=0)
        # Every agent joined.
        end = time.time() + 40
        while True:
            listed = self.ctl("agents")
            joined = [line for line in listed.splitlines()[1:] if "true" in line.split()]
            if len(joined) == len(agents):
                break
            if time.time() > min(end, self.deadline):
                raise Fail(f"only {len(joined)} of {len(agents)} agents joined:\n{listed}")
            time.sleep(0.5)
        probe = {"name": "a1-out", "kind": "probe", "protocols": ["udp", "tcp"], "sources": ["location=a1"],
                 "targets": ["location=b1", "location=c1"], "strategy": "full", "interval_ms": 500,
                 "timeout_ms": 450, "packets": 10, "packet_interval_ms": 10}
        relay = {"name": "a1-via-r1", "kind": "relay", "protocols": ["udp"], "sources": ["location=a1"],
                 "targets": ["location=b1"], "relays": ["location=r1"], "strategy": "full", "interval_ms": 1000,
                 "timeout_ms": 900, "packets": 10, "packet_interval_ms": 10}
        for job in (probe, relay):
            f = self.work / f"{job['name']}.json"
            f.write_text(json.dumps(job))
            self.ctl("job", "start", str(f))

    def controller_stats_flags(self) -> list[str]:
        """The controller's stats server (its /metrics) on this run's network, port 9465."""
        host, port = self.ctl_stats.rsplit(":", 1)
        return ["--stats-port", port, "--stats-listen", host]

    def ctl(self, *args: str) -> str:
        env = dict(os.environ, MESHLAT_CONTROLLER=f"https://{self.grpc}", MESHLAT_CREDENTIAL=self.cred,
                   MESHLAT_CA=str(self.ca), NO_COLOR="1")
        r = subprocess.run([BIN / "controller", *args], capture_output=True, text=True, env=env, timeout=30)
        if r.returncode != 0:
            raise Fail(f"controller {' '.join(args)}: exit {r.returncode}: {r.stderr.strip()}")
        return r.stdout

    def emulate(self, extra_b1_udp: int) -> None:
        """(Re)starts the link emulator: every route BASE_MS each way, b1's UDP extra_b1_udp more."""
        self.stop("linkemu")
        args = []
        for (name, proto), spec in sorted(self.routes.items()):
            d = BASE_MS + (extra_b1_udp if (name, proto) == ("b1", "udp") else 0)
            args += ["--route", f"{spec},fwd={d}ms,ret={d}ms"]
        # The old process's sockets are closed once it exited: the ports can be bound again.
        for _ in range(50):
            self.start("linkemu", BIN / "meshlat-linkemu", *args)
            try:
                self.lines("linkemu", "route ", len(self.routes), secs=5)
                return
            except Fail:
                self.stop("linkemu")
                time.sleep(0.1)
        raise Fail("the link emulator could not bind its routes again")


class Prometheus:
    def __init__(self, mesh: Mesh, rules: Path):
        self.mesh = mesh
        self.port = free_port()
        d = mesh.work / "prometheus"
        d.mkdir()
        scrape = [{"job_name": "meshlat-agent", "static_configs": [{"targets": mesh.agent_stats}]},
                  {"job_name": "meshlat-controller", "static_configs": [{"targets": [mesh.ctl_stats]}]}]
        cfg = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
               "rule_files": [str(rules)], "scrape_configs": scrape}
        (d / "prometheus.yml").write_text(json.dumps(cfg, indent=2))  # JSON is YAML
        mesh.start("prometheus", "prometheus", f"--config.file={d / 'prometheus.yml'}",
                   f"--storage.tsdb.path={d / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
                   "--log.level=warn")
        end = time.time() + 30
        while True:
            try:
                self.get("/-/ready")
                return
            except OSError:
                if mesh.procs["prometheus"].poll() is not None or time.time() > end:
                    raise Fail("prometheus did not become ready; see " + str(mesh.logs / "prometheus.log")) from None
                time.sleep(0.2)

    def get(self, path: str, **params) -> dict:
        url = f"http://127.0.0.1:{self.port}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as r:
            body = r.read()
        return json.loads(body) if path.startswith("/api/") else {}

    def query(self, expr: str) -> list[dict]:
        r = self.get("/api/v1/query", query=expr)
        if r.get("status") != "success":
            raise Fail(f"query {expr!r}: {r}")
        return r["data"]["result"]

    def alerts(self, name: str, state: str | None = None) -> list[dict]:
        return [a for a in self.get("/api/v1/alerts")["data"]["alerts"]
                if a["labels"].get("alertname") == name and (state is None or a["state"] == state)]

    def wait(self, what: str, cond, secs: float):
        end = min(time.time() + secs, self.mesh.deadline)
        last = None
        while time.time() < end:
            last = cond()
            if last:
                return last
            time.sleep(0.5)
        raise Fail(f"{what}: not within {secs:.0f} s (last: {last!r})")


def path_of(labels: dict) -> str:
    return f"{labels.get('src_location')}->{labels.get('dst_location')} {labels.get('protocol')}"


def grafana_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every panel target of the shipped dashboards, variables filled."""
    out = []
    for f in sorted((ROOT / "infra" / "grafana" / "dashboards").glob("*.json")):
        dash = json.loads(f.read_text())
        for panel in dash.get("panels", []):
            for t in panel.get("targets", []):
                expr = t["expr"]
                for var, value in (("$__rate_interval", WINDOW), ("$__interval", "1s"), ("$__range", WINDOW),
                                   ("$src_region", ".*"), ("$dst_region", ".*"), ("$protocol", ".*"),
                                   ("$src_agent", ".*"), ("$dst", ".*")):
                    expr = expr.replace(var, value)
                out.append((f"{f.name}: {panel.get('title')}", expr))
    return out


def checks(mesh: Mesh, prom: Prometheus) -> None:
    say("baseline: waiting for both UDP paths' p99 and the relay penalty")

    def p99s():
        rs = prom.query('meshlat:rtt_p99_seconds:pair{protocol="udp"}')
        got = {r["metric"]["dst_location"]: float(r["value"][1]) for r in rs}
        return got if {"b1", "c1"} <= got.keys() else None
    got = prom.wait("p99 of a1->b1 and a1->c1 udp", p99s, 60)
    p50 = {r["metric"]["dst_location"]: float(r["value"][1])
           for r in prom.query('meshlat:rtt_p50_seconds:pair{protocol="udp"}')}
    for dst in ("b1", "c1"):
        # The injected 20 ms RTT falls in the (10 ms, 25 ms] bucket: the median must be there
        # (histogram_quantile interpolates inside it); p99 well under the 150 ms threshold.
        if not 0.010 < p50.get(dst, 0) <= 0.025:
            raise Fail(f"baseline p50 a1->{dst} udp is {p50.get(dst, 0) * 1000:.1f} ms, not in the bucket of the "
                       f"injected {2 * BASE_MS} ms RTT, (10, 25] ms")
        if not got[dst] < 0.1:
            raise Fail(f"baseline p99 a1->{dst} udp is {got[dst] * 1000:.1f} ms (injected RTT {2 * BASE_MS} ms)")
    say(f"  a1->b1 p50 {p50['b1'] * 1000:.1f} ms p99 {got['b1'] * 1000:.1f} ms, a1->c1 p50 {p50['c1'] * 1000:.1f} ms "
        f"p99 {got['c1'] * 1000:.1f} ms (injected RTT {2 * BASE_MS} ms; bucket bounds 10, 25, 50 ms)")
    if prom.alerts("HighLatency"):
        raise Fail(f"HighLatency before any delay was added: {prom.alerts('HighLatency')}")
    up = {r["metric"]["job"]: float(r["value"][1]) for r in prom.query("min by (job) (up)")}
    if up != {"meshlat-agent": 1.0, "meshlat-controller": 1.0}:
        raise Fail(f"not every agent and the controller scraped: min up by job {up}")
    prom.wait("relay penalty a1 via r1 to b1", lambda: prom.query("meshlat_relay_penalty_seconds"), 30)

    queries = grafana_queries()
    if len(queries) < 8:
        raise Fail(f"only {len(queries)} Grafana panel queries found in infra/grafana/dashboards")
    empty = [f"{title}: {expr}" for title, expr in queries if not prom.query(expr)]
    if empty:
        raise Fail("Grafana panel queries returning no data:\n  " + "\n  ".join(empty))
    say(f"  every Grafana panel query returns data ({len(queries)} queries)")

    say(f"adding {2 * EXTRA_MS} ms RTT to b1's UDP (link emulator restarted with the new delay)")
    mesh.emulate(extra_b1_udp=EXTRA_MS)
    t0 = time.time()
    firing = prom.wait("HighLatency firing for a1->b1 udp",
                       lambda: prom.alerts("HighLatency", "firing"), 60)
    paths = sorted(path_of(a["labels"]) for a in firing)
    if paths != ["a1->b1 udp"]:
        raise Fail(f"HighLatency fires for {paths}, expected only a1->b1 udp")
    say(f"  HighLatency firing for a1->b1 udp only, {time.time() - t0:.0f} s after the delay "
        f"(value {float(firing[0]['value']) * 1000:.0f} ms)")
    others = [path_of(a["labels"]) for a in prom.alerts("HighLatency") if path_of(a["labels"]) != "a1->b1 udp"]
    if others:
        raise Fail(f"HighLatency also pending for {others}")
    diff = prom.wait("ProtocolDifferential firing for a1->b1 udp (its tcp healthy)",
                     lambda: prom.alerts("ProtocolDifferential", "firing"), 30)
    paths = sorted(path_of(a["labels"]) for a in diff)
    if paths != ["a1->b1 udp"]:
        raise Fail(f"ProtocolDifferential fires for {paths}, expected only a1->b1 udp")
    say("  ProtocolDifferential firing for a1->b1 udp (tcp of the same path healthy)")

    say("removing the delay")
    mesh.emulate(extra_b1_udp=0)
    t0 = time.time()
    prom.wait("HighLatency resolved", lambda: not prom.alerts("HighLatency"), 90)
    say(f"  HighLatency resolved {time.time() - t0:.0f} s after the delay was removed")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--deadline", type=float, default=170, help="seconds the whole stage may take")
    ap.add_argument("--keep", action="store_true", help="keep the work directory when it passes")
    a = ap.parse_args()
    start = time.time()
    for tool in ("prometheus", "promtool"):
        if not shutil.which(tool):
            print(f"prometheus: {tool} is missing: run scripts/setup.sh (apt package prometheus)", file=sys.stderr)
            return 2
    for b in ("agent", "controller", "meshlat-linkemu"):
        if not (BIN / b).exists():
            print(f"prometheus: {BIN / b} is missing: cargo build --bins", file=sys.stderr)
            return 2
    for cmd in (["python3", str(ROOT / "scripts" / "gen_prometheus_rules.py"), "--check"],
                ["promtool", "check", "rules", str(ROOT / "infra" / "prometheus" / "meshlat-rules.yml")],
                ["promtool", "test", "rules", str(ROOT / "infra" / "prometheus" / "tests.yml")]):
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            print(f"prometheus: {' '.join(cmd[1:] if cmd[0] == 'python3' else cmd)} failed:\n{r.stdout}{r.stderr}",
                  file=sys.stderr)
            return 1
        say(f"ok: {' '.join(Path(c).name if '/' in c else c for c in cmd)}")
    work = Path(tempfile.mkdtemp(prefix="meshlat-prometheus-"))
    mesh = Mesh(work, start + a.deadline)
    status = 0
    try:
        rules = work / "rules-test.yml"
        subprocess.run(["python3", str(ROOT / "scripts" / "gen_prometheus_rules.py"), "--window", WINDOW,
                        "--for", FOR, "--down-for", FOR, "--out", str(rules)], check=True, capture_output=True)
        say(f"starting a controller, 4 agents and the link emulator on {mesh.net}.0/24")
        mesh.up()
        prom = Prometheus(mesh, rules)
        say(f"prometheus on 127.0.0.1:{prom.port}: rules at a {WINDOW} window, for {FOR}; scraping "
            f"{len(mesh.agent_stats)} agents and the controller")
        checks(mesh, prom)
        say(f"PASS in {time.time() - start:.0f} s")
    except Fail as e:
        print(f"prometheus: FAIL: {e}\nprometheus: logs in {work / 'logs'}", file=sys.stderr)
        status = 1
    finally:
        mesh.stop_all()
        if status == 0 and not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
