//! The disks of one import's export: their file names (unguessable, within the image server's
//! limits), the `.part` path a disk is written to, the [`ExportLedger`] every source's export
//! commits finished disks, progress and its temporary source objects to, the one
//! [`CommittingSink`] streaming sources write a disk through, and [`write_status`], the one writer
//! that carries that ledger into `status.diskImportStatus` and `status.sourceTemporaryObjects`
//! while the export runs.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use api::{DiskInfo, SourceTemporaryObjects, TransferLimits, VirtualMachineImport};
use bytes::Bytes;
use diskconv::{
    ImageFormat,
    stream::{ConvertingSink, SinkError, StreamMeta, StreamSink},
};
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use plan::SourceVm;
use serde_json::json;
use tokio::sync::Notify;

use crate::{image_server::PARTIAL_SUFFIX, throttle::Throttle};

/// The caps one export honours: its own byte rate, its source's (shared with the source's other
/// imports), and the decoder threads per disk.
#[derive(Clone)]
pub(crate) struct Caps {
    pub(crate) import: Option<Arc<Throttle>>,
    pub(crate) source: Option<Arc<Throttle>>,
    pub(crate) conversion_threads: usize,
}

impl Caps {
    /// As status shows them.
    fn limits(&self) -> TransferLimits {
        TransferLimits {
            import_bytes_per_second: self.import.as_ref().map(|t| t.bytes_per_second()),
            source_bytes_per_second: self.source.as_ref().map(|t| t.bytes_per_second()),
            conversion_threads: u32::try_from(self.conversion_threads).unwrap_or(u32::MAX),
        }
    }
}

/// The digest every served image gets: Harvester's `VirtualMachineImage.spec.checksum` is a
/// SHA-512 of the whole file as downloaded (a qcow2 file hashed as plain bytes).
pub(crate) const SERVED_CHECKSUM: diskconv::Checksum = diskconv::Checksum::Sha512;

/// Longhorn reads backing images with direct I/O: their size must be a multiple of this.
const SERVED_SIZE_ALIGNMENT: u64 = 512;

/// What status should show of one running export, shared by the sinks (which commit finished
/// disks), the decoder callbacks (bytes done), the source (the temporary objects it made) and the
/// one status writer.
pub(crate) struct ExportLedger {
    disks: Mutex<Vec<DiskInfo>>,
    done: Vec<AtomicU64>,
    /// `status.sourceTemporaryObjects` once the export recorded anything (`Some(None)`: cleared).
    temporary: Mutex<Option<Option<SourceTemporaryObjects>>>,
    changed: Notify,
    /// The image directory.
    dir: PathBuf,
    /// The format images are served in.
    format: ImageFormat,
    /// The caps this export honours (`None`: none).
    caps: Option<Caps>,
}

/// A finished disk could not be put in place.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CommitError {
    /// The rename failed.
    #[error("renaming {partial} into place")]
    Rename {
        /// The finished `.part` file.
        partial: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Padding or hashing the finished file failed.
    #[error("{step} {partial}")]
    File {
        /// What was being done.
        step: &'static str,
        /// The finished `.part` file.
        partial: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl ExportLedger {
    pub(crate) fn new(disks: &[DiskInfo], dir: &Path, format: ImageFormat) -> Self {
        Self {
            disks: Mutex::new(disks.to_vec()),
            done: disks
                .iter()
                .map(|d| {
                    AtomicU64::new(if d.is_exported() {
                        d.bytes_done.unwrap_or(0)
                    } else {
                        0
                    })
                })
                .collect(),
            temporary: Mutex::new(None),
            changed: Notify::new(),
            dir: dir.to_owned(),
            format,
            caps: None,
        }
    }

    /// The ledger of an export that honours `caps` (status shows them).
    pub(crate) fn with_caps(mut self, caps: Caps) -> Self {
        self.caps = Some(caps);
        self
    }

    /// Waits until `bytes` more may be read from the source under every cap.
    pub(crate) async fn throttle(&self, bytes: usize) {
        if let Some(caps) = &self.caps {
            for throttle in [&caps.import, &caps.source].into_iter().flatten() {
                throttle.take(bytes).await;
            }
        }
    }

    /// Records what the export made at the source and has not removed yet; it goes to status at
    /// once (a crash must not forget it), `null` when nothing is left.
    pub(crate) fn record_temporary(&self, objects: SourceTemporaryObjects) {
        let value = (!objects.is_empty()).then_some(objects);
        *self.temporary.lock().unwrap_or_else(PoisonError::into_inner) = Some(value);
        self.changed.notify_one();
    }

    /// The status patch of everything recorded: the disks, and the temporary objects once the
    /// export recorded any.
    fn status_patch(&self) -> serde_json::Value {
        let disks = self.with_disks(|d| d.clone());
        let mut status = json!({ "diskImportStatus": disks });
        if let Some(caps) = &self.caps {
            status["transferLimits"] = json!(caps.limits());
        }
        if let Some(temporary) = &*self.temporary.lock().unwrap_or_else(PoisonError::into_inner) {
            status["sourceTemporaryObjects"] = json!(temporary);
        }
        json!({ "status": status })
    }

    /// Writes everything recorded to status now: the export's last word, after its writer stopped.
    ///
    /// # Errors
    /// The API server's.
    pub(crate) async fn flush(&self, api: &Api<VirtualMachineImport>, name: &str) -> Result<(), kube::Error> {
        api.patch_status(name, &PatchParams::default(), &Patch::Merge(self.status_patch()))
            .await
            .map(|_| ())
    }

    pub(crate) fn with_disks<T>(&self, f: impl FnOnce(&mut Vec<DiskInfo>) -> T) -> T {
        match self.disks.lock() {
            Ok(mut disks) => f(&mut disks),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// Whether disk `index` has its checksum (committed, now or before a restart).
    pub(crate) fn is_exported(&self, index: usize) -> bool {
        self.with_disks(|disks| disks.get(index).is_some_and(DiskInfo::is_exported))
    }

    /// The image file names (`diskImportStatus[].diskName`), in status order.
    pub(crate) fn names(&self) -> Vec<String> {
        self.with_disks(|disks| disks.iter().map(|d| d.name.clone()).collect())
    }

    /// Disk `index` starts (again) from its first byte; `total` replaces the recorded size.
    pub(crate) fn restart(&self, index: usize, total: Option<u64>) {
        self.with_disks(|disks| {
            if let Some(disk) = disks.get_mut(index) {
                disk.bytes_done = Some(0);
                if total.is_some() {
                    disk.bytes_total = total;
                }
            }
        });
        self.set_done(index, 0);
    }

    /// Conversion options of disk `index`: the export's decoder threads (the CPUs when it has no
    /// caps), the decoder's progress when `decoder_progress` (a source that reports its own
    /// download progress, in its own unit, says no), and for a raw image its checksum, which the
    /// decoder computes on the way (a raw file is the disk's content; a qcow2 file is hashed when
    /// it is complete).
    pub(crate) fn options(self: &Arc<Self>, index: usize, decoder_progress: bool) -> diskconv::Options {
        let defaults = diskconv::Options::default();
        let progress = decoder_progress.then(|| {
            let ledger = self.clone();
            Arc::new(move |p: &diskconv::Progress| ledger.set_done(index, p.position)) as diskconv::ProgressFn
        });
        diskconv::Options {
            threads: self
                .caps
                .as_ref()
                .map_or(defaults.threads, |c| c.conversion_threads)
                .max(1),
            progress,
            checksum: (self.format == ImageFormat::Raw).then_some(SERVED_CHECKSUM),
            ..defaults
        }
    }

    /// Disk `index`'s `.part` file.
    fn partial(&self, index: usize) -> PathBuf {
        let name = self.with_disks(|disks| disks.get(index).map(|d| d.name.clone()).unwrap_or_default());
        partial_path(&self.dir, &name)
    }

    /// Where disk `index`'s decoder writes: its `.part` file in the served format.
    pub(crate) fn output(&self, index: usize) -> diskconv::Output {
        self.format.output(self.partial(index))
    }

    /// The sink that writes disk `index` into its `.part` file (see [`Self::options`]) and commits it.
    pub(crate) fn sink(self: &Arc<Self>, index: usize, decoder_progress: bool) -> CommittingSink {
        let options = self.options(index, decoder_progress);
        CommittingSink {
            inner: ConvertingSink::new(self.partial(index), self.format, options),
            index,
            ledger: self.clone(),
        }
    }

    /// Logical bytes of disk `index` written so far.
    pub(crate) fn set_done(&self, index: usize, done: u64) {
        if let Some(counter) = self.done.get(index) {
            counter.store(done, Ordering::Relaxed);
        }
    }

    /// The one commit of every source: disk `index`'s finished `.part` file is made a whole
    /// number of sectors long, hashed (unless the decoder already hashed exactly these bytes),
    /// renamed to its servable name, and its checksum goes to status at once, so a restart does
    /// not export it again. Until then the image server cannot see it. Blocking: it may read the
    /// whole file.
    ///
    /// # Errors
    /// [`CommitError`] when the file cannot be padded, read or renamed; nothing is recorded then.
    pub(crate) fn commit(&self, index: usize, report: &diskconv::Report) -> Result<(), CommitError> {
        let Some(name) = self.with_disks(|disks| disks.get(index).map(|d| d.name.clone())) else {
            return Ok(());
        };
        let partial = partial_path(&self.dir, &name);
        let io_err = |step| {
            let partial = partial.clone();
            move |source| CommitError::File {
                step,
                partial,
                source,
            }
        };
        let length = std::fs::metadata(&partial)
            .map_err(io_err("reading the size of"))?
            .len();
        let padded = length.next_multiple_of(SERVED_SIZE_ALIGNMENT);
        if padded != length {
            // Zeros past the end change neither a raw disk's first bytes nor a qcow2 image.
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&partial)
                .map_err(io_err("opening"))?;
            file.set_len(padded).map_err(io_err("padding"))?;
            file.sync_all().map_err(io_err("syncing"))?;
        }
        let checksum = match report.digest(SERVED_CHECKSUM) {
            Some(content) if self.format == ImageFormat::Raw && padded == length => content.to_owned(),
            _ => {
                diskconv::checksum::digest_file(&partial, SERVED_CHECKSUM)
                    .map_err(io_err("hashing"))?
                    .hex
            }
        };
        std::fs::rename(&partial, self.dir.join(&name))
            .map_err(|source| CommitError::Rename { partial, source })?;
        self.record_commit(index, report, checksum);
        Ok(())
    }

    /// Undoes [`Self::commit`] of disk `index` when its export starts over (a lease that died
    /// after the body ended): its digest is cleared and its image removed.
    ///
    /// # Errors
    /// When the image exists and cannot be removed.
    pub(crate) fn uncommit(&self, index: usize) -> std::io::Result<()> {
        let committed = self.with_disks(|disks| {
            disks
                .get_mut(index)
                .and_then(|d| d.checksum.take().map(|_| d.name.clone()))
        });
        if let Some(name) = committed {
            match std::fs::remove_file(self.dir.join(name)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        self.set_done(index, 0);
        Ok(())
    }

    fn record_commit(&self, index: usize, report: &diskconv::Report, checksum: String) {
        self.with_disks(|disks| {
            if let Some(disk) = disks.get_mut(index) {
                disk.checksum = Some(checksum);
                if disk.disk_size == 0 {
                    disk.disk_size = i64::try_from(report.virtual_size).unwrap_or(i64::MAX);
                }
                disk.bytes_done = Some(report.virtual_size);
                disk.bytes_total = Some(report.virtual_size);
                disk.bytes_per_second = None;
                disk.disk_local_path = self.dir.to_string_lossy().into_owned();
            }
        });
        self.set_done(index, report.virtual_size);
        self.changed.notify_one();
    }
}

/// Writes one disk's stream into its `.part` file and, when the stream is whole, commits it
/// through the ledger at once, so a restart does not export it again. Every streaming source
/// (vSphere, OpenStack) hands its disks to this sink; an OVA's disks are committed through the same
/// [`ExportLedger::commit`] as its archive walk verifies them.
pub(crate) struct CommittingSink {
    inner: ConvertingSink,
    index: usize,
    ledger: Arc<ExportLedger>,
}

impl StreamSink for CommittingSink {
    async fn begin(&mut self, meta: &StreamMeta) -> Result<(), SinkError> {
        // An exporter redoes a disk whose lease died after the body ended: undo its commit.
        self.ledger.uncommit(self.index)?;
        self.ledger.restart(self.index, meta.size.or(meta.disk_size));
        self.inner.begin(meta).await
    }

    async fn write(&mut self, chunk: Bytes) -> Result<(), SinkError> {
        self.ledger.throttle(chunk.len()).await;
        self.inner.write(chunk).await
    }

    async fn finish(&mut self) -> Result<(), SinkError> {
        self.inner.finish().await?;
        let report = self.inner.report.clone().ok_or(NoReport)?;
        let (ledger, index) = (self.ledger.clone(), self.index);
        // Hashing a qcow2 image reads it whole: off the async workers.
        tokio::task::spawn_blocking(move || ledger.commit(index, &report))
            .await
            .map_err(|_| CommitStopped { index })??;
        Ok(())
    }
}

/// A sink finished without the converter's report (a converter bug, never a source's fault).
#[derive(Debug, thiserror::Error)]
#[error("the image writer finished without a report")]
struct NoReport;

/// The blocking commit of a finished disk did not run to its end (the runtime is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("the commit of disk {index} stopped before it finished")]
struct CommitStopped {
    index: usize,
}

/// Longest `<import>-<namespace>` prefix kept in an image's name: with `-disk-<n>-<token>.img`
/// and the `.part` of a file being written, names stay within the image server's 240 characters
/// (and the file system's 255) whatever the import is called.
const MAX_NAME_PREFIX: usize = 160;

/// The image file name of disk `index`: upstream's `<vm>-<ns>-disk-<n>` for the humans (cut to
/// [`MAX_NAME_PREFIX`]), then `token`, which makes the name (and so its URL) unguessable.
pub(crate) fn image_name(import_name: &str, namespace: &str, index: usize, token: &str) -> String {
    let mut prefix = format!("{import_name}-{namespace}");
    // DNS-1123 names are ASCII, so any byte is a character boundary; be safe anyway.
    let mut cut = prefix.len().min(MAX_NAME_PREFIX);
    while !prefix.is_char_boundary(cut) {
        cut -= 1;
    }
    prefix.truncate(cut);
    let prefix = prefix.trim_end_matches(['-', '.']);
    format!("{prefix}-disk-{index}-{token}.img")
}

/// One `diskImportStatus` entry per disk, in device order, each named by [`image_name`] with a
/// token of its own from `tokens`.
pub(crate) fn disk_entries(
    import_name: &str,
    namespace: &str,
    vm: &SourceVm,
    spec: &api::VirtualMachineImportSpec,
    mut tokens: impl FnMut() -> String,
) -> Vec<DiskInfo> {
    vm.disks
        .iter()
        .enumerate()
        .map(|(index, disk)| DiskInfo {
            name: image_name(import_name, namespace, index, &tokens()),
            disk_size: i64::try_from(disk.capacity_bytes).unwrap_or(i64::MAX),
            bus_type: plan::vm::disk_bus(disk.controller, &spec.default_disk_bus()),
            bytes_done: Some(0),
            bytes_total: Some(disk.capacity_bytes),
            ..DiskInfo::default()
        })
        .collect()
}

/// Path of a disk's image while it is being written (never served: the image server only serves
/// `*.img`).
pub(crate) fn partial_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}{PARTIAL_SUFFIX}"))
}

/// The one writer of a running export's status: per-disk progress every `interval`, and at once
/// when a disk is committed or the temporary objects change, until aborted (then
/// [`ExportLedger::flush`] writes the last word).
pub(crate) async fn write_status(
    api: Api<VirtualMachineImport>,
    name: String,
    shared: Arc<ExportLedger>,
    interval: Duration,
    metrics: Arc<crate::metrics::Metrics>,
) {
    let mut last: Vec<u64> = shared.done.iter().map(|d| d.load(Ordering::Relaxed)).collect();
    let mut last_at = Instant::now();
    let mut ticker = tokio::time::interval(interval);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shared.changed.notified() => {}
        }
        let elapsed = last_at.elapsed().as_secs_f64().max(0.001);
        last_at = Instant::now();
        let mut total_rate = 0u64;
        shared.with_disks(|disks| {
            for (index, disk) in disks.iter_mut().enumerate() {
                if disk.is_exported() {
                    continue;
                }
                let done = shared.done[index].load(Ordering::Relaxed);
                // A retried attempt restarts at zero; that is not negative throughput.
                let delta = done.saturating_sub(last[index]);
                let rate = (delta as f64 / elapsed) as u64;
                total_rate += rate;
                last[index] = done;
                disk.bytes_done = Some(done);
                disk.bytes_per_second = Some(rate);
            }
        });
        metrics
            .export_bytes_per_second
            .set(i64::try_from(total_rate).unwrap_or(i64::MAX));
        if let Err(error) = shared.flush(&api, &name).await {
            tracing::debug!(import = %name, %error, "export status update failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image_server::{is_servable_name, new_token};

    #[test]
    fn the_status_patch_carries_temporary_objects_only_once_recorded_and_null_when_none_are_left() {
        let disks = [DiskInfo {
            name: "d0.img".into(),
            ..DiskInfo::default()
        }];
        let ledger = ExportLedger::new(&disks, Path::new("/images"), ImageFormat::Qcow2);
        let patch = ledger.status_patch();
        assert_eq!(
            patch["status"]["diskImportStatus"][0]["diskName"], "d0.img",
            "{patch}"
        );
        assert!(
            patch["status"].get("sourceTemporaryObjects").is_none(),
            "an export that recorded nothing leaves the record alone: {patch}"
        );

        ledger.record_temporary(SourceTemporaryObjects {
            leases: vec!["lease-1".into()],
            ..SourceTemporaryObjects::default()
        });
        let patch = ledger.status_patch();
        assert_eq!(
            patch["status"]["sourceTemporaryObjects"]["leases"][0], "lease-1",
            "{patch}"
        );

        ledger.record_temporary(SourceTemporaryObjects::default());
        let patch = ledger.status_patch();
        assert!(
            patch["status"]["sourceTemporaryObjects"].is_null(),
            "nothing left clears the record: {patch}"
        );
    }

    fn report(virtual_size: u64, sha512_of: Option<&[u8]>) -> diskconv::Report {
        diskconv::Report {
            format: "raw".into(),
            virtual_size,
            bytes_read: virtual_size,
            bytes_written: virtual_size,
            checksum: sha512_of.map(|content| {
                let mut digester = SERVED_CHECKSUM.digester();
                digester.update(content);
                digester.finish()
            }),
            seconds: 0.0,
        }
    }

    #[test]
    fn a_commit_pads_the_file_to_whole_sectors_and_records_the_checksum_of_what_is_served() {
        let dir = tempfile::tempdir().unwrap();
        let disks = [DiskInfo {
            name: "odd.img".into(),
            ..DiskInfo::default()
        }];
        for (format, decoder_hashed) in [(ImageFormat::Raw, true), (ImageFormat::Qcow2, false)] {
            let ledger = ExportLedger::new(&disks, dir.path(), format);
            let content = vec![7u8; 1000];
            std::fs::write(partial_path(dir.path(), "odd.img"), &content).unwrap();
            let report = report(1000, decoder_hashed.then_some(&content[..]));
            ledger.commit(0, &report).unwrap();
            let served = std::fs::read(dir.path().join("odd.img")).unwrap();
            assert_eq!(served.len(), 1024, "{format:?}: a whole number of sectors");
            assert_eq!(&served[..1000], &content[..]);
            assert!(served[1000..].iter().all(|&b| b == 0));
            let mut digester = SERVED_CHECKSUM.digester();
            digester.update(&served);
            let recorded = ledger.with_disks(|d| d[0].checksum.clone());
            assert_eq!(
                recorded,
                Some(digester.finish().hex),
                "{format:?}: the checksum is of the file as served, padding included"
            );
            assert!(ledger.is_exported(0));
            assert!(!partial_path(dir.path(), "odd.img").exists());
        }
    }

    #[test]
    fn a_raw_image_of_whole_sectors_keeps_the_decoders_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let disks = [DiskInfo {
            name: "even.img".into(),
            ..DiskInfo::default()
        }];
        let ledger = ExportLedger::new(&disks, dir.path(), ImageFormat::Raw);
        std::fs::write(partial_path(dir.path(), "even.img"), vec![1u8; 1024]).unwrap();
        // A digest the file does not have proves that no second pass read the file.
        let report = report(1024, Some(b"what the decoder hashed"));
        ledger.commit(0, &report).unwrap();
        let recorded = ledger.with_disks(|d| d[0].checksum.clone());
        assert_eq!(recorded.as_deref(), report.digest(SERVED_CHECKSUM));
    }

    #[test]
    fn image_names_stay_servable_whatever_the_import_is_called() {
        let token = new_token();
        for (import, namespace) in [
            ("web01", "default"),
            (&*"a".repeat(200), "demo"),
            (&*"b".repeat(253), &*"n".repeat(63)),
            (&*format!("{}-x", "c".repeat(158)), "default"),
        ] {
            let name = image_name(import, namespace, 12, &token);
            assert!(is_servable_name(&name), "{name}");
            assert!(name.len() + PARTIAL_SUFFIX.len() <= 255, "{}", name.len());
            assert!(name.ends_with(&format!("-disk-12-{token}.img")), "{name}");
            assert!(name.starts_with(&import[..import.len().min(20)]), "{name}");
        }
        assert_eq!(
            image_name("web01", "default", 0, "t0"),
            "web01-default-disk-0-t0.img"
        );
    }
}
