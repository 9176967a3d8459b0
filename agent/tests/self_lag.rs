//! The agent's own lateness in its records (issue 16, item 5), with real processes: every probe
//! record says how late its sample started (`sched_lag_ms`) and, for trains, how late its worst
//! packet went out against its pacing (`send_lag_ms`); an agent starved of its core — pinned
//! with `taskset` to one CPU at the lowest priority, next to busy loops at normal priority —
//! flags its records `lag_suspect`.
//!
//! Alone in its test binary: the busy loops would disturb timing tests running beside it.

mod support;
use support::{Proto, serve_only};

use std::process::{Child, Command, Stdio};

use meshlat_proto::record::Record;

/// Busy loops on CPU 0, killed when dropped.
struct Hogs(Vec<Child>);

impl Hogs {
    fn start(n: usize) -> Self {
        Hogs(
            (0..n)
                .map(|_| {
                    Command::new("taskset")
                        .args(["-c", "0", "sh", "-c", "while :; do :; done"])
                        .stdout(Stdio::null())
                        .spawn()
                        .expect("taskset (util-linux) runs a busy loop")
                })
                .collect(),
        )
    }
}

impl Drop for Hogs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `agent probe --format json ARGS` pinned to CPU 0 at nice 19: its records.
fn starved_probe(args: &[&str]) -> Vec<Record> {
    support::ok_records(
        Command::new("taskset")
            .args(["-c", "0", "nice", "-n", "19", support::agent_bin(), "probe"])
            .args(["--format", "json"])
            .args(args),
    )
}

#[test]
fn records_carry_the_agents_own_lateness_and_a_starved_agent_flags_them() {
    let srv = serve_only(&[Proto::Udp], &[]);
    let target = format!("udp://{}", srv.udp.expect("udp port"));
    let train = [
        "-n",
        "6",
        "-d",
        "0.2",
        "--packets",
        "10",
        "--packet-interval-ms",
        "5",
        "--timeout",
        "0.2",
    ];

    // Unloaded: the fields are there (their values depend on the machine; not judged).
    let recs = support::probe_ok(&[&train[..], &[target.as_str()]].concat());
    assert_eq!(recs.len(), 6);
    for r in &recs {
        assert!(r.sched_lag_ms.is_some(), "{r:?}");
        let lag = r.send_lag_ms.expect("a 10-packet train has a send lag");
        assert!(lag >= 0.0, "{r:?}");
        assert!(r.lag_suspect.is_some(), "{r:?}");
    }

    // Starved: three busy loops at nice 0 against the agent at nice 19 on one CPU leave it a
    // few percent of the core, so its 5 ms pacing slips by scheduler slices (milliseconds)
    // against a loopback RTT of microseconds.
    let hogs = Hogs::start(3);
    let starved = starved_probe(&[&train[..], &[target.as_str()]].concat());
    drop(hogs);
    assert_eq!(starved.len(), 6);
    let worst = starved
        .iter()
        .filter_map(|r| r.send_lag_ms)
        .fold(0.0_f64, f64::max);
    let flagged = starved
        .iter()
        .filter(|r| r.lag_suspect == Some(true))
        .count();
    println!("figures self_lag worst_send_lag_ms={worst} flagged={flagged}/6");
    assert!(
        worst > 2.0,
        "a starved agent's worst send lag is {worst} ms: {starved:?}"
    );
    assert!(flagged >= 1, "no record flagged: {starved:?}");
    for r in starved.iter().filter(|r| r.lag_suspect == Some(true)) {
        let lag = r
            .sched_lag_ms
            .unwrap_or(0.0)
            .max(r.send_lag_ms.unwrap_or(0.0));
        let rtt = r.rtt_p50_ms.expect("loopback answers");
        assert!(lag > 2.0 && lag > rtt / 2.0, "flag without cause: {r:?}");
    }
}
