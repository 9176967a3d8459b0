//! Anonymous connection exhaustion (issue 10, item 5), against the real `controller` binary on
//! loopback: idle and slowloris connections are closed within the configured (shortened)
//! deadlines while `controller health` keeps answering; under `ulimit -n 64` the caps keep the
//! process below its descriptor limit and over-cap connections are closed at once; the operator
//! API's rate limit answers `429` + `Retry-After` (REST) and `RESOURCE_EXHAUSTED` (gRPC) and
//! recovers. Attackers connect from 127.0.0.2, honest clients from 127.0.0.1, so per-address
//! caps can be told apart from total caps. Every test prints its figures.

mod support;
use support::tmp_dir;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::process::{Child, Command};
use tokio::time::Instant;

struct Ctl {
    _child: Child,
    data: PathBuf,
    grpc: SocketAddr,
    rest: SocketAddr,
    credential: String,
    stderr: Arc<std::sync::Mutex<String>>,
}

/// Starts `controller serve` on loopback with `extra` flags, optionally under `prlimit`
/// (`nofile`), and reads its announcements.
async fn start(name: &str, extra: &[&str], nofile: Option<u64>) -> Result<Ctl> {
    let data = tmp_dir("attacks-conn", name);
    let bin = env!("CARGO_BIN_EXE_controller");
    let mut cmd = match nofile {
        Some(n) => {
            let mut c = Command::new("prlimit");
            c.arg(format!("--nofile={n}:{n}")).arg("--").arg(bin);
            c
        }
        None => Command::new(bin),
    };
    let mut child = cmd
        .args([
            "serve",
            "--region",
            "r1",
            "--listen",
            "127.0.0.1:0",
            "--rest-listen",
            "127.0.0.1:0",
            // This suite reads the generated operator credential from stdout.
            "--print-secrets",
        ])
        .args(extra)
        .arg("--data-dir")
        .arg(&data)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("spawn controller")?;
    let stderr = Arc::new(std::sync::Mutex::new(String::new()));
    let err = child.stderr.take().context("stderr")?;
    let log = stderr.clone();
    tokio::spawn(async move {
        let mut lines = BufReader::new(err).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            if let Ok(mut s) = log.lock() {
                s.push_str(&l);
                s.push('\n');
            }
        }
    });
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let (mut g, mut r, mut c) = (None, None, None);
    let deadline = Instant::now() + Duration::from_secs(30);
    while g.is_none() || r.is_none() || c.is_none() {
        let line = tokio::time::timeout_at(deadline, lines.next_line())
            .await
            .context("controller did not announce itself")??
            .ok_or_else(|| {
                anyhow!(
                    "controller exited early: {}",
                    stderr.lock().map(|s| s.clone()).unwrap_or_default()
                )
            })?;
        let mut w = line.split_whitespace();
        match (w.next(), w.next(), w.next()) {
            (Some("listening"), Some("grpc"), Some(a)) => g = Some(a.parse()?),
            (Some("listening"), Some("rest"), Some(a)) => r = Some(a.parse()?),
            (Some("operator-credential"), Some(x), _) => c = Some(x.to_string()),
            _ => {}
        }
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(Ctl {
        _child: child,
        data,
        grpc: g.context("grpc")?,
        rest: r.context("rest")?,
        credential: c.context("credential")?,
        stderr,
    })
}

impl Ctl {
    /// `controller health` against this controller: its exit success and stdout.
    async fn health(&self) -> Result<(bool, String)> {
        let out = Command::new(env!("CARGO_BIN_EXE_controller"))
            .args(["health", "--timeout", "3", "--url"])
            .arg(format!("https://{}", self.grpc))
            .arg("--data-dir")
            .arg(&self.data)
            .output()
            .await?;
        Ok((
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ))
    }

    /// A TLS stream to `addr` from `from`, trusting the controller's CA, offering `alpn`.
    async fn tls(
        &self,
        from: IpAddr,
        addr: SocketAddr,
        alpn: &[u8],
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
        use rustls::pki_types::pem::PemObject;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::CertificateDer::pem_file_iter(self.data.join("ca.pem"))? {
            roots.add(c?)?;
        }
        let mut cfg = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![alpn.to_vec()];
        let tcp = connect_from(from, addr).await?;
        Ok(tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(rustls::pki_types::ServerName::try_from("127.0.0.1")?, tcp)
            .await?)
    }

    /// One REST request from `from` on a fresh TLS connection: status, headers, body.
    async fn rest(
        &self,
        from: IpAddr,
        path: &str,
        cred: Option<&str>,
    ) -> Result<(u16, http::HeaderMap, String)> {
        use http_body_util::{BodyExt, Full};
        let tls = self.tls(from, self.rest, b"http/1.1").await?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        let mut req = http::Request::builder()
            .uri(path)
            .header("host", "127.0.0.1");
        if let Some(c) = cred {
            req = req.header("authorization", format!("Bearer {c}"));
        }
        let res = send
            .send_request(req.body(Full::new(bytes::Bytes::new()))?)
            .await?;
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let body = res.into_body().collect().await?.to_bytes();
        Ok((status, headers, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// A TCP connection to `addr` from source address `from`.
async fn connect_from(from: IpAddr, addr: SocketAddr) -> Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::new(from, 0))?;
    Ok(s.connect(addr).await?)
}

const HONEST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));
const ATTACKER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

/// Reads (discarding) until the server closes the stream; the time that took, or `None` if it
/// stayed open for `limit`.
async fn closed_after(
    mut s: impl AsyncRead + Unpin,
    start: Instant,
    limit: Duration,
) -> Option<Duration> {
    let mut buf = [0u8; 4096];
    let deadline = start + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// Sends `text` one byte a second and watches for the close; the time it took.
async fn slowloris(
    s: impl AsyncRead + AsyncWrite + Unpin,
    start: Instant,
    limit: Duration,
) -> Option<Duration> {
    let (r, mut w) = tokio::io::split(s);
    let trickle = async move {
        for b in b"GET /api/v1/agents HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".iter() {
            if w.write_all(std::slice::from_ref(b)).await.is_err() || w.flush().await.is_err() {
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

/// min / median / max in seconds, and how many stayed open.
fn summary(v: &[Option<Duration>]) -> (f64, f64, f64, usize) {
    let mut closed: Vec<f64> = v.iter().flatten().map(Duration::as_secs_f64).collect();
    closed.sort_by(f64::total_cmp);
    let open = v.len() - closed.len();
    if closed.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN, open);
    }
    (
        closed[0],
        closed[closed.len() / 2],
        closed[closed.len() - 1],
        open,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_and_slowloris_connections_are_closed_within_the_timeouts_while_health_answers()
-> Result<()> {
    // Caps high enough that only the deadlines act.
    let ctl = start(
        "deadlines",
        &[
            "--handshake-timeout",
            "2",
            "--header-timeout",
            "3",
            "--idle-timeout",
            "8",
            "--rest-max-conns",
            "2000",
            "--rest-max-conns-per-ip",
            "2000",
        ],
        None,
    )
    .await?;
    let limit = Duration::from_secs(20);
    let t0 = Instant::now();
    // 150 TCP connections to the gRPC port that never start TLS.
    let mut idle = Vec::new();
    for _ in 0..150 {
        let s = connect_from(ATTACKER, ctl.grpc).await?;
        let start = Instant::now();
        idle.push(tokio::spawn(closed_after(s, start, limit)));
    }
    // 150 slowloris REST connections: TLS done, then the request head one byte a second.
    let mut slow = Vec::new();
    for _ in 0..150 {
        let s = ctl.tls(ATTACKER, ctl.rest, b"http/1.1").await?;
        let start = Instant::now();
        slow.push(tokio::spawn(slowloris(s, start, limit)));
    }
    // 20 gRPC connections that finish TLS (h2) and then send nothing: the first request head
    // must arrive within the header timeout, so they go before the idle timeout.
    let mut silent_h2 = Vec::new();
    for _ in 0..20 {
        let s = ctl.tls(ATTACKER, ctl.grpc, b"h2").await?;
        let start = Instant::now();
        silent_h2.push(tokio::spawn(closed_after(s, start, limit)));
    }
    let opened = t0.elapsed();
    // While they are all open, health answers.
    let (ok, out) = ctl.health().await?;
    let health_during = t0.elapsed();
    assert!(
        ok && out.contains("SERVING"),
        "health during the attack: {out}"
    );
    let collect = |v: Vec<tokio::task::JoinHandle<Option<Duration>>>| async move {
        let mut r = Vec::new();
        for h in v {
            r.push(h.await.unwrap_or(None));
        }
        r
    };
    let idle = collect(idle).await;
    let slow = collect(slow).await;
    let silent_h2 = collect(silent_h2).await;
    let (ok_after, out_after) = ctl.health().await?;
    let (i_min, i_med, i_max, i_open) = summary(&idle);
    let (s_min, s_med, s_max, s_open) = summary(&slow);
    let (h_min, h_med, h_max, h_open) = summary(&silent_h2);
    println!(
        "opened 320 connections in {:.2} s; health answered at {:.2} s ({out})\n\
         idle TCP -> gRPC (handshake timeout 2 s): closed min {i_min:.2} median {i_med:.2} max {i_max:.2} s, still open {i_open}/150\n\
         slowloris REST (header timeout 3 s): closed min {s_min:.2} median {s_med:.2} max {s_max:.2} s, still open {s_open}/150\n\
         silent h2 after TLS (header timeout 3 s, idle 8 s): closed min {h_min:.2} median {h_med:.2} max {h_max:.2} s, still open {h_open}/20\n\
         health after: {out_after}",
        opened.as_secs_f64(),
        health_during.as_secs_f64(),
    );
    assert_eq!(
        (i_open, s_open, h_open),
        (0, 0, 0),
        "every connection must be closed"
    );
    // Closed by the deadline (not before it, and not much after: margins cover a loaded machine).
    assert!(i_min >= 1.8 && i_max <= 2.0 + 4.0, "idle: {i_min}..{i_max}");
    assert!(
        s_min >= 2.8 && s_max <= 3.0 + 4.0,
        "slowloris: {s_min}..{s_max}"
    );
    assert!(
        h_min >= 2.8 && h_max <= 3.0 + 4.0,
        "silent h2: {h_min}..{h_max}"
    );
    assert!(ok_after, "health after: {out_after}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_ulimit_64_caps_keep_health_answering_and_over_cap_connections_close_at_once()
-> Result<()> {
    // 64 descriptors; default caps derive from it (gRPC 28, REST 4 in total); attackers from
    // one address get at most 10 gRPC connections.
    let ctl = start("ulimit64", &["--grpc-max-conns-per-ip", "10"], Some(64)).await?;
    let limit = Duration::from_secs(3);
    let mut grpc = Vec::new();
    let mut rest = Vec::new();
    let mut connect_failed = 0;
    for _ in 0..100 {
        match connect_from(ATTACKER, ctl.grpc).await {
            Ok(s) => grpc.push(tokio::spawn(closed_after(s, Instant::now(), limit))),
            Err(_) => connect_failed += 1,
        }
        match connect_from(ATTACKER, ctl.rest).await {
            Ok(s) => rest.push(tokio::spawn(closed_after(s, Instant::now(), limit))),
            Err(_) => connect_failed += 1,
        }
    }
    // With 100 + 100 idle connections made, health (from 127.0.0.1) still answers.
    let t = Instant::now();
    let (ok, out) = ctl.health().await?;
    let health_s = t.elapsed().as_secs_f64();
    let mut g = Vec::new();
    for h in grpc {
        g.push(h.await.unwrap_or(None));
    }
    let mut r = Vec::new();
    for h in rest {
        r.push(h.await.unwrap_or(None));
    }
    let at_once =
        |v: &[Option<Duration>]| v.iter().flatten().filter(|d| d.as_secs_f64() < 1.0).count();
    let (g_fast, g_open) = (at_once(&g), g.iter().filter(|d| d.is_none()).count());
    let (r_fast, r_open) = (at_once(&r), r.iter().filter(|d| d.is_none()).count());
    let (_, g_med, g_max, _) = summary(
        &g.iter()
            .copied()
            .filter(|d| d.is_some_and(|d| d.as_secs_f64() < 1.0))
            .collect::<Vec<_>>(),
    );
    println!(
        "ulimit -n 64: health {} in {health_s:.2} s ({out}); connect failures {connect_failed}\n\
         gRPC: {g_open} held (per-address cap 10), {g_fast} closed at once (median {g_med:.3} s, max {g_max:.3} s)\n\
         REST: {r_open} held (derived total cap 4), {r_fast} closed at once",
        if ok { "answered" } else { "FAILED" },
    );
    let log = ctl.stderr.lock().map(|s| s.clone()).unwrap_or_default();
    assert!(
        ok && out.contains("SERVING"),
        "health under ulimit 64: {out}\n{log}"
    );
    assert_eq!(connect_failed, 0);
    assert_eq!(
        (g_open, g_fast),
        (10, 90),
        "gRPC: 10 held, 90 refused at once"
    );
    assert_eq!(
        (r_open, r_fast),
        (4, 96),
        "REST: 4 held, 96 refused at once"
    );
    assert!(
        !log.contains("Too many open files"),
        "the caps must keep the process below its descriptor limit:\n{log}"
    );
    assert!(
        log.contains("Connections refused or closed early"),
        "refusals are logged:\n{log}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn operator_rate_limit_answers_429_with_retry_after_and_recovers() -> Result<()> {
    let ctl = start(
        "rate",
        &[
            "--rate-limit-per-ip",
            "0.2",
            "--rate-limit-per-credential",
            "0.2",
            "--rate-limit-burst",
            "5",
        ],
        None,
    )
    .await?;
    let cred = ctl.credential.clone();
    let mut codes = Vec::new();
    for _ in 0..5 {
        codes.push(ctl.rest(HONEST, "/api/v1/jobs", Some(&cred)).await?.0);
    }
    let (status, headers, body) = ctl.rest(HONEST, "/api/v1/jobs", Some(&cred)).await?;
    let retry_after: u64 = headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .context("Retry-After")?;
    println!("burst of 5: {codes:?}; 6th: {status} Retry-After {retry_after} {body}");
    assert_eq!(codes, vec![200; 5]);
    assert_eq!(status, 429, "{body}");
    assert!((1..=5).contains(&retry_after), "{retry_after}");
    let v: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(v["error"]["code"], "resource_exhausted", "{body}");
    // The same credential from another address: its own bucket is dry too.
    let (status2, _, body2) = ctl.rest(ATTACKER, "/api/v1/jobs", Some(&cred)).await?;
    println!("same credential from 127.0.0.2: {status2} {body2}");
    assert_eq!(status2, 429);
    assert!(body2.contains("credential"), "{body2}");
    // Another address without that credential is not limited by it (and is refused for the
    // credential, not the rate).
    let (status3, _, _) = ctl
        .rest(ATTACKER, "/api/v1/jobs", Some("op-x:wrong"))
        .await?;
    assert_eq!(status3, 401);
    // gRPC OperatorService shares the buckets: RESOURCE_EXHAUSTED.
    let out = Command::new(env!("CARGO_BIN_EXE_controller"))
        .args(["job", "list", "--controller"])
        .arg(format!("https://{}", ctl.grpc))
        .arg("--credential")
        .arg(&cred)
        .arg("--ca")
        .arg(ctl.data.join("ca.pem"))
        .output()
        .await?;
    let err = String::from_utf8_lossy(&out.stderr);
    println!("gRPC job list while limited: {err}");
    assert!(!out.status.success());
    assert!(
        err.contains("ResourceExhausted") && err.contains("retry after"),
        "{err}"
    );
    // Recovers after Retry-After.
    tokio::time::sleep(Duration::from_secs(retry_after) + Duration::from_millis(100)).await;
    let (status4, _, _) = ctl.rest(HONEST, "/api/v1/jobs", Some(&cred)).await?;
    println!("after {retry_after} s: {status4}");
    assert_eq!(status4, 200);
    Ok(())
}
