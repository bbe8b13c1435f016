//! Export straight into disk images. A raw Glance download is written as it arrives (on a blocking
//! thread fed through a bounded channel) into `diskconv`'s sparse RAW or qcow2 sink; its bytes are
//! never sniffed for a format, so a guest that wrote a qcow2 or VMDK header onto its own disk gets
//! that disk back byte for byte. A qcow2 download (an image-backed server's snapshot) needs random
//! access: it is staged in `<image>.download`, checked to really be a standalone qcow2, and
//! converted by `diskconv`. An image whose export did not finish is deleted.

use std::{
    io,
    path::{Path, PathBuf},
};

use bytes::Bytes;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::{io::AsyncWriteExt, sync::mpsc, task::JoinHandle};

use crate::{
    client::Client,
    export::{self, ExportOptions, ExportReport, Hooks, ImageMeta, ImageSink, SinkError},
    proto::{description::ServerDescription, image::DiskFormat},
};

/// Chunks buffered between the download and the writer thread (HTTP chunks are tens of KiB).
const CHANNEL_CHUNKS: usize = 32;

/// Blocks handed to the disk sink: large enough for its zero detection and qcow2 clusters.
const BLOCK: usize = 1 << 20;

/// Output image format (re-exported: what [`Client::export_to_dir`] writes).
pub use diskconv::ImageFormat;

/// Why a converting sink failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Writing the output failed.
    #[error("writing {path}")]
    Write {
        /// The image.
        path: PathBuf,
        /// diskconv's sink error.
        #[source]
        source: diskconv::sink::Error,
    },
    /// Staging or removing a file failed.
    #[error("{step} {path}")]
    Io {
        /// What was done.
        step: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The downloaded qcow2 image is something else.
    #[error("{path}: Glance says qcow2 but the data is {detected}")]
    NotQcow2 {
        /// The staged file.
        path: PathBuf,
        /// What it is.
        detected: &'static str,
    },
    /// Converting the qcow2 image failed.
    #[error("converting {path}")]
    Convert {
        /// The staged file.
        path: PathBuf,
        /// diskconv's error.
        #[source]
        source: diskconv::Error,
    },
    /// The stream ended early.
    #[error("{path}: {got} of {expected} bytes arrived")]
    Short {
        /// The image.
        path: PathBuf,
        /// Bytes received.
        got: u64,
        /// The image's size.
        expected: u64,
    },
    /// The writer thread panicked or vanished.
    #[error("the writer of {path} did not finish")]
    Join {
        /// The image.
        path: PathBuf,
    },
    /// `write` or `finish` before `begin`.
    #[error("{path}: data before begin")]
    NotStarted {
        /// The image.
        path: PathBuf,
    },
}

enum State {
    Idle,
    Raw {
        tx: mpsc::Sender<Bytes>,
        task: JoinHandle<Result<diskconv::Report, Error>>,
    },
    Staged {
        file: tokio::fs::File,
        staging: PathBuf,
    },
}

/// An [`ImageSink`] writing one disk image.
pub struct ConvertingSink {
    path: PathBuf,
    format: ImageFormat,
    state: State,
    meta: Option<ImageMeta>,
    /// The conversion report once finished.
    pub report: Option<diskconv::Report>,
}

impl std::fmt::Debug for ConvertingSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConvertingSink")
            .field("path", &self.path)
            .field("format", &self.format)
            .field("report", &self.report)
            .finish_non_exhaustive()
    }
}

impl ConvertingSink {
    /// A sink writing `path` in `format`.
    pub fn new(path: impl Into<PathBuf>, format: ImageFormat) -> Self {
        Self {
            path: path.into(),
            format,
            state: State::Idle,
            meta: None,
            report: None,
        }
    }

    /// The output path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn staging_path(&self) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(".download");
        PathBuf::from(name)
    }

    async fn reset(&mut self) -> Result<(), Error> {
        match std::mem::replace(&mut self.state, State::Idle) {
            State::Idle => {}
            State::Raw { tx, task } => {
                drop(tx);
                // The writer sees the channel close early and fails; that result is moot.
                let _ = task.await;
            }
            State::Staged { staging, .. } => remove_if_present(&staging)?,
        }
        self.report = None;
        remove_if_present(&self.path)
    }
}

fn remove_if_present(path: &Path) -> Result<(), Error> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::Io {
            step: "removing",
            path: path.to_owned(),
            source,
        }),
    }
}

/// Writes a raw stream of `size` bytes into `output`, in blocks, hashing the content.
fn write_raw(
    mut rx: mpsc::Receiver<Bytes>,
    path: PathBuf,
    format: ImageFormat,
    size: u64,
) -> Result<diskconv::Report, Error> {
    let started = std::time::Instant::now();
    let write_err = |source| Error::Write {
        path: path.clone(),
        source,
    };
    let mut sink = format.output(path.clone()).open(Some(size)).map_err(write_err)?;
    let mut hasher = Sha256::new();
    let mut block = Vec::with_capacity(BLOCK);
    let mut offset = 0u64;
    while let Some(chunk) = rx.blocking_recv() {
        hasher.update(&chunk);
        let mut rest = &chunk[..];
        while !rest.is_empty() {
            let take = rest.len().min(BLOCK - block.len());
            block.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if block.len() == BLOCK {
                sink.write_block(offset, &block).map_err(write_err)?;
                offset += BLOCK as u64;
                block.clear();
            }
        }
    }
    if !block.is_empty() {
        sink.write_block(offset, &block).map_err(write_err)?;
        offset += block.len() as u64;
    }
    if offset != size {
        return Err(Error::Short {
            path,
            got: offset,
            expected: size,
        });
    }
    let bytes_written = sink.finish(size, true).map_err(write_err)?;
    Ok(diskconv::Report {
        format: "raw".into(),
        virtual_size: size,
        bytes_read: size,
        bytes_written,
        sha256: hex::encode(hasher.finalize()),
        seconds: started.elapsed().as_secs_f64(),
    })
}

impl ImageSink for ConvertingSink {
    async fn begin(&mut self, meta: &ImageMeta) -> Result<(), SinkError> {
        self.reset().await?;
        self.meta = Some(meta.clone());
        self.state = match meta.format {
            DiskFormat::Raw => {
                let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
                let (path, format, size) = (self.path.clone(), self.format, meta.size);
                let task = tokio::task::spawn_blocking(move || {
                    let result = write_raw(rx, path.clone(), format, size);
                    if result.is_err() {
                        // The thread may outlive the sink (dropped mid-transfer): clean up here.
                        let _ = std::fs::remove_file(&path);
                    }
                    result
                });
                State::Raw { tx, task }
            }
            DiskFormat::Qcow2 => {
                let staging = self.staging_path();
                let file = tokio::fs::File::create(&staging)
                    .await
                    .map_err(|source| Error::Io {
                        step: "creating",
                        path: staging.clone(),
                        source,
                    })?;
                State::Staged { file, staging }
            }
        };
        Ok(())
    }

    async fn write(&mut self, chunk: Bytes) -> Result<(), SinkError> {
        match &mut self.state {
            State::Idle => Err(Error::NotStarted {
                path: self.path.clone(),
            }
            .into()),
            State::Raw { tx, .. } => {
                if tx.send(chunk).await.is_err() {
                    // The writer stopped: report its error.
                    let State::Raw { task, .. } = std::mem::replace(&mut self.state, State::Idle) else {
                        return Err(Error::Join {
                            path: self.path.clone(),
                        }
                        .into());
                    };
                    return Err(match task.await {
                        Ok(Err(e)) => e.into(),
                        _ => Error::Join {
                            path: self.path.clone(),
                        }
                        .into(),
                    });
                }
                Ok(())
            }
            State::Staged { file, staging } => file.write_all(&chunk).await.map_err(|source| {
                Error::Io {
                    step: "writing",
                    path: staging.clone(),
                    source,
                }
                .into()
            }),
        }
    }

    async fn finish(&mut self) -> Result<(), SinkError> {
        let report = match std::mem::replace(&mut self.state, State::Idle) {
            State::Idle => {
                return Err(Error::NotStarted {
                    path: self.path.clone(),
                }
                .into());
            }
            State::Raw { tx, task } => {
                drop(tx);
                task.await.map_err(|_| Error::Join {
                    path: self.path.clone(),
                })??
            }
            State::Staged { mut file, staging } => {
                file.flush().await.map_err(|source| Error::Io {
                    step: "flushing",
                    path: staging.clone(),
                    source,
                })?;
                drop(file);
                let (path, format) = (self.path.clone(), self.format);
                let disk_size = self.meta.as_ref().and_then(|m| m.disk_size);
                let result =
                    tokio::task::spawn_blocking(move || convert_staged(&staging, &path, format, disk_size))
                        .await
                        .map_err(|_| Error::Join {
                            path: self.path.clone(),
                        })?;
                remove_if_present(&self.staging_path())?;
                result?
            }
        };
        self.report = Some(report);
        Ok(())
    }
}

/// Converts the staged qcow2 download; `disk_size`, when the source states one, must be its
/// virtual size.
fn convert_staged(
    staging: &Path,
    path: &Path,
    format: ImageFormat,
    disk_size: Option<u64>,
) -> Result<diskconv::Report, Error> {
    let detected = diskconv::source::detect_path(staging).map_err(|source| Error::Convert {
        path: staging.to_owned(),
        source,
    })?;
    // Only qcow2 is accepted: a file claiming qcow2 but holding a VMDK descriptor would make the
    // converter open extent files named inside it.
    if detected != diskconv::InputFormat::Qcow2 {
        return Err(Error::NotQcow2 {
            path: staging.to_owned(),
            detected: detected.name(),
        });
    }
    let options = diskconv::Options {
        expected_size: disk_size,
        ..diskconv::Options::default()
    };
    diskconv::convert_path(staging, format.output(path), &options).map_err(|source| {
        let _ = std::fs::remove_file(path);
        Error::Convert {
            path: staging.to_owned(),
            source,
        }
    })
}

impl Drop for ConvertingSink {
    fn drop(&mut self) {
        if self.report.is_none() {
            if let State::Staged { staging, .. } = &self.state {
                let _ = std::fs::remove_file(staging);
            }
            // Never leave a half-written image that looks like a result.
            let _ = std::fs::remove_file(&self.path);
            let _ = std::fs::remove_file(self.staging_path());
        }
    }
}

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
    /// Exports every disk of `server` into `dir` as `disk-<n>.img` (RAW) or `disk-<n>.qcow2`.
    ///
    /// # Errors
    /// [`DirError`]; on error no image is left in `dir`.
    pub async fn export_to_dir(
        &self,
        server: &ServerDescription,
        dir: &Path,
        format: ImageFormat,
        options: &ExportOptions,
        hooks: &Hooks,
    ) -> Result<DirExport, DirError> {
        std::fs::create_dir_all(dir).map_err(|source| DirError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
        let sinks = (0..server.disks.len())
            .map(|i| ConvertingSink::new(dir.join(format!("disk-{i}.{}", format.extension())), format))
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// A qcow2 image of `size` bytes with one written MiB, made by diskconv's own writer.
    fn qcow2_bytes(dir: &Path, size: u64) -> Vec<u8> {
        let path = dir.join("source.qcow2");
        let mut sink = ImageFormat::Qcow2.output(path.clone()).open(Some(size)).unwrap();
        sink.write_block(0, &vec![7u8; 1 << 20]).unwrap();
        sink.finish(size, true).unwrap();
        std::fs::read(path).unwrap()
    }

    #[tokio::test]
    async fn a_qcow2_download_must_have_the_disk_size_its_source_states() {
        let dir = tempfile::tempdir().unwrap();
        let size = 4 << 20;
        let bytes = Bytes::from(qcow2_bytes(dir.path(), size));
        for (disk_size, accepted) in [(None, true), (Some(size), true), (Some(size * 2), false)] {
            let out = dir.path().join("disk-0.img");
            let mut sink = ConvertingSink::new(&out, ImageFormat::Raw);
            let meta = ImageMeta {
                image_id: "image".into(),
                format: DiskFormat::Qcow2,
                size: bytes.len() as u64,
                disk_size,
            };
            sink.begin(&meta).await.unwrap();
            sink.write(bytes.clone()).await.unwrap();
            let result = sink.finish().await;
            match result {
                Ok(()) => {
                    assert!(accepted, "{disk_size:?}");
                    assert_eq!(std::fs::metadata(&out).unwrap().len(), size);
                }
                Err(error) => {
                    assert!(!accepted, "{disk_size:?}: {}", error_text::chain(&*error));
                    assert!(
                        error_text::chain(&*error).contains(&(size * 2).to_string()),
                        "{}",
                        error_text::chain(&*error)
                    );
                    drop(sink);
                    assert!(!out.exists(), "no image is left for a refused disk");
                }
            }
            assert!(!dir.path().join("disk-0.img.download").exists());
        }
    }
}
