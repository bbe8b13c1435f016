//! The source-neutral VM model: what a source (vSphere inventory, OpenStack server, OVF envelope) says
//! about a VM, in the terms the builders need. Sources fill it; nothing here knows a source's API.

use api::NicModel;

/// Firmware of the source VM.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Firmware {
    /// Legacy BIOS.
    #[default]
    Bios,
    /// UEFI.
    Efi,
}

/// Kind of the controller a disk hangs off, as the source reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ControllerKind {
    /// LSI Logic / BusLogic / LSI SAS parallel SCSI.
    Scsi,
    /// VMware paravirtual SCSI (no KubeVirt equivalent; guests reliably have AHCI drivers).
    ParaVirtualScsi,
    /// AHCI SATA.
    Sata,
    /// IDE.
    Ide,
    /// NVMe.
    Nvme,
    /// USB.
    Usb,
    /// virtio (OpenStack/KVM sources).
    Virtio,
    /// The source did not say.
    #[default]
    Unknown,
}

/// One disk of the source VM.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceDisk {
    /// Controller kind.
    pub controller: ControllerKind,
    /// Controller bus number (e.g. the 0 of `scsi0:1`).
    pub bus: u32,
    /// Unit on that controller (the 1 of `scsi0:1`).
    pub unit: u32,
    /// Virtual size in bytes.
    pub capacity_bytes: u64,
    /// Position in the source's boot order (1 = first), when the source has one.
    pub boot_order: Option<u32>,
}

/// One NIC of the source VM.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceNic {
    /// The NIC's model in KubeVirt terms, when the source type has an equivalent.
    pub model: Option<NicModel>,
    /// MAC address as the source reports it.
    pub mac: Option<String>,
    /// Network / port-group name.
    pub network: String,
    /// Distributed switch name, when the port group belongs to one.
    pub switch: Option<String>,
}

/// What a source says about a VM.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceVm {
    /// Name at the source (not sanitised).
    pub name: String,
    /// Total vCPUs.
    pub cpus: u32,
    /// Cores per socket (0 or 1 when the source has no topology).
    pub cores_per_socket: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Firmware.
    pub firmware: Firmware,
    /// UEFI secure boot enabled.
    pub secure_boot: bool,
    /// A virtual TPM is present.
    pub tpm: bool,
    /// Disks, in the source's device order.
    pub disks: Vec<SourceDisk>,
    /// NICs, in the source's device order.
    pub nics: Vec<SourceNic>,
    /// Free-text description, if any.
    pub description: Option<String>,
}
