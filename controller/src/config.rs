//! Validated controller configuration ("parse, don't validate", STYLE §7).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use meshlat_guard::{ConnLimits, Quota};

use crate::auth::Seeds;
use crate::cli::ServeArgs;
use crate::limits::{Limits, MAX_MAX_JOBS};

/// File descriptors kept out of the connection caps' budget: the runtime, logs, state files,
/// outgoing connections to peers and S3.
pub const FD_RESERVE: u64 = 32;

/// A configuration error naming the flag.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A flag is missing.
    #[error("{flag} is required")]
    Missing {
        /// Flag.
        flag: &'static str,
    },
    /// A flag has a bad value.
    #[error("{flag} {value:?}: {reason}")]
    Invalid {
        /// Flag.
        flag: &'static str,
        /// Value.
        value: String,
        /// Why.
        reason: &'static str,
    },
    /// A flag has a bad value, with a reason made from it.
    #[error("{flag} {value:?}: {reason}")]
    InvalidValue {
        /// Flag.
        flag: &'static str,
        /// Value.
        value: String,
        /// Why.
        reason: String,
    },
}

/// Validated `controller serve` configuration.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Region served.
    pub region: String,
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// REST listen address (`None`: off).
    pub rest_listen: Option<SocketAddr>,
    /// Data directory.
    pub data_dir: PathBuf,
    /// No TLS.
    pub plaintext: bool,
    /// Server certificate names.
    pub sans: Vec<String>,
    /// Job-set lease.
    pub lease: Duration,
    /// Agent liveness TTL.
    pub agent_ttl: Duration,
    /// Full-mesh size limit.
    pub max_full_mesh: usize,
    /// The caps ([`crate::limits`]).
    pub limits: Limits,
    /// Seeded secrets.
    pub seeds: Seeds,
    /// Print generated secrets on stdout too (`--print-secrets`).
    pub print_secrets: bool,
    /// Federation with peer controllers (`None`: not federated).
    pub federation: Option<FederationConfig>,
    /// The S3 state store (`None`: the data directory only).
    pub state: Option<StateStoreConfig>,
    /// Caps and deadlines of the gRPC listener (agents, operators, federation peers).
    pub grpc_limits: ConnLimits,
    /// Caps and deadlines of the REST listener.
    pub rest_limits: ConnLimits,
    /// Operator API rate per source address (`None`: unlimited).
    pub rate_per_ip: Option<Quota>,
    /// Operator API rate per credential (`None`: unlimited).
    pub rate_per_credential: Option<Quota>,
    /// Which agents are relays (`--relay-agent`).
    pub relay_policy: crate::relay_policy::RelayPolicy,
    /// Which addresses agents may advertise (`--agent-cidr`).
    pub address_policy: crate::address_policy::AddressPolicy,
    /// What the controller writes into Secrets Manager at start (`None`: nothing).
    pub publish: Option<PublishConfig>,
    /// Jobs ensured at every start (`--default-jobs`), each with a unique name.
    pub default_jobs: Vec<meshlat_proto::pb::JobSpec>,
    /// Validity of agent certificates (`--agent-cert-validity`).
    pub agent_cert_validity: Duration,
    /// Refuse agents without an identity (`--require-agent-identity`).
    pub require_agent_identity: bool,
}

/// Most `--default-jobs` entries.
pub const MAX_DEFAULT_JOBS: usize = 32;

fn default_jobs(v: &Option<String>) -> Result<Vec<meshlat_proto::pb::JobSpec>, ConfigError> {
    let Some(text) = nonempty(v) else {
        return Ok(Vec::new());
    };
    let bad = |reason: String| ConfigError::InvalidValue {
        flag: "--default-jobs",
        value: format!("<{} bytes>", text.len()),
        reason,
    };
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let items = value
        .as_array()
        .ok_or_else(|| bad("must be a JSON array of job specs".into()))?;
    if items.len() > MAX_DEFAULT_JOBS {
        return Err(bad(format!(
            "{} jobs: at most {MAX_DEFAULT_JOBS}",
            items.len()
        )));
    }
    let mut specs: Vec<meshlat_proto::pb::JobSpec> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let spec = crate::json::spec_from_value(item).map_err(|e| {
            bad(format!(
                "[{i}].{}: {}",
                e.field.trim_start_matches('.'),
                e.reason
            ))
        })?;
        meshlat_proto::job::validate(&spec).map_err(|e| bad(format!("[{i}].{e}")))?;
        if spec.name.is_empty() {
            return Err(bad(format!(
                "[{i}].name: a default job needs a name (it is found by it)"
            )));
        }
        if specs.iter().any(|s| s.name == spec.name) {
            return Err(bad(format!("[{i}].name: {:?} is given twice", spec.name)));
        }
        specs.push(spec);
    }
    Ok(specs)
}

/// Validated `--join-token-secret-arn`, `--ca-cert-secret-arn` and `--secrets-endpoint`.
#[derive(Clone, Debug, PartialEq)]
pub struct PublishConfig {
    /// Secret receiving the join token, with the join secret it is made from.
    pub join_token: Option<(SecretArn, String)>,
    /// Secret receiving the CA certificate.
    pub ca_cert: Option<SecretArn>,
    /// Endpoint URL override.
    pub endpoint: Option<String>,
}

/// A Secrets Manager secret's full ARN, `arn:PARTITION:secretsmanager:REGION:ACCOUNT:secret:NAME`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretArn {
    /// The ARN.
    pub arn: String,
    /// Its region (calls go there).
    pub region: String,
}

impl SecretArn {
    /// Parses a full secret ARN.
    ///
    /// # Errors
    ///
    /// Why it is not one.
    pub fn parse(v: &str) -> Result<Self, &'static str> {
        let parts: Vec<&str> = v.splitn(7, ':').collect();
        let ok = parts.len() == 7
            && parts[0] == "arn"
            && parts[1].starts_with("aws")
            && parts[2] == "secretsmanager"
            && !parts[3].is_empty()
            && parts[3]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
            && parts[4].len() == 12
            && parts[4].chars().all(|c| c.is_ascii_digit())
            && parts[5] == "secret"
            && !parts[6].is_empty()
            && !parts[6]
                .chars()
                .any(|c| c.is_control() || c.is_whitespace());
        if !ok {
            return Err(
                "not a Secrets Manager secret ARN (arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME)",
            );
        }
        Ok(SecretArn {
            arn: v.to_string(),
            region: parts[3].to_string(),
        })
    }
}

/// An emulator endpoint flag: http(s)://host[:port], no path.
fn endpoint_url(flag: &'static str, v: &Option<String>) -> Result<Option<String>, ConfigError> {
    let endpoint = nonempty(v).map(|e| e.trim_end_matches('/').to_string());
    if let Some(e) = &endpoint {
        let ok = e.parse::<http::Uri>().is_ok_and(|u| {
            matches!(u.scheme_str(), Some("http" | "https"))
                && u.host().is_some_and(|h| !h.is_empty())
                && u.path_and_query()
                    .is_none_or(|p| p.as_str() == "/" || p.as_str().is_empty())
        });
        if !ok {
            return Err(ConfigError::Invalid {
                flag,
                value: e.clone(),
                reason: "must be an http:// or https:// URL with a host and no path",
            });
        }
    }
    Ok(endpoint)
}

fn publish(a: &ServeArgs) -> Result<Option<PublishConfig>, ConfigError> {
    let arn = |flag: &'static str, v: &Option<String>| -> Result<Option<SecretArn>, ConfigError> {
        nonempty(v)
            .map(|v| {
                SecretArn::parse(v).map_err(|reason| ConfigError::Invalid {
                    flag,
                    value: v.into(),
                    reason,
                })
            })
            .transpose()
    };
    let token = arn("--join-token-secret-arn", &a.join_token_secret_arn)?;
    let ca = arn("--ca-cert-secret-arn", &a.ca_cert_secret_arn)?;
    let endpoint = endpoint_url("--secrets-endpoint", &a.secrets_endpoint)?;
    if token.is_none() && ca.is_none() {
        if let Some(e) = endpoint {
            return Err(ConfigError::InvalidValue {
                flag: "--secrets-endpoint",
                value: e,
                reason: "needs --join-token-secret-arn or --ca-cert-secret-arn".into(),
            });
        }
        return Ok(None);
    }
    let join_token = match token {
        None => None,
        Some(t) => {
            // A generated join secret is stored hashed: only a seeded one can be written out
            // again on every start.
            let Some(secret) = nonempty(&a.join_secret) else {
                return Err(ConfigError::Invalid {
                    flag: "--join-token-secret-arn",
                    value: t.arn,
                    reason: "needs --join-secret (the token embeds it)",
                });
            };
            Some((t, secret.to_string()))
        }
    };
    Ok(Some(PublishConfig {
        join_token,
        ca_cert: ca,
        endpoint,
    }))
}

/// Validates `--peer-ca-pem`: certificates only.
fn peer_ca_pem(v: &Option<String>) -> Result<Option<String>, ConfigError> {
    let Some(pem) = nonempty(v) else {
        return Ok(None);
    };
    let bad = |reason: &'static str| ConfigError::Invalid {
        flag: "--peer-ca-pem",
        value: format!("<{} bytes>", pem.len()),
        reason,
    };
    if pem.contains("PRIVATE KEY") {
        return Err(bad("holds a private key: give CA certificates only"));
    }
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(bad(
            "no PEM certificate (-----BEGIN CERTIFICATE-----) in it",
        ));
    }
    Ok(Some(pem.to_string()))
}

/// Default total caps `(grpc, rest)` for a process allowed `nofile` open files: the budget
/// is `nofile` minus [`FD_RESERVE`]; REST gets an eighth of it (4 to 1024), gRPC the rest
/// (at most 1,000,000). Unknown limits count as 65,536.
pub fn default_max_conns(nofile: Option<u64>) -> (usize, usize) {
    let budget = nofile
        .unwrap_or(65_536)
        .saturating_sub(FD_RESERVE)
        .clamp(8, 2_000_000) as usize;
    let rest = (budget / 8).clamp(4, 1024);
    let grpc = budget.saturating_sub(rest).clamp(4, 1_000_000);
    (grpc, rest)
}

fn at_least_one(flag: &'static str, v: usize) -> Result<usize, ConfigError> {
    if v == 0 {
        return Err(ConfigError::Invalid {
            flag,
            value: "0".into(),
            reason: "must be at least 1",
        });
    }
    Ok(v)
}

fn quota(flag: &'static str, per_second: f64, burst: u32) -> Result<Option<Quota>, ConfigError> {
    if !per_second.is_finite() || !(0.0..=1_000_000.0).contains(&per_second) {
        return Err(ConfigError::Invalid {
            flag,
            value: per_second.to_string(),
            reason: "must be 0 (no limit) to 1000000 requests per second",
        });
    }
    Ok((per_second > 0.0).then_some(Quota { per_second, burst }))
}

fn conn_limits(a: &ServeArgs) -> Result<(ConnLimits, ConnLimits), ConfigError> {
    let (grpc_default, rest_default) = default_max_conns(meshlat_guard::open_files_limit());
    let d = a.deadlines.deadlines().map_err(|e| ConfigError::Invalid {
        flag: e.flag,
        value: e.value.to_string(),
        reason: "must be 0.1 to 3600 seconds",
    })?;
    let grpc = ConnLimits {
        max_conns: at_least_one("--grpc-max-conns", a.grpc_max_conns.unwrap_or(grpc_default))?,
        max_conns_per_ip: at_least_one("--grpc-max-conns-per-ip", a.grpc_max_conns_per_ip)?,
        handshake_timeout: d.handshake,
        header_timeout: d.header,
        idle_timeout: d.idle,
    };
    let rest = ConnLimits {
        max_conns: at_least_one("--rest-max-conns", a.rest_max_conns.unwrap_or(rest_default))?,
        max_conns_per_ip: at_least_one("--rest-max-conns-per-ip", a.rest_max_conns_per_ip)?,
        ..grpc
    };
    Ok((grpc, rest))
}

/// Validated `--state-*` flags.
#[derive(Clone, Debug, PartialEq)]
pub struct StateStoreConfig {
    /// Bucket name.
    pub bucket: String,
    /// Key prefix, without leading or trailing `/`.
    pub prefix: String,
    /// Region (`None`: the SDK's chain, e.g. `AWS_REGION`).
    pub region: Option<String>,
    /// Endpoint URL override.
    pub endpoint: Option<String>,
}

/// Validated federation flags.
#[derive(Clone)]
pub struct FederationConfig {
    /// Peer gRPC URLs.
    pub peers: Vec<String>,
    /// The shared secret, sent to peers (and checked hashed on incoming exchanges); it derives
    /// the mesh keys agents sign with.
    pub secret: String,
    /// Secrets also accepted during a rotation (`--federation-secret-next`,
    /// `--federation-secret-previous`): from peers, and their keys by agents.
    pub accepted: Vec<String>,
    /// CA files trusted for https:// peers.
    pub peer_ca: Vec<PathBuf>,
    /// CA certificates (PEM text) trusted for https:// peers, besides `peer_ca`.
    pub peer_ca_pem: Option<String>,
    /// Peer entries age out this long after their last exchange.
    pub ttl: Duration,
}

impl std::fmt::Debug for FederationConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FederationConfig")
            .field("peers", &self.peers)
            .field("secret", &"<redacted>")
            .field("accepted", &self.accepted.len())
            .field("peer_ca", &self.peer_ca)
            .field("peer_ca_pem", &self.peer_ca_pem.as_ref().map(String::len))
            .field("ttl", &self.ttl)
            .finish()
    }
}

fn secs(flag: &'static str, v: f64) -> Result<Duration, ConfigError> {
    if !v.is_finite() || !(1.0..=86_400.0).contains(&v) {
        return Err(ConfigError::Invalid {
            flag,
            value: v.to_string(),
            reason: "must be 1 to 86400 seconds",
        });
    }
    Ok(Duration::from_secs_f64(v))
}

/// A duration flag of 1 s to a year.
fn long_secs(flag: &'static str, v: f64) -> Result<Duration, ConfigError> {
    if !v.is_finite() || !(1.0..=366.0 * 86_400.0).contains(&v) {
        return Err(ConfigError::Invalid {
            flag,
            value: v.to_string(),
            reason: "must be 1 second to 366 days",
        });
    }
    Ok(Duration::from_secs_f64(v))
}

/// A count flag of at least 1 (and at most `max`).
fn count(flag: &'static str, v: usize, max: usize) -> Result<usize, ConfigError> {
    if v == 0 || v > max {
        return Err(ConfigError::InvalidValue {
            flag,
            value: v.to_string(),
            reason: if max == usize::MAX {
                "must be at least 1".to_string()
            } else {
                format!("must be 1 to {max}")
            },
        });
    }
    Ok(v)
}

fn limits(a: &ServeArgs, agent_ttl: Duration) -> Result<Limits, ConfigError> {
    let agent_expiry = long_secs("--agent-expiry", a.agent_expiry)?;
    if agent_expiry < agent_ttl {
        return Err(ConfigError::Invalid {
            flag: "--agent-expiry",
            value: a.agent_expiry.to_string(),
            reason: "must be at least --agent-ttl",
        });
    }
    Ok(Limits {
        max_jobs: count("--max-jobs", a.max_jobs, MAX_MAX_JOBS)?,
        stopped_job_ttl: long_secs("--stopped-job-ttl", a.stopped_job_ttl)?,
        max_agents: count("--max-agents", a.max_agents, usize::MAX)?,
        max_agents_per_token: count("--max-agents-per-token", a.max_agents_per_token, usize::MAX)?,
        agent_expiry,
        max_summary_bytes: count("--max-summary-bytes", a.max_summary_bytes, 64 << 20)?,
        max_live_pairs: count("--max-live-pairs", a.max_live_pairs, usize::MAX)?,
        max_live_bytes: count("--max-live-bytes", a.max_live_bytes, usize::MAX)?,
        max_peer_agents: count("--max-peer-agents", a.max_peer_agents, usize::MAX)?,
        max_peer_jobs: count("--max-peer-jobs", a.max_peer_jobs, usize::MAX)?,
    })
}

fn addr(flag: &'static str, v: &str) -> Result<SocketAddr, ConfigError> {
    v.parse().map_err(|_| ConfigError::Invalid {
        flag,
        value: v.into(),
        reason: "not an IP:PORT address",
    })
}

fn nonempty(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

fn state_store(a: &ServeArgs, region: &str) -> Result<Option<StateStoreConfig>, ConfigError> {
    let Some(bucket) = nonempty(&a.state_bucket) else {
        for (flag, v) in [
            ("--state-prefix", &a.state_prefix),
            ("--state-region", &a.state_region),
            ("--state-endpoint", &a.state_endpoint),
        ] {
            if nonempty(v).is_some() {
                return Err(ConfigError::Invalid {
                    flag,
                    value: v.clone().unwrap_or_default(),
                    reason: "needs --state-bucket",
                });
            }
        }
        return Ok(None);
    };
    let b = bucket.as_bytes();
    let edge_ok = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    if !(3..=63).contains(&b.len())
        || !b.iter().all(|c| edge_ok(c) || matches!(c, b'.' | b'-'))
        || !b.first().is_some_and(edge_ok)
        || !b.last().is_some_and(edge_ok)
    {
        return Err(ConfigError::Invalid {
            flag: "--state-bucket",
            value: bucket.into(),
            reason: "not an S3 bucket name (3-63 of a-z, 0-9, '.', '-'; starting and ending with a letter or digit)",
        });
    }
    let prefix = match nonempty(&a.state_prefix) {
        None => format!("controller-state/{region}"),
        Some(p) => p.trim_matches('/').to_string(),
    };
    if prefix.is_empty()
        || prefix.len() > 512
        || prefix
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
        || !prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/!-_.*'()".contains(c))
    {
        return Err(ConfigError::Invalid {
            flag: "--state-prefix",
            value: a.state_prefix.clone().unwrap_or_default(),
            reason: "use path segments of letters, digits and !-_.*'() separated by single '/'",
        });
    }
    let state_region = nonempty(&a.state_region).map(str::to_string);
    if let Some(r) = &state_region
        && !r.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(ConfigError::Invalid {
            flag: "--state-region",
            value: r.clone(),
            reason: "not an AWS region name",
        });
    }
    let endpoint = endpoint_url("--state-endpoint", &a.state_endpoint)?;
    Ok(Some(StateStoreConfig {
        bucket: bucket.into(),
        prefix,
        region: state_region,
        endpoint,
    }))
}

/// Shortest federation secret: it derives the mesh keys, so it must carry a key's entropy.
pub const MIN_FEDERATION_SECRET: usize = 32;

fn federation_secret(flag: &'static str, v: &str) -> Result<String, ConfigError> {
    if v.len() < MIN_FEDERATION_SECRET {
        return Err(ConfigError::Invalid {
            flag,
            value: format!("<{} bytes>", v.len()),
            reason: "must be at least 32 bytes (e.g. openssl rand -hex 32)",
        });
    }
    Ok(v.to_string())
}

fn federation(a: &ServeArgs) -> Result<Option<FederationConfig>, ConfigError> {
    let secret = nonempty(&a.federation_secret);
    let extra = [
        (
            "--federation-secret-previous",
            nonempty(&a.federation_secret_previous),
        ),
        (
            "--federation-secret-next",
            nonempty(&a.federation_secret_next),
        ),
    ];
    let Some(secret) = secret else {
        if !a.peers.is_empty() {
            return Err(ConfigError::Missing {
                flag: "--federation-secret",
            });
        }
        if let Some(&(flag, _)) = extra.iter().find(|(_, v)| v.is_some()) {
            return Err(ConfigError::Invalid {
                flag,
                value: "<secret>".into(),
                reason: "needs --federation-secret",
            });
        }
        return Ok(None);
    };
    let secret = federation_secret("--federation-secret", secret)?;
    let mut accepted = Vec::new();
    for (flag, v) in extra {
        if let Some(v) = v {
            accepted.push(federation_secret(flag, v)?);
        }
    }
    let pem = peer_ca_pem(&a.peer_ca_pem)?;
    let peers: Vec<String> = a
        .peers
        .iter()
        .map(|p| p.trim().trim_end_matches('/').to_string())
        .filter(|p| !p.is_empty())
        .collect();
    for p in &peers {
        let ok = p.starts_with("https://") || (a.plaintext && p.starts_with("http://"));
        if !ok {
            return Err(ConfigError::Invalid {
                flag: "--peer",
                value: p.clone(),
                reason: if p.starts_with("http://") {
                    "must be an https:// URL (http:// only with --plaintext, for local experiments)"
                } else {
                    "must be an https:// URL"
                },
            });
        }
        if p.starts_with("https://") && a.peer_ca.is_empty() && pem.is_none() {
            return Err(ConfigError::Missing { flag: "--peer-ca" });
        }
    }
    Ok(Some(FederationConfig {
        peers,
        secret,
        accepted,
        peer_ca: a.peer_ca.clone(),
        peer_ca_pem: pem,
        ttl: secs("--peer-ttl", a.peer_ttl)?,
    }))
}

impl ServeConfig {
    /// Validates `serve` flags.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the flag.
    pub fn from_args(a: &ServeArgs) -> Result<Self, ConfigError> {
        let region = a
            .region
            .as_deref()
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .ok_or(ConfigError::Missing { flag: "--region" })?;
        if !region
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(ConfigError::Invalid {
                flag: "--region",
                value: region.into(),
                reason: "use letters, digits, '-', '_' and '.' only",
            });
        }
        let listen = addr("--listen", &a.listen)?;
        let rest_listen = match a.rest_listen.trim() {
            "off" | "" => None,
            v => Some(addr("--rest-listen", v)?),
        };
        let mut sans: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
        if !listen.ip().is_unspecified() {
            sans.push(listen.ip().to_string());
        }
        sans.extend(
            a.tls_san
                .iter()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty()),
        );
        sans.dedup();
        let lease = secs("--lease", a.lease)?;
        let agent_ttl = secs("--agent-ttl", a.agent_ttl)?;
        let limits = limits(a, agent_ttl)?;
        if a.max_full_mesh == 0 {
            return Err(ConfigError::Invalid {
                flag: "--max-full-mesh",
                value: "0".into(),
                reason: "must be at least 1",
            });
        }
        let federation = federation(a)?;
        let state = state_store(a, region)?;
        let relay_policy = crate::relay_policy::RelayPolicy::parse(&a.relay_agents).map_err(
            |(value, reason)| ConfigError::InvalidValue {
                flag: "--relay-agent",
                value,
                reason,
            },
        )?;
        let address_policy = crate::address_policy::AddressPolicy::parse(&a.agent_cidrs).map_err(
            |(value, reason)| ConfigError::InvalidValue {
                flag: "--agent-cidr",
                value,
                reason,
            },
        )?;
        let (grpc_limits, rest_limits) = conn_limits(a)?;
        if a.rate_limit_burst == 0 {
            return Err(ConfigError::Invalid {
                flag: "--rate-limit-burst",
                value: "0".into(),
                reason: "must be at least 1",
            });
        }
        let publish = publish(a)?;
        let default_jobs = default_jobs(&a.default_jobs)?;
        if a.require_agent_identity && a.plaintext {
            return Err(ConfigError::Invalid {
                flag: "--require-agent-identity",
                value: "true".into(),
                reason: "needs TLS (identities are client certificates), not --plaintext",
            });
        }
        Ok(ServeConfig {
            default_jobs,
            publish,
            agent_cert_validity: long_secs("--agent-cert-validity", a.agent_cert_validity)?,
            require_agent_identity: a.require_agent_identity,
            relay_policy,
            address_policy,
            grpc_limits,
            rest_limits,
            rate_per_ip: quota(
                "--rate-limit-per-ip",
                a.rate_limit_per_ip,
                a.rate_limit_burst,
            )?,
            rate_per_credential: quota(
                "--rate-limit-per-credential",
                a.rate_limit_per_credential,
                a.rate_limit_burst,
            )?,
            state,
            federation,
            region: region.into(),
            listen,
            rest_listen,
            data_dir: a.data_dir.clone(),
            plaintext: a.plaintext,
            sans,
            lease,
            agent_ttl,
            max_full_mesh: a.max_full_mesh,
            limits,
            seeds: Seeds {
                join_secret: a.join_secret.clone(),
                operator_credential: a.operator_credential.clone(),
            },
            print_secrets: a.print_secrets,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn default_caps_stay_below_the_open_files_limit() {
        for nofile in [64u64, 1024, 20_000, 1 << 20] {
            let (g, r) = default_max_conns(Some(nofile));
            assert!((g + r) as u64 + FD_RESERVE <= nofile, "{nofile}: {g} + {r}");
            assert!(g >= r, "{nofile}");
        }
        assert_eq!(default_max_conns(Some(64)), (28, 4));
        // The 10,000-session benchmark raises the limit to the hard limit (20,000 here).
        assert!(default_max_conns(Some(20_000)).0 >= 10_000);
    }

    fn parse(args: &[&str]) -> Result<ServeConfig, String> {
        let mut argv = vec!["controller", "serve"];
        argv.extend_from_slice(args);
        let cli = crate::cli::Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        let Some(crate::cli::Command::Serve(a)) = cli.command else {
            return Err("not serve".into());
        };
        ServeConfig::from_args(&a).map_err(|e| e.to_string())
    }

    /// A federation secret of the shortest accepted length.
    const FED: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn federation_secrets_and_plaintext_peers() {
        let c = parse(&[
            "--region",
            "a",
            "--federation-secret",
            FED,
            "--federation-secret-previous",
            "previous-0123456789abcdef0123456789",
            "--plaintext",
            "--peer",
            "http://127.0.0.1:1",
            "--operator-credential",
            "op:secret-value-0123456789",
        ])
        .expect("valid");
        let printed = format!("{c:?}");
        for secret in [FED, "previous-0123456789abcdef0123456789", "secret-value"] {
            assert!(!printed.contains(secret), "Debug shows {secret}: {printed}");
        }
        let f = c.federation.expect("federated");
        assert_eq!(f.secret, FED);
        assert_eq!(f.accepted, vec!["previous-0123456789abcdef0123456789"]);
        assert_eq!(f.peers, vec!["http://127.0.0.1:1"]);
    }

    const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    const ARN: &str = "arn:aws:secretsmanager:af-south-1:123456789012:secret:meshlat/af-south-1/join-token-AbCdEf";

    #[test]
    fn published_secrets_and_peer_ca_pem() {
        let c = parse(&[
            "--region",
            "a",
            "--join-secret",
            "0123456789abcdef0123456789abcdef",
            "--join-token-secret-arn",
            ARN,
            "--ca-cert-secret-arn",
            "arn:aws:secretsmanager:af-south-1:123456789012:secret:meshlat/af-south-1/ca-cert-x",
            "--secrets-endpoint",
            "http://127.0.0.1:5000/",
            "--federation-secret",
            FED,
            "--peer",
            "https://peer.example:7400",
            "--peer-ca-pem",
            PEM,
        ])
        .expect("valid");
        let p = c.publish.clone().expect("publish");
        let (token, secret) = p.join_token.expect("token");
        assert_eq!(
            (token.arn.as_str(), token.region.as_str()),
            (ARN, "af-south-1")
        );
        assert_eq!(secret, "0123456789abcdef0123456789abcdef");
        assert_eq!(p.endpoint.as_deref(), Some("http://127.0.0.1:5000"));
        assert!(p.ca_cert.is_some());
        assert!(
            !format!("{c:?}").contains(PEM),
            "Debug shows the PEM length only"
        );
        let f = c.federation.expect("federated");
        assert_eq!(f.peer_ca_pem.as_deref(), Some(PEM.trim()));
        assert!(f.peer_ca.is_empty(), "the PEM replaces --peer-ca files");
        for (args, want) in [
            (
                &["--join-token-secret-arn", ARN][..],
                "--join-token-secret-arn \"arn:aws:secretsmanager:af-south-1:123456789012:secret:meshlat/af-south-1/join-token-AbCdEf\": needs --join-secret",
            ),
            (
                &["--ca-cert-secret-arn", "meshlat/ca-cert"][..],
                "--ca-cert-secret-arn \"meshlat/ca-cert\": not a Secrets Manager secret ARN",
            ),
            (
                &[
                    "--ca-cert-secret-arn",
                    "arn:aws:ssm:r:123456789012:parameter/x",
                ][..],
                "not a Secrets Manager secret ARN",
            ),
            (
                &["--secrets-endpoint", "http://127.0.0.1:5000"][..],
                "--secrets-endpoint \"http://127.0.0.1:5000\": needs --join-token-secret-arn or --ca-cert-secret-arn",
            ),
            (
                &[
                    "--federation-secret",
                    FED,
                    "--peer-ca-pem",
                    "-----BEGIN PRIVATE KEY-----\nx\n-----END PRIVATE KEY-----\n-----BEGIN CERTIFICATE-----",
                ][..],
                "--peer-ca-pem \"<",
            ),
            (
                &["--federation-secret", FED, "--peer-ca-pem", "hello"][..],
                "--peer-ca-pem \"<5 bytes>\": no PEM certificate",
            ),
        ] {
            let mut all = vec!["--region", "a"];
            all.extend_from_slice(args);
            let e = parse(&all).expect_err(want);
            assert!(e.contains(want), "{args:?}: {e}");
        }
        let e = parse(&[
            "--region",
            "a",
            "--federation-secret",
            FED,
            "--peer-ca-pem",
            "-----BEGIN EC PRIVATE KEY-----\n-----BEGIN CERTIFICATE-----",
        ])
        .expect_err("key");
        assert!(
            e.contains("holds a private key: give CA certificates only"),
            "{e}"
        );
    }

    #[test]
    fn default_jobs_are_validated_specs_with_unique_names() {
        let job = |name: &str| {
            format!(
                r#"{{"name":"{name}","kind":"probe","protocols":["udp","tcp","quic","https"],"sources":["region=a"],"targets":["region=a","region=b"],"interval_ms":10000,"timeout_ms":5000}}"#
            )
        };
        let relay = r#"{"name":"meshlat-relay-a","kind":"relay","protocols":["udp"],"sources":["region=a"],"targets":["region=b"],"relays":["location=relay"],"interval_ms":10000,"timeout_ms":5000}"#;
        let ok = format!("[{},{relay}]", job("meshlat-mesh-a"));
        let c = parse(&["--region", "a", "--default-jobs", &ok]).expect("valid");
        let names: Vec<&str> = c.default_jobs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["meshlat-mesh-a", "meshlat-relay-a"]);
        assert!(
            parse(&["--region", "a"])
                .expect("valid")
                .default_jobs
                .is_empty()
        );
        for (v, want) in [
            ("{".to_string(), "--default-jobs \"<1 bytes>\": not JSON"),
            ("{}".to_string(), "must be a JSON array of job specs"),
            (
                format!("[{}]", job("")),
                "[0].name: a default job needs a name",
            ),
            (
                format!("[{},{}]", job("x"), job("x")),
                "[1].name: \"x\" is given twice",
            ),
            (
                format!("[{}]", job("x").replace("10000", "1")),
                "[0].interval_ms",
            ),
            (
                format!("[{}]", job("x").replace("\"kind\"", "\"colour\"")),
                "[0].colour",
            ),
        ] {
            let e = parse(&["--region", "a", "--default-jobs", &v]).expect_err(want);
            assert!(e.contains(want), "{v}: {e}");
        }
    }

    #[test]
    fn agent_cidrs_are_repeatable_or_comma_separated_and_bad_ones_name_the_flag() {
        let c = parse(&["--region", "a"]).expect("valid");
        assert!(c.address_policy.cidrs().is_empty(), "the peer-address rule");
        let c = parse(&[
            "--region",
            "a",
            "--agent-cidr",
            "10.20.0.0/16,10.21.0.0/16",
            "--agent-cidr",
            "fd00::/8",
        ])
        .expect("valid");
        let shown: Vec<String> = c
            .address_policy
            .cidrs()
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert_eq!(shown, ["10.20.0.0/16", "10.21.0.0/16", "fd00::/8"]);
        let e = parse(&["--region", "a", "--agent-cidr", "10.20.1.0/16"]).expect_err("host bits");
        assert!(
            e.starts_with("--agent-cidr \"10.20.1.0/16\": host bits are set"),
            "{e}"
        );
    }

    #[test]
    fn relay_agent_entries_are_parsed_and_bad_ones_name_the_flag() {
        let c = parse(&["--region", "a"]).expect("valid");
        assert!(
            c.relay_policy.is_empty(),
            "no relays unless the operator names them"
        );
        let c = parse(&[
            "--region",
            "a",
            "--relay-agent",
            "relay-1",
            "--relay-agent",
            "region=b,az=b1",
        ])
        .expect("valid");
        assert!(!c.relay_policy.is_empty());
        let e = parse(&["--region", "a", "--relay-agent", "colour=red"]).expect_err("bad key");
        assert!(
            e.starts_with("--relay-agent \"colour=red\": unknown selector key"),
            "{e}"
        );
    }

    #[test]
    fn flags_validate_and_errors_name_the_flag() {
        let c = parse(&["--region", "eu-west-1", "--rest-listen", "off"]).expect("valid");
        assert_eq!((c.region.as_str(), c.rest_listen), ("eu-west-1", None));
        assert_eq!(c.lease, Duration::from_secs(60));
        assert_eq!(
            c.limits,
            Limits::default(),
            "the flags' defaults are the documented ones"
        );
        assert_eq!(c.state, None);
        assert!(
            c.grpc_limits.max_conns_per_ip >= 10_000,
            "a region's agents behind one address"
        );
        assert_eq!(c.rest_limits.header_timeout, Duration::from_secs(10));
        assert_eq!(
            c.rate_per_ip,
            Some(Quota {
                per_second: 50.0,
                burst: 200
            })
        );
        let c = parse(&["--region", "r", "--rate-limit-per-credential", "0"]).expect("valid");
        assert_eq!(c.rate_per_credential, None);
        let c =
            parse(&["--region", "eu-west-1", "--state-bucket", "meshlat-state.x"]).expect("valid");
        let want = StateStoreConfig {
            bucket: "meshlat-state.x".into(),
            prefix: "controller-state/eu-west-1".into(),
            region: None,
            endpoint: None,
        };
        assert_eq!(c.state, Some(want));
        let c = parse(&[
            "--region",
            "r",
            "--state-bucket",
            "b-1",
            "--state-prefix",
            "/s/r1/",
            "--state-region",
            "us-east-1",
            "--state-endpoint",
            "http://127.0.0.1:5000/",
        ])
        .expect("valid");
        let s = c.state.expect("state");
        assert_eq!(s.prefix, "s/r1");
        assert_eq!(s.region.as_deref(), Some("us-east-1"));
        assert_eq!(s.endpoint.as_deref(), Some("http://127.0.0.1:5000"));
        for (args, want) in [
            (&[][..], "--region is required"),
            (&["--region", "a/b"][..], "--region \"a/b\""),
            (&["--region", "a", "--listen", "x"][..], "--listen \"x\""),
            (&["--region", "a", "--lease", "0"][..], "--lease \"0\""),
            (
                &["--region", "a", "--max-jobs", "0"][..],
                "--max-jobs \"0\"",
            ),
            (
                &["--region", "a", "--max-jobs", "2001"][..],
                "--max-jobs \"2001\"",
            ),
            (
                &["--region", "a", "--agent-expiry", "60"][..],
                "--agent-expiry \"60\": must be at least --agent-ttl",
            ),
            (
                &["--region", "a", "--stopped-job-ttl", "0"][..],
                "--stopped-job-ttl \"0\"",
            ),
            (
                &["--region", "a", "--header-timeout", "0"][..],
                "--header-timeout \"0\": must be 0.1 to 3600 seconds",
            ),
            (
                &["--region", "a", "--grpc-max-conns-per-ip", "0"][..],
                "--grpc-max-conns-per-ip \"0\": must be at least 1",
            ),
            (
                &["--region", "a", "--rate-limit-per-ip=-1"][..],
                "--rate-limit-per-ip \"-1\"",
            ),
            (
                &["--region", "a", "--rate-limit-burst", "0"][..],
                "--rate-limit-burst \"0\"",
            ),
            (
                &["--region", "a", "--peer", "https://b:1"][..],
                "--federation-secret is required",
            ),
            (
                &[
                    "--region",
                    "a",
                    "--peer",
                    "https://b:1",
                    "--federation-secret",
                    FED,
                ][..],
                "--peer-ca is required",
            ),
            (
                &["--region", "a", "--peer", "b:1", "--federation-secret", FED][..],
                "--peer \"b:1\"",
            ),
            (
                &["--region", "a", "--federation-secret", "s"][..],
                "--federation-secret \"<1 bytes>\": must be at least 32 bytes",
            ),
            (
                &[
                    "--region",
                    "a",
                    "--federation-secret",
                    FED,
                    "--federation-secret-previous",
                    "0123456789abcdef0123456789abcde",
                ][..],
                "--federation-secret-previous \"<31 bytes>\": must be at least 32 bytes",
            ),
            (
                &["--region", "a", "--federation-secret-next", FED][..],
                "--federation-secret-next \"<secret>\": needs --federation-secret",
            ),
            (
                &[
                    "--region",
                    "a",
                    "--federation-secret",
                    FED,
                    "--peer",
                    "http://b:1",
                ][..],
                "--peer \"http://b:1\": must be an https:// URL (http:// only with --plaintext",
            ),
            (
                &["--region", "a", "--state-bucket", "My_Bucket"][..],
                "--state-bucket \"My_Bucket\": not an S3 bucket name",
            ),
            (
                &["--region", "a", "--state-prefix", "p"][..],
                "--state-prefix \"p\": needs --state-bucket",
            ),
            (
                &[
                    "--region",
                    "a",
                    "--state-bucket",
                    "b-1",
                    "--state-prefix",
                    "a//b",
                ][..],
                "--state-prefix \"a//b\"",
            ),
            (
                &[
                    "--region",
                    "a",
                    "--state-bucket",
                    "b-1",
                    "--state-prefix",
                    "a/../b",
                ][..],
                "--state-prefix \"a/../b\"",
            ),
            (
                &[
                    "--region",
                    "a",
                    "--state-bucket",
                    "b-1",
                    "--state-region",
                    "eu west",
                ][..],
                "--state-region \"eu west\"",
            ),
            (
                &[
                    "--region",
                    "a",
                    "--state-bucket",
                    "b-1",
                    "--state-endpoint",
                    "127.0.0.1:5000",
                ][..],
                "--state-endpoint \"127.0.0.1:5000\"",
            ),
            (
                &[
                    "--region",
                    "a",
                    "--state-bucket",
                    "b-1",
                    "--state-endpoint",
                    "http://h/x",
                ][..],
                "--state-endpoint \"http://h/x\"",
            ),
        ] {
            let e = parse(args).expect_err(want);
            assert!(e.contains(want), "{args:?}: {e}");
        }
    }
}
