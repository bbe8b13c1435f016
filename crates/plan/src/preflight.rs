//! Preflight: what must hold before an import touches the source VM. The reconciler gathers the facts
//! (StorageClass and NAD lookups, the source's networks, the VM's hardware and power state) into
//! [`PreflightFacts`]; [`check`] turns them into [`Concern`]s, recorded in `status.concerns` (ours).
//! Any `Critical` concern makes the import `virtualMachineImportInvalid`, with the reason in status
//! (upstream only logs it). The migration-risk rules live in [`crate::risks`]; with
//! `skipPreflightChecks` the source checks are skipped (as upstream) and the risks an admin may accept
//! are downgraded from Critical to Warning, saying so in their message.

use std::collections::BTreeSet;

use api::{Concern, Severity, VirtualMachineImportSpec};

use crate::{
    model::SourceVm,
    names::sanitize_vm_name,
    risks::{RiskFacts, downgrade, risks},
    vm::{BuildError, cpu_topology, mapping_matches, plan_nics},
};

/// Facts the reconciler gathered for preflight.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PreflightFacts {
    /// `spec.storageClass` exists (true when it is empty: the cluster default).
    pub storage_class_exists: bool,
    /// Destination networks with no NetworkAttachmentDefinition, as written in the mapping.
    pub missing_nads: Vec<String>,
    /// Network names at the source; `None` when the source was not asked (`skipPreflightChecks`).
    pub source_networks: Option<Vec<String>>,
    /// The VM at the source; `None` when it was not found (or not looked up).
    pub vm: Option<SourceVm>,
    /// Why the source could not describe the VM when it exists but is unusable (an OVA whose
    /// descriptor is invalid); reported instead of "not found".
    pub source_error: Option<String>,
    /// The source can power VMs off (VMware; not OpenStack or OVA).
    pub power_off_supported: bool,
    /// The VM is powered off now.
    pub powered_off: bool,
    /// The guest tools run, so a graceful shutdown can be requested.
    pub tools_running: bool,
    /// Facts for the migration-risk rules ([`crate::risks`]).
    pub risks: RiskFacts,
}

fn concern(id: &str, severity: Severity, message: String, remedy: &str) -> Concern {
    Concern {
        id: id.to_owned(),
        severity,
        message,
        remedy: remedy.to_owned(),
    }
}

/// True when any concern is `Critical`.
pub fn is_blocking(concerns: &[Concern]) -> bool {
    concerns.iter().any(|c| c.severity == Severity::Critical)
}

/// The concerns of an import given the gathered facts. Source-specific checks (source networks,
/// VM lookup, shutdown feasibility) are skipped when `spec.skipPreflightChecks` is true, as upstream.
pub fn check(spec: &VirtualMachineImportSpec, facts: &PreflightFacts) -> Vec<Concern> {
    let mut concerns = Vec::new();
    let skip_source = spec.skip_preflight_checks == Some(true);

    if !spec.storage_class.is_empty() && !facts.storage_class_exists {
        concerns.push(concern(
            "StorageClassNotFound",
            Severity::Critical,
            format!("StorageClass {:?} does not exist", spec.storage_class),
            "create the StorageClass or change spec.storageClass (empty uses the cluster default)",
        ));
    }
    let mut seen = BTreeSet::new();
    for mapping in &spec.mapping {
        if !seen.insert(mapping.source_network.as_str()) {
            concerns.push(concern(
                "DuplicateMapping",
                Severity::Critical,
                format!(
                    "source network {:?} is mapped more than once",
                    mapping.source_network
                ),
                "keep one networkMapping entry per source network",
            ));
        }
        let parts = mapping.destination_network.split('/').count();
        if mapping.destination_network.is_empty() || parts > 2 {
            concerns.push(concern(
                "InvalidDestinationNetwork",
                Severity::Critical,
                format!(
                    "destination network {:?} is not <name> or <namespace>/<name>",
                    mapping.destination_network
                ),
                "name a NetworkAttachmentDefinition as <name> or <namespace>/<name>",
            ));
        }
    }
    for nad in &facts.missing_nads {
        concerns.push(concern(
            "NetworkAttachmentDefinitionNotFound",
            Severity::Critical,
            format!("NetworkAttachmentDefinition {nad:?} does not exist"),
            "create the VM network in Harvester or fix destinationNetwork",
        ));
    }
    if !skip_source {
        if let Some(networks) = &facts.source_networks {
            for mapping in &spec.mapping {
                let last = mapping.source_network.rsplit('/').next().unwrap_or_default();
                if !networks.iter().any(|n| n == last) {
                    concerns.push(concern(
                        "SourceNetworkNotFound",
                        Severity::Critical,
                        format!(
                            "source network {:?} does not exist at the source",
                            mapping.source_network
                        ),
                        "use the port-group name (or switch/portgroup) as the source shows it",
                    ));
                }
            }
        }
        if let Some(error) = &facts.source_error {
            concerns.push(concern(
                "SourceUnreadable",
                Severity::Critical,
                error.clone(),
                "fix the source (for an OVA: a valid archive with the .ovf first) or point the import elsewhere",
            ));
        } else if facts.vm.is_none() {
            concerns.push(concern(
                "VirtualMachineNotFound",
                Severity::Critical,
                format!("VM {:?} was not found at the source", spec.virtual_machine_name),
                "check spec.virtualMachineName and spec.folder",
            ));
        }
        if facts.power_off_supported
            && !facts.powered_off
            && spec.force_power_off != Some(true)
            && !facts.tools_running
        {
            concerns.push(concern(
                "GuestShutdownImpossible",
                Severity::Critical,
                "the VM is running and its guest tools are not, so it cannot be shut down gracefully".into(),
                "start the guest tools, power the VM off, or set spec.forcePowerOff: true",
            ));
        }
    }
    if let Some(vm) = &facts.vm {
        vm_concerns(spec, vm, &mut concerns);
        concerns.extend(risks(vm, &facts.risks));
    }
    if spec.skip_preflight_checks == Some(true) {
        downgrade(&mut concerns);
    }
    concerns
}

fn vm_concerns(spec: &VirtualMachineImportSpec, vm: &SourceVm, concerns: &mut Vec<Concern>) {
    match plan_nics(spec, &vm.nics) {
        Err(err @ BuildError::UnmappedNics { .. }) => concerns.push(concern(
            "UnmappedNetworks",
            Severity::Critical,
            err.to_string(),
            "add a networkMapping entry for all but one of them (that one uses the pod network)",
        )),
        Err(other) => concerns.push(concern(other.reason(), Severity::Critical, other.to_string(), "")),
        Ok(plans) => {
            if let Some(pod) = plans.iter().find(|p| p.destination.is_none())
                && !vm.nics.is_empty()
            {
                concerns.push(concern(
                    "PodNetwork",
                    Severity::Info,
                    format!(
                        "one NIC has no mapping and uses the pod (management) network ({})",
                        pod.name
                    ),
                    "",
                ));
            }
        }
    }
    for mapping in &spec.mapping {
        if !vm.nics.iter().any(|nic| mapping_matches(mapping, nic)) {
            concerns.push(concern(
                "MappingUnused",
                Severity::Warning,
                format!(
                    "no NIC of the VM is on source network {:?}",
                    mapping.source_network
                ),
                "",
            ));
        }
    }
    match cpu_topology(vm.cpus, vm.cores_per_socket) {
        Err(err) => concerns.push(concern(err.reason(), Severity::Critical, err.to_string(), "")),
        Ok(topology) if vm.cores_per_socket > 1 && topology.cores != vm.cores_per_socket => {
            concerns.push(concern(
                "CpuTopologyChanged",
                Severity::Warning,
                format!(
                    "{} vCPUs do not divide into {} cores per socket; using {} sockets of 1 core",
                    vm.cpus, vm.cores_per_socket, topology.sockets
                ),
                "",
            ));
        }
        Ok(_) => {}
    }
    if vm.disks.is_empty() {
        concerns.push(concern(
            "NoDisks",
            Severity::Critical,
            "the VM has no disks".into(),
            "",
        ));
    }
    let name = sanitize_vm_name(&vm.name);
    if name.changed {
        concerns.push(concern(
            "NameSanitized",
            Severity::Info,
            format!(
                "VM name {:?} is not a DNS-1123 label; the VM is created as {:?}",
                vm.name, name.name
            ),
            "",
        ));
    }
}
