#!/usr/bin/env python3
"""Tests the analytics pipeline's local half: shipped SQL, scripts/athena-local, schema checks.

    scripts/test_analytics.py        # prints each check, then "N passed, M failed"; exit 1 on failure

What it does (runs inside .venv-analytics, created on first use; no AWS, no network after that):
  1. Writes synthetic records with KNOWN values in the file sink's Hive layout
     (records/region=<r>/dt=YYYY-MM-DD/hour=HH/*.ndjson, every field present, null when absent):
     two regions and two source agents, UDP trains with known rtt_samples_ms (one of 150 samples
     so p99 is a real rank), a train duplicated under the same record_id in another file and
     partition (Firehose at-least-once), lost packets and a failed train, TCP and HTTP(S) samples
     with phases, relay trains through two relays with known penalties, a record outside the
     time range and one in range that arrived in the next day's partition; server records
     (kind serve / relay_serve) with answered, relayed and dropped rows, an overflow row and a
     redelivered duplicate.
  2. Runs every infra/athena/*.sql query (except the DDL) through scripts/athena-local with
     --from/--to and --format json, and compares with results computed here independently
     (nearest-rank p50/p99 from the arrays, loss = sum lost / sum sent, dedup, best relay; the
     load queries' merged-histogram percentiles and breaking points, computed by hand, also with
     the breaking point's parameters edited).
  3. Runs the region matrix on a directory where rtt_samples_ms is null in every record (the
     all-null column case), and checks athena-local's errors for a bad data dir and bad SQL.
  4. Checks that every query takes its time range and deduplication from the one prelude
     (infra/athena/include/prelude.sql, by `-- #include`) and the shared CTEs from include/
     (rtt_samples.sql and percentiles.sql with their group= parameter, relay_stats.sql), that bad include
     parameters are usage errors, parses every query with sqlglot in the
     trino dialect (as athena-local runs it, and as the named queries inline it), runs scripts/check_schema.py and scripts/gen_infra.py --check.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import tempfile
import traceback
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "lib"))
import pyvenv  # noqa: E402

pyvenv.reexec_in(pyvenv.ANALYTICS)

import sqlglot  # noqa: E402

import athena_sql  # noqa: E402
import meshlat_fields  # noqa: E402

ROOT = meshlat_fields.ROOT
ATHENA = ROOT / "infra" / "athena"
RUNNER = ROOT / "scripts" / "athena-local"
FIELDS = [f.name for f in meshlat_fields.parse_fields()]
FROM, TO = "2024-05-01T00:00:00Z", "2024-05-02T00:00:00Z"

passed = 0
failed = 0


def check(name: str, fn) -> None:
    global passed, failed
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - a test harness reports every failure
        failed += 1
        print(f"FAIL {name}: {e}")
        if not isinstance(e, AssertionError):
            traceback.print_exc()
    else:
        passed += 1
        print(f"ok   {name}")


def nearest_rank(values: list[float], p: float) -> float:
    """The agent's definition (agent/src/probe/mod.rs nearest_rank): rank ceil(p/100 * n)."""
    s = sorted(values)
    rank = math.ceil((p / 100.0) * len(s))
    return s[min(max(rank, 1), len(s)) - 1]


# ---------------------------------------------------------------------------------------------
# Synthetic data


def record(**kw) -> dict:
    r = {k: None for k in FIELDS}
    r.update(record_id=str(uuid.uuid4()), schema_version=1, job_id="j1", seq=0, agent_version="0.1.0",
             control_mode="connected", ok=True)
    unknown = set(kw) - set(FIELDS)
    assert not unknown, unknown
    r.update(kw)
    return r


def train(src_agent, src_region, dst_agent, dst_region, ts, samples, sent, jitter, protocol="udp", **kw):
    return record(kind="probe", protocol=protocol, ts=ts, src_agent=src_agent, src_region=src_region,
                  dst_agent=dst_agent, dst_region=dst_region, target=f"{protocol}://{dst_agent}:7710",
                  sent=sent, samples=len(samples), lost=sent - len(samples), duplicates=0, reordered=0, late=0,
                  rtt_samples_ms=samples or None, jitter_ms=jitter,
                  rtt_ms=(sum(samples) / len(samples)) if samples else None,
                  ok=bool(samples), error_kind=None if samples and sent == len(samples) else ("loss" if samples else "timeout"),
                  **kw)


EU, US = "eu-west-1", "us-east-1"
T1 = train("e1", EU, "u1", US, "2024-05-01T10:01:00.000001Z", [10.0, 11.0, 12.5, 13.0, 14.0], 5, 1.0)
T2 = train("e1", EU, "u1", US, "2024-05-01T10:03:30.500000Z", [20.0, 22.0, 21.0], 5, 2.0)
T3 = train("e1", EU, "u1", US, "2024-05-01T10:07:59.999999Z", [31.0, 30.0, 33.0, 32.0], 4, 3.0)
T4 = train("e1", EU, "u1", US, "2024-05-01T10:12:00.000000Z", [100.0 + (i * 37 % 150) for i in range(150)], 152, 4.0)
T5 = train("e1", EU, "u1", US, "2024-05-01T10:14:00.000000Z", [], 5, None)  # failed: no reply
T6 = train("e2", EU, "u1", US, "2024-05-01T10:02:00.000000Z", [50.0, 60.0], 2, 0.25)
LATE = train("e2", EU, "u1", US, "2024-05-01T23:59:59.999999Z", [70.0], 1, 0.5)  # arrives in dt=2024-05-02
OUT = train("e1", EU, "u1", US, "2024-05-02T00:00:00.000000Z", [999.0], 1, 9.0)  # at `to`: excluded
TCP = [record(kind="probe", protocol="tcp", ts=f"2024-05-01T11:0{i}:00.000000Z", src_agent="u1", src_region=US,
              dst_agent="e1", dst_region=EU, target="tcp://e1:7711", tcp_ms=v, rtt_ms=v,
              tcp_time_source="kernel")
       for i, v in enumerate([80.5, 82.0, 81.0])]
URL = "https://example.test/ping"


def http(ts, dns, tcp, tls, fb, lb, ok=True):
    total = None if not ok else tcp + tls + fb + lb
    return record(kind="probe", protocol="https", ts=ts, src_agent="e1", src_region=EU, target=URL,
                  dns_ms=dns, tcp_ms=tcp, tcp_time_source="kernel", tls_ms=tls if ok else None, first_byte_ms=fb if ok else None,
                  last_byte_ms=lb if ok else None, total_ms=total, http_status=200 if ok else None,
                  ok=ok, error_kind=None if ok else "tls", bytes=4 if ok else None)


HTTP = [http("2024-05-01T12:00:00.000000Z", 1.0, 10.0, 20.0, 30.0, 2.0),
        http("2024-05-01T12:00:01.000000Z", 3.0, 12.0, 22.0, 34.0, 4.0),
        http("2024-05-01T12:00:02.000000Z", 2.0, 11.0, 21.0, 32.0, 3.0),
        http("2024-05-01T12:00:03.000000Z", 5.0, 15.0, None, None, None, ok=False)]


def relay(relay_agent, relay_region, penalty, i):
    direct = 40.0
    return record(kind="relay", protocol="udp", ts=f"2024-05-01T13:0{i}:00.000000Z", src_agent="e1", src_region=EU,
                  dst_agent="u1", dst_region=US, target="udp://u1:7710", relay_agent=relay_agent,
                  relay_region=relay_region, sent=10, samples=10, lost=0, rtt_samples_ms=[direct + penalty] * 10,
                  rtt_ms=direct + penalty, direct_rtt_ms=direct, relay_penalty_ms=penalty,
                  leg_src_relay_rtt_ms=20.0, leg_relay_dst_rtt_ms=direct + penalty - 21.0, relay_dwell_ms=1.0)


R1 = [relay("r1", "ap-south-1", p, i) for i, p in enumerate([5.0, 7.0, 6.0])]


def serve(kind, ts, src_addr, drop_reason, packets, nbytes, src=None, key_id=None, protocol="udp", **kw):
    """A server record (kind serve / relay_serve): one interval, source and outcome."""
    agent, region = src or (None, None)
    return record(kind=kind, protocol=protocol, ts=ts, job_id="serve", src_agent=agent, src_region=region,
                  src_addr=src_addr, key_id=key_id, interval_ms=60000.0, packets=packets, bytes=nbytes,
                  drop_reason=drop_reason, ok=drop_reason is None, **kw)


AT_US = dict(dst_agent="u1", dst_region=US, target="udp://10.1.0.5:7710")
AT_R1 = dict(relay_agent="r1", relay_region="ap-south-1", target="udp://10.1.0.5:7710")
SERVE_US = [
    serve("serve", "2024-05-01T14:00:00.000000Z", "10.0.0.1", None, 1000, 200000, ("e1", EU), "0x00000001", **AT_US),
    serve("serve", "2024-05-01T14:00:00.000000Z", "10.9.9.9", "malformed", 5, 50, **AT_US),
    serve("serve", "2024-05-01T14:01:00.000000Z", "10.9.9.8", "malformed", 7, 70, **AT_US),
    serve("serve", "2024-05-01T14:01:00.000000Z", None, "auth", 100, 20000, **AT_US),  # overflow row
    serve("serve", "2024-05-01T14:01:00.000000Z", "10.0.0.1", "send_error", 2, 400, ("e1", EU), "0x00000001",
          **AT_US),
    serve("serve", "2024-05-02T00:00:00.000000Z", "10.9.9.7", "malformed", 999, 999, **AT_US),  # at `to`
    # The HTTPS responder of the same agent: requests answered and TLS handshakes failed, in
    # units of their own (a drop share per protocol).
    serve("serve", "2024-05-01T14:00:00.000000Z", "10.0.0.1", None, 10, 50, ("e1", EU), protocol="https",
          **{**AT_US, "target": "https://10.1.0.5:7743"}),
    serve("serve", "2024-05-01T14:00:00.000000Z", "10.0.0.1", "handshake_failed", 2, 0, ("e1", EU),
          protocol="https", **{**AT_US, "target": "https://10.1.0.5:7743"}),
]
SERVE_R1 = [
    serve("relay_serve", "2024-05-01T14:00:00.000000Z", "10.0.0.1", None, 50, 15000, ("e1", EU), "0x00000001",
          returned=49, dst_agent="u1", dst_region=US, **AT_R1),
    serve("relay_serve", "2024-05-01T14:00:00.000000Z", "10.0.0.1", "relay_expired", 3, 900, ("e1", EU),
          "0x00000001", **{**AT_R1, "target": "udp://10.2.0.9:7710"}),
    serve("relay_serve", "2024-05-01T14:02:00.000000Z", "10.9.9.9", "auth", 4, 1200, **{**AT_R1, "target": "udp://10.2.0.9:7710"}),
]
R2 = [relay("r2", "eu-central-1", p, i + 3) for i, p in enumerate([-2.0, -1.0, 3.0])]


AP = "ap-south-1"


def load(agent, region, step, sec, level, hist, *, s2xx=None, s429=0, s5xx=0, connect=0, timeout=0, job="L1"):
    """One second of a load job on one agent (kind = load): hist = {bucket value ms: count} of the
    answered requests; 2xx = the answered ones not 429/5xx unless given; rates over 1 s."""
    answered = sum(hist.values())
    s2xx = answered - s429 - s5xx if s2xx is None else s2xx
    requests = answered + connect + timeout
    values = sorted(hist)
    return record(kind="load", protocol="http", job_id=job, ts=f"2024-05-01T16:{step:02d}:{sec:02d}.000000Z",
                  src_agent=agent, src_region=region, target="http://api.test/", load_step=step,
                  load_workers=int(level), load_level=float(level), intended_rps=float(requests),
                  achieved_rps=float(answered), requests=requests, status_2xx=s2xx, status_3xx=0, status_4xx=0,
                  status_429=s429, status_5xx=s5xx, status_other=0, errors_connect=connect,
                  errors_timeout=timeout, errors_tls=0, errors_io=0,
                  lat_max_ms=max(values) if values else None,
                  lat_hist_ms=values or None, lat_hist_counts=[float(hist[v]) for v in values] or None,
                  ok=connect + timeout + s5xx + s429 == 0)


# Job L1, three regions, steps of 10, 20 and 30 workers. Hand-computed (test_load_*):
#   eu step 0: e1 {10: 8, 20: 2} + {10: 10}, e2 {12: 10} + {12: 9, 30: 1}: merged 10:18 12:19
#     20:2 30:1 (n 40): p50 = rank 20 = 12, p99 = rank 40 = 30; 2 agents, 4 agent-seconds,
#     achieved (10+10+10+10) * 2 / 4 = 20 req/s.
#   eu step 1: e1 {15: 95, 700: 5}, e2 {700: 1, 15: 99} (another bucket order): 15:194 700:6
#     (n 200): p50 15, p99 = rank 198 = 700 > 500 -> the break (p99); achieved 200.
#   eu step 2: e1 {15: 50} and 1 timeout: error share 1/51 (a break at threshold 1000).
#   us step 0: u1 {50: 10}; step 1: {50: 18, 60: 2} with one 429 -> errors began (1/20), p99 60;
#     step 2: 5 connect errors and no answer (no histogram): p50/p99 null, error share 1.
#   ap steps 0, 1: a1 {5: 10} then {5: 20}: never breaks, held step 1.
LOADS = [
    load("e1", EU, 0, 0, 10, {10.0: 8, 20.0: 2}), load("e1", EU, 0, 1, 10, {10.0: 10}),
    load("e2", EU, 0, 0, 10, {12.0: 10}), load("e2", EU, 0, 1, 10, {12.0: 9, 30.0: 1}),
    load("e1", EU, 1, 0, 20, {15.0: 95, 700.0: 5}), load("e2", EU, 1, 0, 20, {700.0: 1, 15.0: 99}),
    load("e1", EU, 2, 0, 30, {15.0: 50}, timeout=1),
    load("u1", US, 0, 0, 10, {50.0: 10}), load("u1", US, 1, 0, 20, {50.0: 18, 60.0: 2}, s429=1),
    load("u1", US, 2, 0, 30, {}, connect=5),
    load("a1", AP, 0, 0, 10, {5.0: 10}), load("a1", AP, 1, 0, 20, {5.0: 20}),
]
# e2's step-1 record listed with its buckets in the other order.
LOADS[5]["lat_hist_ms"], LOADS[5]["lat_hist_counts"] = [700.0, 15.0], [1.0, 99.0]


def write(data: Path, region: str, dt: str, hour: str, name: str, recs: list[dict]) -> None:
    d = data / "records" / f"region={region}" / f"dt={dt}" / f"hour={hour}"
    d.mkdir(parents=True, exist_ok=True)
    with open(d / name, "a") as f:
        for r in recs:
            assert list(r) == FIELDS
            f.write(json.dumps(r, separators=(",", ":")) + "\n")


def make_data(data: Path) -> None:
    write(data, EU, "2024-05-01", "10", "meshlat-a.ndjson", [T1, T2, T3, T4, T5, T6])
    write(data, EU, "2024-05-01", "11", "meshlat-b.ndjson", [T1, T2])  # redelivered duplicates
    write(data, EU, "2024-05-02", "00", "meshlat-c.ndjson", [LATE, OUT])
    write(data, US, "2024-05-01", "11", "meshlat-d.ndjson", TCP)
    write(data, EU, "2024-05-01", "12", "meshlat-e.ndjson", HTTP + [HTTP[0]])
    write(data, EU, "2024-05-01", "13", "meshlat-f.ndjson", R1 + R2 + [R2[1]])
    write(data, US, "2024-05-01", "14", "meshlat-s.ndjson", SERVE_US)
    write(data, US, "2024-05-01", "15", "meshlat-s2.ndjson", SERVE_US[1:2])  # redelivered duplicate
    write(data, "ap-south-1", "2024-05-01", "14", "meshlat-r.ndjson", SERVE_R1)
    write(data, EU, "2024-04-30", "23", "meshlat-g.ndjson",
          [train("e1", EU, "u1", US, "2024-04-30T23:59:59.999999Z", [888.0], 1, 8.0)])  # before `from`
    write(data, EU, "2024-05-01", "16", "meshlat-l.ndjson", LOADS[:7] + LOADS[10:])
    write(data, US, "2024-05-01", "16", "meshlat-l2.ndjson", LOADS[7:10])
    write(data, EU, "2024-05-01", "17", "meshlat-l3.ndjson", LOADS[4:5])  # redelivered duplicate


# ---------------------------------------------------------------------------------------------
# Running queries


def run(data: Path, query: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(RUNNER), "--data", str(data), *extra, str(query)],
                          capture_output=True, text=True, timeout=300)


def rows(data: Path, name: str) -> list[dict]:
    r = run(data, ATHENA / name, "--from", FROM, "--to", TO, "--format", "json")
    assert r.returncode == 0, f"{name}: exit {r.returncode}: {r.stderr.strip()}"
    return json.loads(r.stdout)


def approx(a, b) -> bool:
    if a is None or b is None:
        return a is b
    return abs(a - b) <= 1e-9 * max(1.0, abs(b))


def expect_row(row: dict, **want) -> None:
    for k, v in want.items():
        got = row.get(k)
        ok = approx(got, v) if isinstance(v, float) else got == v
        assert ok, f"{k}: got {got!r}, expected {v!r} (row {row})"


def one(rs: list[dict], **key) -> dict:
    m = [r for r in rs if all(r.get(k) == v for k, v in key.items())]
    assert len(m) == 1, f"expected one row with {key}, found {len(m)} in {rs}"
    return m[0]


UDP_EU_US = [T1, T2, T3, T4, T5, T6, LATE]  # deduplicated, in range, kind = probe


def samples_of(recs):
    return [s for r in recs for s in (r["rtt_samples_ms"] or [])]


def test_latency_matrix_region(data: Path):
    rs = rows(data, "latency_matrix_region.sql")
    assert len(rs) == 3, rs  # eu->us udp, us->eu tcp, eu->(external) https
    s = samples_of(UDP_EU_US)
    assert len(s) == 5 + 3 + 4 + 150 + 2 + 1
    expect_row(one(rs, src_region=EU, dst_region=US, protocol="udp"),
               records=7, failed=1, samples=len(s), p50_ms=nearest_rank(s, 50), p99_ms=nearest_rank(s, 99),
               min_ms=min(s), max_ms=max(s), mean_ms=sum(s) / len(s),
               sent=sum(r["sent"] for r in UDP_EU_US), lost=sum(r["lost"] for r in UDP_EU_US),
               loss_ratio=sum(r["lost"] for r in UDP_EU_US) / sum(r["sent"] for r in UDP_EU_US),
               jitter_avg_ms=(1.0 + 2.0 + 3.0 + 4.0 + 0.25 + 0.5) / 6)
    # The exact p99 is a real rank here (n = 165 -> rank 164), not the maximum.
    assert nearest_rank(s, 99) != max(s)
    expect_row(one(rs, src_region=US, dst_region=EU, protocol="tcp"),
               records=3, samples=3, p50_ms=81.0, p99_ms=82.0, loss_ratio=None)
    expect_row(one(rs, src_region=EU, dst_region="(external)", protocol="https"),
               records=4, failed=1, samples=3, p50_ms=67.0, p99_ms=72.0)


def test_latency_matrix_agent(data: Path):
    rs = rows(data, "latency_matrix_agent.sql")
    e1 = [T1, T2, T3, T4, T5]
    s1 = samples_of(e1)
    expect_row(one(rs, src_agent="e1", dst="u1", protocol="udp"), records=5, samples=len(s1),
               p50_ms=nearest_rank(s1, 50), p99_ms=nearest_rank(s1, 99),
               loss_ratio=sum(r["lost"] for r in e1) / sum(r["sent"] for r in e1), src_region=EU, dst_region=US)
    expect_row(one(rs, src_agent="e2", dst="u1", protocol="udp"), records=2, samples=3,
               p50_ms=60.0, p99_ms=70.0, lost=0, loss_ratio=0.0)
    expect_row(one(rs, src_agent="e1", dst=URL, protocol="https"), records=4, dst_region=None)


def test_loss_jitter(data: Path):
    rs = rows(data, "loss_jitter.sql")
    assert len(rs) == 1, rs
    sent = sum(r["sent"] for r in UDP_EU_US)
    lost = sum(r["lost"] for r in UDP_EU_US)
    expect_row(rs[0], src_region=EU, dst_region=US, protocol="udp", trains=7, failed=1,
               trains_with_loss=3, sent=sent, lost=lost, loss_ratio=lost / sent,
               jitter_p50_ms=nearest_rank([1.0, 2.0, 3.0, 4.0, 0.25, 0.5], 50),
               jitter_p99_ms=4.0)
    assert lost == 2 + 2 + 5  # T2, T4, T5


def test_http_phases(data: Path):
    rs = rows(data, "http_phases.sql")
    assert [r["phase"] for r in rs] == ["dns", "tcp", "tls", "first_byte", "last_byte", "total"], rs
    ok = HTTP[:3]
    for phase, key, source in [("dns", "dns_ms", HTTP), ("tcp", "tcp_ms", HTTP), ("tls", "tls_ms", ok),
                               ("first_byte", "first_byte_ms", ok), ("last_byte", "last_byte_ms", ok),
                               ("total", "total_ms", ok)]:
        v = [r[key] for r in source]
        expect_row(one(rs, phase=phase), target=URL, src_region=EU, records=4, failed=1, n=len(v),
                   avg_ms=sum(v) / len(v), p50_ms=nearest_rank(v, 50), p99_ms=nearest_rank(v, 99),
                   min_ms=min(v), max_ms=max(v))


def test_relay_penalty(data: Path):
    rs = rows(data, "relay_penalty.sql")
    assert [r["relay_agent"] for r in rs] == ["r2", "r1"], rs  # ordered by median penalty
    expect_row(one(rs, relay_agent="r1"), relay_region="ap-south-1", trains=3, penalty_p50_ms=6.0,
               penalty_p99_ms=7.0, penalty_avg_ms=6.0, direct_rtt_avg_ms=40.0, relayed_rtt_avg_ms=46.0,
               loss_ratio=0.0)
    expect_row(one(rs, relay_agent="r2"), relay_region="eu-central-1", trains=3, penalty_p50_ms=-1.0,
               penalty_p99_ms=3.0, penalty_avg_ms=0.0)


def test_best_relay(data: Path):
    rs = rows(data, "best_relay.sql")
    assert len(rs) == 1, rs
    expect_row(rs[0], src_region=EU, dst_region=US, best_relay_agent="r2", best_relay_region="eu-central-1",
               penalty_p50_ms=-1.0, trains=3, beats_direct=True, relays_tried=2)


def test_timeseries(data: Path):
    rs = rows(data, "timeseries_region_pair.sql")
    udp = [r for r in rs if r["protocol"] == "udp"]
    assert [r["bucket"] for r in udp] == ["2024-05-01T10:00:00Z", "2024-05-01T10:05:00Z",
                                          "2024-05-01T10:10:00Z", "2024-05-01T23:55:00Z"], udp
    b0 = samples_of([T1, T2, T6])
    expect_row(udp[0], records=3, samples=len(b0), p50_ms=nearest_rank(b0, 50), p99_ms=nearest_rank(b0, 99),
               sent=12, lost=2, loss_ratio=2 / 12)
    expect_row(udp[1], records=1, p50_ms=31.0, p99_ms=33.0)
    b2 = samples_of([T4, T5])
    expect_row(udp[2], records=2, samples=150, p99_ms=nearest_rank(b2, 99), sent=157, lost=7)


def test_server_drops(data: Path):
    rs = rows(data, "server_drops_region_pair.sql")
    key = lambda r: (r["src_region"], r["server_region"], r["kind"], r["protocol"], r["drop_reason"])  # noqa: E731
    assert [key(r) for r in rs] == [
        ("(unknown)", "ap-south-1", "relay_serve", "udp", "auth"),
        ("(unknown)", US, "serve", "udp", "auth"),
        ("(unknown)", US, "serve", "udp", "malformed"),
        (EU, "ap-south-1", "relay_serve", "udp", "relay_expired"),
        (EU, US, "serve", "https", "handshake_failed"),
        (EU, US, "serve", "udp", "send_error"),
    ], rs
    # Answered/relayed rows are not drops, but they are the denominator of drop_share.
    expect_row(rs[0], packets=4, bytes=1200, source_addrs=1, records=1, drop_share=1.0)
    # The overflow row has no source address.
    expect_row(rs[1], packets=100, bytes=20000, source_addrs=0, records=1, drop_share=100 / (100 + 5 + 7))
    # Two sources; the duplicate of the 10.9.9.9 row is counted once; the row at `to` is out.
    expect_row(rs[2], packets=12, bytes=120, source_addrs=2, records=2, drop_share=12 / (100 + 5 + 7))
    expect_row(rs[3], packets=3, bytes=900, source_addrs=1, records=1, drop_share=3 / (50 + 3))
    # Per protocol: HTTPS handshakes against HTTPS requests, UDP packets against UDP packets.
    expect_row(rs[4], packets=2, bytes=0, source_addrs=1, records=1, drop_share=2 / (10 + 2))
    expect_row(rs[5], packets=2, bytes=400, source_addrs=1, records=1, drop_share=2 / (1000 + 2))
    # Server records never leak into the latency queries (checked by their exact counts above)
    # and the drop query sees no probe records.
    assert all(r["kind"] in ("serve", "relay_serve") for r in rs)


def test_load_curve(data: Path):
    rs = rows(data, "load_curve.sql")
    key = lambda r: (r["job_id"], r["src_region"], r["load_step"])  # noqa: E731
    assert [key(r) for r in rs] == [("L1", AP, 0), ("L1", AP, 1), ("L1", EU, 0), ("L1", EU, 1), ("L1", EU, 2),
                                    ("L1", US, 0), ("L1", US, 1), ("L1", US, 2)], rs
    expect_row(one(rs, src_region=EU, load_step=0), agents=2, agent_seconds=4, level=10.0, workers=20.0,
               achieved_rps=20.0, intended_rps=20.0, requests=40, status_2xx=40, errors=0, error_share=0.0,
               latencies=40.0, p50_ms=12.0, p99_ms=30.0, max_ms=30.0, first_ts="2024-05-01T16:00:00.000000Z")
    # The duplicate of e1's step-1 second counts once; buckets merge whatever their order.
    expect_row(one(rs, src_region=EU, load_step=1), agents=2, agent_seconds=2, level=20.0, achieved_rps=200.0,
               requests=200, latencies=200.0, p50_ms=15.0, p99_ms=700.0, max_ms=700.0, errors=0)
    expect_row(one(rs, src_region=EU, load_step=2), agents=1, requests=51, failed=1, errors=1,
               error_share=1 / 51, achieved_rps=50.0, intended_rps=51.0, p99_ms=15.0)
    expect_row(one(rs, src_region=US, load_step=1), requests=20, status_2xx=19, status_429=1, errors=1,
               error_share=0.05, p50_ms=50.0, p99_ms=60.0)
    expect_row(one(rs, src_region=US, load_step=2), requests=5, failed=5, errors=5, error_share=1.0,
               achieved_rps=0.0, latencies=0.0, p50_ms=None, p99_ms=None, max_ms=None)
    expect_row(one(rs, src_region=AP, load_step=1), agents=1, level=20.0, p50_ms=5.0, p99_ms=5.0, errors=0)
    # Load records stay out of the probe queries (their exact counts are checked above).


def test_load_breaking_point(data: Path, tmp: Path):
    rs = rows(data, "load_breaking_point.sql")
    assert [(r["src_region"], r["break_step"], r["break_reason"]) for r in rs] == [
        (AP, None, None), (EU, 1, "p99"), (US, 1, "errors")], rs
    expect_row(one(rs, src_region=EU), steps=3, break_level=20.0, break_achieved_rps=200.0, break_p99_ms=700.0,
               break_error_share=0.0, held_step=0, held_level=10.0, held_achieved_rps=20.0, held_p99_ms=30.0)
    expect_row(one(rs, src_region=US), steps=3, break_level=20.0, break_p99_ms=60.0, break_error_share=0.05,
               held_step=0, held_p99_ms=50.0)
    expect_row(one(rs, src_region=AP), steps=2, break_level=None, held_step=1, held_level=20.0, held_p99_ms=5.0)
    # The parameters: at 1,000 ms and 10 % errors allowed, eu breaks at step 2 (1/51 errors is
    # under 10 %, so it never breaks), us at step 2 (all failed); at 1,000 ms and 1 %, eu at 2;
    # at 25 ms both break at step 0 and hold nothing.
    q = (ATHENA / "load_breaking_point.sql").read_text()
    assert "500e0 AS p99_threshold_ms, 0e0 AS max_error_share" in q
    (tmp / "include").mkdir(exist_ok=True)
    for inc in (ATHENA / "include").glob("*.sql"):
        shutil.copy(inc, tmp / "include" / inc.name)
    for threshold, share, want in [("1000e0", "0.1e0", [(AP, None, None), (EU, None, None), (US, 2, "errors")]),
                                   ("1000e0", "0.01e0", [(AP, None, None), (EU, 2, "errors"), (US, 1, "errors")]),
                                   ("25e0", "0e0", [(AP, None, None), (EU, 0, "p99"), (US, 0, "p99")])]:
        edited = tmp / "breaking.sql"
        edited.write_text(q.replace("500e0 AS p99_threshold_ms, 0e0 AS max_error_share",
                                    f"{threshold} AS p99_threshold_ms, {share} AS max_error_share"))
        r = run(data, edited, "--from", FROM, "--to", TO, "--format", "json")
        assert r.returncode == 0, r.stderr
        got = [(x["src_region"], x["break_step"], x["break_reason"]) for x in json.loads(r.stdout)]
        assert got == want, (threshold, share, got)
    eu = [x for x in json.loads(r.stdout) if x["src_region"] == EU][0]
    expect_row(eu, break_step=0, held_step=None, held_level=None)


def test_time_range(data: Path):
    # Without --from/--to every record counts, including OUT (2024-05-02T00:00) and the 04-30 one.
    r = run(data, ATHENA / "loss_jitter.sql", "--format", "json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)[0]["trains"] == 9
    r = run(data, ATHENA / "loss_jitter.sql", "--from", "2024-05-01T10:02:00+00:00", "--to", "2024-05-01T10:04",
            "--format", "json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)[0]["trains"] == 2  # T6 at 10:02:00 (inclusive) and T2


def test_all_null_array_column(tmp: Path):
    d = tmp / "nulls"
    write(d, US, "2024-05-01", "11", "only-tcp.ndjson", TCP)
    rs = rows(d, "latency_matrix_region.sql")
    expect_row(one(rs, protocol="tcp"), samples=3, p50_ms=81.0)
    for q in sorted(ATHENA.glob("*.sql")):
        if q.name != "records_table.sql":
            r = run(d, q, "--format", "csv")
            assert r.returncode == 0, f"{q.name} on all-null columns: {r.stderr.strip()}"


def test_formats(data: Path):
    r = run(data, ATHENA / "best_relay.sql", "--format", "csv")
    assert r.returncode == 0 and r.stdout.splitlines()[0].startswith("src_region,dst_region,best_relay_agent"), r
    r = run(data, ATHENA / "best_relay.sql")
    assert r.returncode == 0 and "(1 row)" in r.stdout, r


def test_errors(tmp: Path):
    r = run(tmp / "nope", ATHENA / "best_relay.sql")
    assert r.returncode == 2 and "no such directory" in r.stderr, (r.returncode, r.stderr)
    (tmp / "empty").mkdir()
    r = run(tmp / "empty", ATHENA / "best_relay.sql")
    assert r.returncode == 2 and "records/" in r.stderr, (r.returncode, r.stderr)
    bad = tmp / "bad.sql"
    bad.write_text("SELECT FROM WHERE (")
    r = run(tmp / "data", bad)
    assert r.returncode == 2 and "not valid Athena/Trino SQL" in r.stderr, (r.returncode, r.stderr)
    bad.write_text("SELECT no_such_column FROM records")
    r = run(tmp / "data", bad)
    assert r.returncode == 1 and "failed" in r.stderr, (r.returncode, r.stderr)
    bad.write_text("SELECT '${region}' FROM records")
    r = run(tmp / "data", bad)
    assert r.returncode == 2 and "placeholders" in r.stderr, (r.returncode, r.stderr)
    r = run(tmp / "data", ATHENA / "best_relay.sql", "--from", "yesterday")
    assert r.returncode == 2 and "--from" in r.stderr, (r.returncode, r.stderr)
    bad.write_text("-- #include include/no_such_prelude.sql\nSELECT 1")
    r = run(tmp / "data", bad)
    assert r.returncode == 2 and "no_such_prelude.sql" in r.stderr, (r.returncode, r.stderr)
    # Include parameters: a missing, an unused and a non-identifier value are usage errors.
    for line, says in [
        ("-- #include include/percentiles.sql", "needs parameter(s) group"),
        ("-- #include include/percentiles.sql group=a key=b", "takes no parameter(s) key"),
        ("-- #include include/percentiles.sql group=a;DROP", "not key=IDENT"),
        ("-- #include include/percentiles.sql group=a group=b", "given twice"),
    ]:
        bad.write_text(f"-- #include include/prelude.sql\nprobes AS (SELECT * FROM dedup),\n{line}\nSELECT 1")
        (tmp / "include").mkdir(exist_ok=True)
        for inc in (ATHENA / "include").glob("*.sql"):
            shutil.copy(inc, tmp / "include" / inc.name)
        r = run(tmp / "data", bad)
        assert r.returncode == 2 and says in r.stderr, (line, r.returncode, r.stderr)


def test_sql_parses_as_trino():
    sys.path.insert(0, str(ROOT / "scripts"))
    import gen_infra  # noqa: PLC0415

    queries = sorted(ATHENA.glob("*.sql"))
    assert len(queries) >= 8, queries
    for q in queries:
        if q.name == "records_table.sql":
            continue  # Hive DDL (Athena runs DDL with Hive), not Trino
        raw = q.read_text()
        assert raw.count("-- #include include/prelude.sql\n") == 1, f"{q.name}: does not include the prelude once"
        assert "in_range AS (" not in raw and "dedup AS (" not in raw, f"{q.name}: repeats the prelude's CTEs"
        # The shared CTEs are written once, in include/: no query carries its own copy.
        for shared, home in [("ranked AS (", "percentiles.sql"), ("CROSS JOIN UNNEST(p.rtt_samples_ms)", "rtt_samples.sql"),
                             ("AS jitter_avg_ms\n  FROM probes", "probe_counts.sql"), ("relayed AS (", "relay_stats.sql"),
                             ("hist_cum AS (", "load_steps.sql")]:
            assert shared not in raw, f"{q.name}: defines {shared[:-4]} itself instead of including include/{home}"
        text = athena_sql.load(q)
        for need in ("'${from}'", "'${to}'", "row_number() OVER (PARTITION BY i.record_id", "copy_no = 1"):
            assert need in text, f"{q.name}: missing {need}"
        code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
        assert "approx_percentile" not in code.lower(), f"{q.name}: approx_percentile is not exact"
        for variant in (text, gen_infra.aws_sql(q, 1)):
            parsed = sqlglot.parse(variant, read="trino")
            assert len([p for p in parsed if p is not None]) == 1, f"{q.name}: not one statement"


def test_script(*cmd: str):
    def t():
        r = subprocess.run([str(ROOT / cmd[0]), *cmd[1:]], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"{' '.join(cmd)} exit {r.returncode}: {r.stdout}{r.stderr}"
    return t


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="meshlat-analytics-"))
    try:
        data = tmp / "data"
        make_data(data)
        check("latency matrix by region pair (exact p50/p99, loss, jitter, dedup)", lambda: test_latency_matrix_region(data))
        check("latency matrix by agent pair", lambda: test_latency_matrix_agent(data))
        check("loss and jitter", lambda: test_loss_jitter(data))
        check("HTTP phases per target", lambda: test_http_phases(data))
        check("relay penalty per relay", lambda: test_relay_penalty(data))
        check("best relay per region pair", lambda: test_best_relay(data))
        check("time series, 5-minute buckets", lambda: test_timeseries(data))
        check("server-side drops per region pair (serve, relay_serve)", lambda: test_server_drops(data))
        check("load jobs: latency vs load per region and step (merged histograms)", lambda: test_load_curve(data))
        check("load jobs: breaking point (p99 threshold, errors began)", lambda: test_load_breaking_point(data, tmp))
        check("time range --from/--to and defaults", lambda: test_time_range(data))
        check("all-null columns keep their types", lambda: test_all_null_array_column(tmp))
        check("output formats", lambda: test_formats(data))
        check("athena-local errors", lambda: test_errors(tmp))
        check("every query parses as Trino (file and named-query form)", test_sql_parses_as_trino)
        check("scripts/check_schema.py", test_script("scripts/check_schema.py"))
        check("scripts/gen_infra.py --check", test_script("scripts/gen_infra.py", "--check"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
