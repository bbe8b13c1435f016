//! vSphere export leases recorded in `status.sourceTemporaryObjects.leases` while they are open,
//! so that a controller killed mid-export leaves a record its successor acts on: an open
//! `HttpNfcLease` blocks power operations on the source VM until vCenter times it out (5 minutes
//! by default). A new export aborts what an earlier process recorded before taking its own lease,
//! and a failed or deleted import's record is aborted in the background.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex, PoisonError},
};

use api::VirtualMachineImport;
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use serde_json::json;
use vsphere::{
    Client, MoRef,
    export::{LeaseEvent, LeaseHook},
};

/// The managed object type of export leases.
const LEASE_TYPE: &str = "HttpNfcLease";

/// Writes the open leases (`[]` once none is open).
async fn write(api: &Api<VirtualMachineImport>, name: &str, leases: &[String]) -> Result<(), kube::Error> {
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": { "sourceTemporaryObjects": { "leases": leases } } })),
    )
    .await
    .map(|_| ())
}

/// Aborts the leases recorded for import `name` (taken by a process that is gone: this one has
/// no export of it running when this is called) and records what is still open. Returns the
/// leases that could not be aborted.
pub(crate) async fn abort_recorded(
    client: &Client,
    api: &Api<VirtualMachineImport>,
    name: &str,
    recorded: &[String],
) -> Vec<String> {
    if recorded.is_empty() {
        return Vec::new();
    }
    let mut left = Vec::new();
    for id in recorded {
        let lease = MoRef::new(LEASE_TYPE, id.clone());
        match client
            .abort_lease(&lease, "vm-import: the export that took this lease is gone")
            .await
        {
            Ok(()) => tracing::info!(
                import = name,
                lease = id,
                "export lease of an earlier process aborted"
            ),
            Err(error) => {
                tracing::warn!(import = name, lease = id, %error, "aborting an earlier export lease failed");
                left.push(id.clone());
            }
        }
    }
    if let Err(error) = write(api, name, &left).await {
        tracing::warn!(import = name, %error, "recording the export leases failed");
    }
    left
}

/// A hook for [`vsphere::Client::export_vm_recorded`] that keeps import `name`'s status in step
/// with the open leases, through one writer task (newest value last); the task ends when the hook
/// is dropped.
pub(crate) fn recorder(
    api: Api<VirtualMachineImport>,
    name: String,
) -> (LeaseHook, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = tokio::sync::watch::channel(Vec::<String>::new());
    let open = Arc::new(Mutex::new(BTreeSet::new()));
    let hook: LeaseHook = Arc::new(move |event| {
        let mut open = open.lock().unwrap_or_else(PoisonError::into_inner);
        match event {
            LeaseEvent::Taken(lease) => open.insert(lease.value),
            LeaseEvent::Released(lease) => open.remove(&lease.value),
        };
        tx.send_replace(open.iter().cloned().collect());
    });
    let writer = tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let leases = rx.borrow_and_update().clone();
            if let Err(error) = write(&api, &name, &leases).await {
                tracing::warn!(import = %name, %error, "recording the export leases failed");
            }
        }
    });
    (hook, writer)
}
