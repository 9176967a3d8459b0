//! Accuracy against ground truth, with prober, responder and link emulator as separate processes.
//!
//! Run by `scripts/test.sh` in its own stage, one test at a time (`--test-threads=1`), because
//! timing checks need the machine's cores to themselves; `cargo test --workspace` does not run
//! this target (`test = false` in Cargo.toml).
//!
//! Ground truth is what the emulator logged per packet (the actual hold, not the configured
//! delay) and what the test HTTP server measured of its own waits.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test with its message

mod support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use serde_json::Value;
use support::*;

/// The probe flags of a UDP train: 10 rounds 0.3 s apart of 20 packets 5 ms apart, each
/// waited for `timeout` seconds.
fn udp_train(timeout: &str) -> [&str; 10] {
    [
        "-n",
        "10",
        "-d",
        "0.3",
        "--packets",
        "20",
        "--packet-interval-ms",
        "5",
        "--timeout",
        timeout,
    ]
}

/// Per-packet emulator log entries of one route and direction: actual holds (ms) and drops.
fn emu_log(path: &std::path::Path, route: u64, dir: &str) -> (Vec<f64>, u64) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut holds = Vec::new();
    let mut dropped = 0;
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        if v.get("summary").is_some()
            || v["route"].as_u64() != Some(route)
            || v["dir"].as_str() != Some(dir)
        {
            continue;
        }
        if v["dropped"].as_bool() == Some(true) {
            dropped += 1;
        } else {
            holds.push(v["actual_hold_ns"].as_f64().unwrap() / 1e6);
        }
    }
    (holds, dropped)
}

#[test]
fn udp_rtt_rise_matches_injected_delay_and_loss_matches_drops() {
    let srv = serve_only(&[Proto::Udp], &[]);
    let refl = srv.udp.unwrap();
    let dir = tmpdir("accuracy-udp");
    let log = dir.join("emu.ndjson");
    let mut emu = linkemu(
        &[
            format!("udp:127.0.0.1:0={refl}"),
            format!("udp:127.0.0.1:0={refl},fwd=5ms,ret=15ms"),
            format!("udp:127.0.0.1:0={refl},loss_fwd=5,seed=7"),
        ],
        &log,
    );
    let data = dir.join("data");
    let data_s = data.to_str().unwrap().to_string();
    let train = [&["--out", data_s.as_str()][..], &udp_train("0.25")].concat();
    let base_t = format!("udp://{}", emu.routes[0]);
    let delayed_t = format!("udp://{}", emu.routes[1]);
    let lossy_t = format!("udp://{}", emu.routes[2]);

    // Baseline and delayed route in one run, their trains interleaved: whatever else the
    // machine does at the time affects both alike, and the rise compares like with like.
    let both = probe_ok(&[&train[..], &[base_t.as_str(), delayed_t.as_str()]].concat());
    let (base, delayed): (Vec<_>, Vec<_>) = both.into_iter().partition(|r| r.target == base_t);
    assert_eq!(
        (base.len(), delayed.len()),
        (10, 10),
        "10 records per route"
    );
    let (out, lossy) = probe_json(&[
        "-n",
        "20",
        "-d",
        "0.5",
        "--packets",
        "100",
        "--packet-interval-ms",
        "1",
        "--timeout",
        "0.3",
        "--out",
        data_s.as_str(),
        lossy_t.as_str(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "a train with some loss is still ok: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    emu.proc.terminate();

    // Delay: RTT p50 rise over the no-delay route vs the holds the emulator actually applied.
    let (fwd, _) = emu_log(&log, 1, "fwd");
    let (ret, _) = emu_log(&log, 1, "ret");
    assert_eq!(
        (fwd.len(), ret.len()),
        (200, 200),
        "every packet went through route 1 both ways"
    );
    // Medians on both sides: a hold thread preempted on a busy machine skews a mean, not a median.
    let injected = median(&fwd) + median(&ret);
    let rise = median(&all_rtts(&delayed)) - median(&all_rtts(&base));
    eprintln!(
        "figures udp_rtt_rise base_p50_ms={:.3} delayed_p50_ms={:.3} rise_ms={rise:.3} \
         logged_holds_ms={injected:.3} rise_minus_logged_ms={:.3} fwd_hold_p50_ms={:.3} \
         ret_hold_p50_ms={:.3}",
        median(&all_rtts(&base)),
        median(&all_rtts(&delayed)),
        rise - injected,
        median(&fwd),
        median(&ret)
    );
    assert!(
        (rise - injected).abs() <= 0.3,
        "RTT rise {rise:.3} ms vs logged holds {injected:.3} ms: off by more than 0.3 ms"
    );
    for r in base.iter().chain(&delayed) {
        assert_eq!(
            (r.sent, r.samples, r.lost),
            (Some(20), Some(20), Some(0)),
            "{r:?}"
        );
    }

    // Loss: the records' lost packets equal the emulator's forward drops, exactly.
    let (_, drops) = emu_log(&log, 2, "fwd");
    let (_, ret_drops) = emu_log(&log, 2, "ret");
    let sent: u32 = lossy.iter().map(|r| r.sent.unwrap()).sum();
    let lost: u32 = lossy.iter().map(|r| r.lost.unwrap()).sum();
    let late: u32 = lossy.iter().map(|r| r.late.unwrap()).sum();
    eprintln!("figures udp_loss sent={sent} lost={lost} emulator_dropped={drops} late={late}");
    assert_eq!(sent, 2000);
    assert_eq!(ret_drops, 0);
    assert_eq!(late, 0, "no reply may arrive after the timeout on loopback");
    assert!(
        drops > 50 && drops < 150,
        "5 % of 2000 should drop about 100, got {drops}"
    );
    assert_eq!(
        u64::from(lost),
        drops,
        "lost must equal the emulator's drop count exactly"
    );

    // The shipped Athena SQL, run locally on the records this run wrote, gives the same answers.
    let rows = athena_local(&data, "latency_matrix_agent.sql");
    let row = |target: &str| {
        rows.iter()
            .find(|r| r["dst"].as_str() == Some(target) && r["protocol"].as_str() == Some("udp"))
            .unwrap_or_else(|| panic!("no matrix row for {target}: {rows:?}"))
    };
    let (sql_base, sql_delayed, sql_lossy) = (row(&base_t), row(&delayed_t), row(&lossy_t));
    let sql_rise = sql_delayed["p50_ms"].as_f64().unwrap() - sql_base["p50_ms"].as_f64().unwrap();
    eprintln!(
        "figures athena_sql p50_rise_ms={sql_rise:.3} loss_ratio={}",
        sql_lossy["loss_ratio"]
    );
    assert!(
        (sql_rise - injected).abs() <= 0.3,
        "SQL p50 rise {sql_rise:.3} vs logged holds {injected:.3}"
    );
    assert_eq!(
        sql_base["p50_ms"].as_f64().unwrap(),
        median(&all_rtts(&base)),
        "SQL p50 is the exact nearest rank"
    );
    assert_eq!(sql_lossy["lost"].as_u64(), Some(drops));
    let ratio = sql_lossy["loss_ratio"].as_f64().unwrap();
    assert!(
        (ratio - drops as f64 / 2000.0).abs() < 1e-9,
        "loss ratio {ratio} vs {drops}/2000"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// Runs a shipped query with scripts/athena-local (DuckDB) and returns its rows.
fn athena_local(data: &std::path::Path, query: &str) -> Vec<Value> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = std::process::Command::new(root.join("scripts/athena-local"))
        .args(["--data", data.to_str().unwrap(), "--format", "json"])
        .arg(root.join("infra/athena").join(query))
        .output()
        .expect("run scripts/athena-local (python3 must be installed)");
    assert!(
        out.status.success(),
        "athena-local failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Vec<Value>>(&out.stdout)
        .expect("athena-local --format json prints an array")
}

/// A one-connection-at-a-time HTTP server that waits `head_wait` before the response head and
/// `body_wait` between the first body chunk and the rest, and reports the waits it actually made.
fn waiting_server(
    head_wait: Duration,
    body_wait: Duration,
    n: usize,
) -> (std::net::SocketAddr, std::sync::mpsc::Receiver<(f64, f64)>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for _ in 0..n {
            let (mut s, _) = l.accept().unwrap();
            s.set_nodelay(true).unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                let k = s.read(&mut buf).unwrap();
                assert!(k > 0);
                req.extend_from_slice(&buf[..k]);
            }
            // The request is in: the client's "request written" mark is just before this.
            let t0 = precise_now();
            precise_sleep(head_wait);
            let t1 = precise_now();
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2000\r\nConnection: close\r\n\r\n")
                .unwrap();
            s.write_all(&[b'a'; 1000]).unwrap();
            precise_sleep(body_wait);
            let t2 = precise_now();
            s.write_all(&[b'b'; 1000]).unwrap();
            tx.send(((t1 - t0).as_secs_f64() * 1e3, (t2 - t1).as_secs_f64() * 1e3))
                .unwrap();
        }
    });
    (addr, rx)
}

#[allow(clippy::disallowed_types)] // ground truth needs the OS clock, not tokio's
fn precise_now() -> std::time::Instant {
    std::time::Instant::now()
}

fn precise_sleep(d: Duration) {
    let end = precise_now() + d;
    if d > Duration::from_millis(1) {
        std::thread::sleep(d - Duration::from_millis(1));
    }
    while precise_now() < end {
        std::hint::spin_loop();
    }
}

#[test]
fn http_first_and_last_byte_match_server_waits() {
    let n = 9;
    let (addr, waits) = waiting_server(Duration::from_millis(40), Duration::from_millis(30), n);
    let url = format!("http://{addr}/");
    let mut recs = probe_ok(&["-n", &n.to_string(), "-d", "0.2", &url]);
    assert_eq!(recs.len(), n);
    recs.sort_by_key(|r| r.seq);
    let (mut first_err, mut last_err) = (Vec::new(), Vec::new());
    for r in &recs {
        let (head, body) = waits.recv_timeout(Duration::from_secs(5)).unwrap();
        let first = r.first_byte_ms.unwrap();
        let last = r.last_byte_ms.unwrap();
        eprintln!(
            "http sample {}: first_byte {first:.3} ms (server waited {head:.3}), last_byte {last:.3} ms (server waited {body:.3})",
            r.seq
        );
        // The client's "request written" mark precedes the server's read and its first-byte mark
        // follows the server's write, so first_byte_ms can never be below the server's wait.
        assert!(
            first >= head - 0.2,
            "first_byte_ms {first} below the server's wait {head}: measuring the wrong point"
        );
        assert_eq!((r.http_status, r.bytes), (Some(200), Some(2000)));
        let total = r.total_ms.unwrap();
        assert!(
            total >= r.tcp_ms.unwrap() + first + last - 0.01,
            "total covers connect, first and last byte: {r:?}"
        );
        first_err.push((first - head).abs());
        last_err.push((last - body).abs());
    }
    // Each side's stamps can be preempted on a 2-core machine; the typical sample must be within
    // 1 ms of ground truth.
    let (fe, le) = (median(&first_err), median(&last_err));
    eprintln!(
        "figures http_first_last_byte first_byte_median_abs_err_ms={fe:.3} \
         last_byte_median_abs_err_ms={le:.3} first_byte_max_abs_err_ms={:.3} samples={n}",
        first_err.iter().copied().fold(0.0, f64::max)
    );
    assert!(
        fe <= 1.0,
        "first_byte_ms median error {fe:.3} ms exceeds 1 ms"
    );
    assert!(
        le <= 1.0,
        "last_byte_ms median error {le:.3} ms exceeds 1 ms"
    );
}

/// Medians over records of one relay field.
fn median_of(
    recs: &[meshlat_proto::record::Record],
    f: fn(&meshlat_proto::record::Record) -> Option<f64>,
) -> f64 {
    let v: Vec<f64> = recs.iter().map(|r| f(r).unwrap()).collect();
    median(&v)
}

#[test]
fn relay_legs_follow_delay_injected_in_front_of_the_relay() {
    // A relay trusts grants only from a shared, non-default key.
    // Every clock claims a 0.5 ms bound (a stand-in: the container's may be unsynchronised),
    // so relay records carry one-way delays, which must follow the delay too.
    let key = [
        "--key",
        "accuracy-relay-key",
        "--clock-source",
        "standin:0:0.5",
    ];
    let b = serve_only(&[Proto::Udp], &key);
    let r = serve_only(&[Proto::Udp], &[&key[..], &["--relay"]].concat());
    let (b_udp, r_udp) = (b.udp.unwrap(), r.udp.unwrap());
    let dir = tmpdir("accuracy-relay");
    let log = dir.join("emu.ndjson");
    // The same route in front of R, without and with 10 ms one-way on A → R only.
    let emu = linkemu(
        &[
            format!("udp:127.0.0.1:0={r_udp}"),
            format!("udp:127.0.0.1:0={r_udp},fwd=10ms"),
        ],
        &log,
    );
    let train = [&udp_train("0.3")[..], &key[..]].concat();
    // Both routes in one run, trains interleaved, so machine load affects both alike.
    let (base_t, delayed_t) = (
        format!("relay://{}/{b_udp}", emu.routes[0]),
        format!("relay://{}/{b_udp}", emu.routes[1]),
    );
    let recs = probe_ok(&[&train[..], &[base_t.as_str(), delayed_t.as_str()]].concat());
    for rec in &recs {
        // A record is only ok when every relayed packet's rtt equals the sum of its legs
        // and dwell exactly (the prober fails the train otherwise).
        assert!(rec.ok, "{rec:?}");
        assert_eq!(rec.kind, Some(meshlat_proto::record::Kind::Relay));
        assert!(rec.samples.unwrap() >= 18, "{rec:?}");
    }
    let (base, delayed): (Vec<_>, Vec<_>) = recs.into_iter().partition(|r| r.target == base_t);
    assert_eq!(
        (base.len(), delayed.len()),
        (10, 10),
        "10 records per route"
    );
    assert!(delayed.iter().all(|r| r.target == delayed_t));
    let rise = |f: fn(&meshlat_proto::record::Record) -> Option<f64>| {
        median_of(&delayed, f) - median_of(&base, f)
    };
    let src = rise(|r| r.leg_src_relay_rtt_ms);
    let dst = rise(|r| r.leg_relay_dst_rtt_ms);
    let direct = rise(|r| r.direct_rtt_ms);
    let penalty = rise(|r| r.relay_penalty_ms);
    let rtt = rise(|r| r.rtt_p50_ms);
    let owd_fwd = rise(|r| r.owd_fwd_ms);
    let owd_rev = rise(|r| r.owd_rev_ms);
    eprintln!(
        "figures relay_legs src_relay_rise_ms={src:.3} relay_dst_rise_ms={dst:.3} \
         direct_rise_ms={direct:.3} penalty_rise_ms={penalty:.3} relayed_rtt_p50_rise_ms={rtt:.3} \
         relayed_owd_fwd_rise_ms={owd_fwd:.3} relayed_owd_rev_rise_ms={owd_rev:.3}"
    );
    assert!(
        delayed
            .iter()
            .chain(&base)
            .all(|r| r.clock_error_ms == Some(1.0)),
        "relay records carry both ends' bounds"
    );
    assert!(
        (owd_fwd - 10.0).abs() <= 0.5,
        "relayed owd_fwd rose by {owd_fwd}"
    );
    assert!(owd_rev.abs() <= 0.3, "relayed owd_rev moved by {owd_rev}");
    assert!((src - 10.0).abs() <= 0.5, "leg_src_relay rose by {src}");
    assert!(dst.abs() <= 0.3, "leg_relay_dst moved by {dst}");
    assert!(direct.abs() <= 0.3, "direct_rtt moved by {direct}");
    assert!(
        (penalty - 10.0).abs() <= 0.5,
        "relay_penalty rose by {penalty}"
    );
    drop(emu);
}
