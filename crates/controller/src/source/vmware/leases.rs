//! vSphere export leases recorded in `status.sourceTemporaryObjects.leases` while they are open,
//! so that a controller killed mid-export leaves a record its successor acts on: an open
//! `HttpNfcLease` blocks power operations on the source VM until vCenter times it out (5 minutes
//! by default). A new export aborts what an earlier process recorded before taking its own lease,
//! and a failed or deleted import's record is aborted in the background.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex, PoisonError},
};

use api::SourceTemporaryObjects;
use vsphere::{
    Client, MoRef,
    export::{LeaseEvent, LeaseHook},
};

use crate::disks::ExportLedger;

/// The managed object type of export leases.
const LEASE_TYPE: &str = "HttpNfcLease";

/// The status record of the open leases `leases` (the only temporary objects of a vSphere export).
pub(crate) fn record(leases: Vec<String>) -> SourceTemporaryObjects {
    SourceTemporaryObjects {
        leases,
        ..SourceTemporaryObjects::default()
    }
}

/// Aborts the leases recorded for import `name` (taken by a process that is gone: this one has
/// no export of it running when this is called). Returns the leases that could not be aborted,
/// for the caller to record.
pub(crate) async fn abort_recorded(client: &Client, name: &str, recorded: &[String]) -> Vec<String> {
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
    left
}

/// A hook for [`vsphere::Client::export_vm_recorded`] that keeps the export's ledger (and so
/// status, through its one writer) in step with the open leases; `recorded` are open leases of
/// an earlier process that could not be aborted.
pub(crate) fn recorder(ledger: Arc<ExportLedger>, recorded: Vec<String>) -> LeaseHook {
    let open = Mutex::new(recorded.into_iter().collect::<BTreeSet<_>>());
    Arc::new(move |event| {
        let mut open = open.lock().unwrap_or_else(PoisonError::into_inner);
        match event {
            LeaseEvent::Taken(lease) => open.insert(lease.value),
            LeaseEvent::Released(lease) => open.remove(&lease.value),
        };
        ledger.record_temporary(record(open.iter().cloned().collect()));
    })
}
