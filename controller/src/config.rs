//! Validated controller configuration ("parse, don't validate", STYLE §7).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::auth::Seeds;
use crate::cli::ServeArgs;

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
    /// First-start secrets.
    pub seeds: Seeds,
    /// Federation with peer controllers (`None`: not federated).
    pub federation: Option<FederationConfig>,
    /// The S3 state store (`None`: the data directory only).
    pub state: Option<StateStoreConfig>,
    /// Which agents are relays (`--relay-agent`).
    pub relay_policy: crate::relay_policy::RelayPolicy,
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
#[derive(Clone, Debug)]
pub struct FederationConfig {
    /// Peer gRPC URLs.
    pub peers: Vec<String>,
    /// The shared secret, sent to peers (and checked hashed on incoming exchanges).
    pub secret: String,
    /// CA files trusted for https:// peers.
    pub peer_ca: Vec<PathBuf>,
    /// Peer entries age out this long after their last exchange.
    pub ttl: Duration,
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
    let endpoint = nonempty(&a.state_endpoint).map(|e| e.trim_end_matches('/').to_string());
    if let Some(e) = &endpoint {
        let ok = e.parse::<http::Uri>().is_ok_and(|u| {
            matches!(u.scheme_str(), Some("http" | "https"))
                && u.host().is_some_and(|h| !h.is_empty())
                && u.path_and_query()
                    .is_none_or(|p| p.as_str() == "/" || p.as_str().is_empty())
        });
        if !ok {
            return Err(ConfigError::Invalid {
                flag: "--state-endpoint",
                value: e.clone(),
                reason: "must be an http:// or https:// URL with a host and no path",
            });
        }
    }
    Ok(Some(StateStoreConfig {
        bucket: bucket.into(),
        prefix,
        region: state_region,
        endpoint,
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
        if a.max_full_mesh == 0 {
            return Err(ConfigError::Invalid {
                flag: "--max-full-mesh",
                value: "0".into(),
                reason: "must be at least 1",
            });
        }
        let federation = match a
            .federation_secret
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            None if !a.peers.is_empty() => {
                return Err(ConfigError::Missing {
                    flag: "--federation-secret",
                });
            }
            None => None,
            Some(secret) => {
                let peers: Vec<String> = a
                    .peers
                    .iter()
                    .map(|p| p.trim().trim_end_matches('/').to_string())
                    .filter(|p| !p.is_empty())
                    .collect();
                for p in &peers {
                    if !(p.starts_with("https://") || p.starts_with("http://")) {
                        return Err(ConfigError::Invalid {
                            flag: "--peer",
                            value: p.clone(),
                            reason: "must be an https:// (or http://) URL",
                        });
                    }
                    if p.starts_with("https://") && a.peer_ca.is_empty() {
                        return Err(ConfigError::Missing { flag: "--peer-ca" });
                    }
                }
                Some(FederationConfig {
                    peers,
                    secret: secret.to_string(),
                    peer_ca: a.peer_ca.clone(),
                    ttl: secs("--peer-ttl", a.peer_ttl)?,
                })
            }
        };
        let state = state_store(a, region)?;
        let relay_policy = crate::relay_policy::RelayPolicy::parse(&a.relay_agents).map_err(
            |(value, reason)| ConfigError::InvalidValue {
                flag: "--relay-agent",
                value,
                reason,
            },
        )?;
        Ok(ServeConfig {
            relay_policy,
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
            seeds: Seeds {
                join_secret: a.join_secret.clone(),
                operator_credential: a.operator_credential.clone(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<ServeConfig, String> {
        let mut argv = vec!["controller", "serve"];
        argv.extend_from_slice(args);
        let cli = crate::cli::Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        let Some(crate::cli::Command::Serve(a)) = cli.command else {
            return Err("not serve".into());
        };
        ServeConfig::from_args(&a).map_err(|e| e.to_string())
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
        assert_eq!(c.state, None);
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
                    "s",
                ][..],
                "--peer-ca is required",
            ),
            (
                &["--region", "a", "--peer", "b:1", "--federation-secret", "s"][..],
                "--peer \"b:1\"",
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
