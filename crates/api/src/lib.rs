//! The `migration.harvesterhci.io/v1beta1` API of Harvester's vm-import-controller, as Rust types, plus
//! the CustomResourceDefinitions generated from them. Pure data: no IO, no client, no runtime.
//!
//! ```text
//!   source   VmwareSource / OpenstackSource / OvaSource   (spec + SourceStatus)
//!   import   VirtualMachineImport                          (spec + VirtualMachineImportStatus, DiskInfo)
//!   condition  Condition (RFC3339 *string* timestamps, upsert by type)
//!   names    finalizer, labels, annotations, secret keys   (the strings other components look for)
//!   crd      crds() / crds_yaml(): the CRDs, made as lenient as upstream's wrangler-generated ones
//! ```
//!
//! # Compatibility contract
//! Objects written by the Go controller, by Harvester's UI or by hand against upstream's CRDs must read
//! and round-trip here: every JSON name is upstream's (`importStatus`, `VirtualMachineImage` with a
//! capital V, `skipPreflightChecks` serialised even when null), every enum keeps unknown strings
//! verbatim ([`ImportPhase::Other`] and friends) and reads `""` and `null` as "unset". The CRDs never
//! require a field and accept `""` in every enum, as wrangler's do.
//!
//! Fields that upstream does not have are marked **ours** in their docs; they are all optional, so the
//! Go controller (and its CRDs) ignore them.

mod serde_util;
#[macro_use]
mod string_enum;

pub mod condition;
pub mod crd;
pub mod import;
pub mod names;
pub mod source;

pub use condition::{Condition, ConditionStatus, ConditionType};
pub use crd::{crds, crds_yaml};
pub use import::{
    Concern, DiskBus, DiskInfo, ImportPhase, NetworkMapping, NicModel, Severity, SourceTemporaryObjects,
    TransferLimits, VirtualMachineImport, VirtualMachineImportSpec, VirtualMachineImportStatus,
};
pub use source::{
    ClusterStatus, OpenstackSource, OpenstackSourceSpec, OvaSource, OvaSourceSpec, SourceStatus,
    VmwareSource, VmwareSourceSpec,
};

/// The API group of every kind in this crate.
pub const GROUP: &str = "migration.harvesterhci.io";
/// The only version upstream serves (and stores).
pub const VERSION: &str = "v1beta1";
/// `GROUP/VERSION`, as `apiVersion` and `spec.sourceCluster.apiVersion` must spell it.
pub const API_VERSION: &str = "migration.harvesterhci.io/v1beta1";
