//! Control-plane security (DESIGN §3): the controller's own CA, its server certificate, the
//! agent join token and operator credentials.
//!
//! # Files in the data directory
//!
//! | file | content |
//! | --- | --- |
//! | `ca.pem` | the CA certificate (give it to operators' `--ca` and to `curl --cacert`) |
//! | `ca.key` | the CA private key (mode 0600); signs a fresh server certificate at every start |
//! | `credentials.json` | SHA-256 hashes of the join-token secret and of each named operator credential (mode 0600) |
//! | `first-start-secrets` | the secrets *generated* on the start that created them, in clear (mode 0600; read it, store the secrets elsewhere, delete it) |
//!
//! With `--state-bucket` `ca.*` and `credentials.json` are also kept in S3
//! ([`crate::store::mirror`]), so a controller on an empty disk keeps its CA (and the join tokens
//! that pin it); `first-start-secrets` is never uploaded.
//!
//! # Secrets
//!
//! - A secret the operator supplied (a *seed*: `--join-secret`, `--operator-credential`) is never
//!   printed nor written in clear. A seed whose hash differs from the stored one replaces it at
//!   start (rotation), logged without the secret.
//! - A secret the controller generated on first start is written to `first-start-secrets`, and
//!   printed on stdout only with `--print-secrets`.
//! - Operator credentials are named (`NAME:SECRET`): more are made with
//!   [`Credentials::add_operator`] (`controller credentials add`, shown once), listed and revoked.
//!
//! Checks hash the presented secret and compare in constant time.
//!
//! # Modules
//!
//! - [`credentials`]: the join tokens and operator credentials, stored hashed (`credentials.json`).
//! - [`tls`]: the CA and the server certificate ([`load_or_create_tls`]), join tokens.
//! - [`federation`]: the shared secrets of a federation ([`FederationSecret`]).
//! - [`session`]: the web dashboard's browser sessions (cookie and CSRF token).

use std::path::{Path, PathBuf};

pub mod credentials;
pub mod federation;
pub mod session;
pub mod tls;

pub use credentials::{
    Credentials, DEFAULT_TOKEN, NewSecrets, OperatorInfo, Origin, Seeds, TokenInfo, TokenRefusal,
};
pub use federation::FederationSecret;
pub use tls::{TlsMaterial, join_token, load_or_create_tls};

/// File names in the data directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// CA private key file.
pub const CA_KEY_FILE: &str = "ca.key";
/// Hashed credentials file.
pub const CREDENTIALS_FILE: &str = "credentials.json";
/// Secrets generated on first start, in clear (0600).
pub const FIRST_START_SECRETS_FILE: &str = "first-start-secrets";
/// Longest operator credential name.
pub const MAX_NAME_LEN: usize = 64;

/// Setting up or loading security material failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A stored file is corrupt.
    #[error("{path}: {reason}")]
    Corrupt {
        /// File.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A stored file was written by a newer build (a downgrade): refused, not misread.
    #[error("{path}: {source}")]
    Version {
        /// File.
        path: PathBuf,
        /// Its format and what this build reads.
        #[source]
        source: meshlat_proto::state_file::StateFileError,
    },
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// A seeded credential is malformed.
    #[error("{flag}: {reason}")]
    Seed {
        /// Flag.
        flag: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
}

/// A refused change to the operator credentials.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum CredentialError {
    /// The name is not usable.
    #[error("name {name:?}: {reason}")]
    BadName {
        /// The name.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// A credential of that name exists.
    #[error("credential {name:?} already exists (revoke it first)")]
    Exists {
        /// The name.
        name: String,
    },
    /// No credential of that name.
    #[error("no credential named {name:?}")]
    NotFound {
        /// The name.
        name: String,
    },
    /// Revoking it would leave no operator credential.
    #[error("credential {name:?} is the last one; add another before revoking it")]
    Last {
        /// The name.
        name: String,
    },
    /// The credentials file could not be written (the change is not applied).
    #[error("credentials file: {0}")]
    Store(String),
}

fn sha256(b: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, b);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Constant-time equality of two digests.
fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::fill(&mut b[..]);
    hex::encode(&b)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AuthError + '_ {
    move |source| AuthError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub(crate) fn write_private(path: &Path, data: &[u8]) -> Result<(), AuthError> {
    crate::fsutil::write_atomic(path, data, 0o600).map_err(io(path))
}

/// Checks an operator credential name: 1 to [`MAX_NAME_LEN`] of `A-Za-z0-9._-`.
///
/// # Errors
///
/// [`CredentialError::BadName`].
pub fn check_name(name: &str) -> Result<(), CredentialError> {
    let bad = |reason| CredentialError::BadName {
        name: name.chars().take(MAX_NAME_LEN + 8).collect(),
        reason,
    };
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(bad("must be 1 to 64 characters"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(bad("use letters, digits, '.', '_' and '-' only"));
    }
    Ok(())
}

/// The bearer value of an `authorization` header or metadata entry.
pub fn bearer(value: &str) -> Option<&str> {
    let v = value.trim();
    v.strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))
        .map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_values() {
        assert_eq!(bearer("Bearer a:b"), Some("a:b"));
        assert_eq!(bearer("Basic x"), None);
    }
}
