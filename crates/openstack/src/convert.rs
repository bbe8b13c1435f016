//! Export straight into disk images: each disk's Glance download goes to a
//! [`diskconv::stream::ConvertingSink`], which writes a raw image as it arrives (never sniffed for
//! a format) and stages a qcow2 one beside the output before converting it. An image whose export
//! did not finish is deleted.

use std::{
    io,
    path::{Path, PathBuf},
};

use diskconv::stream::ConvertingSink;
use serde::Serialize;

use crate::{
    client::Client,
    export::{self, ExportOptions, ExportReport, Hooks},
    proto::description::ServerDescription,
};

/// Output image format (re-exported: what [`Client::export_to_dir`] writes).
pub use diskconv::ImageFormat;

/// One image written by [`Client::export_to_dir`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OutputImage {
    /// Disk index.
    pub disk: usize,
    /// The file.
    pub path: PathBuf,
    /// Its format.
    pub format: ImageFormat,
    /// What the image came from and how it was written.
    pub conversion: diskconv::Report,
}

/// The result of [`Client::export_to_dir`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DirExport {
    /// The transfer report.
    pub export: ExportReport,
    /// Images in disk order.
    pub images: Vec<OutputImage>,
}

/// Why [`Client::export_to_dir`] failed.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    /// The directory could not be created.
    #[error("cannot create output directory {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The export failed (temporary objects cleaned up as the error says, partial images removed).
    #[error(transparent)]
    Export(Box<export::ExportError>),
}

impl Client {
    /// Exports every disk of `server` into `dir` as `disk-<n>.img` (RAW) or `disk-<n>.qcow2`, with
    /// the digest `checksum` names (if any) of each disk's content.
    ///
    /// # Errors
    /// [`DirError`]; on error no image is left in `dir`.
    pub async fn export_to_dir(
        &self,
        server: &ServerDescription,
        dir: &Path,
        (format, checksum): (ImageFormat, Option<diskconv::Checksum>),
        options: &ExportOptions,
        hooks: &Hooks,
    ) -> Result<DirExport, DirError> {
        std::fs::create_dir_all(dir).map_err(|source| DirError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
        let sinks = (0..server.disks.len())
            .map(|i| {
                ConvertingSink::new(
                    dir.join(format!("disk-{i}.{}", format.extension())),
                    format,
                    diskconv::Options {
                        checksum,
                        ..diskconv::Options::default()
                    },
                )
            })
            .collect();
        let exported = self
            .export_server(server, sinks, options, hooks)
            .await
            .map_err(|e| DirError::Export(Box::new(e)))?;
        let images = exported
            .sinks
            .into_iter()
            .enumerate()
            // A finished sink has its report, so dropping it keeps the file.
            .filter_map(|(disk, sink)| {
                Some(OutputImage {
                    disk,
                    path: sink.path().to_owned(),
                    format,
                    conversion: sink.report.clone()?,
                })
            })
            .collect();
        Ok(DirExport {
            export: exported.report,
            images,
        })
    }
}
