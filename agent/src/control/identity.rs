//! The agent's own identity (DESIGN §8): a key pair it generates once, and the client
//! certificate its controller's CA issues for it at the first join, bound to its agent id.
//!
//! - The first Hello (and one whose certificate is due for renewal) carries a certificate
//!   request for the key ([`Identity::request`]), authenticated by the join token. The
//!   controller answers with the certificate in its Welcome.
//! - Later sessions present the certificate in the TLS handshake ([`Identity::client_config`])
//!   and no join token: a revoked or rotated join token does not affect an agent that already has
//!   its identity, and nobody holding only the join token can speak for this agent's id.
//! - A certificate is used only while it is valid, for the CA the join token pins and for the id
//!   in use; the agent asks for a new one (same key) once two thirds of its validity have passed
//!   ([`renew_at`]), reconnecting for it.
//!
//! With a state directory the key is kept in [`KEY_FILE`] and the certificate in [`CERT_FILE`]
//! (both 0600, replaced atomically and durably, like every file there); without one (`--no-state-dir`) they live in
//! memory for the life of the process, and a restarted agent joins as a new agent.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use meshlat_proto::pb;
use prost::Message;
use rcgen::{CertificateParams, KeyPair};

/// The private key (PKCS#8, PEM) in the state directory.
pub const KEY_FILE: &str = "agent-key.pem";
/// The certificate (protobuf `meshlat.v1.AgentCertificate`) in the state directory.
pub const CERT_FILE: &str = "agent-cert.pb";
/// A certificate this close to its expiry is no longer presented.
pub const EXPIRY_MARGIN: Duration = Duration::from_secs(60);

/// The agent's key pair and certificate.
#[derive(Clone)]
pub struct Identity {
    key: Arc<KeyPair>,
    cert: Option<pb::AgentCertificate>,
    dir: Option<PathBuf>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("dir", &self.dir)
            .field(
                "cert_agent",
                &self.cert.as_ref().map(|c| c.agent_id.as_str()),
            )
            .field("key", &"<redacted>")
            .finish()
    }
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// When `cert` is due for renewal: once two thirds of its validity have passed.
pub fn renew_at(cert: &pb::AgentCertificate) -> i64 {
    let life = cert
        .not_after_unix
        .saturating_sub(cert.not_before_unix)
        .max(0);
    cert.not_before_unix.saturating_add(life / 3 * 2)
}

impl Identity {
    /// Loads the key and certificate from `dir`, generating the key (and writing it, mode
    /// 0600) if there is none; `None`: in memory only. An unreadable certificate is ignored (a
    /// new one is requested).
    ///
    /// # Errors
    ///
    /// The key file cannot be read, parsed or written.
    pub fn load_or_create(dir: Option<&Path>) -> Result<Self, IdentityFileError> {
        let Some(dir) = dir else {
            return Ok(Identity {
                key: Arc::new(KeyPair::generate().map_err(IdentityFileError::key)?),
                cert: None,
                dir: None,
            });
        };
        let path = dir.join(KEY_FILE);
        let key = match std::fs::read_to_string(&path) {
            Ok(pem) => KeyPair::from_pem(&pem).map_err(|e| IdentityFileError::Corrupt {
                path: path.clone(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = KeyPair::generate().map_err(IdentityFileError::key)?;
                super::state::write_private(dir, KEY_FILE, key.serialize_pem().as_bytes())
                    .map_err(|source| IdentityFileError::Io {
                        path: path.clone(),
                        source,
                    })?;
                tracing::info!(message = "Agent key pair created.", path = %path.display());
                key
            }
            Err(source) => return Err(IdentityFileError::Io { path, source }),
        };
        let cert = match std::fs::read(dir.join(CERT_FILE)) {
            Ok(b) => match pb::AgentCertificate::decode(&b[..]) {
                Ok(c) => Some(c),
                Err(error) => {
                    tracing::warn!(message = "Stored agent certificate is corrupt; a new one will be requested.", %error);
                    None
                }
            },
            Err(_) => None,
        };
        Ok(Identity {
            key: Arc::new(key),
            cert,
            dir: Some(dir.to_path_buf()),
        })
    }

    /// A certificate request (PKCS#10, DER) for the key.
    ///
    /// # Errors
    ///
    /// rcgen failing to sign (not expected).
    pub fn request(&self) -> Result<Vec<u8>, rcgen::Error> {
        let csr =
            CertificateParams::new(Vec::<String>::new())?.serialize_request(self.key.as_ref())?;
        Ok(csr.der().to_vec())
    }

    /// The certificate, if it may be presented now: issued by the CA `pin` names, for
    /// `agent_id`, and not within [`EXPIRY_MARGIN`] of its expiry.
    pub fn usable(
        &self,
        pin: &[u8; 32],
        agent_id: &str,
        now: SystemTime,
    ) -> Option<&pb::AgentCertificate> {
        let margin = i64::try_from(EXPIRY_MARGIN.as_secs()).unwrap_or(60);
        self.cert.as_ref().filter(|c| {
            c.ca_sha256 == pin[..]
                && !agent_id.is_empty()
                && c.agent_id == agent_id
                && unix(now).saturating_add(margin) < c.not_after_unix
        })
    }

    /// Keeps `cert` (writing it to the state directory, if any).
    ///
    /// # Errors
    ///
    /// The I/O error (the certificate is still kept in memory).
    pub fn store(&mut self, cert: pb::AgentCertificate) -> std::io::Result<()> {
        let r = match &self.dir {
            Some(d) => super::state::write_private(d, CERT_FILE, &cert.encode_to_vec()),
            None => Ok(()),
        };
        self.cert = Some(cert);
        r
    }

    /// A rustls client config pinned to `pin` that presents `cert` with this identity's key.
    ///
    /// # Errors
    ///
    /// rustls refusing the key or certificate.
    pub fn client_config(
        &self,
        pin: [u8; 32],
        cert: &pb::AgentCertificate,
    ) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()));
        let chain = vec![CertificateDer::from(cert.der.clone())];
        super::pin::client_config_with_cert(pin, chain, key).map(Arc::new)
    }
}

/// The key file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityFileError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The key file does not parse.
    #[error("{path}: not a private key ({reason}); remove it to join as a new agent")]
    Corrupt {
        /// File.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Key generation failed.
    #[error("generating the agent key: {0}")]
    Generate(String),
}

impl IdentityFileError {
    fn key(e: rcgen::Error) -> Self {
        IdentityFileError::Generate(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn key_is_made_once_private_and_the_certificate_is_used_only_when_valid() {
        let dir = std::env::temp_dir().join(format!("meshlat-ident-{}", uuid::Uuid::now_v7()));
        let mut a = Identity::load_or_create(Some(&dir)).expect("create");
        let mode = std::fs::metadata(dir.join(KEY_FILE))
            .expect("key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!a.request().expect("csr").is_empty());
        let now = SystemTime::now();
        let pin = [7u8; 32];
        let cert = pb::AgentCertificate {
            der: vec![1, 2, 3],
            not_before_unix: unix(now) - 10,
            not_after_unix: unix(now) + 3000,
            ca_sha256: pin.to_vec(),
            agent_id: "a1".into(),
        };
        a.store(cert.clone()).expect("store");
        assert!(a.usable(&pin, "a1", now).is_some());
        assert!(a.usable(&[8u8; 32], "a1", now).is_none(), "another CA");
        assert!(a.usable(&pin, "a2", now).is_none(), "another id");
        assert!(
            a.usable(&pin, "a1", now + Duration::from_secs(2950))
                .is_none(),
            "about to expire"
        );
        assert_eq!(renew_at(&cert), cert.not_before_unix + 2006);
        // A restart finds the same key and the certificate.
        let b = Identity::load_or_create(Some(&dir)).expect("load");
        assert_eq!(b.key.serialize_der(), a.key.serialize_der());
        assert_eq!(b.cert, Some(cert));
        // Without a directory nothing is written.
        let m = Identity::load_or_create(None).expect("memory");
        assert_ne!(m.key.serialize_der(), a.key.serialize_der());
        std::fs::write(dir.join(KEY_FILE), b"garbage").expect("corrupt");
        assert!(matches!(
            Identity::load_or_create(Some(&dir)),
            Err(IdentityFileError::Corrupt { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
