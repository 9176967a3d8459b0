//! TLS to the controller, pinned by the join token: the server must present, in its chain, a CA
//! certificate whose SHA-256 is the token's pin, and its certificate must verify against that CA
//! for the host name dialled. No system roots are consulted.

use std::sync::Arc;

use hyper_util::rt::TokioIo;
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

/// Verifies server certificates against the pinned CA.
#[derive(Debug)]
pub struct PinnedCa {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl PinnedCa {
    /// A verifier for `pin` (SHA-256 of the CA certificate, DER).
    pub fn new(pin: [u8; 32]) -> Self {
        PinnedCa {
            pin,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        }
    }
}

fn sha256(b: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, b).as_ref());
    out
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| sha256(c) == self.pin)
            .ok_or_else(|| {
                rustls::Error::General(
                    "the controller's CA does not match the join token's pin".into(),
                )
            })?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let v = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        v.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    meshlat_guard::signatures_checked_by!(provider);
}

/// A rustls client config pinned to `pin`, offering HTTP/2.
///
/// # Errors
///
/// rustls refusing the protocol versions (not expected with ring).
pub fn client_config(pin: [u8; 32]) -> Result<rustls::ClientConfig, rustls::Error> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(PinnedCa::new(pin)))
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}

/// [`client_config`] that also presents `chain` with `key` when the controller asks for a
/// client certificate (the agent's identity, [`super::identity`]).
///
/// # Errors
///
/// rustls refusing the key or the protocol versions.
pub fn client_config_with_cert(
    pin: [u8; 32],
    chain: Vec<CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(PinnedCa::new(pin)))
    .with_client_auth_cert(chain, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}

/// Interval of the HTTP/2 keepalive pings to the controller.
pub const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a keepalive ping may go unanswered before the connection is dropped.
pub const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// Connects a gRPC channel to `host:port`, over TLS with `tls` or in plain text.
///
/// HTTP/2 keepalive pings every [`KEEPALIVE_INTERVAL`] find a controller that vanished without
/// closing the connection; the connection is dropped if one goes unanswered for
/// [`KEEPALIVE_TIMEOUT`] (gRPC's default), not sooner: a controller busy with a storm of
/// reconnecting agents answers late, and dropping it then only adds to the storm. A controller
/// that stops or restarts closes its connections, which is noticed at once.
///
/// # Errors
///
/// The transport error.
pub async fn connect(
    host: String,
    port: u16,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    use std::time::Duration;
    let ep = tonic::transport::Endpoint::from_shared(format!("http://{host}:{port}"))?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .tcp_nodelay(true);
    let connector = tower::service_fn(move |_uri: http::Uri| {
        let host = host.clone();
        let tls = tls.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let io: Box<dyn Io> = match tls {
                None => Box::new(tcp),
                Some(cfg) => {
                    let name = ServerName::try_from(host.clone()).map_err(|e| {
                        std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string())
                    })?;
                    let s = tokio_rustls::TlsConnector::from(cfg)
                        .connect(name, tcp)
                        .await?;
                    Box::new(s)
                }
            };
            Ok::<_, std::io::Error>(TokioIo::new(io))
        }
    });
    ep.connect_with_connector(connector).await
}

/// A byte stream, plain or TLS.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}

#[cfg(test)]
mod tests {
    //! Negative tests: a verifier that accepted any certificate must fail here.

    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
        KeyUsagePurpose,
    };
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

    /// A CA: its certificate (DER) and an issuer to sign with.
    struct Ca {
        der: CertificateDer<'static>,
        issuer: Issuer<'static, KeyPair>,
    }

    fn ca(name: &str) -> Ca {
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
        let cert = params().self_signed(&key).expect("self-signed");
        Ca {
            der: cert.der().clone(),
            issuer: Issuer::new(params(), key),
        }
    }

    /// A server certificate for `names` signed by `ca`; `expired` makes it valid only in 2000.
    fn leaf(ca: &Ca, names: &[&str], expired: bool) -> (CertificateDer<'static>, KeyPair) {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("params");
        if expired {
            p.not_before = rcgen::date_time_ymd(2000, 1, 1);
            p.not_after = rcgen::date_time_ymd(2000, 12, 31);
        }
        let cert = p.signed_by(&key, &ca.issuer).expect("signed");
        (cert.der().clone(), key)
    }

    fn verify(
        pin: &Ca,
        end_entity: &CertificateDer<'_>,
        chain: &[CertificateDer<'_>],
        name: &str,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let name = ServerName::try_from(name.to_string()).expect("name");
        PinnedCa::new(sha256(&pin.der)).verify_server_cert(
            end_entity,
            chain,
            &name,
            &[],
            UnixTime::now(),
        )
    }

    #[test]
    fn accepts_the_pinned_ca_for_the_right_name() {
        let good = ca("pinned");
        let (cert, _) = leaf(&good, &["ctl.example", "127.0.0.1"], false);
        verify(&good, &cert, std::slice::from_ref(&good.der), "ctl.example").expect("valid");
        verify(&good, &cert, std::slice::from_ref(&good.der), "127.0.0.1").expect("valid IP");
    }

    #[test]
    fn refuses_a_chain_from_another_ca() {
        let good = ca("pinned");
        let evil = ca("impostor");
        let (cert, _) = leaf(&evil, &["ctl.example"], false);
        let e = verify(&good, &cert, std::slice::from_ref(&evil.der), "ctl.example")
            .expect_err("another CA");
        assert!(e.to_string().contains("pin"), "{e}");
        // Without any CA in the chain.
        assert!(verify(&good, &cert, &[], "ctl.example").is_err());
    }

    #[test]
    fn refuses_the_pinned_ca_presented_beside_a_certificate_it_did_not_sign() {
        // The pinned CA certificate is public: an impostor can put it in its chain, but cannot
        // make it sign.
        let good = ca("pinned");
        let evil = ca("impostor");
        let (cert, _) = leaf(&evil, &["ctl.example"], false);
        let chain = [good.der.clone(), evil.der.clone()];
        let e = verify(&good, &cert, &chain, "ctl.example").expect_err("unsigned by the pin");
        assert!(
            matches!(e, rustls::Error::InvalidCertificate(_)),
            "signature must fail: {e:?}"
        );
    }

    /// Why the verifier pinned to the right CA refuses, as `ctl.example`, a leaf that CA signed
    /// for `names` (`expired`: valid only in 2000).
    fn certificate_error(names: &[&str], expired: bool) -> rustls::CertificateError {
        let good = ca("pinned");
        let (cert, _) = leaf(&good, names, expired);
        match verify(&good, &cert, std::slice::from_ref(&good.der), "ctl.example") {
            Err(rustls::Error::InvalidCertificate(e)) => e,
            other => panic!("not refused as an invalid certificate: {other:?}"),
        }
    }

    #[test]
    fn refuses_the_right_ca_with_a_wrong_name() {
        use rustls::CertificateError::{NotValidForName, NotValidForNameContext};
        let e = certificate_error(&["other.example"], false);
        assert!(
            matches!(e, NotValidForName | NotValidForNameContext { .. }),
            "{e:?}"
        );
    }

    #[test]
    fn refuses_an_expired_certificate_from_the_right_ca() {
        use rustls::CertificateError::{Expired, ExpiredContext};
        let e = certificate_error(&["ctl.example"], true);
        assert!(matches!(e, Expired | ExpiredContext { .. }), "{e:?}");
    }

    /// The verifier is the one `client_config` installs: a real handshake against a server
    /// with another CA's certificate fails, one with the pinned CA's succeeds.
    #[tokio::test]
    async fn client_config_handshakes_only_with_the_pinned_ca() {
        let good = ca("pinned");
        let evil = ca("impostor");
        let handshake = |signer: &Ca| {
            let (cert, key) = leaf(signer, &["ctl.example"], false);
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
            let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert, signer.der.clone()], key)
            .expect("server config");
            server.alpn_protocols = vec![b"h2".to_vec()];
            let client = client_config(sha256(&good.der)).expect("client config");
            async move {
                let (c, s) = tokio::io::duplex(64 * 1024);
                let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
                let srv = tokio::spawn(async move { acceptor.accept(s).await.map(|_| ()) });
                let name = ServerName::try_from("ctl.example").expect("name");
                let r = tokio_rustls::TlsConnector::from(Arc::new(client))
                    .connect(name, c)
                    .await
                    .map(|_| ());
                drop(srv);
                r
            }
        };
        handshake(&good).await.expect("pinned CA");
        let e = handshake(&evil).await.expect_err("impostor CA");
        assert!(e.to_string().contains("pin"), "{e}");
    }
}
