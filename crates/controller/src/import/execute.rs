//! Executing a [`Decision`]: the one side effect it names (a call to the source, a created object,
//! a started export, deleted files), described as a [`transition::Outcome`]; then what
//! `plan::transition` derives from it: the status, written with the resourceVersion it was
//! computed from (a concurrent write makes it retry instead of losing data), an Event, a requeue.

use std::sync::Arc;

use api::{VirtualMachineImport, VirtualMachineImportStatus};
use error_text::chain;
use k8s_openapi::api::{core::v1::PersistentVolumeClaim, storage::v1::StorageClass};
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams},
    runtime::{controller::Action, reflector::ObjectRef},
};
use plan::{
    Decision,
    image::{self, Backend, ImageInput, Owner},
    transition::{self, Outcome, Requeue, SubmittedImage},
};
use serde_json::json;

use super::{error::ImportError, finalizer::remove_finalizer, gather::Facts};
use crate::{
    context::Context,
    disks::{disk_entries, partial_path},
    export::ExportRequest,
    image_server::new_token,
    kinds,
    source::recorded_objects,
    time::now_rfc3339,
};

/// Performs `decision`, then writes the status, Event and requeue that `plan::transition` derives
/// from what happened.
pub(super) async fn apply(
    ctx: &Arc<Context>,
    import: &VirtualMachineImport,
    status: VirtualMachineImportStatus,
    facts: &mut Facts,
    decision: Decision,
) -> Result<Action, ImportError> {
    let outcome = perform(ctx, import, &status, facts, &decision).await?;
    let images = facts.images.as_deref().unwrap_or_default();
    let transition = transition::after(&decision, outcome, &import.spec, &status, images, &now_rfc3339());
    if let Decision::Fail(failure) = &decision {
        ctx.metrics.failed(failure.reason);
    }
    if let Some(written) = &transition.status {
        write_status(ctx, import, written).await?;
    }
    if transition.forget_export {
        // Only now that its outcome is in status: until then a retry still sees it.
        ctx.exports.forget(&import.uid().unwrap_or_default());
    }
    if let Some(note) = transition.note {
        ctx.event(import, note.warning, decision.reason(), note.text)
            .await;
    }
    if transition.concern_events {
        // One Event per concern, named by its id, so `kubectl describe` shows each risk.
        for c in transition.status.iter().flat_map(|s| &s.concerns) {
            let warning = c.severity != api::Severity::Info;
            let text = format!("{:?}: {} (remedy: {})", c.severity, c.message, c.remedy);
            ctx.event(import, warning, &c.id, text).await;
        }
    }
    Ok(match transition.requeue {
        Requeue::OnChange => Action::await_change(),
        Requeue::After(after) => Action::requeue(after),
    })
}

/// The side effect `decision` names, and what it came to.
async fn perform(
    ctx: &Arc<Context>,
    import: &VirtualMachineImport,
    status: &VirtualMachineImportStatus,
    facts: &mut Facts,
    decision: &Decision,
) -> Result<Outcome, ImportError> {
    let uid = import.uid().unwrap_or_default();
    Ok(match decision {
        Decision::Observe(_) => return Err(ImportError::Undecided),
        Decision::RequestShutdown => Outcome::Stopped(facts.source(ctx, import).await?.stop(false).await?),
        Decision::ForcePowerOff => Outcome::Stopped(facts.source(ctx, import).await?.stop(true).await?),
        Decision::RecordDisks => Outcome::DisksRecorded(source_disks(ctx, import, facts).await?),
        Decision::StartExport { .. } => {
            start_export(ctx, import, status, facts).await?;
            Outcome::ExportStarted
        }
        Decision::SubmitImages { disks } => {
            Outcome::ImagesSubmitted(submit_images(ctx, import, status, disks).await?)
        }
        Decision::ResubmitImages { disks } => {
            let api = kinds::namespaced(&ctx.kube, &namespace(import), &kinds::image_resource());
            for disk in disks.iter().filter_map(|&i| status.disk_import_status.get(i)) {
                if !disk.virtual_machine_image.is_empty() {
                    delete_ignoring_missing(&api, &disk.virtual_machine_image).await?;
                }
            }
            Outcome::ImagesSubmitted(submit_images(ctx, import, status, disks).await?)
        }
        Decision::CreateVirtualMachine => {
            create_virtual_machine(ctx, import, status, facts).await?;
            Outcome::Done
        }
        Decision::TidyUp => {
            release_images(ctx, import, facts).await?;
            delete_files(ctx, status).await?;
            clean_source_objects(ctx, import, status, facts, false, false).await;
            Outcome::Tidied {
                cleanup_pending: recorded_objects(status).is_some(),
            }
        }
        Decision::CleanUp => {
            let cancelled = ctx.exports.cancel(&uid);
            delete_files(ctx, status).await?;
            clean_source_objects(ctx, import, status, facts, cancelled, false).await;
            Outcome::Tidied {
                cleanup_pending: recorded_objects(status).is_some(),
            }
        }
        Decision::Finalize => {
            let cancelled = ctx.exports.cancel(&uid);
            delete_files(ctx, status).await?;
            clean_source_objects(ctx, import, status, facts, cancelled, true).await;
            remove_finalizer(ctx, import).await?;
            ctx.metrics.set_phase(&uid, None);
            tracing::info!(import = %import.name_any(), cancelled, "import deleted; files removed");
            Outcome::Done
        }
        Decision::Fail(_) => {
            ctx.exports.cancel(&uid);
            Outcome::Done
        }
        Decision::Wait { .. }
        | Decision::Done
        | Decision::Validated { .. }
        | Decision::Named(_)
        | Decision::MarkPoweredOff
        | Decision::ForgetLostImages { .. }
        | Decision::Exported
        | Decision::ImagesSubmitted
        | Decision::ImagesFailed { .. }
        | Decision::ImagesReady
        | Decision::VirtualMachineCreated
        | Decision::Running => Outcome::Done,
    })
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

/// Deletes, in the background, the temporary source objects an export recorded in status, when
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
    // A finished import's export swept its temporary objects disk by disk already.
    let interrupted =
        !status.disk_import_status.is_empty() && status.phase != api::ImportPhase::VirtualMachineRunning;
    if cancelled || !(recorded_objects(status).is_some() || sweep && interrupted) {
        return;
    }
    match facts.source(ctx, import).await {
        Ok(source) => source.clean_up(import, status).await,
        Err(error) => {
            tracing::warn!(import = %import.name_any(), error = %chain(&error), objects = ?status.source_temporary_objects, "temporary source objects cannot be deleted: the source is unusable");
        }
    }
}

/// Every disk of the source VM as a `diskImportStatus` entry, each with an unguessable file name.
async fn source_disks(
    ctx: &Context,
    import: &VirtualMachineImport,
    facts: &mut Facts,
) -> Result<Vec<api::DiskInfo>, ImportError> {
    let vm = facts.source_vm(ctx, import, "recording the disks").await?;
    Ok(disk_entries(
        &import.name_any(),
        &namespace(import),
        &vm,
        &import.spec,
        new_token,
    ))
}

/// Starts the background export of the disks in `status` not exported yet.
async fn start_export(
    ctx: &Arc<Context>,
    import: &VirtualMachineImport,
    status: &VirtualMachineImportStatus,
    facts: &mut Facts,
) -> Result<(), ImportError> {
    // The export connects on its own; this reconcile only needs the source object.
    let opened = facts.source(ctx, import).await?;
    let source_cap = opened.max_bytes_per_second();
    let source = opened.export(import, status);
    let cluster = &import.spec.source_cluster;
    let source_key = format!(
        "{}/{}/{}",
        cluster.kind.as_deref().unwrap_or_default(),
        cluster.namespace.as_deref().unwrap_or_default(),
        cluster.name.as_deref().unwrap_or_default()
    );
    ctx.exports.start(ExportRequest {
        import: ObjectRef::from_obj(import),
        uid: import.uid().unwrap_or_default(),
        export: source,
        source: (source_key, source_cap),
        disks: status.disk_import_status.clone(),
        import_bytes_per_second: import.spec.max_bytes_per_second,
    });
    Ok(())
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

/// Creates the `VirtualMachineImage` of each of `disks`, or finds the one an earlier attempt made.
async fn submit_images(
    ctx: &Context,
    import: &VirtualMachineImport,
    status: &VirtualMachineImportStatus,
    disks: &[usize],
) -> Result<Vec<SubmittedImage>, ImportError> {
    let ns = namespace(import);
    let api = kinds::namespaced(&ctx.kube, &ns, &kinds::image_resource());
    let backend = backend(ctx, &import.spec.storage_class).await?;
    let import_name = import.name_any();
    let uid = import.uid().unwrap_or_default();
    let mut submitted = Vec::with_capacity(disks.len());
    for &index in disks {
        let Some(disk) = status.disk_import_status.get(index) else {
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
        let (image, created) = if let [only] = existing.items.as_slice() {
            (only.name_any(), false)
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
                checksum: disk.checksum.as_deref().unwrap_or_default(),
            });
            let object: DynamicObject = serde_json::from_value(object).map_err(|e| ImportError::Build {
                step: "building a VirtualMachineImage",
                source: e.into(),
            })?;
            let created = api
                .create(&PostParams::default(), &object)
                .await
                .map_err(ImportError::kube("creating a VirtualMachineImage"))?;
            (created.name_any(), true)
        };
        submitted.push(SubmittedImage {
            disk: index,
            image,
            created,
        });
    }
    Ok(submitted)
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
                        source: e.into(),
                    })?;
            match claims_api.create(&PostParams::default(), &claim).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(error) => return Err(ImportError::kube("creating a PVC")(error)),
            }
        }
        claims.push(image_name);
    }
    let source = facts
        .source_vm(ctx, import, "building the VirtualMachine")
        .await?;
    let vm = plan::build_virtual_machine(&plan::vm::VmInput {
        name: &status.imported_virtual_machine_name,
        namespace: &ns,
        spec: &import.spec,
        source: &source,
        claims: &claims,
    })
    .map_err(|e| ImportError::Build {
        step: "building the VirtualMachine",
        source: e.into(),
    })?;
    let vm: DynamicObject = serde_json::from_value(vm).map_err(|e| ImportError::Build {
        step: "building the VirtualMachine",
        source: e.into(),
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
