//! The controller's CA (`ca.pem`, `ca.key`), the server certificate it signs at every start, and
//! join tokens (the CA pin and the join secret).

use std::path::{Path, PathBuf};

use meshlat_proto::token::JoinToken;

use super::{AuthError, CA_CERT_FILE, CA_KEY_FILE, io, sha256, write_private};

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
            .field("ca_sha256", &hex::encode(self.ca_sha256))
            .field("ca_path", &self.ca_path)
            .finish_non_exhaustive()
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
        crate::fsutil::write_atomic(&ca_path, ca.pem().as_bytes(), 0o644).map_err(io(&ca_path))?;
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
