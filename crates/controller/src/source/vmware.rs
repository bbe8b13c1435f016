//! The vSphere source: a session from a `VmwareSource` and its Secret (TLS verified against
//! `caCert`, pinned to `certificateFingerprint`, or the system roots, unless the source opts out);
//! the VM description translated into `plan`'s source-neutral model and risk facts; power state,
//! guest shutdown and power-off; and the export through an `ExportVm` lease, each disk decoded
//! into its `.part` file and committed through the [`ExportLedger`] (open leases are recorded in
//! status by [`leases`], so a successor process aborts what a killed one left).

mod leases;

use error_text::chain;
use std::error::Error as _;

use std::{collections::BTreeMap, path::Path, sync::Arc};

use api::{VirtualMachineImport, VirtualMachineImportStatus, VmwareSource, names::vmware as vmware_secret};
use async_trait::async_trait;
use kube::{Api, ResourceExt, runtime::reflector::ObjectRef};
use plan::{
    ControllerKind, Firmware, SourceDisk, SourceNic, SourceVm,
    machine::PowerFact,
    risks::{CdromRisk, DiskRisk, NicRisk, RiskFacts, VmRisk},
    transition::StopRequest,
};
use vsphere::{
    Client, Config, MoRef, Password,
    export::ExportOptions,
    proto::vm::{BusFamily, NicNetwork, PowerState, VmDescription},
};

use super::interface::{
    Check, ConnectedExport, KindError, Source, SourceChecks, SourceError, SourceExport, SourceObject,
    looks_like_certificate_failure, record_objects, recorded_objects,
};
use crate::{
    disks::{ExportLedger, partial_path},
    preflight,
    secret::{SecretError, SourceSecret, TrustKeys},
    settings::Settings,
};

/// Why the controller could not get a working session (or datacenter) for a `VmwareSource`.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The credentials Secret is missing, unreadable or lacks a key.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// The server's certificate did not verify.
    #[error(
        "TLS verification of {endpoint} failed ({detail}); put the vCenter CA certificate (PEM) under the \
         secret's 'caCert' key or the SHA-256 fingerprint of vCenter's certificate under \
         'certificateFingerprint', or set spec.insecureSkipVerify: true to skip verification"
    )]
    TlsVerification {
        /// The endpoint.
        endpoint: String,
        /// The TLS error.
        detail: String,
    },
    /// The user name or password is wrong.
    #[error("vCenter {endpoint} rejected the credentials of user '{username}'")]
    InvalidCredentials {
        /// The endpoint.
        endpoint: String,
        /// The user.
        username: String,
    },
    /// Any other session failure (unreachable host, bad URL, faults).
    #[error("cannot log in to {endpoint}: {detail}")]
    Session {
        /// The endpoint.
        endpoint: String,
        /// The error chain.
        detail: String,
    },
    /// Login worked but the datacenter is not there.
    #[error("{0}")]
    Datacenter(String),
}

/// Why a vSphere call failed once logged in.
#[derive(Debug, thiserror::Error)]
pub(crate) enum VsphereError {
    /// A power call failed.
    #[error("{step}")]
    Power {
        /// What we were doing.
        step: &'static str,
        /// Why.
        #[source]
        source: vsphere::power::Error,
    },
    /// Reading the inventory failed.
    #[error("{step}")]
    Inventory {
        /// What we were doing.
        step: &'static str,
        /// Why.
        #[source]
        source: vsphere::inventory::Error,
    },
    /// The export lease failed (it was aborted).
    #[error(transparent)]
    Export(#[from] vsphere::export::Error),
}

impl VsphereError {
    /// A failed inventory read of `step`.
    fn inventory(step: &'static str) -> impl FnOnce(vsphere::inventory::Error) -> SourceError {
        move |source| SourceError::kind(Self::Inventory { step, source })
    }

    /// A failed power call of `step`.
    fn power(step: &'static str) -> impl FnOnce(vsphere::power::Error) -> SourceError {
        move |source| SourceError::kind(Self::Power { step, source })
    }
}

impl KindError for VsphereError {
    fn reason(&self) -> &'static str {
        match self {
            Self::Power { .. } | Self::Inventory { .. } => "SourceApiError",
            Self::Export(_) => "TransferFailed",
        }
    }

    fn refusal(&self) -> Option<&'static str> {
        None
    }
}

impl From<ConnectError> for SourceError {
    fn from(error: ConnectError) -> Self {
        Self::kind(error)
    }
}

impl KindError for ConnectError {
    fn reason(&self) -> &'static str {
        match self {
            Self::Secret(error) => error.reason(),
            Self::TlsVerification { .. } => "TLSVerificationFailed",
            Self::InvalidCredentials { .. } => "InvalidCredentials",
            Self::Session { .. } => "EndpointUnreachable",
            Self::Datacenter(_) => "DatacenterNotFound",
        }
    }
}

/// The trust keys of a `VmwareSource`'s Secret.
const TRUST_KEYS: TrustKeys = TrustKeys {
    ca_cert: vmware_secret::CA_CERT,
    fingerprint: vmware_secret::CERT_FINGERPRINT,
};

/// Logs in to the source's vCenter (or ESXi).
///
/// # Errors
/// [`ConnectError`], each naming what to fix.
pub async fn connect(kube: &kube::Client, source: &VmwareSource) -> Result<Client, ConnectError> {
    let secret = SourceSecret::read(kube, &source.spec.credentials, source.namespace()).await?;
    let username = secret.required_text(vmware_secret::USERNAME)?;
    let password = Password::new(secret.required_text(vmware_secret::PASSWORD)?);
    let insecure = source.spec.insecure_skip_verify == Some(true);
    let tls = secret.tls(TRUST_KEYS, insecure)?;
    let endpoint = source.spec.endpoint_address.clone();
    let config = Config::new(endpoint.clone(), username.clone(), password).with_tls(tls);
    Client::connect(config).await.map_err(|error| {
        if error.is_invalid_login() {
            return ConnectError::InvalidCredentials {
                endpoint: endpoint.clone(),
                username: username.clone(),
            };
        }
        let detail = chain(&error);
        let tls_failure = matches!(error, vsphere::client::Error::Tls { .. })
            || (error.source().is_some() && looks_like_certificate_failure(&detail));
        if tls_failure && !insecure {
            ConnectError::TlsVerification {
                endpoint: endpoint.clone(),
                detail,
            }
        } else {
            ConnectError::Session {
                endpoint: endpoint.clone(),
                detail,
            }
        }
    })
}

/// Logs in and checks that the source's datacenter exists.
///
/// # Errors
/// [`ConnectError`].
pub async fn verify(kube: &kube::Client, source: &VmwareSource) -> Result<Client, ConnectError> {
    let client = connect(kube, source).await?;
    if let Err(error) = client.datacenter(datacenter_name(&source.spec.datacenter)).await {
        let _ = client.logout().await;
        return Err(ConnectError::Datacenter(chain(&error)));
    }
    Ok(client)
}

/// The datacenter name as the inventory knows it (upstream accepts `DC0` and `/DC0`).
pub fn datacenter_name(spec_value: &str) -> &str {
    spec_value.trim_start_matches('/')
}

/// The neutral controller kind of a vSphere controller.
pub fn controller_kind(family: BusFamily, class: &str) -> ControllerKind {
    match family {
        BusFamily::Scsi if class.to_ascii_lowercase().contains("paravirtual") => {
            ControllerKind::ParaVirtualScsi
        }
        BusFamily::Scsi => ControllerKind::Scsi,
        BusFamily::Sata => ControllerKind::Sata,
        BusFamily::Ide => ControllerKind::Ide,
        BusFamily::Nvme => ControllerKind::Nvme,
        BusFamily::Usb => ControllerKind::Usb,
        BusFamily::Other => ControllerKind::Unknown,
    }
}

fn nic_model(device_type: &str) -> Option<api::NicModel> {
    match device_type {
        "VirtualVmxnet" | "VirtualVmxnet2" | "VirtualVmxnet3" => Some(api::NicModel::Virtio),
        "VirtualE1000e" => Some(api::NicModel::E1000e),
        "VirtualE1000" => Some(api::NicModel::E1000),
        "VirtualPCNet32" => Some(api::NicModel::Pcnet),
        _ => None,
    }
}

/// The VM in `plan`'s terms.
pub fn source_vm(vm: &VmDescription) -> SourceVm {
    SourceVm {
        name: vm.name.clone(),
        cpus: vm.num_cpu,
        cores_per_socket: vm.num_cores_per_socket,
        memory_mib: vm.memory_mb,
        firmware: match vm.firmware {
            vsphere::proto::vm::Firmware::Efi => Firmware::Efi,
            vsphere::proto::vm::Firmware::Bios => Firmware::Bios,
        },
        secure_boot: vm.secure_boot,
        tpm: vm.vtpm,
        disks: vm
            .disks
            .iter()
            .map(|d| SourceDisk {
                controller: controller_kind(d.controller.family, &d.controller.class),
                bus: u32::try_from(d.controller.bus).unwrap_or_default(),
                unit: u32::try_from(d.unit).unwrap_or_default(),
                capacity_bytes: d.capacity_bytes,
                boot_order: None,
            })
            .collect(),
        nics: vm
            .nics
            .iter()
            .map(|n| SourceNic {
                model: nic_model(&n.device_type),
                mac: n.mac_address.clone(),
                network: n.network.name().unwrap_or_default().to_owned(),
                switch: match &n.network {
                    NicNetwork::Distributed { switch_name, .. } => switch_name.clone(),
                    _ => None,
                },
            })
            .collect(),
        description: vm.annotation.clone().filter(|a| !a.is_empty()),
    }
}

/// The VM's details in the risk rules' terms.
pub fn vm_risk(vm: &VmDescription) -> VmRisk {
    VmRisk {
        hardware_version: vm
            .hardware_version
            .as_deref()
            .and_then(|v| v.strip_prefix("vmx-"))
            .and_then(|n| n.parse().ok()),
        guest_id: vm.guest_id.clone(),
        guest_name: vm.guest_full_name.clone(),
        snapshots: vm.snapshot_present,
        encrypted: vm.encrypted,
        disks: vm
            .disks
            .iter()
            .map(|d| DiskRisk {
                label: d.label.clone(),
                controller: controller_kind(d.controller.family, &d.controller.class),
                controller_class: d.controller.class.clone(),
                independent: d.independent,
                rdm: d.rdm.clone(),
                shared: d.shared,
                provisioned_bytes: d.capacity_bytes,
                allocated_bytes: d.allocated_bytes,
            })
            .collect(),
        nics: vm
            .nics
            .iter()
            .map(|n| NicRisk {
                label: n.label.clone(),
                device_type: n.device_type.clone(),
            })
            .collect(),
        cdroms: vm
            .cdroms
            .iter()
            .map(|c| CdromRisk {
                label: c.label.clone(),
                iso: c.iso_file.clone(),
                connected: c.start_connected,
            })
            .collect(),
    }
}

/// One import's view of its vCenter: the session and the VM's description, read on first use.
pub(crate) struct Vmware {
    kube: kube::Client,
    source: VmwareSource,
    esxi_probe_ports: Vec<u16>,
    vm_name: String,
    folder: Option<String>,
    session: Option<Client>,
    description: Option<VmDescription>,
    /// Network names of the source's datacenter, read with the VM.
    networks: Option<Vec<String>>,
}

impl Vmware {
    pub(super) fn open(
        kube: &kube::Client,
        settings: &Settings,
        source: VmwareSource,
        import: &VirtualMachineImport,
    ) -> Self {
        Self {
            kube: kube.clone(),
            source,
            esxi_probe_ports: settings.esxi_probe_ports.clone(),
            vm_name: import.spec.virtual_machine_name.clone(),
            folder: Some(import.spec.folder.clone()).filter(|f| !f.is_empty()),
            session: None,
            description: None,
            networks: None,
        }
    }

    /// The session for this reconcile (opened on first use).
    async fn session(&mut self) -> Result<&Client, SourceError> {
        let session = match self.session.take() {
            Some(session) => session,
            None => connect(&self.kube, &self.source).await?,
        };
        Ok(self.session.insert(session))
    }

    /// The VM at the source; `Ok(None)` when it does not exist.
    async fn description(&mut self) -> Result<Option<&VmDescription>, SourceError> {
        if self.description.is_none() {
            let datacenter = datacenter_name(&self.source.spec.datacenter).to_owned();
            let (vm_name, folder) = (self.vm_name.clone(), self.folder.clone());
            let session = self.session().await?;
            let inventory = VsphereError::inventory;
            let dc = session
                .datacenter(&datacenter)
                .await
                .map_err(inventory("finding the datacenter"))?;
            let networks = session
                .networks(&dc)
                .await
                .map_err(inventory("listing networks"))?;
            let description = match session.find_vm(&dc, folder.as_deref(), &vm_name).await {
                Ok(vm) => Some(
                    session
                        .describe_vm(&vm, &networks)
                        .await
                        .map_err(inventory("describing the VM"))?,
                ),
                Err(
                    vsphere::inventory::Error::VmNotFound { .. }
                    | vsphere::inventory::Error::FolderNotFound { .. },
                ) => None,
                Err(error) => return Err(inventory("looking up the VM")(error)),
            };
            self.networks = Some(networks.networks.into_iter().map(|n| n.name).collect());
            let Some(description) = description else {
                return Ok(None);
            };
            self.description = Some(description);
        }
        Ok(self.description.as_ref())
    }

    /// The VM's reference, which must exist for `step`.
    async fn moref(&mut self, step: &'static str) -> Result<MoRef, SourceError> {
        let vm = self.vm_name.clone();
        self.description()
            .await?
            .map(|d| d.moref.clone())
            .ok_or(SourceError::VmNotFound { step, vm })
    }
}

#[async_trait]
impl Source for Vmware {
    fn max_bytes_per_second(&self) -> Option<u64> {
        self.source.spec.max_bytes_per_second
    }

    async fn describe(&mut self) -> Result<Option<SourceVm>, SourceError> {
        Ok(self.description().await?.map(source_vm))
    }

    async fn checks(&mut self, target: RiskFacts, skip_source: bool) -> Result<SourceChecks, SourceError> {
        let description = self.description().await?.cloned();
        let probe_targets = preflight::targets(
            &self.source.spec.endpoint_address,
            description.as_ref().and_then(|d| d.host_name.as_deref()),
            &self.esxi_probe_ports,
        );
        let risks = RiskFacts {
            vm: description.as_ref().map(vm_risk),
            probes: preflight::probe_all(probe_targets, preflight::PROBE_TIMEOUT).await,
            ..target
        };
        Ok(SourceChecks {
            vm: description.as_ref().map(source_vm),
            // Source-side checks are skipped as upstream does; the VM is still described for warnings.
            networks: if skip_source { None } else { self.networks.clone() },
            source_error: None,
            power_off_supported: true,
            powered_off: description
                .as_ref()
                .is_some_and(|d| d.power_state == PowerState::PoweredOff),
            tools_running: description.as_ref().is_some_and(VmDescription::tools_running),
            risks,
        })
    }

    async fn power(&mut self) -> Result<PowerFact, SourceError> {
        // The description is read once per reconcile, with the VM's runtime power state.
        let vm = self.vm_name.clone();
        let state = self
            .description()
            .await?
            .map(|d| d.power_state)
            .ok_or(SourceError::VmNotFound {
                step: "reading the power state",
                vm,
            })?;
        Ok(if state == PowerState::PoweredOff {
            PowerFact::Off
        } else {
            PowerFact::On
        })
    }

    async fn stop(&mut self, force: bool) -> Result<StopRequest, SourceError> {
        let moref = self.moref("finding the VM").await?;
        let session = self.session().await?;
        let power_error = VsphereError::power;
        if force {
            session
                .power_off(&moref)
                .await
                .map_err(power_error("powering the VM off"))?;
            Ok(StopRequest::PoweredOff)
        } else {
            session
                .request_guest_shutdown(&moref)
                .await
                .map_err(power_error("requesting a guest shutdown"))?;
            Ok(StopRequest::GuestShutdown)
        }
    }

    fn export(
        &self,
        import: &VirtualMachineImport,
        status: &VirtualMachineImportStatus,
    ) -> Box<dyn SourceExport> {
        Box::new(VmwareExport {
            kube: self.kube.clone(),
            source: self.source.clone(),
            import: ObjectRef::from_obj(import),
            vm_name: self.vm_name.clone(),
            folder: self.folder.clone(),
            recorded_leases: status
                .source_temporary_objects
                .as_ref()
                .map(|o| o.leases.clone())
                .unwrap_or_default(),
            disks: status.disk_import_status.len(),
        })
    }

    async fn clean_up(&mut self, import: &VirtualMachineImport, status: &VirtualMachineImportStatus) {
        // Export leases a process that is gone left open (the record holds only those).
        let Some(leases) = recorded_objects(status)
            .map(|o| o.leases.clone())
            .filter(|l| !l.is_empty())
        else {
            return;
        };
        let api: Api<VirtualMachineImport> =
            Api::namespaced(self.kube.clone(), &import.namespace().unwrap_or_default());
        match self.session().await {
            Ok(client) => {
                let (client, name) = (client.clone(), import.name_any());
                tokio::spawn(async move {
                    let left = leases::abort_recorded(&client, &name, &leases).await;
                    if let Err(error) = record_objects(&api, &name, leases::record(left)).await {
                        tracing::warn!(import = name, %error, "recording the export leases failed");
                    }
                });
            }
            Err(error) => {
                tracing::warn!(import = %import.name_any(), error = %chain(&error), ?leases, "export leases cannot be aborted: no session with the source");
            }
        }
    }
}

/// An export through an `ExportVm` lease.
struct VmwareExport {
    kube: kube::Client,
    source: VmwareSource,
    import: ObjectRef<VirtualMachineImport>,
    vm_name: String,
    folder: Option<String>,
    /// Export leases an earlier process recorded in status (aborted before a new one is taken).
    recorded_leases: Vec<String>,
    /// Disks recorded in status when the import started.
    disks: usize,
}

/// An `ExportVm` export logged in, its VM found with the disks recorded.
struct VmwareTransfer {
    client: Client,
    description: VmDescription,
    /// The ESXi host serving the disks (vCenter when unknown).
    host: String,
    /// Leases of an earlier process that could not be aborted, when it recorded any.
    earlier_leases: Option<Vec<String>>,
}

#[async_trait]
impl SourceExport for VmwareExport {
    async fn connect(self: Box<Self>) -> Result<Box<dyn ConnectedExport>, SourceError> {
        let client = connect(&self.kube, &self.source).await?;
        // A lease an earlier process took and never released blocks the VM: abort it first (what
        // is left goes to status with the export's first record).
        let leases_left = leases::abort_recorded(&client, &self.import.name, &self.recorded_leases).await;
        let found = match client
            .inspect(
                datacenter_name(&self.source.spec.datacenter),
                self.folder.as_deref(),
                &self.vm_name,
            )
            .await
        {
            Ok(description) if description.disks.len() == self.disks => Ok(description),
            Ok(description) => Err(SourceError::DisksChanged {
                recorded: self.disks,
                found: description.disks.len(),
            }),
            Err(error) => Err(VsphereError::inventory("looking up the VM")(error)),
        };
        let description = match found {
            Ok(description) => description,
            Err(error) => {
                let _ = client.logout().await;
                return Err(error);
            }
        };
        let host = description
            .host
            .as_ref()
            .map_or_else(|| self.source.spec.endpoint_address.clone(), |h| h.value.clone());
        Ok(Box::new(VmwareTransfer {
            client,
            description,
            host,
            earlier_leases: (!self.recorded_leases.is_empty()).then_some(leases_left),
        }))
    }
}

#[async_trait]
impl ConnectedExport for VmwareTransfer {
    fn host(&self) -> &str {
        &self.host
    }

    async fn transfer(&mut self, ledger: Arc<ExportLedger>, dir: &Path) -> Result<(), SourceError> {
        let mut description = self.description.clone();
        let mut sinks = BTreeMap::new();
        let mut partials = Vec::new();
        // Disks exported before a restart keep their files; the rest are (re)exported from scratch.
        for (index, name) in ledger.names().iter().enumerate() {
            if ledger.is_exported(index) {
                continue;
            }
            sinks.insert(description.disks[index].key, ledger.sink(index, true));
            partials.push(partial_path(dir, name));
        }
        description.disks.retain(|d| sinks.contains_key(&d.key));
        let earlier = self.earlier_leases.take();
        if let Some(left) = &earlier {
            ledger.record_temporary(leases::record(left.clone()));
        }
        let on_lease = leases::recorder(ledger.clone(), earlier.unwrap_or_default());
        let exported = self
            .client
            .export_vm_recorded(&description, sinks, &ExportOptions::default(), Some(on_lease))
            .await;
        if exported.is_err() {
            for path in &partials {
                let _ = tokio::fs::remove_file(path).await;
            }
        }
        exported.map_err(|e| SourceError::kind(VsphereError::from(e)))?;
        Ok(())
    }

    async fn close(self: Box<Self>) {
        let _ = self.client.logout().await;
    }
}

#[async_trait]
impl SourceObject for VmwareSource {
    const KIND: &'static str = "VmwareSource";
    const READ_STEP: &'static str = "reading the VmwareSource";

    fn source_status(&self) -> Option<&api::SourceStatus> {
        self.status.as_ref()
    }

    fn credentials(&self) -> Option<&k8s_openapi::api::core::v1::SecretReference> {
        Some(&self.spec.credentials)
    }

    async fn check(&self, kube: &kube::Client) -> Check {
        let insecure = self.spec.insecure_skip_verify == Some(true);
        match verify(kube, self).await {
            Ok(client) => {
                let _ = client.logout().await;
                Check::verified(insecure || client.tls_insecure())
            }
            Err(error) => Check::failed(error.reason(), &error, insecure),
        }
    }

    fn ready_note(&self) -> String {
        format!(
            "logged in to {} and found datacenter {}",
            self.spec.endpoint_address, self.spec.datacenter
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvscsi_is_told_apart_from_other_scsi() {
        assert_eq!(
            controller_kind(BusFamily::Scsi, "ParaVirtualSCSIController"),
            ControllerKind::ParaVirtualScsi
        );
        assert_eq!(
            controller_kind(BusFamily::Scsi, "VirtualLsiLogicController"),
            ControllerKind::Scsi
        );
        assert_eq!(
            controller_kind(BusFamily::Nvme, "VirtualNVMEController"),
            ControllerKind::Nvme
        );
    }

    #[test]
    fn nic_models_follow_upstream_table() {
        assert_eq!(nic_model("VirtualVmxnet3"), Some(api::NicModel::Virtio));
        assert_eq!(nic_model("VirtualE1000e"), Some(api::NicModel::E1000e));
        assert_eq!(nic_model("VirtualSriovEthernetCard"), None);
    }

    #[test]
    fn chain_joins_sources_without_repeating_them() {
        let inner = std::io::Error::other("connection refused");
        let outer = ConnectError::Secret(SecretError::Unreadable {
            namespace: "ns".into(),
            name: "s".into(),
            source: kube::Error::Service(Box::new(inner)),
        });
        let text = chain(&outer);
        assert!(text.starts_with("reading secret ns/s: "), "{text}");
        assert!(text.contains("connection refused"), "{text}");
    }
}
