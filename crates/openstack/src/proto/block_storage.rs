//! Cinder (block-storage v3): volumes, snapshots and `os-volume_upload_image`, as the export uses
//! them (snapshot of the attached volume -> volume from the snapshot -> upload of that volume to
//! Glance as raw).

use std::collections::BTreeMap;

use crate::proto::image::DiskFormat;
use serde::{Deserialize, Deserializer, Serialize};

/// Bytes in a GiB: Cinder sizes are whole GiB.
pub const GIB: u64 = 1 << 30;

/// `{"volume": {...}}`.
#[derive(Debug, Clone, Deserialize)]
pub struct VolumeResponse {
    /// The volume.
    pub volume: Volume,
}

/// `{"volumes": [...]}` (`GET /volumes/detail`).
#[derive(Debug, Clone, Deserialize)]
pub struct VolumeList {
    /// The volumes.
    pub volumes: Vec<Volume>,
}

/// A volume.
#[derive(Debug, Clone, Deserialize)]
pub struct Volume {
    /// Id.
    pub id: String,
    /// Name (may be null).
    #[serde(default)]
    pub name: Option<String>,
    /// Size in GiB.
    pub size: u64,
    /// `creating`, `available`, `in-use`, `uploading`, `error`, `deleting`, ...
    pub status: String,
    /// Cinder sends `"true"`/`"false"` strings; some deployments send booleans.
    #[serde(default, deserialize_with = "bool_or_string")]
    pub bootable: bool,
    /// For a volume made from an image: that image's id, name and properties (`hw_firmware_type`, ...).
    #[serde(default)]
    pub volume_image_metadata: BTreeMap<String, String>,
    /// The snapshot it was made from.
    #[serde(default)]
    pub snapshot_id: Option<String>,
}

fn bool_or_string<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Field {
        Bool(bool),
        Text(String),
    }
    Ok(match Option::<Field>::deserialize(d)? {
        Some(Field::Bool(b)) => b,
        Some(Field::Text(t)) => t.eq_ignore_ascii_case("true"),
        None => false,
    })
}

/// `{"snapshot": {...}}`.
#[derive(Debug, Clone, Deserialize)]
pub struct SnapshotResponse {
    /// The snapshot.
    pub snapshot: Snapshot,
}

/// `{"snapshots": [...]}`.
#[derive(Debug, Clone, Deserialize)]
pub struct SnapshotList {
    /// The snapshots.
    pub snapshots: Vec<Snapshot>,
}

/// A snapshot.
#[derive(Debug, Clone, Deserialize)]
pub struct Snapshot {
    /// Id.
    pub id: String,
    /// Name.
    #[serde(default)]
    pub name: Option<String>,
    /// `creating`, `available`, `error`, `deleting`, ...
    pub status: String,
    /// Size in GiB.
    pub size: u64,
    /// The volume it is of.
    pub volume_id: String,
}

/// The body of `POST /snapshots`. `force` is needed for an attached (`in-use`) volume.
pub fn create_snapshot(volume_id: &str, name: &str) -> serde_json::Value {
    serde_json::json!({"snapshot": {
        "volume_id": volume_id, "name": name, "force": true,
        "description": "temporary snapshot of vm-import; deleted when the export ends",
    }})
}

/// The body of `POST /volumes` from a snapshot.
pub fn create_volume_from_snapshot(snapshot_id: &str, size_gib: u64, name: &str) -> serde_json::Value {
    serde_json::json!({"volume": {
        "snapshot_id": snapshot_id, "size": size_gib, "name": name,
        "description": "temporary volume of vm-import; deleted when the export ends",
    }})
}

/// The body of `os-volume_upload_image` in `disk_format`: qcow2 makes Cinder convert the volume
/// (with qemu-img, on its host), so the image and its download hold only the allocated data; raw
/// is the volume's bytes, every one of them (upstream's choice since v1.5).
pub fn upload_to_image(image_name: &str, disk_format: DiskFormat) -> serde_json::Value {
    serde_json::json!({"os-volume_upload_image": {
        "image_name": image_name, "disk_format": disk_format.as_str(), "container_format": "bare", "force": false,
    }})
}

/// The answer of `os-volume_upload_image`.
#[derive(Debug, Clone, Deserialize)]
pub struct UploadResponse {
    /// The details.
    #[serde(rename = "os-volume_upload_image")]
    pub upload: Upload,
}

/// The image an upload goes to.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Upload {
    /// The Glance image's id.
    pub image_id: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootable_decodes_from_strings_and_booleans() {
        for (json, bootable) in [
            (r#""true""#, true),
            (r#""false""#, false),
            ("true", true),
            ("null", false),
        ] {
            let v: Volume = serde_json::from_str(&format!(
                r#"{{"id": "v", "size": 1, "status": "available", "bootable": {json}}}"#
            ))
            .unwrap();
            assert_eq!(v.bootable, bootable, "{json}");
        }
    }

    #[test]
    fn upload_asks_for_the_given_format_and_is_never_forced() {
        let body = upload_to_image("img", DiskFormat::Raw);
        assert_eq!(body["os-volume_upload_image"]["disk_format"], "raw");
        let body = upload_to_image("img", DiskFormat::Qcow2);
        assert_eq!(body["os-volume_upload_image"]["disk_format"], "qcow2");
        assert_eq!(body["os-volume_upload_image"]["force"], false);
        assert_eq!(create_snapshot("v", "s")["snapshot"]["force"], true);
    }
}
