//! UDP prober ↔ reflector over real loopback sockets (STYLE §11, crate integration layer).
//!
//! Real sockets do not obey paused time, so timing is asserted only as ranges; exact arithmetic
//! is tested in the sans-IO core (`probe::udp::session`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use meshlat_agent::probe::udp::UdpProbe;
use meshlat_agent::probe::{Key, Outcome, ProbeSpec};
use meshlat_agent::respond::udp::{DropReason, ReflectorStats, UdpReflector};
use meshlat_agent::target::Target;
use meshlat_agent::udp::wire::{
    self, Header, MAX_PACKET_BYTES, MIN_PACKET_BYTES, MessageType, WireKey,
};
use meshlat_proto::record::ErrorKind;
use tokio_util::sync::CancellationToken;

mod support;
use support::eventually_async;

/// A reflector on 127.0.0.1:0, stopped when dropped.
struct TestReflector {
    addr: SocketAddr,
    stats: Arc<ReflectorStats>,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestReflector {
    async fn start(keys: Vec<Key>) -> Self {
        Self::start_on("127.0.0.1:0".parse().expect("addr"), keys).await
    }

    async fn start_on(bind: SocketAddr, keys: Vec<Key>) -> Self {
        let r = UdpReflector::bind(bind, keys)
            .await
            .expect("bind reflector");
        let addr = r.local_addr();
        let stats = r.stats();
        let stop = CancellationToken::new();
        let task = tokio::spawn(r.run(stop.clone()));
        TestReflector {
            addr,
            stats,
            stop,
            task: Some(task),
        }
    }

    fn target(&self) -> Target {
        Target::parse(&format!("udp://{}", self.addr)).expect("target")
    }

    /// The reflector's port at another address (for a reflector on a wildcard address).
    fn target_at(&self, ip: IpAddr) -> Target {
        Target::parse(&format!("udp://{}", SocketAddr::new(ip, self.addr.port()))).expect("target")
    }

    async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(5), t)
                .await
                .expect("reflector stops within 5 s")
                .expect("reflector task");
        }
    }
}

impl Drop for TestReflector {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn spec(key: &str, packets: u32, interval_ms: u64, timeout_ms: u64) -> ProbeSpec {
    ProbeSpec {
        packets,
        packet_interval: Duration::from_millis(interval_ms),
        timeout: Duration::from_millis(timeout_ms),
        key: Key::from_secret(key),
        ..ProbeSpec::default()
    }
}

fn answered_metric() -> u64 {
    meshlat_agent::metrics::get()
        .responder
        .get_or_create(&meshlat_agent::metrics::ResponderLabels {
            protocol: "udp".into(),
            result: "answered".into(),
        })
        .get()
}

/// How long a reflector's counters may take to catch up (scaled by `MESHLAT_TEST_WAIT_SCALE`).
const CATCH_UP: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_probe_gets_every_sample_from_reflector() {
    let r = TestReflector::start(vec![Key::from_secret("s3cret")]).await;
    let answered_before = answered_metric();
    let probe = UdpProbe::new(&spec("s3cret", 20, 1, 2000)).expect("valid spec");
    let start = tokio::time::Instant::now();
    let m = probe.run_once(&r.target()).await;
    // Paced 1 ms apart, not burst: the train takes at least 19 ms (and returns as soon as
    // every reply is in, long before the 2 s timeout).
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(19) && took < Duration::from_millis(1900),
        "train took {took:?}"
    );
    assert_eq!(m.outcome, Outcome::Ok, "{m:?}");
    assert_eq!(m.data.remote_addr, Some(r.addr));
    let t = m.data.train.expect("train stats");
    eprintln!(
        "figures udp_probe_train took_ms={:.1} rtt_max_ms={:.3}",
        took.as_secs_f64() * 1e3,
        t.rtts_ms.iter().copied().fold(0.0, f64::max)
    );
    assert_eq!((t.sent, t.samples, t.lost()), (20, 20, 0));
    assert_eq!((t.duplicates, t.late), (0, 0));
    assert_eq!(t.rtts_ms.len(), 20);
    for rtt in &t.rtts_ms {
        assert!(*rtt > 0.0 && *rtt < 100.0, "loopback rtt {rtt} ms");
    }
    let offset = t.clock_offset_ms.expect("offset");
    assert!(
        offset.abs() < 50.0,
        "same host, same clock: offset {offset} ms"
    );
    assert!(t.jitter_ms.is_some());
    // Counted once the reply's send call returns: possibly just after the prober got it.
    assert!(eventually_async(CATCH_UP, || r.stats.answered() == 20).await);
    // Process-wide Prometheus counter (other tests may add to it concurrently).
    assert!(answered_metric() >= answered_before + 20);
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_large_packets_are_reflected_at_the_same_size() {
    let r = TestReflector::start(vec![Key::from_secret("k")]).await;
    let s = ProbeSpec {
        payload_bytes: MAX_PACKET_BYTES,
        ..spec("k", 5, 2, 2000)
    };
    let m = UdpProbe::new(&s)
        .expect("valid")
        .run_once(&r.target())
        .await;
    assert_eq!(m.outcome, Outcome::Ok, "{m:?}");
    assert_eq!(m.data.train.map(|t| t.samples), Some(5));
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_wrong_key_gets_no_reply_and_counts_auth() {
    let r = TestReflector::start(vec![Key::from_secret("right")]).await;
    let probe = UdpProbe::new(&spec("wrong", 3, 1, 300)).expect("valid spec");
    let m = probe.run_once(&r.target()).await;
    match &m.outcome {
        Outcome::Failed { kind, .. } => {
            assert!(
                matches!(kind, ErrorKind::Timeout | ErrorKind::Auth),
                "{kind:?}"
            )
        }
        Outcome::Ok => panic!("wrong key measured ok: {m:?}"),
    }
    let t = m.data.train.expect("train stats");
    assert_eq!((t.sent, t.samples), (3, 0));
    assert!(eventually_async(CATCH_UP, || r.stats.dropped(DropReason::Auth) == 3).await);
    assert_eq!(r.stats.answered(), 0);
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_junk_is_dropped_while_real_probe_succeeds() {
    let key = Key::from_secret("k");
    let r = TestReflector::start(vec![key.clone()]).await;
    let addr = r.addr;

    // A well-formed request under the right key, to derive forgeries from.
    let wk = WireKey::new(&key);
    let mut good = vec![0u8; MIN_PACKET_BYTES];
    wire::encode(&Header::request(wk.id, 1, 0, 1, 0), &wk, &mut good).expect("valid size");
    let mut bad_mac = good.clone();
    bad_mac[40] ^= 0x80;
    let mut reply_type = good.clone();
    wire::stamp_reply(&mut reply_type, &wk, 2, 0, || 3).expect("valid size");
    let mut bad_version = good.clone();
    bad_version[4] = 99;
    let junk: Vec<Vec<u8>> = vec![
        (0..200u32).map(|i| (i * 31 % 251) as u8).collect(), // random-ish bytes
        good[..MIN_PACKET_BYTES - 1].to_vec(),               // truncated
        vec![0u8; 4000],                                     // oversize
        bad_mac,                                             // right magic, wrong HMAC
        reply_type,                                          // a reply, not a request
        bad_version,
        Vec::new(),
    ];

    let blaster = UdpSocket::bind("127.0.0.1:0").expect("bind");
    blaster
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let stop = CancellationToken::new();
    let flood = {
        let stop = stop.clone();
        let blaster = blaster.try_clone().expect("clone");
        let junk = junk.clone();
        tokio::task::spawn_blocking(move || {
            let mut n = 0u64;
            while !stop.is_cancelled() {
                for j in &junk {
                    let _ = blaster.send_to(j, addr);
                    n += 1;
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            n
        })
    };

    let probe = UdpProbe::new(&spec("k", 30, 1, 2000)).expect("valid spec");
    let m = probe.run_once(&r.target()).await;
    stop.cancel();
    let sent_junk = flood.await.expect("flood task");
    assert_eq!(m.outcome, Outcome::Ok, "{m:?}");
    let t = m.data.train.expect("train stats");
    assert_eq!((t.sent, t.samples), (30, 30));

    // The junk sender never got anything back.
    let mut buf = [0u8; 2048];
    assert!(
        blaster.recv_from(&mut buf).is_err(),
        "reflector answered junk"
    );
    assert!(sent_junk > 0);
    let s = &r.stats;
    assert!(eventually_async(CATCH_UP, || s.dropped(DropReason::Auth) > 0).await);
    for reason in [
        DropReason::Malformed,
        DropReason::Oversize,
        DropReason::Version,
        DropReason::Type,
    ] {
        assert!(s.dropped(reason) > 0, "{reason:?} not counted");
    }
    assert!(
        eventually_async(CATCH_UP, || s.answered() == 30).await,
        "only the real probe was answered: {}",
        s.answered()
    );
    r.shutdown().await;
}

#[tokio::test]
async fn udp_no_listener_is_refused() {
    // Bind and close a socket to get a port with (almost certainly) no listener.
    let port = UdpSocket::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let target = Target::parse(&format!("udp://127.0.0.1:{port}")).expect("target");
    let start = tokio::time::Instant::now();
    let m = UdpProbe::new(&spec("k", 1, 1, 5000))
        .expect("valid spec")
        .run_once(&target)
        .await;
    match &m.outcome {
        Outcome::Failed { kind, .. } => assert_eq!(*kind, ErrorKind::Refused, "{m:?}"),
        Outcome::Ok => panic!("measured ok without a listener"),
    }
    // The ICMP error ends the train; it does not wait out the 5 s timeout.
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn udp_unresolvable_name_is_dns() {
    let target = Target::parse("udp://nonexistent.invalid:9").expect("target");
    let m = UdpProbe::new(&spec("k", 1, 1, 500))
        .expect("valid spec")
        .run_once(&target)
        .await;
    match &m.outcome {
        Outcome::Failed { kind, .. } => assert_eq!(*kind, ErrorKind::Dns, "{m:?}"),
        Outcome::Ok => panic!("resolved an .invalid name"),
    }
    assert!(m.data.train.is_none());
}

/// Runs one train to every address in `ips` at `r`'s port; every sample must come back (the
/// prober's socket is connected, so a reply from any other source address would be ignored).
async fn probe_each(r: &TestReflector, ips: &[IpAddr]) {
    for ip in ips {
        let probe = UdpProbe::new(&spec("k", 5, 1, 1000)).expect("valid spec");
        let m = probe.run_once(&r.target_at(*ip)).await;
        assert_eq!(m.outcome, Outcome::Ok, "{ip}: {m:?}");
        let t = m.data.train.expect("train stats");
        assert_eq!((t.sent, t.samples), (5, 5), "{ip}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_reflector_answers_from_the_address_it_was_asked_on() {
    let r = TestReflector::start_on(
        "0.0.0.0:0".parse().expect("addr"),
        vec![Key::from_secret("k")],
    )
    .await;
    // All loopback (127.0.0.0/8 is local on Linux), none the kernel's default source but the
    // first.
    let ips = [
        Ipv4Addr::new(127, 0, 0, 1),
        Ipv4Addr::new(127, 0, 0, 2),
        Ipv4Addr::new(127, 0, 0, 77),
    ]
    .map(IpAddr::V4);
    probe_each(&r, &ips).await;
    assert!(eventually_async(CATCH_UP, || r.stats.answered() == 15).await);

    // The source address seen by an unconnected socket, too.
    let key = WireKey::new(&Key::from_secret("k"));
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let mut req = vec![0u8; MIN_PACKET_BYTES];
    wire::encode(&Header::request(key.id, 1, 0, 1, 0), &key, &mut req).expect("valid size");
    let to = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 77)), r.addr.port());
    sock.send_to(&req, to).expect("send");
    let mut buf = [0u8; 2048];
    let (n, from) = sock.recv_from(&mut buf).expect("reply");
    assert_eq!(
        from, to,
        "reply must come from the address the request was sent to"
    );
    assert_eq!(n, req.len());
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_reflector_answers_from_the_address_it_was_asked_on_v6() {
    if UdpSocket::bind("[::1]:0").is_err() {
        eprintln!("skipped: no IPv6 loopback here");
        return;
    }
    let r =
        TestReflector::start_on("[::]:0".parse().expect("addr"), vec![Key::from_secret("k")]).await;
    let mut ips = vec![IpAddr::V6(Ipv6Addr::LOCALHOST)];
    // A dual-stack socket (the Linux default) also answers IPv4, from the address asked on.
    let dual =
        std::fs::read_to_string("/proc/sys/net/ipv6/bindv6only").is_ok_and(|s| s.trim() == "0");
    if dual {
        ips.push(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 77)));
    }
    probe_each(&r, &ips).await;
    // Counted after the send returns, so possibly just after the prober has its reply.
    let want = 5 * ips.len() as u64;
    assert!(eventually_async(CATCH_UP, || r.stats.answered() == want).await);
    r.shutdown().await;
}

/// Request size of packet `seq` in [`burst_round_trip`]: mixed sizes in the first burst, one
/// size after (so replies to one sender can be coalesced into one GSO send).
fn burst_len(seq: u32) -> usize {
    if seq < 100 {
        MIN_PACKET_BYTES + (seq as usize * 7) % 300
    } else {
        MIN_PACKET_BYTES + 100
    }
}

/// Bursts over one batch (64) to a reflector bound to `bind`, sent to `dest` at its port, with
/// junk in between: every request is answered from `dest`, at its own size with its own stamps,
/// the junk is counted, nothing else comes back. Bursts of 100, so the replies fit the socket's
/// default receive buffer.
async fn burst_round_trip(bind: &str, dest: IpAddr) {
    let r = TestReflector::start_on(bind.parse().expect("addr"), vec![Key::from_secret("k")]).await;
    let key = WireKey::new(&Key::from_secret("k"));
    let to = SocketAddr::new(dest, r.addr.port());
    let sock = UdpSocket::bind(SocketAddr::new(
        if dest.is_ipv4() {
            Ipv4Addr::LOCALHOST.into()
        } else {
            Ipv6Addr::LOCALHOST.into()
        },
        0,
    ))
    .expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    const N: u32 = 300;
    let mut seen = vec![false; N as usize];
    let mut buf = [0u8; 2048];
    for burst in 0..N / 100 {
        for seq in burst * 100..(burst + 1) * 100 {
            let mut req = vec![0u8; burst_len(seq)];
            wire::encode(
                &Header::request(key.id, 5, seq, u64::from(seq), 0),
                &key,
                &mut req,
            )
            .expect("valid size");
            sock.send_to(&req, to).expect("send");
            if seq % 10 == 0 {
                sock.send_to(&[1u8; 50], to).expect("send junk");
            }
        }
        for _ in 0..100 {
            let (n, from) = sock.recv_from(&mut buf).expect("reply");
            assert_eq!(from, to, "answered from the address asked on");
            let h = wire::decode(&buf[..n], std::slice::from_ref(&key)).expect("reply verifies");
            assert_eq!(h.msg_type, MessageType::Reply);
            assert_eq!(n, burst_len(h.seq), "same size as asked");
            assert!(h.t2 > 0 && h.t3 >= h.t2, "t2 {} t3 {}", h.t2, h.t3);
            assert!(
                h.t3 - h.t2 < 1_000_000_000,
                "reflector time {} ns",
                h.t3 - h.t2
            );
            let slot = &mut seen[h.seq as usize];
            assert!(!*slot, "duplicate reply {}", h.seq);
            *slot = true;
        }
    }
    assert!(seen.iter().all(|s| *s));
    assert!(
        eventually_async(CATCH_UP, || r.stats.dropped(DropReason::Malformed)
            == u64::from(N / 10))
        .await
    );
    assert!(eventually_async(CATCH_UP, || r.stats.answered() == u64::from(N)).await);
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_reflector_answers_bursts_per_packet() {
    burst_round_trip("127.0.0.1:0", Ipv4Addr::LOCALHOST.into()).await;
    // Batched, coalesced replies from a wildcard socket still leave from the address asked on.
    burst_round_trip("0.0.0.0:0", Ipv4Addr::new(127, 0, 0, 77).into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_reflector_answers_bursts_per_packet_v6() {
    if UdpSocket::bind("[::1]:0").is_err() {
        eprintln!("skipped: no IPv6 loopback here");
        return;
    }
    burst_round_trip("[::]:0", Ipv6Addr::LOCALHOST.into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_reflector_stops_promptly_while_busy() {
    let r = TestReflector::start(vec![Key::from_secret("k")]).await;
    let addr = r.addr;
    // A steady trickle (every 5 ms, well under the 50 ms receive timeout) so the reflector never
    // idles out of its receive call.
    let stop = CancellationToken::new();
    let trickle = {
        let stop = stop.clone();
        tokio::task::spawn_blocking(move || {
            let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
            while !stop.is_cancelled() {
                let _ = s.send_to(&[0u8; 200], addr);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    assert!(eventually_async(CATCH_UP, || r.stats.dropped(DropReason::Malformed) > 5).await);
    let start = tokio::time::Instant::now();
    r.shutdown().await;
    let took = start.elapsed();
    stop.cancel();
    trickle.await.expect("trickle");
    eprintln!(
        "figures udp_reflector_shutdown took_ms={:.1}",
        took.as_secs_f64() * 1e3
    );
    // Within SHUTDOWN_POLL (50 ms) in principle; a cap of ten times that for a loaded machine.
    assert!(took < Duration::from_millis(500), "shutdown took {took:?}");
}
