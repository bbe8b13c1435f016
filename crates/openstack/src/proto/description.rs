//! What an inspect says about a server: hardware, firmware wishes, disks in boot order and where
//! each one's bytes come from, NICs. Serialisable (the CLI prints it, a controller can keep it).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{compute::Nic, image::Firmware};

/// A server as the importer sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerDescription {
    /// Nova's id.
    pub id: String,
    /// Name.
    pub name: String,
    /// `ACTIVE`, `SHUTOFF`, ...
    pub status: String,
    /// The project it lives in.
    pub project_id: String,
    /// Nova's free-text description (microversion 2.19+).
    pub description: Option<String>,
    /// CPU and memory.
    pub flavor: FlavorInfo,
    /// From the properties of the image the server (or its boot volume) came from.
    pub firmware: Firmware,
    /// Those properties (`hw_disk_bus`, `hw_vif_model`, `hw_firmware_type`, ...).
    pub image_properties: BTreeMap<String, String>,
    /// Disks in boot order: the root disk first.
    pub disks: Vec<Disk>,
    /// NICs, merged by MAC.
    pub nics: Vec<NicInfo>,
    /// The compute microversion the description was read with.
    pub microversion: String,
}

/// The flavor's sizes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlavorInfo {
    /// Name (the original name for an embedded flavor).
    pub name: String,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub ram_mib: u64,
    /// Root disk in GiB (0: as big as the image).
    pub disk_gib: u64,
    /// Extra specs, when Nova shows them.
    pub extra_specs: BTreeMap<String, String>,
}

/// One disk of the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Disk {
    /// Guest device (`/dev/vda`), when known.
    pub device: Option<String>,
    /// Capacity in bytes as the cloud states it (a volume's GiB, a flavor's root GiB); 0 when only
    /// the exported image will tell.
    pub capacity_bytes: u64,
    /// Whether the server boots from it.
    pub bootable: bool,
    /// Where the bytes come from.
    pub source: DiskSource,
}

/// How a disk is exported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum DiskSource {
    /// A Cinder volume: snapshot, volume from the snapshot, upload to Glance as raw, download.
    #[serde(rename_all = "camelCase")]
    Volume {
        /// The attached volume.
        volume_id: String,
        /// Its name.
        name: Option<String>,
        /// Its size in GiB.
        size_gib: u64,
    },
    /// The root disk of an image-backed server (on the compute host): Nova's createImage, download.
    #[serde(rename_all = "camelCase")]
    ServerImage {
        /// The Glance image it booted from (the snapshot holds the disk as it is now, not that image).
        base_image_id: Option<String>,
    },
}

/// A NIC with the Neutron port behind it, when the network service is there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NicInfo {
    /// Addresses, MAC and network name from Nova.
    #[serde(flatten)]
    pub nic: Nic,
    /// Neutron's network id.
    pub network_id: Option<String>,
    /// Neutron's port id.
    pub port_id: Option<String>,
}
