//! Nova (compute v2.1): servers, flavors in both shapes (a reference before microversion 2.47,
//! embedded after), addresses, volume attachments and the version document; and the decisions made on
//! them: which microversion to ask for, which listed server a name means, NICs merged by MAC, and
//! attached volumes in boot order.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use super::Microversion;

/// The microversion the client asks for when the server offers it: 2.79 has `description` (2.19),
/// the embedded flavor (2.47), `image_id` in the createImage answer (2.45) and
/// `delete_on_termination` on attachments (2.79). Older clouds get their maximum and both flavor
/// shapes are handled.
pub const PREFERRED_MICROVERSION: Microversion = Microversion(2, 79);

/// `GET /` of the compute endpoint (`{"version": {...}}`).
#[derive(Debug, Clone, Deserialize)]
pub struct VersionDocument {
    /// The version.
    pub version: Version,
}

/// One API version.
#[derive(Debug, Clone, Deserialize)]
pub struct Version {
    /// Highest microversion (`""` when the API has none).
    #[serde(default)]
    pub version: String,
    /// Lowest microversion.
    #[serde(default)]
    pub min_version: String,
}

/// The microversion to use with a server whose maximum is `max` (`None`: no microversions, 2.1).
pub fn choose_microversion(max: Option<Microversion>) -> Microversion {
    match max {
        Some(max) if max < PREFERRED_MICROVERSION => max,
        Some(_) => PREFERRED_MICROVERSION,
        None => Microversion(2, 1),
    }
}

/// `GET /servers?name=...` (`{"servers": [{id, name}]}`).
#[derive(Debug, Clone, Deserialize)]
pub struct ServerList {
    /// The servers.
    pub servers: Vec<ServerRef>,
}

/// A server in a list.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ServerRef {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
}

/// Why a name or id does not designate exactly one server.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// No server has this exact name (the list filter is a regular expression, so near matches
    /// are not counted).
    #[error("no server named '{name}' in the project")]
    NotFound {
        /// The name.
        name: String,
    },
    /// Names are not unique in Nova.
    #[error("{count} servers are named '{name}' ({ids}); use the server's id instead")]
    Ambiguous {
        /// The name.
        name: String,
        /// How many.
        count: usize,
        /// Their ids.
        ids: String,
    },
}

/// The one server in `list` whose name is exactly `name`. Nova's `name` filter is a regular
/// expression match, so `web` also returns `web01`: only exact names count.
///
/// # Errors
/// [`LookupError`].
pub fn exact_unique<'a>(list: &'a [ServerRef], name: &str) -> Result<&'a ServerRef, LookupError> {
    let hits: Vec<&ServerRef> = list.iter().filter(|s| s.name == name).collect();
    match hits.as_slice() {
        [one] => Ok(one),
        [] => Err(LookupError::NotFound { name: name.into() }),
        many => Err(LookupError::Ambiguous {
            name: name.into(),
            count: many.len(),
            ids: many.iter().map(|s| s.id.as_str()).collect::<Vec<_>>().join(", "),
        }),
    }
}

/// Whether `text` looks like a server id (a UUID, with or without dashes), as upstream decides
/// between a lookup by id and by name.
pub fn is_uuid(text: &str) -> bool {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    let dashes_ok =
        text.len() == 32 || (text.len() == 36 && [8, 13, 18, 23].iter().all(|&i| text.as_bytes()[i] == b'-'));
    dashes_ok && hex.len() == 32 && hex.chars().all(|c| c.is_ascii_hexdigit())
}

/// `GET /servers/{id}` (`{"server": {...}}`).
#[derive(Debug, Clone, Deserialize)]
pub struct ServerResponse {
    /// The server.
    pub server: Server,
}

/// The fields of a server the importer reads.
#[derive(Debug, Clone, Deserialize)]
pub struct Server {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// `ACTIVE`, `SHUTOFF`, `ERROR`, ...
    pub status: String,
    /// The project.
    #[serde(default)]
    pub tenant_id: String,
    /// Free text (2.19+; `null` when unset).
    #[serde(default)]
    pub description: Option<String>,
    /// The flavor, as a reference or embedded.
    pub flavor: FlavorField,
    /// The image it booted from; `""` for a server booted from a volume.
    #[serde(default, deserialize_with = "image_ref")]
    pub image: Option<String>,
    /// Network name to addresses.
    #[serde(default)]
    pub addresses: BTreeMap<String, Vec<Address>>,
    /// Attached volumes (no device names; see `os-volume_attachments`).
    #[serde(default, rename = "os-extended-volumes:volumes_attached")]
    pub volumes_attached: Vec<AttachedVolume>,
    /// Task in progress (`powering-off`, `image_uploading`, ...), `null` when idle.
    #[serde(default, rename = "OS-EXT-STS:task_state")]
    pub task_state: Option<String>,
    /// User metadata.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// `image` is `""` for boot-from-volume servers and `{"id": ..}` otherwise.
fn image_ref<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Field {
        Ref { id: String },
        // `""` for a server booted from a volume: its content does not matter.
        Text(serde::de::IgnoredAny),
    }
    Ok(match Option::<Field>::deserialize(d)? {
        Some(Field::Ref { id }) if !id.is_empty() => Some(id),
        _ => None,
    })
}

/// A server's flavor: before 2.47 only a reference, from 2.47 the flavor itself (without id).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum FlavorField {
    /// 2.47+.
    Embedded(EmbeddedFlavor),
    /// Before 2.47: fetch `GET /flavors/{id}`.
    Reference {
        /// The flavor id.
        id: String,
    },
}

/// The flavor as embedded in a server (2.47+).
#[derive(Debug, Clone, Deserialize)]
pub struct EmbeddedFlavor {
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub ram: u64,
    /// Root disk in GiB (0: the image's size).
    #[serde(default)]
    pub disk: u64,
    /// Name of the flavor at boot time.
    #[serde(default)]
    pub original_name: String,
    /// Extra specs (`hw:cpu_sockets`, ...).
    #[serde(default)]
    pub extra_specs: BTreeMap<String, String>,
}

/// `GET /flavors/{id}` (`{"flavor": {...}}`).
#[derive(Debug, Clone, Deserialize)]
pub struct FlavorResponse {
    /// The flavor.
    pub flavor: Flavor,
}

/// A flavor as `GET /flavors/{id}` shows it.
#[derive(Debug, Clone, Deserialize)]
pub struct Flavor {
    /// Id.
    pub id: String,
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub ram: u64,
    /// Root disk in GiB.
    #[serde(default)]
    pub disk: u64,
    /// Extra specs (2.61+ only).
    #[serde(default)]
    pub extra_specs: BTreeMap<String, String>,
}

/// One address of a server on a network.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Address {
    /// The IP.
    pub addr: String,
    /// 4 or 6.
    #[serde(default)]
    pub version: u8,
    /// The port's MAC.
    #[serde(default, rename = "OS-EXT-IPS-MAC:mac_addr")]
    pub mac: Option<String>,
    /// `fixed` or `floating`.
    #[serde(default, rename = "OS-EXT-IPS:type")]
    pub kind: Option<String>,
}

/// A volume in `os-extended-volumes:volumes_attached`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AttachedVolume {
    /// The volume id.
    pub id: String,
}

/// `GET /servers/{id}/os-volume_attachments`.
#[derive(Debug, Clone, Deserialize)]
pub struct AttachmentList {
    /// The attachments.
    #[serde(rename = "volumeAttachments")]
    pub attachments: Vec<VolumeAttachment>,
}

/// Where a volume is attached.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct VolumeAttachment {
    /// The volume.
    #[serde(rename = "volumeId")]
    pub volume_id: String,
    /// The guest device, e.g. `/dev/vda` (may be null on some hypervisors).
    #[serde(default)]
    pub device: Option<String>,
}

/// One NIC of a server: every address of one MAC on one network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Nic {
    /// The network's name.
    pub network: String,
    /// The MAC (lower case); `None` when Nova does not show it.
    pub mac: Option<String>,
    /// Fixed and floating IPs, IPv4 first.
    pub addresses: Vec<String>,
}

/// NICs from `addresses`: a port with IPv4 and IPv6 appears twice with one MAC, so entries are
/// merged by (network, MAC); entries without a MAC stay separate. Ordered by network, then MAC.
pub fn merge_nics(addresses: &BTreeMap<String, Vec<Address>>) -> Vec<Nic> {
    let mut nics: Vec<Nic> = Vec::new();
    for (network, entries) in addresses {
        let mut sorted: Vec<&Address> = entries.iter().collect();
        sorted.sort_by_key(|a| a.version);
        for address in sorted {
            let mac = address.mac.as_ref().map(|m| m.to_ascii_lowercase());
            let existing = nics
                .iter_mut()
                .find(|n| mac.is_some() && n.network == *network && n.mac == mac);
            match existing {
                Some(nic) => {
                    if !nic.addresses.contains(&address.addr) {
                        nic.addresses.push(address.addr.clone());
                    }
                }
                None => nics.push(Nic {
                    network: network.clone(),
                    mac,
                    addresses: vec![address.addr.clone()],
                }),
            }
        }
    }
    nics
}

/// Sort key for a device name: `/dev/vda` < `/dev/vdb` < `/dev/vdz` < `/dev/vdaa`, whatever the
/// prefix (`vd`, `sd`, `xvd`, `hd`); no device sorts last.
pub fn device_order_key(device: Option<&str>) -> (u8, usize, String) {
    let Some(device) = device else {
        return (1, 0, String::new());
    };
    let name = device.rsplit('/').next().unwrap_or(device);
    // The letters after the bus prefix decide the order: shorter first, then alphabetical.
    let suffix = ["xvd", "vd", "sd", "hd"]
        .iter()
        .find_map(|p| name.strip_prefix(p))
        .unwrap_or(name);
    (0, suffix.len(), suffix.to_owned())
}

/// Volumes in boot order: the bootable volume holding the root device first (the lowest device
/// name among bootable volumes), then the rest by device name. `volumes` pairs each attachment with
/// whether its volume is bootable.
pub fn boot_order(mut volumes: Vec<(VolumeAttachment, bool)>) -> Vec<(VolumeAttachment, bool)> {
    volumes.sort_by(|(a, _), (b, _)| {
        device_order_key(a.device.as_deref()).cmp(&device_order_key(b.device.as_deref()))
    });
    // The first device is the root device. When it is not bootable but another volume is, and the
    // first device is not the `a` disk (an image-backed server owns `a` and has data volumes from
    // `b` on), the bootable volume is where the server boots from: move it up.
    if let Some(first_bootable) = volumes.iter().position(|(_, bootable)| *bootable)
        && first_bootable != 0
        && volumes[0].0.device.as_deref().is_none_or(|d| !d.ends_with('a'))
    {
        let root = volumes.remove(first_bootable);
        volumes.insert(0, root);
    }
    volumes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(json: serde_json::Value) -> Server {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn both_flavor_shapes_and_both_image_shapes_decode() {
        let old = server(serde_json::json!({"id": "s", "name": "n", "status": "ACTIVE",
            "flavor": {"id": "f1", "links": []}, "image": ""}));
        assert!(matches!(old.flavor, FlavorField::Reference { ref id } if id == "f1"));
        assert_eq!(old.image, None);
        let new = server(
            serde_json::json!({"id": "s", "name": "n", "status": "SHUTOFF", "description": null,
            "flavor": {"vcpus": 4, "ram": 8192, "disk": 20, "ephemeral": 0, "swap": 0, "original_name": "m1.large",
                       "extra_specs": {"hw:cpu_sockets": "2"}},
            "image": {"id": "img", "links": []}}),
        );
        assert!(
            matches!(new.flavor, FlavorField::Embedded(ref f) if f.vcpus == 4 && f.original_name == "m1.large")
        );
        assert_eq!(new.image.as_deref(), Some("img"));
    }

    #[test]
    fn old_flavors_with_empty_swap_decode() {
        let f: FlavorResponse = serde_json::from_value(serde_json::json!({"flavor": {
            "id": "f", "name": "m1", "vcpus": 1, "ram": 512, "disk": 1, "swap": ""}}))
        .unwrap();
        assert_eq!(f.flavor.ram, 512);
    }

    #[test]
    fn names_must_match_exactly_once() {
        let list = vec![
            ServerRef {
                id: "1".into(),
                name: "web".into(),
            },
            ServerRef {
                id: "2".into(),
                name: "web01".into(),
            },
            ServerRef {
                id: "3".into(),
                name: "db".into(),
            },
            ServerRef {
                id: "4".into(),
                name: "db".into(),
            },
        ];
        assert_eq!(exact_unique(&list, "web").unwrap().id, "1");
        assert_eq!(
            exact_unique(&list, "we").unwrap_err(),
            LookupError::NotFound { name: "we".into() }
        );
        assert_eq!(
            exact_unique(&list, "db").unwrap_err().to_string(),
            "2 servers are named 'db' (3, 4); use the server's id instead"
        );
    }

    #[test]
    fn uuids_are_recognised_with_and_without_dashes() {
        assert!(is_uuid("b52f9ed3-f52a-4062-bb22-f9e847fde235"));
        assert!(is_uuid("b52f9ed3f52a4062bb22f9e847fde235"));
        assert!(!is_uuid("b52f9ed3-f52a-4062-bb22-f9e847fde23"));
        assert!(!is_uuid("web01"));
        assert!(!is_uuid("b52f9ed3-f52a-4062-bb22-f9e847fde23g"));
        assert!(!is_uuid("b52f9ed3f-52a-4062-bb22-f9e847fde235"));
    }

    #[test]
    fn dual_stack_addresses_merge_by_mac() {
        let addresses: BTreeMap<String, Vec<Address>> = serde_json::from_value(serde_json::json!({
            "net1": [
                {"addr": "fd00::5", "version": 6, "OS-EXT-IPS-MAC:mac_addr": "FA:16:3E:00:00:01", "OS-EXT-IPS:type": "fixed"},
                {"addr": "10.0.0.5", "version": 4, "OS-EXT-IPS-MAC:mac_addr": "fa:16:3e:00:00:01", "OS-EXT-IPS:type": "fixed"},
                {"addr": "10.0.0.6", "version": 4, "OS-EXT-IPS-MAC:mac_addr": "fa:16:3e:00:00:02"}],
            "net2": [{"addr": "192.168.1.1", "version": 4, "OS-EXT-IPS-MAC:mac_addr": "fa:16:3e:00:00:01"}]
        }))
        .unwrap();
        let nics = merge_nics(&addresses);
        assert_eq!(nics.len(), 3);
        assert_eq!(nics[0].mac.as_deref(), Some("fa:16:3e:00:00:01"));
        assert_eq!(nics[0].addresses, ["10.0.0.5", "fd00::5"]);
        assert_eq!(nics[1].addresses, ["10.0.0.6"]);
        assert_eq!(
            nics[2].network, "net2",
            "the same MAC on another network is another NIC"
        );
    }

    #[test]
    fn devices_sort_like_the_kernel_names_them() {
        let mut devices = vec!["/dev/vdaa", "/dev/vdc", "/dev/vda", "/dev/vdb"];
        devices.sort_by_key(|d| device_order_key(Some(d)));
        assert_eq!(devices, ["/dev/vda", "/dev/vdb", "/dev/vdc", "/dev/vdaa"]);
        assert!(device_order_key(Some("/dev/sdz")) < device_order_key(None));
    }

    #[test]
    fn the_boot_volume_comes_first() {
        let att = |id: &str, dev: &str| VolumeAttachment {
            volume_id: id.into(),
            device: Some(dev.into()),
        };
        let order = boot_order(vec![
            (att("data", "/dev/vdb"), false),
            (att("root", "/dev/vda"), true),
        ]);
        let ids: Vec<&str> = order.iter().map(|(a, _)| a.volume_id.as_str()).collect();
        assert_eq!(ids, ["root", "data"]);
        // Devices without the root letter: the bootable one still leads.
        let order = boot_order(vec![
            (att("data", "/dev/sdb"), false),
            (att("root", "/dev/sdc"), true),
        ]);
        assert_eq!(order[0].0.volume_id, "root");
    }

    #[test]
    fn microversion_choice_caps_at_the_preferred_one() {
        assert_eq!(
            choose_microversion(Some(Microversion(2, 96))),
            PREFERRED_MICROVERSION
        );
        assert_eq!(
            choose_microversion(Some(Microversion(2, 46))),
            Microversion(2, 46)
        );
        assert_eq!(choose_microversion(None), Microversion(2, 1));
    }
}
