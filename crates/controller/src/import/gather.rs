//! Fact gathering: each [`plan::machine::Fact`] the state machine asks for, read from the cluster,
//! the source (through the one [`Source`] opened per reconcile, whose session and VM description
//! are read at most once) or this process's exports.

use std::time::Duration;

use api::{ConditionType, VirtualMachineImport, VirtualMachineImportSpec, VirtualMachineImportStatus};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::{Api, ResourceExt, api::DynamicObject};
use plan::{
    SourceVm,
    machine::{ExportFact, Fact, ImageFact, Observed, PowerFact, SourceFact, VmFact},
    preflight::PreflightFacts,
    risks::RiskFacts,
};

use super::error::ImportError;
use crate::{
    context::Context,
    disks::partial_path,
    kinds, preflight,
    source::{self, Source, SourceError},
};

/// Everything gathered during one reconcile.
#[derive(Default)]
pub(super) struct Facts {
    pub(super) preflight: Option<PreflightFacts>,
    pub(super) power: Option<PowerFact>,
    pub(super) since_shutdown: Option<Duration>,
    pub(super) export: Option<ExportFact>,
    pub(super) images: Option<Vec<ImageFact>>,
    pub(super) image_objects: Vec<Option<DynamicObject>>,
    pub(super) vm: Option<VmFact>,
    pub(super) leftovers: Option<bool>,
    pub(super) exported_files: Option<Vec<bool>>,
    /// The VM's own name at the source, when the import names it otherwise.
    own_name: Option<String>,
    /// The source object's readiness and the import's view of it (opened with the `Source` fact,
    /// or on first use).
    opened: Option<source::Opened>,
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
        observed.source = self.opened.as_ref().map(|o| o.readiness);
        observed.preflight = self.preflight.as_ref();
        observed.power = self.power;
        observed.since_shutdown_request = self.since_shutdown;
        observed.export = self.export.clone();
        observed.images = self.images.as_deref();
        observed.vm = self.vm;
        observed.leftovers = self.leftovers;
        observed.exported_files = self.exported_files.as_deref();
        observed.source_vm_name = self.own_name.as_deref();
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
                let ready = self.open(ctx, import).await?.readiness == SourceFact::Ready;
                if ready && status.phase == api::ImportPhase::Valid {
                    self.own_name = self.source(ctx, import).await?.own_name().await?;
                }
                Ok(())
            }
            Fact::Preflight => self.gather_preflight(ctx, import).await,
            Fact::Power => {
                self.power = Some(self.source(ctx, import).await?.power().await?);
                self.since_shutdown =
                    api::condition::find(&status.import_conditions, &ConditionType::VmShutdownGuest)
                        .and_then(|c| crate::time::since(&c.last_update_time));
                Ok(())
            }
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

    /// Reads the source object the import names and opens the import's view of it.
    async fn open(
        &mut self,
        ctx: &Context,
        import: &VirtualMachineImport,
    ) -> Result<&mut source::Opened, ImportError> {
        let opened = source::open(&ctx.kube, &ctx.settings, import).await?;
        Ok(self.opened.insert(opened))
    }

    /// The import's source (opened on first use); an error when its source object is gone.
    pub(super) async fn source(
        &mut self,
        ctx: &Context,
        import: &VirtualMachineImport,
    ) -> Result<&mut dyn Source, ImportError> {
        if self.opened.is_none() {
            self.open(ctx, import).await?;
        }
        match self.opened.as_mut().and_then(|o| o.source.as_deref_mut()) {
            Some(source) => Ok(source),
            None => Err(source::not_found(import).into()),
        }
    }

    /// The source's VM in `plan`'s terms, which must exist for `step`.
    pub(super) async fn source_vm(
        &mut self,
        ctx: &Context,
        import: &VirtualMachineImport,
        step: &'static str,
    ) -> Result<SourceVm, ImportError> {
        self.source(ctx, import).await?.describe().await?.ok_or_else(|| {
            SourceError::VmNotFound {
                step,
                vm: import.spec.virtual_machine_name.clone(),
            }
            .into()
        })
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
        let target = target_risk_facts(ctx, import).await?;
        let skip_source = spec.skip_preflight_checks == Some(true);
        let checks = self
            .source(ctx, import)
            .await?
            .checks(target, skip_source)
            .await?;
        self.preflight = Some(PreflightFacts {
            storage_class_exists,
            missing_nads,
            source_networks: checks.networks,
            vm: checks.vm,
            source_error: checks.source_error,
            power_off_supported: checks.power_off_supported,
            powered_off: checks.powered_off,
            tools_running: checks.tools_running,
            risks: checks.risks,
        });
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
        // Temporary source objects an export could not delete (or a crash left) count too.
        let source_objects = source::recorded_objects(status).is_some();
        self.leftovers = Some(files || owned_images || source_objects);
        Ok(())
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
