//! Federation flags: peers, their CAs, the shared secret and its rotation.

use std::path::PathBuf;
use std::time::Duration;

use crate::cli::FederationArgs;

use super::{ConfigError, nonempty, secs};

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

pub(super) fn federation(
    a: &FederationArgs,
    plaintext: bool,
) -> Result<Option<FederationConfig>, ConfigError> {
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
        let ok = p.starts_with("https://") || (plaintext && p.starts_with("http://"));
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
