//! The KubeVirt `VirtualMachine` an import creates, shaped as upstream shapes it (`disk-<i>` disks and
//! volumes, `migrated-<i>`/`pod-network` interfaces and networks, the `imported` label, the
//! `harvesterhci.io/vmName` template label, `RerunOnFailure`, `LiveMigrateIfPossible`) with upstream's
//! defects fixed:
//!
//! * CPU topology: sockets = cpus / coresPerSocket, cores = coresPerSocket (upstream swaps them, so
//!   8 vCPUs at 8 cores/socket became 64); a topology that does not divide falls back to one core per
//!   socket, keeping the vCPU count exact;
//! * memory in `Mi` (upstream writes decimal `M`, 4.6 % short);
//! * a vTPM is kept on BIOS VMs too; SMM is on whenever secure boot or a TPM is;
//! * the disk bus follows the disk's controller; boot order follows the source's when it has one;
//! * NICs: matched to a mapping by port-group name or `switch/portgroup`; model from the mapping, else
//!   the source NIC, else the default; MACs kept; exactly one unmapped NIC goes to the pod network,
//!   more than one is an error naming them (upstream silently drops them).
//!
//! Output is JSON the real KubeVirt CRD accepts (`tests/lab.rs` sends it to the lab's apiserver).

use std::collections::BTreeMap;

use api::{DiskBus, NetworkMapping, NicModel, VirtualMachineImportSpec, names};
use serde_json::{Map, Value, json};

use crate::model::{ControllerKind, Firmware, SourceNic, SourceVm};

/// Name of the interface and network of the pod (management) network.
pub const POD_NETWORK: &str = "pod-network";

/// Why a VM cannot be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BuildError {
    /// The source reports no vCPUs.
    #[error("the source VM has no vCPUs")]
    NoCpus,
    /// The source reports no memory.
    #[error("the source VM has no memory")]
    NoMemory,
    /// The source VM has no disks.
    #[error("the source VM has no disks")]
    NoDisks,
    /// The number of volume claims differs from the number of disks.
    #[error("{claims} volume claims for {disks} disks")]
    ClaimCountMismatch {
        /// Disks of the source VM.
        disks: usize,
        /// Claims given.
        claims: usize,
    },
    /// More than one NIC has no mapping; only one can go to the pod network.
    #[error("{} NICs have no network mapping (only one can use the pod network): {}", nics.len(), nics.join(", "))]
    UnmappedNics {
        /// `network (mac)` of each unmapped NIC.
        nics: Vec<String>,
    },
}

impl BuildError {
    /// Low-cardinality PascalCase reason for conditions, events and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoCpus | Self::NoMemory => "InvalidHardware",
            Self::NoDisks => "NoDisks",
            Self::ClaimCountMismatch { .. } => "DiskMismatch",
            Self::UnmappedNics { .. } => "UnmappedNetworks",
        }
    }
}

/// CPU topology.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuTopology {
    /// Sockets.
    pub sockets: u32,
    /// Cores per socket.
    pub cores: u32,
    /// Threads per core (always 1: sources do not report SMT).
    pub threads: u32,
}

/// sockets × cores = `cpus`, with cores = `cores_per_socket` when it divides `cpus`.
pub fn cpu_topology(cpus: u32, cores_per_socket: u32) -> Result<CpuTopology, BuildError> {
    if cpus == 0 {
        return Err(BuildError::NoCpus);
    }
    let cores = cores_per_socket.clamp(1, cpus);
    let (sockets, cores) = if cpus.is_multiple_of(cores) {
        (cpus / cores, cores)
    } else {
        (cpus, 1)
    };
    Ok(CpuTopology {
        sockets,
        cores,
        threads: 1,
    })
}

/// The KubeVirt bus for a disk on `controller`; `default` when the controller says nothing.
pub fn disk_bus(controller: ControllerKind, default: &DiskBus) -> DiskBus {
    match controller {
        ControllerKind::Scsi => DiskBus::Scsi,
        // KubeVirt has no pvscsi model and guests with pvscsi reliably also have AHCI (upstream does the same).
        ControllerKind::ParaVirtualScsi | ControllerKind::Sata | ControllerKind::Ide => DiskBus::Sata,
        // KubeVirt has no NVMe bus; upstream maps it to virtio.
        ControllerKind::Nvme | ControllerKind::Virtio => DiskBus::Virtio,
        ControllerKind::Usb => DiskBus::Usb,
        ControllerKind::Unknown => default.clone(),
    }
}

/// Where one source NIC goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NicPlan {
    /// Interface (and network) name: `migrated-<i>` or `pod-network`.
    pub name: String,
    /// `Some(nad)` for a mapped NIC (Multus network name as the mapping gives it), `None` for the pod network.
    pub destination: Option<String>,
    /// KubeVirt model.
    pub model: NicModel,
    /// MAC to keep.
    pub mac: Option<String>,
}

/// True when `mapping` names `nic`'s network, by port-group name or as `switch/portgroup`.
pub fn mapping_matches(mapping: &NetworkMapping, nic: &SourceNic) -> bool {
    mapping.source_network == nic.network
        || nic
            .switch
            .as_deref()
            .is_some_and(|switch| mapping.source_network == format!("{switch}/{}", nic.network))
}

fn model_or(model: Option<&NicModel>, fallback: &NicModel) -> NicModel {
    match model {
        None | Some(NicModel::Unspecified) => fallback.clone(),
        Some(model) => model.clone(),
    }
}

/// Plans every NIC: mapped ones to their NAD (bridge), at most one unmapped one to the pod network
/// (masquerade). A VM without NICs gets one pod-network NIC, as upstream.
pub fn plan_nics(spec: &VirtualMachineImportSpec, nics: &[SourceNic]) -> Result<Vec<NicPlan>, BuildError> {
    let default = spec.default_nic_model();
    let unmapped: Vec<&SourceNic> = nics
        .iter()
        .filter(|nic| !spec.mapping.iter().any(|m| mapping_matches(m, nic)))
        .collect();
    if unmapped.len() > 1 {
        return Err(BuildError::UnmappedNics {
            nics: unmapped
                .iter()
                .map(|nic| match &nic.mac {
                    Some(mac) => format!("{} ({mac})", nic.network),
                    None => nic.network.clone(),
                })
                .collect(),
        });
    }
    if nics.is_empty() {
        return Ok(vec![NicPlan {
            name: POD_NETWORK.into(),
            destination: None,
            model: default,
            mac: None,
        }]);
    }
    Ok(nics
        .iter()
        .enumerate()
        .map(
            |(i, nic)| match spec.mapping.iter().find(|m| mapping_matches(m, nic)) {
                Some(mapping) => NicPlan {
                    name: format!("migrated-{i}"),
                    destination: Some(mapping.destination_network.clone()),
                    model: model_or(
                        mapping.network_interface_model.as_ref().or(nic.model.as_ref()),
                        &default,
                    ),
                    mac: nic.mac.clone(),
                },
                None => NicPlan {
                    name: POD_NETWORK.into(),
                    destination: None,
                    model: model_or(nic.model.as_ref(), &default),
                    mac: nic.mac.clone(),
                },
            },
        )
        .collect())
}

/// Everything the VM is built from.
#[derive(Clone, Debug)]
pub struct VmInput<'a> {
    /// The VM's name (already a DNS-1123 label: `status.importedVirtualMachineName`).
    pub name: &'a str,
    /// The import's namespace.
    pub namespace: &'a str,
    /// The import's spec (mappings, defaults).
    pub spec: &'a VirtualMachineImportSpec,
    /// The source VM.
    pub source: &'a SourceVm,
    /// PVC name per source disk, in `source.disks` order.
    pub claims: &'a [String],
}

/// Builds the `kubevirt.io/v1` `VirtualMachine`.
pub fn build_virtual_machine(input: &VmInput<'_>) -> Result<Value, BuildError> {
    let source = input.source;
    let topology = cpu_topology(source.cpus, source.cores_per_socket)?;
    if source.memory_mib == 0 {
        return Err(BuildError::NoMemory);
    }
    if source.disks.is_empty() {
        return Err(BuildError::NoDisks);
    }
    if input.claims.len() != source.disks.len() {
        return Err(BuildError::ClaimCountMismatch {
            disks: source.disks.len(),
            claims: input.claims.len(),
        });
    }
    let nics = plan_nics(input.spec, &source.nics)?;
    let memory = format!("{}Mi", source.memory_mib);
    let default_bus = input.spec.default_disk_bus();

    // Boot order: the source's where it has one (ties and gaps keep device order), else device order.
    let mut order: Vec<usize> = (0..source.disks.len()).collect();
    order.sort_by_key(|&i| (source.disks[i].boot_order.unwrap_or(u32::MAX), i));
    let mut boot_order = vec![0_usize; source.disks.len()];
    for (position, &disk) in order.iter().enumerate() {
        boot_order[disk] = position + 1;
    }

    let disks: Vec<Value> = source
        .disks
        .iter()
        .enumerate()
        .map(|(i, disk)| {
            json!({
                "name": format!("disk-{i}"),
                "bootOrder": boot_order[i],
                "disk": {"bus": disk_bus(disk.controller, &default_bus).as_str()},
            })
        })
        .collect();
    let volumes: Vec<Value> = input
        .claims
        .iter()
        .enumerate()
        .map(|(i, claim)| json!({"name": format!("disk-{i}"), "persistentVolumeClaim": {"claimName": claim}}))
        .collect();
    let interfaces: Vec<Value> = nics.iter().map(interface).collect();
    let networks: Vec<Value> = nics
        .iter()
        .map(|nic| match &nic.destination {
            Some(nad) => json!({"name": nic.name, "multus": {"networkName": nad}}),
            None => json!({"name": nic.name, "pod": {}}),
        })
        .collect();

    let mut devices = Map::new();
    devices.insert("disks".into(), Value::Array(disks));
    devices.insert("interfaces".into(), Value::Array(interfaces));
    if source.tpm {
        devices.insert("tpm".into(), json!({}));
    }
    let mut features = Map::new();
    features.insert("acpi".into(), json!({"enabled": true}));
    let efi = source.firmware == Firmware::Efi;
    // KubeVirt refuses secure boot without SMM; upstream also enables it for a TPM.
    if (efi && source.secure_boot) || source.tpm {
        features.insert("smm".into(), json!({"enabled": true}));
    }
    let mut domain = Map::new();
    domain.insert(
        "cpu".into(),
        json!({"sockets": topology.sockets, "cores": topology.cores, "threads": topology.threads}),
    );
    domain.insert("memory".into(), json!({"guest": memory}));
    domain.insert(
        "resources".into(),
        json!({"limits": {"cpu": source.cpus.to_string(), "memory": memory}}),
    );
    domain.insert("features".into(), Value::Object(features));
    if efi {
        domain.insert(
            "firmware".into(),
            json!({"bootloader": {"efi": {"secureBoot": source.secure_boot}}}),
        );
    }
    domain.insert("devices".into(), Value::Object(devices));

    let mut labels = BTreeMap::new();
    labels.insert(names::LABEL_IMPORTED, names::LABEL_TRUE);
    let mut metadata = json!({"name": input.name, "namespace": input.namespace, "labels": labels});
    if let Some(description) = source.description.as_deref().filter(|d| !d.is_empty()) {
        metadata["annotations"] = json!({ names::ANNOTATION_DESCRIPTION: description });
    }
    Ok(json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": metadata,
        "spec": {
            "runStrategy": "RerunOnFailure",
            "template": {
                "metadata": {"labels": { names::LABEL_VM_NAME: input.name }},
                "spec": {
                    "evictionStrategy": "LiveMigrateIfPossible",
                    "domain": Value::Object(domain),
                    "networks": networks,
                    "volumes": volumes,
                },
            },
        },
    }))
}

fn interface(nic: &NicPlan) -> Value {
    let mut value = json!({"name": nic.name, "model": nic.model.as_str()});
    if let Some(mac) = &nic.mac {
        value["macAddress"] = json!(mac);
    }
    match nic.destination {
        Some(_) => value["bridge"] = json!({}),
        None => value["masquerade"] = json!({}),
    }
    value
}
