//! Migration risks: what about the source VM, the target namespace, the controller's scratch space and
//! the network path between them makes an import fail or come out different from the source. The facts
//! are plain data ([`RiskFacts`], gathered by the controller or the `assess` command); [`risks`] turns
//! them into [`Concern`]s with stable ids. [`crate::preflight::check`] adds them to its own concerns.
//!
//! Ids and severities (Critical blocks an import unless `skipPreflightChecks` downgrades it):
//!
//! | id | severity |
//! |---|---|
//! | `HardwareVersionTooOld` | Critical (below vmx-07) |
//! | `HardwareVersionUnknown` | Warning (newer than vmx-21, or unreadable) |
//! | `GuestOs` | Info (guest id neither Windows nor Linux) |
//! | `WindowsNeedsVirtioDrivers` | Warning (one per vmxnet3 NIC / NVMe disk) |
//! | `WindowsNeedsAhci` | Info (one per pvscsi disk) |
//! | `EmulatedNicsOnly` | Info |
//! | `SnapshotsPresent` | Warning |
//! | `IndependentDisk` | Warning |
//! | `RawDeviceMapping` | Critical (physical mode), Warning (virtual mode) |
//! | `SharedDisk` | Warning |
//! | `EncryptedVm` | Critical |
//! | `UnsupportedController` | Critical |
//! | `VtpmStateNotCarried` | Warning |
//! | `SecureBootNeedsSmm` / `EfiFirmware` | Info |
//! | `CdromNotCarried` | Warning |
//! | `DuplicateMac` | Critical |
//! | `VirtualMachineExists` | Critical |
//! | `ScratchSpaceLow` | Critical |
//! | `VcenterUnreachable` | Critical |
//! | `HostPortUnreachable` | Critical |
//! | `HostUnresolved` | Warning |

use api::{Concern, NicModel, Severity};

use crate::model::{ControllerKind, Firmware, SourceVm};

/// Oldest virtual hardware version KubeVirt imports are known to boot (ESX 4.0, PCIe and ACPI as
/// q35 guests expect them).
pub const OLDEST_HARDWARE_VERSION: u32 = 7;
/// Newest virtual hardware version checked (vSphere 8.0 U2); newer ones are reported, not blocked.
pub const NEWEST_HARDWARE_VERSION: u32 = 21;

/// Guest OS family, from the source's guest id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestFamily {
    /// Any Windows.
    Windows,
    /// Any Linux distribution.
    Linux,
    /// Anything else or unknown.
    Other,
}

impl GuestFamily {
    /// The family of a vSphere guest id (`windows2019srv_64Guest`, `rhel9_64Guest`, `otherGuest64`).
    pub fn of(guest_id: &str) -> Self {
        let id = guest_id.to_ascii_lowercase();
        const LINUX: &[&str] = &[
            "linux", "rhel", "centos", "ubuntu", "debian", "sles", "suse", "oracle", "fedora", "rocky",
            "alma", "amazon", "photon", "coreos", "mandr", "redhat", "asianux", "turbo", "opensuse",
        ];
        if id.starts_with("win") {
            Self::Windows
        } else if LINUX.iter().any(|l| id.contains(l)) {
            Self::Linux
        } else {
            Self::Other
        }
    }
}

/// A disk as the risk rules see it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiskRisk {
    /// Label, e.g. `Hard disk 1`.
    pub label: String,
    /// Controller kind.
    pub controller: ControllerKind,
    /// Controller class as the source names it (for messages).
    pub controller_class: String,
    /// Independent (snapshot-less) mode.
    pub independent: bool,
    /// RDM compatibility mode (`physicalMode` / `virtualMode`) for a raw device mapping.
    pub rdm: Option<String>,
    /// Multi-writer sharing or a shared SCSI bus.
    pub shared: bool,
    /// Provisioned size in bytes.
    pub provisioned_bytes: u64,
    /// Bytes allocated at the source (what an export writes); `None` when the source did not say.
    pub allocated_bytes: Option<u64>,
}

impl DiskRisk {
    /// What an import writes for this disk: its allocated bytes, or all of it when unknown.
    pub fn bytes_to_write(&self) -> u64 {
        self.allocated_bytes.unwrap_or(self.provisioned_bytes)
    }
}

/// A NIC as the risk rules see it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NicRisk {
    /// Label, e.g. `Network adapter 1`.
    pub label: String,
    /// Device class, e.g. `VirtualVmxnet3`, `VirtualE1000`.
    pub device_type: String,
}

/// A CD-ROM drive.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CdromRisk {
    /// Label, e.g. `CD/DVD drive 1`.
    pub label: String,
    /// The ISO file it holds, if any.
    pub iso: Option<String>,
    /// Connected (or connected at power-on) to a host device or client.
    pub connected: bool,
}

/// Source-specific details of the VM (vSphere); the neutral part is [`SourceVm`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VmRisk {
    /// Virtual hardware version number (the 19 of `vmx-19`); `None` when not read.
    pub hardware_version: Option<u32>,
    /// Guest id, e.g. `windows2019srv_64Guest`.
    pub guest_id: Option<String>,
    /// Guest full name, e.g. `Microsoft Windows Server 2019 (64-bit)`.
    pub guest_name: Option<String>,
    /// The VM has snapshots.
    pub snapshots: bool,
    /// The VM is encrypted (`config.keyId` set).
    pub encrypted: bool,
    /// Disks, in device order.
    pub disks: Vec<DiskRisk>,
    /// NICs, in device order.
    pub nics: Vec<NicRisk>,
    /// CD-ROM drives.
    pub cdroms: Vec<CdromRisk>,
}

impl VmRisk {
    /// What an import of this VM writes, in bytes.
    pub fn bytes_to_write(&self) -> u64 {
        self.disks.iter().map(DiskRisk::bytes_to_write).sum()
    }
}

/// A VM already in the target namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TargetVm {
    /// Its name.
    pub name: String,
    /// MAC addresses of its interfaces.
    pub macs: Vec<String>,
}

/// Space where the controller writes images.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scratch {
    /// The directory, for messages.
    pub dir: String,
    /// Free bytes there (available to the controller).
    pub free_bytes: u64,
    /// Bytes the admin keeps free there whatever the imports need (`--image-dir-reserve`).
    pub reserved_bytes: u64,
}

/// Which end a probe tried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeRole {
    /// The vCenter (or ESXi) SDK endpoint.
    Vcenter,
    /// An ESXi host serving the VM's disks.
    Esxi,
}

/// What a TCP connect found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// Connected.
    Open,
    /// The name did not resolve.
    Unresolved(String),
    /// Refused, timed out or unroutable, with the reason.
    Failed(String),
}

/// One TCP connect attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    /// Which end.
    pub role: ProbeRole,
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Result.
    pub outcome: ProbeOutcome,
}

/// Facts for the risk rules; every field is optional in effect (empty or `None`: not checked).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RiskFacts {
    /// Source-specific VM details.
    pub vm: Option<VmRisk>,
    /// A graceful (guest) shutdown will be requested: the VM runs and `forcePowerOff` is not set.
    pub graceful_shutdown: bool,
    /// VMs already in the target namespace; `None` when not listed.
    pub namespace_vms: Option<Vec<TargetVm>>,
    /// Name the imported VM will get.
    pub target_name: String,
    /// Scratch space; `None` when not measured.
    pub scratch: Option<Scratch>,
    /// TCP probes.
    pub probes: Vec<Probe>,
}

/// Ids of the rules that `skipPreflightChecks` downgrades from Critical to Warning: risks the admin may
/// accept. Configuration errors (missing StorageClass or NAD, unmapped NICs) stay Critical: the import
/// cannot be built without fixing them.
pub const DOWNGRADABLE: &[&str] = &[
    "HardwareVersionTooOld",
    "RawDeviceMapping",
    "EncryptedVm",
    "UnsupportedController",
    "DuplicateMac",
    "ScratchSpaceLow",
    "VcenterUnreachable",
    "HostPortUnreachable",
];

/// Text prepended to a downgraded concern's message.
pub const DOWNGRADED: &str = "downgraded from Critical by skipPreflightChecks: ";

/// Turns the downgradable Critical concerns into Warnings whose message says so.
pub fn downgrade(concerns: &mut [Concern]) {
    for c in concerns {
        if c.severity == Severity::Critical && DOWNGRADABLE.contains(&c.id.as_str()) {
            c.severity = Severity::Warning;
            c.message = format!("{DOWNGRADED}{}", c.message);
        }
    }
}

fn concern(id: &str, severity: Severity, message: String, remedy: &str) -> Concern {
    Concern {
        id: id.to_owned(),
        severity,
        message,
        remedy: remedy.to_owned(),
    }
}

fn bytes(n: u64) -> String {
    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;
    if n >= GIB {
        format!("{:.1} GiB", n as f64 / GIB as f64)
    } else {
        format!("{:.1} MiB", n as f64 / MIB as f64)
    }
}

/// The risk concerns of importing `vm` (the neutral description) given `facts`.
pub fn risks(vm: &SourceVm, facts: &RiskFacts) -> Vec<Concern> {
    let mut out = Vec::new();
    if let Some(details) = &facts.vm {
        hardware(details, &mut out);
        guest(vm, details, &mut out);
        disks(details, &mut out);
        cdroms(details, &mut out);
    }
    firmware(vm, &mut out);
    target(vm, facts, &mut out);
    scratch(vm, facts, &mut out);
    probes(facts, &mut out);
    out
}

fn hardware(d: &VmRisk, out: &mut Vec<Concern>) {
    match d.hardware_version {
        Some(v) if v < OLDEST_HARDWARE_VERSION => out.push(concern(
            "HardwareVersionTooOld",
            Severity::Critical,
            format!(
                "virtual hardware vmx-{v:02} is older than vmx-{OLDEST_HARDWARE_VERSION:02}, the oldest known to run on KubeVirt"
            ),
            "upgrade the VM's compatibility (hardware version) in vSphere before importing",
        )),
        Some(v) if v > NEWEST_HARDWARE_VERSION => out.push(concern(
            "HardwareVersionUnknown",
            Severity::Warning,
            format!(
                "virtual hardware vmx-{v:02} is newer than vmx-{NEWEST_HARDWARE_VERSION}, the newest checked; devices it adds may not be carried"
            ),
            "check the imported VM's devices",
        )),
        Some(_) => {}
        None => out.push(concern(
            "HardwareVersionUnknown",
            Severity::Warning,
            "the source did not report a virtual hardware version".into(),
            "check the VM's compatibility setting in vSphere",
        )),
    }
}

fn guest(vm: &SourceVm, d: &VmRisk, out: &mut Vec<Concern>) {
    let family = d.guest_id.as_deref().map_or(GuestFamily::Other, GuestFamily::of);
    if family == GuestFamily::Other {
        out.push(concern(
            "GuestOs",
            Severity::Info,
            format!(
                "guest OS {} (id {}) is neither a known Windows nor a known Linux; driver needs are unchecked",
                d.guest_name.as_deref().unwrap_or("unknown"),
                d.guest_id.as_deref().unwrap_or("unknown"),
            ),
            "check that the guest has virtio (or SATA/e1000) drivers",
        ));
    }
    if family == GuestFamily::Windows {
        for nic in d
            .nics
            .iter()
            .filter(|n| n.device_type.to_ascii_lowercase().contains("vmxnet"))
        {
            out.push(concern(
                "WindowsNeedsVirtioDrivers",
                Severity::Warning,
                format!(
                    "{} is {}; the import makes it a virtio-net NIC, which Windows only drives with the VirtIO drivers",
                    nic.label, nic.device_type
                ),
                "install the VirtIO drivers (virtio-win) in the guest before the move",
            ));
        }
        for disk in &d.disks {
            match disk.controller {
                ControllerKind::Nvme => out.push(concern(
                    "WindowsNeedsVirtioDrivers",
                    Severity::Warning,
                    format!(
                        "{} is on {} (NVMe); the import puts it on the virtio bus, which Windows only boots from with the VirtIO storage driver",
                        disk.label, disk.controller_class
                    ),
                    "install the VirtIO drivers (virtio-win viostor) before the move",
                )),
                ControllerKind::ParaVirtualScsi => out.push(concern(
                    "WindowsNeedsAhci",
                    Severity::Info,
                    format!(
                        "{} is on {} (pvscsi); the import puts it on SATA, so Windows must boot with its in-box AHCI driver enabled",
                        disk.label, disk.controller_class
                    ),
                    "make sure storahci starts at boot (Start=0) before the move",
                )),
                _ => {}
            }
        }
    }
    let emulated = |m: &Option<NicModel>| matches!(m, Some(NicModel::E1000 | NicModel::E1000e));
    if !vm.nics.is_empty() && vm.nics.iter().all(|n| emulated(&n.model)) {
        out.push(concern(
            "EmulatedNicsOnly",
            Severity::Info,
            format!(
                "all {} NICs are e1000/e1000e and stay emulated Intel NICs (slower than virtio-net)",
                vm.nics.len()
            ),
            "after the import, switch them to virtio once the guest has virtio-net drivers",
        ));
    }
}

fn disks(d: &VmRisk, out: &mut Vec<Concern>) {
    if d.snapshots {
        out.push(concern(
            "SnapshotsPresent",
            Severity::Warning,
            "the VM has snapshots; the import copies the current state and no snapshot".into(),
            "consolidate or delete the snapshots you need gone, or accept that they are not carried",
        ));
    }
    if d.encrypted {
        out.push(concern(
            "EncryptedVm",
            Severity::Critical,
            "the VM is encrypted (VM encryption key set); its disks cannot be exported in clear".into(),
            "decrypt the VM in vSphere before importing",
        ));
    }
    for disk in &d.disks {
        if disk.independent {
            out.push(concern(
                "IndependentDisk",
                Severity::Warning,
                format!(
                    "{} is independent; snapshots skip it, so a running VM's disk is copied as it changes",
                    disk.label
                ),
                "power the VM off before the import or make the disk dependent",
            ));
        }
        match disk.rdm.as_deref() {
            Some("physicalMode") => out.push(concern(
                "RawDeviceMapping",
                Severity::Critical,
                format!(
                    "{} is a physical-mode raw device mapping; it cannot be exported",
                    disk.label
                ),
                "migrate the LUN to a virtual disk (Storage vMotion) or detach it and attach the LUN to the new VM",
            )),
            Some(mode) => out.push(concern(
                "RawDeviceMapping",
                Severity::Warning,
                format!(
                    "{} is a raw device mapping ({mode}); its LUN is copied into an image",
                    disk.label
                ),
                "check that copying the LUN is intended",
            )),
            None => {}
        }
        if disk.shared {
            out.push(concern(
                "SharedDisk",
                Severity::Warning,
                format!(
                    "{} is shared (multi-writer or shared SCSI bus); the import gets a private copy",
                    disk.label
                ),
                "stop the other VMs using it, or import it once and attach it to the others by hand",
            ));
        }
        if matches!(disk.controller, ControllerKind::Usb | ControllerKind::Unknown) {
            out.push(concern(
                "UnsupportedController",
                Severity::Critical,
                format!(
                    "{} is on {:?}, which KubeVirt cannot offer as a boot-capable disk bus",
                    disk.label, disk.controller_class
                ),
                "move the disk to a SCSI, SATA or NVMe controller in vSphere",
            ));
        }
    }
}

fn cdroms(d: &VmRisk, out: &mut Vec<Concern>) {
    for cd in &d.cdroms {
        let what = match (&cd.iso, cd.connected) {
            (Some(iso), _) => format!("{} holds {iso}", cd.label),
            (None, true) => format!("{} is connected to a device", cd.label),
            (None, false) => continue,
        };
        out.push(concern(
            "CdromNotCarried",
            Severity::Warning,
            format!("{what}; CD-ROMs and their media are not carried"),
            "eject it, or attach the ISO to the new VM as a volume",
        ));
    }
}

fn firmware(vm: &SourceVm, out: &mut Vec<Concern>) {
    if vm.tpm {
        out.push(concern(
            "VtpmStateNotCarried",
            Severity::Warning,
            "the VM has a vTPM; the new VM gets an empty TPM (sealed keys such as BitLocker's are lost)"
                .into(),
            "suspend BitLocker / export sealed secrets before the move",
        ));
    }
    if vm.firmware == Firmware::Efi {
        if vm.secure_boot {
            out.push(concern(
                "SecureBootNeedsSmm",
                Severity::Info,
                "UEFI secure boot is on; the new VM gets EFI with secure boot and SMM".into(),
                "",
            ));
        } else {
            out.push(concern(
                "EfiFirmware",
                Severity::Info,
                "UEFI firmware; the new VM boots EFI (NVRAM boot entries are not carried)".into(),
                "",
            ));
        }
    }
}

fn target(vm: &SourceVm, facts: &RiskFacts, out: &mut Vec<Concern>) {
    let Some(existing) = &facts.namespace_vms else {
        return;
    };
    if existing.iter().any(|t| t.name == facts.target_name) {
        out.push(concern(
            "VirtualMachineExists",
            Severity::Critical,
            format!(
                "a VirtualMachine named {:?} already exists in the namespace",
                facts.target_name
            ),
            "delete or rename it, or import into another namespace",
        ));
    }
    for nic in &vm.nics {
        let Some(mac) = &nic.mac else { continue };
        for t in existing {
            if t.macs.iter().any(|m| m.eq_ignore_ascii_case(mac)) {
                out.push(concern(
                    "DuplicateMac",
                    Severity::Critical,
                    format!(
                        "MAC {mac} (network {:?}) is already used by VirtualMachine {:?} in the namespace",
                        nic.network, t.name
                    ),
                    "change one of the MACs, or remove the other VM first",
                ));
            }
        }
    }
}

fn scratch(vm: &SourceVm, facts: &RiskFacts, out: &mut Vec<Concern>) {
    let Some(space) = &facts.scratch else { return };
    let needed = facts.vm.as_ref().map_or_else(
        || vm.disks.iter().map(|d| d.capacity_bytes).sum(),
        VmRisk::bytes_to_write,
    );
    let usable = space.free_bytes.saturating_sub(space.reserved_bytes);
    if needed > usable {
        let reserve = if space.reserved_bytes == 0 {
            String::new()
        } else {
            format!(", of which {} are kept in reserve", bytes(space.reserved_bytes))
        };
        out.push(concern(
            "ScratchSpaceLow",
            Severity::Critical,
            format!(
                "the import writes {} ({needed} bytes) to {} which has {} ({} bytes) free{reserve}",
                bytes(needed),
                space.dir,
                bytes(space.free_bytes),
                space.free_bytes
            ),
            "free space there, grow the controller's volume, lower --image-dir-reserve, or import fewer VMs at once",
        ));
    }
}

fn probes(facts: &RiskFacts, out: &mut Vec<Concern>) {
    for p in &facts.probes {
        let (what, remedy) = match p.role {
            ProbeRole::Vcenter => ("vCenter", "open the port from the controller to vCenter"),
            ProbeRole::Esxi => (
                "ESXi host",
                "open ports 443 and 902 from the controller to the ESXi hosts serving the VM's disks",
            ),
        };
        match &p.outcome {
            ProbeOutcome::Open => {}
            ProbeOutcome::Unresolved(reason) => out.push(concern(
                "HostUnresolved",
                Severity::Warning,
                format!(
                    "{what} {} (port {}) does not resolve from the controller: {reason}",
                    p.host, p.port
                ),
                "register the host in vCenter by an address the controller resolves",
            )),
            ProbeOutcome::Failed(reason) => out.push(concern(
                if p.role == ProbeRole::Vcenter {
                    "VcenterUnreachable"
                } else {
                    "HostPortUnreachable"
                },
                Severity::Critical,
                format!("{what} {} port {}: {reason}", p.host, p.port),
                remedy,
            )),
        }
    }
}
