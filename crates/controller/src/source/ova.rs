//! The OVA source: an HTTP(S) client from an `OvaSource` and its optional Secret
//! (basic auth, `ca.crt`; TLS verified unless the source opts out), the source check (a HEAD),
//! the VM read from the archive's leading `.ovf` and translated into `plan`'s model, and the
//! export: one pass over the archive as it downloads, each disk decoded into its image while its
//! member streams by and committed only once the member matched the manifest.
//!
//! ```text
//!  GET url ─► fetch task ─► bounded channel ─► blocking thread: tar walk ─► .ovf, .mf
//!     ▲          │ cut? Range: bytes=N-                      └─► disk member ─► hash + decode ─► <name>.part
//!     └──────────┘ (If-Range: the first validator)                 digest matches ─► rename to <name>.img
//! ```
//!
//! No byte of the OVA is stored: a cut connection resumes where it broke when the server takes
//! Range requests, else the archive is read again from the start (disks already committed are
//! read past, not decoded again).

use error_text::chain;
use std::{
    io::Read,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use api::{OvaSource, VirtualMachineImport, VirtualMachineImportStatus, names::ova as ova_secret};
use async_trait::async_trait;
use diskconv::{
    archive::{DiskTargets, convert_ova_into},
    stream::{ChunkReader, ChunkSender, bridge},
};
use kube::ResourceExt;
use plan::{
    ControllerKind, Firmware, SourceDisk, SourceNic, SourceVm, machine::PowerFact, risks::RiskFacts,
    transition::StopRequest,
};
use reqwest::{
    StatusCode, Url,
    header::{ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, ETAG, HeaderMap, IF_RANGE, LAST_MODIFIED, RANGE},
};
use tls::TlsMode;
use tokio::task::AbortHandle;
use vsphere::Password;

use super::interface::{
    Check, ConnectedExport, KindError, Source, SourceChecks, SourceError, SourceExport, SourceObject,
    looks_like_certificate_failure,
};
use crate::{
    disks::{ExportLedger, partial_path},
    secret::{SecretError, SourceSecret, TrustKeys, default_tls},
};

/// `httpTimeoutSeconds` when unset (upstream's default).
pub(crate) const DEFAULT_TIMEOUT_SECONDS: u64 = 600;
/// Chunks buffered between the download and the archive walk (a few hundred KiB).
const CHANNEL_CHUNKS: usize = 16;
/// Resumed requests in a row that may fail before the download gives up on this pass.
const MAX_RESUMES: u32 = 5;
/// Passes over the whole archive when a cut connection cannot be resumed.
const MAX_PASSES: u32 = 3;

/// Why an `OvaSource` cannot be read, or its archive did not check out.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OvaError {
    /// `spec.url` is not an http(s) URL.
    #[error("spec.url {url:?} is not a valid http:// or https:// URL: {detail}")]
    InvalidUrl {
        /// The URL as written (without credentials).
        url: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The Secret is missing or unreadable, or a key of it unusable.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// The HTTP client could not be built.
    #[error("building the HTTP client")]
    Client(#[source] reqwest::Error),
    /// The server's certificate did not verify.
    #[error(
        "TLS verification of {url} failed ({detail}); put the CA certificate (PEM) under the secret's \
         'ca.crt' key or the SHA-256 fingerprint of the server's certificate under \
         'certificateFingerprint', or set spec.insecureSkipVerify: true to skip verification"
    )]
    TlsVerification {
        /// The URL.
        url: String,
        /// The TLS error.
        detail: String,
    },
    /// The server wants (other) credentials.
    #[error("{url} answered {status}; {hint}")]
    Unauthorized {
        /// The URL.
        url: String,
        /// The status.
        status: StatusCode,
        /// What to do about it.
        hint: &'static str,
    },
    /// Any other unexpected HTTP status.
    #[error("{url} answered {status}")]
    HttpStatus {
        /// The URL.
        url: String,
        /// The status.
        status: StatusCode,
    },
    /// No answer (refused, DNS, timeout, reset).
    #[error("cannot reach {url}: {detail}")]
    Unreachable {
        /// The URL.
        url: String,
        /// The error chain.
        detail: String,
    },
    /// The connection broke and could not be resumed, on every pass over the archive.
    #[error("downloading {url} failed: {detail}")]
    Download {
        /// The URL.
        url: String,
        /// What broke last.
        detail: String,
    },
    /// The archive is not a usable OVA (layout, descriptor, manifest, a disk that does not decode).
    #[error("OVA {url}: {detail}")]
    Archive {
        /// The URL.
        url: String,
        /// The error chain, naming the member.
        detail: String,
    },
}

impl From<OvaError> for SourceError {
    fn from(error: OvaError) -> Self {
        Self::kind(error)
    }
}

/// The task walking the archive ended without a result (it panicked or was cancelled).
#[derive(Debug, thiserror::Error)]
#[error("the archive walk stopped")]
pub(crate) struct ArchiveWalkStopped(#[source] tokio::task::JoinError);

impl KindError for ArchiveWalkStopped {
    fn reason(&self) -> &'static str {
        "TransferFailed"
    }

    fn refusal(&self) -> Option<&'static str> {
        None
    }
}

impl KindError for OvaError {
    fn reason(&self) -> &'static str {
        match self {
            Self::InvalidUrl { .. } => "InvalidURL",
            Self::Secret(error) => error.reason(),
            Self::Client(_) => "HTTPClientError",
            Self::TlsVerification { .. } => "TLSVerificationFailed",
            Self::Unauthorized { .. } => "Unauthorized",
            Self::HttpStatus { .. } => "HTTPError",
            Self::Unreachable { .. } => "EndpointUnreachable",
            Self::Download { .. } => "DownloadFailed",
            Self::Archive { .. } => "InvalidOVA",
        }
    }
}

/// `url` for messages: no user info, no query (either may hold a secret, e.g. a signed URL).
pub(crate) fn display_url(url: &Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    let had_query = shown.query().is_some();
    shown.set_query(None);
    shown.set_fragment(None);
    let mut text = shown.to_string();
    if had_query {
        text.push_str("?…");
    }
    text
}

/// Parses `spec.url`: an absolute http or https URL with a host, as upstream requires.
///
/// # Errors
/// [`OvaError::InvalidUrl`].
pub(crate) fn parse_url(text: &str) -> Result<Url, OvaError> {
    let invalid = |detail: &str| OvaError::InvalidUrl {
        // Credentials in the URL must not reach a condition message.
        url: Url::parse(text).map_or_else(|_| "(unparsable)".to_owned(), |u| display_url(&u)),
        detail: detail.to_owned(),
    };
    let url = Url::parse(text.trim()).map_err(|e| invalid(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("only http and https are supported"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("it names no host"));
    }
    Ok(url)
}

/// The idle timeout `httpTimeoutSeconds` asks for: `None` for 0 (no limit), 600 s when unset.
pub(crate) fn idle_timeout(seconds: Option<i64>) -> Option<Duration> {
    match seconds {
        None => Some(Duration::from_secs(DEFAULT_TIMEOUT_SECONDS)),
        Some(s) if s <= 0 => None,
        Some(s) => Some(Duration::from_secs(s.unsigned_abs())),
    }
}

/// The trust keys of an `OvaSource`'s Secret.
const TRUST_KEYS: TrustKeys = TrustKeys {
    ca_cert: ova_secret::CA_CERT,
    fingerprint: ova_secret::CERT_FINGERPRINT,
};

/// What an `OvaSource` and its optional Secret say about talking to the server.
struct Credentials {
    basic: Option<(String, Password)>,
    tls: TlsMode,
}

async fn read_credentials(kube: &kube::Client, source: &OvaSource) -> Result<Credentials, OvaError> {
    let insecure = source.spec.insecure_skip_verify == Some(true);
    let Some(reference) = source
        .spec
        .credentials
        .as_ref()
        .filter(|r| r.name.as_deref().is_some_and(|n| !n.is_empty()))
    else {
        return Ok(Credentials {
            basic: None,
            tls: default_tls(insecure),
        });
    };
    let secret = SourceSecret::read(kube, reference, source.namespace()).await?;
    // Upstream: basic auth only when both are there.
    let basic = match (
        secret.optional_text(ova_secret::USERNAME),
        secret.optional_text(ova_secret::PASSWORD),
    ) {
        (Some(user), Some(password)) => Some((user, Password::new(password))),
        _ => None,
    };
    Ok(Credentials {
        basic,
        tls: secret.tls(TRUST_KEYS, insecure)?,
    })
}

/// An HTTP(S) client for one `OvaSource`.
#[derive(Clone)]
pub(crate) struct OvaClient {
    http: reqwest::Client,
    url: Url,
    shown: String,
    basic: Option<(String, Password)>,
    insecure: bool,
}

impl std::fmt::Debug for OvaClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OvaClient")
            .field("url", &self.shown)
            .field("basic_auth", &self.basic.is_some())
            .field("insecure", &self.insecure)
            .finish_non_exhaustive()
    }
}

impl OvaClient {
    /// A client for `source`'s URL with the credentials and CA of its Secret.
    ///
    /// # Errors
    /// [`OvaError`] for a bad URL or Secret.
    pub(crate) async fn connect(kube: &kube::Client, source: &OvaSource) -> Result<Self, OvaError> {
        let url = parse_url(&source.spec.url)?;
        let credentials = read_credentials(kube, source).await?;
        Self::new(url, credentials, idle_timeout(source.spec.http_timeout_seconds))
    }

    fn new(url: Url, credentials: Credentials, idle: Option<Duration>) -> Result<Self, OvaError> {
        let insecure = credentials.tls.is_insecure();
        let tls = tls::client_config(&credentials.tls).map_err(|e| OvaError::TlsVerification {
            url: display_url(&url),
            detail: chain(&e),
        })?;
        let mut builder = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(Duration::from_secs(30))
            .user_agent(concat!("vm-import/", env!("CARGO_PKG_VERSION")));
        if let Some(idle) = idle {
            // Per read, reset by every byte: a slow but moving download is never cut short.
            builder = builder.read_timeout(idle);
        }
        Ok(Self {
            http: builder.build().map_err(OvaError::Client)?,
            shown: display_url(&url),
            url,
            basic: credentials.basic,
            insecure,
        })
    }

    /// The URL's host (the per-host export limit's key).
    pub(crate) fn host(&self) -> String {
        self.url.host_str().unwrap_or_default().to_owned()
    }

    /// Whether TLS verification is off.
    pub(crate) fn insecure(&self) -> bool {
        self.insecure && self.url.scheme() == "https"
    }

    fn request(&self, method: reqwest::Method) -> reqwest::RequestBuilder {
        let request = self.http.request(method, self.url.clone());
        match &self.basic {
            Some((user, password)) => request.basic_auth(user, Some(password.expose())),
            None => request,
        }
    }

    fn transport_error(&self, error: &reqwest::Error) -> OvaError {
        let detail = chain(error);
        if self.url.scheme() == "https" && !self.insecure && looks_like_certificate_failure(&detail) {
            OvaError::TlsVerification {
                url: self.shown.clone(),
                detail,
            }
        } else {
            OvaError::Unreachable {
                url: self.shown.clone(),
                detail,
            }
        }
    }

    fn status_error(&self, status: StatusCode) -> OvaError {
        match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => OvaError::Unauthorized {
                url: self.shown.clone(),
                status,
                hint: if self.basic.is_some() {
                    "check the 'username' and 'password' in the credentials secret"
                } else {
                    "put 'username' and 'password' in a secret and name it in spec.credentials"
                },
            },
            _ => OvaError::HttpStatus {
                url: self.shown.clone(),
                status,
            },
        }
    }

    /// Upstream's check: a HEAD answered with 2xx (redirects followed). A server that refuses HEAD
    /// (405/501) is asked for the first byte instead.
    ///
    /// # Errors
    /// [`OvaError`] naming what failed.
    pub(crate) async fn verify(&self) -> Result<(), OvaError> {
        let response = self
            .request(reqwest::Method::HEAD)
            .send()
            .await
            .map_err(|e| self.transport_error(&e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        if matches!(
            status,
            StatusCode::METHOD_NOT_ALLOWED | StatusCode::NOT_IMPLEMENTED
        ) {
            let response = self
                .request(reqwest::Method::GET)
                .header(RANGE, "bytes=0-0")
                .send()
                .await
                .map_err(|e| self.transport_error(&e))?;
            if response.status().is_success() {
                return Ok(());
            }
            return Err(self.status_error(response.status()));
        }
        Err(self.status_error(status))
    }

    /// Starts downloading the archive; the returned reader yields its bytes in order, resuming
    /// cut connections with Range requests when the server allows them.
    ///
    /// An export's `ledger` caps the rate at which the archive is read.
    fn download(&self, ledger: Option<Arc<ExportLedger>>) -> Download {
        let (tx, reader) = bridge(CHANNEL_CHUNKS);
        let failure = Arc::new(Mutex::new(None));
        let task = tokio::spawn(fetch(self.clone(), tx, failure.clone(), ledger));
        Download {
            reader,
            failure,
            task: task.abort_handle(),
        }
    }
}

/// What went wrong with the download itself, as opposed to the archive's content.
#[derive(Debug)]
enum FetchFailure {
    /// The server refused or cannot be reached: another pass would fail the same way.
    Fatal(OvaError),
    /// The connection broke and could not be resumed: a new pass may succeed.
    Cut(String),
}

/// A running download: its bytes (for a blocking thread) and, if it failed, why.
struct Download {
    reader: ChunkReader,
    failure: Arc<Mutex<Option<FetchFailure>>>,
    task: AbortHandle,
}

impl Download {
    fn take_failure(failure: &Mutex<Option<FetchFailure>>) -> Option<FetchFailure> {
        match failure.lock() {
            Ok(mut f) => f.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        }
    }
}

/// What the first response said about resuming.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Resumability {
    /// `Accept-Ranges: bytes`.
    ranges: bool,
    /// A strong `ETag`, else `Last-Modified`: sent as `If-Range` so a changed file is not spliced.
    validator: Option<String>,
    /// `Content-Length` of the whole file.
    length: Option<u64>,
}

impl Resumability {
    fn from_headers(headers: &HeaderMap) -> Self {
        let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
        let ranges = text(ACCEPT_RANGES)
            .is_some_and(|v| v.split(',').any(|unit| unit.trim().eq_ignore_ascii_case("bytes")));
        let validator = text(ETAG)
            .filter(|tag| !tag.starts_with("W/"))
            .or_else(|| text(LAST_MODIFIED))
            .map(str::to_owned);
        let length = text(CONTENT_LENGTH).and_then(|v| v.trim().parse().ok());
        Self {
            ranges,
            validator,
            length,
        }
    }
}

/// Streams the archive into `tx`, resuming a cut connection with `Range: bytes=<position>-` when
/// the first response allowed it. Ends with [`ChunkSender::end`], or [`ChunkSender::fail`] with the reason
/// also left in `failure`.
async fn fetch(
    client: OvaClient,
    tx: ChunkSender,
    failure: Arc<Mutex<Option<FetchFailure>>>,
    ledger: Option<Arc<ExportLedger>>,
) {
    let fail = |f: FetchFailure| {
        let message = match &f {
            FetchFailure::Fatal(e) => chain(e),
            FetchFailure::Cut(m) => m.clone(),
        };
        match failure.lock() {
            Ok(mut slot) => *slot = Some(f),
            Err(poisoned) => *poisoned.into_inner() = Some(f),
        }
        message
    };
    let mut position = 0u64;
    let mut resume: Option<Resumability> = None;
    let mut failed_resumes = 0u32;
    let mut last_cut = String::new();
    loop {
        let mut request = client.request(reqwest::Method::GET);
        if let Some(resume) = &resume {
            request = request.header(RANGE, format!("bytes={position}-"));
            if let Some(validator) = &resume.validator {
                request = request.header(IF_RANGE, validator.as_str());
            }
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(error) if resume.is_some() && failed_resumes < MAX_RESUMES => {
                failed_resumes += 1;
                last_cut = chain(&error);
                tokio::time::sleep(Duration::from_secs(u64::from(failed_resumes))).await;
                continue;
            }
            Err(error) => {
                let f = if resume.is_some() {
                    FetchFailure::Cut(format!(
                        "resuming at byte {position} failed {MAX_RESUMES} times: {}",
                        chain(&error)
                    ))
                } else {
                    FetchFailure::Fatal(client.transport_error(&error))
                };
                tx.fail(fail(f)).await;
                return;
            }
        };
        let status = response.status();
        match &resume {
            None if status.is_success() && status != StatusCode::PARTIAL_CONTENT => {
                resume = Some(Resumability::from_headers(response.headers()));
            }
            None => {
                tx.fail(fail(FetchFailure::Fatal(client.status_error(status))))
                    .await;
                return;
            }
            Some(_) if status == StatusCode::PARTIAL_CONTENT => {
                let start = response
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(http_parts::content_range_start);
                if start != Some(position) {
                    let message = format!(
                        "the server resumed at {} instead of byte {position}",
                        start.map_or_else(|| "an unknown position".to_owned(), |s| s.to_string())
                    );
                    tx.fail(fail(FetchFailure::Cut(message))).await;
                    return;
                }
            }
            Some(_) if status.is_success() => {
                // The Range was ignored, or If-Range said the file changed: splicing is wrong.
                let message = format!(
                    "the connection broke at byte {position} ({last_cut}) and the server answered \
                     the resumed request with the whole file ({status})"
                );
                tx.fail(fail(FetchFailure::Cut(message))).await;
                return;
            }
            Some(_) if failed_resumes < MAX_RESUMES && status.is_server_error() => {
                failed_resumes += 1;
                last_cut = format!("resume answered {status}");
                tokio::time::sleep(Duration::from_secs(u64::from(failed_resumes))).await;
                continue;
            }
            Some(_) => {
                tx.fail(fail(FetchFailure::Fatal(client.status_error(status))))
                    .await;
                return;
            }
        }
        let mut response = response;
        let cut = loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    position += chunk.len() as u64;
                    failed_resumes = 0;
                    if let Some(ledger) = &ledger {
                        ledger.throttle(chunk.len()).await;
                    }
                    if tx.send(chunk).await.is_err() {
                        // The walk stopped reading: it finished or failed on its own.
                        return;
                    }
                }
                Ok(None) => {
                    let length = resume.as_ref().and_then(|r| r.length);
                    if length.is_some_and(|l| position < l) {
                        break format!("the body ended at byte {position} of {}", length.unwrap_or(0));
                    }
                    let _ = tx.end().await;
                    return;
                }
                Err(error) => break chain(&error),
            }
        };
        let can_resume = resume.as_ref().is_some_and(|r| r.ranges);
        // Reset by every chunk that arrives: only cuts without progress in between count.
        failed_resumes += 1;
        if can_resume && failed_resumes <= MAX_RESUMES {
            tracing::warn!(url = %client.shown, position, error = %cut, "OVA download cut; resuming with a Range request");
            last_cut = cut;
            continue;
        }
        let message = if can_resume {
            format!("the connection broke at byte {position} ({cut}) and resuming failed {MAX_RESUMES} times")
        } else {
            format!(
                "the connection broke at byte {position} ({cut}) and the server does not accept Range requests"
            )
        };
        tx.fail(fail(FetchFailure::Cut(message))).await;
        return;
    }
}

/// Reads the VM from the archive's leading `.ovf` (a few KiB of download; the rest is not fetched).
///
/// # Errors
/// [`OvaError`]: the download failed, or the archive does not start with a valid `.ovf`.
pub(crate) async fn describe(client: &OvaClient) -> Result<::ova::VmDescription, OvaError> {
    let download = client.download(None);
    let _stop = StopOnDrop(download.task.clone());
    let reader = download.reader;
    let parsed = tokio::task::spawn_blocking(move || read_descriptor(reader))
        .await
        .map_err(|e| OvaError::Archive {
            url: client.shown.clone(),
            detail: format!("reading the descriptor stopped: {e}"),
        })?;
    parsed.map_err(|detail| match Download::take_failure(&download.failure) {
        Some(FetchFailure::Fatal(error)) => error,
        Some(FetchFailure::Cut(detail)) => OvaError::Download {
            url: client.shown.clone(),
            detail,
        },
        None => OvaError::Archive {
            url: client.shown.clone(),
            detail,
        },
    })
}

fn read_descriptor(reader: impl Read) -> Result<::ova::VmDescription, String> {
    let mut walker = ::ova::TarWalker::new(reader);
    loop {
        let Some(entry) = walker.next_entry().map_err(|e| chain(&e))? else {
            return Err("the archive holds no .ovf descriptor".into());
        };
        if entry.kind() != ::ova::EntryKind::File {
            continue;
        }
        let name = entry.name().to_owned();
        if !name.ends_with(".ovf") {
            return Err(format!(
                "the first member is {name:?}, not the .ovf descriptor (an OVA must start with it)"
            ));
        }
        let limited = entry.take(::ova::ovf::MAX_OVF_SIZE as u64 + 1);
        return ::ova::ovf::read_envelope(limited).map_err(|e| format!("in member {name:?}: {}", chain(&e)));
    }
}

struct StopOnDrop(AbortHandle);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn controller_kind(controller: Option<&::ova::Controller>) -> ControllerKind {
    let Some(controller) = controller else {
        return ControllerKind::Unknown;
    };
    match controller.kind {
        ::ova::ControllerKind::Scsi if controller.model.as_deref() == Some("pvscsi") => {
            ControllerKind::ParaVirtualScsi
        }
        ::ova::ControllerKind::Scsi => ControllerKind::Scsi,
        ::ova::ControllerKind::Sata => ControllerKind::Sata,
        ::ova::ControllerKind::Ide => ControllerKind::Ide,
        ::ova::ControllerKind::Nvme => ControllerKind::Nvme,
        _ => ControllerKind::Unknown,
    }
}

/// Upstream's table: vmxnet and virtio become virtio, the emulated models keep their name.
fn nic_model(model: &::ova::NicModel) -> Option<api::NicModel> {
    match model {
        ::ova::NicModel::E1000 => Some(api::NicModel::E1000),
        ::ova::NicModel::E1000e => Some(api::NicModel::E1000e),
        ::ova::NicModel::Vmxnet3 | ::ova::NicModel::Virtio => Some(api::NicModel::Virtio),
        ::ova::NicModel::Pcnet32 => Some(api::NicModel::Pcnet),
        ::ova::NicModel::Other(name) => match name.to_ascii_lowercase().as_str() {
            "rtl8139" => Some(api::NicModel::Rtl8139),
            "ne2k_pci" => Some(api::NicModel::Ne2kPci),
            other if other.starts_with("vmxnet") => Some(api::NicModel::Virtio),
            _ => None,
        },
        _ => None,
    }
}

/// The disks of the OVF that come from a file in the archive, with their OVF index; blank disks
/// (no file) have nothing to import.
fn imported_disks(vm: &::ova::VmDescription) -> impl Iterator<Item = (usize, &::ova::Disk)> {
    vm.disks.iter().enumerate().filter(|(_, d)| d.file.is_some())
}

/// The VM in `plan`'s terms. `name` is the import's `virtualMachineName` (an OVA holds one VM,
/// whatever its descriptor calls it; upstream names the VM after the import's field too).
pub(crate) fn source_vm(vm: &::ova::VmDescription, name: &str) -> SourceVm {
    SourceVm {
        name: name.to_owned(),
        cpus: vm.cpus,
        // Without a topology upstream gives one socket with every CPU as a core.
        cores_per_socket: vm.cores_per_socket.unwrap_or(vm.cpus),
        memory_mib: vm.memory_mib,
        firmware: match vm.firmware {
            ::ova::Firmware::Efi => Firmware::Efi,
            ::ova::Firmware::Bios => Firmware::Bios,
        },
        secure_boot: vm.secure_boot,
        tpm: vm.tpm,
        disks: imported_disks(vm)
            .map(|(_, d)| SourceDisk {
                controller: controller_kind(d.controller.as_ref()),
                bus: d.controller.as_ref().and_then(|c| c.bus).unwrap_or_default(),
                unit: d.unit.unwrap_or_default(),
                capacity_bytes: d.capacity_bytes,
                boot_order: None,
            })
            .collect(),
        nics: vm
            .nics
            .iter()
            .map(|n| SourceNic {
                model: nic_model(&n.model),
                mac: n.mac.clone(),
                network: n.network.clone().unwrap_or_default(),
                switch: None,
            })
            .collect(),
        description: None,
    }
}

/// Network names the VM's NICs are on (what a `networkMapping` may name for an OVA).
pub(crate) fn networks(vm: &::ova::VmDescription) -> Vec<String> {
    let mut names: Vec<String> = vm.nics.iter().filter_map(|n| n.network.clone()).collect();
    names.sort();
    names.dedup();
    names
}

/// Each status disk's image: where it is written, and whether it is already done.
struct ImageTargets {
    shared: Arc<ExportLedger>,
    dir: PathBuf,
    /// `diskImportStatus[i].name`.
    names: Vec<String>,
    /// OVF disk index → status index, known once the descriptor is read.
    slots: Vec<Option<usize>>,
}

impl ImageTargets {
    fn slot(&self, index: usize) -> Option<usize> {
        self.slots.get(index).copied().flatten()
    }

    fn partial(&self, slot: usize) -> PathBuf {
        partial_path(&self.dir, &self.names[slot])
    }
}

impl DiskTargets for ImageTargets {
    fn described(&mut self, vm: &::ova::VmDescription) -> Result<(), diskconv::Error> {
        let found = imported_disks(vm).count();
        if found != self.names.len() {
            return Err(diskconv::Error::Rejected(format!(
                "the OVA now has {found} disks but had {} when the import started",
                self.names.len()
            )));
        }
        self.slots = vec![None; vm.disks.len()];
        for (slot, (index, _)) in imported_disks(vm).enumerate() {
            self.slots[index] = Some(slot);
        }
        Ok(())
    }

    fn output(&mut self, index: usize, _member: &str) -> Option<(diskconv::Output, diskconv::Options)> {
        let slot = self.slot(index)?;
        if self.shared.is_exported(slot) {
            // Committed on an earlier pass or before a restart: read past it.
            return None;
        }
        self.shared.restart(slot, None);
        let options = self.shared.options(slot, true);
        Some((self.shared.output(slot), options))
    }

    fn verified(
        &mut self,
        index: usize,
        member: &str,
        report: &diskconv::Report,
        digest_checked: bool,
    ) -> Result<(), diskconv::Error> {
        let Some(slot) = self.slot(index) else {
            return Ok(());
        };
        let partial = self.partial(slot);
        if !digest_checked {
            let _ = std::fs::remove_file(&partial);
            return Err(diskconv::Error::Rejected(format!(
                "disk member {member:?} has no digest in a manifest (.mf) before it, so it cannot be \
                 checked; upstream requires one too"
            )));
        }
        self.shared
            .commit(slot, report)
            .map_err(|e| diskconv::Error::Rejected(error_text::chain(&e)))
    }

    fn failed(&mut self, index: usize) {
        if let Some(slot) = self.slot(index) {
            let _ = std::fs::remove_file(self.partial(slot));
        }
    }
}

/// Exports every disk of the OVA not yet exported: one pass over the archive, again (up to
/// [`MAX_PASSES`]) when the connection broke and could not be resumed.
///
/// # Errors
/// [`OvaError`] naming what failed, or [`ArchiveWalkStopped`]; the disk that failed
/// has no file left.
async fn transfer(client: &OvaClient, shared: Arc<ExportLedger>, dir: &Path) -> Result<(), SourceError> {
    let names = shared.names();
    let mut pass = 0;
    loop {
        pass += 1;
        let download = client.download(Some(shared.clone()));
        // An aborted export (import deleted) stops its download, which stops the walk.
        let _stop = StopOnDrop(download.task.clone());
        let mut targets = ImageTargets {
            shared: shared.clone(),
            dir: dir.to_owned(),
            names: names.clone(),
            slots: Vec::new(),
        };
        let reader = download.reader;
        // The manifest is required per disk (in `verified`), with a message that names the disk.
        let walked = tokio::task::spawn_blocking(move || convert_ova_into(reader, &mut targets, false))
            .await
            .map_err(|e| SourceError::kind(ArchiveWalkStopped(e)))?;
        let Err(error) = walked else {
            return Ok(());
        };
        match Download::take_failure(&download.failure) {
            Some(FetchFailure::Fatal(error)) => return Err(error.into()),
            Some(FetchFailure::Cut(detail)) if pass < MAX_PASSES => {
                tracing::warn!(url = %client.shown, pass, %detail, "OVA download broke; reading the archive again");
            }
            Some(FetchFailure::Cut(detail)) => {
                return Err(OvaError::Download {
                    url: client.shown.clone(),
                    detail: format!("{detail} (after {pass} passes over the archive)"),
                }
                .into());
            }
            None => {
                return Err(OvaError::Archive {
                    url: client.shown.clone(),
                    detail: chain(&error),
                }
                .into());
            }
        }
    }
}

/// One import's view of its OVA: the descriptor, read (the head of the archive only) on first use.
pub(crate) struct Ova {
    kube: kube::Client,
    source: OvaSource,
    vm_name: String,
    description: Option<::ova::VmDescription>,
}

impl Ova {
    pub(super) fn open(kube: &kube::Client, source: OvaSource, import: &VirtualMachineImport) -> Self {
        Self {
            kube: kube.clone(),
            source,
            vm_name: import.spec.virtual_machine_name.clone(),
            description: None,
        }
    }

    async fn description(&mut self) -> Result<&::ova::VmDescription, OvaError> {
        let description = match self.description.take() {
            Some(description) => description,
            None => describe(&OvaClient::connect(&self.kube, &self.source).await?).await?,
        };
        Ok(self.description.insert(description))
    }
}

#[async_trait]
impl Source for Ova {
    fn max_bytes_per_second(&self) -> Option<u64> {
        self.source.spec.max_bytes_per_second
    }

    async fn describe(&mut self) -> Result<Option<SourceVm>, SourceError> {
        let name = self.vm_name.clone();
        Ok(Some(source_vm(self.description().await?, &name)))
    }

    async fn checks(&mut self, target: RiskFacts, skip_source: bool) -> Result<SourceChecks, SourceError> {
        let name = self.vm_name.clone();
        // An OVA's VM is always "off"; its networks are the ones its NICs name.
        let (vm, networks, source_error) = match self.description().await {
            Ok(d) => (Some(source_vm(d, &name)), Some(networks(d)), None),
            // The archive itself is unusable: that will not change by retrying.
            Err(error @ OvaError::Archive { .. }) => (None, None, Some(chain(&error))),
            Err(error) => return Err(error.into()),
        };
        Ok(SourceChecks {
            vm,
            networks: if skip_source { None } else { networks },
            source_error,
            power_off_supported: false,
            powered_off: true,
            tools_running: false,
            risks: target,
        })
    }

    async fn power(&mut self) -> Result<PowerFact, SourceError> {
        // Upstream: an OVA's VM is always powered off.
        Ok(PowerFact::Off)
    }

    async fn stop(&mut self, _force: bool) -> Result<StopRequest, SourceError> {
        // Never asked (the VM is always off); stopping it is a no-op.
        Ok(StopRequest::PoweredOff)
    }

    fn export(
        &self,
        _import: &VirtualMachineImport,
        _status: &VirtualMachineImportStatus,
    ) -> Box<dyn SourceExport> {
        Box::new(OvaExport {
            kube: self.kube.clone(),
            source: self.source.clone(),
        })
    }

    async fn clean_up(&mut self, _import: &VirtualMachineImport, _status: &VirtualMachineImportStatus) {
        // An OVA export makes nothing outside the image directory.
    }
}

/// The download of an OVA, decoded as it streams by.
struct OvaExport {
    kube: kube::Client,
    source: OvaSource,
}

/// An OVA download with its client (Secret read, TLS configured).
struct OvaTransfer {
    client: OvaClient,
    /// The URL's host.
    host: String,
}

#[async_trait]
impl SourceExport for OvaExport {
    async fn connect(self: Box<Self>) -> Result<Box<dyn ConnectedExport>, SourceError> {
        let client = OvaClient::connect(&self.kube, &self.source).await?;
        let host = client.host();
        Ok(Box::new(OvaTransfer { client, host }))
    }
}

#[async_trait]
impl ConnectedExport for OvaTransfer {
    fn host(&self) -> &str {
        &self.host
    }

    async fn transfer(&mut self, ledger: Arc<ExportLedger>, dir: &Path) -> Result<(), SourceError> {
        transfer(&self.client, ledger, dir).await
    }
}

#[async_trait]
impl SourceObject for OvaSource {
    const KIND: &'static str = "OvaSource";
    const READ_STEP: &'static str = "reading the OvaSource";

    fn source_status(&self) -> Option<&api::SourceStatus> {
        self.status.as_ref()
    }

    fn credentials(&self) -> Option<&k8s_openapi::api::core::v1::SecretReference> {
        self.spec.credentials.as_ref()
    }

    /// Upstream's check (http or https URL, HEAD answered with 2xx).
    async fn check(&self, kube: &kube::Client) -> Check {
        let insecure = self.spec.insecure_skip_verify == Some(true);
        let checked = match OvaClient::connect(kube, self).await {
            Ok(client) => client.verify().await.map(|()| client),
            Err(error) => Err(error),
        };
        match checked {
            Ok(client) => Check::verified(client.insecure()),
            Err(error) => Check::failed(error.reason(), &error, insecure),
        }
    }

    fn ready_note(&self) -> String {
        match parse_url(&self.spec.url) {
            Ok(url) => format!("{} answered", display_url(&url)),
            Err(_) => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_http_or_https_with_a_host() {
        assert!(parse_url("https://files.example/vm.ova").is_ok());
        assert!(parse_url(" http://10.0.0.1:8080/a/b.ova ").is_ok());
        for bad in [
            "ftp://files.example/vm.ova",
            "file:///tmp/vm.ova",
            "vm.ova",
            "http://",
        ] {
            let error = parse_url(bad).expect_err(bad);
            assert_eq!(error.reason(), "InvalidURL", "{bad}");
        }
    }

    #[test]
    fn shown_urls_carry_no_credentials_or_query() {
        let url = Url::parse("https://user:s3cret@files.example/vm.ova?X-Amz-Signature=abc").unwrap();
        let shown = display_url(&url);
        assert_eq!(shown, "https://files.example/vm.ova?…");
        let error = parse_url("ftp://user:s3cret@files.example/vm.ova").unwrap_err();
        assert!(!error.to_string().contains("s3cret"), "{error}");
    }

    #[test]
    fn timeout_defaults_to_600_and_zero_means_none() {
        assert_eq!(idle_timeout(None), Some(Duration::from_secs(600)));
        assert_eq!(idle_timeout(Some(0)), None);
        assert_eq!(idle_timeout(Some(-5)), None);
        assert_eq!(idle_timeout(Some(30)), Some(Duration::from_secs(30)));
    }

    #[test]
    fn resumability_prefers_a_strong_etag_and_needs_byte_ranges() {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT_RANGES, "bytes".parse().unwrap());
        headers.insert(ETAG, "\"abc\"".parse().unwrap());
        headers.insert(LAST_MODIFIED, "Mon, 23 Nov 2026 10:00:00 GMT".parse().unwrap());
        headers.insert(CONTENT_LENGTH, "4096".parse().unwrap());
        let r = Resumability::from_headers(&headers);
        assert_eq!(
            r,
            Resumability {
                ranges: true,
                validator: Some("\"abc\"".into()),
                length: Some(4096)
            }
        );
        headers.insert(ETAG, "W/\"weak\"".parse().unwrap());
        headers.insert(ACCEPT_RANGES, "none".parse().unwrap());
        let r = Resumability::from_headers(&headers);
        assert!(!r.ranges);
        assert_eq!(r.validator.as_deref(), Some("Mon, 23 Nov 2026 10:00:00 GMT"));
    }

    #[test]
    fn unauthorized_hint_depends_on_whether_credentials_were_sent() {
        let url = Url::parse("https://files.example/vm.ova").unwrap();
        let anonymous = OvaClient::new(
            url.clone(),
            Credentials {
                basic: None,
                tls: TlsMode::SystemRoots,
            },
            None,
        )
        .unwrap();
        let error = anonymous.status_error(StatusCode::UNAUTHORIZED);
        assert_eq!(error.reason(), "Unauthorized");
        assert!(error.to_string().contains("spec.credentials"), "{error}");
        let with = OvaClient::new(
            url,
            Credentials {
                basic: Some(("u".into(), Password::new("hunter2"))),
                tls: TlsMode::SystemRoots,
            },
            None,
        )
        .unwrap();
        let error = with.status_error(StatusCode::FORBIDDEN);
        assert!(error.to_string().contains("check the 'username'"), "{error}");
        assert!(!format!("{with:?}").contains("hunter2"));
        assert_eq!(with.status_error(StatusCode::NOT_FOUND).reason(), "HTTPError");
    }

    const VMWARE_STYLE: &str = r#"<?xml version="1.0"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vmw="http://www.vmware.com/schema/ovf">
  <References>
    <File ovf:href="a.vmdk" ovf:id="file1"/>
    <File ovf:href="b.vmdk" ovf:id="file2"/>
  </References>
  <DiskSection><Info>d</Info>
    <Disk ovf:capacity="8" ovf:capacityAllocationUnits="byte * 2^20" ovf:diskId="d1" ovf:fileRef="file1"/>
    <Disk ovf:capacity="4" ovf:capacityAllocationUnits="byte * 2^20" ovf:diskId="blank"/>
    <Disk ovf:capacity="2" ovf:capacityAllocationUnits="byte * 2^20" ovf:diskId="d2" ovf:fileRef="file2"/>
  </DiskSection>
  <VirtualSystem ovf:id="vm1"><Info>v</Info><Name>Web 01</Name>
    <VirtualHardwareSection><Info>h</Info>
      <Item><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>6</rasd:VirtualQuantity></Item>
      <Item><rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits><rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>1024</rasd:VirtualQuantity></Item>
      <Item><rasd:Address>0</rasd:Address><rasd:InstanceID>3</rasd:InstanceID><rasd:ResourceSubType>VirtualSCSI</rasd:ResourceSubType><rasd:ResourceType>6</rasd:ResourceType></Item>
      <Item><rasd:Address>1</rasd:Address><rasd:InstanceID>4</rasd:InstanceID><rasd:ResourceSubType>lsilogic</rasd:ResourceSubType><rasd:ResourceType>6</rasd:ResourceType></Item>
      <Item><rasd:AddressOnParent>2</rasd:AddressOnParent><rasd:HostResource>ovf:/disk/d1</rasd:HostResource><rasd:InstanceID>5</rasd:InstanceID><rasd:Parent>3</rasd:Parent><rasd:ResourceType>17</rasd:ResourceType></Item>
      <Item><rasd:AddressOnParent>3</rasd:AddressOnParent><rasd:HostResource>ovf:/disk/d2</rasd:HostResource><rasd:InstanceID>6</rasd:InstanceID><rasd:Parent>4</rasd:Parent><rasd:ResourceType>17</rasd:ResourceType></Item>
      <Item><rasd:Address>00:50:56:AA:BB:01</rasd:Address><rasd:AutomaticAllocation>true</rasd:AutomaticAllocation><rasd:Connection>VM Network</rasd:Connection><rasd:InstanceID>7</rasd:InstanceID><rasd:ResourceSubType>VmxNet3</rasd:ResourceSubType><rasd:ResourceType>10</rasd:ResourceType></Item>
      <Item><rasd:AutomaticAllocation>true</rasd:AutomaticAllocation><rasd:Connection>lab</rasd:Connection><rasd:InstanceID>8</rasd:InstanceID><rasd:ResourceSubType>PCNet32</rasd:ResourceSubType><rasd:ResourceType>10</rasd:ResourceType></Item>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>"#;

    #[test]
    fn the_ovf_maps_onto_the_source_neutral_model() {
        let description = ::ova::ovf::parse(VMWARE_STYLE).unwrap();
        let vm = source_vm(&description, "web-01");
        assert_eq!(vm.name, "web-01");
        assert_eq!((vm.cpus, vm.cores_per_socket, vm.memory_mib), (6, 6, 1024));
        // The blank disk has no file to import.
        assert_eq!(vm.disks.len(), 2);
        assert_eq!(vm.disks[0].controller, ControllerKind::ParaVirtualScsi);
        assert_eq!((vm.disks[0].unit, vm.disks[0].capacity_bytes), (2, 8 << 20));
        assert_eq!(vm.disks[1].controller, ControllerKind::Scsi);
        assert_eq!((vm.disks[1].bus, vm.disks[1].unit), (1, 3));
        assert_eq!(vm.nics.len(), 2);
        assert_eq!(vm.nics[0].model, Some(api::NicModel::Virtio));
        assert_eq!(vm.nics[0].mac.as_deref(), Some("00:50:56:aa:bb:01"));
        assert_eq!(vm.nics[0].network, "VM Network");
        assert_eq!(vm.nics[1].model, Some(api::NicModel::Pcnet));
        assert_eq!(networks(&description), ["VM Network", "lab"]);
    }

    fn archive(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut archive = Vec::new();
        let mut builder = tar::Builder::new(&mut archive);
        for (name, data) in members {
            let mut header = tar::Header::new_ustar();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, name, *data).unwrap();
        }
        builder.finish().unwrap();
        drop(builder);
        archive
    }

    #[test]
    fn the_descriptor_is_read_from_the_head_of_the_archive_only() {
        let mut bytes = archive(&[("vm.ovf", VMWARE_STYLE.as_bytes()), ("a.vmdk", &[0u8; 4096])]);
        // Everything after the descriptor is never needed.
        bytes.truncate(512 + VMWARE_STYLE.len().next_multiple_of(512) + 100);
        let vm = read_descriptor(std::io::Cursor::new(&bytes)).unwrap();
        assert_eq!(vm.cpus, 6);
    }

    #[test]
    fn an_archive_not_starting_with_a_whole_descriptor_is_refused_naming_the_member() {
        let bytes = archive(&[("disk.vmdk", b"abc"), ("vm.ovf", VMWARE_STYLE.as_bytes())]);
        let error = read_descriptor(std::io::Cursor::new(&bytes)).unwrap_err();
        assert!(error.contains("\"disk.vmdk\""), "{error}");
        let bytes = archive(&[("vm.ovf", VMWARE_STYLE.as_bytes())]);
        let error = read_descriptor(std::io::Cursor::new(&bytes[..1500])).unwrap_err();
        assert!(!error.is_empty());
        let bytes = archive(&[("vm.ovf", b"<Envelope>not ovf")]);
        let error = read_descriptor(std::io::Cursor::new(&bytes)).unwrap_err();
        assert!(error.contains("\"vm.ovf\""), "{error}");
    }
}
