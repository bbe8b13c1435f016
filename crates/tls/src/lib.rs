//! TLS policy for every connection to a source (vCenter and ESXi, Keystone and the OpenStack
//! services, an OVA's web server): verified by default against a CA bundle or the system trust
//! store, or pinned to the server certificate's SHA-256 fingerprint, or, only when asked,
//! unverified. Everything is built on rustls' `ring` provider and handed to HTTP clients ready-made.

use std::{fmt, sync::Arc};

use rustls::{
    ClientConfig, DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature},
    pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject},
};
use sha2::{Digest, Sha256};

/// How the server certificate is checked.
#[derive(Clone, PartialEq, Eq)]
pub enum TlsMode {
    /// Verify the chain and host name against the system trust store.
    SystemRoots,
    /// Verify the chain and host name against these PEM certificates only (a Secret's CA key).
    CaBundle(Vec<u8>),
    /// Accept exactly the certificate whose DER has this SHA-256 (host name not checked: a pin is
    /// stronger than a name).
    PinnedSha256([u8; 32]),
    /// Accept any certificate. Only on explicit request; [`TlsMode::is_insecure`] lets callers report it.
    Insecure,
}

impl fmt::Debug for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SystemRoots => f.write_str("SystemRoots"),
            Self::CaBundle(pem) => write!(f, "CaBundle({} bytes)", pem.len()),
            Self::PinnedSha256(fp) => write!(f, "PinnedSha256({})", hex::encode(fp)),
            Self::Insecure => f.write_str("Insecure"),
        }
    }
}

impl TlsMode {
    /// Whether certificate checks are off; callers should surface this (status, logs, report).
    pub fn is_insecure(&self) -> bool {
        matches!(self, Self::Insecure)
    }

    /// Parses a SHA-256 fingerprint written as 64 hex digits, with or without `:` separators and an
    /// optional `sha256:`/`SHA256:` prefix.
    ///
    /// # Errors
    /// [`Error::BadFingerprint`] when it is not 32 bytes of hex.
    pub fn pinned_from_hex(text: &str) -> Result<Self, Error> {
        let trimmed = text.trim();
        let body = trimmed
            .strip_prefix("sha256:")
            .or_else(|| trimmed.strip_prefix("SHA256:"))
            .unwrap_or(trimmed);
        let digits: String = body.chars().filter(|c| *c != ':').collect();
        let bytes = hex::decode(&digits).map_err(|_| Error::BadFingerprint)?;
        let fp: [u8; 32] = bytes.try_into().map_err(|_| Error::BadFingerprint)?;
        Ok(Self::PinnedSha256(fp))
    }
}

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The PEM text (a CA bundle) has no certificate, or a malformed one.
    #[error("no usable PEM certificate")]
    NoCaCertificates,
    /// A certificate from the bundle was rejected by the trust store.
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
    /// rustls refused the protocol versions (cannot happen with the ring provider's defaults).
    #[error("cannot configure TLS protocol versions")]
    Versions(#[source] rustls::Error),
    /// A fingerprint that is not 32 bytes of hex.
    #[error("certificate fingerprint must be a SHA-256: 64 hex digits, optionally ':'-separated")]
    BadFingerprint,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The SHA-256 of a DER certificate, as colon-separated upper-case hex (how vSphere shows it).
pub fn fingerprint_sha256(der: &[u8]) -> String {
    let digest = Sha256::digest(der);
    digest
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The SHA-256 fingerprint (as [`fingerprint_sha256`] writes it) of the first certificate of a PEM
/// text: what to pin for a server whose certificate file is at hand.
///
/// # Errors
/// [`Error::NoCaCertificates`] when the text holds no PEM certificate.
pub fn fingerprint_sha256_of_pem(pem: &[u8]) -> Result<String, Error> {
    let first = CertificateDer::pem_slice_iter(pem)
        .next()
        .and_then(Result::ok)
        .ok_or(Error::NoCaCertificates)?;
    Ok(fingerprint_sha256(&first))
}

/// Builds the rustls client configuration for `mode`.
///
/// # Errors
/// See [`Error`].
pub fn client_config(mode: &TlsMode) -> Result<ClientConfig, Error> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(Error::Versions)?;
    let config = match mode {
        TlsMode::SystemRoots => {
            let verifier = rustls_platform_verifier::Verifier::new(provider).map_err(Error::SystemRoots)?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_no_client_auth()
        }
        TlsMode::CaBundle(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            let mut count = 0usize;
            for (index, cert) in CertificateDer::pem_slice_iter(pem).enumerate() {
                let cert = cert.map_err(|_| Error::NoCaCertificates)?;
                roots
                    .add(cert)
                    .map_err(|source| Error::BadCaCertificate { index, source })?;
                count += 1;
            }
            if count == 0 {
                return Err(Error::NoCaCertificates);
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        TlsMode::PinnedSha256(fp) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned {
                pin: Pin::Sha256(*fp),
                provider,
            }))
            .with_no_client_auth(),
        TlsMode::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned {
                pin: Pin::Any,
                provider,
            }))
            .with_no_client_auth(),
    };
    Ok(config)
}

/// Parses an `HttpNfcLeaseDeviceUrl.sslThumbprint` (SHA-1, `AA:BB:…`, 20 bytes).
///
/// # Errors
/// [`Error::BadFingerprint`].
pub fn parse_sha1_thumbprint(text: &str) -> Result<[u8; 20], Error> {
    let digits: String = text.trim().chars().filter(|c| *c != ':').collect();
    let bytes = hex::decode(&digits).map_err(|_| Error::BadFingerprint)?;
    bytes.try_into().map_err(|_| Error::BadFingerprint)
}

/// A client configuration that accepts exactly the certificate whose SHA-1 is `thumbprint`: for
/// ESXi NFC hosts, whose thumbprint the lease delivered over the already-verified SOAP session.
/// SHA-1 is what vSphere hands out; a second preimage on a live certificate is not practical.
///
/// # Errors
/// [`Error::Versions`] (cannot happen with ring's defaults).
pub fn client_config_sha1_pin(thumbprint: [u8; 20]) -> Result<ClientConfig, Error> {
    let provider = provider();
    Ok(ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(Error::Versions)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned {
            pin: Pin::Sha1(thumbprint),
            provider,
        }))
        .with_no_client_auth())
}

#[derive(Debug, Clone, Copy)]
enum Pin {
    Any,
    Sha256([u8; 32]),
    Sha1([u8; 20]),
}

/// Accepts the end-entity certificate by fingerprint (or any, for [`Pin::Any`]), but still checks
/// the handshake signatures so the peer must hold the certificate's key.
#[derive(Debug)]
struct Pinned {
    pin: Pin,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let der = end_entity.as_ref();
        let matches = match self.pin {
            Pin::Any => true,
            // Certificates are public, so no constant-time compare is needed.
            Pin::Sha256(expected) => <[u8; 32]>::from(Sha256::digest(der)) == expected,
            Pin::Sha1(expected) => {
                ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, der).as_ref()
                    == expected.as_slice()
            }
        };
        if matches {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "server certificate (SHA-256 {}) does not match the pinned fingerprint",
                fingerprint_sha256(der)
            )))
        }
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
    fn fingerprints_parse_in_common_spellings() {
        let hex64 = "ab".repeat(32);
        let colons = vec!["AB"; 32].join(":");
        for text in [hex64.clone(), colons, format!("sha256:{hex64}")] {
            assert_eq!(
                TlsMode::pinned_from_hex(&text).unwrap(),
                TlsMode::PinnedSha256([0xab; 32]),
                "{text}"
            );
        }
        assert!(TlsMode::pinned_from_hex("abcd").is_err());
        assert!(TlsMode::pinned_from_hex(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn sha1_thumbprints_parse_as_vsphere_writes_them() {
        let text = vec!["F4"; 20].join(":");
        assert_eq!(parse_sha1_thumbprint(&text).unwrap(), [0xf4; 20]);
        assert!(parse_sha1_thumbprint("F4:8B").is_err());
        assert!(client_config_sha1_pin([0; 20]).is_ok());
    }

    #[test]
    fn empty_ca_bundle_is_refused() {
        assert!(matches!(
            client_config(&TlsMode::CaBundle(b"not pem".to_vec())),
            Err(Error::NoCaCertificates)
        ));
    }

    #[test]
    fn insecure_is_reported() {
        assert!(TlsMode::Insecure.is_insecure());
        assert!(!TlsMode::SystemRoots.is_insecure());
        assert!(client_config(&TlsMode::Insecure).is_ok());
    }
}
