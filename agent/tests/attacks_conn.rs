//! Connection exhaustion against the real `agent serve` process (issue 10, item 5): idle and
//! slowloris connections to the HTTP responder and the stats server are closed within the
//! configured (shortened) deadlines while both keep answering; over the per-address cap a
//! connection is closed at once; the stats server binds the `--listen` address, not 0.0.0.0.
//! Attackers connect from 127.0.0.2, honest clients from 127.0.0.1. Every test prints figures.

use std::io::BufRead;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

mod support;
use support::Proto;

const HONEST: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const ATTACKER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

struct Agent {
    child: Child,
    http: SocketAddr,
    stats: SocketAddr,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `agent serve` with only the HTTP responder and the stats server, and `extra` flags.
async fn start(extra: &[&str]) -> Result<Agent> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_agent"))
        .args(["serve", "--listen", "127.0.0.1"])
        .args(support::responders_off_except(&[Proto::Http]))
        .args(["--http-port", "0", "-s", "0"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("spawn agent")?;
    let stdout = child.stdout.take().context("stdout")?;
    // The announcement lines, read on a thread (std pipes block); then the rest is drained.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                // Nobody listens any more: keep draining so the agent never blocks on stdout.
                continue;
            }
        }
    });
    let (mut http, mut stats) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(20);
    while http.is_none() || stats.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .map_err(|_| anyhow!("agent did not announce itself (or exited early)"))?;
        let mut w = line.split_whitespace();
        match (w.next(), w.next(), w.next()) {
            (Some("listening"), Some("http"), Some(a)) => http = Some(a.parse()?),
            (Some("listening"), Some("stats"), Some(a)) => stats = Some(a.parse()?),
            _ => {}
        }
    }
    Ok(Agent {
        child,
        http: http.context("http")?,
        stats: stats.context("stats")?,
    })
}

async fn connect_from(from: IpAddr, addr: SocketAddr) -> Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::new(from, 0))?;
    Ok(s.connect(addr).await?)
}

/// One `GET path` on a fresh connection from 127.0.0.1: the status line.
async fn get(addr: SocketAddr, path: &str) -> Result<String> {
    let mut s = connect_from(HONEST, addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await??;
    let text = String::from_utf8_lossy(&out);
    Ok(text.lines().next().unwrap_or("").to_string())
}

/// Reads until the server closes; the time that took, or `None` after `limit`.
async fn closed_after(
    mut s: impl AsyncRead + Unpin,
    start: Instant,
    limit: Duration,
) -> Option<Duration> {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(start + limit, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// Sends a request head one byte a second until the server closes.
async fn slowloris(s: TcpStream, start: Instant, limit: Duration) -> Option<Duration> {
    let (r, mut w) = s.into_split();
    let trickle = async move {
        for b in
            b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".iter()
        {
            if w.write_all(std::slice::from_ref(b)).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        std::future::pending::<()>().await;
    };
    tokio::select! {
        c = closed_after(r, start, limit) => c,
        () = trickle => None,
    }
}

fn summary(v: &[Option<Duration>]) -> (f64, f64, f64, usize) {
    let mut c: Vec<f64> = v.iter().flatten().map(Duration::as_secs_f64).collect();
    c.sort_by(f64::total_cmp);
    let open = v.len() - c.len();
    if c.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN, open);
    }
    (c[0], c[c.len() / 2], c[c.len() - 1], open)
}

async fn join(v: Vec<tokio::task::JoinHandle<Option<Duration>>>) -> Vec<Option<Duration>> {
    let mut r = Vec::new();
    for h in v {
        r.push(h.await.unwrap_or(None));
    }
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_and_slowloris_connections_to_http_and_stats_close_in_time_while_both_answer()
-> Result<()> {
    let agent = start(&[
        "--header-timeout",
        "2",
        "--idle-timeout",
        "6",
        "--max-conns-per-ip",
        "1000",
    ])
    .await?;
    let limit = Duration::from_secs(15);
    let mut tasks: Vec<(&str, Vec<tokio::task::JoinHandle<Option<Duration>>>)> = Vec::new();
    for (name, addr, n) in [("http", agent.http, 150), ("stats", agent.stats, 50)] {
        let mut idle = Vec::new();
        let mut slow = Vec::new();
        for _ in 0..n {
            let s = connect_from(ATTACKER, addr).await?;
            idle.push(tokio::spawn(closed_after(s, Instant::now(), limit)));
            let s = connect_from(ATTACKER, addr).await?;
            slow.push(tokio::spawn(slowloris(s, Instant::now(), limit)));
        }
        tasks.push((
            if name == "http" {
                "http idle"
            } else {
                "stats idle"
            },
            idle,
        ));
        tasks.push((
            if name == "http" {
                "http slowloris"
            } else {
                "stats slowloris"
            },
            slow,
        ));
    }
    // Both answer while 400 hostile connections are open.
    let ping = get(agent.http, "/ping").await?;
    let health = get(agent.stats, "/health").await?;
    println!("during the attack: /ping -> {ping:?}, stats /health -> {health:?}");
    assert!(ping.contains("200") && health.contains("200"));
    for (name, t) in tasks {
        let r = join(t).await;
        let (min, med, max, open) = summary(&r);
        println!(
            "{name} (header timeout 2 s): {} connections, closed min {min:.2} median {med:.2} max {max:.2} s, still open {open}",
            r.len()
        );
        assert_eq!(open, 0, "{name}: every connection must be closed");
        assert!(min >= 1.8 && max <= 2.0 + 4.0, "{name}: {min}..{max}");
    }
    assert!(get(agent.http, "/ping").await?.contains("200"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_the_per_address_cap_connections_close_at_once_and_others_are_served() -> Result<()> {
    let agent = start(&["--max-conns-per-ip", "20", "--header-timeout", "30"]).await?;
    let limit = Duration::from_secs(3);
    for (name, addr) in [("http", agent.http), ("stats", agent.stats)] {
        let mut v = Vec::new();
        for _ in 0..50 {
            let s = connect_from(ATTACKER, addr).await?;
            v.push(tokio::spawn(closed_after(s, Instant::now(), limit)));
        }
        // Another address is still served while 127.0.0.2 is at its cap.
        let path = if name == "http" { "/ping" } else { "/health" };
        let status = get(addr, path).await?;
        let r = join(v).await;
        let held = r.iter().filter(|d| d.is_none()).count();
        let fast: Vec<Option<Duration>> = r.iter().copied().filter(|d| d.is_some()).collect();
        let (_, med, max, _) = summary(&fast);
        println!(
            "{name}: 50 connections from 127.0.0.2 with a cap of 20: {held} held, {} closed (median {med:.3} s, max {max:.3} s); {path} from 127.0.0.1 -> {status:?}",
            fast.len()
        );
        assert_eq!((held, fast.len()), (20, 30));
        assert!(max < 1.0, "over-cap connections close at once: {max}");
        assert!(status.contains("200"), "{status}");
    }
    Ok(())
}

#[tokio::test]
async fn stats_server_binds_the_listen_address() -> Result<()> {
    let agent = start(&[]).await?;
    println!("--listen 127.0.0.1: stats on {}", agent.stats);
    assert_eq!(agent.stats.ip(), HONEST, "not 0.0.0.0");
    // Bound to 127.0.0.1 only: 127.0.0.2 (also loopback) is not served.
    let other = SocketAddr::new(ATTACKER, agent.stats.port());
    assert!(
        TcpStream::connect(other).await.is_err(),
        "{other} must refuse"
    );
    assert!(get(agent.stats, "/health").await?.contains("200"));
    Ok(())
}
