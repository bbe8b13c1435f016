//! TLS material from Secrets and leases on arbitrary input: SHA-256 pins as text, CA bundles as
//! PEM (parsed and turned into a client configuration), SHA-1 lease thumbprints. Never a panic; a
//! pin that parses names 32 bytes, a thumbprint 20.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tls::TlsMode;

fuzz_target!(|data: &[u8]| {
    let _ = tls::fingerprint_sha256_of_pem(data);
    let _ = tls::client_config(&TlsMode::CaBundle(data.to_vec()));
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(mode) = TlsMode::pinned_from_hex(text) {
        assert!(matches!(mode, TlsMode::PinnedSha256(_)));
    }
    if let Ok(thumbprint) = tls::parse_sha1_thumbprint(text) {
        assert_eq!(thumbprint.len(), 20);
    }
});
