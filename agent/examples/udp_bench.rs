//! Benchmark driver for `scripts/bench/` (not a user tool).
//!
//! ```text
//! udp_bench pingpong --target ADDR [--packets N] [--interval-ms MS]
//!     One train of the real UDP prober; prints JSON with raw (t4−t1) and net RTT percentiles in
//!     µs and this process's CPU seconds.
//! udp_bench flood --target ADDR [--seconds S]
//!     Sends valid, authenticated requests (default key) as fast as one thread can and counts
//!     replies on another; prints JSON with sent/received packets per second.
//! ```

#![allow(clippy::unwrap_used, clippy::disallowed_types, missing_docs)]

use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use meshlat_agent::clock::Clock;
use meshlat_agent::probe::udp::wire::{self, Header, WireKey};
use meshlat_agent::probe::udp::{MIN_PACKET_BYTES, UdpProbe};
use meshlat_agent::probe::{Key, ProbeSpec, nearest_rank};
use meshlat_agent::target::Target;
use meshlat_proto::record::Protocol;

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.to_string())
}

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let f: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, s)| s)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) / 100.0;
    t(11) + t(12)
}

fn pct_us(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    nearest_rank(&s, p).unwrap_or(f64::NAN) * 1000.0
}

fn pingpong(args: &[String]) -> anyhow::Result<()> {
    let target = Target::parse(&format!("udp://{}", arg(args, "--target", "")))?;
    let packets: u32 = arg(args, "--packets", "1000").parse()?;
    let interval_ms: f64 = arg(args, "--interval-ms", "1").parse()?;
    let spec = ProbeSpec {
        protocol: Protocol::Udp,
        packets,
        packet_interval: Duration::from_secs_f64(interval_ms / 1000.0),
        timeout: Duration::from_secs(1),
        ..ProbeSpec::default()
    };
    let probe = UdpProbe::new(&spec)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let cpu0 = cpu_seconds();
    let m = rt.block_on(probe.run_once(&target));
    let cpu = cpu_seconds() - cpu0;
    let t = m.data.train.context("no train data")?;
    if t.rtts_ms.is_empty() {
        bail!("no replies: {:?}", m.outcome);
    }
    let out = serde_json::json!({
        "samples": t.samples, "sent": t.sent,
        "raw_p50_us": pct_us(&t.raw_rtts_ms, 50.0), "raw_p99_us": pct_us(&t.raw_rtts_ms, 99.0),
        "net_p50_us": pct_us(&t.rtts_ms, 50.0), "net_p99_us": pct_us(&t.rtts_ms, 99.0),
        "client_cpu_s": cpu,
    });
    println!("{out}");
    Ok(())
}

fn flood(args: &[String]) -> anyhow::Result<()> {
    let target = arg(args, "--target", "");
    let secs: f64 = arg(args, "--seconds", "5").parse()?;
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    sock.connect(&target)?;
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    let key = WireKey::new(&Key::default_key());
    let mut pkt = vec![0u8; MIN_PACKET_BYTES];
    wire::encode(
        &Header::request(
            Key::default_key().id,
            7,
            0,
            Clock::now_ns(),
            wire::ERROR_BOUND_UNKNOWN,
        ),
        &key,
        &mut pkt,
    )?;
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let rx = sock.try_clone()?;
    let (stop2, received2) = (stop.clone(), received.clone());
    let receiver = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while !stop2.load(Ordering::Relaxed) {
            if rx.recv(&mut buf).is_ok() {
                received2.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let mut sent: u64 = 0;
    while Instant::now() < end {
        for _ in 0..64 {
            if sock.send(&pkt).is_ok() {
                sent += 1;
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let got_at_end = received.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    receiver.join().ok();
    let out = serde_json::json!({
        "sent": sent, "received": got_at_end, "seconds": elapsed,
        "sent_pps": sent as f64 / elapsed, "recv_pps": got_at_end as f64 / elapsed,
    });
    println!("{out}");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("pingpong") => pingpong(&args),
        Some("flood") => flood(&args),
        _ => bail!("usage: udp_bench pingpong|flood --target ADDR ..."),
    }
}
