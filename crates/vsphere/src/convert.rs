//! Export straight into disk images: each disk's streamOptimized stream goes to a
//! [`diskconv::stream::ConvertingSink`], which decodes it into a sparse RAW or a qcow2 file as it
//! arrives. No VMDK is stored; the only bytes written are the output images. An image whose
//! transfer did not finish is deleted, so partial output is never left behind looking like a result.

use std::{
    io,
    path::{Path, PathBuf},
};

use diskconv::stream::ConvertingSink;
use serde::Serialize;

use crate::{
    client::Client,
    export::{self, ExportOptions, ExportReport},
    proto::vm::VmDescription,
};

/// Output image format (re-exported: what [`Client::export_to_dir`] writes).
pub use diskconv::ImageFormat;

/// One image written by [`Client::export_to_dir`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Image {
    /// The disk's device key.
    pub disk_key: i32,
    /// The disk's label.
    pub label: String,
    /// The image file.
    pub path: PathBuf,
    /// Its format.
    pub format: ImageFormat,
    /// The disk's capacity per vSphere.
    pub capacity_bytes: u64,
    /// diskconv's report: virtual size, bytes written, the digest asked for.
    pub conversion: diskconv::Report,
}

/// The result of [`Client::export_to_dir`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DirExport {
    /// Transfer report.
    pub export: ExportReport,
    /// Images in device order.
    pub images: Vec<Image>,
}

/// Why [`Client::export_to_dir`] failed.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    /// The output directory could not be created.
    #[error("cannot create output directory {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The export failed (its leases were aborted and partial images removed).
    #[error("export of VM {vm} failed")]
    Export {
        /// The VM name.
        vm: String,
        /// Why.
        #[source]
        source: export::Error,
    },
    /// A finished sink has no report (cannot happen after a successful export).
    #[error("disk {disk_key} finished without a conversion report")]
    MissingReport {
        /// The disk.
        disk_key: i32,
    },
}

impl Client {
    /// Exports every disk of `vm` into `dir` as `disk-<n>.img` (RAW) or `disk-<n>.qcow2`, decoding
    /// the streams on the fly, with the digest `checksum` names (if any) of each disk's content.
    ///
    /// # Errors
    /// [`DirError`]; on error no image is left in `dir`.
    pub async fn export_to_dir(
        &self,
        vm: &VmDescription,
        dir: &Path,
        (format, checksum): (ImageFormat, Option<diskconv::Checksum>),
        options: &ExportOptions,
    ) -> Result<DirExport, DirError> {
        std::fs::create_dir_all(dir).map_err(|source| DirError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
        // Inflate work is split over the disks, which are downloaded concurrently.
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let threads = (cores / vm.disks.len().max(1)).max(1);
        let sinks = vm
            .disks
            .iter()
            .enumerate()
            .map(|(i, d)| {
                (
                    d.key,
                    ConvertingSink::new(
                        dir.join(format!("disk-{i}.{}", format.extension())),
                        format,
                        diskconv::Options {
                            threads,
                            checksum,
                            ..diskconv::Options::default()
                        },
                    ),
                )
            })
            .collect();
        let exported = self
            .export_vm(vm, sinks, options)
            .await
            .map_err(|source| DirError::Export {
                vm: vm.name.clone(),
                source,
            })?;
        let mut sinks = exported.sinks;
        let mut images = Vec::with_capacity(vm.disks.len());
        for disk in &vm.disks {
            let sink = sinks
                .get_mut(&disk.key)
                .ok_or(DirError::MissingReport { disk_key: disk.key })?;
            let conversion = sink
                .report
                .clone()
                .ok_or(DirError::MissingReport { disk_key: disk.key })?;
            if conversion.virtual_size != disk.capacity_bytes {
                tracing::warn!(
                    disk = disk.key,
                    stream = conversion.virtual_size,
                    device = disk.capacity_bytes,
                    "exported stream capacity differs from the device capacity"
                );
            }
            images.push(Image {
                disk_key: disk.key,
                label: disk.label.clone(),
                path: sink.path().to_owned(),
                format,
                capacity_bytes: disk.capacity_bytes,
                conversion,
            });
        }
        Ok(DirExport {
            export: exported.report,
            images,
        })
    }
}
