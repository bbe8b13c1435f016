//! The import domain, pure: no IO, no clock, no client. The controller gathers facts and executes
//! what this crate decides; everything here is tested without a cluster (except that the built
//! objects are checked against the lab's real CRDs in `tests/lab.rs`).
//!
//! * [`machine`]: the `VirtualMachineImport` state machine, `next(&Observed) -> Decision`;
//! * [`transition`]: what a decision, once performed, does to the import's status;
//! * [`preflight`]: gathered facts → [`api::Concern`]s;
//! * [`model`]: the source-neutral VM model every source fills ([`SourceVm`]);
//! * [`vm`]: the KubeVirt `VirtualMachine` built from it (upstream's shape, its defects fixed);
//! * [`image`]: the Harvester `VirtualMachineImage` per disk and the backing-image PVC;
//! * [`names`]: DNS-1123 VM names and cluster-api-compatible label values.

pub mod image;
pub mod machine;
pub mod model;
pub mod names;
pub mod preflight;
pub mod risks;
pub mod transition;
pub mod vm;

pub use machine::{Decision, Observed, Phase as ImportPhase, next};
pub use model::{ControllerKind, Firmware, SourceDisk, SourceNic, SourceVm};
pub use vm::{BuildError, build_virtual_machine};
