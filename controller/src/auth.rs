//! Control-plane security (DESIGN §3): the controller's own CA, its server certificate, the
//! agent join token and operator credentials.
//!
//! # Files in the data directory
//!
//! | file | content |
//! | --- | --- |
//! | `ca.pem` | the CA certificate (give it to operators' `--ca` and to `curl --cacert`) |
//! | `ca.key` | the CA private key (mode 0600); signs a fresh server certificate at every start |
//! | `credentials.json` | SHA-256 hashes of the join-token secret and of each operator secret |
//!
//! With `--state-bucket` these files are also kept in S3 ([`crate::store::mirror`]), so a
//! controller on an empty disk keeps its CA (and the join tokens that pin it).
//!
//! Secrets are printed once, on the start that creates them, and stored only hashed. Checks hash
//! the presented secret and compare in constant time.

use std::path::{Path, PathBuf};

use meshlat_proto::token::{JoinToken, hex_decode, hex_encode};
use serde::{Deserialize, Serialize};

/// File names in the data directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// CA private key file.
pub const CA_KEY_FILE: &str = "ca.key";
/// Hashed credentials file.
pub const CREDENTIALS_FILE: &str = "credentials.json";

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

/// TLS material for the gRPC and REST listeners.
#[derive(Clone)]
pub struct TlsMaterial {
    /// PEM chain: server certificate, then the CA certificate (agents pin the CA from it).
    pub chain_pem: String,
    /// PEM private key of the server certificate.
    pub key_pem: String,
    /// SHA-256 of the CA certificate (DER), as pinned by join tokens.
    pub ca_sha256: [u8; 32],
    /// Where `ca.pem` is.
    pub ca_path: PathBuf,
    /// A secret derived from the CA private key: the root of a lone controller's mesh keys
    /// ([`crate::keys`]).
    pub mesh_root: [u8; 32],
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("ca_sha256", &hex_encode(&self.ca_sha256))
            .field("ca_path", &self.ca_path)
            .finish_non_exhaustive()
    }
}

/// Hashed credentials, checked on every call.
#[derive(Clone, Debug)]
pub struct Credentials {
    agent_secret_sha256: [u8; 32],
    operators: Vec<(String, [u8; 32])>,
}

/// Secrets created on this start; printed once, never stored in clear.
#[derive(Clone)]
pub struct NewSecrets {
    /// The join secret (agents present it inside the join token).
    pub join_secret: String,
    /// The operator credential `key:secret`.
    pub operator_credential: String,
}

impl std::fmt::Debug for NewSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NewSecrets(<redacted>)")
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct CredentialsFile {
    /// SHA-256 (hex) of the join secret.
    agent_secret_sha256: String,
    /// Operator keys and the SHA-256 (hex) of their secrets.
    operators: Vec<OperatorEntry>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct OperatorEntry {
    key: String,
    secret_sha256: String,
}

/// Optional seeds for the secrets made on first start (e.g. from a secrets manager).
#[derive(Clone, Debug, Default)]
pub struct Seeds {
    /// Join secret (hex, at least 32 digits).
    pub join_secret: Option<String>,
    /// Operator credential `key:secret`.
    pub operator_credential: Option<String>,
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
    hex_encode(&b)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AuthError + '_ {
    move |source| AuthError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub(crate) fn write_private(path: &Path, data: &[u8]) -> Result<(), AuthError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(data).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

impl Credentials {
    /// Loads the hashed credentials from `dir`, creating (and returning) new secrets on first
    /// start.
    ///
    /// # Errors
    ///
    /// [`AuthError`] for unreadable or corrupt files, or malformed seeds.
    pub fn load_or_create(
        dir: &Path,
        seeds: &Seeds,
    ) -> Result<(Self, Option<NewSecrets>), AuthError> {
        let path = dir.join(CREDENTIALS_FILE);
        if path.exists() {
            let raw = std::fs::read(&path).map_err(io(&path))?;
            let corrupt = |reason: String| AuthError::Corrupt {
                path: path.clone(),
                reason,
            };
            let file: CredentialsFile =
                serde_json::from_slice(&raw).map_err(|e| corrupt(e.to_string()))?;
            let digest = |h: &str| -> Result<[u8; 32], AuthError> {
                hex_decode(h)
                    .and_then(|v| v.try_into().ok())
                    .ok_or_else(|| corrupt("a hash is not 64 hex digits".into()))
            };
            let creds = Credentials {
                agent_secret_sha256: digest(&file.agent_secret_sha256)?,
                operators: file
                    .operators
                    .iter()
                    .map(|o| Ok((o.key.clone(), digest(&o.secret_sha256)?)))
                    .collect::<Result<_, AuthError>>()?,
            };
            return Ok((creds, None));
        }
        let join_secret = match &seeds.join_secret {
            Some(s) if s.len() >= 32 && hex_decode(s).is_some() => s.to_ascii_lowercase(),
            Some(_) => {
                return Err(AuthError::Seed {
                    flag: "--join-secret",
                    reason: "must be at least 32 hex digits",
                });
            }
            None => random_hex(24),
        };
        let operator_credential = match &seeds.operator_credential {
            Some(c) => match c.split_once(':') {
                Some((k, s)) if !k.is_empty() && s.len() >= 16 => c.clone(),
                _ => {
                    return Err(AuthError::Seed {
                        flag: "--operator-credential",
                        reason: "must be KEY:SECRET with a secret of at least 16 characters",
                    });
                }
            },
            None => format!("op-{}:{}", random_hex(4), random_hex(24)),
        };
        let (key, secret) = operator_credential
            .split_once(':')
            .unwrap_or(("", operator_credential.as_str()));
        let creds = Credentials {
            agent_secret_sha256: sha256(join_secret.as_bytes()),
            operators: vec![(key.to_string(), sha256(secret.as_bytes()))],
        };
        let file = CredentialsFile {
            agent_secret_sha256: hex_encode(&creds.agent_secret_sha256),
            operators: creds
                .operators
                .iter()
                .map(|(k, h)| OperatorEntry {
                    key: k.clone(),
                    secret_sha256: hex_encode(h),
                })
                .collect(),
        };
        let json = serde_json::to_vec_pretty(&file).map_err(|e| AuthError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        write_private(&path, &json)?;
        Ok((
            creds,
            Some(NewSecrets {
                join_secret,
                operator_credential,
            }),
        ))
    }

    /// Credentials from known secrets (tests).
    pub fn from_secrets(join_secret: &str, operator_credential: &str) -> Self {
        let (key, secret) = operator_credential
            .split_once(':')
            .unwrap_or(("", operator_credential));
        Credentials {
            agent_secret_sha256: sha256(join_secret.as_bytes()),
            operators: vec![(key.to_string(), sha256(secret.as_bytes()))],
        }
    }

    /// Whether `token` (a whole join token, or just its secret) carries the join secret.
    pub fn check_agent(&self, token: &str) -> bool {
        let secret = match JoinToken::parse(token) {
            Ok(t) => t.secret,
            Err(_) => token.trim().to_ascii_lowercase(),
        };
        ct_eq(&sha256(secret.as_bytes()), &self.agent_secret_sha256)
    }

    /// Whether `credential` (`key:secret`) is a known operator's; returns the key.
    pub fn check_operator(&self, credential: &str) -> Option<&str> {
        let (key, secret) = credential.trim().split_once(':')?;
        let h = sha256(secret.as_bytes());
        // Compare every entry, so the time does not depend on which key matched.
        let mut found = None;
        for (k, digest) in &self.operators {
            if ct_eq(&h, digest) && k == key {
                found = Some(k.as_str());
            }
        }
        found
    }
}

/// The shared secret controllers of a federation present to each other, held only hashed.
#[derive(Clone)]
pub struct FederationSecret {
    sha256: [u8; 32],
}

impl std::fmt::Debug for FederationSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FederationSecret(<hashed>)")
    }
}

impl FederationSecret {
    /// Hashes `secret`.
    pub fn new(secret: &str) -> Self {
        FederationSecret {
            sha256: sha256(secret.trim().as_bytes()),
        }
    }

    /// Whether `presented` is the secret (constant time over the digests).
    pub fn check(&self, presented: &str) -> bool {
        ct_eq(&sha256(presented.trim().as_bytes()), &self.sha256)
    }
}

/// Loads the CA from `dir` (creating it on first start) and signs a fresh server certificate for
/// `sans` (host names or IP addresses).
///
/// # Errors
///
/// [`AuthError`] for unreadable or corrupt files.
pub fn load_or_create_tls(dir: &Path, sans: &[String]) -> Result<TlsMaterial, AuthError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
        KeyUsagePurpose,
    };
    let ca_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    // The CA's parameters are fixed, so the issuer can be rebuilt from them and the stored key
    // (its subject name matches the stored certificate's).
    let ca_params = || -> Result<CertificateParams, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "meshlat controller CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        Ok(params)
    };
    if !ca_path.exists() || !key_path.exists() {
        let key = KeyPair::generate()?;
        let ca = ca_params()?.self_signed(&key)?;
        write_private(&key_path, key.serialize_pem().as_bytes())?;
        std::fs::write(&ca_path, ca.pem()).map_err(io(&ca_path))?;
    }
    let ca_pem = std::fs::read_to_string(&ca_path).map_err(io(&ca_path))?;
    let key_pem = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
    let corrupt = |path: &Path, e: rcgen::Error| AuthError::Corrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let ca_key = KeyPair::from_pem(&key_pem).map_err(|e| corrupt(&key_path, e))?;
    let issuer = Issuer::new(ca_params()?, ca_key);
    let ca_der = rustls::pki_types::pem::PemObject::from_pem_slice(ca_pem.as_bytes())
        .map(|d: rustls::pki_types::CertificateDer<'static>| d.to_vec())
        .map_err(|e| AuthError::Corrupt {
            path: ca_path.clone(),
            reason: e.to_string(),
        })?;
    let server_key = KeyPair::generate()?;
    let mut params = CertificateParams::new(sans.to_vec())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "meshlat controller");
    params.distinguished_name = dn;
    let cert = params.signed_by(&server_key, &issuer)?;
    Ok(TlsMaterial {
        chain_pem: format!("{}{}", cert.pem(), ca_pem),
        key_pem: server_key.serialize_pem(),
        ca_sha256: sha256(&ca_der),
        ca_path,
        mesh_root: sha256(format!("meshlat mesh root v1\n{key_pem}").as_bytes()),
    })
}

/// Builds a join token from the CA pin and the join secret.
pub fn join_token(ca_sha256: [u8; 32], secret: &str) -> JoinToken {
    JoinToken {
        ca_sha256,
        secret: secret.to_string(),
    }
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
    fn credentials_are_created_once_stored_hashed_and_checked() {
        let dir = std::env::temp_dir().join(format!("meshlat-auth-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let (creds, new) = Credentials::load_or_create(&dir, &Seeds::default()).expect("create");
        let new = new.expect("first start makes secrets");
        let stored = std::fs::read_to_string(dir.join(CREDENTIALS_FILE)).expect("stored");
        assert!(!stored.contains(&new.join_secret), "stored hashed");
        let (_, op_secret) = new.operator_credential.split_once(':').expect("key:secret");
        assert!(!stored.contains(op_secret), "stored hashed");
        let (again, none) = Credentials::load_or_create(&dir, &Seeds::default()).expect("load");
        assert!(none.is_none(), "secrets are printed only once");
        for c in [&creds, &again] {
            assert!(c.check_agent(&new.join_secret));
            assert!(!c.check_agent("0123456789abcdef0123456789abcdef"));
            assert!(c.check_operator(&new.operator_credential).is_some());
            assert!(c.check_operator("op-x:nope").is_none());
            assert!(c.check_operator("nocolon").is_none());
        }
        let tls = load_or_create_tls(&dir, &["localhost".into()]).expect("tls");
        let tls2 = load_or_create_tls(&dir, &["localhost".into()]).expect("tls again");
        assert_eq!(
            tls.ca_sha256, tls2.ca_sha256,
            "the CA (and so the pin) is kept"
        );
        let token = join_token(tls.ca_sha256, &new.join_secret).to_string();
        assert!(creds.check_agent(&token));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bearer_values() {
        assert_eq!(bearer("Bearer a:b"), Some("a:b"));
        assert_eq!(bearer("Basic x"), None);
    }
}
