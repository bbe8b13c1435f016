//! Objects shaped by upstream (its documented examples, and statuses the Go controller writes) read
//! into our types and serialise back unchanged.

#![allow(clippy::expect_used, clippy::panic)]

use api::{
    ClusterStatus, ConditionType, DiskBus, ImportPhase, NicModel, OpenstackSource, OvaSource,
    VirtualMachineImport, VmwareSource,
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Value, json};

fn round_trip<T: DeserializeOwned + Serialize>(value: &Value) -> T {
    let typed: T = serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{e}: {value}"));
    let back = serde_json::to_value(&typed).expect("serialise");
    assert_eq!(&back, value, "round trip changed the object");
    typed
}

fn examples() -> Vec<Value> {
    let text = include_str!("fixtures/upstream-examples.yaml");
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| serde::Deserialize::deserialize(doc).expect("example is YAML"))
        .collect()
}

#[test]
fn documented_examples_read_and_round_trip() {
    let examples = examples();
    assert_eq!(examples.len(), 4);
    for example in &examples {
        match example["kind"].as_str() {
            Some("VmwareSource") => {
                let s: VmwareSource = round_trip(example);
                assert_eq!(s.spec.datacenter, "DCO");
            }
            Some("VirtualMachineImport") => {
                let i: VirtualMachineImport = round_trip(example);
                assert_eq!(i.spec.mapping[1].network_interface_model, Some(NicModel::E1000));
                assert_eq!(i.spec.default_disk_bus_type, Some(DiskBus::Scsi));
                assert_eq!(i.spec.skip_preflight_checks, Some(false));
                assert_eq!(i.spec.graceful_shutdown_timeout_seconds(), 30);
            }
            Some("OvaSource") => {
                let o: OvaSource = round_trip(example);
                assert_eq!(o.spec.http_timeout_seconds, Some(300));
            }
            Some("OpenstackSource") => {
                let o: OpenstackSource = round_trip(example);
                assert_eq!(o.spec.upload_image_retry_count, 30);
            }
            other => panic!("unexpected kind {other:?}"),
        }
    }
}

#[test]
fn skip_preflight_checks_is_serialised_as_null_when_unset() {
    let import = VirtualMachineImport::new("x", api::VirtualMachineImportSpec::default());
    let value = serde_json::to_value(&import).expect("serialise");
    assert_eq!(value["spec"]["skipPreflightChecks"], Value::Null);
    assert!(
        value["spec"]
            .as_object()
            .expect("spec")
            .contains_key("skipPreflightChecks")
    );
    // Go's omitempty fields stay out; Go's plain fields are present.
    assert!(value["spec"].get("folder").is_none());
    assert_eq!(value["spec"]["virtualMachineName"], "");
}

fn upstream_status(phase: &str) -> Value {
    json!({
        "importStatus": phase,
        "importedVirtualMachineName": "alpine-export-test",
        "importConditions": [
            {"type": "VMShutdownGuest", "status": "True",
             "lastUpdateTime": "2025-06-01T10:00:00Z", "lastTransitionTime": "2025-06-01T10:00:00Z"},
            {"type": "VMPoweredOff", "status": "True",
             "lastUpdateTime": "2025-06-01T10:00:05Z", "lastTransitionTime": "2025-06-01T10:00:05Z"},
            {"type": "VMExported", "status": "True",
             "lastUpdateTime": "2025-06-01T10:10:00Z", "lastTransitionTime": "2025-06-01T10:10:00Z"}
        ],
        "diskImportStatus": [{
            "diskName": "alpine-export-test-default-disk-0.img",
            "diskSize": 10737418240_i64,
            "diskLocalPath": "/tmp/vm-import-controller",
            "VirtualMachineImage": "image-7kx2p",
            "busType": "scsi",
            "diskConditions": [
                {"type": "VirtualMachineImageSubmitted", "status": "True",
                 "lastUpdateTime": "2025-06-01T10:10:01Z", "lastTransitionTime": "2025-06-01T10:10:01Z"},
                {"type": "VirtualMachineImageReady", "status": "True",
                 "lastUpdateTime": "2025-06-01T10:12:00Z", "lastTransitionTime": "2025-06-01T10:12:00Z"}
            ]
        }]
    })
}

#[test]
fn upstream_statuses_in_every_phase_read_and_round_trip() {
    let phases = [
        ("", ImportPhase::New),
        ("virtualMachineImportValid", ImportPhase::Valid),
        ("virtualMachineImportInvalid", ImportPhase::Invalid),
        ("sourceReady", ImportPhase::SourceReady),
        ("disksExported", ImportPhase::DisksExported),
        ("diskImageSubmitted", ImportPhase::DiskImagesSubmitted),
        ("diskImagesReady", ImportPhase::DiskImagesReady),
        ("diskImageFailed", ImportPhase::DiskImagesFailed),
        ("virtualMachineCreated", ImportPhase::VirtualMachineCreated),
        ("virtualMachineRunning", ImportPhase::VirtualMachineRunning),
        ("VMMigrationFailed", ImportPhase::MigrationFailed),
    ];
    assert_eq!(phases.len(), ImportPhase::KNOWN.len());
    for (wire, phase) in phases {
        let mut status = upstream_status(wire);
        if wire.is_empty() {
            // Go's omitempty drops the empty phase.
            status.as_object_mut().expect("object").remove("importStatus");
        }
        let object = json!({
            "apiVersion": "migration.harvesterhci.io/v1beta1", "kind": "VirtualMachineImport",
            "metadata": {"name": "alpine-export-test", "namespace": "default",
                         "finalizers": [api::names::IMPORT_FINALIZER]},
            "spec": {"virtualMachineName": "alpine-export-test", "skipPreflightChecks": null,
                     "sourceCluster": {"apiVersion": "migration.harvesterhci.io/v1beta1",
                                       "kind": "VmwareSource", "name": "vcsim", "namespace": "default"}},
            "status": status,
        });
        let import: VirtualMachineImport = round_trip(&object);
        let status = import.status.expect("status");
        assert_eq!(status.phase, phase, "{wire}");
        assert_eq!(status.phase.as_str(), wire);
        let disk = &status.disk_import_status[0];
        assert_eq!(disk.virtual_machine_image, "image-7kx2p");
        assert_eq!(disk.bus_type, DiskBus::Scsi);
        assert!(disk.condition_is_true(&ConditionType::ImageReady));
        assert!(status.condition_is_true(&ConditionType::VmExported));
        assert!(!disk.is_exported(), "upstream disks carry no digest of ours");
    }
}

#[test]
fn unknown_strings_and_nulls_are_kept_or_defaulted_not_refused() {
    let object = json!({
        "apiVersion": "migration.harvesterhci.io/v1beta1", "kind": "VirtualMachineImport",
        "metadata": {"name": "x"},
        "spec": {"virtualMachineName": null, "folder": null, "networkMapping": null,
                 "defaultDiskBusType": "ide", "sourceCluster": null, "skipPreflightChecks": null},
        "status": {"importStatus": "someFuturePhase", "diskImportStatus": [{"diskName": "d", "diskSize": 1,
                   "busType": null, "VirtualMachineImage": null}]}
    });
    let import: VirtualMachineImport = serde_json::from_value(object).expect("lenient read");
    assert_eq!(
        import.spec.default_disk_bus_type,
        Some(DiskBus::Other("ide".into()))
    );
    let status = import.status.expect("status");
    assert_eq!(status.phase, ImportPhase::Other("someFuturePhase".into()));
    assert_eq!(
        serde_json::to_value(&status).expect("serialise")["importStatus"],
        "someFuturePhase"
    );
    assert_eq!(status.disk_import_status[0].bus_type, DiskBus::Unspecified);
}

#[test]
fn source_status_strings_round_trip() {
    for (wire, status) in [
        ("clusterReady", ClusterStatus::ClusterReady),
        ("clusterNotReady", ClusterStatus::ClusterNotReady),
    ] {
        let object = json!({
            "apiVersion": "migration.harvesterhci.io/v1beta1", "kind": "VmwareSource",
            "metadata": {"name": "vcsim", "namespace": "default"},
            "spec": {"endpoint": "https://vcsim/sdk", "dc": "DC0",
                     "credentials": {"name": "c", "namespace": "default"}},
            "status": {"status": wire, "conditions": [
                {"type": "ClusterReady", "status": "True", "lastUpdateTime": "2025-06-01T10:00:00Z",
                 "lastTransitionTime": "2025-06-01T10:00:00Z"},
                {"type": "ClusterError", "status": "False", "lastUpdateTime": "2025-06-01T10:00:00Z",
                 "lastTransitionTime": "2025-06-01T10:00:00Z"}]}
        });
        let source: VmwareSource = round_trip(&object);
        assert_eq!(source.status.expect("status").status, status);
    }
}
