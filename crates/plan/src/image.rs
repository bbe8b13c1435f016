//! The Harvester `VirtualMachineImage` (one per disk) and, for the backing-image backend, the PVC the
//! VM mounts, shaped exactly as upstream (§3.7–3.8 of the reference): `generateName: image-`, the
//! `imported` and `imageDisplayName` labels, the storage-class annotation, `sourceType: download` from
//! the controller's image server, `backend`/`targetStorageClassName` only when a StorageClass is set.

use std::collections::BTreeMap;

use api::names;
use serde_json::{Value, json};

use crate::names::label_value;

/// The image server's port (fixed upstream; the chart's Service exposes it).
pub const IMAGE_SERVER_PORT: u16 = 8080;
/// Host of the image URLs when `SVC_ADDRESS` is not set: the chart's Service.
pub const DEFAULT_SERVICE_ADDRESS: &str = "harvester-vm-import-controller.harvester-system.svc";
/// Environment variable overriding the image URL host (read by the caller; this crate does no IO).
pub const SERVICE_ADDRESS_ENV: &str = "SVC_ADDRESS";

/// How Harvester stores an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// A Longhorn v1 backing image.
    BackingImage,
    /// A CDI-imported golden PVC (Longhorn v2, LVM, any other CSI).
    Cdi,
}

impl Backend {
    /// The `spec.backend` string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BackingImage => "backingimage",
            Self::Cdi => "cdi",
        }
    }
}

/// Upstream's rule: a backing image only for `driver.longhorn.io` with `dataEngine: "v1"`, else CDI.
pub fn backend_for_storage_class(provisioner: &str, parameters: &BTreeMap<String, String>) -> Backend {
    if provisioner == "driver.longhorn.io" && parameters.get("dataEngine").map(String::as_str) == Some("v1") {
        Backend::BackingImage
    } else {
        Backend::Cdi
    }
}

/// The URL Harvester downloads an image from: `http://<host>:8080/<path>`, host = `service_address`
/// (the caller's `SVC_ADDRESS`) when set and non-empty, else [`DEFAULT_SERVICE_ADDRESS`]. A
/// `service_address` that already names a port (`host:port`, `[v6]:port`) keeps it (ours: upstream
/// always appends 8080, which rules out a server on another port).
pub fn image_url(service_address: Option<&str>, path: &str) -> String {
    let host = service_address
        .filter(|s| !s.is_empty())
        .unwrap_or(DEFAULT_SERVICE_ADDRESS);
    let has_port = host.rsplit_once(':').is_some_and(|(head, port)| {
        !port.is_empty()
            && port.bytes().all(|b| b.is_ascii_digit())
            && (!head.contains(':') || head.ends_with(']'))
    });
    let path = path.trim_start_matches('/');
    if has_port {
        format!("http://{host}/{path}")
    } else {
        format!("http://{host}:{IMAGE_SERVER_PORT}/{path}")
    }
}

/// The display name upstream gives a disk's image; its label value finds the image again.
pub fn image_display_name(import_name: &str, disk_name: &str) -> String {
    format!("vm-import-{import_name}-{disk_name}")
}

/// The import that owns the image.
#[derive(Clone, Copy, Debug)]
pub struct Owner<'a> {
    /// Import name.
    pub name: &'a str,
    /// Import namespace (the image's too).
    pub namespace: &'a str,
    /// Import uid.
    pub uid: &'a str,
}

/// What one image is built from.
#[derive(Clone, Debug)]
pub struct ImageInput<'a> {
    /// The owning import.
    pub owner: Owner<'a>,
    /// `DiskInfo.diskName`, e.g. `foo-default-disk-0.img`.
    pub disk_name: &'a str,
    /// `spec.storageClass` (empty: the cluster default, and no backend is written).
    pub storage_class: &'a str,
    /// Backend of that StorageClass (ignored when `storage_class` is empty).
    pub backend: Backend,
    /// Full download URL ([`image_url`]).
    pub url: &'a str,
    /// SHA-512 (hex) of the file the URL serves (`DiskInfo.checksum`): Harvester checks the
    /// download against it, so a file cut or altered on the way fails the image instead of
    /// becoming a disk. Empty: none is set (an import recorded before checksums existed).
    pub checksum: &'a str,
}

/// The `harvesterhci.io/v1beta1` `VirtualMachineImage` for one disk.
pub fn virtual_machine_image(input: &ImageInput<'_>) -> Value {
    let display_name = image_display_name(input.owner.name, input.disk_name);
    let mut metadata = json!({
        "generateName": "image-",
        "namespace": input.owner.namespace,
        "ownerReferences": [{
            "apiVersion": api::API_VERSION,
            "kind": "VirtualMachineImport",
            "name": input.owner.name,
            "uid": input.owner.uid,
        }],
        "labels": {
            names::LABEL_IMPORTED: names::LABEL_TRUE,
            names::LABEL_IMAGE_DISPLAY_NAME: label_value(&display_name),
        },
    });
    let mut spec = json!({
        "displayName": display_name,
        "sourceType": "download",
        "url": input.url,
    });
    if !input.checksum.is_empty() {
        spec["checksum"] = json!(input.checksum);
    }
    if !input.storage_class.is_empty() {
        metadata["annotations"] = json!({ names::ANNOTATION_STORAGE_CLASS: input.storage_class });
        spec["backend"] = json!(input.backend.as_str());
        spec["targetStorageClassName"] = json!(input.storage_class);
    }
    json!({
        "apiVersion": "harvesterhci.io/v1beta1",
        "kind": "VirtualMachineImage",
        "metadata": metadata,
        "spec": spec,
    })
}

/// The PVC a backing-image disk is mounted through (upstream creates it only for that backend):
/// named after the image, `ReadWriteMany` block volume of the image's size in its StorageClass.
pub fn backing_image_claim(namespace: &str, image_name: &str, size_bytes: u64, storage_class: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": image_name,
            "namespace": namespace,
            "annotations": { names::ANNOTATION_IMAGE_ID: format!("{namespace}/{image_name}") },
        },
        "spec": {
            "accessModes": ["ReadWriteMany"],
            "volumeMode": "Block",
            "resources": {"requests": {"storage": size_bytes.to_string()}},
            "storageClassName": storage_class,
        },
    })
}
