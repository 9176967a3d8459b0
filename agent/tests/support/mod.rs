//! Test harness: the agent and the link emulator as separate processes (STYLE §11: a shared
//! runtime makes loopback latency read low, so accuracy tests never run both ends in one process).

#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use meshlat_proto::record::Record;

/// Path of the `agent` binary under test.
pub fn agent_bin() -> &'static str {
    env!("CARGO_BIN_EXE_agent")
}

/// Path of the `meshlat-linkemu` binary (crate `meshlat-linkemu`), next to the agent's in
/// `target/<profile>/`: `cargo build --workspace --bins` builds it (scripts/test.sh's build
/// stage, before the accuracy stage); with `-p meshlat-agent` alone, run
/// `cargo build -p meshlat-linkemu` first (this says so if it is missing).
pub fn linkemu_bin() -> PathBuf {
    let p = PathBuf::from(agent_bin()).with_file_name("meshlat-linkemu");
    assert!(
        p.exists(),
        "{} is missing: build it with `cargo build -p meshlat-linkemu` (cargo build --workspace --bins does)",
        p.display()
    );
    p
}

/// A child process killed (SIGTERM, then SIGKILL) when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    /// Sends SIGTERM and waits up to 5 s.
    pub fn terminate(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
        }
    }
}

/// Reads stdout lines until `count` lines starting with `prefix` have been seen (or 20 s pass).
fn read_lines(child: &mut Child, prefix: &str, count: usize, name: &str) -> Vec<String> {
    let stdout = child.stdout.take().expect("stdout piped");
    let (tx, rx) = std::sync::mpsc::channel();
    let wanted = prefix.to_string();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.starts_with(&wanted) && tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut out = Vec::new();
    while out.len() < count {
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(l) => out.push(l),
            Err(_) => panic!("{name}: expected {count} '{prefix}' lines on stdout, got {out:?}"),
        }
    }
    out
}

/// A running `agent serve` with its bound addresses.
pub struct Server {
    pub proc: Proc,
    pub udp: Option<SocketAddr>,
    pub tcp: Option<SocketAddr>,
    pub quic: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    pub stats: Option<SocketAddr>,
}

/// A responder of `agent serve`, by its port flag.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Proto {
    Udp,
    Tcp,
    Quic,
    Http,
    Https,
}

impl Proto {
    pub const ALL: [Proto; 5] = [
        Proto::Udp,
        Proto::Tcp,
        Proto::Quic,
        Proto::Http,
        Proto::Https,
    ];

    /// Its port flag, e.g. `--udp-port`.
    pub fn port_flag(self) -> &'static str {
        match self {
            Proto::Udp => "--udp-port",
            Proto::Tcp => "--tcp-port",
            Proto::Quic => "--quic-port",
            Proto::Http => "--http-port",
            Proto::Https => "--https-port",
        }
    }
}

/// The flags that turn every responder off except `keep` (`--tcp-port off --quic-port off …`):
/// the one place that lists them, for every test that serves only some protocols.
pub fn responders_off_except(keep: &[Proto]) -> Vec<&'static str> {
    Proto::ALL
        .into_iter()
        .filter(|p| !keep.contains(p))
        .flat_map(|p| [p.port_flag(), "off"])
        .collect()
}

/// [`serve`] with only the `keep` responders on (port 0), and `extra` flags.
pub fn serve_only(keep: &[Proto], extra: &[&str]) -> Server {
    serve(&[&responders_off_except(keep)[..], extra].concat())
}

/// `MESHLAT_TEST_WAIT_SCALE` (default 1): multiplies every bounded wait, for slow machines
/// (the same variable as the controller's tests).
pub fn wait_scale() -> u32 {
    std::env::var("MESHLAT_TEST_WAIT_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
}

/// Between two tries of [`eventually`] / [`eventually_async`] (not scaled: only the budget is).
const POLL_STEP: Duration = Duration::from_millis(20);

/// How many tries of `POLL_STEP` fit in `budget` scaled by [`wait_scale`] (counted, not timed:
/// no wall clock in tests).
fn tries(budget: Duration) -> u128 {
    (budget * wait_scale()).as_millis() / POLL_STEP.as_millis()
}

/// Polls `f` every 20 ms until it returns `Some`, for about `budget` (scaled by
/// [`wait_scale`]); then panics naming `what`.
pub fn eventually<T>(what: &str, budget: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    for _ in 0..tries(budget) {
        if let Some(v) = f() {
            return v;
        }
        std::thread::sleep(POLL_STEP);
    }
    f().unwrap_or_else(|| {
        panic!(
            "timed out after {budget:?} (x{}) waiting for: {what}",
            wait_scale()
        )
    })
}

/// [`eventually`] for async tests, with a condition: sleeps on the runtime instead of blocking a
/// worker, and returns whether `f` held within about `budget` (scaled), for the caller to assert
/// with its own message.
pub async fn eventually_async(budget: Duration, mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..tries(budget) {
        if f() {
            return true;
        }
        tokio::time::sleep(POLL_STEP).await;
    }
    f()
}

/// Starts `agent serve --listen 127.0.0.1` with every port 0 unless `extra` says otherwise.
pub fn serve(extra: &[&str]) -> Server {
    let mut args = vec!["serve", "--listen", "127.0.0.1"];
    for p in [
        "--udp-port",
        "--tcp-port",
        "--quic-port",
        "--http-port",
        "--https-port",
    ] {
        if !extra.contains(&p) {
            args.extend([p, "0"]);
        }
    }
    args.extend_from_slice(extra);
    let mut child = Command::new(agent_bin())
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn agent serve");
    let expected =
        5 - extra.iter().filter(|a| **a == "off").count() + usize::from(extra.contains(&"-s"));
    let lines = read_lines(&mut child, "listening ", expected, "agent serve");
    let find = |proto: &str| {
        lines.iter().find_map(|l| {
            let mut it = l.split_whitespace().skip(1);
            (it.next() == Some(proto)).then(|| it.next().unwrap().parse().unwrap())
        })
    };
    Server {
        udp: find("udp"),
        tcp: find("tcp"),
        quic: find("quic"),
        http: find("http"),
        https: find("https"),
        stats: find("stats"),
        proc: Proc {
            child,
            name: "agent serve".into(),
        },
    }
}

/// A running link emulator with its route addresses.
pub struct Emu {
    pub proc: Proc,
    pub routes: Vec<SocketAddr>,
}

/// Starts `meshlat-linkemu` with the given routes and log file.
pub fn linkemu(routes: &[String], log: &Path) -> Emu {
    let mut args: Vec<String> = Vec::new();
    for r in routes {
        args.push("--route".into());
        args.push(r.clone());
    }
    args.push("--log".into());
    args.push(log.display().to_string());
    let mut child = Command::new(linkemu_bin())
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn meshlat-linkemu");
    let lines = read_lines(&mut child, "route ", routes.len(), "meshlat-linkemu");
    // "route <i> <proto> <listen> -> <upstream>"
    let routes = lines
        .iter()
        .map(|l| l.split_whitespace().nth(3).unwrap().parse().unwrap())
        .collect();
    Emu {
        proc: Proc {
            child,
            name: "linkemu".into(),
        },
        routes,
    }
}

/// Runs `agent probe` to completion.
pub fn probe(args: &[&str]) -> Output {
    Command::new(agent_bin())
        .arg("probe")
        .args(args)
        .output()
        .expect("run agent probe")
}

/// The records of an `agent probe --format json` run's stdout (which must be nothing else).
pub fn records(stdout: &[u8]) -> Vec<Record> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<Record>(l).unwrap_or_else(|e| panic!("not a record: {e}: {l}"))
        })
        .collect()
}

/// Runs `cmd` (an `agent probe --format json`, however launched), asserts it succeeded (the
/// assertion shows its stderr) and returns its [`records`].
#[track_caller]
pub fn ok_records(cmd: &mut Command) -> Vec<Record> {
    let out = cmd.output().expect("run agent probe");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    records(&out.stdout)
}

/// Runs `agent probe --format json` and parses the records (stdout must be nothing else).
pub fn probe_json(args: &[&str]) -> (Output, Vec<Record>) {
    let mut a = vec!["--format", "json"];
    a.extend_from_slice(args);
    let out = probe(&a);
    let recs = records(&out.stdout);
    (out, recs)
}

/// [`probe_json`] that must succeed: its records (the assertion shows its stderr).
#[track_caller]
pub fn probe_ok(args: &[&str]) -> Vec<Record> {
    let (out, recs) = probe_json(args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    recs
}

/// A CA and a leaf for `localhost` and `127.0.0.1` signed by it, written under `dir`: (CA,
/// certificate, key) paths.
pub fn private_pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &*ca)
        .unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, leaf.pem()).unwrap();
    std::fs::write(&paths.2, leaf_key.serialize_pem()).unwrap();
    paths
}

/// A fresh temporary directory.
pub fn tmpdir(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let d = std::env::temp_dir().join(format!(
        "meshlat-test-{name}-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Every per-packet RTT of the records.
pub fn all_rtts(recs: &[Record]) -> Vec<f64> {
    recs.iter()
        .flat_map(|r| r.rtt_samples_ms.clone().unwrap_or_default())
        .collect()
}

/// Median (nearest rank) of values.
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    assert!(!s.is_empty(), "median of nothing");
    s.sort_by(f64::total_cmp);
    s[s.len().div_ceil(2) - 1]
}

/// A test HTTP/1.1 server on a thread of its own (a current-thread runtime, so the test's own
/// runtime never delays it): binds `127.0.0.1:0`, and serves each accepted connection with the
/// service `on_conn` returns for it (`keep_alive` as hyper's builder takes it) after calling
/// `on_close`'s closure when the connection ends. Returns the address.
pub fn serve_http_on_thread<F, S, B>(keep_alive: bool, on_conn: F) -> SocketAddr
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
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(l.local_addr().unwrap()).unwrap();
            loop {
                let Ok((s, _)) = l.accept().await else {
                    continue;
                };
                let (svc, on_close) = on_conn();
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(keep_alive)
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
                    on_close();
                });
            }
        });
    });
    rx.recv().unwrap()
}
