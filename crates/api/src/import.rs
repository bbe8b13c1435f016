//! `VirtualMachineImport`: which VM to take from which source, how to map its networks, disks and
//! storage, and the status the controller advances through ([`ImportPhase`]).
//!
//! Upstream's Go types are in `pkg/apis/migration.harvesterhci.io/v1beta1/virtualmachines.go`; the JSON
//! names here are those, including `VirtualMachineImage` (capital V) in [`DiskInfo`] and
//! `skipPreflightChecks`, which Go serialises as `null` when unset.

use k8s_openapi::api::core::v1::ObjectReference;
use kube_derive::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    condition::{self, Condition, ConditionType},
    serde_util::{is_zero_i32, null_default},
};

string_enum! {
    /// `status.importStatus`: the phase of an import, with upstream's exact strings.
    pub enum ImportPhase {
        /// Just created: preflight checks come next.
        New = "",
        /// Preflight passed.
        Valid = "virtualMachineImportValid",
        /// Preflight (or naming) failed. Terminal.
        Invalid = "virtualMachineImportInvalid",
        /// Name settled; power-off and export come next.
        SourceReady = "sourceReady",
        /// Every disk is exported and converted.
        DisksExported = "disksExported",
        /// A `VirtualMachineImage` exists for every disk (upstream spells it singular).
        DiskImagesSubmitted = "diskImageSubmitted",
        /// Every image is imported.
        DiskImagesReady = "diskImagesReady",
        /// An image failed (upstream spells it singular); it is resubmitted.
        DiskImagesFailed = "diskImageFailed",
        /// The KubeVirt `VirtualMachine` exists.
        VirtualMachineCreated = "virtualMachineCreated",
        /// The VM is ready. Terminal, success.
        VirtualMachineRunning = "virtualMachineRunning",
        /// The import failed. Terminal (upstream capitalises this one).
        MigrationFailed = "VMMigrationFailed",
    }
    default = New;
    schema_enum = false;
}

string_enum! {
    /// KubeVirt NIC model (`networkInterfaceModel`, `defaultNetworkInterfaceModel`).
    pub enum NicModel {
        /// Intel e1000.
        E1000 = "e1000",
        /// Intel e1000e.
        E1000e = "e1000e",
        /// NE2000 PCI.
        Ne2kPci = "ne2k_pci",
        /// AMD PCnet.
        Pcnet = "pcnet",
        /// Realtek 8139.
        Rtl8139 = "rtl8139",
        /// virtio-net.
        Virtio = "virtio",
        /// Not set: the default applies (wrangler adds `""` to every enum).
        Unspecified = "",
    }
    default = Unspecified;
    schema_enum = true;
}

string_enum! {
    /// KubeVirt disk bus (`kubevirtv1.DiskBus`; the CRD leaves it a free string, as upstream).
    pub enum DiskBus {
        /// virtio-blk.
        Virtio = "virtio",
        /// AHCI SATA.
        Sata = "sata",
        /// virtio-scsi.
        Scsi = "scsi",
        /// USB storage.
        Usb = "usb",
        /// Not set: the default applies.
        Unspecified = "",
    }
    default = Unspecified;
    schema_enum = false;
}

string_enum! {
    /// **Ours**: how bad a preflight [`Concern`] is.
    pub enum Severity {
        /// The import cannot proceed.
        Critical = "Critical",
        /// The import proceeds; the result may differ from what the user expects.
        Warning = "Warning",
        /// For the record.
        Info = "Info",
    }
    default = Info;
    schema_enum = true;
}

/// The import request.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "migration.harvesterhci.io",
    version = "v1beta1",
    kind = "VirtualMachineImport",
    namespaced,
    status = "VirtualMachineImportStatus",
    derive = "PartialEq",
    derive = "Default",
    printcolumn(name = "Status", type_ = "string", json_path = ".status.importStatus"),
    doc = "A request to import one VM from a source into Harvester.",
    crates(
        kube_core = "::kube_core",
        k8s_openapi = "::k8s_openapi",
        schemars = "::schemars"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineImportSpec {
    /// The source object: `apiVersion: migration.harvesterhci.io/v1beta1`, `kind` one of the source
    /// kinds (case-insensitive), `name`, `namespace`.
    #[serde(default, deserialize_with = "null_default")]
    pub source_cluster: ObjectReference,
    /// VM name at the source (OpenStack: name or UUID).
    #[serde(default, deserialize_with = "null_default")]
    pub virtual_machine_name: String,
    /// VMware only: folder under `<dc>/vm/`.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub folder: String,
    /// Source network → NetworkAttachmentDefinition.
    #[serde(
        rename = "networkMapping",
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub mapping: Vec<NetworkMapping>,
    /// Model for NICs whose mapping names none (unset: `virtio`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_network_interface_model: Option<NicModel>,
    /// StorageClass of the images and volumes; empty means the cluster default.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub storage_class: String,
    /// Bus for disks whose controller does not say (unset: `virtio`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_disk_bus_type: Option<DiskBus>,
    /// VMware only: hard power-off instead of a guest shutdown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_power_off: Option<bool>,
    /// VMware only: seconds to wait for the guest shutdown before a hard power-off (`<= 0`: 60).
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "is_zero_i32"
    )]
    pub graceful_shutdown_timeout_seconds: i32,
    /// Skip the source-specific preflight checks. Always serialised (as `null` when unset), as upstream.
    #[serde(default)]
    pub skip_preflight_checks: Option<bool>,
    /// **Ours**: the most bytes per second this import reads from its source (absent or 0: the
    /// controller's `--import-bytes-per-second`, else no cap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes_per_second: Option<u64>,
}

impl VirtualMachineImportSpec {
    /// The graceful-shutdown timeout after applying upstream's default (60 s for `<= 0`).
    pub fn graceful_shutdown_timeout_seconds(&self) -> u32 {
        u32::try_from(self.graceful_shutdown_timeout_seconds)
            .ok()
            .filter(|s| *s > 0)
            .unwrap_or(60)
    }

    /// The default NIC model after applying upstream's default (`virtio`; `""` counts as unset).
    pub fn default_nic_model(&self) -> NicModel {
        match &self.default_network_interface_model {
            None | Some(NicModel::Unspecified) => NicModel::Virtio,
            Some(model) => model.clone(),
        }
    }

    /// The default disk bus after applying upstream's default (`virtio`; `""` counts as unset).
    pub fn default_disk_bus(&self) -> DiskBus {
        match &self.default_disk_bus_type {
            None | Some(DiskBus::Unspecified) => DiskBus::Virtio,
            Some(bus) => bus.clone(),
        }
    }
}

/// One network mapping.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkMapping {
    /// Source network: a port-group/network name, or `switch/portgroup`.
    #[serde(default, deserialize_with = "null_default")]
    pub source_network: String,
    /// NetworkAttachmentDefinition: `name` (the import's namespace) or `namespace/name`.
    #[serde(default, deserialize_with = "null_default")]
    pub destination_network: String,
    /// NIC model for NICs on this network (unset: the source NIC's model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_interface_model: Option<NicModel>,
}

/// **Ours**: the caps a running export honours, as status shows them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TransferLimits {
    /// Bytes per second this import reads from its source at most (absent: no cap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub import_bytes_per_second: Option<u64>,
    /// Bytes per second all imports from its source read together at most (absent: no cap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_bytes_per_second: Option<u64>,
    /// Decoder threads per disk at most.
    #[serde(default)]
    pub conversion_threads: u32,
}

/// The import's progress.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineImportStatus {
    /// The phase.
    #[serde(
        rename = "importStatus",
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "ImportPhase::is_default"
    )]
    pub phase: ImportPhase,
    /// One entry per source disk, in boot order.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub disk_import_status: Vec<DiskInfo>,
    /// Power-off and export conditions, plus ours (`ImportFailed`).
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub import_conditions: Vec<Condition>,
    /// Declared upstream, never written.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub new_virtual_machine: String,
    /// Name of the created VM: the source name made a DNS-1123 label.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub imported_virtual_machine_name: String,
    /// **Ours**: the `metadata.generation` this status was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// **Ours**: what preflight found (critical ones stopped the import).
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub concerns: Vec<Concern>,
    /// **Ours**: temporary objects an OpenStack export created at the source and has not deleted
    /// yet, recorded as soon as each id is known so that a restarted controller deletes them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_temporary_objects: Option<SourceTemporaryObjects>,
    /// **Ours**: the caps the export honours, written when it starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_limits: Option<TransferLimits>,
}

/// **Ours**: ids of temporary objects at the source: an OpenStack cloud's images, volumes and
/// snapshots (deleted images first, then volumes, then snapshots: the order their dependencies
/// require), and vSphere export leases (aborted by a successor when the process that took them
/// died: an open lease blocks power operations on the VM).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourceTemporaryObjects {
    /// Glance images.
    #[serde(default, deserialize_with = "null_default")]
    pub images: Vec<String>,
    /// Cinder volumes made from snapshots.
    #[serde(default, deserialize_with = "null_default")]
    pub volumes: Vec<String>,
    /// Cinder snapshots.
    #[serde(default, deserialize_with = "null_default")]
    pub snapshots: Vec<String>,
    /// vSphere `HttpNfcLease` ids taken by an export and not yet completed or aborted.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub leases: Vec<String>,
}

impl SourceTemporaryObjects {
    /// Nothing recorded.
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
            && self.volumes.is_empty()
            && self.snapshots.is_empty()
            && self.leases.is_empty()
    }
}

impl VirtualMachineImportStatus {
    /// True when the import condition `type_` is `True`.
    pub fn condition_is_true(&self, type_: &ConditionType) -> bool {
        condition::is_true(&self.import_conditions, type_)
    }
}

/// One disk of the import.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DiskInfo {
    /// File name of the converted image, e.g. `foo-default-disk-0.img`.
    #[serde(rename = "diskName", default, deserialize_with = "null_default")]
    pub name: String,
    /// Virtual size in bytes.
    #[serde(default, deserialize_with = "null_default")]
    pub disk_size: i64,
    /// Directory holding the image.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub disk_local_path: String,
    /// Declared upstream, never written.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub disk_route: String,
    /// Name of the disk's Harvester `VirtualMachineImage` (`image-xxxxx`). Capital V, as upstream.
    #[serde(
        rename = "VirtualMachineImage",
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub virtual_machine_image: String,
    /// `VirtualMachineImageSubmitted` / `Ready` / `Failed`.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub disk_conditions: Vec<Condition>,
    /// Bus of the disk in the created VM. Always serialised, as upstream.
    #[serde(default, deserialize_with = "null_default")]
    pub bus_type: DiskBus,
    /// **Ours**: bytes of this disk exported and converted so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_done: Option<u64>,
    /// **Ours**: bytes to transfer for this disk (allocated size when known, else virtual size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_total: Option<u64>,
    /// **Ours**: recent transfer rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_per_second: Option<u64>,
    /// **Ours**: SHA-512 (hex) of the image file as served, set once the file is complete: the
    /// value of its `VirtualMachineImage`'s `spec.checksum`, which Harvester (Longhorn's
    /// backing-image manager) checks against what it downloaded. A disk with a checksum is never
    /// exported again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    /// **Ours**: how many `VirtualMachineImage`s have been created for this disk (retries after a
    /// failed image import count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_submissions: Option<u32>,
}

impl DiskInfo {
    /// True when the disk's image file is complete (see [`DiskInfo::checksum`]).
    pub fn is_exported(&self) -> bool {
        self.checksum.as_deref().is_some_and(|s| !s.is_empty())
    }

    /// True when the disk condition `type_` is `True`.
    pub fn condition_is_true(&self, type_: &ConditionType) -> bool {
        condition::is_true(&self.disk_conditions, type_)
    }
}

/// **Ours**: one preflight finding.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Concern {
    /// Stable PascalCase identifier, e.g. `NetworkNotFound`.
    #[serde(default, deserialize_with = "null_default")]
    pub id: String,
    /// `Critical`, `Warning` or `Info`.
    #[serde(default, deserialize_with = "null_default")]
    pub severity: Severity,
    /// What was found.
    #[serde(default, deserialize_with = "null_default")]
    pub message: String,
    /// What the user can do about it.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub remedy: String,
}
