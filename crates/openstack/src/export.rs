//! Exporting a server's disks, one after the other, each through temporary cloud objects:
//!
//! ```text
//! volume:        snapshot (force) ─► volume from snapshot ─► os-volume_upload_image (qcow2) ─► Glance image
//! image-backed:  createImage (Nova snapshots the root disk on the compute host) ─────────────► Glance image
//!                                                                      │
//!      GET /v2/images/{id}/file ─► StreamSink (chunk by chunk) ◄───────┘
//!      cut connection ─► GET with Range: bytes=<received>- (206 checked), bounded attempts
//!      end ─► size and os_hash_value (sha256/384/512) verified ─► sink.finish
//!      then: delete image ─► delete volume, wait gone ─► delete snapshot, wait gone
//! ```
//!
//! Every temporary object is recorded in a ledger the moment its id is known; the caller sees it
//! through [`Hooks::temp_objects`] (a controller writes it to status, so cleanup survives a crash,
//! see [`Client::cleanup`]). On failure everything recorded is deleted in dependency order before
//! the error returns; if the export future is dropped, a guard starts the same cleanup on the
//! runtime. Objects whose deletion failed are named in the error or report, never forgotten.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use diskconv::stream::{SinkError, StreamFormat, StreamMeta, StreamSink};
use reqwest::{Method, StatusCode, header};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha384, Sha512};

use crate::{
    client::{self, Client, Service},
    proto::{
        self,
        block_storage::{self, SnapshotResponse, UploadResponse, VolumeResponse},
        description::{DiskSource, ServerDescription},
        image::{DiskFormat, Image},
    },
};

/// What is about to be downloaded.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ImageMeta {
    /// The Glance image.
    image_id: String,
    /// Its data format.
    format: DiskFormat,
    /// Bytes of data.
    size: u64,
    /// The guest disk's size as the source describes it apart from the data: the Cinder volume's
    /// size, or Glance's `virtual_size` of a server image.
    disk_size: Option<u64>,
}

impl ImageMeta {
    /// What the sink is told at `begin`.
    fn stream(&self) -> StreamMeta {
        StreamMeta {
            format: match self.format {
                DiskFormat::Raw => StreamFormat::Raw,
                DiskFormat::Qcow2 => StreamFormat::Qcow2,
            },
            size: Some(self.size),
            disk_size: self.disk_size,
        }
    }
}

/// Temporary objects an export created and has not deleted yet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TempObjects {
    /// Glance images (deleted first).
    pub images: Vec<String>,
    /// Cinder volumes made from snapshots (deleted second).
    pub volumes: Vec<String>,
    /// Cinder snapshots (deleted last: volumes depend on them).
    pub snapshots: Vec<String>,
}

impl TempObjects {
    /// Nothing left.
    pub fn is_empty(&self) -> bool {
        self.images.is_empty() && self.volumes.is_empty() && self.snapshots.is_empty()
    }

    fn list(&mut self, kind: Kind) -> &mut Vec<String> {
        match kind {
            Kind::Image => &mut self.images,
            Kind::Volume => &mut self.volumes,
            Kind::Snapshot => &mut self.snapshots,
        }
    }
}

/// A kind of temporary object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Kind {
    /// Glance image.
    Image,
    /// Cinder volume.
    Volume,
    /// Cinder snapshot.
    Snapshot,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Image => "image",
            Self::Volume => "volume",
            Self::Snapshot => "snapshot",
        }
    }

    fn path(self, id: &str) -> (Service, String) {
        match self {
            Self::Image => (Service::Image, format!("/v2/images/{id}")),
            Self::Volume => (Service::BlockStorage, format!("/volumes/{id}")),
            Self::Snapshot => (Service::BlockStorage, format!("/snapshots/{id}")),
        }
    }
}

/// Export tuning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportOptions {
    /// Temporary objects are named `<prefix>-<disk index>` (a controller passes something unique per
    /// import, so leftovers can also be found by name).
    pub name_prefix: String,
    /// Pause between status reads.
    pub poll_interval: Duration,
    /// Longest wait for one object to become ready (upstream: 2 h).
    pub step_timeout: Duration,
    /// Download requests per disk at most (the first plus resumes after cuts).
    pub download_attempts: u32,
    /// Pause before a resume; doubles up to 30 s.
    pub retry_backoff: Duration,
    /// A download that delivers no byte for this long is cut.
    pub idle_timeout: Duration,
    /// Longest time deleting temporary objects may take.
    pub cleanup_timeout: Duration,
    /// Export a server that is not `SHUTOFF` (its disks may be inconsistent).
    pub allow_running: bool,
    /// The format Cinder is asked to upload a volume in: qcow2 (default) moves only the allocated
    /// data out of the cloud; raw moves the whole volume but needs no conversion on the Cinder host.
    pub volume_upload_format: DiskFormat,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self {
            name_prefix: "vm-import".into(),
            poll_interval: Duration::from_secs(2),
            step_timeout: Duration::from_secs(2 * 3600),
            download_attempts: 5,
            retry_backoff: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(120),
            cleanup_timeout: Duration::from_secs(600),
            allow_running: false,
            volume_upload_format: DiskFormat::Qcow2,
        }
    }
}

/// The step a disk is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Step {
    /// Snapshot of the volume.
    Snapshot,
    /// Volume from the snapshot.
    Volume,
    /// Upload of the volume to Glance.
    Upload,
    /// Nova's snapshot of an image-backed server.
    ServerImage,
    /// Glance download.
    Download,
    /// Deleting the temporary objects.
    Cleanup,
}

/// Progress of one disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// Disk index in the description.
    pub disk: usize,
    /// What it is doing.
    pub step: Step,
    /// Bytes downloaded.
    pub bytes_done: u64,
    /// Bytes to download, once known.
    pub bytes_total: Option<u64>,
}

/// Called with the whole ledger whenever an object is created or deleted.
pub type TempObjectsFn = Arc<dyn Fn(&TempObjects) + Send + Sync>;

/// Called with a disk's progress.
pub type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

/// Callbacks; called often, so they should be cheap.
#[derive(Clone, Default)]
pub struct Hooks {
    /// The ledger changed (an object was created or deleted).
    pub temp_objects: Option<TempObjectsFn>,
    /// A disk's progress.
    pub progress: Option<ProgressFn>,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("temp_objects", &self.temp_objects.is_some())
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

/// What one disk's export did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DiskReport {
    /// Index in the description.
    pub disk: usize,
    /// The Glance image downloaded (deleted since).
    pub image_id: String,
    /// Its format.
    pub format: DiskFormat,
    /// Bytes downloaded.
    pub bytes: u64,
    /// Download requests (1 when nothing was cut).
    pub requests: u32,
    /// Requests that resumed with a Range.
    pub resumes: u32,
    /// The hash algorithm the data was verified with (`None`: Glance gave none usable).
    pub verified_with: Option<String>,
    /// Wall time of the whole disk, cloud steps included.
    pub elapsed: Duration,
    /// Wall time of the download.
    pub download_elapsed: Duration,
}

/// What an export did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportReport {
    /// Per disk, in the description's order.
    pub disks: Vec<DiskReport>,
    /// Wall time.
    pub elapsed: Duration,
    /// Temporary objects that could not be deleted (empty normally; see `cleanup_errors`).
    pub left_behind: TempObjects,
    /// Why they could not be deleted.
    pub cleanup_errors: Vec<String>,
}

/// A finished export: the report and the finished sinks, in disk order.
#[derive(Debug)]
pub struct Exported<S> {
    /// What happened.
    pub report: ExportReport,
    /// The sinks.
    pub sinks: Vec<S>,
}

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// The request failed before an answer.
    #[error("request failed")]
    Request(#[source] client::Error),
    /// An answer other than 200/206.
    #[error("HTTP {status}: {message}")]
    Status {
        /// Status.
        status: StatusCode,
        /// Glance's message.
        message: String,
    },
    /// The connection broke mid-body.
    #[error("the connection broke after {offset} bytes")]
    Cut {
        /// Bytes received so far.
        offset: u64,
        /// What reqwest saw.
        #[source]
        source: reqwest::Error,
    },
    /// No byte arrived for the idle timeout.
    #[error("no data for {timeout:?} after {offset} bytes")]
    Stalled {
        /// Bytes received.
        offset: u64,
        /// The limit.
        timeout: Duration,
    },
    /// The body ended before the image's size.
    #[error("the body ended after {offset} of {size} bytes")]
    Short {
        /// Bytes received.
        offset: u64,
        /// The image's size.
        size: u64,
    },
    /// A 206 whose range is not the one asked for.
    #[error("asked for bytes {offset}- of {size}, got Content-Range '{got}'")]
    BadRange {
        /// Asked-for start.
        offset: u64,
        /// The image's size.
        size: u64,
        /// The header.
        got: String,
    },
    /// More bytes than the image's size.
    #[error("the server sent more than the image's {size} bytes")]
    TooLong {
        /// The image's size.
        size: u64,
    },
    /// The data's hash is not Glance's.
    #[error("{algo} of the downloaded data is {got}, Glance says {expected}")]
    HashMismatch {
        /// The algorithm.
        algo: String,
        /// Glance's value.
        expected: String,
        /// Ours.
        got: String,
    },
    /// The sink refused the data (not retried).
    #[error("the sink failed")]
    Sink(#[source] SinkError),
    /// Every attempt failed; the last error is the source.
    #[error("gave up after {attempts} requests")]
    GaveUp {
        /// Requests made.
        attempts: u32,
        /// The last failure.
        #[source]
        last: Box<DownloadError>,
    },
}

impl DownloadError {
    fn retryable(&self) -> bool {
        match self {
            Self::Request(e) => !e.is_auth(),
            Self::Status { status, .. } => status.is_server_error(),
            Self::Cut { .. } | Self::Stalled { .. } | Self::Short { .. } => true,
            _ => false,
        }
    }
}

/// Why a disk's export failed (the step and object are in the message).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server has no disk to export.
    #[error("server {server} has no disks to export")]
    NoDisks {
        /// The server.
        server: String,
    },
    /// Not one sink per disk.
    #[error("{sinks} sinks for {disks} disks")]
    SinkCount {
        /// Disks.
        disks: usize,
        /// Sinks.
        sinks: usize,
    },
    /// The server is running and `allow_running` is off.
    #[error("server {server} is {status}: stop it first (its disks would be copied while in use)")]
    Running {
        /// The server.
        server: String,
        /// Its status.
        status: String,
    },
    /// A call failed.
    #[error("disk {disk}: {step} ({id})")]
    Call {
        /// The disk.
        disk: usize,
        /// What was being done.
        step: &'static str,
        /// The object it concerned.
        id: String,
        /// Why.
        #[source]
        source: client::Error,
    },
    /// An object went to an error state.
    #[error("disk {disk}: {what} {id} went to status '{status}'")]
    Failed {
        /// The disk.
        disk: usize,
        /// Which object.
        what: &'static str,
        /// Its id.
        id: String,
        /// Its status.
        status: String,
    },
    /// An object did not become ready in time.
    #[error("disk {disk}: {what} {id} still '{status}' after {waited:?}")]
    Timeout {
        /// The disk.
        disk: usize,
        /// Which object.
        what: &'static str,
        /// Its id.
        id: String,
        /// Its last status.
        status: String,
        /// How long.
        waited: Duration,
    },
    /// createImage answered without an image id (no body, no Location).
    #[error("disk {disk}: createImage of server {server} named no image")]
    NoImageId {
        /// The disk.
        disk: usize,
        /// The server.
        server: String,
    },
    /// The image is in a format the importer does not decode, or has no size.
    #[error(
        "disk {disk}: image {image} has disk_format '{format}' and size {size:?}; raw or qcow2 with a size is needed"
    )]
    Unsupported {
        /// The disk.
        disk: usize,
        /// The image.
        image: String,
        /// Its format.
        format: String,
        /// Its size.
        size: Option<u64>,
    },
    /// A raw image's size is not the disk size its source describes.
    #[error("disk {disk}: image {image} holds {size} bytes but the disk is {expected} bytes")]
    SizeMismatch {
        /// The disk.
        disk: usize,
        /// The image.
        image: String,
        /// Its size.
        size: u64,
        /// The volume's size, or Glance's virtual size.
        expected: u64,
    },
    /// The download failed.
    #[error("disk {disk}: downloading image {image}")]
    Download {
        /// The disk.
        disk: usize,
        /// The image.
        image: String,
        /// Why.
        #[source]
        source: DownloadError,
    },
    /// The sink refused the data.
    #[error("disk {disk}: the sink failed")]
    Sink {
        /// The disk.
        disk: usize,
        /// Its error.
        #[source]
        source: SinkError,
    },
}

/// A failed export: the step error, and the temporary objects that could not be deleted.
#[derive(Debug, thiserror::Error)]
#[error("export of server {server} failed{}", left_behind_text(.left_behind))]
pub struct ExportError {
    /// The server.
    pub server: String,
    /// What failed.
    #[source]
    pub error: Error,
    /// Objects still there after cleanup (record them and call [`Client::cleanup`] later).
    pub left_behind: TempObjects,
    /// Why they could not be deleted.
    pub cleanup_errors: Vec<String>,
}

fn left_behind_text(left: &TempObjects) -> String {
    if left.is_empty() {
        String::new()
    } else {
        format!(
            " (temporary objects left behind: images {:?}, volumes {:?}, snapshots {:?})",
            left.images, left.volumes, left.snapshots
        )
    }
}

/// Why a temporary object could not be deleted.
#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    /// The delete or a status read failed.
    #[error("deleting {kind} {id}")]
    Call {
        /// The kind.
        kind: &'static str,
        /// Its id.
        id: String,
        /// Why.
        #[source]
        source: client::Error,
    },
    /// Listing the objects named like the export's failed.
    #[error("finding temporary objects named {names}")]
    Find {
        /// The name pattern.
        names: String,
        /// Why.
        #[source]
        source: client::Error,
    },
    /// It was still there at the deadline.
    #[error("{kind} {id} still exists after {waited:?}")]
    Timeout {
        /// The kind.
        kind: &'static str,
        /// Its id.
        id: String,
        /// How long.
        waited: Duration,
    },
}

/// The ledger of temporary objects, shared with the drop guard and reported to the hook.
#[derive(Clone)]
struct Ledger {
    objects: Arc<Mutex<TempObjects>>,
    hook: Option<TempObjectsFn>,
}

impl Ledger {
    fn update(&self, f: impl FnOnce(&mut TempObjects)) {
        let snapshot = {
            let mut objects = self.objects.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut objects);
            objects.clone()
        };
        if let Some(hook) = &self.hook {
            hook(&snapshot);
        }
    }

    fn add(&self, kind: Kind, id: &str) {
        self.update(|o| o.list(kind).push(id.to_owned()));
    }

    fn remove(&self, kind: Kind, id: &str) {
        self.update(|o| o.list(kind).retain(|x| x != id));
    }

    fn get(&self) -> TempObjects {
        self.objects.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Deletes whatever is still in the ledger when the export future is dropped mid-way.
struct Guard {
    client: Client,
    ledger: Ledger,
    options: ExportOptions,
    disks: usize,
    armed: bool,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(left = ?self.ledger.get(), "export dropped outside a runtime: temporary objects left");
            return;
        };
        let client = self.client.clone();
        let ledger = self.ledger.clone();
        let options = self.options.clone();
        let disks = self.disks;
        handle.spawn(async move {
            let mut errors = client.adopt_named(&ledger, &options, 0..disks).await;
            let (left, more) = client.cleanup_ledger(&ledger, &options).await;
            errors.extend(more);
            if !left.is_empty() {
                tracing::warn!(
                    ?left,
                    ?errors,
                    "cleanup after a cancelled export left objects behind"
                );
            }
        });
    }
}

struct Downloaded {
    requests: u32,
    resumes: u32,
    verified_with: Option<String>,
}

enum Hasher {
    Sha256(Sha256),
    Sha384(Sha384),
    Sha512(Sha512),
}

impl Hasher {
    fn new(algo: &str) -> Option<Self> {
        match algo {
            "sha256" => Some(Self::Sha256(Sha256::new())),
            "sha384" => Some(Self::Sha384(Sha384::new())),
            "sha512" => Some(Self::Sha512(Sha512::new())),
            _ => None,
        }
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            Self::Sha256(h) => h.update(data),
            Self::Sha384(h) => h.update(data),
            Self::Sha512(h) => h.update(data),
        }
    }

    fn hex(self) -> String {
        match self {
            Self::Sha256(h) => hex::encode(h.finalize()),
            Self::Sha384(h) => hex::encode(h.finalize()),
            Self::Sha512(h) => hex::encode(h.finalize()),
        }
    }
}

impl Client {
    /// Exports every disk of `server` into `sinks` (one per disk, in the description's order).
    ///
    /// # Errors
    /// [`ExportError`]: the failed step, and whatever temporary objects could not be deleted.
    pub async fn export_server<S: StreamSink>(
        &self,
        server: &ServerDescription,
        mut sinks: Vec<S>,
        options: &ExportOptions,
        hooks: &Hooks,
    ) -> Result<Exported<S>, ExportError> {
        let ledger = Ledger {
            objects: Arc::default(),
            hook: hooks.temp_objects.clone(),
        };
        let mut guard = Guard {
            client: self.clone(),
            ledger: ledger.clone(),
            options: options.clone(),
            disks: server.disks.len(),
            armed: true,
        };
        let started = Instant::now();
        let mut reports = Vec::new();
        let mut left_behind = TempObjects::default();
        let mut cleanup_errors = Vec::new();
        let result: Result<(), Error> = async {
            if server.disks.is_empty() {
                return Err(Error::NoDisks {
                    server: server.id.clone(),
                });
            }
            if sinks.len() != server.disks.len() {
                return Err(Error::SinkCount {
                    disks: server.disks.len(),
                    sinks: sinks.len(),
                });
            }
            self.check_stopped(server, options).await?;
            for (index, sink) in sinks.iter_mut().enumerate() {
                let report = self
                    .export_disk(server, index, sink, options, hooks, &ledger)
                    .await?;
                reports.push(report);
                // Free the cloud's space as soon as a disk is done.
                emit(hooks, index, Step::Cleanup, 0, None);
                let mut errors = self.adopt_named(&ledger, options, index..index + 1).await;
                let (left, more) = self.cleanup_ledger(&ledger, options).await;
                errors.extend(more);
                merge(&mut left_behind, &left);
                cleanup_errors.extend(errors.iter().map(|e| error_text::chain(e)));
                ledger.update(|o| *o = TempObjects::default());
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => {
                guard.armed = false;
                Ok(Exported {
                    report: ExportReport {
                        disks: reports,
                        elapsed: started.elapsed(),
                        left_behind,
                        cleanup_errors,
                    },
                    sinks,
                })
            }
            Err(error) => {
                let mut errors = self.adopt_named(&ledger, options, 0..server.disks.len()).await;
                let (left, more) = self.cleanup_ledger(&ledger, options).await;
                errors.extend(more);
                guard.armed = false;
                merge(&mut left_behind, &left);
                cleanup_errors.extend(errors.iter().map(|e| error_text::chain(e)));
                Err(ExportError {
                    server: server.name.clone(),
                    error,
                    left_behind,
                    cleanup_errors,
                })
            }
        }
    }

    async fn check_stopped(&self, server: &ServerDescription, options: &ExportOptions) -> Result<(), Error> {
        if options.allow_running {
            return Ok(());
        }
        let current: proto::compute::ServerResponse = self
            .get_json(Service::Compute, &format!("/servers/{}", server.id))
            .await
            .map_err(|source| Error::Call {
                disk: 0,
                step: "reading the server's status",
                id: server.id.clone(),
                source,
            })?;
        if current.server.status != "SHUTOFF" {
            return Err(Error::Running {
                server: server.name.clone(),
                status: current.server.status,
            });
        }
        Ok(())
    }

    async fn export_disk<S: StreamSink>(
        &self,
        server: &ServerDescription,
        disk: usize,
        sink: &mut S,
        options: &ExportOptions,
        hooks: &Hooks,
        ledger: &Ledger,
    ) -> Result<DiskReport, Error> {
        let started = Instant::now();
        let name = format!("{}-{disk}", options.name_prefix);
        let call = |step: &'static str, id: &str| {
            let id = id.to_owned();
            move |source| Error::Call {
                disk,
                step,
                id,
                source,
            }
        };
        let (image_id, volume_bytes) = match &server.disks[disk].source {
            DiskSource::Volume { volume_id, .. } => {
                emit(hooks, disk, Step::Snapshot, 0, None);
                let snapshot: SnapshotResponse = self
                    .call_json(
                        Service::BlockStorage,
                        Method::POST,
                        "/snapshots",
                        Some(&block_storage::create_snapshot(volume_id, &name)),
                    )
                    .await
                    .map_err(call("creating a snapshot of volume", volume_id))?;
                let snapshot = snapshot.snapshot;
                ledger.add(Kind::Snapshot, &snapshot.id);
                self.wait_ready(disk, Kind::Snapshot, &snapshot.id, options)
                    .await?;

                emit(hooks, disk, Step::Volume, 0, None);
                let volume: VolumeResponse = self
                    .call_json(
                        Service::BlockStorage,
                        Method::POST,
                        "/volumes",
                        Some(&block_storage::create_volume_from_snapshot(
                            &snapshot.id,
                            snapshot.size,
                            &name,
                        )),
                    )
                    .await
                    .map_err(call("creating a volume from snapshot", &snapshot.id))?;
                let volume = volume.volume;
                ledger.add(Kind::Volume, &volume.id);
                self.wait_ready(disk, Kind::Volume, &volume.id, options).await?;

                emit(hooks, disk, Step::Upload, 0, None);
                let upload: UploadResponse = self
                    .call_json(
                        Service::BlockStorage,
                        Method::POST,
                        &format!("/volumes/{}/action", volume.id),
                        Some(&block_storage::upload_to_image(
                            &name,
                            options.volume_upload_format,
                        )),
                    )
                    .await
                    .map_err(call("uploading to an image the volume", &volume.id))?;
                let image_id = upload.upload.image_id;
                ledger.add(Kind::Image, &image_id);
                self.wait_image(disk, &image_id, Some(&volume.id), options)
                    .await?;
                (image_id, Some(volume.size << 30))
            }
            DiskSource::ServerImage { .. } => {
                emit(hooks, disk, Step::ServerImage, 0, None);
                let (_, headers, body) = self
                    .call(
                        Service::Compute,
                        Method::POST,
                        &format!("/servers/{}/action", server.id),
                        Some(&serde_json::json!({"createImage": {"name": name, "metadata": {}}})),
                    )
                    .await
                    .map_err(call("creating an image of server", &server.id))?;
                let image_id = created_image_id(&headers, &body).ok_or_else(|| Error::NoImageId {
                    disk,
                    server: server.id.clone(),
                })?;
                ledger.add(Kind::Image, &image_id);
                self.wait_image(disk, &image_id, None, options).await?;
                (image_id, None)
            }
        };
        let image: Image = self
            .get_json(Service::Image, &format!("/v2/images/{image_id}"))
            .await
            .map_err(call("reading image", &image_id))?;
        let format = image.disk_format.as_deref().unwrap_or("");
        let (Some(format), Some(size)) = (DiskFormat::parse(format), image.size) else {
            return Err(Error::Unsupported {
                disk,
                image: image_id,
                format: format.to_owned(),
                size: image.size,
            });
        };
        // Cinder uploads a volume whole: a raw image of any other size lost data on the way.
        let disk_size = volume_bytes.or(image.virtual_size);
        if let (DiskFormat::Raw, Some(expected)) = (format, disk_size)
            && size != expected
        {
            return Err(Error::SizeMismatch {
                disk,
                image: image_id,
                size,
                expected,
            });
        }
        let meta = ImageMeta {
            image_id: image_id.clone(),
            format,
            size,
            disk_size,
        };
        emit(hooks, disk, Step::Download, 0, Some(size));
        let download_started = Instant::now();
        let downloaded = self.download(disk, &image, &meta, sink, options, hooks).await?;
        Ok(DiskReport {
            disk,
            image_id,
            format,
            bytes: size,
            requests: downloaded.requests,
            resumes: downloaded.resumes,
            verified_with: downloaded.verified_with,
            elapsed: started.elapsed(),
            download_elapsed: download_started.elapsed(),
        })
    }

    /// Polls a snapshot or volume until `available`.
    async fn wait_ready(
        &self,
        disk: usize,
        kind: Kind,
        id: &str,
        options: &ExportOptions,
    ) -> Result<(), Error> {
        let started = Instant::now();
        let (service, path) = kind.path(id);
        loop {
            let status = match kind {
                Kind::Snapshot => self
                    .get_json::<SnapshotResponse>(service, &path)
                    .await
                    .map(|s| s.snapshot.status),
                _ => self
                    .get_json::<VolumeResponse>(service, &path)
                    .await
                    .map(|v| v.volume.status),
            }
            .map_err(|source| Error::Call {
                disk,
                step: "reading the status of",
                id: id.to_owned(),
                source,
            })?;
            match status.as_str() {
                "available" => return Ok(()),
                s if s.starts_with("error") => {
                    return Err(Error::Failed {
                        disk,
                        what: kind.name(),
                        id: id.to_owned(),
                        status,
                    });
                }
                _ => {}
            }
            if started.elapsed() >= options.step_timeout {
                return Err(Error::Timeout {
                    disk,
                    what: kind.name(),
                    id: id.to_owned(),
                    status,
                    waited: started.elapsed(),
                });
            }
            tokio::time::sleep(options.poll_interval).await;
        }
    }

    /// Polls an image until `active`. With `uploading_volume`, an upload that Cinder finished
    /// (the volume left `uploading`) without an active image has failed.
    async fn wait_image(
        &self,
        disk: usize,
        image_id: &str,
        uploading_volume: Option<&str>,
        options: &ExportOptions,
    ) -> Result<(), Error> {
        let started = Instant::now();
        let read_image = || async {
            self.get_json::<Image>(Service::Image, &format!("/v2/images/{image_id}"))
                .await
                .map_err(|source| Error::Call {
                    disk,
                    step: "reading the status of image",
                    id: image_id.to_owned(),
                    source,
                })
        };
        loop {
            let image = read_image().await?;
            if image.is_active() {
                return Ok(());
            }
            if image.is_failed() {
                return Err(Error::Failed {
                    disk,
                    what: "image",
                    id: image_id.to_owned(),
                    status: image.status,
                });
            }
            if let Some(volume) = uploading_volume {
                let status = self
                    .get_json::<VolumeResponse>(Service::BlockStorage, &format!("/volumes/{volume}"))
                    .await
                    .map_err(|source| Error::Call {
                        disk,
                        step: "reading the status of volume",
                        id: volume.to_owned(),
                        source,
                    })?
                    .volume
                    .status;
                if status != "uploading" {
                    // Cinder is done; the image must be active now (read again: it may just have turned).
                    let image = read_image().await?;
                    if image.is_active() {
                        return Ok(());
                    }
                    return Err(Error::Failed {
                        disk,
                        what: "upload to image",
                        id: image_id.to_owned(),
                        status: format!("image {} while volume {volume} is {status}", image.status),
                    });
                }
            }
            if started.elapsed() >= options.step_timeout {
                return Err(Error::Timeout {
                    disk,
                    what: "image",
                    id: image_id.to_owned(),
                    status: image.status,
                    waited: started.elapsed(),
                });
            }
            tokio::time::sleep(options.poll_interval).await;
        }
    }

    async fn download<S: StreamSink>(
        &self,
        disk: usize,
        image: &Image,
        meta: &ImageMeta,
        sink: &mut S,
        options: &ExportOptions,
        hooks: &Hooks,
    ) -> Result<Downloaded, Error> {
        let sink_err = |source| Error::Sink { disk, source };
        let fail = |source| Error::Download {
            disk,
            image: meta.image_id.clone(),
            source,
        };
        let algo = image.os_hash_algo.clone().unwrap_or_default();
        let expected = image.os_hash_value.clone().filter(|v| !v.is_empty());
        let new_hasher = || expected.as_ref().and_then(|_| Hasher::new(&algo));
        let mut hasher = new_hasher();
        sink.begin(&meta.stream()).await.map_err(sink_err)?;
        let size = meta.size;
        let path = format!("/v2/images/{}/file", meta.image_id);
        let mut offset = 0u64;
        let mut requests = 0u32;
        let mut resumes = 0u32;
        let mut backoff = options.retry_backoff;
        loop {
            requests += 1;
            if offset > 0 {
                resumes += 1;
            }
            let attempt: Result<(), DownloadError> = async {
                let response = self
                    .send(Service::Image, Method::GET, &path, None, |r| {
                        if offset > 0 {
                            r.header(header::RANGE, format!("bytes={offset}-"))
                        } else {
                            r
                        }
                    })
                    .await
                    .map_err(DownloadError::Request)?;
                let status = response.status();
                match status {
                    StatusCode::OK if offset > 0 => {
                        // The server ignored the range: start over from byte 0.
                        tracing::warn!(image = %meta.image_id, offset, "Range ignored: downloading again from the start");
                        offset = 0;
                        hasher = new_hasher();
                        sink.begin(&meta.stream()).await.map_err(DownloadError::Sink)?;
                    }
                    StatusCode::OK => {}
                    StatusCode::PARTIAL_CONTENT if offset > 0 => {
                        let got = response
                            .headers()
                            .get(header::CONTENT_RANGE)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_owned();
                        let range = proto::parse_content_range(&got);
                        if !range.is_some_and(|r| r.start == offset && r.total.is_none_or(|t| t == size)) {
                            return Err(DownloadError::BadRange { offset, size, got });
                        }
                    }
                    _ => {
                        let message = proto::error_message(&response.bytes().await.unwrap_or_default());
                        return Err(DownloadError::Status { status, message });
                    }
                }
                let mut response = response;
                loop {
                    let chunk = match tokio::time::timeout(options.idle_timeout, response.chunk()).await {
                        Err(_) => {
                            return Err(DownloadError::Stalled {
                                offset,
                                timeout: options.idle_timeout,
                            });
                        }
                        Ok(Err(source)) => return Err(DownloadError::Cut { offset, source }),
                        Ok(Ok(None)) => break,
                        Ok(Ok(Some(chunk))) => chunk,
                    };
                    if offset + chunk.len() as u64 > size {
                        return Err(DownloadError::TooLong { size });
                    }
                    if let Some(h) = hasher.as_mut() {
                        h.update(&chunk);
                    }
                    offset += chunk.len() as u64;
                    sink.write(chunk).await.map_err(DownloadError::Sink)?;
                    emit(hooks, disk, Step::Download, offset, Some(size));
                }
                if offset < size {
                    return Err(DownloadError::Short { offset, size });
                }
                Ok(())
            }
            .await;
            match attempt {
                Ok(()) => break,
                Err(e) if e.retryable() && requests < options.download_attempts => {
                    tracing::info!(image = %meta.image_id, offset, error = %error_text::chain(&e), "download interrupted: resuming");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
                Err(e) if e.retryable() => {
                    return Err(fail(DownloadError::GaveUp {
                        attempts: requests,
                        last: Box::new(e),
                    }));
                }
                Err(e) => return Err(fail(e)),
            }
        }
        let verified_with = match (hasher, expected) {
            (Some(h), Some(expected)) => {
                let got = h.hex();
                if !got.eq_ignore_ascii_case(&expected) {
                    return Err(fail(DownloadError::HashMismatch { algo, expected, got }));
                }
                Some(algo)
            }
            _ => None,
        };
        sink.finish().await.map_err(sink_err)?;
        Ok(Downloaded {
            requests,
            resumes,
            verified_with,
        })
    }

    /// Deletes temporary objects in dependency order (images, then volumes, then snapshots),
    /// waiting for each volume and snapshot to be gone; a missing object counts as deleted. For a
    /// controller after a restart, with the ids it recorded; with `disks`, also whatever an export of
    /// that many disks named `options.name_prefix` left without recording it (see
    /// [`Client::find_named`]).
    ///
    /// # Errors
    /// The objects still there and why, when anything could not be deleted.
    pub async fn cleanup(
        &self,
        objects: &TempObjects,
        options: &ExportOptions,
        disks: usize,
    ) -> Result<(), (TempObjects, Vec<CleanupError>)> {
        let ledger = Ledger {
            objects: Arc::new(Mutex::new(objects.clone())),
            hook: None,
        };
        let mut errors = self.adopt_named(&ledger, options, 0..disks).await;
        let (left, more) = self.cleanup_ledger(&ledger, options).await;
        errors.extend(more);
        if left.is_empty() {
            Ok(())
        } else {
            Err((left, errors))
        }
    }

    /// The snapshots, volumes and images named like the temporary objects of `disks`
    /// (`<name_prefix>-<disk>`): what is left when an object was made but its id never reached the
    /// ledger (the answer to the create was lost, or the process died before recording it).
    ///
    /// # Errors
    /// The first list call that failed.
    pub async fn find_named(
        &self,
        options: &ExportOptions,
        disks: std::ops::Range<usize>,
    ) -> Result<TempObjects, client::Error> {
        #[derive(Deserialize)]
        struct Listed {
            #[serde(default)]
            images: Vec<Named>,
            #[serde(default)]
            volumes: Vec<Named>,
            #[serde(default)]
            snapshots: Vec<Named>,
        }
        #[derive(Deserialize)]
        struct Named {
            id: String,
        }
        let mut found = TempObjects::default();
        for disk in disks {
            let name = crate::inspect::percent_encode(&format!("{}-{disk}", options.name_prefix));
            // Only the project's own images: a public or shared image of that name is not ours.
            let images: Listed = self
                .get_json(
                    Service::Image,
                    &format!("/v2/images?name={name}&owner={}", self.project_id()),
                )
                .await?;
            let volumes: Listed = self
                .get_json(Service::BlockStorage, &format!("/volumes/detail?name={name}"))
                .await?;
            let snapshots: Listed = self
                .get_json(Service::BlockStorage, &format!("/snapshots/detail?name={name}"))
                .await?;
            found.images.extend(images.images.into_iter().map(|n| n.id));
            found.volumes.extend(volumes.volumes.into_iter().map(|n| n.id));
            found
                .snapshots
                .extend(snapshots.snapshots.into_iter().map(|n| n.id));
        }
        Ok(found)
    }

    /// Adds to `ledger` what [`Client::find_named`] finds and it lacks; a failed search is
    /// returned as a cleanup error (the recorded objects are still deleted).
    async fn adopt_named(
        &self,
        ledger: &Ledger,
        options: &ExportOptions,
        disks: std::ops::Range<usize>,
    ) -> Vec<CleanupError> {
        match self.find_named(options, disks).await {
            Ok(mut found) => {
                let mut known = ledger.get();
                for kind in [Kind::Image, Kind::Volume, Kind::Snapshot] {
                    let recorded = known.list(kind).clone();
                    for id in found.list(kind).iter().filter(|id| !recorded.contains(id)) {
                        tracing::info!(kind = kind.name(), %id, "unrecorded temporary object found by name");
                        ledger.add(kind, id);
                    }
                }
                Vec::new()
            }
            Err(source) => vec![CleanupError::Find {
                names: format!("{}-*", options.name_prefix),
                source,
            }],
        }
    }

    async fn cleanup_ledger(
        &self,
        ledger: &Ledger,
        options: &ExportOptions,
    ) -> (TempObjects, Vec<CleanupError>) {
        let deadline = Instant::now() + options.cleanup_timeout;
        let mut errors = Vec::new();
        for kind in [Kind::Image, Kind::Volume, Kind::Snapshot] {
            let ids = ledger.get().list(kind).clone();
            for id in ids {
                match self
                    .delete_until_gone(kind, &id, deadline, options.poll_interval)
                    .await
                {
                    Ok(()) => ledger.remove(kind, &id),
                    Err(e) => {
                        tracing::warn!(kind = kind.name(), %id, error = %error_text::chain(&e), "temporary object not deleted");
                        errors.push(e);
                    }
                }
            }
        }
        (ledger.get(), errors)
    }

    async fn delete_until_gone(
        &self,
        kind: Kind,
        id: &str,
        deadline: Instant,
        poll: Duration,
    ) -> Result<(), CleanupError> {
        let (service, path) = kind.path(id);
        let started = Instant::now();
        let call = |source| CleanupError::Call {
            kind: kind.name(),
            id: id.to_owned(),
            source,
        };
        let timeout = || CleanupError::Timeout {
            kind: kind.name(),
            id: id.to_owned(),
            waited: started.elapsed(),
        };
        // Cinder refuses (400) to delete a volume still uploading or a snapshot whose clone is
        // still being deleted: retry until the deadline.
        loop {
            match self.call(service, Method::DELETE, &path, None).await {
                Ok(_) => break,
                Err(e) if e.is_not_found() => return Ok(()),
                Err(e) if matches!(e.status(), Some(StatusCode::BAD_REQUEST | StatusCode::CONFLICT)) => {
                    if Instant::now() >= deadline {
                        return Err(call(e));
                    }
                    tokio::time::sleep(poll).await;
                }
                Err(e) => return Err(call(e)),
            }
        }
        loop {
            match self.call(service, Method::GET, &path, None).await {
                Err(e) if e.is_not_found() => return Ok(()),
                Err(e) => return Err(call(e)),
                Ok((_, _, body)) => {
                    // Glance keeps deleted images visible to admins with status `deleted`.
                    if kind == Kind::Image
                        && serde_json::from_slice::<Image>(&body).is_ok_and(|i| i.status == "deleted")
                    {
                        return Ok(());
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(timeout());
            }
            tokio::time::sleep(poll).await;
        }
    }
}

/// The image id of a createImage answer: the body's `image_id` (2.45+) or the `Location` header's
/// last path segment.
fn created_image_id(headers: &header::HeaderMap, body: &[u8]) -> Option<String> {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(body)
        && let Some(id) = value.get("image_id").and_then(|v| v.as_str())
    {
        return Some(id.to_owned());
    }
    let location = headers.get(header::LOCATION)?.to_str().ok()?;
    location
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

fn emit(hooks: &Hooks, disk: usize, step: Step, bytes_done: u64, bytes_total: Option<u64>) {
    if let Some(progress) = &hooks.progress {
        progress(&Progress {
            disk,
            step,
            bytes_done,
            bytes_total,
        });
    }
}

fn merge(into: &mut TempObjects, from: &TempObjects) {
    into.images.extend(from.images.iter().cloned());
    into.volumes.extend(from.volumes.iter().cloned());
    into.snapshots.extend(from.snapshots.iter().cloned());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_ids_come_from_the_body_or_the_location() {
        let mut headers = header::HeaderMap::new();
        assert_eq!(
            created_image_id(&headers, br#"{"image_id": "i1"}"#).as_deref(),
            Some("i1")
        );
        assert_eq!(created_image_id(&headers, b""), None);
        headers.insert(header::LOCATION, "https://g/image/v2/images/i2".parse().unwrap());
        assert_eq!(created_image_id(&headers, b"").as_deref(), Some("i2"));
    }

    #[test]
    fn failures_name_what_is_left() {
        let err = ExportError {
            server: "db01".into(),
            error: Error::NoDisks { server: "s".into() },
            left_behind: TempObjects {
                images: vec!["i".into()],
                ..TempObjects::default()
            },
            cleanup_errors: vec![],
        };
        assert!(err.to_string().contains("images [\"i\"]"), "{err}");
        assert_eq!(
            ExportError {
                left_behind: TempObjects::default(),
                ..err
            }
            .to_string(),
            "export of server db01 failed"
        );
    }

    #[test]
    fn only_network_failures_are_retried() {
        assert!(DownloadError::Short { offset: 1, size: 2 }.retryable());
        assert!(!DownloadError::TooLong { size: 2 }.retryable());
        assert!(
            DownloadError::Status {
                status: StatusCode::BAD_GATEWAY,
                message: String::new()
            }
            .retryable()
        );
        assert!(
            !DownloadError::Status {
                status: StatusCode::NOT_FOUND,
                message: String::new()
            }
            .retryable()
        );
    }
}
