//! The interfaces of the source seam: [`Source`], [`SourceExport`], [`SourceObject`] and what
//! they return; every kind file implements them and depends on nothing else of the seam.

use std::{path::Path, sync::Arc};

use api::{SourceStatus, SourceTemporaryObjects, VirtualMachineImport, VirtualMachineImportStatus};
use async_trait::async_trait;
use plan::{SourceVm, machine::PowerFact, risks::RiskFacts, transition::StopRequest};

use crate::disks::ExportLedger;

/// A kind's own error (each kind file defines one): its low-cardinality reason, and whether the
/// import must fail with it.
pub(crate) trait KindError: std::error::Error + Send + Sync + 'static {
    /// Reason for conditions, Events and metrics.
    fn reason(&self) -> &'static str;

    /// The reason an import fails with when the source refused it for a reason an admin acts on
    /// (credentials, TLS, a token that cannot be renewed); `None` when a retry may succeed. Most
    /// kind errors are refusals.
    fn refusal(&self) -> Option<&'static str> {
        Some(self.reason())
    }
}

/// Why a source could not be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SourceError {
    /// What the kind itself says went wrong.
    #[error(transparent)]
    Kind(KindFailure),
    /// The source object could not be read.
    #[error("{step}")]
    Kube {
        /// What we were doing.
        step: &'static str,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// The source object the import names is gone.
    #[error("{kind} {name} not found")]
    NotFound {
        /// `VmwareSource`, `OvaSource`, `OpenstackSource`.
        kind: String,
        /// Its name.
        name: String,
    },
    /// `spec.sourceCluster.kind` names no kind this version knows.
    #[error("source kind {0} is not supported by this version")]
    UnsupportedKind(String),
    /// The VM to import is not at the source.
    #[error("{step}: VM {vm} not found at the source")]
    VmNotFound {
        /// What we were doing.
        step: &'static str,
        /// `spec.virtualMachineName`.
        vm: String,
    },
    /// The VM's disks are not the ones recorded when the import started.
    #[error("the VM has {found} disks now but had {recorded} when the import started")]
    DisksChanged {
        /// In status.
        recorded: usize,
        /// At the source now.
        found: usize,
    },
}

/// A kind's own error, boxed: it reads and chains exactly as the error it holds.
#[derive(Debug)]
pub(crate) struct KindFailure(Box<dyn KindError>);

impl std::fmt::Display for KindFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for KindFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl SourceError {
    /// Wraps a kind's own error.
    pub(crate) fn kind(error: impl KindError) -> Self {
        Self::Kind(KindFailure(Box::new(error)))
    }

    /// Low-cardinality reason for conditions, Events and metrics.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Self::Kind(e) => e.0.reason(),
            Self::Kube { .. } => "KubernetesApiError",
            Self::NotFound { .. } => "SourceNotFound",
            Self::UnsupportedKind(_) => "SourceKindNotSupported",
            Self::VmNotFound { .. } => "VmNotFound",
            Self::DisksChanged { .. } => "DisksChanged",
        }
    }

    /// The reason the import fails with when the source refused it (see [`KindError::refusal`]);
    /// `None` for a failure a retry may fix.
    pub(crate) fn refusal(&self) -> Option<&'static str> {
        match self {
            Self::Kind(e) => e.0.refusal(),
            _ => None,
        }
    }
}

/// What preflight learns from the source side.
#[derive(Debug)]
pub(crate) struct SourceChecks {
    /// The VM as the source describes it.
    pub vm: Option<SourceVm>,
    /// The source's network names (`None`: not checked).
    pub networks: Option<Vec<String>>,
    /// Why the source cannot be used as it is, when retrying will not change that.
    pub source_error: Option<String>,
    /// Whether the source can power the VM off.
    pub power_off_supported: bool,
    /// Whether the VM is off now.
    pub powered_off: bool,
    /// Whether the guest's tools run (a graceful shutdown can work).
    pub tools_running: bool,
    /// The target's risk facts with the source's added.
    pub risks: RiskFacts,
}

/// One import's view of its source, for one reconcile.
#[async_trait]
pub(crate) trait Source: Send + Sync {
    /// The source object's cap on the bytes per second all its imports read together
    /// (`spec.maxBytesPerSecond`; `None` or 0: none of its own).
    fn max_bytes_per_second(&self) -> Option<u64>;

    /// The VM's own name at the source when the import names it otherwise (an OpenStack UUID in
    /// `spec.virtualMachineName` names the VM after the server, as upstream).
    async fn own_name(&mut self) -> Result<Option<String>, SourceError> {
        Ok(None)
    }

    /// The VM in `plan`'s terms; `Ok(None)` when the source has no such VM.
    async fn describe(&mut self) -> Result<Option<SourceVm>, SourceError>;

    /// Preflight's source side; `skip_source` leaves out what upstream's skip flag skips.
    async fn checks(&mut self, target: RiskFacts, skip_source: bool) -> Result<SourceChecks, SourceError>;

    /// Whether the VM is off.
    async fn power(&mut self) -> Result<PowerFact, SourceError>;

    /// Asks the source to stop the VM: the guest shuts down, or with `force` it is powered off.
    async fn stop(&mut self, force: bool) -> Result<StopRequest, SourceError>;

    /// The background export of the disks in `status` not exported yet (it connects on its own).
    fn export(
        &self,
        import: &VirtualMachineImport,
        status: &VirtualMachineImportStatus,
    ) -> Box<dyn SourceExport>;

    /// Deletes, in the background, temporary objects an export recorded in `status`, or (when
    /// nothing is recorded and the import is being deleted) may have made without recording them,
    /// that no export of this process will delete.
    async fn clean_up(&mut self, import: &VirtualMachineImport, status: &VirtualMachineImportStatus);
}

/// An export before it has a session, run in the background by [`crate::export`].
#[async_trait]
pub(crate) trait SourceExport: Send {
    /// Opens the session and finds what to read (logging out again when that fails).
    async fn connect(self: Box<Self>) -> Result<Box<dyn ConnectedExport>, SourceError>;
}

/// An export with its session open.
#[async_trait]
pub(crate) trait ConnectedExport: Send {
    /// The host the disks are read from (its slots limit the exports).
    fn host(&self) -> &str;

    /// Moves every disk `ledger` does not hold yet into `dir`, each committed through the ledger.
    async fn transfer(&mut self, ledger: Arc<ExportLedger>, dir: &Path) -> Result<(), SourceError>;

    /// Ends the session (best effort).
    async fn close(self: Box<Self>) {}
}

/// The outcome of checking a source object.
#[derive(Debug, Clone)]
pub(crate) struct Check {
    /// Ready to import from.
    pub ready: bool,
    /// `Verified`, or the failure's reason.
    pub reason: String,
    /// What to fix (empty when ready).
    pub message: String,
    /// TLS verification is off.
    pub insecure: bool,
}

impl Check {
    /// A source that checked out.
    pub(crate) fn verified(insecure: bool) -> Self {
        Self {
            ready: true,
            reason: "Verified".into(),
            message: String::new(),
            insecure,
        }
    }

    /// A source that did not, with the error's reason and chain.
    pub(crate) fn failed(reason: &str, error: &dyn std::error::Error, insecure: bool) -> Self {
        Self {
            ready: false,
            reason: reason.to_owned(),
            message: error_text::chain(error),
            insecure,
        }
    }
}

/// A kind of source object, checked by [`crate::source_objects`].
#[async_trait]
pub(crate) trait SourceObject:
    kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    /// The kind's name.
    const KIND: &'static str;
    /// The step that reads one, for errors.
    const READ_STEP: &'static str;

    /// Its status.
    fn source_status(&self) -> Option<&SourceStatus>;

    /// The Secret it names (a change of that Secret checks it again).
    fn credentials(&self) -> Option<&k8s_openapi::api::core::v1::SecretReference>;

    /// Checks it as upstream does (log in, find the datacenter; HEAD the URL; …).
    async fn check(&self, kube: &kube::Client) -> Check;

    /// What the Event says when it turns ready.
    fn ready_note(&self) -> String;
}

/// Whether an error chain reads like a certificate rejection (rustls says so only in text).
pub(crate) fn looks_like_certificate_failure(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    lower.contains("certificate") || lower.contains("unknownissuer") || lower.contains("fingerprint")
}

/// The error for an import whose source object is gone.
pub(crate) fn not_found(import: &VirtualMachineImport) -> SourceError {
    SourceError::NotFound {
        kind: import.spec.source_cluster.kind.clone().unwrap_or_default(),
        name: import.spec.source_cluster.name.clone().unwrap_or_default(),
    }
}

/// Temporary objects recorded in status (their deletion is tried until one succeeds).
pub(crate) fn recorded_objects(status: &VirtualMachineImportStatus) -> Option<&SourceTemporaryObjects> {
    status.source_temporary_objects.as_ref().filter(|o| !o.is_empty())
}

/// Records in status the temporary objects a cleanup outside any export left (`null` once none
/// is left). While an export runs, its [`ExportLedger`](crate::disks::ExportLedger) is the only
/// writer of this field.
///
/// # Errors
/// The API server's.
pub(crate) async fn record_objects(
    api: &kube::Api<api::VirtualMachineImport>,
    name: &str,
    objects: SourceTemporaryObjects,
) -> Result<(), kube::Error> {
    let value = (!objects.is_empty()).then_some(objects);
    let patch = serde_json::json!({ "status": { "sourceTemporaryObjects": value } });
    api.patch_status(
        name,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(patch),
    )
    .await
    .map(|_| ())
}
