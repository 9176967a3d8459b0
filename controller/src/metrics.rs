//! The controller's one Prometheus registry (prometheus-client), served on `--stats-port` at
//! `/metrics` ([`crate::app`]).
//!
//! Like the agent's, every count is taken where the thing happens, through the event functions
//! below. Two figures are read at scrape time instead ([`Metrics::encode`]): the agents in the
//! directory by state (from the [`Registry`]) and the age of each peer's last exchange.
//!
//! Every label value is bounded: fixed words, or the configured `--peer` URLs; never agent ids or
//! client addresses. The metrics (README "Controller stats server and metrics" documents each):
//!
//! - `meshlat_build_info{version}` gauge, 1;
//! - `meshlat_controller_sessions` gauge, agent sessions (`AgentService.Connect` streams) open;
//! - `meshlat_controller_agents{state="connected"|"disconnected"|"peer"}` gauge;
//! - `meshlat_controller_rounds_total` counter and `meshlat_controller_pinglist_seconds`
//!   histogram, the recompute rounds and what each cost;
//! - `meshlat_controller_job_acks_total{result="acked"|"rejected"}` counter;
//! - `meshlat_controller_federation_peers` gauge, `..._federation_peer_up{peer}` gauge and
//!   `..._federation_exchange_age_seconds{peer}` gauge;
//! - `meshlat_controller_load_reports_total{result="accepted"|reason}` counter, agents' load
//!   seconds for the live view, accepted or refused ([`crate::loadlive::Refusal::reason`]);
//! - `meshlat_controller_auth_failures_total{surface,reason}` and
//!   `meshlat_controller_rate_limited_total{surface}` counters;
//! - `meshlat_controller_scenarios{state="valid"|"invalid"}` gauge, the files of the
//!   `--scenarios` directory.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use http::Response;
use meshlat_guard::{Limited, Reject};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry as PromRegistry;

use crate::registry::Registry;

/// The version label of `meshlat_build_info`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The `state` values of `meshlat_controller_agents`.
pub const AGENT_STATES: [&str; 3] = ["connected", "disconnected", "peer"];

/// Labels of `meshlat_build_info`.
#[derive(Clone, Debug, EncodeLabelSet, Eq, Hash, PartialEq)]
pub struct BuildLabels {
    /// The binary's version.
    pub version: String,
}

/// Labels of `meshlat_controller_agents`.
#[derive(Clone, Debug, EncodeLabelSet, Eq, Hash, PartialEq)]
pub struct StateLabels {
    /// `connected`, `disconnected` or `peer`.
    pub state: &'static str,
}

/// Labels of `meshlat_controller_job_acks_total`.
#[derive(Clone, Debug, EncodeLabelSet, Eq, Hash, PartialEq)]
pub struct AckLabels {
    /// `acked` or `rejected`.
    pub result: &'static str,
}

/// Labels of `meshlat_controller_load_reports_total`.
#[derive(Clone, Debug, EncodeLabelSet, Eq, Hash, PartialEq)]
pub struct LoadReportLabels {
    /// `accepted`, or why refused ([`crate::loadlive::Refusal::reason`]).
    pub result: &'static str,
}

/// Labels of the per-peer federation gauges.
#[derive(Clone, Debug, EncodeLabelSet, Eq, Hash, PartialEq)]
pub struct PeerLabels {
    /// The peer's URL as configured (`--peer`).
    pub peer: String,
}

/// Labels of `meshlat_controller_auth_failures_total`.
#[derive(Clone, Debug, EncodeLabelSet, Eq, Hash, PartialEq)]
pub struct AuthLabels {
    /// `rest` or `grpc`.
    pub surface: &'static str,
    /// What was refused (see [`AuthFailure`]).
    pub reason: &'static str,
}

/// Labels of `meshlat_controller_scenarios`.
#[derive(Clone, Debug, EncodeLabelSet, Eq, Hash, PartialEq)]
pub struct ScenarioLabels {
    /// `valid` or `invalid`.
    pub state: &'static str,
}

/// Labels of `meshlat_controller_rate_limited_total`.
#[derive(Clone, Debug, EncodeLabelSet, Eq, Hash, PartialEq)]
pub struct SurfaceLabels {
    /// `rest` or `grpc`.
    pub surface: &'static str,
}

/// Why a call was refused authentication: the `reason` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `authorization: Bearer` credential at all (`missing`).
    Missing,
    /// A wrong, unknown or revoked operator credential (`operator_credential`).
    OperatorCredential,
    /// A wrong, revoked or expired join token (`join_token`).
    JoinToken,
    /// An agent's client certificate that does not verify (`client_certificate`).
    ClientCertificate,
    /// A wrong federation secret (`federation_secret`).
    FederationSecret,
    /// An agent session the identity rules refused: it may not speak for that agent id, or it
    /// must upgrade (`agent_identity`).
    AgentIdentity,
    /// A dashboard session cookie on a state-changing call without its CSRF token (`csrf`).
    Csrf,
}

impl AuthFailure {
    /// An operator credential refused: [`AuthFailure::OperatorCredential`] if one was
    /// `presented`, else [`AuthFailure::Missing`].
    pub fn refused(presented: bool) -> Self {
        if presented {
            AuthFailure::OperatorCredential
        } else {
            AuthFailure::Missing
        }
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::OperatorCredential => "operator_credential",
            AuthFailure::JoinToken => "join_token",
            AuthFailure::ClientCertificate => "client_certificate",
            AuthFailure::FederationSecret => "federation_secret",
            AuthFailure::AgentIdentity => "agent_identity",
            AuthFailure::Csrf => "csrf",
        }
    }
}

/// Every metric the controller exports.
#[derive(Debug)]
pub struct Metrics {
    registry: PromRegistry,
    /// Agent sessions open.
    pub sessions: Gauge,
    agents: Family<StateLabels, Gauge>,
    /// Recompute rounds done.
    pub rounds: Counter,
    /// What each round cost, in seconds.
    pub pinglist_seconds: Histogram,
    /// Job-set acknowledgements by result.
    pub job_acks: Family<AckLabels, Counter>,
    /// Agents' load seconds, accepted or refused.
    pub load_reports: Family<LoadReportLabels, Counter>,
    /// Configured peers.
    pub federation_peers: Gauge,
    peer_up: Family<PeerLabels, Gauge>,
    peer_age: Family<PeerLabels, Gauge<f64, AtomicU64>>,
    /// Each configured peer's last successful exchange (`None`: never).
    peer_last_ok: Mutex<BTreeMap<String, Option<Instant>>>,
    /// Refused authentications by surface and reason.
    pub auth_failures: Family<AuthLabels, Counter>,
    /// Rate-limited requests by surface.
    pub rate_limited: Family<SurfaceLabels, Counter>,
    /// Scenario files by state.
    scenarios: Family<ScenarioLabels, Gauge>,
    started: Instant,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process-wide metrics.
pub fn get() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    fn new() -> Self {
        let mut root = PromRegistry::with_prefix("meshlat");
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: VERSION.into(),
            })
            .set(1);
        root.register(
            "build_info",
            "1, labelled with the version of this binary",
            build_info,
        );
        let r = root.sub_registry_with_prefix("controller");
        let sessions = Gauge::default();
        r.register(
            "sessions",
            "Agent sessions (AgentService.Connect streams) open",
            sessions.clone(),
        );
        let agents = Family::<StateLabels, Gauge>::default();
        for state in AGENT_STATES {
            agents.get_or_create(&StateLabels { state }).set(0);
        }
        r.register(
            "agents",
            "Agents in the directory: connected here, known here but disconnected, or listed by a live federation peer",
            agents.clone(),
        );
        let rounds = Counter::default();
        r.register("rounds", "Pinglist recompute rounds done", rounds.clone());
        let pinglist_seconds = Histogram::new(exponential_buckets(0.0005, 4.0, 9));
        r.register(
            "pinglist_seconds",
            "Time a recompute round took: snapshot, pinglists, encoding and pushing the job sets",
            pinglist_seconds.clone(),
        );
        let job_acks = Family::<AckLabels, Counter>::default();
        r.register(
            "job_acks",
            "Job sets agents acknowledged, by result (rejected: with jobs the agent refused)",
            job_acks.clone(),
        );
        let load_reports = Family::<LoadReportLabels, Counter>::default();
        r.register(
            "load_reports",
            "Agents' load seconds for the live view, accepted or refused (by reason)",
            load_reports.clone(),
        );
        let federation_peers = Gauge::default();
        r.register(
            "federation_peers",
            "Peer controllers configured (--peer)",
            federation_peers.clone(),
        );
        let peer_up = Family::<PeerLabels, Gauge>::default();
        r.register(
            "federation_peer_up",
            "1 if the last directory exchange with the peer succeeded, else 0",
            peer_up.clone(),
        );
        let peer_age = Family::<PeerLabels, Gauge<f64, AtomicU64>>::default();
        r.register(
            "federation_exchange_age_seconds",
            "Seconds since the last successful exchange with the peer (since the controller started if none)",
            peer_age.clone(),
        );
        let auth_failures = Family::<AuthLabels, Counter>::default();
        r.register(
            "auth_failures",
            "Calls refused authentication, by surface and reason",
            auth_failures.clone(),
        );
        let rate_limited = Family::<SurfaceLabels, Counter>::default();
        r.register(
            "rate_limited",
            "Operator API requests refused by the rate limits, by surface",
            rate_limited.clone(),
        );
        let scenarios = Family::<ScenarioLabels, Gauge>::default();
        for state in ["valid", "invalid"] {
            scenarios.get_or_create(&ScenarioLabels { state }).set(0);
        }
        r.register(
            "scenarios",
            "Files of the --scenarios directory, by state: valid scenarios, or invalid (not loaded)",
            scenarios.clone(),
        );
        Metrics {
            scenarios,
            registry: root,
            sessions,
            agents,
            rounds,
            pinglist_seconds,
            job_acks,
            load_reports,
            federation_peers,
            peer_up,
            peer_age,
            peer_last_ok: Mutex::new(BTreeMap::new()),
            auth_failures,
            rate_limited,
            started: Instant::now(),
        }
    }

    /// Prometheus text exposition of every metric, with the agent counts of `registry` and the
    /// peers' exchange ages taken now.
    pub fn encode(&self, registry: Option<&Registry>) -> String {
        if let Some(r) = registry {
            let c = r.agent_counts();
            for (state, n) in AGENT_STATES
                .into_iter()
                .zip([c.connected, c.disconnected, c.peer])
            {
                self.agents
                    .get_or_create(&StateLabels { state })
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
        let now = Instant::now();
        for (peer, last) in self.peers().iter() {
            let since = last.unwrap_or(self.started);
            self.peer_age
                .get_or_create(&PeerLabels { peer: peer.clone() })
                .set(now.saturating_duration_since(since).as_secs_f64());
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    fn peers(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Option<Instant>>> {
        self.peer_last_ok.lock().unwrap_or_else(|e| e.into_inner())
    }
}

// === events ===

/// Counts an open agent session until dropped.
#[derive(Debug)]
#[must_use = "the session counts while this is held"]
pub struct OpenSession(());

impl Drop for OpenSession {
    fn drop(&mut self) {
        get().sessions.dec();
    }
}

/// An agent session started; it counts until the returned guard is dropped.
pub fn session_opened() -> OpenSession {
    get().sessions.inc();
    OpenSession(())
}

/// A recompute round finished, having cost `cost`.
pub fn round_done(cost: Duration) {
    let m = get();
    m.rounds.inc();
    m.pinglist_seconds.observe(cost.as_secs_f64());
}

/// The `--scenarios` directory was read: `valid` scenarios, `invalid` files.
pub fn scenarios_listed(valid: usize, invalid: usize) {
    let m = get();
    for (state, n) in [("valid", valid), ("invalid", invalid)] {
        m.scenarios
            .get_or_create(&ScenarioLabels { state })
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
}

/// An agent acknowledged a job set, rejecting some of its jobs or none.
pub fn job_ack(rejected: bool) {
    get()
        .job_acks
        .get_or_create(&AckLabels {
            result: if rejected { "rejected" } else { "acked" },
        })
        .inc();
}

/// An agent's load second was accepted (`None`) or refused for `reason`.
pub fn load_report(refused: Option<&'static str>) {
    get()
        .load_reports
        .get_or_create(&LoadReportLabels {
            result: refused.unwrap_or("accepted"),
        })
        .inc();
}

/// The configured peers (`--peer`): counted, each down and never exchanged with until its
/// first exchange.
pub fn peers_configured<'a>(urls: impl IntoIterator<Item = &'a str>) {
    let m = get();
    let mut peers = m.peers();
    for url in urls {
        peers.entry(url.to_string()).or_insert(None);
        m.peer_up
            .get_or_create(&PeerLabels { peer: url.into() })
            .set(0);
    }
    m.federation_peers
        .set(i64::try_from(peers.len()).unwrap_or(i64::MAX));
}

/// An exchange with peer `url` succeeded (its directory was merged) or failed.
pub fn peer_exchange(url: &str, ok: bool) {
    let m = get();
    m.peer_up
        .get_or_create(&PeerLabels { peer: url.into() })
        .set(i64::from(ok));
    if ok {
        m.peers().insert(url.to_string(), Some(Instant::now()));
    }
}

/// A call on `surface` (`rest` or `grpc`) was refused authentication.
pub fn auth_failure(surface: &'static str, reason: AuthFailure) {
    get()
        .auth_failures
        .get_or_create(&AuthLabels {
            surface,
            reason: reason.as_str(),
        })
        .inc();
}

/// A request on `surface` was refused by the rate limits.
pub fn rate_limited(surface: &'static str) {
    get()
        .rate_limited
        .get_or_create(&SurfaceLabels { surface })
        .inc();
}

/// A rate limiter's answer `R` that also counts each refusal in
/// `meshlat_controller_rate_limited_total{surface}`.
#[derive(Clone, Copy, Debug)]
pub struct CountRejected<R> {
    reject: R,
    surface: &'static str,
}

impl<R> CountRejected<R> {
    /// `reject`, counting on `surface`.
    pub fn new(reject: R, surface: &'static str) -> Self {
        CountRejected { reject, surface }
    }
}

impl<Inner, R: Reject<Inner>> Reject<Inner> for CountRejected<R> {
    type Body = R::Body;

    fn reject(&self, limited: &Limited) -> Response<Self::Body> {
        rate_limited(self.surface);
        self.reject.reject(limited)
    }

    fn pass(&self, response: Response<Inner>) -> Response<Self::Body> {
        self.reject.pass(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `# TYPE` lines of an exposition, as `(name, type)`.
    fn types(text: &str) -> BTreeMap<String, String> {
        text.lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_once(' '))
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect()
    }

    #[test]
    fn exposition_names_and_types() {
        session_opened_and_closed();
        round_done(Duration::from_millis(3));
        job_ack(false);
        job_ack(true);
        peers_configured(["https://peer-a:7400"]);
        auth_failure("rest", AuthFailure::OperatorCredential);
        rate_limited("grpc");
        let text = get().encode(None);
        let t = types(&text);
        for (name, kind) in [
            ("meshlat_build_info", "gauge"),
            ("meshlat_controller_sessions", "gauge"),
            ("meshlat_controller_agents", "gauge"),
            ("meshlat_controller_rounds", "counter"),
            ("meshlat_controller_pinglist_seconds", "histogram"),
            ("meshlat_controller_job_acks", "counter"),
            ("meshlat_controller_federation_peers", "gauge"),
            ("meshlat_controller_federation_peer_up", "gauge"),
            (
                "meshlat_controller_federation_exchange_age_seconds",
                "gauge",
            ),
            ("meshlat_controller_auth_failures", "counter"),
            ("meshlat_controller_rate_limited", "counter"),
            ("meshlat_controller_scenarios", "gauge"),
        ] {
            assert_eq!(
                t.get(name).map(String::as_str),
                Some(kind),
                "{name}\n{text}"
            );
        }
        for sample in [
            format!("meshlat_build_info{{version=\"{VERSION}\"}} 1"),
            "meshlat_controller_job_acks_total{result=\"acked\"} ".into(),
            "meshlat_controller_job_acks_total{result=\"rejected\"} ".into(),
            "meshlat_controller_pinglist_seconds_bucket{le=\"0.008\"} ".into(),
            "meshlat_controller_federation_peers 1".into(),
            "meshlat_controller_federation_peer_up{peer=\"https://peer-a:7400\"} 0".into(),
            "meshlat_controller_federation_exchange_age_seconds{peer=\"https://peer-a:7400\"} "
                .into(),
            "meshlat_controller_auth_failures_total{surface=\"rest\",reason=\"operator_credential\"} "
                .into(),
            "meshlat_controller_rate_limited_total{surface=\"grpc\"} ".into(),
            "meshlat_controller_scenarios{state=\"invalid\"} ".into(),
        ] {
            assert!(text.contains(&sample), "{sample:?} missing from\n{text}");
        }
        assert!(
            text.lines()
                .any(|l| l.starts_with("meshlat_controller_rounds_total ") && !l.ends_with(" 0")),
            "{text}"
        );
        peer_exchange("https://peer-a:7400", true);
        let text = get().encode(None);
        assert!(
            text.contains("meshlat_controller_federation_peer_up{peer=\"https://peer-a:7400\"} 1"),
            "{text}"
        );
    }

    fn session_opened_and_closed() {
        let before = get().sessions.get();
        let s = session_opened();
        assert_eq!(get().sessions.get(), before + 1);
        drop(s);
        assert_eq!(get().sessions.get(), before);
    }
}
