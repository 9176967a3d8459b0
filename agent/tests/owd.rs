//! One-way delay end to end with real clock bounds (issue 16, item 4), with real processes: a
//! reflector (`agent serve`) behind the link emulator with known, different delays each way,
//! and `agent probe` against it. Each end's clock comes from `--clock-source`: a stand-in with
//! a set offset and bound (the one way to know a clock's real error on one machine), or the
//! ECS task metadata endpoint (served here by a small HTTP server, as ECS would).
//!
//! - Both ends bounded: `owd_fwd_ms`/`owd_rev_ms` are within `clock_error_ms` of the truth
//!   (the injected delay plus the transport's own time, bounded by an undelayed route's RTT),
//!   show the stand-in offset, and rise over the undelayed route by the emulator's logged hold
//!   in each direction. Minimums over ten trains: noise only ever adds to a direction, so a
//!   preempted packet cannot decide.
//! - One end without a bound: no one-way delay, the RTT still there.

mod support;
use support::{Proto, linkemu, serve_only, tmpdir};

use std::path::PathBuf;

use meshlat_proto::record::Record;

/// The tests of this file one at a time: each runs an emulator, a reflector and a prober, and
/// their medians are steadier without the others' processes beside them.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// Injected one-way delays, ms.
const FWD_MS: f64 = 10.0;
const RET_MS: f64 = 2.0;

fn train(targets: &[&str], n: &str, clock: &str) -> Vec<String> {
    let mut a: Vec<String> = [
        "-n",
        n,
        "-d",
        "0.3",
        "--timeout",
        "0.2",
        "--packets",
        "5",
        "--packet-interval-ms",
        "5",
        "--clock-source",
        clock,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(targets.iter().map(|t| t.to_string()));
    a
}

/// `agent probe ARGS`: its records that measured something. A train may time out on a machine
/// busy enough (exit status 1, "some measurements failed"); at most one per run is tolerated,
/// and the figures are judged on the others.
fn probe(args: &[String], env: &[(&str, String)]) -> Vec<Record> {
    let out = std::process::Command::new(support::agent_bin())
        .args(["probe", "--format", "json"])
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("run agent probe");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(matches!(out.status.code(), Some(0 | 1)), "{stderr}");
    let recs = support::records(&out.stdout);
    let failed = recs.iter().filter(|r| r.samples.unwrap_or(0) == 0).count();
    assert!(failed <= 1, "{failed} trains measured nothing: {stderr}");
    recs.into_iter()
        .filter(|r| r.samples.unwrap_or(0) > 0)
        .collect()
}

/// A reflector with `clock` behind the emulator, on two routes: delayed (`FWD_MS` out,
/// `RET_MS` back) and undelayed (the transport's own time, the baseline). Returns the
/// reflector, the emulator, its log and the two target URLs.
struct Link {
    _srv: support::Server,
    _emu: support::Emu,
    log: PathBuf,
    delayed: String,
    undelayed: String,
}

fn reflector_behind_link(clock: &str, name: &str) -> Link {
    let srv = serve_only(&[Proto::Udp], &["--clock-source", clock]);
    let refl = srv.udp.expect("udp port");
    let log = tmpdir(name).join("emu.jsonl");
    let emu = linkemu(
        &[
            format!("udp:127.0.0.1:0={refl},fwd=10ms,ret=2ms"),
            format!("udp:127.0.0.1:0={refl}"),
        ],
        &log,
    );
    Link {
        delayed: format!("udp://{}", emu.routes[0]),
        undelayed: format!("udp://{}", emu.routes[1]),
        _srv: srv,
        _emu: emu,
        log,
    }
}

/// The minimum of `f` over the records of `target` (every one must have it). Each direction's
/// figure only ever gains from the machine's noise — the prober's send path after it read t1,
/// the emulator's wake-ups, the reflector's send path after t3 — so the least disturbed train
/// is the one nearest the truth (as packet_truth.rs compares minimums).
fn min_of(recs: &[Record], target: &str, f: impl Fn(&Record) -> Option<f64>) -> f64 {
    let v: Vec<f64> = recs
        .iter()
        .filter(|r| r.target == target)
        .map(|r| f(r).unwrap_or_else(|| panic!("a record of {target} lacks the field: {r:?}")))
        .collect();
    assert!(!v.is_empty(), "no records of {target}");
    v.into_iter().fold(f64::INFINITY, f64::min)
}

/// The median of `f` over the records of `target` (every one must have it).
fn median_of(recs: &[Record], target: &str, f: impl Fn(&Record) -> Option<f64>) -> f64 {
    let mut v: Vec<f64> = recs
        .iter()
        .filter(|r| r.target == target)
        .map(|r| f(r).unwrap_or_else(|| panic!("a record of {target} lacks the field: {r:?}")))
        .collect();
    assert!(!v.is_empty(), "no records of {target}");
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The median hold the emulator logged on route 0 in direction `dir`, ms.
fn logged_hold(log: &std::path::Path, dir: &str) -> f64 {
    let mut v: Vec<f64> = std::fs::read_to_string(log)
        .expect("emulator log")
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["route"] == 0 && e["dir"] == dir && e["dropped"] == false)
        .filter_map(|e| e["actual_hold_ns"].as_f64())
        .map(|ns| ns / 1e6)
        .collect();
    assert!(!v.is_empty(), "no {dir} holds logged");
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
fn one_way_delays_are_within_the_clock_bounds_of_the_injected_ones() {
    let _one = one_at_a_time();
    // The reflector's clock is right and claims 0.5 ms; the prober's is 3 ms ahead and claims
    // 4 ms. Its one-way delays must show the 3 ms (so the offset is really applied) and stay
    // within the 4.5 ms the two bounds allow of the truth: the injected delay plus the
    // transport's own time, which the undelayed route's RTT bounds.
    let link = reflector_behind_link("standin:0:0.5", "owd-bounded");
    let recs = probe(
        &train(&[&link.delayed, &link.undelayed], "10", "standin:3:4"),
        &[],
    );
    assert!(recs.len() >= 19, "{} records", recs.len());
    for r in &recs {
        assert_eq!(r.clock_error_ms, Some(4.5), "both ends' bounds: {r:?}");
        let (f, b, rtt) = (
            r.owd_fwd_ms.unwrap_or(f64::NAN),
            r.owd_rev_ms.unwrap_or(f64::NAN),
            r.rtt_ms.unwrap_or(f64::NAN),
        );
        // The two halves add up to the train's mean RTT (to rounding).
        assert!(
            (f + b - rtt).abs() < 0.01,
            "fwd {f} + rev {b} != rtt {rtt}: {r:?}"
        );
    }
    let (d, u) = (link.delayed.as_str(), link.undelayed.as_str());
    let fwd = min_of(&recs, d, |r| r.owd_fwd_ms);
    let rev = min_of(&recs, d, |r| r.owd_rev_ms);
    let fwd0 = min_of(&recs, u, |r| r.owd_fwd_ms);
    let rev0 = min_of(&recs, u, |r| r.owd_rev_ms);
    let transport = min_of(&recs, u, |r| r.rtt_p50_ms);
    let (hold_fwd, hold_ret) = (logged_hold(&link.log, "fwd"), logged_hold(&link.log, "ret"));
    println!(
        "figures owd fwd_ms={fwd} rev_ms={rev} undelayed_fwd_ms={fwd0} undelayed_rev_ms={rev0} \
         transport_rtt_ms={transport} hold_fwd_ms={hold_fwd} hold_ret_ms={hold_ret} bound_ms=4.5 \
         median_fwd_ms={} median_rev_ms={}",
        median_of(&recs, d, |r| r.owd_fwd_ms),
        median_of(&recs, d, |r| r.owd_rev_ms)
    );
    // Within the bound of the truth (the injected delay plus the transport's own time).
    assert!(
        (fwd - FWD_MS).abs() <= 4.5 + transport + 0.5
            && (rev - RET_MS).abs() <= 4.5 + transport + 0.5,
        "outside the bound: fwd {fwd} rev {rev} (transport {transport})"
    );
    // The offset is there: undelayed, the prober's clock 3 ms ahead makes the way out look
    // 3 ms shorter than the transport takes, and the way back 3 ms longer.
    assert!(
        fwd0 >= -3.0 - 0.5 && fwd0 <= -3.0 + transport + 0.5,
        "undelayed fwd {fwd0}: the stand-in's 3 ms is not applied"
    );
    assert!(
        rev0 >= 3.0 - 0.5 && rev0 <= 3.0 + transport + 0.5,
        "undelayed rev {rev0}: the stand-in's 3 ms is not applied"
    );
    // Each direction's rise over the undelayed route is that direction's logged hold: the
    // delays land on the right side.
    assert!(
        (fwd - fwd0 - hold_fwd).abs() <= 1.0 && (rev - rev0 - hold_ret).abs() <= 1.0,
        "rise fwd {} (hold {hold_fwd}) rev {} (hold {hold_ret})",
        fwd - fwd0,
        rev - rev0
    );
}

#[test]
fn without_a_bound_at_either_end_there_is_no_one_way_delay() {
    let _one = one_at_a_time();
    let link = reflector_behind_link("none", "owd-unbounded");
    let recs = probe(&train(&[&link.delayed], "3", "standin:0:0.5"), &[]);
    assert!(recs.len() >= 2, "{} records", recs.len());
    for r in &recs {
        assert_eq!(
            (r.owd_fwd_ms, r.owd_rev_ms, r.clock_error_ms),
            (None, None, None),
            "{r:?}"
        );
        assert!(r.rtt_p50_ms.is_some_and(|v| v >= FWD_MS + RET_MS), "{r:?}");
    }
    // And the prober without one, against a bounded reflector.
    let link = reflector_behind_link("standin:0:0.5", "owd-unbounded-2");
    let recs = probe(&train(&[&link.delayed], "3", "none"), &[]);
    assert!(
        recs.iter()
            .all(|r| r.owd_fwd_ms.is_none() && r.rtt_p50_ms.is_some())
    );
}

/// On ECS the bound is the task metadata's `ClockDrift.ClockErrorBound`, read from
/// `${ECS_CONTAINER_METADATA_URI_V4}/task` (here a local HTTP server standing in for ECS's).
#[test]
fn on_ecs_the_task_metadata_gives_the_bound() {
    let _one = one_at_a_time();
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for c in listener.incoming() {
            let Ok(mut c) = c else { return };
            let mut req = [0u8; 2048];
            let _ = c.read(&mut req);
            let body = r#"{"Cluster":"c","ClockDrift":{"ClockErrorBound":0.75,"ReferenceTimestamp":"2026-12-03T07:00:00Z","ClockSynchronizationStatus":"SYNCHRONIZED"}}"#;
            let _ = c.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
        }
    });
    let link = reflector_behind_link("standin:0:0.5", "owd-ecs");
    let env = [(
        "ECS_CONTAINER_METADATA_URI_V4",
        format!("http://{addr}/v4/meshlat-test"),
    )];
    // `auto` picks ECS when the variable is set.
    let recs = probe(&train(&[&link.delayed, &link.undelayed], "5", "auto"), &env);
    assert!(recs.len() >= 9, "{} records", recs.len());
    for r in &recs {
        assert_eq!(
            r.clock_error_ms,
            Some(1.25),
            "0.75 (ECS) + 0.5 (reflector): {r:?}"
        );
    }
    let fwd = min_of(&recs, &link.delayed, |r| r.owd_fwd_ms);
    let transport = min_of(&recs, &link.undelayed, |r| r.rtt_p50_ms);
    assert!(
        (fwd - FWD_MS).abs() <= 1.25 + transport + 0.5,
        "fwd {fwd} (transport {transport})"
    );
}
