//! Disk export through `ExportVm` and its `HttpNfcLease`:
//!
//! ```text
//! ExportVm ─► lease ─► poll state until ready | error ─► info.deviceUrl[disk=true]
//!    │                                                      │ key → VirtualDisk (controller class/family + bus + unit)
//!    │        keep-alive task: HttpNfcLeaseProgress every ≤ leaseTimeout/4
//!    │                                                      ▼
//!    │        GET every disk URL concurrently ('*' host replaced) ─► StreamSink per disk
//!    ▼
//! all disks ok ─► HttpNfcLeaseComplete      any failure ─► HttpNfcLeaseAbort
//!                                           transfer failure ─► fresh lease for the failed disks, backoff, bounded
//! ```
//!
//! Bytes are handed to the caller's [`StreamSink`] as they arrive; nothing is written here. A sink
//! sees [`StreamSink::begin`] before every attempt, so partial output from a broken attempt is
//! discarded by the sink, never kept. A lease that is not released normally (error, panic, future
//! dropped) is aborted by a guard.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use diskconv::stream::{SinkError, StreamCutShort, StreamFormat, StreamMeta, StreamSink};
use reqwest::{StatusCode, Url, header};
use serde::{Deserialize, Serialize};

use crate::{
    client::{self, Client},
    inventory,
    proto::{
        Fault, MoRef, envelope,
        envelope::{ObjectSpec, PropertySpec},
        nfc,
        response::{self, LeaseInfo, LeaseState},
        vm::{DeviceKey, DeviceKeyError, Disk, VmDescription},
    },
    tls,
};

/// How often the lease state is polled while it initializes.
const LEASE_POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Keep-alive never waits longer than this between progress calls, whatever the lease timeout:
/// govmomi ticks every 2 s, others every 30 s; 30 s keeps the load negligible.
const MAX_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);

/// Nor more often than this, so a tiny lease timeout cannot turn into a busy loop.
const MIN_KEEPALIVE_INTERVAL: Duration = Duration::from_millis(200);

/// Export tuning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportOptions {
    /// Leases tried at most (the first plus retries after transfer failures).
    pub max_attempts: u32,
    /// Pause before the first retry; doubles each time up to [`ExportOptions::max_backoff`].
    pub backoff: Duration,
    /// Longest pause between retries.
    pub max_backoff: Duration,
    /// How long a lease may stay `initializing`.
    pub lease_ready_timeout: Duration,
    /// A download that delivers no byte for this long is broken.
    pub idle_timeout: Duration,
    /// Override of the keep-alive period (default: leaseTimeout/4 clamped to 0.2 s..30 s).
    pub keepalive_interval: Option<Duration>,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(30),
            lease_ready_timeout: Duration::from_secs(300),
            idle_timeout: Duration::from_secs(120),
            keepalive_interval: None,
        }
    }
}

/// What one disk's transfer did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiskTransfer {
    /// The disk's device key.
    pub disk_key: i32,
    /// The disk's label.
    pub label: String,
    /// The lease device key it came from (last attempt).
    pub device_key: String,
    /// How the disk URL's certificate was checked.
    pub tls: NfcTls,
    /// Bytes received in the successful attempt.
    pub bytes: u64,
    /// Attempts it took.
    pub attempts: u32,
    /// Wall time of the successful attempt.
    pub elapsed: Duration,
}

/// What an export did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportReport {
    /// Per disk, in device order.
    pub disks: Vec<DiskTransfer>,
    /// Leases taken (1 when nothing failed).
    pub leases: u32,
    /// `HttpNfcLeaseProgress` calls made over all leases.
    pub progress_calls: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Whether TLS verification was off for the transfer.
    pub tls_insecure: bool,
}

/// A finished export: the report and the sinks, handed back.
#[derive(Debug)]
pub struct Exported<S> {
    /// What happened.
    pub report: ExportReport,
    /// The sinks by disk key, each finished.
    pub sinks: BTreeMap<i32, S>,
}

/// Why a disk download failed.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// Connection, TLS or body error (including a cut connection).
    #[error("transfer of {url} failed")]
    Transport {
        /// The URL (lease ticket included; it is single-use and dies with the lease).
        url: String,
        /// What reqwest saw.
        #[source]
        source: reqwest::Error,
    },
    /// The server answered something other than 200.
    #[error("GET {url} answered HTTP {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status.
        status: StatusCode,
    },
    /// No byte arrived for the idle timeout.
    #[error("no data from {url} for {timeout:?} after {bytes} bytes")]
    Stalled {
        /// The URL.
        url: String,
        /// The limit.
        timeout: Duration,
        /// Bytes received before stalling.
        bytes: u64,
    },
    /// The body ended before its announced length.
    #[error("{url} ended after {got} of {expected} announced bytes")]
    Truncated {
        /// The URL.
        url: String,
        /// Bytes received.
        got: u64,
        /// `Content-Length`.
        expected: u64,
    },
    /// The lease was no longer `ready` when the transfer ended, so the data is not trusted.
    #[error("the lease was no longer ready after the transfer (state {state})")]
    LeaseLost {
        /// The state read (or `None` when it could not be read).
        state: String,
    },
    /// The body ended normally, but the sink found the stream cut short; retried.
    #[error("{url} ended early after {bytes} bytes")]
    EndedEarly {
        /// The URL.
        url: String,
        /// Bytes received.
        bytes: u64,
        /// What the sink found.
        #[source]
        source: SinkError,
    },
    /// The sink refused the data; not retried.
    #[error("the sink for disk {disk_key} failed")]
    Sink {
        /// The disk.
        disk_key: i32,
        /// The sink's error.
        #[source]
        source: SinkError,
    },
}

impl DownloadError {
    fn retryable(&self) -> bool {
        !matches!(self, Self::Sink { .. })
    }
}

/// Why an export failed. The lease, if any, has been aborted.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No sink was given for a disk of the VM.
    #[error("no sink for disk {disk_key} ({label})")]
    MissingSink {
        /// The disk.
        disk_key: i32,
        /// Its label.
        label: String,
    },
    /// The VM has no disk to export.
    #[error("VM {vm} has no disks to export")]
    NoDisks {
        /// The VM.
        vm: MoRef,
    },
    /// A SOAP call failed.
    #[error("{step}")]
    Call {
        /// What we were doing.
        step: &'static str,
        /// Why.
        #[source]
        source: client::Error,
    },
    /// Reading the lease failed.
    #[error("reading lease {lease}")]
    ReadLease {
        /// The lease.
        lease: MoRef,
        /// Why (boxed: keeps the error small on the happy path).
        #[source]
        source: Box<inventory::Error>,
    },
    /// The lease went to `error`.
    #[error("lease {lease} failed")]
    LeaseFailed {
        /// The lease.
        lease: MoRef,
        /// The server's fault (boxed: keeps the error small on the happy path).
        #[source]
        fault: Box<Fault>,
    },
    /// The lease did not become ready in time.
    #[error("lease {lease} still initializing after {timeout:?}")]
    LeaseNotReady {
        /// The lease.
        lease: MoRef,
        /// The limit.
        timeout: Duration,
    },
    /// A device URL's key matches no disk, or a disk got no URL.
    #[error("lease {lease}: cannot match device URLs to disks")]
    DeviceMatch {
        /// The lease.
        lease: MoRef,
        /// Why.
        #[source]
        source: DeviceKeyError,
    },
    /// A disk of the VM has no device URL in the lease.
    #[error("lease {lease} has no device URL for disk {disk_key} ({label})")]
    NoUrlForDisk {
        /// The lease.
        lease: MoRef,
        /// The disk.
        disk_key: i32,
        /// Its label.
        label: String,
    },
    /// A device URL's `sslThumbprint` is not a SHA-1.
    #[error("lease {lease}: sslThumbprint '{thumbprint}' is not a SHA-1 fingerprint")]
    BadThumbprint {
        /// The lease.
        lease: MoRef,
        /// The thumbprint as given.
        thumbprint: String,
    },
    /// A device URL is not a URL.
    #[error("lease {lease}: device URL '{url}' is invalid")]
    BadUrl {
        /// The lease.
        lease: MoRef,
        /// The URL.
        url: String,
    },
    /// A download failed and was not (or no longer) retried.
    #[error("disk {disk_key} ({label}) failed after {attempts} attempt(s)")]
    Download {
        /// The disk.
        disk_key: i32,
        /// Its label.
        label: String,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        #[source]
        source: DownloadError,
    },
    /// A download task panicked or was cancelled.
    #[error("download task for disk {disk_key} did not finish")]
    TaskJoin {
        /// The disk.
        disk_key: i32,
    },
}

/// What happens to an export's leases, for a caller that records them (so that a process killed
/// mid-export leaves a record its successor can abort: an open lease blocks power operations on
/// the source VM until vCenter times it out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseEvent {
    /// `ExportVm` answered with this lease.
    Taken(MoRef),
    /// The lease was completed or aborted (vCenter said so).
    Released(MoRef),
}

/// Called on every [`LeaseEvent`] of an export.
pub type LeaseHook = Arc<dyn Fn(LeaseEvent) + Send + Sync>;

/// Releases the lease on every path: `complete`/`abort` explicitly, or abort from `Drop` when the
/// export future is dropped or unwinds; tells the hook once vCenter confirmed the release.
struct LeaseGuard {
    client: Client,
    lease: MoRef,
    released: bool,
    hook: Option<LeaseHook>,
}

impl LeaseGuard {
    fn new(client: Client, lease: MoRef, hook: Option<LeaseHook>) -> Self {
        if let Some(hook) = &hook {
            hook(LeaseEvent::Taken(lease.clone()));
        }
        Self {
            client,
            lease,
            released: false,
            hook,
        }
    }

    fn released(&self) {
        if let Some(hook) = &self.hook {
            hook(LeaseEvent::Released(self.lease.clone()));
        }
    }

    async fn complete(mut self) -> Result<(), client::Error> {
        self.released = true;
        self.client
            .call(&envelope::lease_complete(&self.lease))
            .await
            .map(|_| self.released())
    }

    async fn abort(mut self, reason: &str) {
        self.released = true;
        match self.client.abort_lease(&self.lease, reason).await {
            Ok(()) => self.released(),
            Err(e) => {
                tracing::warn!(lease = %self.lease, error = %e, "HttpNfcLeaseAbort failed; the lease will time out");
            }
        }
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let client = self.client.clone();
        let lease = self.lease.clone();
        let hook = self.hook.take();
        handle.spawn(async move {
            if client.abort_lease(&lease, "export cancelled").await.is_ok()
                && let Some(hook) = hook
            {
                hook(LeaseEvent::Released(lease));
            }
        });
    }
}

impl Client {
    /// Aborts an export lease (`HttpNfcLeaseAbort`). A lease vCenter no longer knows, or one
    /// already completed or aborted, counts as aborted: there is nothing left open.
    ///
    /// # Errors
    /// The call failed for another reason (vCenter unreachable, session refused).
    pub async fn abort_lease(&self, lease: &MoRef, reason: &str) -> Result<(), client::Error> {
        use crate::proto::FaultKind;
        match self.call(&envelope::lease_abort(lease, Some(reason))).await {
            Ok(_) => Ok(()),
            Err(e)
                if e.fault().is_some_and(|f| {
                    matches!(
                        f.kind,
                        FaultKind::ManagedObjectNotFound { .. } | FaultKind::InvalidState
                    )
                }) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

/// A spawned download that is aborted when the export future is dropped (the caller cancelled), so no
/// transfer outlives its lease, which [`LeaseGuard`] aborts on drop.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Stops the keep-alive task when dropped.
struct KeepAlive {
    task: tokio::task::JoinHandle<()>,
    failed: Arc<AtomicBool>,
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn keepalive_period(info: &LeaseInfo, options: &ExportOptions) -> Duration {
    options.keepalive_interval.unwrap_or_else(|| {
        (Duration::from_secs(u64::from(info.lease_timeout_secs)) / 4)
            .clamp(MIN_KEEPALIVE_INTERVAL, MAX_KEEPALIVE_INTERVAL)
    })
}

struct Planned {
    disk: Disk,
    device_key: String,
    url: Url,
    http: reqwest::Client,
    tls: NfcTls,
}

/// How the TLS certificate of a disk URL was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum NfcTls {
    /// Same host as the SDK: the session's own TLS policy.
    Session,
    /// Another host (an ESXi behind vCenter): pinned to the lease's `sslThumbprint`, which came
    /// over the verified SOAP session.
    LeaseThumbprint,
}

impl Client {
    async fn lease_props(&self, lease: &MoRef, paths: &[&str]) -> Result<response::ObjectContent, Error> {
        let read = |source| Error::ReadLease {
            lease: lease.clone(),
            source: Box::new(source),
        };
        let spec = PropertySpec::new("HttpNfcLease", paths);
        let mut objects = self
            .retrieve("reading the lease", &[spec], &[ObjectSpec::Object(lease.clone())])
            .await
            .map_err(read)?;
        if objects.is_empty() {
            return Err(read(inventory::Error::VmGone { vm: lease.clone() }));
        }
        Ok(objects.swap_remove(0))
    }

    async fn wait_lease_ready(&self, lease: &MoRef, timeout: Duration) -> Result<LeaseInfo, Error> {
        let start = Instant::now();
        let shape = |e: response::Error| Error::ReadLease {
            lease: lease.clone(),
            source: Box::new(inventory::Error::Call {
                step: "reading the lease",
                source: e.into(),
            }),
        };
        loop {
            let object = self.lease_props(lease, &["state", "error"]).await?;
            let state = object
                .prop("state")
                .map(response::lease_state)
                .transpose()
                .map_err(shape)?;
            match state {
                Some(LeaseState::Ready) => break,
                Some(LeaseState::Error) | Some(LeaseState::Done) => {
                    let fault = object
                        .prop("error")
                        .map(crate::proto::fault::from_localized)
                        .unwrap_or(Fault {
                            kind: crate::proto::FaultKind::Other {
                                name: "LeaseError".into(),
                            },
                            message: format!("lease ended in state {state:?} without a fault"),
                        });
                    return Err(Error::LeaseFailed {
                        lease: lease.clone(),
                        fault: Box::new(fault),
                    });
                }
                Some(LeaseState::Initializing) | None => {}
            }
            if start.elapsed() >= timeout {
                return Err(Error::LeaseNotReady {
                    lease: lease.clone(),
                    timeout,
                });
            }
            tokio::time::sleep(LEASE_POLL_INTERVAL).await;
        }
        let object = self.lease_props(lease, &["info"]).await?;
        let info = object.prop("info").ok_or_else(|| {
            shape(response::Error::Shape {
                method: "RetrievePropertiesEx",
                what: "lease has no info".into(),
            })
        })?;
        response::lease_info(info).map_err(shape)
    }

    fn nfc_client(&self, lease: &MoRef, thumbprint: &str) -> Result<reqwest::Client, Error> {
        let bad = |_| Error::BadThumbprint {
            lease: lease.clone(),
            thumbprint: thumbprint.chars().take(100).collect(),
        };
        let pin = tls::parse_sha1_thumbprint(thumbprint).map_err(bad)?;
        let config = tls::client_config_sha1_pin(pin).map_err(bad)?;
        reqwest::Client::builder()
            .tls_backend_preconfigured(config)
            .connect_timeout(self.connect_timeout())
            .build()
            .map_err(|source| Error::Call {
                step: "building the NFC HTTP client",
                source: client::Error::BuildHttpClient(source),
            })
    }

    fn plan(&self, lease: &MoRef, info: &LeaseInfo, disks: &[&Disk]) -> Result<Vec<Planned>, Error> {
        let all: Vec<Disk> = disks.iter().map(|d| (*d).clone()).collect();
        let mut by_disk: BTreeMap<i32, Planned> = BTreeMap::new();
        for device in info
            .device_urls
            .iter()
            .filter(|d| d.disk || d.url.ends_with(".vmdk"))
        {
            let key = DeviceKey::parse(&device.key).map_err(|source| Error::DeviceMatch {
                lease: lease.clone(),
                source,
            })?;
            let disk = match key.find_disk(&device.key, &all) {
                Ok(disk) => disk,
                // A disk we are not asked for this time (already done in an earlier attempt).
                Err(DeviceKeyError::NoDisk { .. }) => continue,
                Err(source) => {
                    return Err(Error::DeviceMatch {
                        lease: lease.clone(),
                        source,
                    });
                }
            };
            let bad_url = || Error::BadUrl {
                lease: lease.clone(),
                url: device.url.chars().take(300).collect(),
            };
            let url = nfc::resolve_device_url(&device.url, self.sdk_url()).ok_or_else(bad_url)?;
            let same_host = url.host_str() == self.sdk_url().host_str()
                && url.port_or_known_default() == self.sdk_url().port_or_known_default();
            let (http, tls) = match (&device.ssl_thumbprint, same_host || self.tls_insecure()) {
                (Some(thumbprint), false) => (self.nfc_client(lease, thumbprint)?, NfcTls::LeaseThumbprint),
                _ => (self.http().clone(), NfcTls::Session),
            };
            by_disk.insert(
                disk.key,
                Planned {
                    disk: disk.clone(),
                    device_key: device.key.clone(),
                    url,
                    http,
                    tls,
                },
            );
        }
        disks
            .iter()
            .map(|d| {
                by_disk.remove(&d.key).ok_or_else(|| Error::NoUrlForDisk {
                    lease: lease.clone(),
                    disk_key: d.key,
                    label: d.label.clone(),
                })
            })
            .collect()
    }

    fn start_keepalive(
        &self,
        lease: &MoRef,
        period: Duration,
        received: Arc<AtomicU64>,
        total: u64,
        calls: Arc<AtomicU64>,
    ) -> KeepAlive {
        let client = self.clone();
        let lease = lease.clone();
        let failed = Arc::new(AtomicBool::new(false));
        let flag = failed.clone();
        let task = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(period);
            loop {
                ticker.tick().await;
                let done = received.load(Ordering::Relaxed);
                // Streams are compressed, so bytes/capacity under-reports; clamp below 100 until complete.
                let percent = done.saturating_mul(100).checked_div(total).unwrap_or(0).min(99);
                let percent = u8::try_from(percent).unwrap_or(99);
                match client.call(&envelope::lease_progress(&lease, percent)).await {
                    Ok(_) => {
                        calls.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        tracing::warn!(lease = %lease, error = %e, "HttpNfcLeaseProgress failed");
                        flag.store(true, Ordering::Relaxed);
                    }
                }
            }
        });
        KeepAlive { task, failed }
    }

    /// Exports every disk of `vm` into its sink (by disk key), retrying broken transfers with a
    /// fresh lease. The VM must be powered off (see [`Client::ensure_powered_off`]).
    ///
    /// # Errors
    /// [`Error`]; on error every lease taken has been aborted and the sinks are dropped (a sink
    /// that writes files should remove unfinished output on drop).
    pub async fn export_vm<S: StreamSink>(
        &self,
        vm: &VmDescription,
        sinks: BTreeMap<i32, S>,
        options: &ExportOptions,
    ) -> Result<Exported<S>, Error> {
        self.export_vm_recorded(vm, sinks, options, None).await
    }

    /// [`Client::export_vm`], telling `on_lease` of every lease taken and released.
    ///
    /// # Errors
    /// As [`Client::export_vm`].
    pub async fn export_vm_recorded<S: StreamSink>(
        &self,
        vm: &VmDescription,
        mut sinks: BTreeMap<i32, S>,
        options: &ExportOptions,
        on_lease: Option<LeaseHook>,
    ) -> Result<Exported<S>, Error> {
        let start = Instant::now();
        if vm.disks.is_empty() {
            return Err(Error::NoDisks { vm: vm.moref.clone() });
        }
        for disk in &vm.disks {
            if !sinks.contains_key(&disk.key) {
                return Err(Error::MissingSink {
                    disk_key: disk.key,
                    label: disk.label.clone(),
                });
            }
        }
        let mut pending: Vec<&Disk> = vm.disks.iter().collect();
        let mut finished: BTreeMap<i32, S> = BTreeMap::new();
        let mut transfers: BTreeMap<i32, DiskTransfer> = BTreeMap::new();
        let mut attempts_by_disk: BTreeMap<i32, u32> = BTreeMap::new();
        let progress_calls = Arc::new(AtomicU64::new(0));
        let mut leases = 0u32;
        let mut backoff = options.backoff;
        let max_attempts = options.max_attempts.max(1);
        loop {
            leases += 1;
            let request = envelope::export_vm(&vm.moref);
            let body = self.call(&request).await.map_err(|source| Error::Call {
                step: "ExportVm",
                source,
            })?;
            let lease = response::moref(request.method, &body).map_err(|e| Error::Call {
                step: "ExportVm",
                source: e.into(),
            })?;
            let guard = LeaseGuard::new(self.clone(), lease.clone(), on_lease.clone());
            tracing::info!(vm = %vm.moref, lease = %lease, attempt = leases, disks = pending.len(), "export lease taken");

            let prepared = async {
                let info = self.wait_lease_ready(&lease, options.lease_ready_timeout).await?;
                let plan = self.plan(&lease, &info, &pending)?;
                Ok::<_, Error>((info, plan))
            }
            .await;
            let (info, plan) = match prepared {
                Ok(v) => v,
                Err(e) => {
                    guard.abort(&e.to_string()).await;
                    return Err(e);
                }
            };

            let received = Arc::new(AtomicU64::new(0));
            let total: u64 = plan
                .iter()
                .map(|p| p.disk.capacity_bytes)
                .fold(0, u64::saturating_add);
            let keepalive = self.start_keepalive(
                &lease,
                keepalive_period(&info, options),
                received.clone(),
                total,
                progress_calls.clone(),
            );

            let cookie = self.session_cookie().await;
            let mut tasks = Vec::with_capacity(plan.len());
            for planned in plan {
                let Some(sink) = sinks.remove(&planned.disk.key) else {
                    return Err(Error::MissingSink {
                        disk_key: planned.disk.key,
                        label: planned.disk.label.clone(),
                    });
                };
                *attempts_by_disk.entry(planned.disk.key).or_default() += 1;
                let cookie = cookie.clone();
                let received = received.clone();
                let idle = options.idle_timeout;
                tasks.push(AbortOnDrop(tokio::spawn(async move {
                    let mut sink = sink;
                    let started = Instant::now();
                    let result = download(&planned, cookie.as_deref(), &mut sink, received, idle).await;
                    (planned, sink, result, started.elapsed())
                })));
            }

            let mut failures: Vec<(Disk, DownloadError)> = Vec::new();
            let mut fatal: Option<Error> = None;
            for mut task in tasks {
                match (&mut task.0).await {
                    Ok((planned, sink, Ok(bytes), elapsed)) => {
                        let key = planned.disk.key;
                        transfers.insert(
                            key,
                            DiskTransfer {
                                disk_key: key,
                                label: planned.disk.label.clone(),
                                device_key: planned.device_key,
                                tls: planned.tls,
                                bytes,
                                attempts: attempts_by_disk.get(&key).copied().unwrap_or(1),
                                elapsed,
                            },
                        );
                        finished.insert(key, sink);
                    }
                    Ok((planned, sink, Err(e), _)) => {
                        tracing::warn!(disk = planned.disk.key, error = %e, "disk download failed");
                        sinks.insert(planned.disk.key, sink);
                        failures.push((planned.disk, e));
                    }
                    Err(join) => {
                        tracing::error!(error = %join, "download task did not finish");
                        fatal.get_or_insert(Error::TaskJoin { disk_key: 0 });
                    }
                }
            }
            let keepalive_failed = keepalive.failed.load(Ordering::Relaxed);
            drop(keepalive);

            if failures.is_empty() && fatal.is_none() {
                // A lease that died during the transfer (expired, aborted elsewhere) may have ended
                // bodies early but cleanly; only data read under a live lease is trusted.
                let state = self
                    .lease_props(&lease, &["state"])
                    .await
                    .ok()
                    .and_then(|o| o.prop("state").and_then(|v| response::lease_state(v).ok()));
                if state != Some(LeaseState::Ready) {
                    tracing::warn!(lease = %lease, ?state, keepalive_failed, "lease not ready after the transfer; redoing its disks");
                    for disk in &pending {
                        transfers.remove(&disk.key);
                        if let Some(sink) = finished.remove(&disk.key) {
                            sinks.insert(disk.key, sink);
                        }
                        failures.push((
                            (*disk).clone(),
                            DownloadError::LeaseLost {
                                state: format!("{state:?}"),
                            },
                        ));
                    }
                }
            }

            if failures.is_empty() && fatal.is_none() {
                if let Err(e) = guard.complete().await {
                    // The data is all here; a lease we could not complete just times out server-side.
                    tracing::warn!(lease = %lease, error = %e, keepalive_failed, "HttpNfcLeaseComplete failed");
                }
                let report = ExportReport {
                    disks: vm.disks.iter().filter_map(|d| transfers.remove(&d.key)).collect(),
                    leases,
                    progress_calls: progress_calls.load(Ordering::Relaxed),
                    elapsed: start.elapsed(),
                    tls_insecure: self.tls_insecure(),
                };
                return Ok(Exported {
                    report,
                    sinks: finished,
                });
            }

            let reason = failures
                .first()
                .map_or_else(|| "download task failed".to_owned(), |(_, e)| e.to_string());
            guard.abort(&reason).await;
            if let Some(e) = fatal {
                return Err(e);
            }
            let exhausted = leases >= max_attempts;
            if let Some(pos) = failures.iter().position(|(_, e)| !e.retryable() || exhausted) {
                let (disk, source) = failures.swap_remove(pos);
                return Err(Error::Download {
                    attempts: attempts_by_disk.get(&disk.key).copied().unwrap_or(1),
                    disk_key: disk.key,
                    label: disk.label,
                    source,
                });
            }
            pending = vm
                .disks
                .iter()
                .filter(|d| failures.iter().any(|(f, _)| f.key == d.key))
                .collect();
            for (disk, error) in &failures {
                let mut why = error.to_string();
                let mut source = std::error::Error::source(error);
                while let Some(cause) = source {
                    why = format!("{why}: {cause}");
                    source = cause.source();
                }
                tracing::warn!(disk = %disk.label, error = %why, ?backoff, retry = leases + 1, "disk transfer failed; retrying with a fresh lease");
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(options.max_backoff);
        }
    }
}

async fn download<S: StreamSink>(
    planned: &Planned,
    cookie: Option<&str>,
    sink: &mut S,
    received: Arc<AtomicU64>,
    idle: Duration,
) -> Result<u64, DownloadError> {
    let url = planned.url.to_string();
    let disk_key = planned.disk.key;
    let sink_err = |source| DownloadError::Sink { disk_key, source };
    let meta = StreamMeta {
        format: StreamFormat::VmdkStreamOptimized,
        size: None,
        disk_size: Some(planned.disk.capacity_bytes),
    };
    sink.begin(&meta).await.map_err(sink_err)?;
    let mut request = planned.http.get(planned.url.clone());
    if let Some(cookie) = cookie {
        // Harmless for ESXi's NFC (the ticket in the path authorises) and needed by some proxies.
        request = request.header(header::COOKIE, cookie);
    }
    let stalled = |bytes| DownloadError::Stalled {
        url: url.clone(),
        timeout: idle,
        bytes,
    };
    let mut response = tokio::time::timeout(idle, request.send())
        .await
        .map_err(|_| stalled(0))?
        .map_err(|e| DownloadError::Transport {
            url: url.clone(),
            source: e.without_url(),
        })?;
    if response.status() != StatusCode::OK {
        return Err(DownloadError::Status {
            url,
            status: response.status(),
        });
    }
    let expected = response.content_length();
    let mut bytes = 0u64;
    loop {
        let chunk = tokio::time::timeout(idle, response.chunk())
            .await
            .map_err(|_| stalled(bytes))?
            .map_err(|e| DownloadError::Transport {
                url: url.clone(),
                source: e.without_url(),
            })?;
        let Some(chunk) = chunk else { break };
        bytes = bytes.saturating_add(chunk.len() as u64);
        received.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        sink.write(chunk).await.map_err(sink_err)?;
    }
    if let Some(expected) = expected
        && expected != bytes
    {
        return Err(DownloadError::Truncated {
            url,
            got: bytes,
            expected,
        });
    }
    match sink.finish().await {
        Ok(()) => Ok(bytes),
        Err(e) if e.is::<StreamCutShort>() => Err(DownloadError::EndedEarly {
            url,
            bytes,
            source: e,
        }),
        Err(e) => Err(sink_err(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalive_period_is_a_quarter_of_the_timeout_within_bounds() {
        let info = |secs| LeaseInfo {
            device_urls: vec![],
            lease_timeout_secs: secs,
            total_disk_capacity_kb: None,
        };
        let o = ExportOptions::default();
        assert_eq!(keepalive_period(&info(300), &o), Duration::from_secs(30));
        assert_eq!(keepalive_period(&info(8), &o), Duration::from_secs(2));
        assert_eq!(keepalive_period(&info(1), &o), Duration::from_millis(250));
    }
}
