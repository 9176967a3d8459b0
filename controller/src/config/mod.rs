//! Validated controller configuration ("parse, don't validate", STYLE §7): [`ServeConfig`] from
//! `serve`'s flags, one module per part: [`publish`] (secrets the controller writes), [`store`]
//! (the S3 state store), [`federation`], [`limits`] (connection caps, rate limits, registry
//! limits); shared value checks here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use meshlat_guard::{ConnLimits, Quota};

use crate::auth::Seeds;
use crate::cli::ServeArgs;
use crate::limits::Limits;

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
    /// The stats server's address (`--stats-port`, `--stats-listen`; `None`: off).
    pub stats_listen: Option<SocketAddr>,
    /// Caps and deadlines of the stats server ([`STATS_MAX_CONNS`], the REST deadlines).
    pub stats_limits: ConnLimits,
    /// Operator API rate per source address (`None`: unlimited).
    pub rate_per_ip: Option<Quota>,
    /// Operator API rate per credential (`None`: unlimited).
    pub rate_per_credential: Option<Quota>,
    /// Which agents are relays (`--relay-agent`).
    pub relay_policy: crate::relay_policy::RelayPolicy,
    /// Where load jobs may go (`--load-allow`, [`crate::load_policy`]).
    pub load_allow: crate::load_policy::LoadAllow,
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

pub mod federation;
pub mod limits;
pub mod publish;
pub mod store;

pub use federation::{FederationConfig, MIN_FEDERATION_SECRET};
pub use limits::default_max_conns;
pub use publish::{PublishConfig, SecretArn};
pub use store::StateStoreConfig;

/// Most connections the stats server holds at once (Prometheus keeps one per scraper).
pub const STATS_MAX_CONNS: usize = 16;
/// Most stats server connections from one source address.
pub const STATS_MAX_CONNS_PER_IP: usize = 8;

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
        let limits = limits::limits(&a.limits, agent_ttl)?;
        if a.limits.max_full_mesh == 0 {
            return Err(ConfigError::Invalid {
                flag: "--max-full-mesh",
                value: "0".into(),
                reason: "must be at least 1",
            });
        }
        let federation = federation::federation(&a.federation, a.plaintext)?;
        let state = store::state_store(&a.state, region)?;
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
        let load_allow =
            crate::load_policy::LoadAllow::parse(&a.load_allow).map_err(|(value, reason)| {
                ConfigError::InvalidValue {
                    flag: "--load-allow",
                    value,
                    reason,
                }
            })?;
        let (grpc_limits, rest_limits) = limits::conn_limits(&a.conns)?;
        if a.rate_limit.rate_limit_burst == 0 {
            return Err(ConfigError::Invalid {
                flag: "--rate-limit-burst",
                value: "0".into(),
                reason: "must be at least 1",
            });
        }
        let publish = publish::publish(a)?;
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
            load_allow,
            address_policy,
            grpc_limits,
            rest_limits,
            stats_listen: a
                .stats_port
                .map(|port| SocketAddr::new(a.stats_listen.unwrap_or(listen.ip()), port)),
            stats_limits: ConnLimits {
                max_conns: STATS_MAX_CONNS,
                max_conns_per_ip: STATS_MAX_CONNS_PER_IP,
                ..rest_limits
            },
            rate_per_ip: limits::quota(
                "--rate-limit-per-ip",
                a.rate_limit.rate_limit_per_ip,
                a.rate_limit.rate_limit_burst,
            )?,
            rate_per_credential: limits::quota(
                "--rate-limit-per-credential",
                a.rate_limit.rate_limit_per_credential,
                a.rate_limit.rate_limit_burst,
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
            max_full_mesh: a.limits.max_full_mesh,
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
