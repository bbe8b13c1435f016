//! Background exports: reconcile starts one and observes it; it never waits for one. Each export
//! takes a slot of the host it reads from (ESXi host, OVA server) and one of the global limit,
//! streams every disk not yet exported through the decoder into `<image dir>/<name>.part`, renames
//! each to its servable name as soon as that disk is complete (and, for an OVA, matched its
//! manifest digest), and records the digest in status (a disk with a digest is never exported
//! again, also after a restart). Progress (bytes done, total, rate) goes to
//! `status.diskImportStatus` every few seconds. Cancelling (import deleted) drops the export, which
//! aborts its lease or download; partial files are removed.
//!
//! What differs per source is its [`SourceExport`] (connect, then transfer into the
//! [`ExportLedger`] and close); this module holds job control only: the registry, the slots, the job state, and
//! the tracker that writes progress and the final `diskImportStatus`.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use api::{DiskInfo, VirtualMachineImport};
use error_text::chain;
use kube::{Api, runtime::reflector::ObjectRef};
use plan::machine::ExportFact;
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore, mpsc},
    task::AbortHandle,
};

use crate::{
    disks::{Caps, ExportLedger, write_status},
    metrics::Metrics,
    settings::Settings,
    source::{SourceError, SourceExport},
    throttle::{SourceThrottles, Throttle},
};

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExportError {
    /// The source refused or the transfer failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The image directory is unusable.
    #[error("preparing {path}")]
    Prepare {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The process is shutting down.
    #[error("the export queue was closed")]
    QueueClosed,
    /// The transfer ended without committing a disk.
    #[error("disk {disk} finished without a digest")]
    MissingDigest {
        /// The disk's file name.
        disk: String,
    },
    /// The result could not be recorded in status.
    #[error("recording the result in status")]
    Status(#[source] kube::Error),
}

impl ExportError {
    /// The reason the import fails with, when the source refused the export for a reason an admin
    /// acts on (credentials, TLS, a token that cannot be renewed); `None` for a failed transfer.
    pub(crate) fn reason(&self) -> Option<&'static str> {
        match self {
            Self::Source(e) => e.refusal(),
            Self::Prepare { .. } | Self::QueueClosed | Self::MissingDigest { .. } | Self::Status(_) => None,
        }
    }
}

enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed {
        reason: Option<&'static str>,
        message: String,
    },
}

struct Job {
    state: JobState,
    abort: Option<AbortHandle>,
}

/// What one export needs.
pub(crate) struct ExportRequest {
    /// The import.
    pub import: ObjectRef<VirtualMachineImport>,
    /// Its uid (the key of the export).
    pub uid: String,
    /// The source's half.
    pub export: Box<dyn SourceExport>,
    /// `status.diskImportStatus` at start (one per VM disk, device order).
    pub disks: Vec<DiskInfo>,
    /// The import's own cap (`spec.maxBytesPerSecond`), if it sets one.
    pub import_bytes_per_second: Option<u64>,
    /// The source object (`kind/namespace/name`) and its own cap, if it sets one.
    pub source: (String, Option<u64>),
}

/// The exports of this process, by import uid, the concurrency limits, and what a running export
/// needs (it outlives the reconcile that started it).
pub(crate) struct Exports {
    jobs: Mutex<HashMap<String, Job>>,
    global: Arc<Semaphore>,
    per_host: Mutex<HashMap<String, Arc<Semaphore>>>,
    per_host_limit: usize,
    kube: kube::Client,
    image_dir: PathBuf,
    progress_interval: Duration,
    /// The format images are served in.
    served_format: diskconv::ImageFormat,
    /// Caps when an import or its source sets none, and the decoder threads per disk at most.
    default_import_bytes_per_second: Option<u64>,
    default_source_bytes_per_second: Option<u64>,
    conversion_threads: usize,
    /// The per-source caps all imports from one source share.
    source_throttles: SourceThrottles,
    metrics: Arc<Metrics>,
    /// Wakes an import when its export changed state (the import controller's `reconcile_on`).
    wake: mpsc::UnboundedSender<ObjectRef<VirtualMachineImport>>,
}

impl Exports {
    /// No exports; at most `max_concurrent_imports` at once, `max_imports_per_host` per source host.
    pub(crate) fn new(
        kube: kube::Client,
        settings: &Settings,
        metrics: Arc<Metrics>,
        wake: mpsc::UnboundedSender<ObjectRef<VirtualMachineImport>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            jobs: Mutex::new(HashMap::new()),
            global: Arc::new(Semaphore::new(settings.max_concurrent_imports.max(1))),
            per_host: Mutex::new(HashMap::new()),
            per_host_limit: settings.max_imports_per_host.max(1),
            kube,
            image_dir: settings.image_dir.clone(),
            progress_interval: settings.progress_interval,
            served_format: settings.served_format,
            default_import_bytes_per_second: settings.import_bytes_per_second,
            default_source_bytes_per_second: settings.source_bytes_per_second,
            conversion_threads: settings.conversion_threads.max(1),
            source_throttles: SourceThrottles::default(),
            metrics,
            wake,
        })
    }

    fn with_jobs<T>(&self, f: impl FnOnce(&mut HashMap<String, Job>) -> T) -> T {
        match self.jobs.lock() {
            Ok(mut jobs) => f(&mut jobs),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// What the state machine sees.
    pub(crate) fn fact(&self, uid: &str) -> ExportFact {
        self.with_jobs(|jobs| match jobs.get(uid).map(|j| &j.state) {
            None => ExportFact::Idle,
            Some(JobState::Queued | JobState::Running) => ExportFact::Running,
            Some(JobState::Succeeded) => ExportFact::Succeeded,
            Some(JobState::Failed { reason, message }) => ExportFact::Failed {
                reason: *reason,
                message: message.clone(),
            },
        })
    }

    /// Forgets a finished export once its outcome is in status.
    pub(crate) fn forget(&self, uid: &str) {
        self.with_jobs(|jobs| {
            if matches!(
                jobs.get(uid).map(|j| &j.state),
                Some(JobState::Succeeded | JobState::Failed { .. })
            ) {
                jobs.remove(uid);
            }
        });
    }

    /// Stops the export of `uid` if one runs (its lease is aborted). True when one was stopped.
    pub(crate) fn cancel(&self, uid: &str) -> bool {
        self.with_jobs(|jobs| match jobs.remove(uid) {
            Some(Job {
                abort: Some(abort), ..
            }) => {
                abort.abort();
                true
            }
            _ => false,
        })
    }

    /// Marks the export of `uid` as moving bytes (it left the queue).
    fn set_running(&self, uid: &str) {
        self.set_state(uid, JobState::Running);
    }

    fn set_state(&self, uid: &str, state: JobState) {
        self.with_jobs(|jobs| {
            if let Some(job) = jobs.get_mut(uid) {
                job.state = state;
            }
        });
    }

    fn host_slots(&self, host: &str) -> Arc<Semaphore> {
        let mut hosts = match self.per_host.lock() {
            Ok(hosts) => hosts,
            Err(poisoned) => poisoned.into_inner(),
        };
        hosts
            .entry(host.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_host_limit)))
            .clone()
    }

    /// Starts the export unless one runs for this import already.
    pub(crate) fn start(self: &Arc<Self>, request: ExportRequest) {
        let uid = request.uid.clone();
        let started = self.with_jobs(|jobs| {
            if jobs.contains_key(&uid) {
                return false;
            }
            jobs.insert(
                uid.clone(),
                Job {
                    state: JobState::Queued,
                    abort: None,
                },
            );
            true
        });
        if !started {
            return;
        }
        let exports = self.clone();
        let handle = tokio::spawn(async move {
            let import = request.import.clone();
            let uid = request.uid.clone();
            let result = run(&exports, request).await;
            let state = match result {
                Ok(()) => JobState::Succeeded,
                Err(error) => {
                    let message = chain(&error);
                    tracing::warn!(import = %import, error = %message, "export failed");
                    JobState::Failed {
                        reason: error.reason(),
                        message,
                    }
                }
            };
            exports.set_state(&uid, state);
            let _ = exports.wake.send(import);
        });
        self.with_jobs(|jobs| {
            if let Some(job) = jobs.get_mut(&uid) {
                job.abort = Some(handle.abort_handle());
            }
        });
    }
}

/// Connects, waits for the source host's slot and a global one, transfers, and records the result.
async fn run(exports: &Arc<Exports>, request: ExportRequest) -> Result<(), ExportError> {
    let ExportRequest {
        import,
        uid,
        export,
        mut disks,
        import_bytes_per_second,
        source: (source_key, source_bytes_per_second),
    } = request;
    let mut connected = export.connect().await?;
    let result = async {
        let host = connected.host().to_owned();
        let _slots = take_slots(exports, &uid, &host).await?;
        let _running = RunningGauge::new(exports.metrics.clone());
        let caps = exports.caps(import_bytes_per_second, &source_key, source_bytes_per_second);
        let tracker = Tracker::start(exports, &import, &disks, caps).await?;
        let transferred = connected
            .transfer(tracker.shared(), &exports.image_dir)
            .await
            .map_err(ExportError::from);
        tracker.finish(exports, &import, transferred, &mut disks).await
    }
    .await;
    connected.close().await;
    result
}

impl Exports {
    /// The caps of one export: its own (the import's, else the controller's default) and its
    /// source's (shared by every import from that source object), 0 meaning none.
    fn caps(&self, import: Option<u64>, source_key: &str, source: Option<u64>) -> Caps {
        let chosen = |own: Option<u64>, default: Option<u64>| own.filter(|&b| b > 0).or(default).unwrap_or(0);
        Caps {
            import: Throttle::new(chosen(import, self.default_import_bytes_per_second)),
            source: self
                .source_throttles
                .get(source_key, chosen(source, self.default_source_bytes_per_second)),
            conversion_threads: self.conversion_threads,
        }
    }
}

/// Waits for a slot of `host` and one of the global limit; the export counts as running once both
/// are held.
async fn take_slots(
    exports: &Exports,
    uid: &str,
    host: &str,
) -> Result<(OwnedSemaphorePermit, OwnedSemaphorePermit), ExportError> {
    exports.metrics.exports_queued.inc();
    let host_slot = exports.host_slots(host).acquire_owned().await;
    let global_slot = exports.global.clone().acquire_owned().await;
    exports.metrics.exports_queued.dec();
    let (Ok(host_slot), Ok(global_slot)) = (host_slot, global_slot) else {
        return Err(ExportError::QueueClosed);
    };
    exports.set_running(uid);
    Ok((host_slot, global_slot))
}

/// Counts a running export for as long as it lives, also when its task is aborted.
struct RunningGauge(Arc<Metrics>);

impl RunningGauge {
    fn new(metrics: Arc<Metrics>) -> Self {
        metrics.exports_running.inc();
        Self(metrics)
    }
}

impl Drop for RunningGauge {
    fn drop(&mut self) {
        self.0.exports_running.dec();
    }
}

/// The status side of one transfer: the shared disk list and the progress writer, and at the end
/// the final `diskImportStatus`.
struct Tracker {
    shared: Arc<ExportLedger>,
    api: Api<VirtualMachineImport>,
    writer: AbortOnDrop,
}

impl Tracker {
    async fn start(
        exports: &Exports,
        import: &ObjectRef<VirtualMachineImport>,
        disks: &[DiskInfo],
        caps: Caps,
    ) -> Result<Self, ExportError> {
        let dir = &exports.image_dir;
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|source| ExportError::Prepare {
                path: dir.clone(),
                source,
            })?;
        let shared = Arc::new(ExportLedger::new(disks, dir, exports.served_format).with_caps(caps));
        let api: Api<VirtualMachineImport> = Api::namespaced(
            exports.kube.clone(),
            import.namespace.as_deref().unwrap_or_default(),
        );
        // The caps are in status before the first byte moves.
        if let Err(error) = shared.flush(&api, &import.name).await {
            tracing::debug!(import = %import.name, %error, "writing the export's caps failed");
        }
        let writer = tokio::spawn(write_status(
            api.clone(),
            import.name.clone(),
            shared.clone(),
            exports.progress_interval,
            exports.metrics.clone(),
        ));
        Ok(Self {
            shared,
            api,
            writer: AbortOnDrop(writer.abort_handle()),
        })
    }

    fn shared(&self) -> Arc<ExportLedger> {
        self.shared.clone()
    }

    /// Stops the status writer and writes the ledger's last word (the disks committed, the
    /// temporary objects left), also when the transfer failed; on success checks every disk has
    /// its digest (into `disks` too).
    async fn finish(
        self,
        exports: &Exports,
        import: &ObjectRef<VirtualMachineImport>,
        result: Result<(), ExportError>,
        disks: &mut [DiskInfo],
    ) -> Result<(), ExportError> {
        drop(self.writer);
        let flushed = self.shared.flush(&self.api, &import.name).await;
        result?;
        flushed.map_err(ExportError::Status)?;
        let finished = self.shared.with_disks(|d| d.clone());
        for (index, disk) in finished.iter().enumerate() {
            if !disks[index].is_exported() {
                exports
                    .metrics
                    .export_bytes
                    .inc_by(disk.bytes_total.unwrap_or_default());
            }
        }
        disks.clone_from_slice(&finished);
        if let Some(missing) = disks.iter().find(|d| !d.is_exported()) {
            return Err(ExportError::MissingDigest {
                disk: missing.name.clone(),
            });
        }
        Ok(())
    }
}

struct AbortOnDrop(AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
