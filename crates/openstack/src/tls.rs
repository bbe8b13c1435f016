//! TLS policy for the cloud's endpoints, as for vSphere: verified against a CA bundle (the Secret's
//! `ca_cert`, `OS_CACERT`) or the system trust store, and unverified only when asked. Built on
//! rustls' `ring` provider and handed to reqwest ready-made.

use std::{fmt, sync::Arc};

use rustls::{
    ClientConfig, DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature},
    pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject},
};

/// How server certificates are checked.
#[derive(Clone, PartialEq, Eq)]
pub enum TlsMode {
    /// The system trust store.
    SystemRoots,
    /// These PEM certificates only.
    CaBundle(Vec<u8>),
    /// No verification (upstream's default without `ca_cert`; here only on request).
    Insecure,
}

impl fmt::Debug for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SystemRoots => f.write_str("SystemRoots"),
            Self::CaBundle(pem) => write!(f, "CaBundle({} bytes)", pem.len()),
            Self::Insecure => f.write_str("Insecure"),
        }
    }
}

impl TlsMode {
    /// Whether certificates go unchecked; callers should say so.
    pub fn is_insecure(&self) -> bool {
        matches!(self, Self::Insecure)
    }
}

/// Why no TLS configuration could be built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bundle holds no PEM certificate, or a malformed one.
    #[error("CA bundle contains no usable PEM certificate")]
    NoCaCertificates,
    /// A certificate was refused by the trust store.
    #[error("CA bundle certificate {index} was rejected")]
    BadCaCertificate {
        /// Position in the bundle.
        index: usize,
        /// Why.
        #[source]
        source: rustls::Error,
    },
    /// The system trust store could not be loaded.
    #[error("cannot load the system trust store")]
    SystemRoots(#[source] rustls::Error),
    /// rustls refused the protocol versions.
    #[error("cannot configure TLS protocol versions")]
    Versions(#[source] rustls::Error),
}

/// The rustls configuration for `mode`.
///
/// # Errors
/// [`Error`].
pub fn client_config(mode: &TlsMode) -> Result<ClientConfig, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(Error::Versions)?;
    Ok(match mode {
        TlsMode::SystemRoots => {
            let verifier = rustls_platform_verifier::Verifier::new(provider).map_err(Error::SystemRoots)?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_no_client_auth()
        }
        TlsMode::CaBundle(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for (index, cert) in CertificateDer::pem_slice_iter(pem).enumerate() {
                let cert = cert.map_err(|_| Error::NoCaCertificates)?;
                roots
                    .add(cert)
                    .map_err(|source| Error::BadCaCertificate { index, source })?;
            }
            if roots.is_empty() {
                return Err(Error::NoCaCertificates);
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        TlsMode::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny { provider }))
            .with_no_client_auth(),
    })
}

/// Accepts any certificate but still checks the handshake signatures (the peer holds the key of
/// the certificate it showed).
#[derive(Debug)]
struct AcceptAny {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_bundle_is_refused_and_insecure_is_reported() {
        assert!(matches!(
            client_config(&TlsMode::CaBundle(b"no pem here".to_vec())),
            Err(Error::NoCaCertificates)
        ));
        assert!(TlsMode::Insecure.is_insecure());
        assert!(client_config(&TlsMode::Insecure).is_ok());
        assert_eq!(
            format!("{:?}", TlsMode::CaBundle(vec![0; 3])),
            "CaBundle(3 bytes)"
        );
    }
}
