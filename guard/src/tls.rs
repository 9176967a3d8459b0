//! The part of a custom rustls certificate verifier that never differs: checking handshake
//! signatures with a crypto provider's algorithms. The agent's pinned-CA server verifier and
//! the controller's offer-only client verifier both need it.

/// Expands, inside an `impl rustls::client::danger::ServerCertVerifier` or
/// `impl rustls::server::danger::ClientCertVerifier` block, to `verify_tls12_signature`,
/// `verify_tls13_signature` and `supported_verify_schemes`, each checking with the algorithms of
/// the `Arc<rustls::crypto::CryptoProvider>` in the given field of `self`.
///
/// The calling crate must depend on `rustls` (meshlat-guard does not).
///
/// ```ignore
/// impl ServerCertVerifier for PinnedCa {
///     fn verify_server_cert(/* ... */) -> Result<ServerCertVerified, rustls::Error> { /* ... */ }
///     meshlat_guard::signatures_checked_by!(provider);
/// }
/// ```
#[macro_export]
macro_rules! signatures_checked_by {
    ($provider:ident) => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &::rustls::pki_types::CertificateDer<'_>,
            dss: &::rustls::DigitallySignedStruct,
        ) -> ::std::result::Result<::rustls::client::danger::HandshakeSignatureValid, ::rustls::Error>
        {
            ::rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.$provider.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &::rustls::pki_types::CertificateDer<'_>,
            dss: &::rustls::DigitallySignedStruct,
        ) -> ::std::result::Result<::rustls::client::danger::HandshakeSignatureValid, ::rustls::Error>
        {
            ::rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.$provider.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> ::std::vec::Vec<::rustls::SignatureScheme> {
            self.$provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    };
}
