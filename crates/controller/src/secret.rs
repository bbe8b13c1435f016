//! The credentials Secret a source names: read once, its keys looked up with errors that name the
//! Secret and the key, and the TLS policy its trust keys and the source's `insecureSkipVerify` ask
//! for. The VMware, OpenStack and OVA sides all read their Secrets through here.

use std::collections::BTreeMap;

use k8s_openapi::{
    ByteString,
    api::core::v1::{Secret, SecretReference},
};
use kube::Api;
use tls::TlsMode;

/// The keys of one source kind's Secret that say how its server's certificate is checked (each
/// kind spells its CA key as upstream does).
#[derive(Clone, Copy, Debug)]
pub(crate) struct TrustKeys {
    /// PEM CA bundle.
    pub ca_cert: &'static str,
    /// SHA-256 fingerprint of the server certificate itself (ours).
    pub fingerprint: &'static str,
}

/// Why a source's Secret could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The Secret does not exist.
    #[error("secret {namespace}/{name} not found")]
    NotFound {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// The Secret lacks a key.
    #[error("secret {namespace}/{name} has no '{key}' key")]
    KeyMissing {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The key.
        key: &'static str,
    },
    /// A key holds something unusable.
    #[error("secret {namespace}/{name} key '{key}' {detail}")]
    KeyInvalid {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The key.
        key: &'static str,
        /// What is wrong with it.
        detail: String,
    },
    /// Reading the Secret failed.
    #[error("reading secret {namespace}/{name}")]
    Unreadable {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
}

impl SecretError {
    /// Low-cardinality reason for conditions, Events and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotFound { .. } => "SecretNotFound",
            Self::KeyMissing { .. } => "SecretKeyMissing",
            Self::KeyInvalid { .. } => "SecretKeyInvalid",
            Self::Unreadable { .. } => "SecretUnreadable",
        }
    }
}

/// A source's Secret, read.
#[derive(Clone)]
pub(crate) struct SourceSecret {
    namespace: String,
    name: String,
    data: BTreeMap<String, ByteString>,
}

impl std::fmt::Debug for SourceSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceSecret")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .field("keys", &self.data.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl SourceSecret {
    /// Reads the Secret `reference` names; without a namespace it is the source's own.
    ///
    /// # Errors
    /// [`SecretError::NotFound`], [`SecretError::Unreadable`].
    pub(crate) async fn read(
        kube: &kube::Client,
        reference: &SecretReference,
        source_namespace: Option<String>,
    ) -> Result<Self, SecretError> {
        let namespace = reference
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .or(source_namespace)
            .unwrap_or_default();
        let name = reference.name.clone().unwrap_or_default();
        let secret = Api::<Secret>::namespaced(kube.clone(), &namespace)
            .get_opt(&name)
            .await
            .map_err(|source| SecretError::Unreadable {
                namespace: namespace.clone(),
                name: name.clone(),
                source,
            })?;
        match secret {
            Some(secret) => Ok(Self::from_data(namespace, name, secret.data.unwrap_or_default())),
            None => Err(SecretError::NotFound { namespace, name }),
        }
    }

    fn from_data(namespace: String, name: String, data: BTreeMap<String, ByteString>) -> Self {
        Self {
            namespace,
            name,
            data,
        }
    }

    /// The key's bytes; an empty value counts as absent.
    pub(crate) fn optional(&self, key: &str) -> Option<Vec<u8>> {
        self.data.get(key).map(|v| v.0.clone()).filter(|v| !v.is_empty())
    }

    /// The key's text (invalid UTF-8 replaced); an empty value counts as absent.
    pub(crate) fn optional_text(&self, key: &str) -> Option<String> {
        self.optional(key)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The key's text.
    ///
    /// # Errors
    /// [`SecretError::KeyMissing`].
    pub(crate) fn required_text(&self, key: &'static str) -> Result<String, SecretError> {
        self.optional_text(key).ok_or_else(|| SecretError::KeyMissing {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            key,
        })
    }

    fn invalid(&self, key: &'static str, detail: String) -> SecretError {
        SecretError::KeyInvalid {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            key,
            detail,
        }
    }

    /// How the server's certificate is checked: not at all when the source says
    /// `insecureSkipVerify`, else pinned to the Secret's fingerprint, else against its CA bundle,
    /// else against the system roots. A CA that holds no usable certificate, a fingerprint that is
    /// not a SHA-256 and both keys at once are refused here, before anything is dialled.
    ///
    /// # Errors
    /// [`SecretError::KeyInvalid`].
    pub(crate) fn tls(&self, keys: TrustKeys, insecure: bool) -> Result<TlsMode, SecretError> {
        if insecure {
            return Ok(TlsMode::Insecure);
        }
        match (self.optional(keys.ca_cert), self.optional_text(keys.fingerprint)) {
            (Some(_), Some(_)) => Err(self.invalid(
                keys.fingerprint,
                format!("is given together with '{}'; keep the one to trust", keys.ca_cert),
            )),
            (None, Some(text)) => {
                TlsMode::pinned_from_hex(&text).map_err(|e| self.invalid(keys.fingerprint, e.to_string()))
            }
            (Some(pem), None) => {
                let mode = TlsMode::CaBundle(pem);
                tls::client_config(&mode)
                    .map_err(|e| self.invalid(keys.ca_cert, format!("is unusable: {e}")))?;
                Ok(mode)
            }
            (None, None) => Ok(TlsMode::SystemRoots),
        }
    }
}

/// A Secret-less source (an OVA on a public server): the system roots unless it opts out.
pub(crate) fn default_tls(insecure: bool) -> TlsMode {
    if insecure {
        TlsMode::Insecure
    } else {
        TlsMode::SystemRoots
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: TrustKeys = TrustKeys {
        ca_cert: "caCert",
        fingerprint: "certificateFingerprint",
    };

    fn secret(entries: &[(&str, &[u8])]) -> SourceSecret {
        SourceSecret::from_data(
            "ns".into(),
            "creds".into(),
            entries
                .iter()
                .map(|(k, v)| ((*k).to_owned(), ByteString(v.to_vec())))
                .collect(),
        )
    }

    #[test]
    fn opting_out_wins_over_any_trust_key() {
        let both = secret(&[("caCert", b"junk"), ("certificateFingerprint", b"junk")]);
        assert!(both.tls(KEYS, true).unwrap().is_insecure());
    }

    #[test]
    fn a_fingerprint_pins_and_system_roots_are_the_default() {
        let pinned = secret(&[("certificateFingerprint", "AB:".repeat(31).as_bytes())]);
        assert!(matches!(
            pinned.tls(KEYS, false),
            Err(SecretError::KeyInvalid {
                key: "certificateFingerprint",
                ..
            })
        ));
        let text = format!("{}AB", "AB:".repeat(31));
        let pinned = secret(&[("certificateFingerprint", text.as_bytes())]);
        assert_eq!(
            pinned.tls(KEYS, false).unwrap(),
            TlsMode::PinnedSha256([0xab; 32])
        );
        assert_eq!(secret(&[]).tls(KEYS, false).unwrap(), TlsMode::SystemRoots);
        assert_eq!(
            secret(&[("caCert", b"")]).tls(KEYS, false).unwrap(),
            TlsMode::SystemRoots,
            "an empty key counts as absent"
        );
    }

    #[test]
    fn unusable_or_conflicting_trust_keys_are_named() {
        let error = secret(&[("caCert", b"not pem")]).tls(KEYS, false).unwrap_err();
        assert_eq!(error.reason(), "SecretKeyInvalid");
        assert!(
            error.to_string().contains("ns/creds key 'caCert' is unusable"),
            "{error}"
        );
        let hex = "ab".repeat(32);
        let error = secret(&[("caCert", b"pem"), ("certificateFingerprint", hex.as_bytes())])
            .tls(KEYS, false)
            .unwrap_err();
        assert!(error.to_string().contains("together with 'caCert'"), "{error}");
    }

    #[test]
    fn missing_keys_are_named_and_values_are_not_shown() {
        let creds = secret(&[("username", b"admin"), ("password", b"s3cret")]);
        assert_eq!(creds.required_text("username").unwrap(), "admin");
        let error = creds.required_text("project_name").unwrap_err();
        assert_eq!(error.reason(), "SecretKeyMissing");
        assert_eq!(error.to_string(), "secret ns/creds has no 'project_name' key");
        assert!(!format!("{creds:?}").contains("s3cret"));
    }
}
