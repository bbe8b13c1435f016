//! Executing a [`Decision`]: the one side effect it names (a vSphere call, a created object, a started
//! export, deleted files), then the status it implies, written with the resourceVersion it was
//! computed from (a concurrent write makes it retry instead of losing data), then an Event.

use std::{sync::Arc, time::Duration};

use api::{
    Condition, ConditionStatus, ConditionType, ImportPhase, VirtualMachineImport, VirtualMachineImportStatus,
};
use k8s_openapi::api::{core::v1::PersistentVolumeClaim, storage::v1::StorageClass};
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams},
    runtime::{controller::Action, reflector::ObjectRef},
};
use plan::{
    Decision,
    image::{self, Backend, ImageInput, Owner},
    machine::Failure,
};
use serde_json::json;

use super::{
    ImportError,
    gather::{Facts, SourceKind},
    remove_finalizer,
};
use crate::{
    context::Context,
    export::{ExportRequest, ExportSource, disk_entries, partial_path},
    image_server::new_token,
    kinds,
    time::now_rfc3339,
    vmware::chain,
};

/// How long to wait before looking again at an image whose import is in flight, when no watch
/// event arrives (Longhorn/CDI update the image as they go).
const IMAGE_POLL: Duration = Duration::from_secs(30);

fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: ConditionType,
    status: ConditionStatus,
    reason: &str,
    message: &str,
) {
    api::condition::upsert(
        conditions,
        Condition::new(type_, status, &now_rfc3339()).with_reason(reason, message),
    );
}

pub(super) async fn apply(
    ctx: &Arc<Context>,
    import: &VirtualMachineImport,
    mut status: VirtualMachineImportStatus,
    facts: &mut Facts,
    decision: Decision,
) -> Result<Action, ImportError> {
    let name = import.name_any();
    let uid = import.uid().unwrap_or_default();
    let reason = decision.reason();
    let mut note: Option<(bool, String)> = None;
    let mut export_recorded = false;
    let concerns_recorded = match &decision {
        Decision::Validated { concerns } => !concerns.is_empty(),
        Decision::Fail(failure) => !failure.concerns.is_empty(),
        _ => false,
    };
    let action = match decision {
        Decision::Observe(_) => return Err(ImportError::Undecided),
        Decision::Wait { after, .. } => {
            return Ok(after.map_or_else(Action::await_change, Action::requeue));
        }
        Decision::Done => return Ok(Action::await_change()),
        Decision::Validated { concerns } => {
            let warnings = concerns.len();
            status.concerns = concerns;
            status.phase = ImportPhase::Valid;
            note = Some((
                false,
                format!("preflight checks passed ({warnings} warnings or notes in status.concerns)"),
            ));
            Action::await_change()
        }
        Decision::Named(sanitized) => {
            if sanitized.changed {
                note = Some((
                    false,
                    format!(
                        "source VM name {:?} is not a DNS-1123 label; the VM will be named {:?}",
                        import.spec.virtual_machine_name, sanitized.name
                    ),
                ));
            }
            status.imported_virtual_machine_name = sanitized.name;
            status.phase = ImportPhase::SourceReady;
            Action::await_change()
        }
        Decision::RequestShutdown if SourceKind::of(import) == SourceKind::Openstack => {
            openstack_stop(ctx, import, facts).await?;
            set_condition(
                &mut status.import_conditions,
                ConditionType::VmShutdownGuest,
                ConditionStatus::True,
                "",
                "",
            );
            note = Some((
                false,
                "os-stop requested (Nova shuts the guest down, then forces it off after its shutdown_timeout)".into(),
            ));
            Action::requeue(plan::machine::POWER_POLL)
        }
        Decision::ForcePowerOff if SourceKind::of(import) == SourceKind::Openstack => {
            // Nova has no harder stop than os-stop; asking again is harmless (409 while stopping).
            openstack_stop(ctx, import, facts).await?;
            set_condition(
                &mut status.import_conditions,
                ConditionType::VmPoweringOff,
                ConditionStatus::True,
                "",
                "",
            );
            note = Some((false, "os-stop requested again; waiting for SHUTOFF".into()));
            Action::requeue(plan::machine::POWER_POLL)
        }
        Decision::RequestShutdown => {
            let moref = vm_moref(ctx, import, facts).await?;
            let (session, _) = facts.session(ctx, import).await?;
            session
                .request_guest_shutdown(&moref)
                .await
                .map_err(|e| ImportError::Vsphere {
                    step: "requesting a guest shutdown",
                    detail: chain(&e),
                })?;
            set_condition(
                &mut status.import_conditions,
                ConditionType::VmShutdownGuest,
                ConditionStatus::True,
                "",
                "",
            );
            note = Some((
                false,
                format!(
                    "guest shutdown requested; forced power-off after {} s",
                    import.spec.graceful_shutdown_timeout_seconds()
                ),
            ));
            Action::requeue(plan::machine::POWER_POLL)
        }
        Decision::ForcePowerOff => {
            let moref = vm_moref(ctx, import, facts).await?;
            let (session, _) = facts.session(ctx, import).await?;
            session
                .power_off(&moref)
                .await
                .map_err(|e| ImportError::Vsphere {
                    step: "powering the VM off",
                    detail: chain(&e),
                })?;
            set_condition(
                &mut status.import_conditions,
                ConditionType::VmPoweringOff,
                ConditionStatus::True,
                "",
                "",
            );
            note = Some((false, "source VM powered off (forced)".into()));
            Action::requeue(Duration::from_secs(1))
        }
        Decision::MarkPoweredOff => {
            set_condition(
                &mut status.import_conditions,
                ConditionType::VmPoweredOff,
                ConditionStatus::True,
                "",
                "",
            );
            Action::await_change()
        }
        Decision::StartExport { .. } => {
            return start_export(ctx, import, status, facts).await;
        }
        Decision::Exported => {
            set_condition(
                &mut status.import_conditions,
                ConditionType::VmExported,
                ConditionStatus::True,
                "",
                "",
            );
            status.phase = ImportPhase::DisksExported;
            let bytes: i64 = status.disk_import_status.iter().map(|d| d.disk_size).sum();
            note = Some((
                false,
                format!(
                    "{} disks exported ({bytes} bytes of virtual disk)",
                    status.disk_import_status.len()
                ),
            ));
            // Forgotten only once the outcome is in status (below): until then a retry still sees it.
            export_recorded = true;
            Action::await_change()
        }
        Decision::SubmitImages { disks } => {
            submit_images(ctx, import, &mut status, &disks).await?;
            Action::requeue(Duration::from_secs(1))
        }
        Decision::ImagesSubmitted => {
            status.phase = ImportPhase::DiskImagesSubmitted;
            Action::requeue(IMAGE_POLL)
        }
        Decision::ImagesFailed { disks } => {
            let images = facts.images.clone().unwrap_or_default();
            let mut messages = Vec::new();
            for index in disks {
                let message = match images.get(index) {
                    Some(plan::machine::ImageFact::Failed { message }) => message.clone(),
                    _ => "image missing".to_owned(),
                };
                if let Some(disk) = status.disk_import_status.get_mut(index) {
                    set_condition(
                        &mut disk.disk_conditions,
                        ConditionType::ImageFailed,
                        ConditionStatus::True,
                        "ImportFailed",
                        &message,
                    );
                    messages.push(format!("{}: {message}", disk.name));
                }
            }
            status.phase = ImportPhase::DiskImagesFailed;
            note = Some((true, format!("image import failed: {}", messages.join("; "))));
            Action::await_change()
        }
        Decision::ResubmitImages { disks } => {
            let api = kinds::namespaced(&ctx.kube, &namespace(import), &kinds::image_resource());
            for &index in &disks {
                let Some(disk) = status.disk_import_status.get_mut(index) else {
                    continue;
                };
                if !disk.virtual_machine_image.is_empty() {
                    delete_ignoring_missing(&api, &disk.virtual_machine_image).await?;
                }
                disk.virtual_machine_image.clear();
                api::condition::remove(&mut disk.disk_conditions, &ConditionType::ImageFailed);
                api::condition::remove(&mut disk.disk_conditions, &ConditionType::ImageSubmitted);
            }
            submit_images(ctx, import, &mut status, &disks).await?;
            status.phase = ImportPhase::DiskImagesSubmitted;
            note = Some((true, format!("resubmitted the images of {} disks", disks.len())));
            Action::requeue(IMAGE_POLL)
        }
        Decision::ImagesReady => {
            for disk in &mut status.disk_import_status {
                set_condition(
                    &mut disk.disk_conditions,
                    ConditionType::ImageReady,
                    ConditionStatus::True,
                    "",
                    "",
                );
            }
            status.phase = ImportPhase::DiskImagesReady;
            Action::await_change()
        }
        Decision::CreateVirtualMachine => {
            create_virtual_machine(ctx, import, &status, facts).await?;
            note = Some((
                false,
                format!("VirtualMachine {} created", status.imported_virtual_machine_name),
            ));
            Action::requeue(Duration::from_secs(1))
        }
        Decision::VirtualMachineCreated => {
            status.phase = ImportPhase::VirtualMachineCreated;
            Action::requeue(plan::machine::VM_READY_POLL)
        }
        Decision::Running => {
            status.phase = ImportPhase::VirtualMachineRunning;
            note = Some((
                false,
                format!(
                    "VirtualMachine {} is running",
                    status.imported_virtual_machine_name
                ),
            ));
            Action::requeue(Duration::from_secs(1))
        }
        Decision::TidyUp => {
            release_images(ctx, import, facts).await?;
            delete_files(ctx, &status).await?;
            clean_source_objects(ctx, import, &status, facts, false, false).await;
            return Ok(until_source_objects_gone(&status));
        }
        Decision::CleanUp => {
            let cancelled = ctx.exports.cancel(&uid);
            delete_files(ctx, &status).await?;
            clean_source_objects(ctx, import, &status, facts, cancelled, false).await;
            return Ok(until_source_objects_gone(&status));
        }
        Decision::Finalize => {
            let cancelled = ctx.exports.cancel(&uid);
            delete_files(ctx, &status).await?;
            clean_source_objects(ctx, import, &status, facts, cancelled, true).await;
            remove_finalizer(ctx, import).await?;
            ctx.metrics.set_phase(&uid, None);
            tracing::info!(import = %name, cancelled, "import deleted; files removed");
            return Ok(Action::await_change());
        }
        Decision::Fail(failure) => {
            ctx.exports.cancel(&uid);
            export_recorded = true;
            record_failure(&mut status, &failure);
            ctx.metrics.failed(failure.reason);
            note = Some((true, failure.message.clone()));
            Action::requeue(Duration::from_secs(1))
        }
    };
    write_status(ctx, import, &status).await?;
    if export_recorded {
        ctx.exports.forget(&uid);
    }
    if let Some((warning, text)) = note {
        ctx.event(import, warning, reason, text).await;
    }
    if concerns_recorded {
        // One Event per concern, named by its id, so `kubectl describe` shows each risk.
        for c in &status.concerns {
            let warning = c.severity != api::Severity::Info;
            let text = format!("{:?}: {} (remedy: {})", c.severity, c.message, c.remedy);
            ctx.event(import, warning, &c.id, text).await;
        }
    }
    Ok(action)
}

fn record_failure(status: &mut VirtualMachineImportStatus, failure: &Failure) {
    status.phase = failure.terminal.phase();
    set_condition(
        &mut status.import_conditions,
        ConditionType::ImportFailed,
        ConditionStatus::True,
        failure.reason,
        &failure.message,
    );
    if let Some(condition) = &failure.condition {
        set_condition(
            &mut status.import_conditions,
            condition.clone(),
            ConditionStatus::True,
            failure.reason,
            &failure.message,
        );
    }
    if !failure.concerns.is_empty() {
        status.concerns = failure.concerns.clone();
    }
}

fn namespace(import: &VirtualMachineImport) -> String {
    import.namespace().unwrap_or_default()
}

/// Writes `status` over the import's, guarded by the resourceVersion it was computed from.
async fn write_status(
    ctx: &Context,
    import: &VirtualMachineImport,
    status: &VirtualMachineImportStatus,
) -> Result<(), ImportError> {
    let mut updated = import.clone();
    let mut status = status.clone();
    status.observed_generation = import.meta().generation;
    updated.status = Some(status);
    let api: Api<VirtualMachineImport> = Api::namespaced(ctx.kube.clone(), &namespace(import));
    api.replace_status(&import.name_any(), &PostParams::default(), &updated)
        .await
        .map_err(ImportError::kube("writing the import's status"))?;
    Ok(())
}

async fn vm_moref(
    ctx: &Context,
    import: &VirtualMachineImport,
    facts: &mut Facts,
) -> Result<vsphere::proto::MoRef, ImportError> {
    facts
        .describe(ctx, import)
        .await?
        .map(|d| d.moref.clone())
        .ok_or_else(|| ImportError::Vsphere {
            step: "finding the VM",
            detail: format!("VM {} not found", import.spec.virtual_machine_name),
        })
}

/// Asks Nova to stop the import's server.
async fn openstack_stop(
    ctx: &Context,
    import: &VirtualMachineImport,
    facts: &mut Facts,
) -> Result<(), ImportError> {
    let Some(id) = facts.os_describe(ctx, import).await?.map(|s| s.id.clone()) else {
        return Err(crate::openstack::OpenstackError::ServerNotFound(format!(
            "server '{}' not found",
            import.spec.virtual_machine_name
        ))
        .into());
    };
    let session = facts.os_session(ctx, import).await?;
    session.client.request_stop(&id).await.map_err(|e| match &e {
        openstack::inspect::StopError::Call { source, .. } => session.error("stopping the server", source),
        _ => crate::openstack::OpenstackError::Api {
            step: "stopping the server",
            detail: chain(&e),
        },
    })?;
    Ok(())
}

/// How often the deletion of temporary source objects is tried again while some stay recorded: the
/// source may refuse it for a while (its password changed, the cloud is down), and an admin fixing
/// that changes nothing this import watches.
const SOURCE_CLEANUP_RETRY: Duration = Duration::from_secs(20);

/// After a cleanup: a successful deletion clears the record in status (a watch event); while
/// objects stay recorded, look again later.
fn until_source_objects_gone(status: &VirtualMachineImportStatus) -> Action {
    if status
        .source_temporary_objects
        .as_ref()
        .is_some_and(|o| !o.is_empty())
    {
        Action::requeue(SOURCE_CLEANUP_RETRY)
    } else {
        Action::await_change()
    }
}

/// Deletes, in the background, the temporary OpenStack objects an export recorded in status, when
/// no export of this process is there to do it (after a restart); a cancelled export's own guard
/// deletes what it created. With `sweep` (the import is being deleted), also when nothing is
/// recorded, since an export killed right after a create leaves an object nobody recorded.
async fn clean_source_objects(
    ctx: &Context,
    import: &VirtualMachineImport,
    status: &VirtualMachineImportStatus,
    facts: &mut Facts,
    cancelled: bool,
    sweep: bool,
) {
    let objects = status.source_temporary_objects.clone().unwrap_or_default();
    // A finished import's export swept its names disk by disk already.
    let interrupted =
        !status.disk_import_status.is_empty() && status.phase != api::ImportPhase::VirtualMachineRunning;
    if objects.is_empty() && !(sweep && interrupted) {
        return;
    }
    if cancelled {
        return;
    }
    if SourceKind::of(import) == SourceKind::Vmware {
        // Export leases a process that is gone left open (the record holds only those).
        if objects.leases.is_empty() {
            return;
        }
        match facts.session(ctx, import).await {
            Ok((client, _)) => {
                let api: Api<VirtualMachineImport> = Api::namespaced(ctx.kube.clone(), &namespace(import));
                let (client, name) = (client.clone(), import.name_any());
                tokio::spawn(async move {
                    crate::leases::abort_recorded(&client, &api, &name, &objects.leases).await;
                });
            }
            Err(error) => {
                tracing::warn!(import = %import.name_any(), error = %chain(&error), leases = ?objects.leases, "export leases cannot be aborted: no session with the source");
            }
        }
        return;
    }
    if SourceKind::of(import) != SourceKind::Openstack {
        return;
    }
    match facts.openstack_source(ctx, import).await {
        Ok(source) => crate::openstack::spawn_cleanup(
            ctx.kube.clone(),
            source.clone(),
            ObjectRef::from_obj(import),
            import.uid().unwrap_or_default(),
            objects,
            status.disk_import_status.len(),
        ),
        Err(error) => {
            tracing::warn!(import = %import.name_any(), error = %chain(&error), ?objects, "temporary OpenStack objects cannot be deleted: the source is gone");
        }
    }
}

async fn start_export(
    ctx: &Arc<Context>,
    import: &VirtualMachineImport,
    mut status: VirtualMachineImportStatus,
    facts: &mut Facts,
) -> Result<Action, ImportError> {
    // The export connects on its own; this reconcile only needs the source object.
    let source = match SourceKind::of(import) {
        SourceKind::Ova => ExportSource::Ova(facts.ova_source(ctx, import).await?.clone()),
        SourceKind::Openstack => ExportSource::Openstack {
            source: facts.openstack_source(ctx, import).await?.clone(),
            server: import.spec.virtual_machine_name.clone(),
            recorded: status.source_temporary_objects.clone(),
        },
        _ => ExportSource::Vmware {
            source: facts.vmware_source(ctx, import).await?.clone(),
            vm_name: import.spec.virtual_machine_name.clone(),
            folder: Some(import.spec.folder.clone()).filter(|f| !f.is_empty()),
            recorded_leases: status
                .source_temporary_objects
                .as_ref()
                .map(|o| o.leases.clone())
                .unwrap_or_default(),
        },
    };
    if status.disk_import_status.is_empty() {
        // First start: record every disk (with its unguessable file name) before any byte moves,
        // so a restart finds the same names and skips what is done.
        let Some(vm) = facts.source_vm(ctx, import).await? else {
            return Err(ImportError::Vsphere {
                step: "starting the export",
                detail: format!("VM {} not found", import.spec.virtual_machine_name),
            });
        };
        status.disk_import_status = disk_entries(
            &import.name_any(),
            &namespace(import),
            &vm,
            &import.spec,
            new_token,
        );
        write_status(ctx, import, &status).await?;
        // The status write comes back as an event; the export starts on that reconcile.
        return Ok(Action::await_change());
    }
    // A disk recorded as exported whose file is gone (e.g. an emptyDir lost with the pod) is exported again.
    let dir = &ctx.settings.image_dir;
    let mut lost = false;
    for disk in &mut status.disk_import_status {
        if disk.is_exported() && !dir.join(&disk.name).exists() {
            tracing::warn!(disk = %disk.name, "exported image file is missing; exporting it again");
            disk.sha256 = None;
            lost = true;
        }
    }
    if lost {
        write_status(ctx, import, &status).await?;
        return Ok(Action::await_change());
    }
    let skipped = status
        .disk_import_status
        .iter()
        .filter(|d| d.is_exported())
        .count();
    ctx.exports.start(
        ctx,
        ExportRequest {
            import: ObjectRef::from_obj(import),
            uid: import.uid().unwrap_or_default(),
            source,
            disks: status.disk_import_status.clone(),
        },
    );
    let note = if skipped == 0 {
        format!("exporting {} disks", status.disk_import_status.len())
    } else {
        format!(
            "exporting {} disks ({skipped} already exported before a restart)",
            status.disk_import_status.len() - skipped
        )
    };
    ctx.event(import, false, "ExportStarted", note).await;
    Ok(Action::await_change())
}

async fn backend(ctx: &Context, storage_class: &str) -> Result<Backend, ImportError> {
    if storage_class.is_empty() {
        return Ok(Backend::BackingImage);
    }
    let class = Api::<StorageClass>::all(ctx.kube.clone())
        .get_opt(storage_class)
        .await
        .map_err(ImportError::kube("reading the StorageClass"))?;
    Ok(class.map_or(Backend::Cdi, |c| {
        image::backend_for_storage_class(&c.provisioner, &c.parameters.unwrap_or_default())
    }))
}

async fn submit_images(
    ctx: &Context,
    import: &VirtualMachineImport,
    status: &mut VirtualMachineImportStatus,
    disks: &[usize],
) -> Result<(), ImportError> {
    let ns = namespace(import);
    let api = kinds::namespaced(&ctx.kube, &ns, &kinds::image_resource());
    let backend = backend(ctx, &import.spec.storage_class).await?;
    let import_name = import.name_any();
    let uid = import.uid().unwrap_or_default();
    for &index in disks {
        let Some(disk) = status.disk_import_status.get_mut(index) else {
            continue;
        };
        let display_name = image::image_display_name(&import_name, &disk.name);
        let selector = format!(
            "{}={}",
            api::names::LABEL_IMAGE_DISPLAY_NAME,
            plan::names::label_value(&display_name)
        );
        let existing = api
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(ImportError::kube("listing VirtualMachineImages"))?;
        let image_name = if let [only] = existing.items.as_slice() {
            only.name_any()
        } else {
            let url = image::image_url(ctx.settings.service_address.as_deref(), &disk.name);
            let object = image::virtual_machine_image(&ImageInput {
                owner: Owner {
                    name: &import_name,
                    namespace: &ns,
                    uid: &uid,
                },
                disk_name: &disk.name,
                storage_class: &import.spec.storage_class,
                backend,
                url: &url,
            });
            let object: DynamicObject = serde_json::from_value(object).map_err(|e| ImportError::Vsphere {
                step: "building a VirtualMachineImage",
                detail: e.to_string(),
            })?;
            let created = api
                .create(&PostParams::default(), &object)
                .await
                .map_err(ImportError::kube("creating a VirtualMachineImage"))?;
            disk.image_submissions = Some(disk.image_submissions.unwrap_or(0) + 1);
            created.name_any()
        };
        disk.virtual_machine_image = image_name;
        set_condition(
            &mut disk.disk_conditions,
            ConditionType::ImageSubmitted,
            ConditionStatus::True,
            "",
            "",
        );
    }
    Ok(())
}

async fn delete_ignoring_missing(api: &Api<DynamicObject>, name: &str) -> Result<(), ImportError> {
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(error) => Err(ImportError::kube("deleting a VirtualMachineImage")(error)),
    }
}

async fn create_virtual_machine(
    ctx: &Context,
    import: &VirtualMachineImport,
    status: &VirtualMachineImportStatus,
    facts: &mut Facts,
) -> Result<(), ImportError> {
    let ns = namespace(import);
    let images = kinds::namespaced(&ctx.kube, &ns, &kinds::image_resource());
    let claims_api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.kube.clone(), &ns);
    let mut claims = Vec::with_capacity(status.disk_import_status.len());
    for disk in &status.disk_import_status {
        let image = images
            .get(&disk.virtual_machine_image)
            .await
            .map_err(ImportError::kube("reading a VirtualMachineImage"))?;
        let image_name = image.name_any();
        let backend = image
            .data
            .pointer("/spec/backend")
            .and_then(serde_json::Value::as_str);
        // Upstream: only the backing-image backend needs a PVC of ours; CDI made the image's own.
        if backend.is_none_or(|b| b == Backend::BackingImage.as_str())
            && claims_api
                .get_opt(&image_name)
                .await
                .map_err(ImportError::kube("reading a PVC"))?
                .is_none()
        {
            let size = image
                .data
                .pointer("/status/size")
                .and_then(serde_json::Value::as_u64)
                .filter(|size| *size > 0)
                .unwrap_or(u64::try_from(disk.disk_size).unwrap_or_default());
            let storage_class = image
                .data
                .pointer("/status/storageClassName")
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default();
            let claim: PersistentVolumeClaim =
                serde_json::from_value(image::backing_image_claim(&ns, &image_name, size, storage_class))
                    .map_err(|e| ImportError::Build {
                        step: "building a PVC",
                        detail: e.to_string(),
                    })?;
            match claims_api.create(&PostParams::default(), &claim).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(error) => return Err(ImportError::kube("creating a PVC")(error)),
            }
        }
        claims.push(image_name);
    }
    let Some(source) = facts.source_vm(ctx, import).await? else {
        return Err(ImportError::Vsphere {
            step: "building the VirtualMachine",
            detail: format!("VM {} not found at the source", import.spec.virtual_machine_name),
        });
    };
    let vm = plan::build_virtual_machine(&plan::vm::VmInput {
        name: &status.imported_virtual_machine_name,
        namespace: &ns,
        spec: &import.spec,
        source: &source,
        claims: &claims,
    })
    .map_err(|e| ImportError::Build {
        step: "building the VirtualMachine",
        detail: e.to_string(),
    })?;
    let vm: DynamicObject = serde_json::from_value(vm).map_err(|e| ImportError::Build {
        step: "building the VirtualMachine",
        detail: e.to_string(),
    })?;
    match kinds::namespaced(&ctx.kube, &ns, &kinds::virtual_machine_resource())
        .create(&PostParams::default(), &vm)
        .await
    {
        Ok(_) => Ok(()),
        // Created by an earlier attempt whose status write was lost: the next gather sees it.
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(error) => Err(ImportError::kube("creating the VirtualMachine")(error)),
    }
}

/// Strips this import's owner reference from its images, as upstream does once the VM runs (so
/// deleting the import does not garbage-collect the VM's disks).
async fn release_images(
    ctx: &Context,
    import: &VirtualMachineImport,
    facts: &Facts,
) -> Result<(), ImportError> {
    let uid = import.uid().unwrap_or_default();
    let api = kinds::namespaced(&ctx.kube, &namespace(import), &kinds::image_resource());
    for image in facts.image_objects.iter().flatten() {
        let owners: Vec<_> = image
            .owner_references()
            .iter()
            .filter(|o| o.uid != uid)
            .cloned()
            .collect();
        if owners.len() == image.owner_references().len() {
            continue;
        }
        let patch = json!({
            "metadata": {
                "ownerReferences": owners,
                "resourceVersion": image.resource_version(),
            }
        });
        api.patch(&image.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(ImportError::kube("releasing a VirtualMachineImage"))?;
    }
    Ok(())
}

/// Deletes the import's image files (finished and partial).
async fn delete_files(ctx: &Context, status: &VirtualMachineImportStatus) -> Result<(), ImportError> {
    let dir = &ctx.settings.image_dir;
    for disk in &status.disk_import_status {
        if !crate::image_server::is_servable_name(&disk.name) {
            // Never join an unvalidated name onto the image directory.
            continue;
        }
        for path in [dir.join(&disk.name), partial_path(dir, &disk.name)] {
            match tokio::fs::remove_file(&path).await {
                Ok(()) => tracing::info!(path = %path.display(), "image file removed"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(ImportError::Io {
                        step: "removing",
                        path,
                        source,
                    });
                }
            }
        }
    }
    Ok(())
}
