//! Background exports: reconcile starts one and observes it; it never waits for one. Each export
//! takes a slot of the host it reads from (ESXi host, OVA server) and one of the global limit,
//! streams every disk not yet exported through the decoder into `<image dir>/<name>.part`, renames
//! each to its servable name as soon as that disk is complete (and, for an OVA, matched its
//! manifest digest), and records the digest in status (a disk with a digest is never exported
//! again, also after a restart). Progress (bytes done, total, rate) goes to
//! `status.diskImportStatus` every few seconds. Cancelling (import deleted) drops the export, which
//! aborts its lease or download; partial files are removed.
//!
//! The source-specific halves are [`crate::vmware`]'s session and `ExportVm` lease (driven from
//! here), [`crate::ova`]'s download and archive walk and [`crate::openstack`]'s Glance downloads
//! through temporary cloud objects; all commit disks through [`DiskLedger`].

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::{Arc, Mutex},
};

use api::{DiskInfo, OpenstackSource, OvaSource, SourceTemporaryObjects, VirtualMachineImport, VmwareSource};
use bytes::Bytes;
use error_text::chain;
use kube::{
    Api,
    api::{Patch, PatchParams},
    runtime::reflector::ObjectRef,
};
use plan::machine::ExportFact;
use serde_json::json;
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    task::AbortHandle,
};
use vsphere::{
    convert::{ConvertingSink, ImageFormat},
    export::{DiskSink, ExportOptions, SinkError},
};

use crate::{
    context::Context,
    disks::{DiskLedger, partial_path, write_progress},
    leases,
    ova::{self, OvaError},
    vmware::{self, ConnectError},
};

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExportError {
    /// No session with the source.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The OVA could not be fetched or did not check out.
    #[error(transparent)]
    Ova(#[from] OvaError),
    /// No session with the OpenStack source.
    #[error(transparent)]
    Openstack(#[from] crate::openstack::OpenstackError),
    /// The VM could not be found or described.
    #[error("looking up the VM: {0}")]
    Inspect(String),
    /// The VM's disks are not the ones recorded when the import started.
    #[error("the VM has {found} disks now but had {recorded} when the import started")]
    DisksChanged {
        /// In status.
        recorded: usize,
        /// At the source now.
        found: usize,
    },
    /// The image directory is unusable.
    #[error("preparing {path}: {source}")]
    Prepare {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The transfer failed (its leases were aborted).
    #[error("{0}")]
    Transfer(String),
    /// The result could not be recorded in status.
    #[error("recording the result in status: {0}")]
    Status(#[source] kube::Error),
}

impl From<ova::TransferError> for ExportError {
    fn from(error: ova::TransferError) -> Self {
        match error {
            ova::TransferError::Ova(e) => Self::Ova(e),
            walk @ ova::TransferError::Walk(_) => Self::Transfer(chain(&walk)),
        }
    }
}

impl From<crate::openstack::TransferError> for ExportError {
    fn from(error: crate::openstack::TransferError) -> Self {
        use crate::openstack::TransferError;
        match error {
            TransferError::Openstack(e) => Self::Openstack(e),
            TransferError::DisksChanged { recorded, found } => Self::DisksChanged { recorded, found },
            TransferError::Failed(text) => Self::Transfer(text),
        }
    }
}

impl ExportError {
    /// The reason the import fails with, when the source refused the export for a reason an admin
    /// acts on (credentials, TLS, a token that cannot be renewed); `None` for a failed transfer.
    pub(crate) fn reason(&self) -> Option<&'static str> {
        match self {
            Self::Connect(e) => Some(e.reason()),
            Self::Ova(e) => Some(e.reason()),
            Self::Openstack(e) => Some(e.reason()),
            Self::Inspect(_)
            | Self::DisksChanged { .. }
            | Self::Prepare { .. }
            | Self::Transfer(_)
            | Self::Status(_) => None,
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

/// Where an export reads from.
#[derive(Clone, Debug)]
pub(crate) enum ExportSource {
    /// A VM of a vCenter/ESXi, through an `ExportVm` lease.
    Vmware {
        /// The source.
        source: VmwareSource,
        /// VM name at the source.
        vm_name: String,
        /// Folder under `<dc>/vm`.
        folder: Option<String>,
        /// Export leases an earlier process recorded in status (aborted before a new one is taken).
        recorded_leases: Vec<String>,
    },
    /// The OVA at an `OvaSource`'s URL.
    Ova(OvaSource),
    /// A server of an OpenStack cloud, through temporary snapshots, volumes and Glance images.
    Openstack {
        /// The source.
        source: OpenstackSource,
        /// Server name or UUID.
        server: String,
        /// Temporary objects recorded in status by an earlier export (deleted first).
        recorded: Option<SourceTemporaryObjects>,
    },
}

/// What one export needs.
#[derive(Clone, Debug)]
pub(crate) struct ExportRequest {
    /// The import.
    pub import: ObjectRef<VirtualMachineImport>,
    /// Its uid (the key of the export).
    pub uid: String,
    /// The source.
    pub source: ExportSource,
    /// `status.diskImportStatus` at start (one per VM disk, device order).
    pub disks: Vec<DiskInfo>,
}

/// The exports of this process, by import uid, and the concurrency limits.
pub(crate) struct Exports {
    jobs: Mutex<HashMap<String, Job>>,
    global: Arc<Semaphore>,
    per_host: Mutex<HashMap<String, Arc<Semaphore>>>,
    per_host_limit: usize,
}

impl Exports {
    /// No exports; at most `global` at once, `per_host` per ESXi host.
    pub(crate) fn new(global: usize, per_host: usize) -> Self {
        Self {
            jobs: Mutex::new(HashMap::new()),
            global: Arc::new(Semaphore::new(global.max(1))),
            per_host: Mutex::new(HashMap::new()),
            per_host_limit: per_host.max(1),
        }
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
    pub(crate) fn start(&self, ctx: &Arc<Context>, request: ExportRequest) {
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
        let task_ctx = ctx.clone();
        let handle = tokio::spawn(async move {
            let import = request.import.clone();
            let uid = request.uid.clone();
            let result = run(&task_ctx, request).await;
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
            task_ctx.exports.set_state(&uid, state);
            task_ctx.wake(import);
        });
        self.with_jobs(|jobs| {
            if let Some(job) = jobs.get_mut(&uid) {
                job.abort = Some(handle.abort_handle());
            }
        });
    }
}

/// Decodes one disk into its `.part` file and, when the disk is complete, renames it to its
/// servable name and records its digest at once, so a restart does not export it again.
struct CommittingSink {
    inner: ConvertingSink,
    index: usize,
    shared: Arc<DiskLedger>,
}

impl DiskSink for CommittingSink {
    async fn begin(&mut self) -> Result<(), SinkError> {
        // The exporter redoes a disk whose lease died after the body ended: undo its commit.
        self.shared.uncommit(self.index)?;
        self.inner.begin().await
    }

    async fn write(&mut self, chunk: Bytes) -> Result<(), SinkError> {
        self.inner.write(chunk).await
    }

    async fn finish(&mut self) -> Result<(), SinkError> {
        self.inner.finish().await?;
        let Some(report) = self.inner.report.clone() else {
            return Err("the decoder finished without a report".into());
        };
        self.shared.commit(self.index, &report)?;
        Ok(())
    }
}

async fn run(ctx: &Arc<Context>, request: ExportRequest) -> Result<(), ExportError> {
    let ExportRequest {
        import,
        uid,
        source,
        mut disks,
    } = request;
    match source {
        ExportSource::Vmware {
            source,
            vm_name,
            folder,
            recorded_leases,
        } => {
            let client = vmware::connect(&ctx.kube, &source).await?;
            // A lease an earlier process took and never released blocks the VM: abort it first.
            let api: Api<VirtualMachineImport> =
                Api::namespaced(ctx.kube.clone(), import.namespace.as_deref().unwrap_or_default());
            leases::abort_recorded(&client, &api, &import.name, &recorded_leases).await;
            let description = client
                .inspect(
                    vmware::datacenter_name(&source.spec.datacenter),
                    folder.as_deref(),
                    &vm_name,
                )
                .await
                .map_err(|e| ExportError::Inspect(chain(&e)))?;
            if description.disks.len() != disks.len() {
                return Err(ExportError::DisksChanged {
                    recorded: disks.len(),
                    found: description.disks.len(),
                });
            }
            let host = description
                .host
                .as_ref()
                .map_or_else(|| source.spec.endpoint_address.clone(), |h| h.value.clone());
            let _slots = take_slots(ctx, &uid, &host).await?;
            let _running = RunningGauge::new(ctx.metrics.clone());
            let result = transfer(ctx, &import, &client, description, &mut disks).await;
            let _ = client.logout().await;
            result
        }
        ExportSource::Ova(source) => {
            let client = ova::OvaClient::connect(&ctx.kube, &source).await?;
            let _slots = take_slots(ctx, &uid, &client.host()).await?;
            let _running = RunningGauge::new(ctx.metrics.clone());
            let tracker = Tracker::start(ctx, &import, &disks).await?;
            let result = ova::transfer(&client, tracker.shared(), &ctx.settings.image_dir)
                .await
                .map_err(ExportError::from);
            tracker.finish(ctx, &import, result, &mut disks).await
        }
        ExportSource::Openstack {
            source,
            server,
            recorded,
        } => {
            let session = crate::openstack::connect(&ctx.kube, &source).await?;
            let _slots = take_slots(ctx, &uid, &source.spec.endpoint_address).await?;
            let _running = RunningGauge::new(ctx.metrics.clone());
            let tracker = Tracker::start(ctx, &import, &disks).await?;
            let result = crate::openstack::transfer(
                crate::openstack::Transfer {
                    session: &session,
                    api: tracker.api.clone(),
                    import: &import,
                    uid: &uid,
                    server: &server,
                    recorded,
                    dir: ctx.settings.image_dir.clone(),
                },
                tracker.shared(),
            )
            .await
            .map_err(ExportError::from);
            let _ = session.client.logout().await;
            tracker.finish(ctx, &import, result, &mut disks).await
        }
    }
}

/// Waits for a slot of `host` and one of the global limit; the export counts as running once both
/// are held.
async fn take_slots(
    ctx: &Arc<Context>,
    uid: &str,
    host: &str,
) -> Result<(OwnedSemaphorePermit, OwnedSemaphorePermit), ExportError> {
    ctx.metrics.exports_queued.inc();
    let host_slot = ctx.exports.host_slots(host).acquire_owned().await;
    let global_slot = ctx.exports.global.clone().acquire_owned().await;
    ctx.metrics.exports_queued.dec();
    let (Ok(host_slot), Ok(global_slot)) = (host_slot, global_slot) else {
        return Err(ExportError::Transfer("the export queue was closed".into()));
    };
    ctx.exports.set_running(uid);
    Ok((host_slot, global_slot))
}

/// Counts a running export for as long as it lives, also when its task is aborted.
struct RunningGauge(Arc<crate::metrics::Metrics>);

impl RunningGauge {
    fn new(metrics: Arc<crate::metrics::Metrics>) -> Self {
        metrics.exports_running.inc();
        Self(metrics)
    }
}

impl Drop for RunningGauge {
    fn drop(&mut self) {
        self.0.exports_running.dec();
    }
}

async fn transfer(
    ctx: &Arc<Context>,
    import: &ObjectRef<VirtualMachineImport>,
    client: &vsphere::Client,
    mut description: vsphere::proto::vm::VmDescription,
    disks: &mut [DiskInfo],
) -> Result<(), ExportError> {
    let dir = ctx.settings.image_dir.clone();
    let tracker = Tracker::start(ctx, import, disks).await?;
    let shared = tracker.shared();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut sinks = BTreeMap::new();
    let mut partials = Vec::new();
    // Disks exported before a restart keep their files; the rest are (re)exported from scratch.
    for (index, disk) in disks.iter().enumerate() {
        if disk.is_exported() {
            continue;
        }
        let vm_disk = &description.disks[index];
        let partial = partial_path(&dir, &disk.name);
        let shared_for_progress = shared.clone();
        let inner = ConvertingSink::new(&partial, ImageFormat::Raw, threads, vm_disk.capacity_bytes)
            .with_progress(Arc::new(move |p| {
                shared_for_progress.set_done(index, p.position);
            }));
        shared.restart(index, Some(vm_disk.capacity_bytes));
        sinks.insert(
            vm_disk.key,
            CommittingSink {
                inner,
                index,
                shared: shared.clone(),
            },
        );
        partials.push(partial);
    }
    description.disks.retain(|d| sinks.contains_key(&d.key));

    let api: Api<VirtualMachineImport> =
        Api::namespaced(ctx.kube.clone(), import.namespace.as_deref().unwrap_or_default());
    let (on_lease, lease_writer) = leases::recorder(api, import.name.clone());
    let exported = client
        .export_vm_recorded(&description, sinks, &ExportOptions::default(), Some(on_lease))
        .await
        .map(|_| ())
        .map_err(|e| ExportError::Transfer(chain(&e)));
    // The hook is dropped with the export; the writer ends after its last write.
    let _ = lease_writer.await;
    if exported.is_err() {
        for path in &partials {
            let _ = tokio::fs::remove_file(path).await;
        }
    }
    tracker.finish(ctx, import, exported, disks).await
}

/// The status side of one transfer: the shared disk list and the progress writer, and at the end
/// the final `diskImportStatus`.
struct Tracker {
    shared: Arc<DiskLedger>,
    api: Api<VirtualMachineImport>,
    writer: AbortOnDrop,
}

impl Tracker {
    async fn start(
        ctx: &Arc<Context>,
        import: &ObjectRef<VirtualMachineImport>,
        disks: &[DiskInfo],
    ) -> Result<Self, ExportError> {
        let dir = &ctx.settings.image_dir;
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|source| ExportError::Prepare {
                path: dir.clone(),
                source,
            })?;
        let shared = Arc::new(DiskLedger::new(disks, dir));
        let api: Api<VirtualMachineImport> =
            Api::namespaced(ctx.kube.clone(), import.namespace.as_deref().unwrap_or_default());
        let writer = tokio::spawn(write_progress(
            api.clone(),
            import.name.clone(),
            shared.clone(),
            ctx.settings.progress_interval,
            ctx.metrics.clone(),
        ));
        Ok(Self {
            shared,
            api,
            writer: AbortOnDrop(writer.abort_handle()),
        })
    }

    fn shared(&self) -> Arc<DiskLedger> {
        self.shared.clone()
    }

    /// Stops the progress writer; on success checks every disk has its digest and writes the
    /// final `diskImportStatus` (into `disks` too).
    async fn finish(
        self,
        ctx: &Context,
        import: &ObjectRef<VirtualMachineImport>,
        result: Result<(), ExportError>,
        disks: &mut [DiskInfo],
    ) -> Result<(), ExportError> {
        drop(self.writer);
        result?;
        let finished = self.shared.with_disks(|d| d.clone());
        for (index, disk) in finished.iter().enumerate() {
            if !disks[index].is_exported() {
                ctx.metrics
                    .export_bytes
                    .inc_by(disk.bytes_total.unwrap_or_default());
            }
        }
        disks.clone_from_slice(&finished);
        if let Some(missing) = disks.iter().find(|d| !d.is_exported()) {
            return Err(ExportError::Transfer(format!(
                "disk {} finished without a digest",
                missing.name
            )));
        }
        self.api
            .patch_status(
                &import.name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": { "diskImportStatus": disks } })),
            )
            .await
            .map_err(ExportError::Status)?;
        Ok(())
    }
}

struct AbortOnDrop(AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
