//! Client commands (`controller job ...`, `controller agents`): the operator API over gRPC.

use std::io::Read;
use std::path::Path;

use meshlat_proto::pb;
use meshlat_proto::pb::operator_service_client::OperatorServiceClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::cli::{
    ClientArgs, Command, CredentialAction, HealthArgs, JobAction, MatrixArgs, NameArgs,
    ScenarioAction, TokenAction,
};
use crate::json;

/// A client command failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Bad flags.
    #[error("{0}")]
    Usage(String),
    /// Reading a spec or CA file.
    #[error("{path}: {source}")]
    File {
        /// Path.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A spec does not parse.
    #[error("job spec: {0}")]
    Spec(#[from] json::JsonError),
    /// Connecting failed.
    #[error("cannot connect to the controller: {}", chain(.0))]
    Connect(#[from] tonic::transport::Error),
    /// The controller refused.
    #[error("{:?}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
}

/// Runs a client command (every [`Command`] but `serve`, which does nothing here), writing its
/// output to stdout: at the end, or as it comes for `matrix --watch`.
///
/// # Errors
///
/// [`ClientError`] of the command; the `controller` binary prints it and exits 1.
pub async fn run(command: &Command) -> Result<(), ClientError> {
    let out = match command {
        Command::Serve(_) => return Ok(()),
        Command::Job {
            action: JobAction::Watch(a),
        } => {
            use std::io::{IsTerminal, Write};
            let tty = std::io::stdout().is_terminal();
            let print = |s: &str| {
                let mut o = std::io::stdout().lock();
                let _ = o.write_all(s.as_bytes());
                let _ = o.flush();
            };
            return watch_load(a, tty, print).await;
        }
        Command::Job { action } => job(action).await?,
        Command::Credentials { action } => credentials(action).await?,
        Command::Tokens { action } => tokens(action).await?,
        Command::Agents(client) => agents(client).await?,
        Command::Scenarios { action, client } => scenarios(action.as_ref(), client).await?,
        Command::Health(h) => health(h).await?,
        Command::Matrix(m) => {
            use std::io::Write;
            let print = |s: &str| {
                let mut o = std::io::stdout().lock();
                let _ = o.write_all(s.as_bytes());
                let _ = o.flush();
            };
            return matrix(m, print).await;
        }
    };
    print!("{out}");
    Ok(())
}

/// `controller health`: the overall status of the controller's gRPC health service.
///
/// # Errors
///
/// [`ClientError`] if the controller cannot be reached or is not serving.
pub async fn health(a: &HealthArgs) -> Result<String, ClientError> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let _ = rustls::crypto::ring::default_provider().install_default();
    if !a.timeout.is_finite() || !(0.1..=60.0).contains(&a.timeout) {
        return Err(ClientError::Usage(format!(
            "--timeout {}: must be 0.1 to 60 seconds",
            a.timeout
        )));
    }
    let timeout = std::time::Duration::from_secs_f64(a.timeout);
    let mut ep = Endpoint::from_shared(a.url.clone())
        .map_err(|_| ClientError::Usage(format!("--url {:?}: not a URL", a.url)))?
        .connect_timeout(timeout)
        .timeout(timeout);
    if a.url.starts_with("https://") {
        let ca =
            a.ca.clone()
                .unwrap_or_else(|| a.data_dir.join(crate::auth::CA_CERT_FILE));
        let pem = read(&ca)?;
        ep = ep.tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))?;
    }
    let channel = tokio::time::timeout(timeout, ep.connect())
        .await
        .map_err(|_| tonic::Status::deadline_exceeded("connect timed out"))??;
    let res = HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await?
        .into_inner();
    match ServingStatus::try_from(res.status) {
        Ok(ServingStatus::Serving) => Ok("SERVING\n".into()),
        other => Err(tonic::Status::unavailable(format!(
            "health: {}",
            other.map_or("unknown status", |s| s.as_str_name())
        ))
        .into()),
    }
}

/// An error and its causes, `: `-separated (tonic's transport error alone says only
/// "transport error").
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn read(path: &Path) -> Result<Vec<u8>, ClientError> {
    let f = |source| ClientError::File {
        path: path.display().to_string(),
        source,
    };
    if path.as_os_str() == "-" {
        let mut b = Vec::new();
        std::io::stdin().read_to_end(&mut b).map_err(f)?;
        Ok(b)
    } else {
        std::fs::read(path).map_err(f)
    }
}

async fn connect(
    a: &ClientArgs,
) -> Result<
    OperatorServiceClient<
        tonic::service::interceptor::InterceptedService<Channel, impl tonic::service::Interceptor>,
    >,
    ClientError,
> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cred = a.credential.clone().ok_or_else(|| {
        ClientError::Usage("--credential NAME:SECRET (or MESHLAT_CREDENTIAL) is required".into())
    })?;
    let value: tonic::metadata::MetadataValue<_> = format!("Bearer {cred}")
        .parse()
        .map_err(|_| ClientError::Usage("--credential: not a valid header value".into()))?;
    let mut ep = Endpoint::from_shared(a.controller.clone())
        .map_err(|_| ClientError::Usage(format!("--controller {:?}: not a URL", a.controller)))?;
    if a.controller.starts_with("https://") {
        let ca = a.ca.as_ref().ok_or_else(|| {
            ClientError::Usage(
                "--ca FILE (or MESHLAT_CA) is required for https: the controller's DATA_DIR/ca.pem"
                    .into(),
            )
        })?;
        let pem = read(ca)?;
        ep = ep.tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))?;
    }
    let ch = ep.connect().await?;
    // A job list at the largest --max-jobs of the largest specs fits (crate::limits).
    Ok(
        OperatorServiceClient::with_interceptor(ch, move |mut req: tonic::Request<()>| {
            req.metadata_mut().insert("authorization", value.clone());
            Ok(req)
        })
        .max_decoding_message_size(crate::limits::CLIENT_MESSAGE_BYTES),
    )
}

fn pretty(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// Runs `controller job ...`; returns what to print.
///
/// # Errors
///
/// [`ClientError`].
pub async fn job(action: &JobAction) -> Result<String, ClientError> {
    let mut c = connect(action.client()).await?;
    let job = match action {
        JobAction::Start { file, .. } => {
            let spec = json::parse_spec(&read(file)?)?;
            c.start_job(pb::StartJobRequest { spec: Some(spec) })
                .await?
        }
        JobAction::List { all, .. } => {
            let jobs = c
                .list_jobs(pb::ListJobsRequest {
                    include_stopped: *all,
                })
                .await?
                .into_inner()
                .jobs;
            let mut out = format!(
                "{:<38} {:>7} {:<8} {:<20} {:<16} AGENTS\n",
                "ID", "VERSION", "STATE", "NAME", "PROTOCOLS"
            );
            for j in jobs {
                let spec = j.spec.clone().unwrap_or_default();
                let protos: Vec<&str> = spec
                    .protocols
                    .iter()
                    .map(|p| json::protocol_name(*p))
                    .collect();
                out.push_str(&format!(
                    "{:<38} {:>7} {:<8} {:<20} {:<16} {}\n",
                    j.id,
                    j.version,
                    if j.stopped { "stopped" } else { "running" },
                    spec.name,
                    protos.join(","),
                    status_counts(&j.agent_status)
                ));
                for s in j.agent_status.iter().filter(|s| s.state == "rejected") {
                    out.push_str(&format!(
                        "  rejected by {} ({}): {}\n",
                        s.agent, s.region, s.reason
                    ));
                }
            }
            return Ok(out);
        }
        JobAction::Show(a) => c.get_job(pb::GetJobRequest { id: a.id.clone() }).await?,
        JobAction::Update {
            id,
            file,
            expected_version,
            ..
        } => {
            let spec = json::parse_spec(&read(file)?)?;
            c.update_job(pb::UpdateJobRequest {
                id: id.clone(),
                spec: Some(spec),
                expected_version: expected_version.unwrap_or(0),
            })
            .await?
        }
        JobAction::Stop(a) => c.stop_job(pb::StopJobRequest { id: a.id.clone() }).await?,
        JobAction::Watch(a) => {
            let mut out = String::new();
            watch_load(a, false, |s| out.push_str(s)).await?;
            return Ok(out);
        }
    };
    Ok(pretty(&json::job_to_value(&job.into_inner())))
}

/// `acked N, pending N, rejected N` of a job's agent statuses (`-` for none), for `job list`.
fn status_counts(status: &[pb::JobAgentStatus]) -> String {
    if status.is_empty() {
        return "-".into();
    }
    let n = |state: &str| status.iter().filter(|s| s.state == state).count();
    format!(
        "acked {}, pending {}, rejected {}",
        n("acked"),
        n("pending"),
        n("rejected")
    )
}

/// Runs `controller credentials ...`; returns what to print (`add`: the credential alone on
/// its line, so scripts can capture it).
///
/// # Errors
///
/// [`ClientError`].
pub async fn credentials(action: &CredentialAction) -> Result<String, ClientError> {
    let mut c = connect(action.client()).await?;
    let line =
        |i: &pb::CredentialInfo| format!("{:<32} {:<10} {}\n", i.name, i.origin, i.created_unix);
    match action {
        CredentialAction::Add { name, .. } => {
            let r = c
                .add_credential(pb::AddCredentialRequest { name: name.clone() })
                .await?
                .into_inner();
            Ok(format!("{}\n", r.credential))
        }
        CredentialAction::List(_) => {
            let list = c
                .list_credentials(pb::ListCredentialsRequest {})
                .await?
                .into_inner()
                .credentials;
            let mut out = format!("{:<32} {:<10} CREATED_UNIX\n", "NAME", "ORIGIN");
            for i in &list {
                out.push_str(&line(i));
            }
            Ok(out)
        }
        CredentialAction::Revoke(NameArgs { name, .. }) => {
            let i = c
                .revoke_credential(pb::RevokeCredentialRequest { name: name.clone() })
                .await?
                .into_inner();
            Ok(format!("revoked {}", line(&i)))
        }
    }
}

/// Runs `controller tokens ...`; returns what to print (`create`: the join token alone on its
/// line, so scripts can capture it). Times are Unix seconds, `-` for none.
///
/// # Errors
///
/// [`ClientError`].
pub async fn tokens(action: &TokenAction) -> Result<String, ClientError> {
    let mut c = connect(action.client()).await?;
    let t = |v: i64| {
        if v == 0 {
            "-".to_string()
        } else {
            v.to_string()
        }
    };
    let line = |i: &pb::JoinTokenInfo| {
        format!(
            "{:<32} {:<12} {:<12} {}\n",
            i.name,
            t(i.created_unix),
            t(i.expires_unix),
            t(i.revoked_unix)
        )
    };
    match action {
        TokenAction::Create {
            name, expires_in, ..
        } => {
            let r = c
                .create_join_token(pb::CreateJoinTokenRequest {
                    name: name.clone(),
                    expires_in_s: expires_in.unwrap_or(0),
                })
                .await?
                .into_inner();
            Ok(format!("{}\n", r.token))
        }
        TokenAction::List(_) => {
            let list = c
                .list_join_tokens(pb::ListJoinTokensRequest {})
                .await?
                .into_inner()
                .tokens;
            let mut out = format!(
                "{:<32} {:<12} {:<12} REVOKED\n",
                "NAME", "CREATED", "EXPIRES"
            );
            for i in &list {
                out.push_str(&line(i));
            }
            Ok(out)
        }
        TokenAction::Revoke(NameArgs { name, .. }) => {
            let i = c
                .revoke_join_token(pb::RevokeJoinTokenRequest { name: name.clone() })
                .await?
                .into_inner();
            Ok(format!("revoked {}", line(&i)))
        }
    }
}

/// Runs `controller scenarios [list|show NAME]`; returns what to print.
///
/// # Errors
///
/// [`ClientError`]: the controller unreachable, no such scenario (`NotFound`), its file
/// invalid (`FailedPrecondition`, naming file and line).
pub async fn scenarios(
    action: Option<&ScenarioAction>,
    client: &ClientArgs,
) -> Result<String, ClientError> {
    match action {
        None => scenario_list(client).await,
        Some(ScenarioAction::List(c)) => scenario_list(c).await,
        Some(ScenarioAction::Show(a)) => {
            let mut c = connect(&a.client).await?;
            let s = c
                .get_scenario(pb::GetScenarioRequest {
                    name: a.name.clone(),
                })
                .await?
                .into_inner();
            Ok(crate::scenarios::info_to_text(&s))
        }
    }
}

async fn scenario_list(a: &ClientArgs) -> Result<String, ClientError> {
    let mut c = connect(a).await?;
    let l = c
        .list_scenarios(pb::ListScenariosRequest {})
        .await?
        .into_inner();
    Ok(crate::scenarios::list_to_text(&l))
}

/// Runs `controller agents`; returns what to print.
///
/// # Errors
///
/// [`ClientError`].
pub async fn agents(a: &ClientArgs) -> Result<String, ClientError> {
    let mut c = connect(a).await?;
    let agents = c
        .list_agents(pb::ListAgentsRequest {})
        .await?
        .into_inner()
        .agents;
    let mut out = format!(
        "{:<38} {:<16} {:<16} {:<10} {:<9} {:<12} {:<6} VERSION\n",
        "ID", "REGION", "AZ", "LOCATION", "CONNECTED", "MODE", "ROLES"
    );
    for a in agents {
        let roles = if a.roles.is_empty() {
            "-".to_string()
        } else {
            a.roles.join(",")
        };
        out.push_str(&format!(
            "{:<38} {:<16} {:<16} {:<10} {:<9} {:<12} {:<6} {}\n",
            a.id, a.region, a.az, a.location, a.connected, a.control_mode, roles, a.version
        ));
    }
    Ok(out)
}

/// `controller matrix`: one matrix (or, with `--watch`, one every few seconds, each handed to
/// `print` as it arrives; returns when the stream ends).
///
/// # Errors
///
/// [`ClientError`] for usage, connection and status errors.
pub async fn matrix(a: &MatrixArgs, mut print: impl FnMut(&str)) -> Result<(), ClientError> {
    let mut c = connect(&a.client).await?;
    let protocol = a.protocol.clone().unwrap_or_default();
    if !a.watch {
        let m = c
            .get_matrix(pb::GetMatrixRequest {
                by: a.by.clone(),
                protocol,
            })
            .await?
            .into_inner();
        print(&render_matrix(&m));
        return Ok(());
    }
    let mut stream = c
        .watch_stats(pb::WatchStatsRequest { by: a.by.clone() })
        .await?
        .into_inner();
    while let Some(mut m) = stream.message().await? {
        if !protocol.is_empty() {
            m.cells.retain(|c| c.protocol == protocol);
        }
        print(&format!("--- {} ms\n{}", m.unix_ms, render_matrix(&m)));
    }
    Ok(())
}

/// `controller job watch ID`: a load job's live stats until it is done, handed to `print` as
/// they come. On a terminal (`tty`) each update redraws the table in place (cursor up over the
/// previous one, clear to the end); otherwise the header once, then each row whose figures
/// changed, as a plain line. Ends with `job ID done` when the job is stopped or its duration
/// ran out.
///
/// # Errors
///
/// [`ClientError`]: connection, an unknown job or one that is not a load job.
pub async fn watch_load(
    a: &crate::cli::JobIdArgs,
    tty: bool,
    mut print: impl FnMut(&str),
) -> Result<(), ClientError> {
    let mut c = connect(&a.client).await?;
    let mut stream = c
        .watch_load(pb::WatchLoadRequest {
            job_id: a.id.clone(),
        })
        .await?
        .into_inner();
    let mut watch = LoadWatch::new(tty);
    while let Some(s) = stream.message().await? {
        print(&watch.update(&s));
        if s.done {
            break;
        }
    }
    Ok(())
}

/// What `controller job watch` prints for each update ([`watch_load`]).
#[derive(Debug, Default)]
pub struct LoadWatch {
    /// Redraw in place (a terminal) or print changed rows.
    tty: bool,
    /// Lines of the table last drawn (tty).
    drawn: usize,
    /// Each row as last printed (not a tty).
    printed: std::collections::BTreeMap<(u32, String), String>,
    /// The header was printed (not a tty).
    header: bool,
}

impl LoadWatch {
    /// A printer for a terminal (`tty`) or not.
    pub fn new(tty: bool) -> Self {
        LoadWatch {
            tty,
            ..LoadWatch::default()
        }
    }

    /// The text for update `s`: on a terminal the cursor moved up over the last table, the rest
    /// of the screen cleared and the new table; otherwise the header (first time) and the rows
    /// that changed. A done job ends with `job ID done`.
    pub fn update(&mut self, s: &pb::LoadStats) -> String {
        let rows = load_rows(s);
        let mut out = String::new();
        if self.tty {
            if self.drawn > 0 {
                out.push_str(&format!("\x1b[{}A\x1b[J", self.drawn));
            }
            let table = render_load(s, &rows);
            self.drawn = table.lines().count();
            out.push_str(&table);
        } else {
            if !self.header {
                out.push_str(&load_header());
                out.push('\n');
                self.header = true;
            }
            for (key, line) in rows {
                if self.printed.get(&key) != Some(&line) {
                    out.push_str(&line);
                    out.push('\n');
                    self.printed.insert(key, line);
                }
            }
        }
        if s.done {
            out.push_str(&format!("job {} done\n", s.job_id));
        }
        out
    }
}

const LOAD_COLUMNS: [(&str, usize); 11] = [
    ("STEP", 4),
    ("REGION", 16),
    ("AGENTS", 6),
    ("LEVEL", 8),
    ("WORKERS", 7),
    ("INTENDED/s", 10),
    ("ACHIEVED/s", 10),
    ("P50 ms", 9),
    ("P99 ms", 9),
    ("ERRORS", 7),
    ("ERR%", 6),
];

fn load_header() -> String {
    LOAD_COLUMNS
        .iter()
        .enumerate()
        .map(|(i, (name, w))| {
            if i == 1 {
                format!("{name:<w$}")
            } else {
                format!("{name:>w$}")
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// One line per step and region, keyed by them, aligned under [`load_header`].
fn load_rows(s: &pb::LoadStats) -> Vec<((u32, String), String)> {
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.2}"));
    s.steps
        .iter()
        .map(|c| {
            let cells = [
                c.step.to_string(),
                c.region.clone(),
                c.agents.to_string(),
                format!("{}", (c.level * 100.0).round() / 100.0),
                c.workers.to_string(),
                format!("{:.1}", c.intended_rps),
                format!("{:.1}", c.achieved_rps),
                ms(c.p50_ms),
                ms(c.p99_ms),
                c.error_count.to_string(),
                c.error_share
                    .map_or_else(|| "-".to_string(), |e| format!("{:.1}", e * 100.0)),
            ];
            let line = cells
                .iter()
                .zip(LOAD_COLUMNS)
                .enumerate()
                .map(|(i, (v, (_, w)))| {
                    if i == 1 {
                        format!("{v:<w$}")
                    } else {
                        format!("{v:>w$}")
                    }
                })
                .collect::<Vec<_>>()
                .join(" ");
            ((c.step, c.region.clone()), line)
        })
        .collect()
}

/// The whole table of one update: a title line, the header and the rows.
fn render_load(s: &pb::LoadStats, rows: &[((u32, String), String)]) -> String {
    let state = if s.done {
        "done"
    } else if s.stopped {
        "stopping"
    } else {
        "running"
    };
    let mut out = format!("load job {} ({state})\n{}\n", s.job_id, load_header());
    if rows.is_empty() {
        out.push_str("no load seconds yet (agents report each second)\n");
    }
    for (_, line) in rows {
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// An aligned src × dst table per protocol of the direct paths; each cell is `p50/p99 ms
/// loss%`. Relayed paths (cells with `via`) follow their protocol's table, one line each:
/// `SRC -> DST via RELAY  p50/p99 ms loss%  penalty +X ms`.
pub fn render_matrix(m: &pb::Matrix) -> String {
    use std::collections::{BTreeMap, BTreeSet};
    if m.cells.is_empty() {
        return "no summaries yet (agents report every few seconds)\n".into();
    }
    let mut by_proto: BTreeMap<&str, (Vec<&pb::MatrixCell>, Vec<&pb::MatrixCell>)> =
        BTreeMap::new();
    for c in &m.cells {
        let (direct, relayed) = by_proto.entry(c.protocol.as_str()).or_default();
        if c.via.is_empty() {
            direct.push(c);
        } else {
            relayed.push(c);
        }
    }
    let mut out = String::new();
    for (proto, (cells, relayed)) in by_proto {
        if cells.is_empty() {
            render_relayed(proto, &relayed, &mut out);
            continue;
        }
        let srcs: BTreeSet<&str> = cells.iter().map(|c| c.src.as_str()).collect();
        let dsts: BTreeSet<&str> = cells.iter().map(|c| c.dst.as_str()).collect();
        let text =
            |c: &pb::MatrixCell| format!("{:.2}/{:.2} {:.1}%", c.p50_ms, c.p99_ms, c.loss * 100.0);
        let cell: BTreeMap<(&str, &str), String> = cells
            .iter()
            .map(|c| ((c.src.as_str(), c.dst.as_str()), text(c)))
            .collect();
        let header = format!("{} p50/p99 ms loss", proto.to_ascii_uppercase());
        let first = srcs
            .iter()
            .map(|s| s.len())
            .chain([header.len()])
            .max()
            .unwrap_or(0);
        let widths: Vec<usize> = dsts
            .iter()
            .map(|d| {
                srcs.iter()
                    .filter_map(|s| cell.get(&(*s, *d)).map(String::len))
                    .chain([d.len(), 1])
                    .max()
                    .unwrap_or(1)
            })
            .collect();
        out.push_str(&format!("{header:<first$}"));
        for (d, w) in dsts.iter().zip(&widths) {
            out.push_str(&format!("  {d:>w$}"));
        }
        out.push('\n');
        for s in &srcs {
            out.push_str(&format!("{s:<first$}"));
            for (d, w) in dsts.iter().zip(&widths) {
                let v = cell.get(&(*s, *d)).map_or("-", String::as_str);
                out.push_str(&format!("  {v:>w$}"));
            }
            out.push('\n');
        }
        out.push('\n');
        render_relayed(proto, &relayed, &mut out);
    }
    out
}

/// The relayed paths of one protocol, a line each (after a header), for [`render_matrix`].
fn render_relayed(proto: &str, relayed: &[&pb::MatrixCell], out: &mut String) {
    if relayed.is_empty() {
        return;
    }
    out.push_str(&format!(
        "{} relayed paths: p50/p99 ms loss, relay penalty\n",
        proto.to_ascii_uppercase()
    ));
    for c in relayed {
        let penalty = c
            .relay_penalty_ms
            .map_or(String::new(), |p| format!("  penalty {p:+.2} ms"));
        out.push_str(&format!(
            "{} -> {} via {}  {:.2}/{:.2} {:.1}%{penalty}\n",
            c.src,
            c.dst,
            c.via,
            c.p50_ms,
            c.p99_ms,
            c.loss * 100.0
        ));
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_table_is_aligned() {
        let step = |step: u32, region: &str, p99: Option<f64>| pb::LoadStepStats {
            step,
            region: region.into(),
            agents: 2,
            level: 10.0,
            workers: 20,
            intended_rps: 200.0,
            achieved_rps: 199.5,
            requests: 400,
            error_count: 4,
            error_share: Some(0.01),
            p50_ms: p99.map(|v| v / 2.0),
            p99_ms: p99,
            ..Default::default()
        };
        let s = pb::LoadStats {
            job_id: "j1".into(),
            steps: vec![step(0, "eu-west-1", Some(20.0)), step(1, "us-east-1", None)],
            ..Default::default()
        };
        let rows = load_rows(&s);
        let t = render_load(&s, &rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "load job j1 (running)");
        assert!(lines[1].starts_with("STEP REGION "), "{t}");
        assert!(lines[1..].iter().all(|l| l.len() == lines[1].len()), "{t}");
        assert!(
            lines[2].contains(" 10.00 ") && lines[2].contains(" 20.00 "),
            "{t}"
        );
        assert!(lines[2].ends_with("     4    1.0"), "{t}");
        assert!(lines[3].contains("        -         - "), "{t}");
        let empty = pb::LoadStats {
            job_id: "j2".into(),
            done: true,
            ..Default::default()
        };
        assert!(render_load(&empty, &[]).contains("(done)\nSTEP"));
    }

    #[test]
    fn job_watch_redraws_in_place_on_a_terminal_and_prints_changed_rows_otherwise() {
        let step = |step: u32, achieved_rps: f64| pb::LoadStepStats {
            step,
            region: "eu".into(),
            achieved_rps,
            ..Default::default()
        };
        let mut s = pb::LoadStats {
            job_id: "j1".into(),
            steps: vec![step(0, 10.0)],
            ..Default::default()
        };
        let mut tty = LoadWatch::new(true);
        let mut plain = LoadWatch::new(false);
        let first = tty.update(&s);
        assert!(
            first.starts_with("load job j1 (running)\nSTEP"),
            "{first:?}"
        );
        assert!(!first.contains('\x1b'));
        let p1 = plain.update(&s);
        assert_eq!(p1.lines().count(), 2, "{p1:?}");
        // Step 0 unchanged, step 1 new: the terminal redraws over the 3 lines drawn; the plain
        // output is the new row alone.
        s.steps.push(step(1, 20.0));
        let second = tty.update(&s);
        assert!(second.starts_with("\x1b[3A\x1b[J"), "{second:?}");
        assert_eq!(second.lines().count(), 4);
        let p2 = plain.update(&s);
        assert_eq!(p2.lines().count(), 1, "{p2:?}");
        assert!(p2.starts_with("   1 eu"), "{p2:?}");
        // Nothing changed: nothing printed; then done.
        assert_eq!(plain.update(&s), "");
        s.done = true;
        assert_eq!(plain.update(&s), "job j1 done\n");
        assert!(tty.update(&s).ends_with("job j1 done\n"));
    }

    #[test]
    fn matrix_table_is_aligned() {
        let cell = |src: &str, dst: &str, p50: f64| pb::MatrixCell {
            src: src.into(),
            dst: dst.into(),
            protocol: "udp".into(),
            p50_ms: p50,
            p99_ms: p50 * 2.0,
            loss: 0.5,
            samples: 10,
            via: String::new(),
            relay_penalty_ms: None,
        };
        let m = pb::Matrix {
            cells: vec![cell("a", "bb", 1.0), cell("ccc", "a", 12.5)],
            unix_ms: 0,
        };
        let t = render_matrix(&m);
        let lines: Vec<&str> = t.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(lines.iter().all(|l| l.len() == lines[0].len()), "{t}");
        assert!(lines[0].starts_with("UDP p50/p99 ms loss"), "{t}");
        assert!(
            lines[1].starts_with("a ") && lines[1].ends_with("1.00/2.00 50.0%"),
            "{t}"
        );
        assert!(
            lines[2].contains("12.50/25.00 50.0%") && lines[2].ends_with('-'),
            "{t}"
        );

        // A relayed path of a -> bb is listed below the table; the direct cell is unchanged.
        let mut m = m;
        let mut relayed = cell("a", "bb", 5.0);
        relayed.via = "r1".into();
        relayed.relay_penalty_ms = Some(4.0);
        m.cells.push(relayed);
        let t2 = render_matrix(&m);
        assert!(t2.starts_with(&t[..t.len() - 1]), "{t2}");
        assert!(
            t2.contains("UDP relayed paths")
                && t2.contains("a -> bb via r1  5.00/10.00 50.0%  penalty +4.00 ms"),
            "{t2}"
        );
    }
}
