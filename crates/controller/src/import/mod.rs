//! The `VirtualMachineImport` reconciler: gather the facts `plan::next` asks for, execute the one
//! decision it returns, write status, publish an Event. Long work (the export) runs in the
//! background ([`crate::export`]) and is observed, never awaited; everything a reconcile does
//! itself is a bounded API call.
//!
//! ```text
//!  reconcile ─► add finalizer ─► loop { next(&observed) ─► Observe(fact) ─► gather::fact }
//!                                           └─► decision ─► execute::apply ─► status, Event, metrics
//! ```

mod execute;
mod gather;

use std::{sync::Arc, time::Duration};

use api::{VirtualMachineImport, names::IMPORT_FINALIZER};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::controller::Action,
};
use plan::Decision;
use serde_json::json;

use crate::{context::Context, ova::OvaError, vmware::ConnectError};

/// Facts gathered per decision at most this many times (each fact once; the bound only guards
/// against a state machine bug looping).
const MAX_OBSERVATIONS: usize = 12;

/// Why an object could not be built.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BuildError {
    /// The source's description does not make a VM.
    #[error(transparent)]
    Vm(#[from] plan::BuildError),
    /// The built JSON is not the object's shape.
    #[error(transparent)]
    Shape(#[from] serde_json::Error),
}

/// Why a reconcile step failed; retried with backoff, surfaced as a Warning Event with the reason.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ImportError {
    /// An API call failed.
    #[error("{step}: {source}")]
    Kube {
        /// What we were doing.
        step: &'static str,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// No session with the source.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The OVA could not be read.
    #[error(transparent)]
    Ova(#[from] OvaError),
    /// The OpenStack source or server could not be used.
    #[error(transparent)]
    Openstack(#[from] crate::openstack::OpenstackError),
    /// The source object the import names is gone.
    #[error("{kind} {name} not found")]
    SourceNotFound {
        /// `VmwareSource`, `OvaSource`, `OpenstackSource`.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// The VM to import is not at the source (any kind).
    #[error("{step}: VM {vm} not found at the source")]
    SourceVmNotFound {
        /// What we were doing.
        step: &'static str,
        /// `spec.virtualMachineName`.
        vm: String,
    },
    /// A vSphere call failed.
    #[error("{step}")]
    Vsphere {
        /// What we were doing.
        step: &'static str,
        /// Why.
        #[source]
        source: vsphere::power::Error,
    },
    /// Reading vSphere's inventory failed.
    #[error("{step}")]
    VsphereInventory {
        /// What we were doing.
        step: &'static str,
        /// Why.
        #[source]
        source: vsphere::inventory::Error,
    },
    /// Status changed underneath this reconcile (someone else wrote); retried at once.
    #[error("the import changed while it was being reconciled")]
    Conflict,
    /// An object could not be built from the source's description.
    #[error("{step}")]
    Build {
        /// What was being built.
        step: &'static str,
        /// Why.
        #[source]
        source: BuildError,
    },
    /// A file in the image directory could not be handled.
    #[error("{step} {path}: {source}")]
    Io {
        /// What we were doing.
        step: &'static str,
        /// The path.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The state machine asked for facts forever.
    #[error("no decision after {MAX_OBSERVATIONS} observations")]
    Undecided,
    /// The source kind has no implementation yet.
    #[error("source kind {0} is not supported by this version")]
    UnsupportedSource(String),
}

impl ImportError {
    /// Low-cardinality reason for Events and metrics.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Self::Kube { .. } => "KubernetesApiError",
            Self::Connect(e) => e.reason(),
            Self::Ova(e) => e.reason(),
            Self::Openstack(e) => e.reason(),
            Self::SourceNotFound { .. } => "SourceNotFound",
            Self::SourceVmNotFound { .. } => "VmNotFound",
            Self::Vsphere { .. } | Self::VsphereInventory { .. } => "SourceApiError",
            Self::Build { .. } => "BuildFailed",
            Self::Conflict => "Conflict",
            Self::Io { .. } => "ImageDirectoryError",
            Self::Undecided => "Undecided",
            Self::UnsupportedSource(_) => "SourceKindNotSupported",
        }
    }

    fn kube(step: &'static str) -> impl FnOnce(kube::Error) -> Self {
        move |source| match &source {
            kube::Error::Api(status) if status.code == 409 => Self::Conflict,
            _ => Self::Kube { step, source },
        }
    }
}

/// Reconciles one import.
///
/// # Errors
/// [`ImportError`]; the controller retries with backoff.
pub(crate) async fn reconcile(
    import: Arc<VirtualMachineImport>,
    ctx: Arc<Context>,
) -> Result<Action, ImportError> {
    let uid = import.uid().unwrap_or_default();
    let deleting = import.meta().deletion_timestamp.is_some();
    if deleting && !import.finalizers().iter().any(|f| f == IMPORT_FINALIZER) {
        ctx.metrics.set_phase(&uid, None);
        return Ok(Action::await_change());
    }
    if !deleting && !import.finalizers().iter().any(|f| f == IMPORT_FINALIZER) {
        add_finalizer(&ctx, &import).await?;
        // The metadata write comes back as a watch event.
        return Ok(Action::await_change());
    }
    let status = import.status.clone().unwrap_or_default();
    ctx.metrics.set_phase(&uid, Some(status.phase.as_str()));

    let mut facts = gather::Facts::default();
    for _ in 0..MAX_OBSERVATIONS {
        let observed = facts.observed(&import.spec, &status, deleting);
        let decision = plan::next(&observed);
        if let Decision::Observe(fact) = decision {
            facts.gather(&ctx, &import, &status, fact).await?;
            continue;
        }
        if !matches!(decision, Decision::Wait { .. } | Decision::Done) {
            ctx.metrics.step(decision.reason());
            tracing::info!(import = %import.name_any(), namespace = %import.namespace().unwrap_or_default(), phase = %status.phase.as_str(), step = decision.reason(), "import step");
        }
        return execute::apply(&ctx, &import, status.clone(), &mut facts, decision).await;
    }
    Err(ImportError::Undecided)
}

/// Error policy: log, count, tell the user with an Event, retry with a short backoff.
pub(crate) fn on_error(import: Arc<VirtualMachineImport>, error: &ImportError, ctx: Arc<Context>) -> Action {
    if matches!(error, ImportError::Conflict) {
        return Action::requeue(Duration::from_millis(500));
    }
    let message = error_text::chain(error);
    tracing::warn!(import = %import.name_any(), namespace = %import.namespace().unwrap_or_default(), reason = error.reason(), error = %message, "reconcile failed; retrying");
    ctx.metrics.failed(error.reason());
    let reason = error.reason();
    tokio::spawn(async move {
        ctx.event(&*import, true, reason, message).await;
    });
    Action::requeue(Duration::from_secs(10))
}

async fn add_finalizer(ctx: &Context, import: &VirtualMachineImport) -> Result<(), ImportError> {
    let mut finalizers = import.finalizers().to_vec();
    finalizers.push(IMPORT_FINALIZER.to_owned());
    write_finalizers(ctx, import, finalizers)
        .await
        .map_err(ImportError::kube("adding the finalizer"))
}

async fn remove_finalizer(ctx: &Context, import: &VirtualMachineImport) -> Result<(), ImportError> {
    let finalizers = import
        .finalizers()
        .iter()
        .filter(|f| *f != IMPORT_FINALIZER)
        .cloned()
        .collect();
    match write_finalizers(ctx, import, finalizers).await {
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        result => result.map_err(ImportError::kube("removing the finalizer")),
    }
}

/// Replaces the finalizer list, guarded by the resourceVersion it was computed from.
async fn write_finalizers(
    ctx: &Context,
    import: &VirtualMachineImport,
    finalizers: Vec<String>,
) -> Result<(), kube::Error> {
    let api: Api<VirtualMachineImport> =
        Api::namespaced(ctx.kube.clone(), &import.namespace().unwrap_or_default());
    let patch = json!({
        "metadata": {
            "finalizers": finalizers,
            "resourceVersion": import.resource_version(),
        }
    });
    api.patch(&import.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(|_| ())
}
