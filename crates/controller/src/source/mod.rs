//! The source seam: everything that differs between the kinds of source an import reads from
//! (a vCenter, an OVA file, an OpenStack cloud) lives behind three interfaces defined here, one file
//! per kind implementing them:
//!
//! * [`Source`]: one import's view of its source, opened once per reconcile (its session opened on
//!   first use): describe the VM, preflight checks, power state, stop it, start an export, delete
//!   temporary objects an export left;
//! * [`SourceExport`]: the background transfer of the disks not exported yet into the image
//!   directory, through the [`ExportLedger`];
//! * [`SourceObject`]: checking a source object (`VmwareSource`, …) for its status.
//!
//! [`open`] is the only place that reads `spec.sourceCluster.kind`: adding a kind (Proxmox,
//! Hyper-V) means one new file here and one line there, and no `match` anywhere else.
//!
//! ```text
//!  import::gather ─► open(kind) ─► Box<dyn Source> ─► describe · checks · power · stop · clean_up
//!                                        └─► export() ─► Box<dyn SourceExport> ─► export.rs: connect
//!                                                        ─► Box<dyn ConnectedExport> ─► transfer, close
//! ```

mod interface;
pub(crate) mod openstack;
pub(crate) mod ova;
pub mod vmware;

pub(crate) use interface::{
    Check, Source, SourceError, SourceExport, SourceObject, not_found, recorded_objects,
};

use api::{ClusterStatus, VirtualMachineImport};
use kube::{Api, ResourceExt};
use plan::machine::SourceFact;

use crate::settings::Settings;

/// What `open` found: the source object's readiness and, when it exists, the import's view of it.
pub(crate) struct Opened {
    /// `Missing`, `NotReady` or `Ready`.
    pub readiness: SourceFact,
    /// `None` when the source object does not exist.
    pub source: Option<Box<dyn Source>>,
}

/// Reads the source object the import names and opens the import's view of it.
///
/// # Errors
/// [`SourceError::UnsupportedKind`] for a kind this version does not know, or the read failed.
pub(crate) async fn open(
    kube: &kube::Client,
    settings: &Settings,
    import: &VirtualMachineImport,
) -> Result<Opened, SourceError> {
    let kind = import.spec.source_cluster.kind.as_deref().unwrap_or_default();
    // Case-insensitive, as upstream.
    match kind.to_ascii_lowercase().as_str() {
        "vmwaresource" => opened(read(kube, import).await?, |s| {
            vmware::Vmware::open(kube, settings, s, import)
        }),
        "ovasource" => opened(read(kube, import).await?, |s| ova::Ova::open(kube, s, import)),
        "openstacksource" => opened(read(kube, import).await?, |s| {
            openstack::Openstack::open(kube, s, import)
        }),
        _ => Err(SourceError::UnsupportedKind(kind.to_owned())),
    }
}

fn opened<K: SourceObject, S: Source + 'static>(
    object: Option<K>,
    open: impl FnOnce(K) -> S,
) -> Result<Opened, SourceError> {
    Ok(match object {
        None => Opened {
            readiness: SourceFact::Missing,
            source: None,
        },
        Some(object) => Opened {
            readiness: match object.source_status() {
                Some(status) if status.status == ClusterStatus::ClusterReady => SourceFact::Ready,
                _ => SourceFact::NotReady,
            },
            source: Some(Box::new(open(object))),
        },
    })
}

/// The source object the import names, if it exists.
async fn read<K: SourceObject>(
    kube: &kube::Client,
    import: &VirtualMachineImport,
) -> Result<Option<K>, SourceError> {
    let reference = &import.spec.source_cluster;
    let namespace = reference
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .or_else(|| import.namespace())
        .unwrap_or_default();
    Api::<K>::namespaced(kube.clone(), &namespace)
        .get_opt(reference.name.as_deref().unwrap_or_default())
        .await
        .map_err(|source| SourceError::Kube {
            step: K::READ_STEP,
            source,
        })
}
