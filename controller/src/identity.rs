//! Per-agent identity (DESIGN §8, issue 10 item 2): the join token admits an agent once; from then
//! on the agent holds its own client certificate, bound to its agent id, and a session speaks
//! only for that id.
//!
//! # First join
//!
//! The agent generates a key pair (kept in its `--state-dir`, or in memory), and its first Hello
//! carries a PKCS#10 request for it (`Hello.certificate_request`), authenticated by the join
//! token. The controller checks the request's signature (the agent holds the key), makes the
//! agent id, and answers with a certificate from its CA ([`AgentCa::issue`]) in
//! `Welcome.certificate`: subject common name = the agent id, extended key usage `clientAuth`,
//! valid for `--agent-cert-validity` (default [`DEFAULT_VALIDITY`]). The id's identity is the
//! SHA-256 of the certificate's public key ([`key_sha256`]), kept with the agent in the state
//! store (`StoredAgent.identity_key_sha256`), so a restarted controller still knows it; an agent
//! removed after `--agent-expiry` takes its identity with it.
//!
//! # Later sessions
//!
//! The agent presents the certificate in the TLS handshake (mTLS) and no join token. The gRPC
//! listener asks every client for a certificate but lets clients without one through (operators,
//! peers, agents joining); the handshake proves the client holds the certificate's key, and the
//! agent service checks the certificate against the CA on every call ([`AgentCa::verify`]), so a
//! refusal reaches the agent as a gRPC status with the reason (expired, another CA) rather than
//! a failed handshake.
//!
//! # Who may speak for an id ([`admit`])
//!
//! | the session proves | the id has an identity | outcome |
//! | --- | --- | --- |
//! | a certificate for id X | none, or the certificate's key | admitted as X (the identity is recorded) |
//! | a certificate for id X | another key | refused: the identity was replaced |
//! | a certificate for id X | — (the Hello names Y ≠ X) | refused: a session speaks only for its own id |
//! | the join token | yes | refused: the impostor and takeover attacks of issue 10 |
//! | the join token, with a request | none (new or older agent) | admitted; the certificate is issued and recorded |
//! | the join token, no request | none | an agent older than identities: served (warned), or refused with `--require-agent-identity`, telling it to upgrade |
//!
//! A second session for an id replaces the first only through the first two rows, i.e. when it
//! proves the same identity. A renewal (a request on a session that presented its certificate)
//! must keep the key, so the recorded identity never changes on a renewal and a controller that
//! crashes before saving loses nothing. With `--plaintext` there is no TLS, so no certificates:
//! identities are neither issued nor checked (local experiments only).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use meshlat_proto::pb;
use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};

use crate::auth::{AuthError, CA_CERT_FILE, CA_KEY_FILE};

/// Default validity of an agent certificate (`--agent-cert-validity`). Agents renew once two
/// thirds of it have passed.
pub const DEFAULT_VALIDITY: Duration = Duration::from_secs(30 * 24 * 3600);
/// Certificates start this long before they are issued (clocks differ).
pub const BACKDATE: Duration = Duration::from_secs(300);
/// Longest certificate request accepted.
pub const MAX_REQUEST_BYTES: usize = 4096;

/// SHA-256 of a public key's bits (the `subjectPublicKey` of a certificate or request).
pub fn key_sha256(public_key: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, public_key).as_ref());
    out
}

/// Why an agent's certificate or request was not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The certificate request does not parse or its signature is wrong.
    #[error("hello.certificate_request: {0}")]
    BadRequest(String),
    /// The certificate does not verify against this controller's CA.
    #[error("agent certificate: {0}")]
    BadCertificate(String),
    /// Signing failed (not expected).
    #[error("agent certificate: signing failed: {0}")]
    Signing(String),
}

/// What a verified client certificate says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Presented {
    /// The agent id (the subject's common name).
    pub agent_id: String,
    /// [`key_sha256`] of its public key.
    pub key_sha256: [u8; 32],
    /// When it expires (Unix seconds).
    pub not_after_unix: i64,
}

/// How a session authenticated (set by the agent service's interceptor,
/// [`crate::grpc::auth::agent`], as a request extension).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentProof {
    /// The join token `name` (`token_id`: an identifier of its secret, for the per-token cap).
    Token {
        /// The token's name (`controller tokens list`).
        name: String,
        /// [`crate::grpc::agent::join_token_id`] of the presented token.
        token_id: String,
    },
    /// A client certificate from this controller's CA.
    Certificate(Presented),
}

/// A session refused for its identity ([`admit`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The certificate names another agent than the Hello.
    #[error(
        "this agent certificate speaks for agent {cert:?}, not {hello:?}: a session speaks only for its own id"
    )]
    OtherId {
        /// The certificate's id.
        cert: String,
        /// The Hello's id.
        hello: String,
    },
    /// The id's identity is another key.
    #[error(
        "agent {id:?} has another identity now (its certificate was replaced); this certificate is no longer accepted: remove the agent's --state-dir to join as a new agent"
    )]
    Superseded {
        /// The id.
        id: String,
    },
    /// A join-token session for an id that has an identity.
    #[error(
        "agent {id:?} has its own identity (a client certificate): a join token cannot speak for it; present its certificate (restart the agent with its --state-dir), or join without an id"
    )]
    TokenForIdentity {
        /// The id.
        id: String,
    },
    /// A renewal asked for another key.
    #[error("hello.certificate_request: a renewal must keep the key of the presented certificate")]
    RenewalKeyChanged,
    /// An agent too old to hold an identity, with `--require-agent-identity`.
    #[error(
        "this controller requires per-agent identities (client certificates, --require-agent-identity) and this agent (version {version:?}) does not request one: upgrade the agent"
    )]
    UpgradeRequired {
        /// The agent's version.
        version: String,
    },
}

/// What [`admit`] decided: the identity to record (`None`: none, an older agent).
pub type Admitted = Option<[u8; 32]>;

/// The identity rules (module doc table). `hello_id` is the id the session asks for (never
/// empty: a first join gets its new id before this), `stored` the id's recorded identity
/// (`None`: unknown id or no identity), `requested` the key of the session's certificate
/// request, if any. Returns the identity to record.
///
/// # Errors
///
/// [`Refusal`].
pub fn admit(
    proof: &AgentProof,
    hello_id: &str,
    stored: Option<&[u8]>,
    requested: Option<[u8; 32]>,
    require_identity: bool,
    version: &str,
) -> Result<Admitted, Refusal> {
    let stored = stored.filter(|k| !k.is_empty());
    match proof {
        AgentProof::Certificate(p) => {
            if p.agent_id != hello_id {
                return Err(Refusal::OtherId {
                    cert: p.agent_id.clone(),
                    hello: hello_id.to_string(),
                });
            }
            if stored.is_some_and(|k| k != p.key_sha256) {
                return Err(Refusal::Superseded {
                    id: hello_id.to_string(),
                });
            }
            if requested.is_some_and(|k| k != p.key_sha256) {
                return Err(Refusal::RenewalKeyChanged);
            }
            Ok(Some(p.key_sha256))
        }
        AgentProof::Token { .. } => {
            if stored.is_some() {
                return Err(Refusal::TokenForIdentity {
                    id: hello_id.to_string(),
                });
            }
            match requested {
                Some(k) => Ok(Some(k)),
                None if require_identity => Err(Refusal::UpgradeRequired {
                    version: version.to_string(),
                }),
                None => Ok(None),
            }
        }
    }
}

/// A parsed and verified certificate request.
#[derive(Debug)]
pub struct Request {
    params: CertificateSigningRequestParams,
    /// [`key_sha256`] of its key.
    pub key_sha256: [u8; 32],
}

impl Request {
    /// Parses `der` and checks its signature (the requester holds the key).
    ///
    /// # Errors
    ///
    /// [`IdentityError::BadRequest`].
    pub fn parse(der: &[u8]) -> Result<Self, IdentityError> {
        if der.len() > MAX_REQUEST_BYTES {
            return Err(IdentityError::BadRequest(format!(
                "{} bytes, at most {MAX_REQUEST_BYTES}",
                der.len()
            )));
        }
        let params = CertificateSigningRequestParams::from_der(&der.into())
            .map_err(|e| IdentityError::BadRequest(e.to_string()))?;
        let key_sha256 = key_sha256(params.public_key.der_bytes());
        Ok(Request { params, key_sha256 })
    }
}

/// The controller's CA as issuer and verifier of agent certificates.
pub struct AgentCa {
    issuer: Issuer<'static, KeyPair>,
    ca_sha256: [u8; 32],
    verifier: Arc<dyn ClientCertVerifier>,
    validity: Duration,
}

impl std::fmt::Debug for AgentCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentCa")
            .field("validity", &self.validity)
            .finish_non_exhaustive()
    }
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl AgentCa {
    /// The CA of data directory `dir` (made by [`crate::auth::load_or_create_tls`]), issuing
    /// certificates valid for `validity`.
    ///
    /// # Errors
    ///
    /// [`AuthError`] for unreadable or corrupt CA files.
    pub fn load(dir: &Path, validity: Duration) -> Result<Self, AuthError> {
        use rustls::pki_types::pem::PemObject;
        let ca_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| AuthError::Io {
                path: p.to_path_buf(),
                source,
            })
        };
        let corrupt = |p: &Path, reason: String| AuthError::Corrupt {
            path: p.to_path_buf(),
            reason,
        };
        let ca_der = CertificateDer::from_pem_slice(read(&ca_path)?.as_bytes())
            .map_err(|e| corrupt(&ca_path, e.to_string()))?;
        let key =
            KeyPair::from_pem(&read(&key_path)?).map_err(|e| corrupt(&key_path, e.to_string()))?;
        let issuer =
            Issuer::from_ca_cert_der(&ca_der, key).map_err(|e| corrupt(&ca_path, e.to_string()))?;
        Self::new(issuer, ca_der, validity).map_err(|e| corrupt(&ca_path, e))
    }

    /// An issuer from parts (tests).
    ///
    /// # Errors
    ///
    /// The verifier cannot be built from `ca_der`.
    pub fn new(
        issuer: Issuer<'static, KeyPair>,
        ca_der: CertificateDer<'static>,
        validity: Duration,
    ) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_der.clone()).map_err(|e| e.to_string())?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .map_err(|e| e.to_string())?;
        Ok(AgentCa {
            issuer,
            ca_sha256: key_sha256(&ca_der),
            verifier,
            validity,
        })
    }

    /// A certificate for `agent_id` with the key of `request`, valid from now (less
    /// [`BACKDATE`]) for the configured validity.
    ///
    /// # Errors
    ///
    /// [`IdentityError::Signing`].
    pub fn issue(
        &self,
        agent_id: &str,
        request: &Request,
        now: SystemTime,
    ) -> Result<pb::AgentCertificate, IdentityError> {
        let sign = |e: rcgen::Error| IdentityError::Signing(e.to_string());
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(sign)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, agent_id);
        params.distinguished_name = dn;
        let from = now - BACKDATE;
        let until = now + self.validity;
        params.not_before = from.into();
        params.not_after = until.into();
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let mut serial = [0u8; 16];
        rand::fill(&mut serial[..]);
        serial[0] &= 0x7f;
        params.serial_number = Some(serial.to_vec().into());
        let cert = params
            .signed_by(&request.params.public_key, &self.issuer)
            .map_err(sign)?;
        Ok(pb::AgentCertificate {
            der: cert.der().to_vec(),
            not_before_unix: unix(from),
            not_after_unix: unix(until),
            ca_sha256: self.ca_sha256.to_vec(),
            agent_id: agent_id.to_string(),
        })
    }

    /// Verifies a client's chain (end entity first) against the CA at `now` and reads the agent
    /// id and key from it.
    ///
    /// # Errors
    ///
    /// [`IdentityError::BadCertificate`] naming what is wrong.
    pub fn verify(
        &self,
        chain: &[CertificateDer<'_>],
        now: SystemTime,
    ) -> Result<Presented, IdentityError> {
        let bad = |m: String| IdentityError::BadCertificate(m);
        let (end, rest) = chain
            .split_first()
            .ok_or_else(|| bad("no certificate presented".into()))?;
        let at =
            UnixTime::since_unix_epoch(now.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO));
        self.verifier
            .verify_client_cert(end, rest, at)
            .map_err(|e| bad(describe(&e)))?;
        let (_, cert) = x509_parser::parse_x509_certificate(end)
            .map_err(|e| bad(format!("does not parse: {e}")))?;
        let agent_id = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|a| a.as_str().ok())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| bad("names no agent id (subject common name)".into()))?
            .to_string();
        Ok(Presented {
            agent_id,
            key_sha256: key_sha256(&cert.public_key().subject_public_key.data),
            not_after_unix: cert.validity().not_after.timestamp(),
        })
    }
}

/// A certificate verification error in words an operator acts on.
fn describe(e: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "expired: the agent must renew it in time, or join anew".into()
        }
        rustls::Error::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
            "not valid yet (check the clocks)".into()
        }
        rustls::Error::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => {
            "not issued by this controller's CA".into()
        }
        other => other.to_string(),
    }
}

/// The gRPC listener's client certificate policy: ask every client for a certificate, let those
/// without one through, accept any certificate at the handshake (the handshake itself proves
/// the client holds its key) — the agent service verifies it against the CA on every call
/// ([`AgentCa::verify`]) and refuses with a reason the agent logs. No other service reads
/// client certificates.
#[derive(Debug)]
pub struct OfferClientAuth {
    provider: Arc<CryptoProvider>,
}

impl Default for OfferClientAuth {
    fn default() -> Self {
        OfferClientAuth {
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        }
    }
}

impl ClientCertVerifier for OfferClientAuth {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    meshlat_guard::signatures_checked_by!(provider);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, IsCa};

    fn ca(name: &str) -> AgentCa {
        let params = || {
            let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, name);
            p.distinguished_name = dn;
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            p
        };
        let key = KeyPair::generate().expect("key");
        let cert = params().self_signed(&key).expect("ca");
        AgentCa::new(
            Issuer::new(params(), key),
            cert.der().clone(),
            Duration::from_secs(3600),
        )
        .expect("agent ca")
    }

    fn request() -> (KeyPair, Vec<u8>) {
        let key = KeyPair::generate().expect("key");
        let csr = CertificateParams::new(Vec::<String>::new())
            .expect("params")
            .serialize_request(&key)
            .expect("csr");
        (key, csr.der().to_vec())
    }

    #[test]
    fn issued_certificates_verify_only_against_their_ca_and_only_in_time() {
        let a = ca("a");
        let (key, csr) = request();
        let req = Request::parse(&csr).expect("request");
        assert_eq!(req.key_sha256, key_sha256(key.public_key_raw()));
        let now = SystemTime::now();
        let cert = a.issue("agent-7", &req, now).expect("issue");
        assert_eq!(cert.agent_id, "agent-7");
        assert_eq!(cert.not_after_unix - unix(now), 3600);
        let chain = [CertificateDer::from(cert.der.clone())];
        let p = a.verify(&chain, now).expect("verifies");
        assert_eq!(p.agent_id, "agent-7");
        assert_eq!(p.key_sha256, req.key_sha256, "bound to the requested key");
        let e = ca("b").verify(&chain, now).expect_err("other CA");
        assert!(
            e.to_string().contains("not issued by this controller's CA"),
            "{e}"
        );
        let e = a
            .verify(&chain, now + Duration::from_secs(7200))
            .expect_err("expired");
        assert!(e.to_string().contains("expired"), "{e}");
        assert!(a.verify(&[], now).is_err());
    }

    #[test]
    fn a_request_with_a_wrong_signature_or_garbage_is_refused() {
        let (_, mut csr) = request();
        assert!(matches!(
            Request::parse(b"garbage"),
            Err(IdentityError::BadRequest(_))
        ));
        // Flip a bit of the signature (the last bytes).
        let n = csr.len();
        csr[n - 3] ^= 0x01;
        assert!(matches!(
            Request::parse(&csr),
            Err(IdentityError::BadRequest(_))
        ));
        assert!(Request::parse(&vec![0u8; MAX_REQUEST_BYTES + 1]).is_err());
    }

    #[test]
    fn admit_follows_the_table() {
        let k1 = [1u8; 32];
        let k2 = [2u8; 32];
        let token = AgentProof::Token {
            name: "default".into(),
            token_id: "t".into(),
        };
        let cert = |id: &str, k: [u8; 32]| {
            AgentProof::Certificate(Presented {
                agent_id: id.into(),
                key_sha256: k,
                not_after_unix: 0,
            })
        };
        // Certificates.
        assert_eq!(
            admit(&cert("a", k1), "a", None, None, false, ""),
            Ok(Some(k1))
        );
        assert_eq!(
            admit(&cert("a", k1), "a", Some(&k1), Some(k1), true, ""),
            Ok(Some(k1))
        );
        assert!(matches!(
            admit(&cert("a", k1), "b", None, None, false, ""),
            Err(Refusal::OtherId { .. })
        ));
        assert!(matches!(
            admit(&cert("a", k1), "a", Some(&k2), None, false, ""),
            Err(Refusal::Superseded { .. })
        ));
        assert_eq!(
            admit(&cert("a", k1), "a", Some(&k1), Some(k2), false, ""),
            Err(Refusal::RenewalKeyChanged)
        );
        // The join token.
        assert!(matches!(
            admit(&token, "a", Some(&k1), Some(k2), false, ""),
            Err(Refusal::TokenForIdentity { .. })
        ));
        assert_eq!(
            admit(&token, "a", Some(&[]), Some(k2), true, ""),
            Ok(Some(k2))
        );
        assert_eq!(admit(&token, "a", None, None, false, "0.1.0"), Ok(None));
        let e = admit(&token, "a", None, None, true, "0.1.0").expect_err("old agent");
        assert!(e.to_string().contains("upgrade the agent"), "{e}");
    }
}
