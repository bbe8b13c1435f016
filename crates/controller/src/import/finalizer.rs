//! The import's finalizer: added before anything is made, removed once everything is cleaned up.
//! Writes are guarded by the resourceVersion they were computed from.

use api::{VirtualMachineImport, names::IMPORT_FINALIZER};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
};
use serde_json::json;

use super::error::ImportError;
use crate::context::Context;

pub(super) async fn add_finalizer(ctx: &Context, import: &VirtualMachineImport) -> Result<(), ImportError> {
    let mut finalizers = import.finalizers().to_vec();
    finalizers.push(IMPORT_FINALIZER.to_owned());
    write_finalizers(ctx, import, finalizers)
        .await
        .map_err(ImportError::kube("adding the finalizer"))
}

pub(super) async fn remove_finalizer(
    ctx: &Context,
    import: &VirtualMachineImport,
) -> Result<(), ImportError> {
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
