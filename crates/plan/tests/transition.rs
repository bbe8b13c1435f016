//! Every status change a performed decision makes: phases, conditions, disks, Events, requeues.

// Test helpers outside #[test] functions fail loudly on purpose.
#![allow(clippy::panic)]

use std::time::Duration;

use api::{
    Concern, ConditionStatus, ConditionType, DiskInfo, ImportPhase, Severity, VirtualMachineImportSpec,
    VirtualMachineImportStatus,
};
use plan::{
    Decision,
    machine::{Failure, ImageFact, POWER_POLL, Terminal, VM_READY_POLL},
    names::SanitizedName,
    transition::{
        IMAGE_POLL, Note, Outcome, Requeue, SOURCE_CLEANUP_RETRY, STEP_POLL, StopRequest, SubmittedImage,
        Transition, after,
    },
};

const NOW: &str = "2026-12-07T12:00:00Z";

fn spec() -> VirtualMachineImportSpec {
    VirtualMachineImportSpec {
        virtual_machine_name: "Web_01".into(),
        graceful_shutdown_timeout_seconds: 90,
        ..VirtualMachineImportSpec::default()
    }
}

fn disk(name: &str, exported: bool) -> DiskInfo {
    DiskInfo {
        name: name.into(),
        disk_size: 1 << 30,
        checksum: exported.then(|| "ab".repeat(64)),
        ..DiskInfo::default()
    }
}

fn status(phase: ImportPhase, disks: Vec<DiskInfo>) -> VirtualMachineImportStatus {
    VirtualMachineImportStatus {
        phase,
        imported_virtual_machine_name: "web-01".into(),
        disk_import_status: disks,
        ..VirtualMachineImportStatus::default()
    }
}

fn run(decision: &Decision, outcome: Outcome, status: &VirtualMachineImportStatus) -> Transition {
    after(decision, outcome, &spec(), status, &[], NOW)
}

fn written(t: &Transition) -> &VirtualMachineImportStatus {
    t.status
        .as_ref()
        .unwrap_or_else(|| panic!("a status to write: {t:?}"))
}

fn true_with(conditions: &[api::Condition], type_: &ConditionType) -> Option<(String, String)> {
    api::condition::find(conditions, type_)
        .filter(|c| c.status == ConditionStatus::True)
        .map(|c| (c.reason.clone(), c.message.clone()))
}

fn note(t: &Transition) -> (bool, &str) {
    let Some(Note { warning, text }) = &t.note else {
        panic!("an Event: {t:?}")
    };
    (*warning, text)
}

#[test]
fn waiting_and_observing_write_nothing() {
    let s = status(ImportPhase::DiskImagesSubmitted, vec![disk("a.img", true)]);
    let wait = Decision::Wait {
        reason: "ImagesImporting",
        after: Some(Duration::from_secs(7)),
    };
    let t = run(&wait, Outcome::Done, &s);
    assert_eq!(
        (t.status.is_none(), t.requeue),
        (true, Requeue::After(Duration::from_secs(7)))
    );
    for decision in [Decision::Observe(plan::machine::Fact::Images), Decision::Done] {
        let t = run(&decision, Outcome::Done, &s);
        assert_eq!((t.status, t.requeue, t.note), (None, Requeue::OnChange, None));
    }
}

#[test]
fn a_validated_import_records_its_concerns_and_announces_each() {
    let concern = Concern {
        id: "WindowsGuest".into(),
        severity: Severity::Warning,
        message: "m".into(),
        remedy: "r".into(),
    };
    let t = run(
        &Decision::Validated {
            concerns: vec![concern.clone()],
        },
        Outcome::Done,
        &status(ImportPhase::New, vec![]),
    );
    assert_eq!(written(&t).phase, ImportPhase::Valid);
    assert_eq!(written(&t).concerns, vec![concern]);
    assert!(t.concern_events);
    assert_eq!(
        note(&t),
        (
            false,
            "preflight checks passed (1 warnings or notes in status.concerns)"
        )
    );
}

#[test]
fn naming_says_when_the_source_name_had_to_change() {
    let s = status(ImportPhase::Valid, vec![]);
    let renamed = Decision::Named(SanitizedName {
        name: "web-01".into(),
        changed: true,
    });
    let t = run(&renamed, Outcome::Done, &s);
    assert_eq!(written(&t).phase, ImportPhase::SourceReady);
    assert_eq!(written(&t).imported_virtual_machine_name, "web-01");
    assert!(note(&t).1.contains("\"Web_01\" is not a DNS-1123 label"), "{t:?}");
    let kept = Decision::Named(SanitizedName {
        name: "web01".into(),
        changed: false,
    });
    assert_eq!(run(&kept, Outcome::Done, &s).note, None);
}

#[test]
fn each_way_of_stopping_sets_its_condition_and_polls_the_power_state() {
    let s = status(ImportPhase::SourceReady, vec![]);
    let cases = [
        (
            Decision::RequestShutdown,
            StopRequest::GuestShutdown,
            ConditionType::VmShutdownGuest,
            Requeue::After(POWER_POLL),
            "guest shutdown requested; forced power-off after 90 s",
        ),
        (
            Decision::RequestShutdown,
            StopRequest::CloudStop { again: false },
            ConditionType::VmShutdownGuest,
            Requeue::After(POWER_POLL),
            "os-stop requested (Nova shuts the guest down, then forces it off after its shutdown_timeout)",
        ),
        (
            Decision::ForcePowerOff,
            StopRequest::CloudStop { again: true },
            ConditionType::VmPoweringOff,
            Requeue::After(POWER_POLL),
            "os-stop requested again; waiting for SHUTOFF",
        ),
        (
            Decision::ForcePowerOff,
            StopRequest::PoweredOff,
            ConditionType::VmPoweringOff,
            Requeue::After(STEP_POLL),
            "source VM powered off (forced)",
        ),
    ];
    for (decision, request, condition, requeue, text) in cases {
        let t = run(&decision, Outcome::Stopped(request), &s);
        assert_eq!(
            true_with(&written(&t).import_conditions, &condition),
            Some((String::new(), String::new())),
            "{request:?}"
        );
        assert_eq!(written(&t).phase, ImportPhase::SourceReady);
        assert_eq!((t.requeue, note(&t)), (requeue, (false, text)));
    }
}

#[test]
fn a_decision_given_the_wrong_outcome_changes_nothing() {
    let s = status(ImportPhase::SourceReady, vec![]);
    for decision in [
        Decision::RequestShutdown,
        Decision::RecordDisks,
        Decision::StartExport { skip: vec![] },
    ] {
        let t = run(&decision, Outcome::Done, &s);
        assert_eq!(
            (t.status, t.note, t.requeue),
            (None, None, Requeue::After(STEP_POLL))
        );
    }
}

#[test]
fn powered_off_is_recorded_once() {
    let s = status(ImportPhase::SourceReady, vec![]);
    let t = run(&Decision::MarkPoweredOff, Outcome::Done, &s);
    let once = written(&t).clone();
    assert!(once.condition_is_true(&ConditionType::VmPoweredOff));
    // Recorded already: nothing to write again.
    assert_eq!(run(&Decision::MarkPoweredOff, Outcome::Done, &once).status, None);
}

#[test]
fn disks_are_recorded_before_the_export_and_lost_files_forgotten() {
    let s = status(ImportPhase::SourceReady, vec![]);
    let disks = vec![disk("a.img", false), disk("b.img", false)];
    let t = run(&Decision::RecordDisks, Outcome::DisksRecorded(disks.clone()), &s);
    assert_eq!(written(&t).disk_import_status, disks);
    assert_eq!((t.requeue, t.note.is_none()), (Requeue::OnChange, true));

    let s = status(
        ImportPhase::SourceReady,
        vec![disk("a.img", true), disk("b.img", true)],
    );
    let t = run(&Decision::ForgetLostImages { disks: vec![1] }, Outcome::Done, &s);
    let d = &written(&t).disk_import_status;
    assert!(d[0].is_exported() && !d[1].is_exported(), "{d:?}");
    assert!(note(&t).0, "a lost file is a warning");
}

#[test]
fn a_started_export_is_announced_with_the_disks_it_skips() {
    let s = status(
        ImportPhase::SourceReady,
        vec![disk("a.img", true), disk("b.img", false), disk("c.img", false)],
    );
    let t = run(
        &Decision::StartExport { skip: vec![] },
        Outcome::ExportStarted,
        &s,
    );
    assert_eq!(
        (t.status.as_ref(), note(&t)),
        (None, (false, "exporting 3 disks"))
    );
    let t = run(
        &Decision::StartExport { skip: vec![0] },
        Outcome::ExportStarted,
        &s,
    );
    assert_eq!(
        note(&t).1,
        "exporting 2 disks (1 already exported before a restart)"
    );
}

#[test]
fn an_export_recorded_as_done_moves_on_and_is_forgotten() {
    let s = status(
        ImportPhase::SourceReady,
        vec![disk("a.img", true), disk("b.img", true)],
    );
    let t = run(&Decision::Exported, Outcome::Done, &s);
    assert_eq!(written(&t).phase, ImportPhase::DisksExported);
    assert!(written(&t).condition_is_true(&ConditionType::VmExported));
    assert!(t.forget_export);
    assert_eq!(note(&t).1, "2 disks exported (2147483648 bytes of virtual disk)");
}

#[test]
fn submitted_images_are_named_and_counted_only_when_created() {
    let s = status(
        ImportPhase::DisksExported,
        vec![disk("a.img", true), disk("b.img", true)],
    );
    let outcome = Outcome::ImagesSubmitted(vec![
        SubmittedImage {
            disk: 0,
            image: "image-a".into(),
            created: true,
        },
        SubmittedImage {
            disk: 1,
            image: "image-b".into(),
            created: false,
        },
    ]);
    let t = run(&Decision::SubmitImages { disks: vec![0, 1] }, outcome, &s);
    let d = &written(&t).disk_import_status;
    assert_eq!(
        (d[0].virtual_machine_image.as_str(), d[0].image_submissions),
        ("image-a", Some(1))
    );
    assert_eq!(
        (d[1].virtual_machine_image.as_str(), d[1].image_submissions),
        ("image-b", None),
        "found from an earlier attempt, not a new submission"
    );
    assert!(
        d.iter()
            .all(|d| api::condition::is_true(&d.disk_conditions, &ConditionType::ImageSubmitted))
    );
    assert_eq!(
        written(&t).phase,
        ImportPhase::DisksExported,
        "the phase moves on its own decision"
    );
    assert_eq!(t.requeue, Requeue::After(STEP_POLL));
    let t = run(&Decision::ImagesSubmitted, Outcome::Done, written(&t));
    assert_eq!(
        (written(&t).phase.clone(), t.requeue),
        (ImportPhase::DiskImagesSubmitted, Requeue::After(IMAGE_POLL))
    );
}

#[test]
fn failed_images_carry_their_messages_and_are_resubmitted_clean() {
    let s = status(
        ImportPhase::DiskImagesSubmitted,
        vec![disk("a.img", true), disk("b.img", true), disk("c.img", true)],
    );
    let images = [
        ImageFact::Failed {
            message: "checksum mismatch".into(),
        },
        ImageFact::Ready,
        ImageFact::Absent,
    ];
    let failed = Decision::ImagesFailed { disks: vec![0, 2] };
    let t = after(&failed, Outcome::Done, &spec(), &s, &images, NOW);
    let failed_status = written(&t).clone();
    assert_eq!(failed_status.phase, ImportPhase::DiskImagesFailed);
    let d = &failed_status.disk_import_status;
    assert_eq!(
        true_with(&d[0].disk_conditions, &ConditionType::ImageFailed),
        Some(("ImportFailed".into(), "checksum mismatch".into()))
    );
    assert_eq!(
        true_with(&d[1].disk_conditions, &ConditionType::ImageFailed),
        None
    );
    assert_eq!(
        true_with(&d[2].disk_conditions, &ConditionType::ImageFailed).map(|c| c.1),
        Some("image missing".into())
    );
    assert_eq!(
        note(&t),
        (
            true,
            "image import failed: a.img: checksum mismatch; c.img: image missing"
        )
    );

    let resubmit = Decision::ResubmitImages { disks: vec![0, 2] };
    let outcome = Outcome::ImagesSubmitted(vec![
        SubmittedImage {
            disk: 0,
            image: "image-a2".into(),
            created: true,
        },
        SubmittedImage {
            disk: 2,
            image: "image-c2".into(),
            created: true,
        },
    ]);
    let t = run(&resubmit, outcome, &failed_status);
    let status = written(&t);
    assert_eq!(status.phase, ImportPhase::DiskImagesSubmitted);
    for i in [0, 2] {
        let d = &status.disk_import_status[i];
        assert_eq!(true_with(&d.disk_conditions, &ConditionType::ImageFailed), None);
        assert!(api::condition::is_true(
            &d.disk_conditions,
            &ConditionType::ImageSubmitted
        ));
        assert_eq!(d.image_submissions, Some(1));
    }
    assert_eq!(status.disk_import_status[0].virtual_machine_image, "image-a2");
    assert_eq!(
        (t.requeue, note(&t)),
        (
            Requeue::After(IMAGE_POLL),
            (true, "resubmitted the images of 2 disks")
        )
    );
}

#[test]
fn the_vm_phases_follow_the_images() {
    let s = status(
        ImportPhase::DiskImagesSubmitted,
        vec![disk("a.img", true), disk("b.img", true)],
    );
    let t = run(&Decision::ImagesReady, Outcome::Done, &s);
    let ready = written(&t).clone();
    assert_eq!(ready.phase, ImportPhase::DiskImagesReady);
    assert!(
        ready
            .disk_import_status
            .iter()
            .all(|d| api::condition::is_true(&d.disk_conditions, &ConditionType::ImageReady))
    );
    let t = run(&Decision::CreateVirtualMachine, Outcome::Done, &ready);
    assert_eq!(
        (t.status.as_ref(), t.requeue, note(&t)),
        (
            None,
            Requeue::After(STEP_POLL),
            (false, "VirtualMachine web-01 created")
        )
    );
    let t = run(&Decision::VirtualMachineCreated, Outcome::Done, &ready);
    assert_eq!(
        (written(&t).phase.clone(), t.requeue),
        (ImportPhase::VirtualMachineCreated, Requeue::After(VM_READY_POLL))
    );
    let t = run(&Decision::Running, Outcome::Done, written(&t));
    assert_eq!(written(&t).phase, ImportPhase::VirtualMachineRunning);
    assert_eq!(note(&t), (false, "VirtualMachine web-01 is running"));
}

#[test]
fn a_failure_ends_the_import_with_its_reason_everywhere() {
    let s = status(ImportPhase::SourceReady, vec![disk("a.img", false)]);
    let concern = Concern {
        id: "NoNetwork".into(),
        severity: Severity::Critical,
        message: "m".into(),
        remedy: "r".into(),
    };
    let failure = Failure {
        terminal: Terminal::MigrationFailed,
        reason: "ExportFailed",
        message: "error exporting VM: cut".into(),
        condition: Some(ConditionType::VmExportFailed),
        concerns: vec![concern.clone()],
    };
    let t = run(&Decision::Fail(failure), Outcome::Done, &s);
    let failed = written(&t);
    assert_eq!(failed.phase, ImportPhase::MigrationFailed);
    for condition in [ConditionType::ImportFailed, ConditionType::VmExportFailed] {
        assert_eq!(
            true_with(&failed.import_conditions, &condition),
            Some(("ExportFailed".into(), "error exporting VM: cut".into()))
        );
    }
    assert_eq!(failed.concerns, vec![concern]);
    assert!(t.forget_export && t.concern_events);
    assert_eq!(note(&t), (true, "error exporting VM: cut"));

    let invalid = Failure {
        terminal: Terminal::Invalid,
        reason: "SourceNotFound",
        message: "m".into(),
        condition: None,
        concerns: vec![],
    };
    let t = run(&Decision::Fail(invalid), Outcome::Done, &s);
    assert_eq!(written(&t).phase, ImportPhase::Invalid);
    assert!(!t.concern_events);
}

#[test]
fn cleanup_is_tried_again_while_source_objects_stay_recorded() {
    let s = status(ImportPhase::MigrationFailed, vec![]);
    for decision in [Decision::TidyUp, Decision::CleanUp] {
        let t = run(
            &decision,
            Outcome::Tidied {
                cleanup_pending: true,
            },
            &s,
        );
        assert_eq!(
            (t.status.as_ref(), t.requeue),
            (None, Requeue::After(SOURCE_CLEANUP_RETRY))
        );
        let t = run(
            &decision,
            Outcome::Tidied {
                cleanup_pending: false,
            },
            &s,
        );
        assert_eq!(t.requeue, Requeue::OnChange);
    }
}

#[test]
fn condition_timestamps_are_the_given_time() {
    let s = status(ImportPhase::SourceReady, vec![]);
    let t = run(&Decision::MarkPoweredOff, Outcome::Done, &s);
    let c = api::condition::find(&written(&t).import_conditions, &ConditionType::VmPoweredOff).unwrap();
    assert_eq!(
        (c.last_transition_time.as_str(), c.last_update_time.as_str()),
        (NOW, NOW)
    );
}
