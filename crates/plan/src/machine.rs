//! The `VirtualMachineImport` state machine: a pure, level-triggered transition function.
//!
//! ```text
//!  "" ──preflight──▶ virtualMachineImportValid ──name──▶ sourceReady ──power-off, export──▶ disksExported
//!  │                                                                                          │ submit images
//!  ▼                                                                                          ▼
//!  virtualMachineImportInvalid          diskImageFailed ◀──an image failed── diskImageSubmitted
//!                                              └──────resubmit (new download)──────▲  │ all imported
//!                                                                                     ▼
//!  VMMigrationFailed ◀──(any unrecoverable step)      virtualMachineRunning ◀── virtualMachineCreated ◀── diskImagesReady
//! ```
//!
//! The reconciler gathers [`Observed`] (spec, status and what it saw in the world), calls [`next`],
//! executes the one [`Decision`] and writes status; it never blocks on an export (that runs in the
//! background and is observed as [`ExportFact`]). When `next` needs a fact the reconciler did not
//! gather, it asks for it with [`Decision::Observe`]. Every match is exhaustive: a new phase or fact
//! does not compile until each transition says what it does with it.
//!
//! Fixed against upstream: a failed image is resubmitted with a new download (not by going back to
//! `sourceReady`, which never re-created it); a failed disk is acted on whatever the order of the
//! disks; a restarted export skips disks already exported; a deleted image or VM is re-created.

use std::time::Duration;

use api::{Concern, ConditionType, ImportPhase, VirtualMachineImportSpec, VirtualMachineImportStatus};

use crate::{
    names::{SanitizedName, sanitize_vm_name},
    preflight::{self, PreflightFacts},
};

/// Re-check interval while the source is not ready (upstream: 5 s).
pub const SOURCE_NOT_READY_RETRY: Duration = Duration::from_secs(5);
/// Power-state polling interval (upstream: 5 s).
pub const POWER_POLL: Duration = Duration::from_secs(5);
/// Fallback re-check of a created VM's readiness (upstream polls every 2 min; we also watch VMs).
pub const VM_READY_POLL: Duration = Duration::from_secs(120);
/// Images created per disk before the import is given up (the first plus two resubmissions).
pub const MAX_IMAGE_SUBMISSIONS: u32 = 3;

/// The phase type, re-exported from `api` (the strings are upstream's).
pub use api::ImportPhase as Phase;

/// The source object the import names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceFact {
    /// No such source object.
    Missing,
    /// It exists but is not `clusterReady`.
    NotReady,
    /// It is `clusterReady`.
    Ready,
}

/// Power state of the source VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerFact {
    /// Off (OVA and already-off VMs).
    Off,
    /// Running.
    On,
}

/// This process's background export of the import.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExportFact {
    /// No export runs (never started, or the controller restarted).
    Idle,
    /// An export runs.
    Running,
    /// The export finished; every disk in status has its digest.
    Succeeded,
    /// The export failed.
    Failed {
        /// The source's reason when it refused the export (`TokenExpired`, `InvalidCredentials`…);
        /// `None` for a failed transfer, which fails as `ExportFailed`.
        reason: Option<&'static str>,
        /// Why (the error chain, for the condition message).
        message: String,
    },
}

/// A disk's Harvester `VirtualMachineImage`, as read from the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageFact {
    /// None recorded, or the recorded one is gone.
    Absent,
    /// Importing.
    Pending,
    /// `Imported=True`.
    Ready,
    /// `Imported=False` with reason `ImportFailed`.
    Failed {
        /// The image's condition message.
        message: String,
    },
}

/// The KubeVirt VM named `status.importedVirtualMachineName`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmFact {
    /// No such VM.
    Absent,
    /// A VM of that name that this import did not create.
    Foreign,
    /// This import's VM.
    Ours {
        /// `status.ready == true`.
        ready: bool,
    },
}

/// A fact [`next`] needs and [`Observed`] lacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fact {
    /// [`Observed::source`].
    Source,
    /// [`Observed::preflight`].
    Preflight,
    /// [`Observed::power`] (and [`Observed::since_shutdown_request`] once a shutdown was requested).
    Power,
    /// [`Observed::export`].
    Export,
    /// [`Observed::images`], one per disk in status order.
    Images,
    /// [`Observed::vm`].
    VirtualMachine,
    /// [`Observed::leftovers`].
    Leftovers,
    /// [`Observed::exported_files`].
    ExportedFiles,
}

/// Everything [`next`] decides from. Facts are `None` when not gathered.
#[derive(Clone, Debug)]
pub struct Observed<'a> {
    /// The import's spec.
    pub spec: &'a VirtualMachineImportSpec,
    /// The import's status (default when it has none).
    pub status: &'a VirtualMachineImportStatus,
    /// `metadata.deletionTimestamp` is set.
    pub deleting: bool,
    /// The named source object.
    pub source: Option<SourceFact>,
    /// Preflight facts (phase `""`).
    pub preflight: Option<&'a PreflightFacts>,
    /// The VM's name at the source when it differs from the spec's (OpenStack: spec holds a UUID).
    pub source_vm_name: Option<&'a str>,
    /// Power state (phase `sourceReady` until `VMPoweredOff`).
    pub power: Option<PowerFact>,
    /// Time since the guest shutdown was requested (from `VMShutdownGuest.lastUpdateTime`).
    pub since_shutdown_request: Option<Duration>,
    /// The background export (phase `sourceReady` after `VMPoweredOff`).
    pub export: Option<ExportFact>,
    /// One per `status.diskImportStatus` entry (image phases).
    pub images: Option<&'a [ImageFact]>,
    /// The target VM (VM phases).
    pub vm: Option<VmFact>,
    /// Files or image owner references remain to be tidied (terminal phases).
    pub leftovers: Option<bool>,
    /// One per `status.diskImportStatus` entry: its image file is in the image directory (before
    /// an export starts again: a file can be lost with the pod's emptyDir).
    pub exported_files: Option<&'a [bool]>,
}

impl<'a> Observed<'a> {
    /// Spec and status, no facts.
    pub fn new(spec: &'a VirtualMachineImportSpec, status: &'a VirtualMachineImportStatus) -> Self {
        Self {
            spec,
            status,
            deleting: false,
            source: None,
            preflight: None,
            source_vm_name: None,
            power: None,
            since_shutdown_request: None,
            export: None,
            images: None,
            vm: None,
            leftovers: None,
            exported_files: None,
        }
    }
}

/// Which import phase a failure ends in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Terminal {
    /// `virtualMachineImportInvalid`: the request cannot be satisfied as written.
    Invalid,
    /// `VMMigrationFailed`: a step failed.
    MigrationFailed,
}

impl Terminal {
    /// The phase.
    pub fn phase(self) -> ImportPhase {
        match self {
            Self::Invalid => ImportPhase::Invalid,
            Self::MigrationFailed => ImportPhase::MigrationFailed,
        }
    }
}

/// A failure to record: the phase, an `ImportFailed` condition with `reason`/`message`, an Event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The terminal phase.
    pub terminal: Terminal,
    /// Low-cardinality PascalCase reason (condition, Event and metric label).
    pub reason: &'static str,
    /// For humans.
    pub message: String,
    /// Also set this upstream condition `True` (e.g. `VMExportFailed`), with the message.
    pub condition: Option<ConditionType>,
    /// Preflight concerns to record in `status.concerns`.
    pub concerns: Vec<Concern>,
}

/// The one thing to do now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Gather this fact and call [`next`] again.
    Observe(Fact),
    /// Nothing to do until something changes (a watch event) or `after` elapses.
    Wait {
        /// Why (low-cardinality, for logs and metrics).
        reason: &'static str,
        /// Requeue after this long, if the change would not arrive as an event.
        after: Option<Duration>,
    },
    /// Preflight passed: phase `virtualMachineImportValid`, concerns recorded.
    Validated {
        /// Warnings and notes.
        concerns: Vec<Concern>,
    },
    /// Phase `sourceReady`, `importedVirtualMachineName` set.
    Named(SanitizedName),
    /// Ask the guest to shut down; set `VMShutdownGuest`.
    RequestShutdown,
    /// Hard power-off; set `VMPoweringOff`.
    ForcePowerOff,
    /// The VM is off; set `VMPoweredOff`.
    MarkPoweredOff,
    /// Record every source disk in `diskImportStatus` (with its file name) before any byte moves,
    /// so that a restart finds the same names and skips what is done.
    RecordDisks,
    /// These disks are recorded as exported but their files are gone: clear their digests, so
    /// they are exported again.
    ForgetLostImages {
        /// Indexes into `diskImportStatus`.
        disks: Vec<usize>,
    },
    /// Start the background export of every disk except `skip` (indexes into `diskImportStatus`,
    /// disks already exported before a restart).
    StartExport {
        /// Disks not to export again.
        skip: Vec<usize>,
    },
    /// Every disk is exported: set `VMExported`, phase `disksExported`.
    Exported,
    /// Create a `VirtualMachineImage` for each of these disks, set `VirtualMachineImageSubmitted`,
    /// count the submission.
    SubmitImages {
        /// Indexes into `diskImportStatus`.
        disks: Vec<usize>,
    },
    /// Every disk has an image: phase `diskImageSubmitted`.
    ImagesSubmitted,
    /// Mark these disks `VirtualMachineImageFailed`; phase `diskImageFailed`.
    ImagesFailed {
        /// Indexes into `diskImportStatus`.
        disks: Vec<usize>,
    },
    /// Delete these disks' images, clear their `VirtualMachineImageFailed`, submit new ones (new
    /// download), phase `diskImageSubmitted`.
    ResubmitImages {
        /// Indexes into `diskImportStatus`.
        disks: Vec<usize>,
    },
    /// Mark every disk `VirtualMachineImageReady`; phase `diskImagesReady`.
    ImagesReady,
    /// Create the KubeVirt VM (and the PVCs of backing-image disks).
    CreateVirtualMachine,
    /// The VM exists: phase `virtualMachineCreated`.
    VirtualMachineCreated,
    /// The VM is ready: phase `virtualMachineRunning`.
    Running,
    /// Strip this import's owner reference from its images and delete its files.
    TidyUp,
    /// Delete the import's files (after a failure).
    CleanUp,
    /// The import is being deleted: abort the export, delete files, remove the finalizer. The source
    /// VM and the created VM are never touched.
    Finalize,
    /// Record a failure.
    Fail(Failure),
    /// Nothing left to do.
    Done,
}

impl Decision {
    /// Low-cardinality PascalCase word for the Event reason, logs and the metric label of this step.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Observe(_) => "Observing",
            Self::Wait { reason, .. } => reason,
            Self::Validated { .. } => "PreflightPassed",
            Self::Named(_) => "Named",
            Self::RequestShutdown => "ShutdownRequested",
            Self::ForcePowerOff => "PowerOffForced",
            Self::MarkPoweredOff => "PoweredOff",
            Self::RecordDisks => "DisksRecorded",
            Self::ForgetLostImages { .. } => "ImageFilesLost",
            Self::StartExport { .. } => "ExportStarted",
            Self::Exported => "Exported",
            Self::SubmitImages { .. } => "ImagesSubmitting",
            Self::ImagesSubmitted => "ImagesSubmitted",
            Self::ImagesFailed { .. } => "ImagesFailed",
            Self::ResubmitImages { .. } => "ImagesResubmitting",
            Self::ImagesReady => "ImagesReady",
            Self::CreateVirtualMachine => "VirtualMachineCreating",
            Self::VirtualMachineCreated => "VirtualMachineCreated",
            Self::Running => "VirtualMachineRunning",
            Self::TidyUp => "TidyingUp",
            Self::CleanUp => "CleaningUp",
            Self::Finalize => "Finalizing",
            Self::Fail(failure) => failure.reason,
            Self::Done => "Done",
        }
    }
}

fn fail(terminal: Terminal, reason: &'static str, message: impl Into<String>) -> Decision {
    Decision::Fail(Failure {
        terminal,
        reason,
        message: message.into(),
        condition: None,
        concerns: Vec::new(),
    })
}

/// Checks of the spec that need no facts.
fn check_source_reference(spec: &VirtualMachineImportSpec) -> Result<(), Decision> {
    let reference = &spec.source_cluster;
    if reference.api_version.as_deref() != Some(api::API_VERSION) {
        return Err(fail(
            Terminal::Invalid,
            "InvalidSourceReference",
            format!(
                "spec.sourceCluster.apiVersion is {:?}, must be {:?}",
                reference.api_version.as_deref().unwrap_or_default(),
                api::API_VERSION
            ),
        ));
    }
    let kind = reference.kind.as_deref().unwrap_or_default().to_ascii_lowercase();
    if !matches!(kind.as_str(), "vmwaresource" | "openstacksource" | "ovasource") {
        return Err(fail(
            Terminal::Invalid,
            "InvalidSourceReference",
            format!("spec.sourceCluster.kind {kind:?} is not VmwareSource, OpenstackSource or OvaSource"),
        ));
    }
    Ok(())
}

/// The next step of the import.
pub fn next(observed: &Observed<'_>) -> Decision {
    if observed.deleting {
        return Decision::Finalize;
    }
    match next_in_phase(observed) {
        Ok(decision) | Err(decision) => decision,
    }
}

/// `Err` carries early exits (a missing fact, a failure) so each phase reads top to bottom.
fn next_in_phase(o: &Observed<'_>) -> Result<Decision, Decision> {
    let status = o.status;
    match &status.phase {
        ImportPhase::New => {
            check_source_reference(o.spec)?;
            match source(o)? {
                SourceFact::Missing => Err(fail(
                    Terminal::Invalid,
                    "SourceNotFound",
                    format!("source {} not found", source_name(o.spec)),
                )),
                SourceFact::NotReady => Ok(Decision::Wait {
                    reason: "SourceNotReady",
                    after: Some(SOURCE_NOT_READY_RETRY),
                }),
                SourceFact::Ready => {
                    let facts = o.preflight.ok_or(Decision::Observe(Fact::Preflight))?;
                    let concerns = preflight::check(o.spec, facts);
                    if preflight::is_blocking(&concerns) {
                        let critical: Vec<&Concern> = concerns
                            .iter()
                            .filter(|c| c.severity == api::Severity::Critical)
                            .collect();
                        let message = critical
                            .iter()
                            .map(|c| c.message.as_str())
                            .collect::<Vec<_>>()
                            .join("; ");
                        return Ok(Decision::Fail(Failure {
                            terminal: Terminal::Invalid,
                            reason: "PreflightFailed",
                            message,
                            condition: None,
                            concerns,
                        }));
                    }
                    Ok(Decision::Validated { concerns })
                }
            }
        }
        ImportPhase::Valid => match source(o)? {
            SourceFact::Missing => Err(fail(
                Terminal::MigrationFailed,
                "SourceNotFound",
                format!("source {} not found", source_name(o.spec)),
            )),
            SourceFact::NotReady | SourceFact::Ready => {
                let name = o.source_vm_name.unwrap_or(&o.spec.virtual_machine_name);
                Ok(Decision::Named(sanitize_vm_name(name)))
            }
        },
        ImportPhase::SourceReady => source_ready(o),
        ImportPhase::DisksExported => {
            if status.disk_import_status.is_empty() {
                return Err(fail(Terminal::Invalid, "NoDisks", "the export produced no disks"));
            }
            let images = images(o)?;
            let missing = disks_where(images, |i| *i == ImageFact::Absent);
            if missing.is_empty() {
                Ok(Decision::ImagesSubmitted)
            } else {
                submit(o, missing)
            }
        }
        ImportPhase::DiskImagesSubmitted => {
            let images = images(o)?;
            let failed = disks_where(images, |i| matches!(i, ImageFact::Failed { .. }));
            if !failed.is_empty() {
                return Ok(Decision::ImagesFailed { disks: failed });
            }
            let missing = disks_where(images, |i| *i == ImageFact::Absent);
            if !missing.is_empty() {
                // Deleted behind our back (upstream requeues forever on the NotFound).
                return submit(o, missing);
            }
            if images.iter().all(|i| *i == ImageFact::Ready) {
                Ok(Decision::ImagesReady)
            } else {
                Ok(Decision::Wait {
                    reason: "ImagesImporting",
                    after: None,
                })
            }
        }
        ImportPhase::DiskImagesFailed => {
            let images = images(o)?;
            let failed: Vec<usize> = status
                .disk_import_status
                .iter()
                .enumerate()
                .filter(|(i, disk)| {
                    disk.condition_is_true(&ConditionType::ImageFailed)
                        || matches!(images.get(*i), Some(ImageFact::Failed { .. } | ImageFact::Absent))
                })
                .map(|(i, _)| i)
                .collect();
            if failed.is_empty() {
                return Ok(Decision::ImagesSubmitted);
            }
            for &disk in &failed {
                let submissions = status.disk_import_status[disk].image_submissions.unwrap_or(1);
                if submissions >= MAX_IMAGE_SUBMISSIONS {
                    let message = match images.get(disk) {
                        Some(ImageFact::Failed { message }) => message.clone(),
                        _ => String::new(),
                    };
                    return Err(fail(
                        Terminal::MigrationFailed,
                        "ImageImportFailed",
                        format!(
                            "image of disk {} failed {submissions} times: {message}",
                            status.disk_import_status[disk].name
                        ),
                    ));
                }
            }
            Ok(Decision::ResubmitImages { disks: failed })
        }
        ImportPhase::DiskImagesReady => match vm(o)? {
            VmFact::Absent => Ok(Decision::CreateVirtualMachine),
            VmFact::Ours { .. } => Ok(Decision::VirtualMachineCreated),
            VmFact::Foreign => Err(vm_name_taken(o)),
        },
        ImportPhase::VirtualMachineCreated => match vm(o)? {
            VmFact::Absent => Ok(Decision::CreateVirtualMachine),
            VmFact::Ours { ready: true } => Ok(Decision::Running),
            VmFact::Ours { ready: false } => Ok(Decision::Wait {
                reason: "VirtualMachineStarting",
                after: Some(VM_READY_POLL),
            }),
            VmFact::Foreign => Err(vm_name_taken(o)),
        },
        ImportPhase::VirtualMachineRunning => tidy(o, Decision::TidyUp),
        ImportPhase::MigrationFailed => tidy(o, Decision::CleanUp),
        ImportPhase::Invalid => Ok(Decision::Done),
        // A phase written by some other version: leave the object alone rather than guess.
        ImportPhase::Other(_) => Ok(Decision::Wait {
            reason: "UnknownImportStatus",
            after: None,
        }),
    }
}

fn source_ready(o: &Observed<'_>) -> Result<Decision, Decision> {
    let status = o.status;
    if status.condition_is_true(&ConditionType::VmExported) {
        return Ok(Decision::Exported);
    }
    if let Some(condition) = api::condition::find(&status.import_conditions, &ConditionType::VmExportFailed)
        && condition.is_true()
    {
        return Err(fail(
            Terminal::MigrationFailed,
            "ExportFailed",
            condition.message.clone(),
        ));
    }
    if !status.condition_is_true(&ConditionType::VmPoweredOff) {
        return match o.power.ok_or(Decision::Observe(Fact::Power))? {
            PowerFact::Off => Ok(Decision::MarkPoweredOff),
            PowerFact::On => {
                let shutdown = status.condition_is_true(&ConditionType::VmShutdownGuest);
                let powering_off = status.condition_is_true(&ConditionType::VmPoweringOff);
                if powering_off {
                    Ok(Decision::Wait {
                        reason: "PoweringOff",
                        after: Some(POWER_POLL),
                    })
                } else if o.spec.force_power_off == Some(true) {
                    Ok(Decision::ForcePowerOff)
                } else if !shutdown {
                    Ok(Decision::RequestShutdown)
                } else {
                    let timeout = Duration::from_secs(u64::from(o.spec.graceful_shutdown_timeout_seconds()));
                    match o.since_shutdown_request {
                        // Lost timestamp: treat as expired rather than wait forever.
                        None => Ok(Decision::ForcePowerOff),
                        Some(elapsed) if elapsed >= timeout => Ok(Decision::ForcePowerOff),
                        Some(_) => Ok(Decision::Wait {
                            reason: "ShuttingDown",
                            after: Some(POWER_POLL),
                        }),
                    }
                }
            }
        };
    }
    let disks = &status.disk_import_status;
    let all_exported = !disks.is_empty() && disks.iter().all(api::DiskInfo::is_exported);
    match o.export.as_ref().ok_or(Decision::Observe(Fact::Export))? {
        ExportFact::Running => Ok(Decision::Wait {
            reason: "Exporting",
            after: None,
        }),
        ExportFact::Failed { reason, message } => Err(Decision::Fail(Failure {
            terminal: Terminal::MigrationFailed,
            reason: reason.unwrap_or("ExportFailed"),
            message: format!("error exporting VM: {message}"),
            condition: Some(ConditionType::VmExportFailed),
            concerns: Vec::new(),
        })),
        // The export task records each disk's digest before it reports success.
        ExportFact::Succeeded => Ok(Decision::Exported),
        ExportFact::Idle => {
            if disks.is_empty() {
                return Ok(Decision::RecordDisks);
            }
            let present = o.exported_files.ok_or(Decision::Observe(Fact::ExportedFiles))?;
            if present.len() != disks.len() {
                return Err(Decision::Observe(Fact::ExportedFiles));
            }
            let lost: Vec<usize> = disks
                .iter()
                .zip(present)
                .enumerate()
                .filter(|(_, (d, present))| d.is_exported() && !**present)
                .map(|(i, _)| i)
                .collect();
            if !lost.is_empty() {
                return Ok(Decision::ForgetLostImages { disks: lost });
            }
            if all_exported {
                return Ok(Decision::Exported);
            }
            let skip = disks
                .iter()
                .enumerate()
                .filter(|(_, d)| d.is_exported())
                .map(|(i, _)| i)
                .collect();
            Ok(Decision::StartExport { skip })
        }
    }
}

fn submit(o: &Observed<'_>, disks: Vec<usize>) -> Result<Decision, Decision> {
    for &disk in &disks {
        let info = &o.status.disk_import_status[disk];
        if info.image_submissions.unwrap_or(0) >= MAX_IMAGE_SUBMISSIONS {
            return Err(fail(
                Terminal::MigrationFailed,
                "ImageImportFailed",
                format!(
                    "image of disk {} was submitted {MAX_IMAGE_SUBMISSIONS} times",
                    info.name
                ),
            ));
        }
    }
    Ok(Decision::SubmitImages { disks })
}

fn tidy(o: &Observed<'_>, action: Decision) -> Result<Decision, Decision> {
    Ok(if o.leftovers.ok_or(Decision::Observe(Fact::Leftovers))? {
        action
    } else {
        Decision::Done
    })
}

fn source(o: &Observed<'_>) -> Result<SourceFact, Decision> {
    o.source.ok_or(Decision::Observe(Fact::Source))
}

fn vm(o: &Observed<'_>) -> Result<VmFact, Decision> {
    o.vm.ok_or(Decision::Observe(Fact::VirtualMachine))
}

fn images<'a>(o: &Observed<'a>) -> Result<&'a [ImageFact], Decision> {
    let images = o.images.ok_or(Decision::Observe(Fact::Images))?;
    if images.len() == o.status.disk_import_status.len() {
        Ok(images)
    } else {
        Err(Decision::Observe(Fact::Images))
    }
}

fn disks_where(images: &[ImageFact], predicate: impl Fn(&ImageFact) -> bool) -> Vec<usize> {
    images
        .iter()
        .enumerate()
        .filter(|(_, i)| predicate(i))
        .map(|(i, _)| i)
        .collect()
}

fn vm_name_taken(o: &Observed<'_>) -> Decision {
    fail(
        Terminal::MigrationFailed,
        "VirtualMachineNameTaken",
        format!(
            "a VirtualMachine named {:?} exists and was not created by this import",
            o.status.imported_virtual_machine_name
        ),
    )
}

fn source_name(spec: &VirtualMachineImportSpec) -> String {
    let r = &spec.source_cluster;
    format!(
        "{} {}/{}",
        r.kind.as_deref().unwrap_or_default(),
        r.namespace.as_deref().unwrap_or_default(),
        r.name.as_deref().unwrap_or_default()
    )
}
