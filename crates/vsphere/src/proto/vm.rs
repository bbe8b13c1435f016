//! The VM as the importer sees it: [`VmDescription`] built from a `RetrievePropertiesEx` object
//! (the [`VM_PROPERTIES`] paths) plus the datacenter's [`NetworkInventory`], and the mapping from an
//! NFC lease device key (`/vm-42/VirtualLsiLogicController0:0`) to the [`Disk`] it exports.
//!
//! Sizes come from the devices (`capacityInBytes`), never from the lease, whose `fileSize` is
//! unreliable (see formats-and-protocols §1.8).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{MoRef, response::ObjectContent, xml::Element};

/// The properties [`VmDescription::from_object`] reads; ask for exactly these.
pub const VM_PROPERTIES: &[&str] = &[
    "name",
    "config",
    "runtime.powerState",
    "runtime.host",
    "guest.toolsRunningStatus",
    "summary.config.tpmPresent",
    "snapshot",
    "layoutEx",
];

/// Why a VM description could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// A property the description needs was not returned.
    #[error("VM {vm}: property '{path}' is missing")]
    MissingProperty {
        /// The VM.
        vm: MoRef,
        /// The property path.
        path: &'static str,
    },
    /// A value is present but unusable.
    #[error("VM {vm}: {what}")]
    BadValue {
        /// The VM.
        vm: MoRef,
        /// What was wrong, naming the field.
        what: String,
    },
}

/// `runtime.powerState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PowerState {
    /// Running.
    PoweredOn,
    /// Off.
    PoweredOff,
    /// Suspended.
    Suspended,
}

/// `config.firmware`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Firmware {
    /// Legacy BIOS (also vSphere's default when unset).
    Bios,
    /// UEFI.
    Efi,
}

/// Bus family of a disk controller. Lease device keys name the controller class, which varies
/// between releases (`VirtualSCSIController` vs `ParaVirtualSCSIController`), so matching falls
/// back to the family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum BusFamily {
    /// LSI Logic (parallel/SAS), PVSCSI, BusLogic.
    Scsi,
    /// AHCI.
    Sata,
    /// IDE.
    Ide,
    /// NVMe.
    Nvme,
    /// USB (xHCI or EHCI).
    Usb,
    /// Anything else.
    Other,
}

impl BusFamily {
    /// The family of a controller class name.
    pub fn of(class: &str) -> Self {
        let lower = class.to_ascii_lowercase();
        if lower.contains("scsi") || lower.contains("lsilogic") || lower.contains("buslogic") {
            Self::Scsi
        } else if lower.contains("ahci") || lower.contains("sata") {
            Self::Sata
        } else if lower.contains("ide") {
            Self::Ide
        } else if lower.contains("nvme") {
            Self::Nvme
        } else if lower.contains("usb") {
            Self::Usb
        } else {
            Self::Other
        }
    }
}

/// The controller a disk or CD-ROM hangs off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Controller {
    /// Device class, e.g. `VirtualLsiLogicController`, `VirtualAHCIController`, `VirtualNVMEController`.
    pub class: String,
    /// Its family.
    pub family: BusFamily,
    /// `busNumber`.
    pub bus: i32,
    /// Device key.
    pub key: i32,
    /// `sharedBus` (SCSI bus sharing), if not `noSharing`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared_bus: Option<String>,
}

/// Disk provisioning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Provisioning {
    /// Thin (or a sparse format that allocates on write).
    Thin,
    /// Thick, zeroed on first write.
    ThickLazyZeroed,
    /// Thick, zeroed at creation.
    ThickEagerZeroed,
    /// Not derivable from the backing (e.g. an RDM).
    Unknown,
}

/// One virtual disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Disk {
    /// Device key.
    pub key: i32,
    /// `deviceInfo.label`, e.g. `Hard disk 1`.
    pub label: String,
    /// Capacity in bytes (`capacityInBytes`, else `capacityInKB` × 1024).
    pub capacity_bytes: u64,
    /// The controller.
    pub controller: Controller,
    /// `unitNumber` on the controller.
    pub unit: i32,
    /// `backing.fileName`, e.g. `[datastore1] web/web.vmdk`.
    pub backing_file: Option<String>,
    /// Backing class, e.g. `VirtualDiskFlatVer2BackingInfo`.
    pub backing_type: String,
    /// Thin/thick.
    pub provisioning: Provisioning,
    /// `diskMode`, e.g. `persistent`, `independent_persistent`.
    pub disk_mode: Option<String>,
    /// Independent disks are skipped by snapshots.
    pub independent: bool,
    /// RDM compatibility mode (`physicalMode`/`virtualMode`) when the disk is a raw device mapping.
    pub rdm: Option<String>,
    /// Multi-writer sharing or a shared SCSI bus.
    pub shared: bool,
    /// Bytes allocated on the datastore (the extents of its current chain in `layoutEx`); `None` when
    /// the VM's layout was not reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocated_bytes: Option<u64>,
}

/// Which network a NIC is on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum NicNetwork {
    /// A standard vSwitch port group.
    #[serde(rename_all = "camelCase")]
    Standard {
        /// Port group name (`deviceName`).
        name: String,
        /// The `Network` object, if given.
        network: Option<MoRef>,
    },
    /// A distributed port group.
    #[serde(rename_all = "camelCase")]
    Distributed {
        /// Port group name, resolved from the key via the inventory (`None` when not found).
        name: Option<String>,
        /// `portgroupKey`, e.g. `dvportgroup-21`.
        portgroup_key: String,
        /// Switch name, resolved from its uuid.
        switch_name: Option<String>,
        /// `switchUuid`.
        switch_uuid: String,
    },
    /// An NSX opaque network.
    #[serde(rename_all = "camelCase")]
    Opaque {
        /// Name resolved from the id via the inventory.
        name: Option<String>,
        /// `opaqueNetworkId`.
        id: String,
        /// `opaqueNetworkType`.
        network_type: String,
    },
    /// A backing we do not interpret; `deviceInfo.summary` for the humans.
    #[serde(rename_all = "camelCase")]
    Other {
        /// Backing class.
        backing_type: String,
        /// `deviceInfo.summary`.
        summary: String,
    },
}

impl NicNetwork {
    /// The network name a mapping would refer to.
    pub fn name(&self) -> Option<&str> {
        match self {
            Self::Standard { name, .. } => Some(name),
            Self::Distributed { name, .. } | Self::Opaque { name, .. } => name.as_deref(),
            Self::Other { .. } => None,
        }
    }
}

/// One network adapter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Nic {
    /// Device key.
    pub key: i32,
    /// `deviceInfo.label`.
    pub label: String,
    /// Device class, e.g. `VirtualVmxnet3`, `VirtualE1000`.
    pub device_type: String,
    /// MAC address as configured (lower-cased).
    pub mac_address: Option<String>,
    /// `addressType`: `assigned`, `generated`, `manual`.
    pub address_type: Option<String>,
    /// The network.
    pub network: NicNetwork,
    /// `connectable.startConnected`.
    pub start_connected: bool,
}

/// One CD/DVD drive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CdRom {
    /// Device key.
    pub key: i32,
    /// `deviceInfo.label`.
    pub label: String,
    /// The controller, if the key resolves.
    pub controller: Option<Controller>,
    /// `unitNumber`.
    pub unit: Option<i32>,
    /// Backing class, e.g. `VirtualCdromIsoBackingInfo`.
    pub backing_type: Option<String>,
    /// The ISO path for ISO backings.
    pub iso_file: Option<String>,
    /// `connectable.startConnected`.
    pub start_connected: bool,
}

/// Everything the importer needs to know about a source VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VmDescription {
    /// The VM object.
    pub moref: MoRef,
    /// Inventory name.
    pub name: String,
    /// BIOS uuid (`config.uuid`).
    pub uuid: Option<String>,
    /// `config.instanceUuid`: stable across the vCenter.
    pub instance_uuid: Option<String>,
    /// `config.guestId`, e.g. `otherGuest64`.
    pub guest_id: Option<String>,
    /// `config.guestFullName`.
    pub guest_full_name: Option<String>,
    /// `config.version`, e.g. `vmx-21`.
    pub hardware_version: Option<String>,
    /// `config.annotation`.
    pub annotation: Option<String>,
    /// `runtime.powerState`.
    pub power_state: PowerState,
    /// `runtime.host`: the ESXi host that runs the VM and serves its disks during an export.
    #[serde(default)]
    pub host: Option<MoRef>,
    /// `guest.toolsRunningStatus`, e.g. `guestToolsRunning`.
    pub tools_running_status: Option<String>,
    /// `config.hardware.numCPU`.
    pub num_cpu: u32,
    /// `config.hardware.numCoresPerSocket` (1 when unset).
    pub num_cores_per_socket: u32,
    /// `config.hardware.memoryMB` (MiB).
    pub memory_mb: u64,
    /// `config.firmware`.
    pub firmware: Firmware,
    /// `config.bootOptions.efiSecureBootEnabled`.
    pub secure_boot: bool,
    /// A virtual TPM is present (`summary.config.tpmPresent` or a `VirtualTPM` device).
    pub vtpm: bool,
    /// The VM has at least one snapshot (ExportVm exports the current state).
    pub snapshot_present: bool,
    /// The VM is encrypted (`config.keyId` set).
    #[serde(default)]
    pub encrypted: bool,
    /// Name of the ESXi host running the VM (`runtime.host`'s `name`), filled by the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_name: Option<String>,
    /// Disks in device order.
    pub disks: Vec<Disk>,
    /// NICs in device order.
    pub nics: Vec<Nic>,
    /// CD-ROM drives in device order.
    pub cdroms: Vec<CdRom>,
}

impl VmDescription {
    /// Whether VMware Tools are running (needed for `ShutdownGuest`).
    pub fn tools_running(&self) -> bool {
        self.tools_running_status.as_deref() == Some("guestToolsRunning")
    }
}

/// What kind of network object an inventory entry is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum NetworkKind {
    /// A standard port group.
    Standard,
    /// A distributed port group.
    #[serde(rename_all = "camelCase")]
    DistributedPortgroup {
        /// `key`, e.g. `dvportgroup-21`.
        key: String,
        /// The switch's name, when found.
        switch_name: Option<String>,
        /// The switch's uuid, when found.
        switch_uuid: Option<String>,
    },
    /// An NSX opaque network.
    #[serde(rename_all = "camelCase")]
    Opaque {
        /// `summary.opaqueNetworkId`.
        id: Option<String>,
        /// `summary.opaqueNetworkType`.
        network_type: Option<String>,
    },
}

/// One network of the datacenter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Network {
    /// The object.
    pub moref: MoRef,
    /// Its name.
    pub name: String,
    /// Its kind.
    #[serde(flatten)]
    pub kind: NetworkKind,
}

/// The networks of a datacenter, for resolving NIC backings.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkInventory {
    /// All networks found.
    pub networks: Vec<Network>,
}

/// Managed object types the network scan asks for, and the paths per type.
pub const NETWORK_PROPERTIES: &[(&str, &[&str])] = &[
    ("Network", &["name"]),
    (
        "DistributedVirtualPortgroup",
        &["name", "key", "config.distributedVirtualSwitch"],
    ),
    ("OpaqueNetwork", &["name", "summary"]),
    ("DistributedVirtualSwitch", &["name", "uuid"]),
];

impl NetworkInventory {
    /// Builds the inventory from a scan over `Network` and `DistributedVirtualSwitch` objects
    /// (subtypes included) with [`NETWORK_PROPERTIES`].
    pub fn from_objects(objects: &[ObjectContent]) -> Self {
        let switches: BTreeMap<&MoRef, (Option<&str>, Option<&str>)> = objects
            .iter()
            .filter(|o| o.obj.kind.ends_with("DistributedVirtualSwitch"))
            .map(|o| (&o.obj, (o.text("name"), o.text("uuid"))))
            .collect();
        let mut networks = Vec::new();
        for o in objects {
            let Some(name) = o.text("name") else { continue };
            let kind = match o.obj.kind.as_str() {
                "Network" => NetworkKind::Standard,
                "DistributedVirtualPortgroup" => {
                    let switch = o.prop("config.distributedVirtualSwitch").map(MoRef::from_element);
                    let (switch_name, switch_uuid) = switch
                        .as_ref()
                        .and_then(|s| switches.get(s))
                        .copied()
                        .unwrap_or((None, None));
                    NetworkKind::DistributedPortgroup {
                        key: o.text("key").unwrap_or(&o.obj.value).to_owned(),
                        switch_name: switch_name.map(str::to_owned),
                        switch_uuid: switch_uuid.map(str::to_owned),
                    }
                }
                "OpaqueNetwork" => NetworkKind::Opaque {
                    id: o
                        .prop("summary")
                        .and_then(|s| s.text_at("opaqueNetworkId"))
                        .map(str::to_owned),
                    network_type: o
                        .prop("summary")
                        .and_then(|s| s.text_at("opaqueNetworkType"))
                        .map(str::to_owned),
                },
                _ => continue,
            };
            networks.push(Network {
                moref: o.obj.clone(),
                name: name.to_owned(),
                kind,
            });
        }
        Self { networks }
    }

    fn portgroup(&self, key: &str) -> Option<&Network> {
        self.networks
            .iter()
            .find(|n| matches!(&n.kind, NetworkKind::DistributedPortgroup { key: k, .. } if k == key))
    }

    fn switch_name(&self, uuid: &str) -> Option<&str> {
        self.networks.iter().find_map(|n| match &n.kind {
            NetworkKind::DistributedPortgroup {
                switch_uuid: Some(u),
                switch_name: Some(name),
                ..
            } if u == uuid => Some(name.as_str()),
            _ => None,
        })
    }

    fn opaque(&self, id: &str) -> Option<&Network> {
        self.networks
            .iter()
            .find(|n| matches!(&n.kind, NetworkKind::Opaque { id: Some(i), .. } if i == id))
    }
}

fn int(e: &Element, path: &str) -> Option<i64> {
    e.text_at(path).and_then(|t| t.parse().ok())
}

fn flag(e: &Element, path: &str) -> bool {
    e.text_at(path) == Some("true")
}

fn text(e: &Element, path: &str) -> Option<String> {
    e.text_at(path).filter(|t| !t.is_empty()).map(str::to_owned)
}

/// Bytes of the files in disk `key`'s chain (descriptor and extents, parents included), from
/// `layoutEx` (`disk[key].chain[].fileKey` into `file[key].size`); `None` when the layout does not
/// list the disk.
fn allocated(object: &ObjectContent, key: i32) -> Option<u64> {
    let layout = object.prop("layoutEx")?;
    let disk = layout.children_named("disk").find(|d| key_of(d) == Some(key))?;
    let file_keys: Vec<i64> = disk
        .children_named("chain")
        .flat_map(|c| c.children_named("fileKey"))
        .filter_map(|k| k.text.trim().parse().ok())
        .collect();
    let mut total = None::<u64>;
    for file in layout.children_named("file") {
        if int(file, "key").is_some_and(|k| file_keys.contains(&k)) {
            let size = int(file, "size").and_then(|s| u64::try_from(s).ok())?;
            total = Some(total.unwrap_or_default().saturating_add(size));
        }
    }
    total
}

fn key_of(device: &Element) -> Option<i32> {
    int(device, "key").and_then(|k| i32::try_from(k).ok())
}

const NIC_TYPES: &[&str] = &[
    "VirtualE1000",
    "VirtualE1000e",
    "VirtualPCNet32",
    "VirtualVmxnet",
    "VirtualVmxnet2",
    "VirtualVmxnet3",
    "VirtualVmxnet3Vrdma",
    "VirtualSriovEthernetCard",
];

impl VmDescription {
    /// Builds the description from one `RetrievePropertiesEx` object read with [`VM_PROPERTIES`].
    ///
    /// # Errors
    /// [`Error::MissingProperty`] for `name`, `config` or `runtime.powerState`; [`Error::BadValue`]
    /// for an unknown power state, a disk without capacity, or a capacity that overflows bytes.
    pub fn from_object(object: &ObjectContent, networks: &NetworkInventory) -> Result<Self, Error> {
        let vm = &object.obj;
        let missing = |path: &'static str| Error::MissingProperty { vm: vm.clone(), path };
        let bad = |what: String| Error::BadValue { vm: vm.clone(), what };
        let config = object.prop("config").ok_or_else(|| missing("config"))?;
        let name = object
            .text("name")
            .or_else(|| config.text_at("name"))
            .ok_or_else(|| missing("name"))?
            .to_owned();
        let power_state = match object
            .text("runtime.powerState")
            .ok_or_else(|| missing("runtime.powerState"))?
        {
            "poweredOn" => PowerState::PoweredOn,
            "poweredOff" => PowerState::PoweredOff,
            "suspended" => PowerState::Suspended,
            other => {
                return Err(bad(format!(
                    "unknown power state '{}'",
                    other.chars().take(64).collect::<String>()
                )));
            }
        };
        let hardware = config
            .child("hardware")
            .ok_or_else(|| bad("config has no <hardware>".into()))?;
        let num_cpu = int(hardware, "numCPU")
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| bad("config.hardware.numCPU is missing or out of range".into()))?;
        let num_cores_per_socket = int(hardware, "numCoresPerSocket")
            .and_then(|n| u32::try_from(n).ok())
            .filter(|&n| n > 0)
            .unwrap_or(1);
        let memory_mb = int(hardware, "memoryMB")
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(|| bad("config.hardware.memoryMB is missing or out of range".into()))?;
        let firmware = match config.text_at("firmware") {
            Some("efi") => Firmware::Efi,
            _ => Firmware::Bios,
        };

        let devices: Vec<&Element> = hardware.children_named("device").collect();
        let controllers: BTreeMap<i32, Controller> = devices
            .iter()
            .filter_map(|d| {
                let class = d.xsi_type.as_deref()?;
                let bus = int(d, "busNumber").and_then(|b| i32::try_from(b).ok())?;
                if !class.ends_with("Controller") {
                    return None;
                }
                let key = key_of(d)?;
                let shared_bus = text(d, "sharedBus").filter(|s| s != "noSharing");
                Some((
                    key,
                    Controller {
                        class: class.to_owned(),
                        family: BusFamily::of(class),
                        bus,
                        key,
                        shared_bus,
                    },
                ))
            })
            .collect();
        let controller_of = |d: &Element| {
            int(d, "controllerKey")
                .and_then(|k| i32::try_from(k).ok())
                .and_then(|k| controllers.get(&k))
                .cloned()
        };
        let unit_of = |d: &Element| int(d, "unitNumber").and_then(|u| i32::try_from(u).ok());
        let label_of = |d: &Element| d.text_at("deviceInfo/label").unwrap_or_default().to_owned();

        let mut disks = Vec::new();
        let mut nics = Vec::new();
        let mut cdroms = Vec::new();
        let mut tpm_device = false;
        for d in &devices {
            let class = d.xsi_type.as_deref().unwrap_or_default();
            let key = key_of(d).unwrap_or_default();
            match class {
                "VirtualDisk" => {
                    let capacity_bytes = match int(d, "capacityInBytes") {
                        Some(b) => u64::try_from(b).ok(),
                        None => int(d, "capacityInKB")
                            .and_then(|kb| u64::try_from(kb).ok())
                            .and_then(|kb| kb.checked_mul(1024)),
                    }
                    .ok_or_else(|| bad(format!("disk {key} has no usable capacityInBytes/capacityInKB")))?;
                    let controller = controller_of(d)
                        .ok_or_else(|| bad(format!("disk {key} names a controller that does not exist")))?;
                    let unit = unit_of(d).ok_or_else(|| bad(format!("disk {key} has no unitNumber")))?;
                    let backing = d.child("backing");
                    let backing_type = backing.and_then(|b| b.xsi_type.clone()).unwrap_or_default();
                    let disk_mode = backing.and_then(|b| text(b, "diskMode"));
                    let rdm = backing
                        .filter(|_| backing_type.contains("RawDiskMapping"))
                        .map(|b| text(b, "compatibilityMode").unwrap_or_else(|| "unknown".into()));
                    let provisioning = match backing {
                        _ if rdm.is_some() => Provisioning::Unknown,
                        Some(b)
                            if backing_type == "VirtualDiskFlatVer2BackingInfo"
                                || backing_type == "VirtualDiskFlatVer1BackingInfo" =>
                        {
                            if flag(b, "thinProvisioned") {
                                Provisioning::Thin
                            } else if flag(b, "eagerlyScrub") {
                                Provisioning::ThickEagerZeroed
                            } else {
                                Provisioning::ThickLazyZeroed
                            }
                        }
                        Some(_) if backing_type.contains("Sparse") => Provisioning::Thin,
                        _ => Provisioning::Unknown,
                    };
                    let sharing_multi =
                        backing.and_then(|b| b.text_at("sharing")) == Some("sharingMultiWriter");
                    disks.push(Disk {
                        key,
                        label: label_of(d),
                        capacity_bytes,
                        shared: sharing_multi || controller.shared_bus.is_some(),
                        controller,
                        unit,
                        backing_file: backing.and_then(|b| text(b, "fileName")),
                        backing_type,
                        provisioning,
                        independent: disk_mode.as_deref().is_some_and(|m| m.starts_with("independent")),
                        disk_mode,
                        rdm,
                        allocated_bytes: allocated(object, key),
                    });
                }
                "VirtualCdrom" => {
                    let backing = d.child("backing");
                    let backing_type = backing.and_then(|b| b.xsi_type.clone());
                    cdroms.push(CdRom {
                        key,
                        label: label_of(d),
                        controller: controller_of(d),
                        unit: unit_of(d),
                        iso_file: backing
                            .filter(|_| backing_type.as_deref() == Some("VirtualCdromIsoBackingInfo"))
                            .and_then(|b| text(b, "fileName")),
                        backing_type,
                        start_connected: flag(d, "connectable/startConnected"),
                    });
                }
                "VirtualTPM" => tpm_device = true,
                _ if NIC_TYPES.contains(&class) || d.child("addressType").is_some() => {
                    nics.push(Nic {
                        key,
                        label: label_of(d),
                        device_type: class.to_owned(),
                        mac_address: text(d, "macAddress").map(|m| m.to_ascii_lowercase()),
                        address_type: text(d, "addressType"),
                        network: nic_network(d, networks),
                        start_connected: flag(d, "connectable/startConnected"),
                    });
                }
                _ => {}
            }
        }

        Ok(Self {
            moref: vm.clone(),
            name,
            uuid: text(config, "uuid"),
            instance_uuid: text(config, "instanceUuid"),
            guest_id: text(config, "guestId"),
            guest_full_name: text(config, "guestFullName"),
            hardware_version: text(config, "version"),
            annotation: text(config, "annotation"),
            power_state,
            host: object.prop("runtime.host").map(MoRef::from_element),
            tools_running_status: object
                .text("guest.toolsRunningStatus")
                .filter(|t| !t.is_empty())
                .map(str::to_owned),
            num_cpu,
            num_cores_per_socket,
            memory_mb,
            firmware,
            secure_boot: flag(config, "bootOptions/efiSecureBootEnabled"),
            vtpm: object.text("summary.config.tpmPresent") == Some("true") || tpm_device,
            snapshot_present: object
                .prop("snapshot")
                .is_some_and(|s| s.child("rootSnapshotList").is_some()),
            encrypted: config.child("keyId").is_some(),
            host_name: None,
            disks,
            nics,
            cdroms,
        })
    }
}

fn nic_network(device: &Element, networks: &NetworkInventory) -> NicNetwork {
    let backing = device.child("backing");
    let backing_type = backing.and_then(|b| b.xsi_type.clone()).unwrap_or_default();
    match (backing_type.as_str(), backing) {
        ("VirtualEthernetCardNetworkBackingInfo", Some(b)) => NicNetwork::Standard {
            name: text(b, "deviceName").unwrap_or_default(),
            network: b.child("network").map(MoRef::from_element),
        },
        ("VirtualEthernetCardDistributedVirtualPortBackingInfo", Some(b)) => {
            let portgroup_key = text(b, "port/portgroupKey").unwrap_or_default();
            let switch_uuid = text(b, "port/switchUuid").unwrap_or_default();
            let portgroup = networks.portgroup(&portgroup_key);
            NicNetwork::Distributed {
                name: portgroup.map(|p| p.name.clone()),
                switch_name: networks.switch_name(&switch_uuid).map(str::to_owned).or_else(|| {
                    portgroup.and_then(|p| match &p.kind {
                        NetworkKind::DistributedPortgroup { switch_name, .. } => switch_name.clone(),
                        _ => None,
                    })
                }),
                portgroup_key,
                switch_uuid,
            }
        }
        ("VirtualEthernetCardOpaqueNetworkBackingInfo", Some(b)) => {
            let id = text(b, "opaqueNetworkId").unwrap_or_default();
            NicNetwork::Opaque {
                name: networks.opaque(&id).map(|n| n.name.clone()),
                network_type: text(b, "opaqueNetworkType").unwrap_or_default(),
                id,
            }
        }
        _ => NicNetwork::Other {
            backing_type,
            summary: device
                .text_at("deviceInfo/summary")
                .unwrap_or_default()
                .to_owned(),
        },
    }
}

/// A parsed lease device key: `/vm-42/VirtualLsiLogicController0:0` → class, bus 0, unit 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceKey {
    /// Controller class as the server wrote it.
    pub class: String,
    /// Controller bus number.
    pub bus: i32,
    /// Unit number on that controller.
    pub unit: i32,
}

/// Why a device key could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeviceKeyError {
    /// Not `<Class><bus>:<unit>` after the last `/`.
    #[error("lease device key '{key}' is not of the form /<vm>/<ControllerClass><bus>:<unit>")]
    Malformed {
        /// The key (cut to 200 characters).
        key: String,
    },
    /// No disk sits at that controller position.
    #[error("lease device key '{key}' matches no disk of the VM")]
    NoDisk {
        /// The key.
        key: String,
    },
    /// More than one disk matches (only possible when falling back to the bus family).
    #[error("lease device key '{key}' matches more than one disk of the VM")]
    Ambiguous {
        /// The key.
        key: String,
    },
}

impl DeviceKey {
    /// Parses a lease device key.
    ///
    /// # Errors
    /// [`DeviceKeyError::Malformed`].
    pub fn parse(key: &str) -> Result<Self, DeviceKeyError> {
        let malformed = || DeviceKeyError::Malformed {
            key: key.chars().take(200).collect(),
        };
        let last = key.rsplit('/').next().unwrap_or(key);
        let (left, unit) = last.split_once(':').ok_or_else(malformed)?;
        let unit: i32 = unit.parse().map_err(|_| malformed())?;
        let digits = left.bytes().rev().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits == left.len() {
            return Err(malformed());
        }
        let (class, bus) = left.split_at(left.len() - digits);
        let bus: i32 = bus.parse().map_err(|_| malformed())?;
        Ok(Self {
            class: class.to_owned(),
            bus,
            unit,
        })
    }

    /// The disk at this position: exact controller class + bus + unit, else the unique disk whose
    /// controller is of the same bus family at that bus + unit.
    ///
    /// # Errors
    /// [`DeviceKeyError::NoDisk`] or [`DeviceKeyError::Ambiguous`].
    pub fn find_disk<'a>(&self, key: &str, disks: &'a [Disk]) -> Result<&'a Disk, DeviceKeyError> {
        let at = |d: &&Disk| d.controller.bus == self.bus && d.unit == self.unit;
        if let Some(disk) = disks.iter().filter(at).find(|d| d.controller.class == self.class) {
            return Ok(disk);
        }
        let family = BusFamily::of(&self.class);
        let mut candidates = disks.iter().filter(at).filter(|d| d.controller.family == family);
        match (candidates.next(), candidates.next()) {
            (Some(disk), None) => Ok(disk),
            (Some(_), Some(_)) => Err(DeviceKeyError::Ambiguous {
                key: key.chars().take(200).collect(),
            }),
            (None, _) => Err(DeviceKeyError::NoDisk {
                key: key.chars().take(200).collect(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::response;

    fn vcsim_default_vm() -> ObjectContent {
        let bytes = include_bytes!("../../tests/data/vm_properties_vcsim_default.xml");
        let body = response::body("RetrievePropertiesEx", bytes).unwrap();
        response::retrieve_result("RetrievePropertiesEx", &body)
            .unwrap()
            .objects
            .remove(0)
    }

    #[test]
    fn describes_the_simulators_default_vm() {
        let networks = NetworkInventory {
            networks: vec![Network {
                moref: MoRef::new("DistributedVirtualPortgroup", "dvportgroup-12"),
                name: "DC0_DVPG0".into(),
                kind: NetworkKind::DistributedPortgroup {
                    key: "dvportgroup-12".into(),
                    switch_name: Some("DVS0".into()),
                    switch_uuid: Some("a86ec114-1915-5fba-b48e-5c2b06075be0".into()),
                },
            }],
        };
        let vm = VmDescription::from_object(&vcsim_default_vm(), &networks).unwrap();
        assert_eq!(vm.name, "DC0_H0_VM0");
        assert_eq!(vm.power_state, PowerState::PoweredOn);
        assert_eq!((vm.num_cpu, vm.num_cores_per_socket, vm.memory_mb), (1, 1, 32));
        assert_eq!(vm.firmware, Firmware::Bios);
        assert_eq!(vm.hardware_version.as_deref(), Some("vmx-13"));
        assert_eq!(vm.disks.len(), 1);
        let disk = &vm.disks[0];
        assert_eq!(disk.capacity_bytes, 10_737_418_240);
        assert_eq!(disk.controller.class, "ParaVirtualSCSIController");
        assert_eq!(disk.controller.family, BusFamily::Scsi);
        assert_eq!(disk.provisioning, Provisioning::Thin);
        assert_eq!(
            disk.backing_file.as_deref(),
            Some("[LocalDS_0] DC0_H0_VM0/disk1.vmdk")
        );
        assert!(!disk.independent && !disk.shared && disk.rdm.is_none());
        assert_eq!(vm.nics.len(), 1);
        assert_eq!(vm.nics[0].device_type, "VirtualE1000");
        assert_eq!(vm.nics[0].mac_address.as_deref(), Some("00:0c:29:63:65:61"));
        assert_eq!(
            vm.nics[0].network,
            NicNetwork::Distributed {
                name: Some("DC0_DVPG0".into()),
                portgroup_key: "dvportgroup-12".into(),
                switch_name: Some("DVS0".into()),
                switch_uuid: "a86ec114-1915-5fba-b48e-5c2b06075be0".into(),
            }
        );
        assert_eq!(vm.cdroms.len(), 1);
        assert!(!vm.snapshot_present && !vm.vtpm && !vm.secure_boot);
    }

    #[test]
    fn device_keys_parse_and_match_by_class_then_family() {
        let key = DeviceKey::parse("/vm-4681/ParaVirtualSCSIController0:0").unwrap();
        assert_eq!(
            (key.class.as_str(), key.bus, key.unit),
            ("ParaVirtualSCSIController", 0, 0)
        );
        let vm = VmDescription::from_object(&vcsim_default_vm(), &NetworkInventory::default()).unwrap();
        assert_eq!(key.find_disk("k", &vm.disks).unwrap().key, 204);
        let generic = DeviceKey::parse("/vm-1/VirtualSCSIController0:0").unwrap();
        assert_eq!(generic.find_disk("k", &vm.disks).unwrap().key, 204);
        let sata = DeviceKey::parse("/vm-1/VirtualAHCIController0:0").unwrap();
        assert!(matches!(
            sata.find_disk("k", &vm.disks),
            Err(DeviceKeyError::NoDisk { .. })
        ));
        for bad in [
            "",
            "/vm-1/",
            "/vm-1/Foo:0",
            "/vm-1/12:0",
            "/vm-1/Foo0",
            "/vm-1/Foo0:x",
            "/vm-1/Foo99999999999:0",
        ] {
            assert!(DeviceKey::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn missing_config_is_named() {
        let mut object = vcsim_default_vm();
        object.props.retain(|(p, _)| p != "config");
        assert_eq!(
            VmDescription::from_object(&object, &NetworkInventory::default()),
            Err(Error::MissingProperty {
                vm: object.obj.clone(),
                path: "config"
            })
        );
    }
}
