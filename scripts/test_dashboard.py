#!/usr/bin/env python3
"""The dashboard stage: the controller's web dashboard in headless Chromium against a real mesh.

  1. A mesh on this machine's loopback (the process helpers of scripts/test_prometheus.py): a
     controller (region eu, TLS, its REST listener serving the dashboard), agents e1 and e2
     (region eu; e2 may relay) and u1 (region us) behind meshlat-linkemu, which delays every
     packet to u1's UDP and TCP responders DELAY_MS each way (an RTT of 2 * DELAY_MS from eu to
     us; us to eu is not delayed). A probe job measures the full mesh over UDP, a relay job e1 to
     u1 through e2.
  2. scripts/browser/dashboard.test.mjs (playwright-core driving Debian's Chromium) checks the
     page: not signed in at first, a wrong credential refused with the API's error, sign-in, the
     region heatmap's eu -> us p50 near the injected RTT and equal to GET /api/v1/matrix, slow and
     fast cells coloured differently, keyboard navigation and the pair detail, the agent view
     with the relay path, the agents tab (every agent connected), a job started from the form
     acknowledged by its agents, updated (If-Match) and stopped, an API error shown with its
     field, the scale path in a second tab whose agents and stream answers are replaced by 130
     made-up agents (the agent view asks for a region pair; a 65 × 65 canvas with hover and
     keyboard), a load job's live view in a third tab whose job list and load stream are
     replaced (the "Live load" button, the per-step and region table, the job's end), no console
     errors or CSP violations, sign-out (the old cookie then gets 401).
     Screenshots go to --out.

Bounded: the whole stage stops within --deadline seconds (default 200). Exit 0 pass, 1 fail,
2 missing tools (scripts/setup.sh installs Chromium and scripts/browser/node_modules). Logs stay
in the printed directory when it fails.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_prometheus import BIN, ROOT, Fail, Mesh  # noqa: E402  (the same process helpers)

DELAY_MS = 20  # one way, eu -> us only: an RTT of 40 ms
CHROMIUM = "/usr/bin/chromium"
BROWSER_DIR = ROOT / "scripts" / "browser"


def say(msg: str) -> None:
    print(f"dashboard: {msg}", flush=True)


class DashMesh(Mesh):
    """A controller, e1 and e2 (eu) and u1 (us, behind the link emulator)."""

    AGENTS = [("e1", "eu", 11, False, []), ("e2", "eu", 12, False, ["--relay"]), ("u1", "us", 21, True, [])]

    def up(self) -> None:
        data = self.work / "ctl"
        self.start("ctl", BIN / "controller", "serve", "--region", "eu", "--listen", "127.0.0.1:0",
                   "--rest-listen", "127.0.0.1:0", "--data-dir", data, "--relay-agent", "location=e2")
        self.lines("ctl", "secrets-file ")
        self.grpc = self.field("ctl", "listening", "grpc")
        self.rest = self.field("ctl", "listening", "rest")
        secrets = dict(line.split(None, 1) for line in (data / "first-start-secrets").read_text().splitlines()
                       if line.strip() and not line.startswith("#"))
        self.token, self.cred = secrets["join-token"].strip(), secrets["operator-credential"].strip()
        self.ca = data / "ca.pem"
        self.emu_ports = {"udp": 27910, "tcp": 27911}
        for name, region, n, behind, extra in self.AGENTS:
            adv = []
            if behind:
                for proto, port in self.emu_ports.items():
                    adv += ["--advertise-endpoint", f"{proto}={self.net}.1{n}:{port}"]
            self.start(f"agent-{name}", BIN / "agent", "--controller", f"https://{self.grpc}", "--token", self.token,
                       "--region", region, "--location", name, "--listen", f"{self.net}.{n}",
                       "--udp-port", "0", "--tcp-port", "0", "--quic-port", "off", "--https-port", "off",
                       "--http-port", "off", *adv, *extra, "--state-dir", self.work / "agents" / name,
                       "--out", self.work / "records")
        self.routes = {}
        for name, _, n, behind, _ in self.AGENTS:
            self.lines(f"agent-{name}", "listening ", 2)
            if behind:
                for proto, port in self.emu_ports.items():
                    upstream = self.field(f"agent-{name}", "listening", proto)
                    self.routes[(name, proto)] = f"{proto}:{self.net}.1{n}:{port}={upstream}"
        self.emulate()
        end = time.time() + 40
        while True:
            listed = self.ctl("agents")
            joined = [line for line in listed.splitlines()[1:] if "true" in line.split()]
            if len(joined) == len(self.AGENTS):
                break
            if time.time() > min(end, self.deadline):
                raise Fail(f"only {len(joined)} of {len(self.AGENTS)} agents joined:\n{listed}")
            time.sleep(0.5)
        probe = {"name": "mesh", "kind": "probe", "protocols": ["udp"], "sources": ["region=eu", "region=us"],
                 "targets": ["region=eu", "region=us"], "strategy": "full", "interval_ms": 500,
                 "timeout_ms": 450, "packets": 5, "packet_interval_ms": 10}
        relay = {"name": "e1-via-e2", "kind": "relay", "protocols": ["udp"], "sources": ["location=e1"],
                 "targets": ["location=u1"], "relays": ["location=e2"], "strategy": "full", "interval_ms": 1000,
                 "timeout_ms": 900, "packets": 5, "packet_interval_ms": 10}
        for job in (probe, relay):
            f = self.work / f"{job['name']}.json"
            f.write_text(json.dumps(job))
            self.ctl("job", "start", str(f))

    def emulate(self, extra_b1_udp: int = 0) -> None:
        """Starts the link emulator: DELAY_MS each way on every route to u1."""
        args = []
        for (_name, _proto), spec in sorted(self.routes.items()):
            args += ["--route", f"{spec},fwd={DELAY_MS}ms,ret={DELAY_MS}ms"]
        self.start("linkemu", BIN / "meshlat-linkemu", *args)
        self.lines("linkemu", "route ", len(self.routes), secs=10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--deadline", type=float, default=200, help="seconds the whole stage may take")
    ap.add_argument("--out", type=Path, default=ROOT / "target" / "dashboard-screenshots",
                    help="where the screenshots go (default: target/dashboard-screenshots)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory when it passes")
    ap.add_argument("--history", type=int, default=2,
                    help="points in the pair charts before the screenshots (2; 10 for the README's)")
    a = ap.parse_args()
    start = time.time()
    missing = []
    if not Path(CHROMIUM).exists():
        missing.append(f"{CHROMIUM} (apt package chromium)")
    if not shutil.which("node"):
        missing.append("node (apt package nodejs)")
    if not (BROWSER_DIR / "node_modules" / "playwright-core").is_dir():
        missing.append("scripts/browser/node_modules (npm ci in scripts/browser)")
    if missing:
        print(f"dashboard: missing {', '.join(missing)}: run scripts/setup.sh", file=sys.stderr)
        return 2
    for b in ("agent", "controller", "meshlat-linkemu"):
        if not (BIN / b).exists():
            print(f"dashboard: {BIN / b} is missing: cargo build --bins", file=sys.stderr)
            return 2
    work = Path(tempfile.mkdtemp(prefix="meshlat-dashboard-"))
    out = a.out.resolve()  # the browser test runs in scripts/browser
    out.mkdir(parents=True, exist_ok=True)
    mesh = DashMesh(work, start + a.deadline)
    status = 0
    try:
        say(f"starting a controller, 3 agents (eu: e1 e2, us: u1) and the link emulator on {mesh.net}.0/24")
        mesh.up()
        say(f"dashboard at https://{mesh.rest}/ ({2 * DELAY_MS} ms RTT injected from eu to us)")
        env = dict(os.environ, MESHLAT_CREDENTIAL=mesh.cred, NODE_EXTRA_CA_CERTS=str(mesh.ca), NO_COLOR="1")
        cmd = ["node", str(BROWSER_DIR / "dashboard.test.mjs"), "--url", f"https://{mesh.rest}/",
               "--out", str(out), "--chromium", CHROMIUM, "--slow", "eu:us", "--fast", "eu:eu",
               "--rtt-ms", str(2 * DELAY_MS), "--agents", ",".join(n for n, *_ in DashMesh.AGENTS),
               "--relay", "e1:u1:e2", "--job-sources", "region=eu", "--job-targets", "region=us",
               "--job-agents", "e1,e2", "--history", str(a.history)]
        left = max(10.0, start + a.deadline - time.time())
        try:
            r = subprocess.run(cmd, env=env, timeout=left, cwd=BROWSER_DIR)
        except subprocess.TimeoutExpired:
            raise Fail(f"the browser test did not finish within {left:.0f} s") from None
        if r.returncode != 0:
            raise Fail(f"the browser test failed (exit {r.returncode}; above); screenshots in {out}")
        say(f"screenshots in {out}")
        say(f"PASS in {time.time() - start:.0f} s")
    except Fail as e:
        print(f"dashboard: FAIL: {e}\ndashboard: logs in {work / 'logs'}", file=sys.stderr)
        status = 1
    finally:
        mesh.stop_all()
        if status == 0 and not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
