//! The controller's test harness, shared by its process-level tests: [`TestController`] and
//! [`TestAgent`] (builders for a controller and an agent as separate processes, killed on drop),
//! [`eventually`] (the one wait, scaled by `MESHLAT_TEST_WAIT_SCALE`), and small helpers (temp
//! directories, a TLS client pinned to a controller's CA, its secrets file).

// Each test file compiles this module on its own and uses only part of it.
#![allow(dead_code)]

mod process;
#[allow(unused_imports)] // likewise
pub use process::{AgentBuilder, ControllerBuilder, TestAgent, TestController};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

/// `MESHLAT_TEST_WAIT_SCALE` (default 1): multiplies every wait, for slow machines.
pub fn wait_scale() -> u32 {
    std::env::var("MESHLAT_TEST_WAIT_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
}

/// Polls `f` every 200 ms until it returns `Some`, or fails after `secs` (scaled by
/// `MESHLAT_TEST_WAIT_SCALE`).
pub async fn eventually<T, F, Fut>(what: &str, secs: u64, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs) * wait_scale();
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {secs} s waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A fresh directory `meshlat-<suite>-<name>-<uuid>` under the temp dir.
pub fn tmp_dir(suite: &str, name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("meshlat-{suite}-{name}-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&d).expect("tmp dir");
    d
}

/// The agent binary next to the controller's (`cargo test --workspace` builds it).
pub fn agent_bin() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_BIN_EXE_controller")).with_file_name("agent");
    assert!(
        p.exists(),
        "{} is missing: build it with `cargo build -p meshlat-agent --bin agent` (cargo test --workspace does)",
        p.display()
    );
    p
}

/// An HTTP/1.1 connection over TLS to a controller's REST address `addr`, trusting only the CA
/// in its data directory `data` (`ca.pem`).
pub async fn pinned_http1(data: &Path, addr: &str) -> Result<SendRequest<Full<bytes::Bytes>>> {
    use rustls::pki_types::pem::PemObject;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(data.join("ca.pem"))? {
        roots.add(c?)?;
    }
    let cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(rustls::pki_types::ServerName::try_from("127.0.0.1")?, tcp)
        .await?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    Ok(send)
}

/// The join token and operator credential from a controller's `first-start-secrets` file (named
/// by its `secrets-file PATH` announcement), after checking the file is private (0600).
pub fn read_secrets_file(path: &Path) -> Result<(Option<String>, Option<String>)> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
    anyhow::ensure!(mode == 0o600, "{}: mode {mode:o}, want 600", path.display());
    let text = std::fs::read_to_string(path)?;
    let (mut token, mut credential) = (None, None);
    for line in text.lines() {
        match line.split_once(' ') {
            Some(("join-token", t)) => token = Some(t.trim().to_string()),
            Some(("operator-credential", c)) => credential = Some(c.trim().to_string()),
            _ => {}
        }
    }
    Ok((token, credential))
}

/// What a controller started with `--print-secrets` announces on stdout.
pub struct Announced {
    pub grpc: String,
    pub rest: String,
    pub token: String,
    pub credential: String,
}

/// Reads `listening grpc|rest ADDR`, `join-token T` and `operator-credential C` from a
/// controller's stdout, then keeps draining it. Secrets are printed on the first start only, so
/// they are saved in `saved` and reused on a restart over the same data directory.
pub async fn read_announcement(
    child: &mut tokio::process::Child,
    log: &Path,
    saved: &Path,
) -> Result<Announced> {
    use anyhow::{Context, anyhow};
    use tokio::io::{AsyncBufReadExt, BufReader};
    let stdout = child.stdout.take().context("stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let (mut g, mut r, mut token, mut credential) = (None, None, None, None);
    if let Ok(s) = std::fs::read_to_string(saved) {
        let mut it = s.lines();
        token = it.next().map(str::to_string);
        credential = it.next().map(str::to_string);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while g.is_none() || r.is_none() || token.is_none() || credential.is_none() {
        let line = tokio::time::timeout_at(deadline, lines.next_line())
            .await
            .context("controller did not announce itself")??
            .ok_or_else(|| anyhow!("controller exited early; see {}", log.display()))?;
        let mut w = line.split_whitespace();
        match (w.next(), w.next(), w.next()) {
            (Some("listening"), Some("grpc"), Some(a)) => g = Some(a.to_string()),
            (Some("listening"), Some("rest"), Some(a)) => r = Some(a.to_string()),
            (Some("join-token"), Some(t), _) => token = Some(t.to_string()),
            (Some("operator-credential"), Some(c), _) => credential = Some(c.to_string()),
            _ => {}
        }
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let (token, credential) = (token.context("token")?, credential.context("cred")?);
    std::fs::write(saved, format!("{token}\n{credential}\n"))?;
    Ok(Announced {
        grpc: g.context("grpc")?,
        rest: r.context("rest")?,
        token,
        credential,
    })
}
