//! Advertised addresses are checked (issue 10 item 4), shown with real `controller` and `agent`
//! processes in network namespaces this test creates — on loopback every agent advertises
//! 127.0.0.1 and an address check proves nothing.
//!
//! Topology (one set of namespaces per test, named `mlc<pid><tag>-<role>`): the controller's
//! namespace `c` routes between three /24s, one per agent namespace, over veth pairs:
//!
//! ```text
//!   a: 10.231.1.2 ──veth── 10.231.1.1 ┐
//!   b: 10.231.2.2 ──veth── 10.231.2.1 ├ c (controller, ip_forward=1)
//!   x: 10.231.3.2 ──veth── 10.231.3.1 ┘
//! ```
//!
//! - [`an_agent_advertising_another_agents_address_is_refused`]: `x` (the attacker, holding
//!   the join token) advertises `a`'s address; it is refused with `PERMISSION_DENIED`, logs
//!   why and shows it at `/status`; the honest `a` and `b` are admitted and measure each other
//!   across the namespaces; no job set ever names `x`.
//! - [`with_agent_cidr_the_ranges_decide`]: `--agent-cidr 10.231.1.0/24,10.231.3.0/24`: `b`,
//!   advertising its own address outside the ranges, is refused; `x`, advertising an address
//!   inside them from elsewhere (as behind a load balancer), is admitted.
//!
//! Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN for `ip netns`) and iproute2; without them the
//! tests fail saying so (never skip). Namespaces and processes are removed when a test ends,
//! also on failure, and namespaces left by a killed earlier run are removed at the start.

mod support;
use support::{eventually, tmp_dir};

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;

const GRPC_PORT: u16 = 7400;
const UDP_PORT: u16 = 7710;
const STATS_PORT: u16 = 9100;
/// Agent namespaces: role, subnet number (10.231.N.0/24).
const AGENTS: [(&str, u8); 3] = [("a", 1), ("b", 2), ("x", 3)];

/// Runs `ip ARGS`, failing with its stderr (and what the test needs) if it fails.
fn ip(args: &[&str]) -> Result<()> {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| {
            anyhow!(
                "cannot run `ip` ({e}): this test needs iproute2 (apt-get install iproute2; \
                 scripts/setup.sh installs it) and root"
            )
        })?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}this test needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) to create \
             network namespaces; scripts/test.sh runs it as root, as CI does",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Removes namespaces `mlc<pid>...` whose test process is gone (a run killed before cleanup).
fn remove_stale_namespaces() {
    let Ok(out) = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
    else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix("mlc") else {
            continue;
        };
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if !pid.is_empty() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// The namespaces, and every process started in them; dropping kills the processes and
/// deletes the namespaces (with their veth pairs).
struct Mesh {
    prefix: String,
    names: Vec<String>,
    children: Vec<Child>,
    root: PathBuf,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.start_kill();
        }
        for n in &self.names {
            let _ = ip(&["netns", "del", n]);
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

impl Mesh {
    /// Creates the namespaces and links of the module docs.
    fn create(tag: &str) -> Result<Self> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        remove_stale_namespaces();
        let prefix = format!(
            "mlc{}{tag}{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let mut mesh = Mesh {
            prefix: prefix.clone(),
            names: Vec::new(),
            children: Vec::new(),
            root: tmp_dir("netns", tag),
        };
        let c = mesh.ns("c");
        ip(&["netns", "add", &c])?;
        mesh.names.push(c.clone());
        ip(&["-n", &c, "link", "set", "lo", "up"])?;
        for (role, n) in AGENTS {
            let ns = mesh.ns(role);
            ip(&["netns", "add", &ns])?;
            mesh.names.push(ns.clone());
            let v = format!("v{n}");
            ip(&[
                "-n", &c, "link", "add", &v, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            ip(&[
                "-n",
                &c,
                "addr",
                "add",
                &format!("10.231.{n}.1/24"),
                "dev",
                &v,
            ])?;
            ip(&["-n", &c, "link", "set", &v, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("10.231.{n}.2/24"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&[
                "-n",
                &ns,
                "route",
                "add",
                "default",
                "via",
                &format!("10.231.{n}.1"),
            ])?;
        }
        // Forwarding in the controller's namespace only (per-namespace sysctl): a and b measure
        // each other through it.
        in_ns(&c, || {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
                .context("ip_forward in the controller's namespace")
        })?;
        Ok(mesh)
    }

    fn ns(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }

    /// Starts `bin ARGS` in namespace `role` (`ip netns exec` execs it: the child is the binary).
    fn spawn(&mut self, role: &str, bin: &Path, args: &[String], log: &Path) -> Result<usize> {
        let log_file = std::fs::File::create(log)?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(role)])
            .arg(bin)
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env_remove("MESHLAT_CONTROLLER")
            .env_remove("MESHLAT_TOKEN")
            .env_remove("MESHLAT_AGENT_CIDRS")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawn {} in {role}", bin.display()))?;
        self.children.push(child);
        Ok(self.children.len() - 1)
    }

    /// Starts the controller in `c` with `extra` flags; returns (join token, credential).
    async fn controller(&mut self, extra: &[&str]) -> Result<(String, String)> {
        let data = self.root.join("ctl");
        let mut args: Vec<String> = [
            "serve",
            "--region",
            "r1",
            "--listen",
            "0.0.0.0:7400",
            "--rest-listen",
            "off",
            "--tls-san",
            "10.231.1.1,10.231.2.1,10.231.3.1",
            "--print-secrets",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push("--data-dir".into());
        args.push(data.display().to_string());
        let log = self.root.join("controller.log");
        let i = self.spawn(
            "c",
            Path::new(env!("CARGO_BIN_EXE_controller")),
            &args,
            &log,
        )?;
        let stdout = self.children[i].stdout.take().context("stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let (mut token, mut credential, mut listening) = (None, None, false);
        let deadline = Instant::now() + Duration::from_secs(30);
        while token.is_none() || credential.is_none() || !listening {
            let line = tokio::time::timeout_at(deadline, lines.next_line())
                .await
                .context("controller did not announce itself")??
                .ok_or_else(|| anyhow!("controller exited early; see {}", log.display()))?;
            let mut w = line.split_whitespace();
            match (w.next(), w.next()) {
                (Some("listening"), Some("grpc")) => listening = true,
                (Some("join-token"), Some(t)) => token = Some(t.to_string()),
                (Some("operator-credential"), Some(c)) => credential = Some(c.to_string()),
                _ => {}
            }
        }
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok((token.context("token")?, credential.context("credential")?))
    }

    /// Starts agent `role` advertising `advertise`; returns its state directory.
    fn agent(&mut self, role: &str, token: &str, advertise: &str) -> Result<PathBuf> {
        let n = AGENTS.iter().find(|(r, _)| *r == role).context("role")?.1;
        let state = self.root.join(format!("agent-{role}"));
        let args: Vec<String> = vec![
            "run".into(),
            "--controller".into(),
            format!("https://10.231.{n}.1:{GRPC_PORT}"),
            "--token".into(),
            token.into(),
            "--region".into(),
            "r1".into(),
            "--az".into(),
            format!("r1{role}"),
            "--advertise".into(),
            advertise.into(),
            "--state-dir".into(),
            state.display().to_string(),
            "--udp-port".into(),
            UDP_PORT.to_string(),
            "--tcp-port".into(),
            "off".into(),
            "--quic-port".into(),
            "off".into(),
            "--http-port".into(),
            "off".into(),
            "--https-port".into(),
            "off".into(),
            "--stats-port".into(),
            STATS_PORT.to_string(),
            "--stats-listen".into(),
            "127.0.0.1".into(),
            "--out".into(),
            self.root
                .join(format!("records-{role}"))
                .display()
                .to_string(),
            "--flush-interval".into(),
            "1".into(),
        ];
        let log = self.root.join(format!("agent-{role}.log"));
        self.spawn(role, &support::agent_bin(), &args, &log)?;
        Ok(state)
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.root.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// `controller ARGS...` run in `c` against the controller there: (ok, stdout, stderr).
    async fn cli(&self, credential: &str, args: &[&str]) -> Result<(bool, String, String)> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns("c")])
            .arg(env!("CARGO_BIN_EXE_controller"));
        let (grpc, ca) = (
            format!("127.0.0.1:{GRPC_PORT}"),
            self.root.join("ctl/ca.pem"),
        );
        support::controller_cli(cmd, args, &grpc, credential, &ca).await
    }

    /// The `/status` of agent `role` once it shows a refusal (within 30 s).
    async fn refusal(&self, role: &str) -> Result<Value> {
        eventually(
            &format!("{role}'s /status shows the refusal"),
            30,
            || async {
                let v = self.status(role).await.ok()?;
                (!v["refused"].is_null()).then_some(v)
            },
        )
        .await
    }

    /// `(id, connected)` of every agent `controller agents` lists.
    async fn agents(&self, credential: &str) -> Result<Vec<(String, bool)>> {
        let (ok, out, err) = self.cli(credential, &["agents"]).await?;
        anyhow::ensure!(ok, "controller agents: {err}");
        Ok(out
            .lines()
            .skip(1)
            .filter_map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                let id = w.first()?.to_string();
                let connected = w.contains(&"true");
                Some((id, connected))
            })
            .collect())
    }

    /// Agent `role`'s `GET /status` (its stats server in its namespace).
    async fn status(&self, role: &str) -> Result<Value> {
        let ns = self.ns(role);
        let body = tokio::task::spawn_blocking(move || {
            in_ns(&ns, || {
                http_get(&format!("127.0.0.1:{STATS_PORT}"), "/status")
            })
        })
        .await??;
        Ok(serde_json::from_str(&body)?)
    }
}

/// Runs `f` on a thread that entered network namespace `ns` (setns affects only that thread).
#[allow(unsafe_code)] // setns(2): no safe wrapper in the workspace's dependencies.
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).with_context(|| format!("open {path}"))?;
        // SAFETY: setns on a valid namespace fd; it changes only this thread's namespace.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!(
                "setns({path}): {} (needs root)",
                std::io::Error::last_os_error()
            );
        }
        f()
    })
    .join()
    .map_err(|_| anyhow!("namespace thread panicked"))?
}

/// A blocking HTTP/1.0 GET; the body of a 200.
fn http_get(addr: &str, path: &str) -> Result<String> {
    let mut s = std::net::TcpStream::connect_timeout(&addr.parse()?, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP head")?;
    anyhow::ensure!(
        head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"),
        "{head}"
    );
    Ok(body.to_string())
}

/// Every record line under `dir`, parsed.
fn records(dir: &Path) -> Vec<Value> {
    fn walk(d: &Path, out: &mut Vec<Value>) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "ndjson") {
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                out.extend(text.lines().filter_map(|l| serde_json::from_str(l).ok()));
            }
        }
    }
    let mut v = Vec::new();
    walk(dir, &mut v);
    v
}

fn agent_id(state: &Path) -> Option<String> {
    std::fs::read_to_string(state.join("agent-id"))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_advertising_another_agents_address_is_refused() -> Result<()> {
    let mut mesh = Mesh::create("p")?;
    let (token, cred) = mesh.controller(&[]).await?;
    let sa = mesh.agent("a", &token, "10.231.1.2")?;
    let sb = mesh.agent("b", &token, "10.231.2.2")?;
    // The attacker: the join token, and a's address as its own.
    mesh.agent("x", &token, "10.231.1.2")?;

    let (a, b) = eventually("a and b admitted (their ids stored)", 30, || async {
        Some((agent_id(&sa)?, agent_id(&sb)?))
    })
    .await?;
    let refused = mesh.refusal("x").await?;
    println!("x /status: {refused}");
    assert_eq!(refused["connected"], false, "{refused}");
    assert!(
        refused["agent_id"].is_null(),
        "x never got an id: {refused}"
    );
    assert_eq!(refused["refused"]["code"], "permission_denied", "{refused}");
    let reason = refused["refused"]["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("hello.endpoints[0].address \"10.231.1.2:7710\"")
            && reason.contains("its connection comes from 10.231.3.2"),
        "{reason}"
    );
    let xlog = mesh.log("agent-x");
    assert!(
        xlog.lines()
            .any(|l| l.contains("Controller refused this agent.")
                && l.contains("10.231.1.2:7710")
                && l.contains("10.231.3.2")),
        "x logs the reason:\n{xlog}"
    );
    let clog = mesh.log("controller");
    assert!(
        clog.lines().any(
            |l| l.contains("Agent refused: it advertises an address it may not.")
                && l.contains("10.231.3.2")
        ),
        "the controller logs the refusal:\n{clog}"
    );
    for role in ["a", "b"] {
        let v = mesh.status(role).await?;
        assert_eq!(v["connected"], true, "{role}: {v}");
        assert!(v["refused"].is_null(), "{role}: {v}");
    }
    let listed = mesh.agents(&cred).await?;
    println!("controller agents: {listed:?}");
    let mut ids: Vec<&str> = listed.iter().map(|(id, _)| id.as_str()).collect();
    ids.sort_unstable();
    let mut want = vec![a.as_str(), b.as_str()];
    want.sort_unstable();
    assert_eq!(ids, want, "only the honest agents are registered");

    // The honest agents measure each other across the namespaces; x is nobody's target.
    let job = mesh.root.join("job.json");
    std::fs::write(
        &job,
        r#"{"name":"mesh","protocols":["udp"],"sources":["region=r1"],"targets":["region=r1"],
            "interval_ms":500,"timeout_ms":400,"packets":3}"#,
    )?;
    let (ok, out, err) = mesh
        .cli(&cred, &["job", "start", job.to_str().context("path")?])
        .await?;
    assert!(ok, "job start: {out}{err}");
    for (src, dst, dir, addr) in [
        ("a", &b, "records-a", "10.231.2.2:7710"),
        ("b", &a, "records-b", "10.231.1.2:7710"),
    ] {
        let dir = mesh.root.join(dir);
        let rec = eventually(&format!("{src} measures {dst}"), 30, || async {
            records(&dir)
                .into_iter()
                .find(|r| r["dst_agent"] == dst.as_str() && r["ok"] == true)
        })
        .await?;
        assert!(
            rec["target"].as_str().is_some_and(|t| t.contains(addr)),
            "{src}: {rec}"
        );
        println!("{src} -> {addr}: rtt_p50_ms {}", rec["rtt_p50_ms"]);
    }
    // Every record of a and b targets the other honest agent: 2 agents, never a third.
    for dir in ["records-a", "records-b"] {
        for r in records(&mesh.root.join(dir)) {
            assert!(
                r["dst_agent"] == a.as_str() || r["dst_agent"] == b.as_str(),
                "{dir}: {r}"
            );
        }
    }
    assert!(records(&mesh.root.join("records-x")).is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_agent_cidr_the_ranges_decide() -> Result<()> {
    let mut mesh = Mesh::create("r")?;
    let (token, cred) = mesh
        .controller(&["--agent-cidr", "10.231.1.0/24,10.231.3.0/24"])
        .await?;
    let sa = mesh.agent("a", &token, "10.231.1.2")?;
    // b advertises its own address, outside the ranges.
    mesh.agent("b", &token, "10.231.2.2")?;
    // x advertises an address of the ranges that is not its own (as an agent behind a load
    // balancer would look): the ranges decide, not the peer address.
    let sx = mesh.agent("x", &token, "10.231.1.77")?;

    let (a, x) = eventually("a and x admitted", 30, || async {
        Some((agent_id(&sa)?, agent_id(&sx)?))
    })
    .await?;
    let refused = mesh.refusal("b").await?;
    println!("b /status: {refused}");
    assert_eq!(refused["refused"]["code"], "permission_denied", "{refused}");
    let reason = refused["refused"]["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("\"10.231.2.2:7710\"")
            && reason.contains(
                "outside the controller's --agent-cidr ranges (10.231.1.0/24, 10.231.3.0/24)"
            ),
        "{reason}"
    );
    let listed = mesh.agents(&cred).await?;
    println!("controller agents: {listed:?}");
    let mut ids: Vec<&str> = listed.iter().map(|(id, _)| id.as_str()).collect();
    ids.sort_unstable();
    let mut want = vec![a.as_str(), x.as_str()];
    want.sort_unstable();
    assert_eq!(ids, want);
    assert!(listed.iter().all(|(_, c)| *c), "{listed:?}");
    Ok(())
}
