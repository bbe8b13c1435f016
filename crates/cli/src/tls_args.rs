//! The TLS flags of the source tools (`--ca-cert`, `--fingerprint`, `--insecure`) and the policy
//! they choose. An insecure choice is said on stderr, whoever made it.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use tls::TlsMode;

/// How to trust the source's servers.
#[derive(Debug, Args)]
pub(crate) struct TlsArgs {
    /// PEM CA bundle to verify the server certificates with (default: for OpenStack, OS_CACERT or
    /// the clouds.yaml entry's cacert; else the system trust store).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["fingerprint", "insecure"])]
    ca_cert: Option<PathBuf>,
    /// Trust exactly the certificate with this SHA-256 fingerprint (hex, `:` separators allowed);
    /// for OpenStack, Keystone and every endpoint of its catalog must present it.
    #[arg(long, conflicts_with = "insecure")]
    fingerprint: Option<String>,
    /// Do not verify the server certificates at all (reported as insecure).
    #[arg(long)]
    insecure: bool,
}

impl TlsArgs {
    /// The policy the flags ask for, or `None` when they name none (the caller's default applies).
    pub(crate) fn chosen(&self) -> anyhow::Result<Option<TlsMode>> {
        if self.insecure {
            warn_if_insecure(&TlsMode::Insecure);
            return Ok(Some(TlsMode::Insecure));
        }
        if let Some(fingerprint) = &self.fingerprint {
            let pinned = TlsMode::pinned_from_hex(fingerprint)
                .context("--fingerprint is not a SHA-256 fingerprint")?;
            return Ok(Some(pinned));
        }
        match &self.ca_cert {
            Some(path) => {
                let pem = std::fs::read(path)
                    .with_context(|| format!("failed to read --ca-cert {}", path.display()))?;
                Ok(Some(TlsMode::CaBundle(pem)))
            }
            None => Ok(None),
        }
    }
}

/// Warns on stderr when `mode` verifies nothing.
pub(crate) fn warn_if_insecure(mode: &TlsMode) {
    if mode.is_insecure() {
        eprintln!("vm-import: warning: TLS verification is off; the connection can be intercepted");
    }
}
