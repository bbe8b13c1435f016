//! Every transition of the import state machine, including failures and resume after a restart.

// Test helpers outside #[test] functions fail loudly on purpose.
#![allow(clippy::panic)]

use std::time::Duration;

use api::{
    Condition, ConditionStatus, ConditionType, DiskInfo, ImportPhase, NetworkMapping, Severity,
    VirtualMachineImportSpec, VirtualMachineImportStatus,
};
use k8s_openapi::api::core::v1::ObjectReference;
use plan::{
    Decision, Observed,
    machine::{ExportFact, Fact, Failure, ImageFact, PowerFact, SourceFact, Terminal, VmFact},
    model::{SourceDisk, SourceNic, SourceVm},
    next,
    preflight::PreflightFacts,
};

fn spec() -> VirtualMachineImportSpec {
    VirtualMachineImportSpec {
        source_cluster: ObjectReference {
            api_version: Some("migration.harvesterhci.io/v1beta1".into()),
            kind: Some("VmwareSource".into()),
            name: Some("vcsim".into()),
            namespace: Some("default".into()),
            ..ObjectReference::default()
        },
        virtual_machine_name: "Web_01".into(),
        ..VirtualMachineImportSpec::default()
    }
}

fn status(phase: ImportPhase) -> VirtualMachineImportStatus {
    VirtualMachineImportStatus {
        phase,
        ..VirtualMachineImportStatus::default()
    }
}

fn cond(type_: ConditionType) -> Condition {
    Condition::new(type_, ConditionStatus::True, "2026-01-01T00:00:00Z")
}

fn disk(name: &str, exported: bool) -> DiskInfo {
    DiskInfo {
        name: name.into(),
        virtual_machine_image: String::new(),
        checksum: exported.then(|| "ab".repeat(64)),
        image_submissions: None,
        ..DiskInfo::default()
    }
}

fn with_disks(phase: ImportPhase, disks: Vec<DiskInfo>) -> VirtualMachineImportStatus {
    VirtualMachineImportStatus {
        disk_import_status: disks,
        ..status(phase)
    }
}

fn vm_with_nics(nics: Vec<SourceNic>) -> SourceVm {
    SourceVm {
        name: "Web_01".into(),
        cpus: 2,
        cores_per_socket: 1,
        memory_mib: 1024,
        disks: vec![SourceDisk::default()],
        nics,
        ..SourceVm::default()
    }
}

fn ready_facts() -> PreflightFacts {
    PreflightFacts {
        storage_class_exists: true,
        source_networks: Some(vec!["VM Network".into()]),
        vm: Some(vm_with_nics(vec![SourceNic {
            network: "VM Network".into(),
            ..SourceNic::default()
        }])),
        power_off_supported: true,
        powered_off: false,
        tools_running: true,
        ..PreflightFacts::default()
    }
}

/// Decides with the given per-disk image facts and nothing else observed.
fn next_with_images(
    spec: &VirtualMachineImportSpec,
    status: &VirtualMachineImportStatus,
    images: &[ImageFact],
) -> Decision {
    next(&Observed {
        images: Some(images),
        ..Observed::new(spec, status)
    })
}

fn failure(decision: Decision) -> Failure {
    match decision {
        Decision::Fail(failure) => failure,
        other => panic!("expected a failure, got {other:?}"),
    }
}

// ---- "" (preflight) ----

#[test]
fn new_import_asks_for_the_source_first() {
    let (spec, status) = (spec(), status(ImportPhase::New));
    assert_eq!(
        next(&Observed::new(&spec, &status)),
        Decision::Observe(Fact::Source)
    );
}

#[test]
fn new_import_with_a_wrong_api_version_is_invalid() {
    let mut spec = spec();
    spec.source_cluster.api_version = Some("migration.harvesterhci.io/v1".into());
    let status = status(ImportPhase::New);
    let f = failure(next(&Observed::new(&spec, &status)));
    assert_eq!(
        (f.terminal, f.reason),
        (Terminal::Invalid, "InvalidSourceReference")
    );
}

#[test]
fn new_import_accepts_source_kind_in_any_case_and_refuses_unknown_kinds() {
    let mut spec = spec();
    spec.source_cluster.kind = Some("vmwaresource".into());
    let status = status(ImportPhase::New);
    assert_eq!(
        next(&Observed::new(&spec, &status)),
        Decision::Observe(Fact::Source)
    );
    spec.source_cluster.kind = Some("KvmSource".into());
    assert_eq!(
        failure(next(&Observed::new(&spec, &status))).reason,
        "InvalidSourceReference"
    );
}

#[test]
fn new_import_of_a_missing_source_is_invalid() {
    let (spec, status) = (spec(), status(ImportPhase::New));
    let observed = Observed {
        source: Some(SourceFact::Missing),
        ..Observed::new(&spec, &status)
    };
    let f = failure(next(&observed));
    assert_eq!((f.terminal, f.reason), (Terminal::Invalid, "SourceNotFound"));
}

#[test]
fn new_import_waits_five_seconds_for_a_source_that_is_not_ready() {
    let (spec, status) = (spec(), status(ImportPhase::New));
    let observed = Observed {
        source: Some(SourceFact::NotReady),
        ..Observed::new(&spec, &status)
    };
    assert_eq!(
        next(&observed),
        Decision::Wait {
            reason: "SourceNotReady",
            after: Some(Duration::from_secs(5))
        }
    );
}

#[test]
fn new_import_with_a_ready_source_asks_for_preflight_facts() {
    let (spec, status) = (spec(), status(ImportPhase::New));
    let observed = Observed {
        source: Some(SourceFact::Ready),
        ..Observed::new(&spec, &status)
    };
    assert_eq!(next(&observed), Decision::Observe(Fact::Preflight));
}

#[test]
fn passing_preflight_validates_and_records_notes() {
    let (spec, status, facts) = (spec(), status(ImportPhase::New), ready_facts());
    let observed = Observed {
        source: Some(SourceFact::Ready),
        preflight: Some(&facts),
        ..Observed::new(&spec, &status)
    };
    let Decision::Validated { concerns } = next(&observed) else {
        panic!("not validated")
    };
    let ids: Vec<_> = concerns.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["PodNetwork", "NameSanitized"]);
    assert!(concerns.iter().all(|c| c.severity == Severity::Info));
}

#[test]
fn failing_preflight_is_invalid_with_every_critical_concern_in_status() {
    let mut spec = spec();
    spec.storage_class = "fast".into();
    spec.mapping = vec![
        NetworkMapping {
            source_network: "A".into(),
            destination_network: "a/b/c".into(),
            ..Default::default()
        },
        NetworkMapping {
            source_network: "A".into(),
            destination_network: "vlan1".into(),
            ..Default::default()
        },
    ];
    let mut facts = ready_facts();
    facts.storage_class_exists = false;
    facts.missing_nads = vec!["vlan1".into()];
    facts.tools_running = false;
    let status = status(ImportPhase::New);
    let observed = Observed {
        source: Some(SourceFact::Ready),
        preflight: Some(&facts),
        ..Observed::new(&spec, &status)
    };
    let f = failure(next(&observed));
    assert_eq!((f.terminal, f.reason), (Terminal::Invalid, "PreflightFailed"));
    let critical: Vec<_> = f
        .concerns
        .iter()
        .filter(|c| c.severity == Severity::Critical)
        .map(|c| c.id.as_str())
        .collect();
    assert_eq!(
        critical,
        [
            "StorageClassNotFound",
            "InvalidDestinationNetwork",
            "DuplicateMapping",
            "NetworkAttachmentDefinitionNotFound",
            "SourceNetworkNotFound",
            "SourceNetworkNotFound",
            "GuestShutdownImpossible",
        ]
    );
    assert!(
        f.message.contains("StorageClass \"fast\" does not exist"),
        "{}",
        f.message
    );
}

#[test]
fn skip_preflight_checks_skips_only_the_source_checks() {
    let mut spec = spec();
    spec.skip_preflight_checks = Some(true);
    spec.storage_class = "fast".into();
    let facts = PreflightFacts {
        storage_class_exists: false,
        tools_running: false,
        ..ready_facts()
    };
    let status = status(ImportPhase::New);
    let observed = Observed {
        source: Some(SourceFact::Ready),
        preflight: Some(&facts),
        ..Observed::new(&spec, &status)
    };
    let f = failure(next(&observed));
    let ids: Vec<_> = f.concerns.iter().map(|c| c.id.as_str()).collect();
    assert!(ids.contains(&"StorageClassNotFound"));
    assert!(!ids.contains(&"GuestShutdownImpossible"));
}

#[test]
fn more_than_one_unmapped_nic_fails_preflight_naming_them() {
    let spec = spec();
    let facts = PreflightFacts {
        vm: Some(vm_with_nics(vec![
            SourceNic {
                network: "A".into(),
                mac: Some("00:50:56:00:00:01".into()),
                ..Default::default()
            },
            SourceNic {
                network: "B".into(),
                mac: Some("00:50:56:00:00:02".into()),
                ..Default::default()
            },
        ])),
        source_networks: Some(vec!["A".into(), "B".into()]),
        ..ready_facts()
    };
    let status = status(ImportPhase::New);
    let observed = Observed {
        source: Some(SourceFact::Ready),
        preflight: Some(&facts),
        ..Observed::new(&spec, &status)
    };
    let f = failure(next(&observed));
    let unmapped = f
        .concerns
        .iter()
        .find(|c| c.id == "UnmappedNetworks")
        .expect("concern");
    assert!(
        unmapped.message.contains("A (00:50:56:00:00:01)")
            && unmapped.message.contains("B (00:50:56:00:00:02)")
    );
}

#[test]
fn an_unreadable_source_fails_preflight_with_its_own_reason_not_as_a_missing_vm() {
    let spec = spec();
    let facts = PreflightFacts {
        vm: None,
        source_error: Some("OVA https://files/x.ova: the first member is \"disk.vmdk\"".into()),
        power_off_supported: false,
        powered_off: true,
        ..ready_facts()
    };
    let status = status(ImportPhase::New);
    let observed = Observed {
        source: Some(SourceFact::Ready),
        preflight: Some(&facts),
        ..Observed::new(&spec, &status)
    };
    let f = failure(next(&observed));
    let ids: Vec<_> = f.concerns.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["SourceUnreadable"], "{:?}", f.concerns);
    assert!(f.message.contains("disk.vmdk"), "{}", f.message);
}

#[test]
fn forced_power_off_needs_no_guest_tools() {
    let mut spec = spec();
    spec.force_power_off = Some(true);
    let facts = PreflightFacts {
        tools_running: false,
        ..ready_facts()
    };
    let status = status(ImportPhase::New);
    let observed = Observed {
        source: Some(SourceFact::Ready),
        preflight: Some(&facts),
        ..Observed::new(&spec, &status)
    };
    assert!(matches!(next(&observed), Decision::Validated { .. }));
}

// ---- virtualMachineImportValid (naming) ----

#[test]
fn valid_import_is_named_with_a_sanitised_label_not_refused() {
    let (spec, status) = (spec(), status(ImportPhase::Valid));
    let observed = Observed {
        source: Some(SourceFact::Ready),
        ..Observed::new(&spec, &status)
    };
    let Decision::Named(name) = next(&observed) else {
        panic!("not named")
    };
    assert_eq!((name.name.as_str(), name.changed), ("web-01", true));
}

#[test]
fn valid_import_uses_the_name_the_source_resolved() {
    let mut spec = spec();
    spec.virtual_machine_name = "6f1c1f5e-2c7a-4a8e-9d43-1f0b7c7a2a10".into();
    let status = status(ImportPhase::Valid);
    let observed = Observed {
        source: Some(SourceFact::Ready),
        source_vm_name: Some("DB-Server"),
        ..Observed::new(&spec, &status)
    };
    let Decision::Named(name) = next(&observed) else {
        panic!("not named")
    };
    assert_eq!(name.name, "db-server");
}

#[test]
fn valid_import_whose_source_vanished_fails() {
    let (spec, status) = (spec(), status(ImportPhase::Valid));
    let observed = Observed {
        source: Some(SourceFact::Missing),
        ..Observed::new(&spec, &status)
    };
    let f = failure(next(&observed));
    assert_eq!(
        (f.terminal, f.reason),
        (Terminal::MigrationFailed, "SourceNotFound")
    );
}

// ---- sourceReady (power-off, export) ----

fn source_ready(conditions: Vec<ConditionType>) -> VirtualMachineImportStatus {
    VirtualMachineImportStatus {
        import_conditions: conditions.into_iter().map(cond).collect(),
        ..status(ImportPhase::SourceReady)
    }
}

#[test]
fn running_vm_gets_a_guest_shutdown_request() {
    let (spec, status) = (spec(), source_ready(vec![]));
    assert_eq!(
        next(&Observed::new(&spec, &status)),
        Decision::Observe(Fact::Power)
    );
    let observed = Observed {
        power: Some(PowerFact::On),
        ..Observed::new(&spec, &status)
    };
    assert_eq!(next(&observed), Decision::RequestShutdown);
}

#[test]
fn force_power_off_skips_the_guest_shutdown() {
    let mut spec = spec();
    spec.force_power_off = Some(true);
    let status = source_ready(vec![]);
    let observed = Observed {
        power: Some(PowerFact::On),
        ..Observed::new(&spec, &status)
    };
    assert_eq!(next(&observed), Decision::ForcePowerOff);
}

#[test]
fn guest_shutdown_is_polled_until_the_timeout_then_forced() {
    let mut spec = spec();
    spec.graceful_shutdown_timeout_seconds = 30;
    let status = source_ready(vec![ConditionType::VmShutdownGuest]);
    let at = |secs| Observed {
        power: Some(PowerFact::On),
        since_shutdown_request: Some(Duration::from_secs(secs)),
        ..Observed::new(&spec, &status)
    };
    assert_eq!(
        next(&at(29)),
        Decision::Wait {
            reason: "ShuttingDown",
            after: Some(Duration::from_secs(5))
        }
    );
    assert_eq!(next(&at(30)), Decision::ForcePowerOff);
}

#[test]
fn default_graceful_timeout_is_sixty_seconds() {
    let spec = spec();
    let status = source_ready(vec![ConditionType::VmShutdownGuest]);
    let at = |secs| Observed {
        power: Some(PowerFact::On),
        since_shutdown_request: Some(Duration::from_secs(secs)),
        ..Observed::new(&spec, &status)
    };
    assert!(matches!(next(&at(59)), Decision::Wait { .. }));
    assert_eq!(next(&at(60)), Decision::ForcePowerOff);
}

#[test]
fn a_requested_hard_power_off_is_polled() {
    let (spec, status) = (
        spec(),
        source_ready(vec![ConditionType::VmShutdownGuest, ConditionType::VmPoweringOff]),
    );
    let observed = Observed {
        power: Some(PowerFact::On),
        ..Observed::new(&spec, &status)
    };
    assert_eq!(
        next(&observed),
        Decision::Wait {
            reason: "PoweringOff",
            after: Some(Duration::from_secs(5))
        }
    );
}

#[test]
fn an_off_vm_is_marked_powered_off() {
    let (spec, status) = (spec(), source_ready(vec![ConditionType::VmShutdownGuest]));
    let observed = Observed {
        power: Some(PowerFact::Off),
        ..Observed::new(&spec, &status)
    };
    assert_eq!(next(&observed), Decision::MarkPoweredOff);
}

#[test]
fn powered_off_vm_records_its_disks_then_exports_every_one() {
    let (spec, status) = (spec(), source_ready(vec![ConditionType::VmPoweredOff]));
    assert_eq!(
        next(&Observed::new(&spec, &status)),
        Decision::Observe(Fact::Export)
    );
    let observed = Observed {
        export: Some(ExportFact::Idle),
        ..Observed::new(&spec, &status)
    };
    assert_eq!(next(&observed), Decision::RecordDisks, "names first, bytes after");

    let mut status = status;
    status.disk_import_status = vec![disk("d0.img", false), disk("d1.img", false)];
    let observed = Observed {
        export: Some(ExportFact::Idle),
        ..Observed::new(&spec, &status)
    };
    assert_eq!(next(&observed), Decision::Observe(Fact::ExportedFiles));
    let observed = Observed {
        exported_files: Some(&[false, false]),
        ..observed
    };
    assert_eq!(next(&observed), Decision::StartExport { skip: vec![] });
}

#[test]
fn restarted_export_skips_disks_that_were_finished() {
    let spec = spec();
    let mut status = source_ready(vec![ConditionType::VmPoweredOff]);
    status.disk_import_status = vec![disk("d0.img", true), disk("d1.img", false), disk("d2.img", true)];
    let observed = Observed {
        export: Some(ExportFact::Idle),
        exported_files: Some(&[true, false, true]),
        ..Observed::new(&spec, &status)
    };
    assert_eq!(next(&observed), Decision::StartExport { skip: vec![0, 2] });
}

#[test]
fn restart_after_every_disk_finished_does_not_export_again() {
    let spec = spec();
    let mut status = source_ready(vec![ConditionType::VmPoweredOff]);
    status.disk_import_status = vec![disk("d0.img", true), disk("d1.img", true)];
    let observed = Observed {
        export: Some(ExportFact::Idle),
        exported_files: Some(&[true, true]),
        ..Observed::new(&spec, &status)
    };
    assert_eq!(next(&observed), Decision::Exported);
}

#[test]
fn an_exported_disk_whose_file_is_gone_is_exported_again() {
    let spec = spec();
    let mut status = source_ready(vec![ConditionType::VmPoweredOff]);
    status.disk_import_status = vec![disk("d0.img", true), disk("d1.img", true), disk("d2.img", false)];
    // The files of an export that never finished are not expected to be there.
    let observed = Observed {
        export: Some(ExportFact::Idle),
        exported_files: Some(&[true, false, false]),
        ..Observed::new(&spec, &status)
    };
    assert_eq!(next(&observed), Decision::ForgetLostImages { disks: vec![1] });
    // A fact for other disks than the status holds is gathered again.
    let observed = Observed {
        exported_files: Some(&[true]),
        ..observed
    };
    assert_eq!(next(&observed), Decision::Observe(Fact::ExportedFiles));
}

#[test]
fn a_running_export_is_left_alone() {
    let (spec, status) = (spec(), source_ready(vec![ConditionType::VmPoweredOff]));
    let observed = Observed {
        export: Some(ExportFact::Running),
        ..Observed::new(&spec, &status)
    };
    assert_eq!(
        next(&observed),
        Decision::Wait {
            reason: "Exporting",
            after: None
        }
    );
}

#[test]
fn a_finished_export_moves_on() {
    let (spec, status) = (spec(), source_ready(vec![ConditionType::VmPoweredOff]));
    let observed = Observed {
        export: Some(ExportFact::Succeeded),
        ..Observed::new(&spec, &status)
    };
    assert_eq!(next(&observed), Decision::Exported);
}

#[test]
fn a_failed_export_fails_the_import_with_upstreams_condition() {
    let (spec, status) = (spec(), source_ready(vec![ConditionType::VmPoweredOff]));
    let observed = Observed {
        export: Some(ExportFact::Failed {
            reason: None,
            message: "lease aborted".into(),
        }),
        ..Observed::new(&spec, &status)
    };
    let f = failure(next(&observed));
    assert_eq!(
        (f.terminal, f.reason),
        (Terminal::MigrationFailed, "ExportFailed")
    );
    assert_eq!(f.condition, Some(ConditionType::VmExportFailed));
    assert_eq!(f.message, "error exporting VM: lease aborted");
}

#[test]
fn an_export_the_source_refused_fails_with_the_sources_reason() {
    let (spec, status) = (spec(), source_ready(vec![ConditionType::VmPoweredOff]));
    let observed = Observed {
        export: Some(ExportFact::Failed {
            reason: Some("TokenExpired"),
            message: "logging in again: the password is wrong".into(),
        }),
        ..Observed::new(&spec, &status)
    };
    let f = failure(next(&observed));
    assert_eq!(
        (f.terminal, f.reason),
        (Terminal::MigrationFailed, "TokenExpired")
    );
    assert_eq!(f.condition, Some(ConditionType::VmExportFailed));
}

#[test]
fn upstream_objects_resume_from_their_export_conditions() {
    let spec = spec();
    let exported = source_ready(vec![ConditionType::VmPoweredOff, ConditionType::VmExported]);
    assert_eq!(next(&Observed::new(&spec, &exported)), Decision::Exported);
    let failed = source_ready(vec![ConditionType::VmPoweredOff, ConditionType::VmExportFailed]);
    assert_eq!(
        failure(next(&Observed::new(&spec, &failed))).reason,
        "ExportFailed"
    );
}

// ---- disksExported / diskImageSubmitted / diskImageFailed ----

#[test]
fn an_export_without_disks_is_invalid() {
    let (spec, status) = (spec(), status(ImportPhase::DisksExported));
    let f = failure(next(&Observed::new(&spec, &status)));
    assert_eq!((f.terminal, f.reason), (Terminal::Invalid, "NoDisks"));
}

#[test]
fn exported_disks_get_images_submitted_for_those_without_one() {
    let spec = spec();
    let status = with_disks(ImportPhase::DisksExported, vec![disk("a", true), disk("b", true)]);
    assert_eq!(
        next(&Observed::new(&spec, &status)),
        Decision::Observe(Fact::Images)
    );
    let images = [ImageFact::Pending, ImageFact::Absent];
    assert_eq!(
        next_with_images(&spec, &status, &images),
        Decision::SubmitImages { disks: vec![1] }
    );
    let images = [ImageFact::Pending, ImageFact::Pending];
    assert_eq!(
        next_with_images(&spec, &status, &images),
        Decision::ImagesSubmitted
    );
}

#[test]
fn image_facts_must_cover_every_disk() {
    let spec = spec();
    let status = with_disks(
        ImportPhase::DiskImagesSubmitted,
        vec![disk("a", true), disk("b", true)],
    );
    let images = [ImageFact::Ready];
    assert_eq!(
        next_with_images(&spec, &status, &images),
        Decision::Observe(Fact::Images)
    );
}

#[test]
fn submitted_images_wait_until_all_are_imported() {
    let spec = spec();
    let status = with_disks(
        ImportPhase::DiskImagesSubmitted,
        vec![disk("a", true), disk("b", true)],
    );
    let images = [ImageFact::Ready, ImageFact::Pending];
    assert_eq!(
        next_with_images(&spec, &status, &images),
        Decision::Wait {
            reason: "ImagesImporting",
            after: None
        }
    );
    let images = [ImageFact::Ready, ImageFact::Ready];
    assert_eq!(next_with_images(&spec, &status, &images), Decision::ImagesReady);
}

#[test]
fn a_failed_image_is_acted_on_whatever_the_disk_order() {
    // Upstream's counting depends on the order; [pending, failed] and [failed, pending] must agree.
    let spec = spec();
    let status = with_disks(
        ImportPhase::DiskImagesSubmitted,
        vec![disk("a", true), disk("b", true)],
    );
    for (images, failed) in [
        ([ImageFact::Pending, ImageFact::Failed { message: "x".into() }], 1),
        ([ImageFact::Failed { message: "x".into() }, ImageFact::Pending], 0),
    ] {
        assert_eq!(
            next_with_images(&spec, &status, &images),
            Decision::ImagesFailed { disks: vec![failed] }
        );
    }
}

#[test]
fn a_deleted_image_is_submitted_again() {
    let spec = spec();
    let mut status = with_disks(ImportPhase::DiskImagesSubmitted, vec![disk("a", true)]);
    status.disk_import_status[0].virtual_machine_image = "image-abcde".into();
    status.disk_import_status[0].image_submissions = Some(1);
    let images = [ImageFact::Absent];
    assert_eq!(
        next_with_images(&spec, &status, &images),
        Decision::SubmitImages { disks: vec![0] }
    );
}

#[test]
fn failed_images_are_resubmitted_with_a_new_download() {
    let spec = spec();
    let mut status = with_disks(
        ImportPhase::DiskImagesFailed,
        vec![disk("a", true), disk("b", true)],
    );
    status.disk_import_status[1].disk_conditions = vec![cond(ConditionType::ImageFailed)];
    status.disk_import_status[1].image_submissions = Some(1);
    let images = [
        ImageFact::Ready,
        ImageFact::Failed {
            message: "checksum".into(),
        },
    ];
    assert_eq!(
        next_with_images(&spec, &status, &images),
        Decision::ResubmitImages { disks: vec![1] }
    );
}

#[test]
fn images_that_keep_failing_fail_the_import() {
    let spec = spec();
    let mut status = with_disks(ImportPhase::DiskImagesFailed, vec![disk("a", true)]);
    status.disk_import_status[0].disk_conditions = vec![cond(ConditionType::ImageFailed)];
    status.disk_import_status[0].image_submissions = Some(plan::machine::MAX_IMAGE_SUBMISSIONS);
    let images = [ImageFact::Failed {
        message: "404".into(),
    }];
    let f = failure(next_with_images(&spec, &status, &images));
    assert_eq!(
        (f.terminal, f.reason),
        (Terminal::MigrationFailed, "ImageImportFailed")
    );
    assert!(f.message.contains("404"));
}

#[test]
fn image_failed_phase_without_failed_disks_goes_back_to_submitted() {
    let spec = spec();
    let status = with_disks(ImportPhase::DiskImagesFailed, vec![disk("a", true)]);
    let images = [ImageFact::Pending];
    assert_eq!(
        next_with_images(&spec, &status, &images),
        Decision::ImagesSubmitted
    );
}

// ---- VM creation and readiness ----

#[test]
fn ready_images_create_the_vm_unless_it_exists() {
    let spec = spec();
    let status = status(ImportPhase::DiskImagesReady);
    assert_eq!(
        next(&Observed::new(&spec, &status)),
        Decision::Observe(Fact::VirtualMachine)
    );
    let at = |vm| Observed {
        vm: Some(vm),
        ..Observed::new(&spec, &status)
    };
    assert_eq!(next(&at(VmFact::Absent)), Decision::CreateVirtualMachine);
    assert_eq!(
        next(&at(VmFact::Ours { ready: false })),
        Decision::VirtualMachineCreated
    );
    let f = failure(next(&at(VmFact::Foreign)));
    assert_eq!(
        (f.terminal, f.reason),
        (Terminal::MigrationFailed, "VirtualMachineNameTaken")
    );
}

#[test]
fn created_vm_is_polled_until_ready_and_recreated_if_deleted() {
    let spec = spec();
    let status = status(ImportPhase::VirtualMachineCreated);
    let at = |vm| Observed {
        vm: Some(vm),
        ..Observed::new(&spec, &status)
    };
    assert_eq!(next(&at(VmFact::Ours { ready: true })), Decision::Running);
    assert_eq!(
        next(&at(VmFact::Ours { ready: false })),
        Decision::Wait {
            reason: "VirtualMachineStarting",
            after: Some(Duration::from_secs(120))
        }
    );
    assert_eq!(next(&at(VmFact::Absent)), Decision::CreateVirtualMachine);
    assert_eq!(
        failure(next(&at(VmFact::Foreign))).reason,
        "VirtualMachineNameTaken"
    );
}

// ---- terminal phases, deletion, unknown phases ----

#[test]
fn running_import_tidies_up_once() {
    let spec = spec();
    let status = status(ImportPhase::VirtualMachineRunning);
    assert_eq!(
        next(&Observed::new(&spec, &status)),
        Decision::Observe(Fact::Leftovers)
    );
    let at = |leftovers| Observed {
        leftovers: Some(leftovers),
        ..Observed::new(&spec, &status)
    };
    assert_eq!(next(&at(true)), Decision::TidyUp);
    assert_eq!(next(&at(false)), Decision::Done);
}

#[test]
fn failed_import_cleans_its_files_and_stays_failed() {
    let spec = spec();
    let status = status(ImportPhase::MigrationFailed);
    let at = |leftovers| Observed {
        leftovers: Some(leftovers),
        ..Observed::new(&spec, &status)
    };
    assert_eq!(next(&at(true)), Decision::CleanUp);
    assert_eq!(next(&at(false)), Decision::Done);
}

#[test]
fn invalid_import_is_terminal() {
    let (spec, status) = (spec(), status(ImportPhase::Invalid));
    assert_eq!(next(&Observed::new(&spec, &status)), Decision::Done);
}

#[test]
fn deletion_finalizes_in_every_phase() {
    let spec = spec();
    for phase in ImportPhase::KNOWN.iter().map(|s| ImportPhase::parse(s)) {
        let status = status(phase);
        let observed = Observed {
            deleting: true,
            ..Observed::new(&spec, &status)
        };
        assert_eq!(next(&observed), Decision::Finalize);
    }
}

#[test]
fn an_unknown_phase_is_left_alone() {
    let spec = spec();
    let status = status(ImportPhase::Other("someFuturePhase".into()));
    assert_eq!(
        next(&Observed::new(&spec, &status)),
        Decision::Wait {
            reason: "UnknownImportStatus",
            after: None
        }
    );
}

#[test]
fn decisions_name_a_pascal_case_reason() {
    let (spec, status) = (spec(), source_ready(vec![ConditionType::VmPoweredOff]));
    let observed = Observed {
        export: Some(ExportFact::Failed {
            reason: None,
            message: "x".into(),
        }),
        ..Observed::new(&spec, &status)
    };
    assert_eq!(next(&observed).reason(), "ExportFailed");
    assert_eq!(Decision::StartExport { skip: vec![] }.reason(), "ExportStarted");
    assert_eq!(
        Decision::Wait {
            reason: "SourceNotReady",
            after: None
        }
        .reason(),
        "SourceNotReady"
    );
}
