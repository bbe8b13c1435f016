//! The VM description extracted from an OVF envelope: the hardware a target VM needs (CPUs, memory,
//! firmware, disks with their bus, NICs, CD-ROMs) and the archive files holding the disks.
//!
//! Plain serde data (it is written out as `vm.json`); producing it is [`crate::ovf`]'s job, mapping it
//! to KubeVirt is the controller's.

use serde::{Deserialize, Serialize};

/// Everything the importer needs to recreate one virtual system.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct VmDescription {
    /// `VirtualSystem/Name`, else its `ovf:id`.
    pub name: String,
    /// Envelope version (from the envelope namespace).
    pub ovf_version: OvfVersion,
    /// Guest OS: `vmw:osType` when present, else the `OperatingSystemSection` description.
    pub guest_os: Option<String>,
    /// `vssd:VirtualSystemType`, e.g. `vmx-13` or `virtualbox-2.2`.
    pub system_type: Option<String>,
    /// Virtual CPUs (sockets × cores).
    pub cpus: u32,
    /// `vmw:CoresPerSocket`, when given.
    pub cores_per_socket: Option<u32>,
    /// Memory in MiB (rounded up).
    pub memory_mib: u64,
    /// Boot firmware.
    pub firmware: Firmware,
    /// UEFI secure boot enabled.
    pub secure_boot: bool,
    /// A virtual TPM is present.
    pub tpm: bool,
    /// Disks in hardware-section order (disks in `DiskSection` not attached to any controller last).
    pub disks: Vec<Disk>,
    /// CD/DVD drives.
    pub cdroms: Vec<CdRom>,
    /// Network adapters in hardware-section order.
    pub nics: Vec<Nic>,
    /// Every `References/File`, in order (the order the members appear in a conforming OVA).
    pub files: Vec<FileReference>,
}

/// OVF envelope version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OvfVersion {
    /// OVF 1.x (`http://schemas.dmtf.org/ovf/envelope/1`), VMware's.
    #[serde(rename = "1")]
    V1,
    /// OVF 2.x (`http://schemas.dmtf.org/ovf/envelope/2`), e.g. VirtualBox's "OVF 2.0" export.
    #[serde(rename = "2")]
    V2,
}

/// Boot firmware.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    /// Legacy BIOS (the OVF default).
    #[default]
    Bios,
    /// UEFI.
    Efi,
}

/// A `References/File` entry: an archive member (or, if `chunk_size` is set, several).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct FileReference {
    /// `ovf:id`.
    pub id: String,
    /// `ovf:href`: the member name in the OVA.
    pub href: String,
    /// `ovf:size`: bytes as stored (compressed size when compressed).
    pub size: Option<u64>,
    /// `ovf:compression`.
    pub compression: Option<Compression>,
    /// `ovf:chunkSize`: the file is split into members `href.000000000`, `href.000000001`, ...
    pub chunk_size: Option<u64>,
}

impl FileReference {
    /// Whether the archive member `name` holds (part of) this file: `Some(0)` for `href` itself, or
    /// `Some(i)` for chunk `href.<i as 9 digits>` when the file is split with `ovf:chunkSize`.
    pub fn chunk_index(&self, name: &str) -> Option<u64> {
        if self.chunk_size.is_none() {
            return (name == self.href).then_some(0);
        }
        let suffix = name.strip_prefix(self.href.as_str())?.strip_prefix('.')?;
        if suffix.len() != 9 || !suffix.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        suffix.parse().ok()
    }
}

/// Compression of a referenced file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// `ovf:compression="gzip"`.
    Gzip,
}

/// A virtual disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Disk {
    /// `ovf:diskId`.
    pub disk_id: String,
    /// The file holding the disk image; `None` for a blank disk to be created empty.
    pub file: Option<FileReference>,
    /// Virtual capacity in bytes.
    pub capacity_bytes: u64,
    /// `ovf:populatedSize`: bytes of guest data, when given.
    pub populated_size: Option<u64>,
    /// `ovf:format` URI (e.g. `...vmdk.html#streamOptimized`).
    pub format: Option<String>,
    /// The controller the disk hangs on, if an item attaches it.
    pub controller: Option<Controller>,
    /// `AddressOnParent`: unit number on the controller.
    pub unit: Option<u32>,
}

/// A storage controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Controller {
    /// Bus family.
    pub kind: ControllerKind,
    /// Normalised model: `lsilogic`, `lsilogicsas`, `buslogic`, `pvscsi`, `ahci`, `piix4`, `nvme`, ...
    pub model: Option<String>,
    /// `Address`: the controller's bus number, when given.
    pub bus: Option<u32>,
    /// `InstanceID` of the controller item.
    pub instance_id: String,
}

/// Storage bus family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum ControllerKind {
    /// Parallel SCSI / SAS (ResourceType 6).
    Scsi,
    /// SATA / AHCI (ResourceType 20 with an AHCI subtype).
    Sata,
    /// IDE (ResourceType 5).
    Ide,
    /// NVMe (ResourceType 20 with an NVMe subtype).
    Nvme,
    /// Anything else (FC, iSCSI, unknown "other storage").
    Other,
}

/// A network adapter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Nic {
    /// `ElementName`, e.g. `Network adapter 1`.
    pub name: Option<String>,
    /// `Connection`: the OVF network name.
    pub network: Option<String>,
    /// Adapter model.
    pub model: NicModel,
    /// MAC address (lower case, colon separated), when the OVF carries one.
    pub mac: Option<String>,
}

/// Network adapter model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum NicModel {
    /// Intel E1000.
    E1000,
    /// Intel E1000e.
    E1000e,
    /// VMware vmxnet3.
    Vmxnet3,
    /// virtio-net.
    Virtio,
    /// AMD PCnet32.
    Pcnet32,
    /// Unknown or absent subtype, as written.
    Other(String),
}

/// A CD/DVD drive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CdRom {
    /// The controller, if the item names one.
    pub controller: Option<Controller>,
    /// Unit on the controller.
    pub unit: Option<u32>,
    /// The ISO in the archive, if the drive is backed by a referenced file.
    pub file: Option<FileReference>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_index_matches_plain_and_split_members() {
        let mut f = FileReference {
            id: "file1".into(),
            href: "disk1.vmdk".into(),
            size: None,
            compression: None,
            chunk_size: None,
        };
        assert_eq!(f.chunk_index("disk1.vmdk"), Some(0));
        assert_eq!(f.chunk_index("disk1.vmdk.000000000"), None);
        f.chunk_size = Some(1 << 30);
        assert_eq!(f.chunk_index("disk1.vmdk"), None);
        assert_eq!(f.chunk_index("disk1.vmdk.000000000"), Some(0));
        assert_eq!(f.chunk_index("disk1.vmdk.000000012"), Some(12));
        assert_eq!(f.chunk_index("disk1.vmdk.12"), None);
        assert_eq!(f.chunk_index("disk1.vmdkx000000001"), None);
    }
}
