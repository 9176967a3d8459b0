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

/// A gRPC interceptor adding `authorization: Bearer <secret>`.
pub fn bearer(
    secret: &str,
) -> impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Clone + use<> {
    let v: tonic::metadata::MetadataValue<_> =
        format!("Bearer {secret}").parse().expect("header value");
    move |mut req: tonic::Request<()>| {
        req.metadata_mut().insert("authorization", v.clone());
        Ok(req)
    }
}

/// `cmd ARGS... --controller https://GRPC --credential C --ca CA`, where `cmd` runs the
/// `controller` binary (directly, or through a wrapper that execs it such as `ip netns exec`),
/// without the `MESHLAT_CONTROLLER`, `MESHLAT_CREDENTIAL` and `MESHLAT_CA` of the test's
/// environment: (exit ok, stdout, stderr).
pub async fn controller_cli(
    mut cmd: tokio::process::Command,
    args: &[&str],
    grpc: &str,
    credential: &str,
    ca: &Path,
) -> Result<(bool, String, String)> {
    let out = cmd
        .args(args)
        .args(["--controller", &format!("https://{grpc}")])
        .args(["--credential", credential])
        .arg("--ca")
        .arg(ca)
        .env_remove("MESHLAT_CONTROLLER")
        .env_remove("MESHLAT_CREDENTIAL")
        .env_remove("MESHLAT_CA")
        .output()
        .await?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
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

/// A test HTTP/1.1 target on a thread of its own (a current-thread runtime, so the test's
/// runtime never delays it): binds `127.0.0.1:0` and serves each accepted connection with the
/// service `on_conn` returns for it, calling the returned closure when the connection ends.
///
/// # Panics
///
/// If the listener cannot be bound (a test cannot go on without its target).
pub fn serve_http_on_thread<F, S, B>(on_conn: F) -> std::net::SocketAddr
where
    F: Fn() -> (S, Box<dyn FnOnce() + Send>) + Send + 'static,
    S: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = hyper::Response<B>,
            Error = std::convert::Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async move {
            let Ok(l) = tokio::net::TcpListener::bind("127.0.0.1:0").await else {
                return;
            };
            let _ = tx.send(l.local_addr());
            while let Ok((s, _)) = l.accept().await {
                let (svc, on_close) = on_conn();
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                    on_close();
                });
            }
        });
    });
    match rx.recv() {
        Ok(Ok(addr)) => addr,
        Ok(Err(e)) => panic!("test target: {e}"),
        Err(e) => panic!("test target: {e}"),
    }
}
