//! Glance v2 images: status, format, size and the hashes a download is verified against.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// An image (`GET /v2/images/{id}`). Glance puts custom properties (`hw_firmware_type`, ...) at the
/// top level; they are collected into `properties` as strings.
#[derive(Debug, Clone, Deserialize)]
pub struct Image {
    /// Id.
    pub id: String,
    /// Name.
    #[serde(default)]
    pub name: Option<String>,
    /// `queued`, `saving`, `active`, `killed`, `deleted`, `pending_delete`, `deactivated`, `uploading`, `importing`.
    pub status: String,
    /// `raw`, `qcow2`, ... (null while queued).
    #[serde(default)]
    pub disk_format: Option<String>,
    /// Bytes of data (null until uploaded).
    #[serde(default)]
    pub size: Option<u64>,
    /// Hash algorithm of `os_hash_value` (`sha512` by default).
    #[serde(default)]
    pub os_hash_algo: Option<String>,
    /// Hex digest of the data.
    #[serde(default)]
    pub os_hash_value: Option<String>,
    /// The disk size the data describes (a qcow2's virtual size), when Glance computed it.
    #[serde(default)]
    pub virtual_size: Option<u64>,
    /// Everything else, including the custom properties.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

impl Image {
    /// Custom properties with string values (`hw_firmware_type`, `os_secure_boot`, `hw_tpm_model`, ...).
    pub fn properties(&self) -> BTreeMap<String, String> {
        self.other
            .iter()
            .filter(|(k, _)| k.starts_with("hw_") || k.starts_with("os_") || k.starts_with("img_"))
            .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned())))
            .collect()
    }

    /// Whether the data is there and final.
    pub fn is_active(&self) -> bool {
        self.status == "active"
    }

    /// Whether the image can never become active.
    pub fn is_failed(&self) -> bool {
        matches!(
            self.status.as_str(),
            "killed" | "deleted" | "pending_delete" | "deactivated"
        )
    }
}

/// How a disk image's bytes come out of Glance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    /// The disk's bytes as they are.
    Raw,
    /// qcow2, decoded by `diskconv` (needs random access: staged in a file first).
    Qcow2,
}

impl DiskFormat {
    /// Glance's name of the format.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Raw => "raw",
            Self::Qcow2 => "qcow2",
        }
    }

    /// From Glance's `disk_format`; `None` for formats the importer does not decode.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "raw" => Some(Self::Raw),
            "qcow2" => Some(Self::Qcow2),
            _ => None,
        }
    }
}

/// Firmware wishes an image's properties express (what Nova would give the guest).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Firmware {
    /// `hw_firmware_type=uefi`.
    pub uefi: bool,
    /// `os_secure_boot` is `required` or `optional` (upstream: secure boot implies UEFI).
    pub secure_boot: bool,
    /// `hw_tpm_model` or `hw_tpm_version` is set.
    pub tpm: bool,
}

impl Firmware {
    /// Reads the properties of the image a server or its boot volume came from.
    pub fn from_properties(properties: &BTreeMap<String, String>) -> Self {
        let secure_boot = properties
            .get("os_secure_boot")
            .is_some_and(|v| matches!(v.as_str(), "required" | "optional"));
        Self {
            uefi: secure_boot || properties.get("hw_firmware_type").is_some_and(|v| v == "uefi"),
            secure_boot,
            tpm: properties.contains_key("hw_tpm_model") || properties.contains_key("hw_tpm_version"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_and_hashes_decode() {
        let image: Image = serde_json::from_value(serde_json::json!({
            "id": "i", "name": "n", "status": "active", "disk_format": "qcow2", "size": 10,
            "os_hash_algo": "sha512", "os_hash_value": "ab", "checksum": "cd",
            "hw_firmware_type": "uefi", "os_secure_boot": "required", "hw_tpm_model": "tpm-crb",
            "tags": [], "visibility": "private"}))
        .unwrap();
        assert!(image.is_active());
        let props = image.properties();
        assert_eq!(props.get("hw_firmware_type").map(String::as_str), Some("uefi"));
        assert!(!props.contains_key("visibility"));
        let fw = Firmware::from_properties(&props);
        assert_eq!(
            fw,
            Firmware {
                uefi: true,
                secure_boot: true,
                tpm: true
            }
        );
    }

    #[test]
    fn secure_boot_implies_uefi_and_disabled_is_off() {
        let props = |k: &str, v: &str| BTreeMap::from([(k.to_owned(), v.to_owned())]);
        assert!(Firmware::from_properties(&props("os_secure_boot", "optional")).uefi);
        assert_eq!(
            Firmware::from_properties(&props("os_secure_boot", "disabled")),
            Firmware::default()
        );
    }
}
