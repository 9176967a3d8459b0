//! TCP prober against real loopback sockets: connect time (the kernel's, checked against a
//! blocking `connect()`), refusal and timeout.

use std::net::SocketAddr;
use std::time::Duration;

use meshlat_agent::probe::tcp::TcpProbe;
use meshlat_agent::probe::{Measurement, Outcome, ProbeSpec};
use meshlat_agent::respond::tcp::TcpResponder;
use meshlat_agent::target::Target;
use meshlat_proto::record::{ErrorKind, Protocol, Record, TcpTimeSource};
use tokio_util::sync::CancellationToken;

async fn probe(addr: SocketAddr, timeout: Duration) -> anyhow::Result<Measurement> {
    let spec = ProbeSpec {
        protocol: Protocol::Tcp,
        timeout,
        ..ProbeSpec::default()
    };
    let target = Target::parse(&format!("tcp://{addr}"))?;
    Ok(TcpProbe::new(&spec)?.run_once(&target).await)
}

fn answered_count() -> u64 {
    let text = meshlat_agent::metrics::get().encode();
    text.lines()
        .find(|l| {
            l.starts_with("meshlat_responder_requests_total{")
                && l.contains("protocol=\"tcp\"")
                && l.contains("result=\"answered\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Interleaved samples compared.
const SAMPLES: usize = 50;
/// How far the probe's median may sit above the blocking connect's: 5 µs. The kernel's figure
/// is a span inside a connect (SYN sent → SYN-ACK processed, all in the connecting thread's
/// softirq on loopback, so a busy core cannot stretch it) and a blocking connect adds the
/// syscall's own work and a wake-up, so it sits well below (median 5 µs against 19 µs when
/// this was written). A figure carrying the runtime's wake-up (as `tcp_ms` did before: 0.056–
/// 0.064 ms against 0.022–0.044 ms in this test) fails.
const TOLERANCE_MS: f64 = 0.005;

/// `tcp_ms` comes from the kernel and is no more than a blocking `connect()` to the same
/// responder, timed on the process clock around the call, interleaved sample by sample.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_time_is_the_kernels_and_not_above_a_blocking_connect() -> anyhow::Result<()> {
    use meshlat_agent::clock::{Clock, ns_to_ms};

    let responder = TcpResponder::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let addr = responder.local_addr();
    let stop = CancellationToken::new();
    let served = tokio::spawn(responder.run(stop.clone()));

    let mut probe_ms = Vec::with_capacity(SAMPLES);
    let mut blocking_ms = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let m = probe(addr, Duration::from_secs(2)).await?;
        assert_eq!(m.outcome, Outcome::Ok, "{m:?}");
        assert_eq!(m.data.tcp_time_source, Some(TcpTimeSource::Kernel), "{m:?}");
        let mut rec = Record::default();
        m.fill(&mut rec);
        assert_eq!(rec.tcp_time_source, Some(TcpTimeSource::Kernel));
        probe_ms.push(m.data.tcp_ms.unwrap_or(f64::INFINITY));

        blocking_ms.push(
            tokio::task::spawn_blocking(move || -> std::io::Result<f64> {
                let t0 = Clock::now_ns();
                let s = std::net::TcpStream::connect(addr)?;
                let t1 = Clock::now_ns();
                drop(s);
                Ok(ns_to_ms(t1.saturating_sub(t0) as i64))
            })
            .await??,
        );
    }
    stop.cancel();
    served.await?;

    let (p, b) = (median(&mut probe_ms), median(&mut blocking_ms));
    eprintln!(
        "median of {SAMPLES}: probe tcp_ms {p:.3} ms, blocking connect {b:.3} ms (min {:.3} / {:.3})",
        probe_ms[0], blocking_ms[0]
    );
    assert!(
        p <= b + TOLERANCE_MS,
        "probe median {p:.3} ms is above the blocking connect's {b:.3} ms + {TOLERANCE_MS} ms\n\
         probe: {probe_ms:?}\nblocking: {blocking_ms:?}"
    );
    Ok(())
}

#[tokio::test]
async fn connects_to_the_responder() -> anyhow::Result<()> {
    let responder = TcpResponder::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let addr = responder.local_addr();
    let stop = CancellationToken::new();
    let served = tokio::spawn(responder.run(stop.clone()));

    let m = probe(addr, Duration::from_secs(2)).await?;
    assert_eq!(m.outcome, Outcome::Ok, "{m:?}");
    assert_eq!(m.data.remote_addr, Some(addr));
    let tcp_ms = m.data.tcp_ms.unwrap_or(0.0);
    assert!(tcp_ms > 0.0 && tcp_ms < 1000.0, "{m:?}");
    // The record carries tcp_ms, and rtt_ms = tcp_ms (DESIGN §5).
    let mut rec = Record::default();
    m.fill(&mut rec);
    assert!(rec.ok);
    assert_eq!(rec.tcp_ms, rec.rtt_ms);
    assert_eq!(rec.tcp_time_source, m.data.tcp_time_source);
    assert!(rec.tcp_time_source.is_some());

    // The responder counts the connection once it has accepted it (just after our connect).
    let mut tries = 0;
    while answered_count() < 1 && tries < 100 {
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
        tries += 1;
    }
    assert!(answered_count() >= 1, "answered not counted");

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(2), served).await??;
    Ok(())
}

#[tokio::test]
async fn closed_port_is_refused() -> anyhow::Result<()> {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let m = probe(addr, Duration::from_secs(2)).await?;
    match &m.outcome {
        Outcome::Failed { kind, detail } => {
            assert_eq!(*kind, ErrorKind::Refused, "{detail}");
            assert!(detail.contains(&addr.to_string()), "{detail}");
        }
        Outcome::Ok => panic!("connected to a closed port: {m:?}"),
    }
    assert_eq!(m.data.tcp_ms, None);
    Ok(())
}

/// A listener with a backlog of 0 that never accepts, and the connections that filled its
/// accept queue. Once the queue is full, Linux drops further SYNs (the client retransmits after
/// 1 s, then 2 s, ...): a connect to it hangs until the queue has room again.
async fn full_listener() -> anyhow::Result<(socket2::Socket, SocketAddr, Vec<tokio::net::TcpStream>)>
{
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    sock.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
    sock.listen(0)?;
    let addr = sock
        .local_addr()?
        .as_socket()
        .ok_or_else(|| anyhow::anyhow!("not an inet address"))?;

    // Fill the accept queue: connect until one connect no longer completes promptly.
    let mut held = Vec::new();
    let mut full = false;
    for _ in 0..16 {
        match tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            Ok(conn) => held.push(conn?),
            Err(_) => {
                full = true;
                break;
            }
        }
    }
    assert!(
        full,
        "accept queue never filled after {} connects",
        held.len()
    );
    Ok((sock, addr, held))
}

/// A connect that never completes, on loopback only: see [`full_listener`].
#[tokio::test]
async fn unanswered_connect_times_out() -> anyhow::Result<()> {
    let (sock, addr, _held) = full_listener().await?;

    let m = probe(addr, Duration::from_millis(300)).await?;
    match &m.outcome {
        Outcome::Failed { kind, detail } => {
            assert_eq!(*kind, ErrorKind::Timeout, "{detail}");
            assert!(detail.contains("connect"), "{detail}");
        }
        Outcome::Ok => panic!("connected through a full accept queue: {m:?}"),
    }
    assert_eq!(m.data.tcp_ms, None);
    drop(sock);
    Ok(())
}

/// `TcpExt: ListenOverflows` from `/proc/net/netstat`: SYNs dropped (in this network namespace)
/// because an accept queue was full.
#[cfg(target_os = "linux")]
fn listen_overflows() -> anyhow::Result<u64> {
    use anyhow::Context as _;
    let text = std::fs::read_to_string("/proc/net/netstat")?;
    let mut lines = text.lines();
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        if names.starts_with("TcpExt:") {
            let i = names
                .split_whitespace()
                .position(|f| f == "ListenOverflows")
                .context("no ListenOverflows in /proc/net/netstat")?;
            return Ok(values
                .split_whitespace()
                .nth(i)
                .context("short TcpExt line")?
                .parse()?);
        }
    }
    anyhow::bail!("no TcpExt lines in /proc/net/netstat")
}

/// A handshake whose SYN was retransmitted has no kernel figure (the kernel takes no RTT sample
/// from a retransmitted SYN, and the real handshake includes the 1 s retransmission timeout):
/// the record keeps the process clock's figure and says `user`. The first SYN is dropped by a
/// full accept queue ([`full_listener`]); once the kernel has counted that drop, the queue is
/// drained so that the retransmission, 1 s later, is answered.
///
/// Other sockets overflowing their queues at the same moment (another test) move the same
/// counter; then the probe's SYN may get through at once, and the attempt is repeated.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_retransmitted_syn_falls_back_to_the_user_space_figure() -> anyhow::Result<()> {
    const ATTEMPTS: u32 = 5;
    for attempt in 1..=ATTEMPTS {
        let (sock, addr, held) = full_listener().await?;
        let before = listen_overflows()?;
        // Timed around the whole sample: whether a retransmission happened is not taken from
        // the figure under test (a kernel figure after a retransmitted SYN reads about 1 ms).
        let probing = tokio::spawn(async move {
            let t0 = meshlat_agent::clock::Clock::now_ns();
            let m = probe(addr, Duration::from_secs(5)).await;
            (m, meshlat_agent::clock::Clock::now_ns().saturating_sub(t0))
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while listen_overflows()? == before {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the probe's SYN was never dropped"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // Make room: accept (and close) what filled the queue.
        sock.set_nonblocking(true)?;
        while let Ok((conn, _)) = sock.accept() {
            drop(conn);
        }
        drop(held);

        let (m, elapsed_ns) = probing.await?;
        let m = m?;
        assert_eq!(m.outcome, Outcome::Ok, "{m:?}");
        if elapsed_ns < 500_000_000 {
            eprintln!(
                "attempt {attempt}: the SYN got through at once ({elapsed_ns} ns; another drop \
                 moved the counter); again"
            );
            continue;
        }
        let ms = m.data.tcp_ms.unwrap_or(0.0);
        assert_eq!(m.data.tcp_time_source, Some(TcpTimeSource::User), "{m:?}");
        assert!(ms >= 900.0, "a retransmitted SYN takes the 1 s RTO: {m:?}");
        let mut rec = Record::default();
        m.fill(&mut rec);
        assert_eq!(rec.tcp_time_source, Some(TcpTimeSource::User));
        assert_eq!(rec.rtt_ms, rec.tcp_ms);
        return Ok(());
    }
    anyhow::bail!("in {ATTEMPTS} attempts the probe's SYN was never dropped and retransmitted")
}
