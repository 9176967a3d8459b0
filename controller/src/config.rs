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
    /// Seeded secrets.
    pub seeds: Seeds,
    /// Print generated secrets on stdout too (`--print-secrets`).
    pub print_secrets: bool,
    /// Federation with peer controllers (`None`: not federated).
    pub federation: Option<FederationConfig>,
    /// The S3 state store (`None`: the data directory only).
    pub state: Option<StateStoreConfig>,
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
        if p.starts_with("https://") && a.peer_ca.is_empty() {
            return Err(ConfigError::Missing { flag: "--peer-ca" });
        }
    }
    Ok(Some(FederationConfig {
        peers,
        secret,
        accepted,
        peer_ca: a.peer_ca.clone(),
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
        if a.max_full_mesh == 0 {
            return Err(ConfigError::Invalid {
                flag: "--max-full-mesh",
                value: "0".into(),
                reason: "must be at least 1",
            });
        }
        let federation = federation(a)?;
        let state = state_store(a, region)?;
        Ok(ServeConfig {
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
            print_secrets: a.print_secrets,
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
