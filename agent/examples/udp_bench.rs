//! Benchmark driver for `scripts/bench/` (not a user tool).
//!
//! ```text
//! udp_bench pingpong --target ADDR [--packets N] [--packet-interval-ms MS]
//!     One train of the real UDP prober; prints JSON with raw (t4−t1) and net RTT percentiles in
//!     µs and this process's CPU seconds.
//! udp_bench flood --target ADDR [--seconds S]
//!     Sends valid, authenticated requests (default key) as fast as one thread can, 64 per
//!     sendmmsg, and counts replies on another, 64 per polled recvmmsg; prints JSON with sent/received
//!     packets per second, this process's CPU (of one core) and replies dropped at its socket.
//! ```

#![allow(clippy::unwrap_used, clippy::disallowed_types, missing_docs)]

use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use meshlat_agent::clock::Clock;
use meshlat_agent::probe::udp::UdpProbe;
use meshlat_agent::probe::{Key, ProbeSpec, nearest_rank};
use meshlat_agent::target::Target;
use meshlat_agent::udp::wire::{self, Header, WireKey};
use meshlat_agent::udp::{MIN_PACKET_BYTES, sys};
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
    let interval_ms: f64 = arg(args, "--packet-interval-ms", "1").parse()?;
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

/// Drops counted by the kernel on this process's UDP socket bound to local `port`
/// (`/proc/self/net/udp`, last column), when it can be read.
fn socket_drops(port: u16) -> Option<u64> {
    let want = format!(":{port:04X}");
    let table = std::fs::read_to_string("/proc/self/net/udp").ok()?;
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.get(1)
            .filter(|local| local.ends_with(&want))
            .and_then(|_| f.last())
            .and_then(|d| d.parse().ok())
    })
}

fn flood(args: &[String]) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd;
    let target = arg(args, "--target", "");
    let secs: f64 = arg(args, "--seconds", "5").parse()?;
    // Closed loop: at most this many requests unanswered, so the reflector's socket buffer
    // (rmem_max, ~208 KiB by default) is never overrun by an open-loop burst and the rate
    // measured is what the reflector sustains. 0 = open loop.
    let window: u64 = arg(args, "--window", "1024").parse()?;
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    sock.connect(&target)?;
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    // Replies must not be lost here for want of buffer: that would be charged to the reflector.
    let _ = socket2::SockRef::from(&sock).set_recv_buffer_size(8 << 20);
    let port = sock.local_addr()?.port();
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
    // Replies are taken up to 64 per recvmmsg, polled rather than waited for: a receiver asleep
    // on the socket would make every reply's delivery wake it, and on loopback that wake-up runs
    // in the reflector's sendmmsg, on the reflector's core — a cost of this generator, not of the
    // reflector (a remote reflector's NIC wakes nobody here). Polling yields the shared core to
    // the sender whenever nothing is queued.
    let receiver = std::thread::spawn(move || {
        let mut batch = sys::Batch::new();
        while !stop2.load(Ordering::Relaxed) {
            match batch.try_recv(rx.as_raw_fd()) {
                Ok(n) => {
                    received2.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(_) => std::thread::yield_now(),
            }
        }
    });
    let drops0 = socket_drops(port).unwrap_or(0);
    let cpu0 = cpu_seconds();
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let mut sent: u64 = 0;
    let mut send_errors: u64 = 0;
    // Requests go out 64 per sendmmsg: one system call per batch, not per packet.
    while Instant::now() < end {
        for _ in 0..16 {
            if window > 0
                && sent.saturating_sub(received.load(Ordering::Relaxed)) + sys::BATCH as u64
                    > window
            {
                std::thread::yield_now();
                continue;
            }
            match sys::send_copies(sock.as_raw_fd(), &pkt, sys::BATCH) {
                Ok(n) => sent += n as u64,
                Err(_) => send_errors += 1,
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let got_at_end = received.load(Ordering::Relaxed);
    let cpu = cpu_seconds() - cpu0;
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    receiver.join().ok();
    let drops = socket_drops(port).map(|d| d.saturating_sub(drops0));
    let out = serde_json::json!({
        "sent": sent, "received": got_at_end, "seconds": elapsed,
        "sent_pps": sent as f64 / elapsed, "recv_pps": got_at_end as f64 / elapsed,
        "send_errors": send_errors, "local_port": port, "window": window,
        // Replies the kernel dropped at our socket (full buffer): a generator-side loss.
        "generator_rx_drops": drops,
        // Of one core (sender and receiver threads share the generator's core).
        "generator_cpu": cpu / elapsed,
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
