//! Fact gathering: each [`plan::machine::Fact`] the state machine asks for, read from the cluster,
//! the source or this process's exports. One vSphere session per reconcile at most, opened lazily;
//! an OVA's descriptor is read (the head of the archive only) at most once per reconcile; one
//! Keystone session and one server description per reconcile at most for OpenStack.

use std::time::Duration;

use api::{
    ClusterStatus, ConditionType, OpenstackSource, OvaSource, VirtualMachineImport, VirtualMachineImportSpec,
    VirtualMachineImportStatus, VmwareSource,
};
use error_text::chain;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::{Api, ResourceExt, api::DynamicObject};
use plan::{
    SourceVm,
    machine::{ExportFact, Fact, ImageFact, Observed, PowerFact, SourceFact, VmFact},
    preflight::PreflightFacts,
    risks::RiskFacts,
};
use vsphere::proto::vm::{PowerState, VmDescription};

use super::ImportError;
use crate::{
    context::Context,
    disks::partial_path,
    kinds,
    openstack::{self as os, OpenstackError},
    ova::{self, OvaClient, OvaError},
    preflight, vmware,
};

/// The kind of source an import names (`spec.sourceCluster.kind`, case-insensitive as upstream).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SourceKind {
    /// `VmwareSource`.
    Vmware,
    /// `OvaSource`.
    Ova,
    /// `OpenstackSource`.
    Openstack,
    /// Anything else (preflight rejects it).
    Other,
}

impl SourceKind {
    pub(super) fn of(import: &VirtualMachineImport) -> Self {
        let kind = import.spec.source_cluster.kind.as_deref().unwrap_or_default();
        if kind.eq_ignore_ascii_case("VmwareSource") {
            Self::Vmware
        } else if kind.eq_ignore_ascii_case("OvaSource") {
            Self::Ova
        } else if kind.eq_ignore_ascii_case("OpenstackSource") {
            Self::Openstack
        } else {
            Self::Other
        }
    }
}

/// Everything gathered during one reconcile.
#[derive(Default)]
pub(super) struct Facts {
    pub(super) source: Option<SourceFact>,
    pub(super) vmware_source: Option<VmwareSource>,
    pub(super) preflight: Option<PreflightFacts>,
    pub(super) power: Option<PowerFact>,
    pub(super) since_shutdown: Option<Duration>,
    pub(super) export: Option<ExportFact>,
    pub(super) images: Option<Vec<ImageFact>>,
    pub(super) image_objects: Vec<Option<DynamicObject>>,
    pub(super) vm: Option<VmFact>,
    pub(super) leftovers: Option<bool>,
    pub(super) exported_files: Option<Vec<bool>>,
    pub(super) session: Option<vsphere::Client>,
    pub(super) description: Option<VmDescription>,
    /// Network names of the source's datacenter, read with the VM.
    pub(super) networks: Option<Vec<String>>,
    pub(super) ova_source: Option<OvaSource>,
    pub(super) ova_description: Option<::ova::VmDescription>,
    pub(super) openstack_source: Option<OpenstackSource>,
    pub(super) os_session: Option<os::Session>,
    pub(super) os_server: Option<openstack::ServerDescription>,
}

impl Facts {
    pub(super) fn observed<'a>(
        &'a self,
        spec: &'a VirtualMachineImportSpec,
        status: &'a VirtualMachineImportStatus,
        deleting: bool,
    ) -> Observed<'a> {
        let mut observed = Observed::new(spec, status);
        observed.deleting = deleting;
        observed.source = self.source;
        observed.preflight = self.preflight.as_ref();
        observed.power = self.power;
        observed.since_shutdown_request = self.since_shutdown;
        observed.export = self.export.clone();
        observed.images = self.images.as_deref();
        observed.vm = self.vm;
        observed.leftovers = self.leftovers;
        observed.exported_files = self.exported_files.as_deref();
        // OpenStack: a UUID in spec.virtualMachineName names the VM after the server, as upstream.
        observed.source_vm_name = self.os_server.as_ref().map(|s| s.name.as_str());
        observed
    }

    pub(super) async fn gather(
        &mut self,
        ctx: &Context,
        import: &VirtualMachineImport,
        status: &VirtualMachineImportStatus,
        fact: Fact,
    ) -> Result<(), ImportError> {
        match fact {
            Fact::Source => {
                self.gather_source(ctx, import).await?;
                if SourceKind::of(import) == SourceKind::Openstack
                    && status.phase == api::ImportPhase::Valid
                    && self.source == Some(SourceFact::Ready)
                {
                    self.os_describe(ctx, import).await?;
                }
                Ok(())
            }
            Fact::Preflight => self.gather_preflight(ctx, import).await,
            Fact::Power => self.gather_power(ctx, import, status).await,
            Fact::Export => {
                self.export = Some(ctx.exports.fact(&import.uid().unwrap_or_default()));
                Ok(())
            }
            Fact::Images => self.gather_images(ctx, import, status).await,
            Fact::VirtualMachine => self.gather_vm(ctx, import, status).await,
            Fact::Leftovers => self.gather_leftovers(ctx, import, status).await,
            Fact::ExportedFiles => {
                let dir = &ctx.settings.image_dir;
                // A name that is not servable is never joined onto the image directory.
                let present = status
                    .disk_import_status
                    .iter()
                    .map(|d| crate::image_server::is_servable_name(&d.name) && dir.join(&d.name).is_file())
                    .collect();
                self.exported_files = Some(present);
                Ok(())
            }
        }
    }

    async fn gather_source(
        &mut self,
        ctx: &Context,
        import: &VirtualMachineImport,
    ) -> Result<(), ImportError> {
        let reference = &import.spec.source_cluster;
        let namespace = reference
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .or_else(|| import.namespace())
            .unwrap_or_default();
        let name = reference.name.clone().unwrap_or_default();
        let fact = |status: Option<Option<&api::SourceStatus>>| match status {
            None => SourceFact::Missing,
            Some(Some(status)) if status.status == ClusterStatus::ClusterReady => SourceFact::Ready,
            Some(_) => SourceFact::NotReady,
        };
        match SourceKind::of(import) {
            SourceKind::Vmware => {
                let source: Option<VmwareSource> =
                    read_source(ctx, &namespace, &name, "reading the VmwareSource").await?;
                self.source = Some(fact(source.as_ref().map(|s| s.status.as_ref())));
                self.vmware_source = source;
            }
            SourceKind::Ova => {
                let source: Option<OvaSource> =
                    read_source(ctx, &namespace, &name, "reading the OvaSource").await?;
                self.source = Some(fact(source.as_ref().map(|s| s.status.as_ref())));
                self.ova_source = source;
            }
            SourceKind::Openstack => {
                let source: Option<OpenstackSource> =
                    read_source(ctx, &namespace, &name, "reading the OpenstackSource").await?;
                self.source = Some(fact(source.as_ref().map(|s| s.status.as_ref())));
                self.openstack_source = source;
            }
            SourceKind::Other => {
                return Err(ImportError::UnsupportedSource(
                    reference.kind.clone().unwrap_or_default(),
                ));
            }
        }
        Ok(())
    }

    /// The import's `OvaSource` (read on first use).
    pub(super) async fn ova_source(
        &mut self,
        ctx: &Context,
        import: &VirtualMachineImport,
    ) -> Result<&OvaSource, ImportError> {
        if self.ova_source.is_none() {
            self.gather_source(ctx, import).await?;
        }
        self.ova_source
            .as_ref()
            .ok_or_else(|| source_not_found("OvaSource", import))
    }

    /// The OVA's descriptor (the head of the archive is downloaded on first use).
    async fn ova_description(
        &mut self,
        ctx: &Context,
        import: &VirtualMachineImport,
    ) -> Result<&::ova::VmDescription, ImportError> {
        if self.ova_description.is_none() {
            let source = self.ova_source(ctx, import).await?.clone();
            let client = OvaClient::connect(&ctx.kube, &source).await?;
            self.ova_description = Some(ova::describe(&client).await?);
        }
        self.ova_description.as_ref().ok_or(ImportError::Undecided)
    }

    /// The source's VM in `plan`'s terms; `Ok(None)` when the source has no such VM.
    pub(super) async fn source_vm(
        &mut self,
        ctx: &Context,
        import: &VirtualMachineImport,
    ) -> Result<Option<SourceVm>, ImportError> {
        match SourceKind::of(import) {
            SourceKind::Ova => {
                let description = self.ova_description(ctx, import).await?;
                Ok(Some(ova::source_vm(
                    description,
                    &import.spec.virtual_machine_name,
                )))
            }
            SourceKind::Openstack => Ok(self.os_describe(ctx, import).await?.map(os::source_vm)),
            _ => Ok(self.describe(ctx, import).await?.map(vmware::source_vm)),
        }
    }

    /// The import's `OpenstackSource` (read on first use).
    pub(super) async fn openstack_source(
        &mut self,
        ctx: &Context,
        import: &VirtualMachineImport,
    ) -> Result<&OpenstackSource, ImportError> {
        if self.openstack_source.is_none() {
            self.gather_source(ctx, import).await?;
        }
        self.openstack_source
            .as_ref()
            .ok_or_else(|| source_not_found("OpenstackSource", import))
    }

    /// The Keystone session for this reconcile (opened on first use).
    pub(super) async fn os_session(
        &mut self,
        ctx: &Context,
        import: &VirtualMachineImport,
    ) -> Result<&os::Session, ImportError> {
        if self.os_session.is_none() {
            let source = self.openstack_source(ctx, import).await?.clone();
            self.os_session = Some(os::connect(&ctx.kube, &source).await?);
        }
        self.os_session.as_ref().ok_or(ImportError::Undecided)
    }

    /// The server the import names; `Ok(None)` when no server has that name or id.
    pub(super) async fn os_describe(
        &mut self,
        ctx: &Context,
        import: &VirtualMachineImport,
    ) -> Result<Option<&openstack::ServerDescription>, ImportError> {
        if self.os_server.is_none() {
            let session = self.os_session(ctx, import).await?;
            match session.inspect(&import.spec.virtual_machine_name).await {
                Ok(server) => self.os_server = Some(server),
                Err(OpenstackError::ServerNotFound(_)) => return Ok(None),
                Err(error) => return Err(error.into()),
            }
        }
        Ok(self.os_server.as_ref())
    }

    /// The import's `VmwareSource` (read on first use).
    pub(super) async fn vmware_source(
        &mut self,
        ctx: &Context,
        import: &VirtualMachineImport,
    ) -> Result<&VmwareSource, ImportError> {
        if self.vmware_source.is_none() {
            self.gather_source(ctx, import).await?;
        }
        self.vmware_source
            .as_ref()
            .ok_or_else(|| source_not_found("VmwareSource", import))
    }

    /// The vSphere session for this reconcile (opened on first use) and the source's datacenter.
    pub(super) async fn session(
        &mut self,
        ctx: &Context,
        import: &VirtualMachineImport,
    ) -> Result<(&vsphere::Client, String), ImportError> {
        let source = self.vmware_source(ctx, import).await?.clone();
        let datacenter = vmware::datacenter_name(&source.spec.datacenter).to_owned();
        let session = match self.session.take() {
            Some(session) => session,
            None => vmware::connect(&ctx.kube, &source).await?,
        };
        Ok((self.session.insert(session), datacenter))
    }

    /// The VM at the source; `Ok(None)` when it does not exist.
    pub(super) async fn describe(
        &mut self,
        ctx: &Context,
        import: &VirtualMachineImport,
    ) -> Result<Option<&VmDescription>, ImportError> {
        if self.description.is_none() {
            let folder = Some(import.spec.folder.as_str()).filter(|f| !f.is_empty());
            let (session, datacenter) = self.session(ctx, import).await?;
            let vsphere_error = |step| move |source| ImportError::VsphereInventory { step, source };
            let dc = session
                .datacenter(&datacenter)
                .await
                .map_err(vsphere_error("finding the datacenter"))?;
            let networks = session
                .networks(&dc)
                .await
                .map_err(vsphere_error("listing networks"))?;
            let found = session
                .find_vm(&dc, folder, &import.spec.virtual_machine_name)
                .await;
            let description = match found {
                Ok(vm) => Some(
                    session
                        .describe_vm(&vm, &networks)
                        .await
                        .map_err(vsphere_error("describing the VM"))?,
                ),
                Err(
                    vsphere::inventory::Error::VmNotFound { .. }
                    | vsphere::inventory::Error::FolderNotFound { .. },
                ) => None,
                Err(error) => return Err(vsphere_error("looking up the VM")(error)),
            };
            self.networks = Some(networks.networks.into_iter().map(|n| n.name).collect());
            let Some(description) = description else {
                return Ok(None);
            };
            self.description = Some(description);
        }
        Ok(self.description.as_ref())
    }

    async fn gather_preflight(
        &mut self,
        ctx: &Context,
        import: &VirtualMachineImport,
    ) -> Result<(), ImportError> {
        let spec = &import.spec;
        let namespace = import.namespace().unwrap_or_default();
        let storage_class_exists = spec.storage_class.is_empty()
            || Api::<StorageClass>::all(ctx.kube.clone())
                .get_opt(&spec.storage_class)
                .await
                .map_err(ImportError::kube("reading the StorageClass"))?
                .is_some();
        let mut missing_nads = Vec::new();
        for mapping in &spec.mapping {
            let (nad_namespace, nad_name) = match mapping.destination_network.split('/').collect::<Vec<_>>()[..]
            {
                [name] => (namespace.as_str(), name),
                [ns, name] => (ns, name),
                // Malformed: plan reports it as such.
                _ => continue,
            };
            if nad_name.is_empty() {
                continue;
            }
            let found = kinds::namespaced(&ctx.kube, nad_namespace, &kinds::nad_resource())
                .get_opt(nad_name)
                .await
                .map_err(ImportError::kube("reading a NetworkAttachmentDefinition"))?;
            if found.is_none() {
                missing_nads.push(mapping.destination_network.clone());
            }
        }
        let skip_source = spec.skip_preflight_checks == Some(true);
        if SourceKind::of(import) == SourceKind::Ova {
            // An OVA's VM is always "off"; its networks are the ones its NICs name.
            let (vm, networks, source_error) = match self.ova_description(ctx, import).await {
                Ok(d) => (
                    Some(ova::source_vm(d, &spec.virtual_machine_name)),
                    Some(ova::networks(d)),
                    None,
                ),
                // The archive itself is unusable: that will not change by retrying.
                Err(ImportError::Ova(error @ OvaError::Archive { .. })) => (None, None, Some(chain(&error))),
                Err(error) => return Err(error),
            };
            self.preflight = Some(PreflightFacts {
                storage_class_exists,
                missing_nads,
                source_networks: if skip_source { None } else { networks },
                vm,
                source_error,
                power_off_supported: false,
                powered_off: true,
                tools_running: false,
                risks: target_risk_facts(ctx, import).await?,
            });
            return Ok(());
        }
        if SourceKind::of(import) == SourceKind::Openstack {
            // Upstream: OpenStack cannot power off (os-stop does it, graceful then forced by Nova),
            // so no guest-tools check; a name that matches several servers is reported as such.
            let (server, source_error) = match self.os_describe(ctx, import).await {
                Ok(server) => (server.cloned(), None),
                Err(ImportError::Openstack(error @ OpenstackError::ServerNameNotUnique(_))) => {
                    (None, Some(chain(&error)))
                }
                Err(error) => return Err(error),
            };
            let networks = if skip_source {
                None
            } else {
                let session = self.os_session(ctx, import).await?;
                session
                    .client
                    .network_names()
                    .await
                    .map_err(|e| session.error("listing networks", &e))?
            };
            self.preflight = Some(PreflightFacts {
                storage_class_exists,
                missing_nads,
                source_networks: networks,
                vm: server.as_ref().map(os::source_vm),
                source_error,
                power_off_supported: false,
                powered_off: server.as_ref().is_some_and(|s| s.status == "SHUTOFF"),
                tools_running: false,
                risks: target_risk_facts(ctx, import).await?,
            });
            return Ok(());
        }
        let description = self.describe(ctx, import).await?.cloned();
        let risks = self.risk_facts(ctx, import, description.as_ref()).await?;
        // Source-side checks are skipped as upstream does; the VM is still described for warnings.
        let source_networks = if skip_source { None } else { self.networks.clone() };
        self.preflight = Some(PreflightFacts {
            storage_class_exists,
            missing_nads,
            source_networks,
            vm: description.as_ref().map(vmware::source_vm),
            source_error: None,
            power_off_supported: true,
            powered_off: description
                .as_ref()
                .is_some_and(|d| d.power_state == PowerState::PoweredOff),
            tools_running: description.as_ref().is_some_and(VmDescription::tools_running),
            risks,
        });
        Ok(())
    }

    /// Risk facts of a vSphere import: the target's, plus the VM's details and TCP probes of the
    /// vCenter and of the ESXi host serving its disks.
    async fn risk_facts(
        &mut self,
        ctx: &Context,
        import: &VirtualMachineImport,
        description: Option<&VmDescription>,
    ) -> Result<RiskFacts, ImportError> {
        let target = target_risk_facts(ctx, import).await?;
        let endpoint = self
            .vmware_source(ctx, import)
            .await?
            .spec
            .endpoint_address
            .clone();
        let targets = preflight::targets(
            &endpoint,
            description.and_then(|d| d.host_name.as_deref()),
            &ctx.settings.esxi_probe_ports,
        );
        Ok(RiskFacts {
            vm: description.map(preflight::vm_risk),
            probes: preflight::probe_all(targets, preflight::PROBE_TIMEOUT).await,
            ..target
        })
    }

    async fn gather_power(
        &mut self,
        ctx: &Context,
        import: &VirtualMachineImport,
        status: &VirtualMachineImportStatus,
    ) -> Result<(), ImportError> {
        if SourceKind::of(import) == SourceKind::Ova {
            // Upstream: an OVA's VM is always powered off.
            self.power = Some(PowerFact::Off);
            return Ok(());
        }
        if SourceKind::of(import) == SourceKind::Openstack {
            let Some(id) = self.os_describe(ctx, import).await?.map(|s| s.id.clone()) else {
                return Err(OpenstackError::ServerNotFound(format!(
                    "server '{}' not found",
                    import.spec.virtual_machine_name
                ))
                .into());
            };
            let session = self.os_session(ctx, import).await?;
            let (state, task) = session
                .client
                .server_status(&id)
                .await
                .map_err(|e| session.error("reading the server's status", &e))?;
            self.power = Some(if state == "SHUTOFF" && task.is_none() {
                PowerFact::Off
            } else {
                PowerFact::On
            });
            self.since_shutdown =
                api::condition::find(&status.import_conditions, &ConditionType::VmShutdownGuest)
                    .and_then(|c| crate::time::since(&c.last_update_time));
            return Ok(());
        }
        let Some(description) = self.describe(ctx, import).await?.cloned() else {
            return Err(ImportError::SourceVmNotFound {
                step: "reading the power state",
                vm: import.spec.virtual_machine_name.clone(),
            });
        };
        let (session, _) = self.session(ctx, import).await?;
        let (state, _) = session.power_state(&description.moref).await.map_err(|source| {
            ImportError::VsphereInventory {
                step: "reading the power state",
                source,
            }
        })?;
        self.power = Some(if state == PowerState::PoweredOff {
            PowerFact::Off
        } else {
            PowerFact::On
        });
        self.since_shutdown =
            api::condition::find(&status.import_conditions, &ConditionType::VmShutdownGuest)
                .and_then(|c| crate::time::since(&c.last_update_time));
        Ok(())
    }

    async fn gather_images(
        &mut self,
        ctx: &Context,
        import: &VirtualMachineImport,
        status: &VirtualMachineImportStatus,
    ) -> Result<(), ImportError> {
        let api = kinds::namespaced(
            &ctx.kube,
            &import.namespace().unwrap_or_default(),
            &kinds::image_resource(),
        );
        let mut facts = Vec::with_capacity(status.disk_import_status.len());
        let mut objects = Vec::with_capacity(status.disk_import_status.len());
        for disk in &status.disk_import_status {
            if disk.virtual_machine_image.is_empty() {
                facts.push(ImageFact::Absent);
                objects.push(None);
                continue;
            }
            let image = api
                .get_opt(&disk.virtual_machine_image)
                .await
                .map_err(ImportError::kube("reading a VirtualMachineImage"))?;
            facts.push(image.as_ref().map_or(ImageFact::Absent, image_fact));
            objects.push(image);
        }
        self.images = Some(facts);
        self.image_objects = objects;
        Ok(())
    }

    async fn gather_vm(
        &mut self,
        ctx: &Context,
        import: &VirtualMachineImport,
        status: &VirtualMachineImportStatus,
    ) -> Result<(), ImportError> {
        let vm = kinds::namespaced(
            &ctx.kube,
            &import.namespace().unwrap_or_default(),
            &kinds::virtual_machine_resource(),
        )
        .get_opt(&status.imported_virtual_machine_name)
        .await
        .map_err(ImportError::kube("reading the VirtualMachine"))?;
        self.vm = Some(match vm {
            None => VmFact::Absent,
            Some(vm)
                if vm.labels().get(api::names::LABEL_IMPORTED).map(String::as_str)
                    == Some(api::names::LABEL_TRUE) =>
            {
                VmFact::Ours {
                    ready: vm
                        .data
                        .pointer("/status/ready")
                        .and_then(serde_json::Value::as_bool)
                        == Some(true),
                }
            }
            Some(_) => VmFact::Foreign,
        });
        Ok(())
    }

    async fn gather_leftovers(
        &mut self,
        ctx: &Context,
        import: &VirtualMachineImport,
        status: &VirtualMachineImportStatus,
    ) -> Result<(), ImportError> {
        let dir = &ctx.settings.image_dir;
        let files = status
            .disk_import_status
            .iter()
            .any(|d| dir.join(&d.name).exists() || partial_path(dir, &d.name).exists());
        // Only a running import hands its images over (owner reference removed); a failed one
        // keeps them owned, so deleting the import collects them.
        let owned_images = if status.phase == api::ImportPhase::VirtualMachineRunning {
            self.gather_images(ctx, import, status).await?;
            let uid = import.uid().unwrap_or_default();
            self.image_objects
                .iter()
                .flatten()
                .any(|image| image.owner_references().iter().any(|o| o.uid == uid))
        } else {
            false
        };
        // Temporary OpenStack objects an export could not delete (or a crash left) count too.
        let source_objects = status
            .source_temporary_objects
            .as_ref()
            .is_some_and(|o| !o.is_empty());
        self.leftovers = Some(files || owned_images || source_objects);
        Ok(())
    }
}

/// The source object `name` in `namespace`, if it exists.
async fn read_source<K>(
    ctx: &Context,
    namespace: &str,
    name: &str,
    step: &'static str,
) -> Result<Option<K>, ImportError>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
{
    Api::namespaced(ctx.kube.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(ImportError::kube(step))
}

fn source_not_found(kind: &'static str, import: &VirtualMachineImport) -> ImportError {
    ImportError::SourceNotFound {
        kind,
        name: import.spec.source_cluster.name.clone().unwrap_or_default(),
    }
}

/// Risk facts every source has: the namespace's VMs (name collisions, duplicate MACs) and the image
/// directory's free space.
async fn target_risk_facts(ctx: &Context, import: &VirtualMachineImport) -> Result<RiskFacts, ImportError> {
    let namespace = import.namespace().unwrap_or_default();
    let namespace_vms = preflight::namespace_vms(&ctx.kube, &namespace)
        .await
        .map_err(ImportError::kube("listing the namespace's VirtualMachines"))?;
    Ok(RiskFacts {
        namespace_vms: Some(namespace_vms),
        target_name: plan::names::sanitize_vm_name(&import.spec.virtual_machine_name).name,
        scratch: preflight::scratch(&ctx.settings.image_dir, ctx.settings.image_dir_reserve),
        ..RiskFacts::default()
    })
}

/// An image's readiness from its `Imported` condition, as upstream reads it.
fn image_fact(image: &DynamicObject) -> ImageFact {
    let conditions = image
        .data
        .pointer("/status/conditions")
        .and_then(serde_json::Value::as_array)
        .cloned()
        .unwrap_or_default();
    let imported = conditions
        .iter()
        .find(|c| c.get("type").and_then(serde_json::Value::as_str) == Some("Imported"));
    match imported {
        Some(c) if c.get("status").and_then(serde_json::Value::as_str) == Some("True") => ImageFact::Ready,
        Some(c)
            if c.get("status").and_then(serde_json::Value::as_str) == Some("False")
                && c.get("reason").and_then(serde_json::Value::as_str) == Some("ImportFailed") =>
        {
            ImageFact::Failed {
                message: c
                    .get("message")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
            }
        }
        _ => ImageFact::Pending,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn image(status: serde_json::Value) -> DynamicObject {
        let mut object = DynamicObject::new("image-x", &kinds::image_resource());
        object.data = json!({ "status": status });
        object
    }

    #[test]
    fn image_readiness_comes_from_the_imported_condition() {
        assert_eq!(image_fact(&image(json!({}))), ImageFact::Pending);
        assert_eq!(
            image_fact(&image(
                json!({"conditions": [{"type": "Imported", "status": "True"}]})
            )),
            ImageFact::Ready
        );
        assert_eq!(
            image_fact(&image(
                json!({"conditions": [{"type": "Imported", "status": "False", "reason": "ImportFailed", "message": "404"}]})
            )),
            ImageFact::Failed {
                message: "404".into()
            }
        );
        assert_eq!(
            image_fact(&image(
                json!({"conditions": [{"type": "Imported", "status": "False", "reason": "Importing"}]})
            )),
            ImageFact::Pending
        );
    }
}
