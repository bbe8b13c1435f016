//! What a [`Decision`] does to the import's status: the pure half of executing it.
//!
//! The controller performs the decision's effect (a call to the source, created objects), says
//! what happened as an [`Outcome`], and hands both to [`after`]. The [`Transition`] it gets back
//! is everything left to do: the status to write (phase, conditions, disks), the Event, and when
//! to look again. Every phase and condition the controller writes is set here, and only here.

use std::time::Duration;

use api::{
    Condition, ConditionStatus, ConditionType, DiskInfo, ImportPhase, VirtualMachineImportSpec,
    VirtualMachineImportStatus,
};

use crate::machine::{Decision, Failure, ImageFact, POWER_POLL, VM_READY_POLL};

/// How long to wait before looking again at an image whose import is in flight, when no watch
/// event arrives (Longhorn/CDI update the image as they go).
pub const IMAGE_POLL: Duration = Duration::from_secs(30);

/// Look again soon after a step whose result arrives without an event the controller watches.
pub const STEP_POLL: Duration = Duration::from_secs(1);

/// How often the deletion of temporary source objects is tried again while some stay recorded:
/// the source may refuse it for a while (its password changed, the cloud is down), and an admin
/// fixing that changes nothing the import watches.
pub const SOURCE_CLEANUP_RETRY: Duration = Duration::from_secs(20);

/// How the source was asked to stop the VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopRequest {
    /// The guest was asked to shut down; it is forced off after the import's timeout.
    GuestShutdown,
    /// The VM was powered off; done when the call returned.
    PoweredOff,
    /// The cloud was asked to stop the server; it shuts the guest down and forces it off itself.
    /// `again` when it had been asked before (it has no harder stop).
    CloudStop {
        /// Asked before.
        again: bool,
    },
}

/// One disk whose `VirtualMachineImage` was submitted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubmittedImage {
    /// Index into `status.diskImportStatus`.
    pub disk: usize,
    /// The image's name.
    pub image: String,
    /// Created now (counts as a submission), not found from an earlier attempt.
    pub created: bool,
}

/// What the controller did for a decision, as far as status records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The decision had no effect to report.
    Done,
    /// [`Decision::RequestShutdown`] or [`Decision::ForcePowerOff`].
    Stopped(StopRequest),
    /// [`Decision::RecordDisks`]: one entry per source disk, with its file name.
    DisksRecorded(Vec<DiskInfo>),
    /// [`Decision::StartExport`]: the export runs (without the disks the decision skips).
    ExportStarted,
    /// [`Decision::SubmitImages`] and [`Decision::ResubmitImages`].
    ImagesSubmitted(Vec<SubmittedImage>),
    /// [`Decision::TidyUp`], [`Decision::CleanUp`]: files deleted; `cleanup_pending` while
    /// temporary source objects stay recorded (their deletion runs in the background).
    Tidied {
        /// Objects at the source are still recorded.
        cleanup_pending: bool,
    },
}

/// When the import is looked at again without a watch event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requeue {
    /// Only on a change of the import or of what it watches.
    OnChange,
    /// After this long.
    After(Duration),
}

/// An Event for the import.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    /// `Warning` rather than `Normal`.
    pub warning: bool,
    /// For humans.
    pub text: String,
}

/// Everything left to do after a decision's effect.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    /// The status to write, `None` when it does not change.
    pub status: Option<VirtualMachineImportStatus>,
    /// When to look again.
    pub requeue: Requeue,
    /// The Event (its reason is the decision's).
    pub note: Option<Note>,
    /// Also one Event per concern in the written status.
    pub concern_events: bool,
    /// The export's outcome is in status now: forget it.
    pub forget_export: bool,
}

impl Transition {
    fn unchanged(requeue: Requeue) -> Self {
        Self {
            status: None,
            requeue,
            note: None,
            concern_events: false,
            forget_export: false,
        }
    }
}

fn set(conditions: &mut Vec<Condition>, type_: ConditionType, now: &str, reason: &str, message: &str) {
    api::condition::upsert(
        conditions,
        Condition::new(type_, ConditionStatus::True, now).with_reason(reason, message),
    );
}

fn note(warning: bool, text: impl Into<String>) -> Option<Note> {
    Some(Note {
        warning,
        text: text.into(),
    })
}

/// The transition of `decision`, whose effect ended in `outcome`, from the import's `spec` and
/// `status` at time `now` (RFC 3339, for condition timestamps). `images` are the images gathered
/// for the decision, when it needed them (their failure messages go into disk conditions).
///
/// A decision whose effect has an outcome but got another one (a shell defect) changes nothing
/// and is looked at again shortly.
pub fn after(
    decision: &Decision,
    outcome: Outcome,
    spec: &VirtualMachineImportSpec,
    status: &VirtualMachineImportStatus,
    images: &[ImageFact],
    now: &str,
) -> Transition {
    let mut next = status.clone();
    let (requeue, note) = match decision {
        Decision::Observe(_) | Decision::Done | Decision::Finalize => {
            return Transition::unchanged(Requeue::OnChange);
        }
        Decision::Wait { after, .. } => {
            return Transition::unchanged(after.map_or(Requeue::OnChange, Requeue::After));
        }
        Decision::Validated { concerns } => {
            next.concerns = concerns.clone();
            next.phase = ImportPhase::Valid;
            let text = format!(
                "preflight checks passed ({} warnings or notes in status.concerns)",
                concerns.len()
            );
            return Transition {
                status: Some(next),
                requeue: Requeue::OnChange,
                note: note(false, text),
                concern_events: !concerns.is_empty(),
                forget_export: false,
            };
        }
        Decision::Named(sanitized) => {
            next.imported_virtual_machine_name = sanitized.name.clone();
            next.phase = ImportPhase::SourceReady;
            let text = sanitized.changed.then(|| {
                format!(
                    "source VM name {:?} is not a DNS-1123 label; the VM will be named {:?}",
                    spec.virtual_machine_name, sanitized.name
                )
            });
            (Requeue::OnChange, text.and_then(|t| note(false, t)))
        }
        Decision::RequestShutdown | Decision::ForcePowerOff => {
            let Outcome::Stopped(request) = outcome else {
                return Transition::unchanged(Requeue::After(STEP_POLL));
            };
            let (condition, requeue, text) = match request {
                StopRequest::GuestShutdown => (
                    ConditionType::VmShutdownGuest,
                    POWER_POLL,
                    format!(
                        "guest shutdown requested; forced power-off after {} s",
                        spec.graceful_shutdown_timeout_seconds()
                    ),
                ),
                StopRequest::CloudStop { again: false } => (
                    ConditionType::VmShutdownGuest,
                    POWER_POLL,
                    "os-stop requested (Nova shuts the guest down, then forces it off after its shutdown_timeout)"
                        .to_owned(),
                ),
                StopRequest::CloudStop { again: true } => (
                    ConditionType::VmPoweringOff,
                    POWER_POLL,
                    "os-stop requested again; waiting for SHUTOFF".to_owned(),
                ),
                StopRequest::PoweredOff => (
                    ConditionType::VmPoweringOff,
                    STEP_POLL,
                    "source VM powered off (forced)".to_owned(),
                ),
            };
            set(&mut next.import_conditions, condition, now, "", "");
            (Requeue::After(requeue), note(false, text))
        }
        Decision::MarkPoweredOff => {
            set(
                &mut next.import_conditions,
                ConditionType::VmPoweredOff,
                now,
                "",
                "",
            );
            (Requeue::OnChange, None)
        }
        Decision::RecordDisks => {
            let Outcome::DisksRecorded(disks) = outcome else {
                return Transition::unchanged(Requeue::After(STEP_POLL));
            };
            // The write comes back as an event; the export starts on that reconcile.
            next.disk_import_status = disks;
            (Requeue::OnChange, None)
        }
        Decision::ForgetLostImages { disks } => {
            for_disks(&mut next.disk_import_status, disks, |disk| disk.checksum = None);
            let text = format!(
                "the exported files of {} disks are missing (lost with the pod?); exporting them again",
                disks.len()
            );
            (Requeue::OnChange, note(true, text))
        }
        Decision::StartExport { skip } => {
            let Outcome::ExportStarted = outcome else {
                return Transition::unchanged(Requeue::After(STEP_POLL));
            };
            let skipped = skip.len();
            let total = status.disk_import_status.len();
            let text = if skipped == 0 {
                format!("exporting {total} disks")
            } else {
                format!(
                    "exporting {} disks ({skipped} already exported before a restart)",
                    total.saturating_sub(skipped)
                )
            };
            return Transition {
                note: note(false, text),
                ..Transition::unchanged(Requeue::OnChange)
            };
        }
        Decision::Exported => {
            set(
                &mut next.import_conditions,
                ConditionType::VmExported,
                now,
                "",
                "",
            );
            next.phase = ImportPhase::DisksExported;
            let bytes: i64 = next.disk_import_status.iter().map(|d| d.disk_size).sum();
            let text = format!(
                "{} disks exported ({bytes} bytes of virtual disk)",
                next.disk_import_status.len()
            );
            return Transition {
                status: Some(next),
                requeue: Requeue::OnChange,
                note: note(false, text),
                concern_events: false,
                forget_export: true,
            };
        }
        Decision::SubmitImages { .. } => {
            record_submitted(&mut next.disk_import_status, outcome, now);
            (Requeue::After(STEP_POLL), None)
        }
        Decision::ResubmitImages { disks } => {
            for_disks(&mut next.disk_import_status, disks, |disk| {
                disk.virtual_machine_image.clear();
                api::condition::remove(&mut disk.disk_conditions, &ConditionType::ImageFailed);
                api::condition::remove(&mut disk.disk_conditions, &ConditionType::ImageSubmitted);
            });
            record_submitted(&mut next.disk_import_status, outcome, now);
            next.phase = ImportPhase::DiskImagesSubmitted;
            let text = format!("resubmitted the images of {} disks", disks.len());
            (Requeue::After(IMAGE_POLL), note(true, text))
        }
        Decision::ImagesSubmitted => {
            next.phase = ImportPhase::DiskImagesSubmitted;
            (Requeue::After(IMAGE_POLL), None)
        }
        Decision::ImagesFailed { disks } => {
            let mut messages = Vec::new();
            for &index in disks {
                let message = match images.get(index) {
                    Some(ImageFact::Failed { message }) => message.as_str(),
                    _ => "image missing",
                };
                if let Some(disk) = next.disk_import_status.get_mut(index) {
                    set(
                        &mut disk.disk_conditions,
                        ConditionType::ImageFailed,
                        now,
                        "ImportFailed",
                        message,
                    );
                    messages.push(format!("{}: {message}", disk.name));
                }
            }
            next.phase = ImportPhase::DiskImagesFailed;
            let text = format!("image import failed: {}", messages.join("; "));
            (Requeue::OnChange, note(true, text))
        }
        Decision::ImagesReady => {
            for disk in &mut next.disk_import_status {
                set(&mut disk.disk_conditions, ConditionType::ImageReady, now, "", "");
            }
            next.phase = ImportPhase::DiskImagesReady;
            (Requeue::OnChange, None)
        }
        Decision::CreateVirtualMachine => {
            let text = format!("VirtualMachine {} created", next.imported_virtual_machine_name);
            return Transition {
                note: note(false, text),
                ..Transition::unchanged(Requeue::After(STEP_POLL))
            };
        }
        Decision::VirtualMachineCreated => {
            next.phase = ImportPhase::VirtualMachineCreated;
            (Requeue::After(VM_READY_POLL), None)
        }
        Decision::Running => {
            next.phase = ImportPhase::VirtualMachineRunning;
            let text = format!("VirtualMachine {} is running", next.imported_virtual_machine_name);
            (Requeue::After(STEP_POLL), note(false, text))
        }
        Decision::TidyUp | Decision::CleanUp => {
            let pending = matches!(
                outcome,
                Outcome::Tidied {
                    cleanup_pending: true
                }
            );
            return Transition::unchanged(if pending {
                Requeue::After(SOURCE_CLEANUP_RETRY)
            } else {
                Requeue::OnChange
            });
        }
        Decision::Fail(failure) => {
            record_failure(&mut next, failure, now);
            return Transition {
                status: Some(next),
                requeue: Requeue::After(STEP_POLL),
                note: note(true, failure.message.clone()),
                concern_events: !failure.concerns.is_empty(),
                forget_export: true,
            };
        }
    };
    Transition {
        status: (next != *status).then_some(next),
        requeue,
        note,
        concern_events: false,
        forget_export: false,
    }
}

/// Applies `change` to the disks at `indexes` (indexes past the end are ignored).
fn for_disks(disks: &mut [DiskInfo], indexes: &[usize], mut change: impl FnMut(&mut DiskInfo)) {
    for &index in indexes {
        if let Some(disk) = disks.get_mut(index) {
            change(disk);
        }
    }
}

fn record_submitted(disks: &mut [DiskInfo], outcome: Outcome, now: &str) {
    let Outcome::ImagesSubmitted(submitted) = outcome else {
        return;
    };
    for image in submitted {
        let Some(disk) = disks.get_mut(image.disk) else {
            continue;
        };
        if image.created {
            disk.image_submissions = Some(disk.image_submissions.unwrap_or(0) + 1);
        }
        disk.virtual_machine_image = image.image;
        set(
            &mut disk.disk_conditions,
            ConditionType::ImageSubmitted,
            now,
            "",
            "",
        );
    }
}

fn record_failure(status: &mut VirtualMachineImportStatus, failure: &Failure, now: &str) {
    status.phase = failure.terminal.phase();
    let conditions = &mut status.import_conditions;
    set(
        conditions,
        ConditionType::ImportFailed,
        now,
        failure.reason,
        &failure.message,
    );
    if let Some(condition) = &failure.condition {
        set(
            conditions,
            condition.clone(),
            now,
            failure.reason,
            &failure.message,
        );
    }
    if !failure.concerns.is_empty() {
        status.concerns = failure.concerns.clone();
    }
}
