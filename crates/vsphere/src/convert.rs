//! Export straight into disk images: each disk's streamOptimized stream is decoded by `diskconv`
//! on a blocking thread (fed through a bounded channel) into a sparse RAW or a qcow2 file. No VMDK
//! is stored; the only bytes written are the output images. An image whose transfer did not finish
//! is deleted, so partial output is never left behind looking like a result.

use std::{
    io::{self, Read},
    path::{Path, PathBuf},
};

use bytes::{Buf, Bytes};
use serde::Serialize;
use tokio::{sync::mpsc, task::JoinHandle};

use crate::{
    client::Client,
    export::{self, DiskSink, ExportOptions, ExportReport, SinkError},
    proto::vm::VmDescription,
};

/// Chunks buffered between the download and the decoder thread. HTTP chunks are at most a few
/// tens of KiB, so this bounds memory per disk to about a MiB while letting the two sides overlap.
const CHANNEL_CHUNKS: usize = 16;

/// Output image format (re-exported: what [`Client::export_to_dir`] writes).
pub use diskconv::ImageFormat;

/// Why a converting sink failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The decoder thread stopped before the stream ended (its own error is the source).
    #[error("decoding the export stream into {path} failed")]
    Convert {
        /// The output image.
        path: PathBuf,
        /// diskconv's error.
        #[source]
        source: diskconv::Error,
    },
    /// The decoder thread panicked or was cancelled.
    #[error("the decoder thread for {path} did not finish")]
    Join {
        /// The output image.
        path: PathBuf,
    },
    /// An old partial image could not be removed.
    #[error("cannot remove partial image {path}")]
    RemovePartial {
        /// The image.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The output directory could not be created.
    #[error("cannot create output directory {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

struct ChannelReader {
    rx: mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.current = chunk,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }
}

/// A [`DiskSink`] that decodes the stream into an image file.
pub struct ConvertingSink {
    path: PathBuf,
    format: ImageFormat,
    threads: usize,
    /// The disk's size as vSphere describes it.
    capacity: u64,
    tx: Option<mpsc::Sender<Bytes>>,
    task: Option<JoinHandle<Result<diskconv::Report, diskconv::Error>>>,
    progress: Option<diskconv::ProgressFn>,
    /// The conversion report once [`DiskSink::finish`] succeeded.
    pub report: Option<diskconv::Report>,
}

impl std::fmt::Debug for ConvertingSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConvertingSink")
            .field("path", &self.path)
            .field("format", &self.format)
            .field("threads", &self.threads)
            .field("report", &self.report)
            .finish_non_exhaustive()
    }
}

impl ConvertingSink {
    /// A sink writing `path` in `format`, inflating on `threads` workers, for a disk that vSphere
    /// describes as `capacity` bytes: a stream whose header says otherwise is refused.
    pub fn new(path: impl Into<PathBuf>, format: ImageFormat, threads: usize, capacity: u64) -> Self {
        Self {
            path: path.into(),
            format,
            threads: threads.max(1),
            capacity,
            tx: None,
            task: None,
            progress: None,
            report: None,
        }
    }

    /// Reports the decoder's progress (logical bytes done) to `progress`; a retried attempt starts
    /// again from zero.
    #[must_use]
    pub fn with_progress(mut self, progress: diskconv::ProgressFn) -> Self {
        self.progress = Some(progress);
        self
    }

    /// The output path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn stop(&mut self) {
        self.tx = None;
        if let Some(task) = self.task.take() {
            // The decoder sees end-of-input and fails on the truncated stream; that result is moot.
            let _ = task.await;
        }
    }

    async fn join(&mut self) -> Result<diskconv::Report, Error> {
        self.tx = None;
        let task = self.task.take().ok_or_else(|| Error::Join {
            path: self.path.clone(),
        })?;
        match task.await {
            Ok(Ok(report)) => Ok(report),
            Ok(Err(source)) => Err(Error::Convert {
                path: self.path.clone(),
                source,
            }),
            Err(_) => Err(Error::Join {
                path: self.path.clone(),
            }),
        }
    }
}

fn remove_if_present(path: &Path) -> Result<(), Error> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::RemovePartial {
            path: path.to_owned(),
            source,
        }),
    }
}

impl DiskSink for ConvertingSink {
    async fn begin(&mut self) -> Result<(), SinkError> {
        self.stop().await;
        self.report = None;
        remove_if_present(&self.path)?;
        let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
        let reader = ChannelReader {
            rx,
            current: Bytes::new(),
        };
        let output = self.format.output(self.path.clone());
        let options = diskconv::Options {
            threads: self.threads,
            progress: self.progress.clone(),
            expected_size: Some(self.capacity),
            ..diskconv::Options::default()
        };
        let path = self.path.clone();
        self.task = Some(tokio::task::spawn_blocking(move || {
            let result = diskconv::convert_stream_optimized(reader, output, &options);
            if result.is_err() {
                // The thread may outlive the sink (dropped mid-transfer), so it cleans up after itself.
                let _ = std::fs::remove_file(&path);
            }
            result
        }));
        self.tx = Some(tx);
        Ok(())
    }

    async fn write(&mut self, chunk: Bytes) -> Result<(), SinkError> {
        let Some(tx) = &self.tx else {
            return Err("write before begin".into());
        };
        if tx.send(chunk).await.is_err() {
            // The decoder stopped reading: it failed; report why.
            return Err(match self.join().await {
                Err(e) => e.into(),
                Ok(_) => "decoder finished before the stream ended".into(),
            });
        }
        Ok(())
    }

    async fn finish(&mut self) -> Result<(), SinkError> {
        match self.join().await {
            Ok(report) => {
                self.report = Some(report);
                Ok(())
            }
            Err(e @ Error::Convert { .. }) if matches!(&e, Error::Convert { source, .. } if source.is_cut_short()) => {
                Err(Box::new(crate::export::StreamCutShort(e.into())))
            }
            Err(e) => Err(e.into()),
        }
    }
}

impl Drop for ConvertingSink {
    fn drop(&mut self) {
        if self.report.is_none() {
            self.tx = None;
            // Never leave a half-written image that looks like a result.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

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
    /// diskconv's report: virtual size, bytes written, SHA-256 of the logical content.
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
    /// The directory could not be prepared.
    #[error(transparent)]
    Prepare(#[from] Error),
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
    /// the streams on the fly.
    ///
    /// # Errors
    /// [`DirError`]; on error no image is left in `dir`.
    pub async fn export_to_dir(
        &self,
        vm: &VmDescription,
        dir: &Path,
        format: ImageFormat,
        options: &ExportOptions,
    ) -> Result<DirExport, DirError> {
        std::fs::create_dir_all(dir).map_err(|source| Error::CreateDir {
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
                        threads,
                        d.capacity_bytes,
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
