//! The OpenStack source: a Keystone session from an `OpenstackSource` and its
//! Secret (upstream's keys; TLS verified against `ca_cert`, pinned to `certificate_fingerprint`, or
//! the system roots, unless the source opts out), each failure mapped to one low-cardinality reason; the server description in `plan`'s
//! source-neutral model; and the export of a server's disks into the image directory, with the
//! temporary snapshots, volumes and images recorded in `status.sourceTemporaryObjects` as soon as
//! their ids are known, so that a restarted controller deletes them.

use error_text::chain;
use std::{
    collections::BTreeSet,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use api::{
    OpenstackSource, SourceTemporaryObjects, VirtualMachineImport, VirtualMachineImportStatus,
    names::openstack as keys,
};
use async_trait::async_trait;
use kube::{Api, ResourceExt, runtime::reflector::ObjectRef};
use openstack::{
    Auth, Client, Config, Domain, ServerDescription,
    export::{ExportOptions, Hooks, TempObjects},
    proto::identity::CatalogError,
};
use plan::{
    ControllerKind, Firmware, SourceDisk, SourceNic, SourceVm, machine::PowerFact, risks::RiskFacts,
    transition::StopRequest,
};

use super::interface::{
    Check, ConnectedExport, KindError, Source, SourceChecks, SourceError, SourceExport, SourceObject,
    looks_like_certificate_failure, record_objects, recorded_objects,
};
use crate::{
    disks::{ExportLedger, partial_path},
    secret::{SecretError, SourceSecret, TrustKeys},
};

/// Why the controller could not use an `OpenstackSource` or a server of it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpenstackError {
    /// The credentials Secret is missing, unreadable or lacks a key.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// `spec.endpoint` is not a Keystone URL.
    #[error("spec.endpoint '{endpoint}' is not a usable Keystone URL: {detail}")]
    InvalidEndpoint {
        /// As given.
        endpoint: String,
        /// Why.
        detail: String,
    },
    /// Keystone's certificate did not verify (or the `ca_cert` is unusable).
    #[error(
        "TLS verification of {endpoint} failed ({detail}); put the cloud's CA certificate (PEM) under the \
         secret's 'ca_cert' key or the SHA-256 fingerprint of the certificate its endpoints present \
         under 'certificate_fingerprint', or set spec.insecureSkipVerify: true to skip verification"
    )]
    TlsVerification {
        /// Keystone.
        endpoint: String,
        /// The TLS error.
        detail: String,
    },
    /// Keystone rejected the user name or password.
    #[error("{0}")]
    InvalidCredentials(String),
    /// The project does not exist or the user has no role on it.
    #[error("{0}")]
    ProjectNotFound(String),
    /// The catalog has the services, but not in `spec.region`.
    #[error("region '{region}': {detail}")]
    RegionNotFound {
        /// The region.
        region: String,
        /// The catalog's answer.
        detail: String,
    },
    /// The catalog lacks a service the importer needs.
    #[error("{0}")]
    EndpointNotFound(String),
    /// The token expired or was revoked and logging in again failed.
    #[error("{0}")]
    TokenExpired(String),
    /// Keystone or a service could not be reached.
    #[error("cannot reach {endpoint}: {detail}")]
    Unreachable {
        /// What was called.
        endpoint: String,
        /// The error chain.
        detail: String,
    },
    /// No server has this name or id.
    #[error("{0}")]
    ServerNotFound(String),
    /// Several servers have this name.
    #[error("{0}; use the server's UUID in spec.virtualMachineName")]
    ServerNameNotUnique(String),
    /// Any other API failure.
    #[error("{step}: {detail}")]
    Api {
        /// What was being done.
        step: &'static str,
        /// The error chain.
        detail: String,
    },
}

impl From<OpenstackError> for SourceError {
    fn from(error: OpenstackError) -> Self {
        Self::kind(error)
    }
}

impl KindError for OpenstackError {
    fn reason(&self) -> &'static str {
        match self {
            Self::Secret(error) => error.reason(),
            Self::InvalidEndpoint { .. } => "InvalidEndpoint",
            Self::TlsVerification { .. } => "TLSVerificationFailed",
            Self::InvalidCredentials(_) => "InvalidCredentials",
            Self::ProjectNotFound(_) => "ProjectNotFound",
            Self::RegionNotFound { .. } => "RegionNotFound",
            Self::EndpointNotFound(_) => "EndpointNotFound",
            Self::TokenExpired(_) => "TokenExpired",
            Self::Unreachable { .. } => "EndpointUnreachable",
            Self::ServerNotFound(_) => "ServerNotFound",
            Self::ServerNameNotUnique(_) => "ServerNameNotUnique",
            Self::Api { .. } => "SourceApiError",
        }
    }
}

impl OpenstackError {
    /// Maps a client error of `step` to its reason.
    pub(crate) fn from_client(
        step: &'static str,
        endpoint: &str,
        insecure: bool,
        error: &openstack::client::Error,
    ) -> Self {
        use openstack::client::Error as E;
        let detail = chain(error);
        match error {
            E::InvalidCredentials { .. } => Self::InvalidCredentials(detail),
            E::UnknownProject { .. } => Self::ProjectNotFound(detail),
            E::Catalog(CatalogError::NoEndpoint { region, .. }) => Self::RegionNotFound {
                region: region.clone(),
                detail,
            },
            E::Catalog(CatalogError::NoService { .. }) | E::BadEndpoint { .. } => {
                Self::EndpointNotFound(detail)
            }
            E::InvalidAuthUrl { .. } => Self::InvalidEndpoint {
                endpoint: endpoint.to_owned(),
                detail,
            },
            E::Tls(_) => Self::TlsVerification {
                endpoint: endpoint.to_owned(),
                detail,
            },
            E::TokenRejected { .. } | E::Reauthenticate { .. } => Self::TokenExpired(detail),
            E::Transport { url, .. } => {
                if !insecure && looks_like_certificate_failure(&detail) {
                    Self::TlsVerification {
                        endpoint: endpoint.to_owned(),
                        detail,
                    }
                } else {
                    Self::Unreachable {
                        endpoint: url.clone(),
                        detail,
                    }
                }
            }
            E::Timeout { url, .. } => Self::Unreachable {
                endpoint: url.clone(),
                detail,
            },
            _ => Self::Api { step, detail },
        }
    }

    fn from_inspect(endpoint: &str, insecure: bool, error: &openstack::inspect::Error) -> Self {
        match error {
            openstack::inspect::Error::NotFound { .. } => Self::ServerNotFound(chain(error)),
            openstack::inspect::Error::Ambiguous(_) => Self::ServerNameNotUnique(chain(error)),
            openstack::inspect::Error::Call { step, source, .. } => {
                match Self::from_client(step, endpoint, insecure, source) {
                    Self::Api { step, .. } => Self::Api {
                        step,
                        detail: chain(error),
                    },
                    other => other,
                }
            }
        }
    }
}

/// A logged-in session and what it was made from.
#[derive(Clone, Debug)]
pub(crate) struct Session {
    /// The client.
    pub client: Client,
    /// Keystone, as the source names it.
    pub endpoint: String,
    /// Whether certificate checks are off.
    pub insecure: bool,
}

impl Session {
    /// Describes the server the import names (exact unique name, or UUID).
    ///
    /// # Errors
    /// [`OpenstackError::ServerNotFound`], [`OpenstackError::ServerNameNotUnique`], call errors.
    pub(crate) async fn inspect(&self, server: &str) -> Result<ServerDescription, OpenstackError> {
        self.client
            .inspect(server)
            .await
            .map_err(|e| OpenstackError::from_inspect(&self.endpoint, self.insecure, &e))
    }

    /// Maps a client error.
    pub(crate) fn error(&self, step: &'static str, error: &openstack::client::Error) -> OpenstackError {
        OpenstackError::from_client(step, &self.endpoint, self.insecure, error)
    }
}

/// The trust keys of an `OpenstackSource`'s Secret.
const TRUST_KEYS: TrustKeys = TrustKeys {
    ca_cert: keys::CA_CERT,
    fingerprint: keys::CERT_FINGERPRINT,
};

/// Logs in to the source's Keystone with its Secret and reads the catalog of `spec.region`.
///
/// # Errors
/// [`OpenstackError`], each naming what to fix.
pub(crate) async fn connect(
    kube: &kube::Client,
    source: &OpenstackSource,
) -> Result<Session, OpenstackError> {
    let secret = SourceSecret::read(kube, &source.spec.credentials, source.namespace()).await?;
    let username = secret.required_text(keys::USERNAME)?;
    let password = openstack::Secret::new(secret.required_text(keys::PASSWORD)?);
    let project = secret.required_text(keys::PROJECT_NAME)?;
    // Upstream uses domain_name for the user and the project; "Default" when it is not given.
    let domain = secret
        .optional_text(keys::DOMAIN_NAME)
        .unwrap_or_else(|| "Default".to_owned());
    let insecure = source.spec.insecure_skip_verify == Some(true);
    let tls = secret.tls(TRUST_KEYS, insecure)?;
    let endpoint = source.spec.endpoint_address.clone();
    let mut config = Config::new(
        endpoint.clone(),
        Auth::Password {
            username,
            user_domain: Domain::Name(domain.clone()),
            project,
            project_domain: Domain::Name(domain),
            password,
        },
    )
    .with_tls(tls);
    if !source.spec.region.is_empty() {
        config = config.with_region(source.spec.region.clone());
    }
    let client = Client::connect(config)
        .await
        .map_err(|e| OpenstackError::from_client("logging in", &endpoint, insecure, &e))?;
    Ok(Session {
        client,
        endpoint,
        insecure,
    })
}

/// Checks a source as upstream does (log in, list servers).
///
/// # Errors
/// [`OpenstackError`].
pub(crate) async fn verify(kube: &kube::Client, source: &OpenstackSource) -> Result<Session, OpenstackError> {
    let session = connect(kube, source).await?;
    session
        .client
        .verify()
        .await
        .map_err(|e| session.error("listing servers", &e))?;
    Ok(session)
}

/// The server in `plan`'s terms. Disk buses and NIC models come from the import's defaults (the
/// cloud's `hw_disk_bus`/`hw_vif_model` describe a KVM guest, which any default here suits).
pub(crate) fn source_vm(server: &ServerDescription) -> SourceVm {
    SourceVm {
        name: server.name.clone(),
        cpus: server.flavor.vcpus,
        cores_per_socket: 1,
        memory_mib: server.flavor.ram_mib,
        firmware: if server.firmware.uefi {
            Firmware::Efi
        } else {
            Firmware::Bios
        },
        secure_boot: server.firmware.secure_boot,
        tpm: server.firmware.tpm,
        disks: server
            .disks
            .iter()
            .enumerate()
            .map(|(index, disk)| SourceDisk {
                controller: ControllerKind::Unknown,
                bus: 0,
                unit: u32::try_from(index).unwrap_or(u32::MAX),
                capacity_bytes: disk.capacity_bytes,
                boot_order: u32::try_from(index + 1).ok(),
            })
            .collect(),
        nics: server
            .nics
            .iter()
            .map(|nic| SourceNic {
                model: None,
                mac: nic.nic.mac.clone(),
                network: nic.nic.network.clone(),
                switch: None,
            })
            .collect(),
        description: server.description.clone().filter(|d| !d.is_empty()),
    }
}

/// Export tuning for an import: temporary objects named after the import (so leftovers can also be
/// found by name), polled every second.
pub(crate) fn export_options(import: &ObjectRef<VirtualMachineImport>, uid: &str) -> ExportOptions {
    ExportOptions {
        name_prefix: format!("vm-import-{}-{}", import.name, uid.get(..8).unwrap_or(uid)),
        poll_interval: Duration::from_secs(1),
        ..ExportOptions::default()
    }
}

/// The status record of an export's temporary objects.
fn recorded(objects: &TempObjects) -> SourceTemporaryObjects {
    SourceTemporaryObjects {
        images: objects.images.clone(),
        volumes: objects.volumes.clone(),
        snapshots: objects.snapshots.clone(),
        ..SourceTemporaryObjects::default()
    }
}

/// Why temporary objects could not all be deleted.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CleanupFailed {
    /// Some deletes failed (the rest of the record stays in status).
    #[error("{}", .0.iter().map(|e| chain(e)).collect::<Vec<_>>().join("; "))]
    Delete(Vec<openstack::export::CleanupError>),
    /// What is left could not be recorded.
    #[error("recording the cleanup")]
    Record(#[source] kube::Error),
    /// No session with the cloud.
    #[error(transparent)]
    Connect(#[from] OpenstackError),
}

/// Deletes temporary objects recorded in status (after a restart, or for a deleted import), and
/// those an export of `disks` disks named but never recorded (a crash right after a create).
/// Returns what is left, for the caller to record, and whether everything went.
///
/// # Errors
/// [`CleanupFailed::Delete`]: what could not be deleted.
async fn cleanup_recorded(
    session: &Session,
    import: &ObjectRef<VirtualMachineImport>,
    uid: &str,
    objects: &SourceTemporaryObjects,
    disks: usize,
) -> (SourceTemporaryObjects, Result<(), CleanupFailed>) {
    let ledger = TempObjects {
        images: objects.images.clone(),
        volumes: objects.volumes.clone(),
        snapshots: objects.snapshots.clone(),
    };
    let result = session
        .client
        .cleanup(&ledger, &export_options(import, uid), disks)
        .await;
    let (left, failed) = match result {
        Ok(()) => (TempObjects::default(), Ok(())),
        Err((left, errors)) => (left, Err(CleanupFailed::Delete(errors))),
    };
    tracing::info!(import = %import, ?objects, left = ?left, "temporary OpenStack objects from an earlier export cleaned up");
    (recorded(&left), failed)
}

/// Imports whose recorded objects are being deleted by [`spawn_cleanup`].
static CLEANUPS: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// Deletes an import's recorded temporary objects in the background (a deleted or failed import
/// whose export is not running in this process), once at a time per import.
pub(crate) fn spawn_cleanup(
    kube: kube::Client,
    source: OpenstackSource,
    import: ObjectRef<VirtualMachineImport>,
    uid: String,
    objects: SourceTemporaryObjects,
    disks: usize,
) {
    let fresh = match CLEANUPS.lock() {
        Ok(mut set) => set.insert(uid.clone()),
        Err(poisoned) => poisoned.into_inner().insert(uid.clone()),
    };
    if !fresh {
        return;
    }
    tokio::spawn(async move {
        let api: Api<VirtualMachineImport> =
            Api::namespaced(kube.clone(), import.namespace.as_deref().unwrap_or_default());
        let result = match connect(&kube, &source).await {
            Ok(session) => {
                let (left, result) = cleanup_recorded(&session, &import, &uid, &objects, disks).await;
                match record_objects(&api, &import.name, left).await {
                    // The import is gone: nothing to record in.
                    Ok(()) | Err(kube::Error::Api(_)) => result,
                    Err(error) => result.and(Err(CleanupFailed::Record(error))),
                }
            }
            Err(error) => Err(error.into()),
        };
        if let Err(error) = result {
            tracing::warn!(import = %import, error = %chain(&error), ?objects, "temporary OpenStack objects not deleted");
        }
        match CLEANUPS.lock() {
            Ok(mut set) => set.remove(&uid),
            Err(poisoned) => poisoned.into_inner().remove(&uid),
        };
    });
}

/// Why an OpenStack export stopped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TransferError {
    /// The source refused (session, token, server): the import fails with this error's reason.
    #[error(transparent)]
    Openstack(#[from] OpenstackError),
    /// What an earlier export left could not be deleted first.
    #[error("deleting the temporary objects of an earlier export")]
    EarlierObjects(#[source] CleanupFailed),
    /// The server's disks are not the ones recorded when the import started.
    #[error("the server has {found} disks now but had {recorded} when the import started")]
    DisksChanged {
        /// In status.
        recorded: usize,
        /// At the source now.
        found: usize,
    },
    /// The export failed (what it could not delete is recorded in status).
    #[error(transparent)]
    Export(openstack::export::ExportError),
}

impl KindError for TransferError {
    fn reason(&self) -> &'static str {
        match self {
            Self::Openstack(e) => e.reason(),
            Self::DisksChanged { .. } => "DisksChanged",
            Self::EarlierObjects(_) | Self::Export(_) => "TransferFailed",
        }
    }

    fn refusal(&self) -> Option<&'static str> {
        match self {
            Self::Openstack(e) => Some(e.reason()),
            _ => None,
        }
    }
}

impl From<TransferError> for SourceError {
    fn from(error: TransferError) -> Self {
        Self::kind(error)
    }
}

/// Exports every disk not yet exported: first deletes what an earlier (crashed) export left, then
/// runs the openstack crate's export with the ledger hook writing status, and records the final
/// ledger before returning.
///
/// # Errors
/// [`TransferError::Openstack`] when the source refused the session (its reason names what to fix),
/// otherwise the step that failed. The export has already deleted what it could of its temporary
/// objects; the rest is recorded in status.
async fn transfer(
    t: &mut OpenstackTransfer,
    shared: Arc<ExportLedger>,
    dir: &Path,
) -> Result<(), TransferError> {
    // What an earlier export of this import recorded, and what it made without recording (killed
    // between a create and its record): both go before anything new is made.
    let mut objects = t.recorded.take().unwrap_or_default();
    // A failed search does not stop the export: the export searches again after each disk and on
    // failure, and a deleted import searches once more.
    let unrecorded = t
        .session
        .client
        .find_named(&export_options(&t.import, &t.uid), 0..shared.names().len())
        .await
        .unwrap_or_else(|error| {
            tracing::warn!(import = %t.import, error = %chain(&error), "searching for unrecorded temporary objects failed");
            TempObjects::default()
        });
    for (list, found) in [
        (&mut objects.images, unrecorded.images),
        (&mut objects.volumes, unrecorded.volumes),
        (&mut objects.snapshots, unrecorded.snapshots),
    ] {
        for id in found {
            if !list.contains(&id) {
                list.push(id);
            }
        }
    }
    if !objects.is_empty() {
        let (left, result) = cleanup_recorded(&t.session, &t.import, &t.uid, &objects, 0).await;
        shared.record_temporary(left);
        result.map_err(TransferError::EarlierObjects)?;
    }
    let mut server = t.session.inspect(&t.server).await?;
    let names = shared.names();
    if server.disks.len() != names.len() {
        return Err(TransferError::DisksChanged {
            recorded: names.len(),
            found: server.disks.len(),
        });
    }
    let mut sinks = Vec::new();
    let mut indexes = Vec::new();
    for index in 0..names.len() {
        if shared.is_exported(index) {
            continue;
        }
        // Progress comes from the export's hooks: download bytes, in the unit Glance sizes them.
        sinks.push(shared.sink(index, false));
        indexes.push(index);
    }
    if sinks.is_empty() {
        return Ok(());
    }
    let mut position = 0;
    let keep: Vec<bool> = (0..server.disks.len()).map(|i| indexes.contains(&i)).collect();
    server.disks.retain(|_| {
        let kept = keep[position];
        position += 1;
        kept
    });

    let ledger = shared.clone();
    let progress_shared = shared.clone();
    let progress_indexes = indexes.clone();
    let hooks = Hooks {
        temp_objects: Some(Arc::new(move |objects: &TempObjects| {
            ledger.record_temporary(recorded(objects));
        })),
        progress: Some(Arc::new(move |p| {
            if let Some(&index) = progress_indexes.get(p.disk) {
                progress_shared.set_done(index, p.bytes_done);
            }
        })),
    };
    let options = export_options(&t.import, &t.uid);
    let result = t
        .session
        .client
        .export_server(&server, sinks, &options, &hooks)
        .await;
    let (left, outcome) = match result {
        Ok(exported) => (exported.report.left_behind.clone(), Ok(())),
        Err(error) => {
            let left = error.left_behind.clone();
            for index in &indexes {
                // The sinks remove what they wrote when dropped; a writer thread still running
                // removes its own. This catches a `.part` left by an earlier process.
                if let Some(name) = names.get(*index) {
                    let _ = tokio::fs::remove_file(partial_path(dir, name)).await;
                }
            }
            let failure = match &error.error {
                // The token expired or was revoked and logging in again failed: say so with the
                // reason an admin acts on, not as a generic transfer failure.
                openstack::export::Error::Call { source, .. } if source.is_auth() => {
                    TransferError::Openstack(match t.session.error("exporting", source) {
                        OpenstackError::TokenExpired(_) => OpenstackError::TokenExpired(chain(&error)),
                        other => other,
                    })
                }
                _ => TransferError::Export(error),
            };
            (left, Err(failure))
        }
    };
    // The export's ledger carries this to status (its last word is written after the transfer).
    shared.record_temporary(recorded(&left));
    outcome
}

/// One import's view of its cloud: the Keystone session and the server, read on first use.
pub(crate) struct Openstack {
    kube: kube::Client,
    source: OpenstackSource,
    /// Server name or UUID.
    server_name: String,
    session: Option<Session>,
    server: Option<ServerDescription>,
}

impl Openstack {
    pub(super) fn open(kube: &kube::Client, source: OpenstackSource, import: &VirtualMachineImport) -> Self {
        Self {
            kube: kube.clone(),
            source,
            server_name: import.spec.virtual_machine_name.clone(),
            session: None,
            server: None,
        }
    }

    /// The Keystone session for this reconcile (opened on first use).
    async fn session(&mut self) -> Result<&Session, OpenstackError> {
        let session = match self.session.take() {
            Some(session) => session,
            None => connect(&self.kube, &self.source).await?,
        };
        Ok(self.session.insert(session))
    }

    /// The server the import names; `Ok(None)` when no server has that name or id.
    async fn server(&mut self) -> Result<Option<&ServerDescription>, OpenstackError> {
        if self.server.is_none() {
            let name = self.server_name.clone();
            match self.session().await?.inspect(&name).await {
                Ok(server) => self.server = Some(server),
                Err(OpenstackError::ServerNotFound(_)) => return Ok(None),
                Err(error) => return Err(error),
            }
        }
        Ok(self.server.as_ref())
    }

    /// The server's id, which must exist.
    async fn server_id(&mut self) -> Result<String, OpenstackError> {
        match self.server().await? {
            Some(server) => Ok(server.id.clone()),
            None => Err(OpenstackError::ServerNotFound(format!(
                "server '{}' not found",
                self.server_name
            ))),
        }
    }
}

#[async_trait]
impl Source for Openstack {
    fn max_bytes_per_second(&self) -> Option<u64> {
        self.source.spec.max_bytes_per_second
    }

    async fn own_name(&mut self) -> Result<Option<String>, SourceError> {
        Ok(self.server().await?.map(|s| s.name.clone()))
    }

    async fn describe(&mut self) -> Result<Option<SourceVm>, SourceError> {
        Ok(self.server().await?.map(source_vm))
    }

    async fn checks(&mut self, target: RiskFacts, skip_source: bool) -> Result<SourceChecks, SourceError> {
        // Upstream: OpenStack cannot power off (os-stop does it, graceful then forced by Nova),
        // so no guest-tools check; a name that matches several servers is reported as such.
        let (server, source_error) = match self.server().await {
            Ok(server) => (server.cloned(), None),
            Err(error @ OpenstackError::ServerNameNotUnique(_)) => (None, Some(chain(&error))),
            Err(error) => return Err(error.into()),
        };
        let networks = if skip_source {
            None
        } else {
            let session = self.session().await?;
            session
                .client
                .network_names()
                .await
                .map_err(|e| session.error("listing networks", &e))?
        };
        Ok(SourceChecks {
            vm: server.as_ref().map(source_vm),
            networks,
            source_error,
            power_off_supported: false,
            powered_off: server.as_ref().is_some_and(|s| s.status == "SHUTOFF"),
            tools_running: false,
            risks: target,
        })
    }

    async fn power(&mut self) -> Result<PowerFact, SourceError> {
        let id = self.server_id().await?;
        let session = self.session().await?;
        let (state, task) = session
            .client
            .server_status(&id)
            .await
            .map_err(|e| session.error("reading the server's status", &e))?;
        Ok(if state == "SHUTOFF" && task.is_none() {
            PowerFact::Off
        } else {
            PowerFact::On
        })
    }

    async fn stop(&mut self, force: bool) -> Result<StopRequest, SourceError> {
        // Nova has no harder stop than os-stop; asking again is harmless (409 while stopping).
        let id = self.server_id().await?;
        let session = self.session().await?;
        session.client.request_stop(&id).await.map_err(|e| match &e {
            openstack::inspect::StopError::Call { source, .. } => {
                session.error("stopping the server", source)
            }
            _ => OpenstackError::Api {
                step: "stopping the server",
                detail: chain(&e),
            },
        })?;
        Ok(StopRequest::CloudStop { again: force })
    }

    fn export(
        &self,
        import: &VirtualMachineImport,
        status: &VirtualMachineImportStatus,
    ) -> Box<dyn SourceExport> {
        Box::new(OpenstackExport {
            kube: self.kube.clone(),
            source: self.source.clone(),
            import: ObjectRef::from_obj(import),
            uid: import.uid().unwrap_or_default(),
            server: self.server_name.clone(),
            recorded: status.source_temporary_objects.clone(),
        })
    }

    async fn clean_up(&mut self, import: &VirtualMachineImport, status: &VirtualMachineImportStatus) {
        // With nothing recorded, the cleanup still searches for objects named after the import.
        let objects = recorded_objects(status).cloned();
        spawn_cleanup(
            self.kube.clone(),
            self.source.clone(),
            ObjectRef::from_obj(import),
            import.uid().unwrap_or_default(),
            objects.unwrap_or_default(),
            status.disk_import_status.len(),
        );
    }
}

/// An export through temporary snapshots, volumes and Glance images.
struct OpenstackExport {
    kube: kube::Client,
    source: OpenstackSource,
    import: ObjectRef<VirtualMachineImport>,
    uid: String,
    /// Server name or UUID.
    server: String,
    /// Temporary objects recorded in status by an earlier export (deleted first).
    recorded: Option<SourceTemporaryObjects>,
}

/// An OpenStack export logged in to Keystone.
struct OpenstackTransfer {
    session: Session,
    /// Keystone (the slots' key: every download comes from that cloud).
    host: String,
    import: ObjectRef<VirtualMachineImport>,
    uid: String,
    server: String,
    recorded: Option<SourceTemporaryObjects>,
}

#[async_trait]
impl SourceExport for OpenstackExport {
    async fn connect(self: Box<Self>) -> Result<Box<dyn ConnectedExport>, SourceError> {
        let session = connect(&self.kube, &self.source).await?;
        let this = *self;
        Ok(Box::new(OpenstackTransfer {
            session,
            host: this.source.spec.endpoint_address,
            import: this.import,
            uid: this.uid,
            server: this.server,
            recorded: this.recorded,
        }))
    }
}

#[async_trait]
impl ConnectedExport for OpenstackTransfer {
    fn host(&self) -> &str {
        &self.host
    }

    async fn transfer(&mut self, ledger: Arc<ExportLedger>, dir: &Path) -> Result<(), SourceError> {
        Ok(transfer(self, ledger, dir).await?)
    }

    async fn close(self: Box<Self>) {
        let _ = self.session.client.logout().await;
    }
}

#[async_trait]
impl SourceObject for OpenstackSource {
    const KIND: &'static str = "OpenstackSource";
    const READ_STEP: &'static str = "reading the OpenstackSource";

    fn source_status(&self) -> Option<&api::SourceStatus> {
        self.status.as_ref()
    }

    fn credentials(&self) -> Option<&k8s_openapi::api::core::v1::SecretReference> {
        Some(&self.spec.credentials)
    }

    /// Upstream's check: log in with the Secret, read the catalog of the region, list servers.
    async fn check(&self, kube: &kube::Client) -> Check {
        let insecure = self.spec.insecure_skip_verify == Some(true);
        match verify(kube, self).await {
            Ok(session) => {
                let _ = session.client.logout().await;
                Check::verified(session.insecure)
            }
            Err(error) => Check::failed(error.reason(), &error, insecure),
        }
    }

    fn ready_note(&self) -> String {
        format!(
            "logged in to {} and listed the servers of region {:?}",
            self.spec.endpoint_address, self.spec.region
        )
    }
}
