//! A controller and an agent as child processes, started by builders:
//!
//! ```ignore
//! let b = TestController::builder(root.join("ctl-b")).region("b").federation_secret(&s).spawn().await?;
//! let a = TestController::builder(root.join("ctl-a")).region("a").federation_secret(&s).peer(&b).spawn().await?;
//! let agent = TestAgent::builder(&a, root.join("out"), root.join("st")).region("a").spawn()?;
//! ```

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use super::{agent_bin, controller_cli, eventually, pinned_http1, read_secrets_file};

/// The methods both builders share, over their fields `args` (placed as `$at` says), `env`
/// and `stderr`.
macro_rules! flag_and_log_methods {
    ($at:literal) => {
        #[doc = concat!("One more flag or value (", $at, ").")]
        pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
            self.args.push(arg.into());
            self
        }

        /// More flags and values, like [`Self::arg`].
        pub fn args<I, S>(mut self, args: I) -> Self
        where
            I: IntoIterator<Item = S>,
            S: Into<OsString>,
        {
            self.args.extend(args.into_iter().map(Into::into));
            self
        }

        /// Sets an environment variable of the process.
        pub fn env(mut self, key: &str, value: &str) -> Self {
            self.env.push((key.into(), Some(value.into())));
            self
        }

        /// Removes an environment variable from the process.
        pub fn env_remove(mut self, key: &str) -> Self {
            self.env.push((key.into(), None));
            self
        }

        /// Writes its stderr (the log) to `path` instead of the test's stderr.
        pub fn log(mut self, path: impl Into<PathBuf>) -> Self {
            self.stderr = Stderr::File(path.into());
            self
        }

        /// Appends its stderr (the log) to `path`, e.g. the log of an earlier start.
        pub fn log_append(mut self, path: impl Into<PathBuf>) -> Self {
            self.stderr = Stderr::Append(path.into());
            self
        }
    };
}

/// Sets (`Some`) and removes (`None`) environment variables of `c`, in order.
fn set_env(c: &mut Command, env: &[(String, Option<String>)]) {
    for (k, v) in env {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
}

/// A running `controller serve`, killed on drop.
pub struct TestController {
    pub child: Child,
    pub data: PathBuf,
    pub grpc: String,
    pub rest: String,
    /// Its stats server (`listening stats ADDR`), when started with `--stats-port`.
    pub stats: Option<String>,
    /// The hex SHA-256 of its CA (`ca-sha256`).
    pub ca_sha256: String,
    /// The join token: from the secrets file of a first start, or given to
    /// [`ControllerBuilder::secrets`]; `None` on a restart without them.
    pub token: Option<String>,
    /// The operator credential, like [`Self::token`].
    pub credential: Option<String>,
    /// Its log (stderr), if it goes to a file.
    pub log: Option<PathBuf>,
}

/// Flags and environment for a [`TestController`]; [`Self::spawn`] starts it.
pub struct ControllerBuilder {
    data: PathBuf,
    region: String,
    grpc: String,
    rest: String,
    args: Vec<OsString>,
    env: Vec<(String, Option<String>)>,
    secrets: Option<(String, String)>,
    /// With `--print-secrets`: where the printed secrets are kept for a restart.
    print_secrets: Option<PathBuf>,
    nofile: Option<u64>,
    announce_within: Duration,
    stderr: Stderr,
}

/// Where a process's stderr (its log) goes.
enum Stderr {
    Inherit,
    Null,
    File(PathBuf),
    /// Appended to, e.g. across a restart.
    Append(PathBuf),
}

impl Stderr {
    fn stdio(&self) -> Result<Stdio> {
        Ok(match self {
            Stderr::Inherit => Stdio::inherit(),
            Stderr::Null => Stdio::null(),
            Stderr::File(p) => Stdio::from(std::fs::File::create(p)?),
            Stderr::Append(p) => Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            ),
        })
    }

    fn path(&self) -> Option<&Path> {
        match self {
            Stderr::File(p) | Stderr::Append(p) => Some(p),
            _ => None,
        }
    }

    /// "; see PATH" for an error message.
    fn see(&self) -> String {
        match self.path() {
            Some(p) => format!("; see {}", p.display()),
            None => String::new(),
        }
    }
}

impl TestController {
    /// A controller of region `r1` on `127.0.0.1:0` (gRPC and REST) over data directory `data`.
    pub fn builder(data: impl Into<PathBuf>) -> ControllerBuilder {
        ControllerBuilder {
            data: data.into(),
            region: "r1".into(),
            grpc: "127.0.0.1:0".into(),
            rest: "127.0.0.1:0".into(),
            args: Vec::new(),
            env: Vec::new(),
            secrets: None,
            print_secrets: None,
            nofile: None,
            announce_within: Duration::from_secs(20),
            stderr: Stderr::Inherit,
        }
    }

    /// The join token.
    ///
    /// # Panics
    ///
    /// If the controller announced none (a restart: pass [`ControllerBuilder::secrets`]).
    pub fn token(&self) -> &str {
        self.token
            .as_deref()
            .expect("the controller announced no join token")
    }

    /// The operator credential.
    ///
    /// # Panics
    ///
    /// Like [`Self::token`].
    pub fn credential(&self) -> &str {
        self.credential
            .as_deref()
            .expect("the controller announced no operator credential")
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Its process id (0 once it has been waited for).
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// Its log so far (empty unless it goes to a file: [`ControllerBuilder::log`]).
    pub fn log_text(&self) -> String {
        self.log
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    /// A gRPC channel to it over TLS, trusting only its CA.
    pub async fn grpc_channel(&self) -> Result<tonic::transport::Channel> {
        use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
        let ca = std::fs::read(self.data.join("ca.pem"))?;
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .domain_name("127.0.0.1");
        Ok(Endpoint::from_shared(format!("https://{}", self.grpc))?
            .tls_config(tls)?
            .connect()
            .await?)
    }

    /// Kills it and waits for it to exit.
    pub async fn stop(mut self) -> Result<()> {
        self.child.start_kill()?;
        self.child.wait().await?;
        Ok(())
    }

    /// `controller ARGS... --controller URL --credential C --ca CA` against it, with its own
    /// credential: (exit ok, stdout, stderr).
    pub async fn cli(&self, args: &[&str]) -> Result<(bool, String, String)> {
        let ca = self.data.join("ca.pem");
        let cmd = Command::new(env!("CARGO_BIN_EXE_controller"));
        controller_cli(cmd, args, &self.grpc, self.credential(), &ca).await
    }

    /// One REST call over TLS pinned to the controller's CA, with `cred` (default: its own
    /// credential; an empty one sends no `authorization`).
    pub async fn rest(
        &self,
        method: &str,
        path: &str,
        body: &str,
        cred: Option<&str>,
    ) -> Result<(u16, Value)> {
        let mut send = pinned_http1(&self.data, &self.rest).await?;
        let mut req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "127.0.0.1")
            .header("content-type", "application/json");
        if let Some(c) = cred
            .or(self.credential.as_deref())
            .filter(|c| !c.is_empty())
        {
            req = req.header("authorization", format!("Bearer {c}"));
        }
        let res = send
            .send_request(req.body(Full::new(bytes::Bytes::from(body.to_string())))?)
            .await?;
        let status = res.status().as_u16();
        let b = res.into_body().collect().await?.to_bytes();
        Ok((status, serde_json::from_slice(&b).unwrap_or(Value::Null)))
    }

    /// A `PUT` with `If-Match: version`, with its own credential.
    pub async fn rest_with_if_match(
        &self,
        path: &str,
        body: &str,
        version: u64,
    ) -> Result<(u16, Value)> {
        let mut send = pinned_http1(&self.data, &self.rest).await?;
        let req = http::Request::put(path)
            .header("host", "127.0.0.1")
            .header("authorization", format!("Bearer {}", self.credential()))
            .header("if-match", version.to_string())
            .body(Full::new(bytes::Bytes::from(body.to_string())))?;
        let res = send.send_request(req).await?;
        let status = res.status().as_u16();
        let b = res.into_body().collect().await?.to_bytes();
        Ok((status, serde_json::from_slice(&b).unwrap_or(Value::Null)))
    }

    /// `(id, connected)` of every agent in `GET /api/v1/agents` with its own credential; empty
    /// on any failure.
    pub async fn agents(&self) -> Vec<(String, bool)> {
        self.agents_as(None).await
    }

    /// [`Self::agents`] with `cred`.
    pub async fn agents_as(&self, cred: Option<&str>) -> Vec<(String, bool)> {
        match self.rest("GET", "/api/v1/agents", "", cred).await {
            Ok((200, v)) => v["agents"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|x| {
                    let id = x["id"].as_str().unwrap_or_default().to_string();
                    (id, x["connected"].as_bool().unwrap_or(false))
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Opens `/api/v1/stream` and returns the first `event: matrix` payload and whether a
    /// comment line (`:`) came before it.
    pub async fn first_sse_matrix(&self, query: &str) -> Result<(Value, bool)> {
        let mut send = pinned_http1(&self.data, &self.rest).await?;
        let req = http::Request::builder()
            .uri(format!("/api/v1/stream{query}"))
            .header("host", "127.0.0.1")
            .header("authorization", format!("Bearer {}", self.credential()))
            .body(Full::new(bytes::Bytes::new()))?;
        let res = send.send_request(req).await?;
        if res.status() != 200 {
            bail!("stream answered {}", res.status());
        }
        let ct = res
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        if ct != "text/event-stream" {
            bail!("content-type {ct:?}");
        }
        let mut body = res.into_body();
        let mut text = String::new();
        let mut comment = false;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let frame = tokio::time::timeout_at(deadline, body.frame())
                .await
                .context("no matrix event within 15 s")?
                .ok_or_else(|| anyhow!("stream ended"))??;
            if let Ok(d) = frame.into_data() {
                text.push_str(&String::from_utf8_lossy(&d));
            }
            // Events end with a blank line.
            while let Some(end) = text.find("\n\n") {
                let event: String = text.drain(..end + 2).collect();
                if event.starts_with(':') {
                    comment = true;
                    continue;
                }
                let mut lines = event.lines();
                if lines.next() == Some("event: matrix") {
                    let data = lines
                        .next()
                        .and_then(|l| l.strip_prefix("data: "))
                        .ok_or_else(|| anyhow!("matrix event without data: {event:?}"))?;
                    return Ok((serde_json::from_str(data)?, comment));
                }
            }
        }
    }
}

impl ControllerBuilder {
    /// `--region` (default `r1`).
    pub fn region(mut self, region: &str) -> Self {
        self.region = region.into();
        self
    }

    /// `--listen GRPC --rest-listen REST` (default `127.0.0.1:0` for both), e.g. a restarted
    /// controller's previous addresses.
    pub fn listen(mut self, grpc: &str, rest: &str) -> Self {
        self.grpc = grpc.into();
        self.rest = rest.into();
        self
    }

    /// `--federation-secret SECRET`.
    pub fn federation_secret(self, secret: &str) -> Self {
        self.args(["--federation-secret", secret])
    }

    /// `--peer https://GRPC --peer-ca DATA/ca.pem` of a running controller.
    pub fn peer(self, peer: &TestController) -> Self {
        let ca = peer.data.join("ca.pem");
        self.args(["--peer".into(), format!("https://{}", peer.grpc)])
            .arg("--peer-ca")
            .arg(ca)
    }

    flag_and_log_methods!("after the ones above, before `--data-dir`");

    /// The join token and operator credential of an earlier start over the same state (a
    /// restart announces none).
    pub fn secrets(mut self, token: &str, credential: &str) -> Self {
        self.secrets = Some((token.into(), credential.into()));
        self
    }

    /// `--print-secrets`: the join token and operator credential are read from stdout, where
    /// they are printed on the first start only, and kept in the file `saved`; a restart over
    /// the same data directory with the same `saved` reuses them.
    pub fn print_secrets(mut self, saved: impl Into<PathBuf>) -> Self {
        self.print_secrets = Some(saved.into());
        self.arg("--print-secrets")
    }

    /// Runs it under `prlimit` with the open-files limit (soft and hard) set to `n`.
    pub fn nofile(mut self, n: u64) -> Self {
        self.nofile = Some(n);
        self
    }

    /// How long the controller may take to announce itself (default 20 s, not scaled).
    pub fn announce_within(mut self, d: Duration) -> Self {
        self.announce_within = d;
        self
    }

    /// Discards its stderr.
    pub fn quiet(mut self) -> Self {
        self.stderr = Stderr::Null;
        self
    }

    /// The command [`Self::spawn`] runs, killed on drop; for a test that expects it to fail
    /// (`.output()`).
    pub fn command(&self) -> Command {
        let mut c = match self.nofile {
            // prlimit execs the controller: the child is the controller itself.
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}"))
                    .arg("--")
                    .arg(env!("CARGO_BIN_EXE_controller"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_controller")),
        };
        c.args(["serve", "--region", &self.region])
            .args(["--listen", &self.grpc, "--rest-listen", &self.rest])
            .args(&self.args)
            .arg("--data-dir")
            .arg(&self.data)
            .kill_on_drop(true);
        set_env(&mut c, &self.env);
        c
    }

    /// Starts the controller and reads its announcements: `listening grpc|rest|stats ADDR`,
    /// `ca-sha256 HEX` and, on the start that generated them, `secrets-file PATH` (read after
    /// checking it is private), or with [`Self::print_secrets`] the secrets themselves. A secret
    /// printed on stdout without `--print-secrets` fails it.
    pub async fn spawn(mut self) -> Result<TestController> {
        // A restart reuses the secrets its first start printed.
        if let Some(saved) = &self.print_secrets
            && let Ok(s) = std::fs::read_to_string(saved)
        {
            let mut it = s.lines().map(str::to_string);
            self.secrets = it.next().zip(it.next());
        }
        let mut child = self
            .command()
            .stdout(Stdio::piped())
            .stderr(self.stderr.stdio()?)
            .spawn()
            .context("spawn controller")?;
        let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let print_secrets = self.args.iter().any(|a| a == "--print-secrets");
        let (mut g, mut r, mut ca, mut stats) = (None, None, None, None);
        let (mut token, mut credential) = self.secrets.clone().unzip();
        // With print_secrets, a first start is read until it has printed them.
        let read_printed = self.print_secrets.is_some() && self.secrets.is_none();
        let deadline = Instant::now() + self.announce_within;
        // The listeners, then `ca-sha256`, then (on a first start) the secrets file, all at once.
        while g.is_none()
            || r.is_none()
            || ca.is_none()
            || (read_printed && (token.is_none() || credential.is_none()))
        {
            let line = tokio::time::timeout_at(deadline, lines.next_line())
                .await
                .context("controller did not announce itself")??
                .ok_or_else(|| anyhow!("controller exited early{}", self.stderr.see()))?;
            let mut w = line.split_whitespace();
            match (w.next(), w.next(), w.next()) {
                (Some("listening"), Some("grpc"), Some(a)) => g = Some(a.to_string()),
                (Some("listening"), Some("rest"), Some(a)) => r = Some(a.to_string()),
                (Some("listening"), Some("stats"), Some(a)) => stats = Some(a.to_string()),
                (Some("ca-sha256"), Some(h), _) => ca = Some(h.to_string()),
                (Some("join-token"), Some(t), _) if read_printed => token = Some(t.to_string()),
                (Some("operator-credential"), Some(c), _) if read_printed => {
                    credential = Some(c.to_string());
                }
                _ => {}
            }
        }
        if let Some(saved) = &self.print_secrets
            && let (Some(t), Some(c)) = (&token, &credential)
        {
            std::fs::write(saved, format!("{t}\n{c}\n"))?;
        }
        // On a restart nothing more follows: stop waiting shortly.
        while (token.is_none() || credential.is_none())
            && let Ok(Ok(Some(line))) =
                tokio::time::timeout(Duration::from_millis(500), lines.next_line()).await
        {
            let mut w = line.split_whitespace();
            match (w.next(), w.next()) {
                (Some("secrets-file"), Some(p)) => {
                    (token, credential) = read_secrets_file(Path::new(p))?;
                    break;
                }
                (Some("join-token" | "operator-credential"), _) if !print_secrets => {
                    bail!("the controller printed a secret without --print-secrets: {line}")
                }
                _ => {}
            }
        }
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(TestController {
            child,
            data: self.data,
            grpc: g.context("grpc")?,
            rest: r.context("rest")?,
            stats,
            ca_sha256: ca.context("ca")?,
            token,
            credential,
            log: self.stderr.path().map(Path::to_path_buf),
        })
    }
}

/// A running agent, killed on drop.
pub struct TestAgent {
    pub child: Child,
    /// Its `--out` directory.
    pub out: PathBuf,
    /// Its `--state-dir` (unused with [`AgentBuilder::no_state_dir`]).
    pub state: PathBuf,
    /// Its log (stderr), if it goes to a file.
    pub log: Option<PathBuf>,
}

/// Flags for a [`TestAgent`]; [`Self::spawn`] starts it.
pub struct AgentBuilder {
    grpc: String,
    token: String,
    region: String,
    out: PathBuf,
    state: PathBuf,
    state_dir: bool,
    args: Vec<OsString>,
    env: Vec<(String, Option<String>)>,
    cwd: Option<PathBuf>,
    stderr: Stderr,
}

impl TestAgent {
    /// An agent of region `r1` joining `ctl` with its token, on loopback with ephemeral UDP and
    /// TCP ports and no QUIC, HTTP or HTTPS, writing to `out` and keeping its state in `state`.
    pub fn builder(
        ctl: &TestController,
        out: impl Into<PathBuf>,
        state: impl Into<PathBuf>,
    ) -> AgentBuilder {
        AgentBuilder {
            grpc: ctl.grpc.clone(),
            token: ctl.token.clone().unwrap_or_default(),
            region: "r1".into(),
            out: out.into(),
            state: state.into(),
            state_dir: true,
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
            stderr: Stderr::Inherit,
        }
    }

    /// Its log so far (empty unless it goes to a file: [`AgentBuilder::log`]).
    pub fn log_text(&self) -> String {
        self.log
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    /// Kills it and waits for it to exit.
    pub async fn stop(mut self) -> Result<()> {
        self.child.start_kill()?;
        self.child.wait().await?;
        Ok(())
    }

    /// Its id, once it has stored one.
    pub fn id(&self) -> Option<String> {
        std::fs::read_to_string(self.state.join("agent-id"))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    }

    /// The agent's id once it has stored it. The controller lists an agent as soon as its Hello
    /// is admitted, which can be before the agent has written `agent-id` (seen failing as
    /// "a id" on a loaded machine), so a test that just saw the agent connected waits for it.
    pub async fn stored_id(&self, name: &str) -> Result<String> {
        eventually(&format!("{name} stores its agent id"), 10, || async {
            self.id()
        })
        .await
    }

    /// Every record in the `.ndjson` files under its `--out` directory.
    pub fn records(&self) -> Vec<Value> {
        let mut out = Vec::new();
        let mut stack = vec![self.out.clone()];
        while let Some(d) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "ndjson") {
                    let text = std::fs::read_to_string(&p).unwrap_or_default();
                    out.extend(text.lines().filter_map(|l| serde_json::from_str(l).ok()));
                }
            }
        }
        out
    }
}

impl AgentBuilder {
    /// `--region` (default `r1`).
    pub fn region(mut self, region: &str) -> Self {
        self.region = region.into();
        self
    }

    /// `--token` (default the controller's).
    pub fn token(mut self, token: &str) -> Self {
        self.token = token.into();
        self
    }

    flag_and_log_methods!("before `--out`");

    /// `--no-state-dir` instead of `--state-dir`: it keeps no state (and no id).
    pub fn no_state_dir(mut self) -> Self {
        self.state_dir = false;
        self
    }

    /// Runs it in directory `dir`.
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    pub fn spawn(self) -> Result<TestAgent> {
        let stderr = self.stderr.stdio()?;
        let mut c = Command::new(agent_bin());
        c.args(["--controller", &format!("https://{}", self.grpc)])
            .args(["--token", &self.token])
            .args(["--region", &self.region, "--listen", "127.0.0.1"])
            .args(["--udp-port", "0", "--tcp-port", "0", "--quic-port", "off"])
            .args(["--http-port", "off", "--https-port", "off"])
            .args(&self.args)
            .arg("--out")
            .arg(&self.out);
        if self.state_dir {
            c.arg("--state-dir").arg(&self.state);
        } else {
            c.arg("--no-state-dir");
        }
        if let Some(d) = &self.cwd {
            c.current_dir(d);
        }
        set_env(&mut c, &self.env);
        let child = c
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .context("spawn agent")?;
        Ok(TestAgent {
            child,
            out: self.out,
            state: self.state,
            log: self.stderr.path().map(Path::to_path_buf),
        })
    }
}
