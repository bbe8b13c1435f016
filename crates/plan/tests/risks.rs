//! The migration-risk rules, one test per rule, through `preflight::check` as the controller calls it.

use api::{Concern, NetworkMapping, NicModel, Severity, VirtualMachineImportSpec};
use plan::{
    model::{ControllerKind, Firmware, SourceDisk, SourceNic, SourceVm},
    preflight::{PreflightFacts, check},
    risks::{
        CdromRisk, DiskRisk, GuestFamily, NicRisk, Probe, ProbeOutcome, ProbeRole, RiskFacts, Scratch,
        TargetVm, VmRisk,
    },
};

const MIB: u64 = 1 << 20;

fn spec() -> VirtualMachineImportSpec {
    VirtualMachineImportSpec {
        virtual_machine_name: "clean".into(),
        mapping: vec![NetworkMapping {
            source_network: "VM Network".into(),
            destination_network: "default/vlan1".into(),
            network_interface_model: None,
        }],
        ..VirtualMachineImportSpec::default()
    }
}

/// A VM that triggers no rule: BIOS Linux, hardware vmx-19, one vmxnet3 NIC, one LSI disk.
fn clean() -> (SourceVm, VmRisk) {
    let vm = SourceVm {
        name: "clean".into(),
        cpus: 2,
        cores_per_socket: 1,
        memory_mib: 1024,
        disks: vec![SourceDisk {
            controller: ControllerKind::Scsi,
            capacity_bytes: 8 * MIB,
            ..SourceDisk::default()
        }],
        nics: vec![SourceNic {
            model: Some(NicModel::Virtio),
            mac: Some("00:50:56:00:00:01".into()),
            network: "VM Network".into(),
            switch: None,
        }],
        ..SourceVm::default()
    };
    let risk = VmRisk {
        hardware_version: Some(19),
        guest_id: Some("rhel9_64Guest".into()),
        guest_name: Some("Red Hat Enterprise Linux 9 (64-bit)".into()),
        disks: vec![DiskRisk {
            label: "Hard disk 1".into(),
            controller: ControllerKind::Scsi,
            controller_class: "VirtualLsiLogicController".into(),
            provisioned_bytes: 8 * MIB,
            allocated_bytes: Some(2 * MIB),
            ..DiskRisk::default()
        }],
        nics: vec![NicRisk {
            label: "Network adapter 1".into(),
            device_type: "VirtualVmxnet3".into(),
        }],
        ..VmRisk::default()
    };
    (vm, risk)
}

fn facts(vm: SourceVm, risk: VmRisk) -> PreflightFacts {
    PreflightFacts {
        storage_class_exists: true,
        source_networks: Some(vec!["VM Network".into()]),
        vm: Some(vm),
        power_off_supported: true,
        powered_off: true,
        risks: RiskFacts {
            vm: Some(risk),
            namespace_vms: Some(vec![TargetVm {
                name: "other".into(),
                macs: vec!["00:50:56:00:00:99".into()],
            }]),
            target_name: "clean".into(),
            scratch: Some(Scratch {
                dir: "/images".into(),
                free_bytes: 100 * MIB,
                reserved_bytes: 0,
            }),
            probes: vec![
                probe(ProbeRole::Vcenter, "vc", 443, ProbeOutcome::Open),
                probe(ProbeRole::Esxi, "esx1", 443, ProbeOutcome::Open),
                probe(ProbeRole::Esxi, "esx1", 902, ProbeOutcome::Open),
            ],
            ..RiskFacts::default()
        },
        ..PreflightFacts::default()
    }
}

fn probe(role: ProbeRole, host: &str, port: u16, outcome: ProbeOutcome) -> Probe {
    Probe {
        role,
        host: host.into(),
        port,
        outcome,
    }
}

fn run(f: impl FnOnce(&mut SourceVm, &mut VmRisk, &mut RiskFacts)) -> Vec<Concern> {
    run_spec(&spec(), f)
}

fn run_spec(
    spec: &VirtualMachineImportSpec,
    f: impl FnOnce(&mut SourceVm, &mut VmRisk, &mut RiskFacts),
) -> Vec<Concern> {
    let (mut vm, mut risk) = clean();
    let mut facts = facts(SourceVm::default(), VmRisk::default());
    f(&mut vm, &mut risk, &mut facts.risks);
    facts.vm = Some(vm);
    facts.risks.vm = Some(risk);
    check(spec, &facts)
}

/// The (id, severity) pairs, to compare exactly: each rule fires alone.
fn ids(concerns: &[Concern]) -> Vec<(&str, Severity)> {
    concerns
        .iter()
        .map(|c| (c.id.as_str(), c.severity.clone()))
        .collect()
}

fn only(concerns: &[Concern], id: &str, severity: Severity, mentions: &str) {
    assert_eq!(ids(concerns), vec![(id, severity)], "{concerns:#?}");
    assert!(
        concerns[0].message.contains(mentions),
        "{:?} should mention {mentions:?}",
        concerns[0].message
    );
    if concerns[0].severity != Severity::Info {
        assert!(!concerns[0].remedy.is_empty(), "{id} has no remedy");
    }
}

#[test]
fn a_clean_vm_triggers_nothing() {
    let concerns = run(|_, _, _| {});
    assert!(concerns.is_empty(), "{concerns:#?}");
}

#[test]
fn hardware_versions_outside_the_known_range() {
    only(
        &run(|_, r, _| r.hardware_version = Some(4)),
        "HardwareVersionTooOld",
        Severity::Critical,
        "vmx-04",
    );
    only(
        &run(|_, r, _| r.hardware_version = Some(22)),
        "HardwareVersionUnknown",
        Severity::Warning,
        "vmx-22",
    );
    only(
        &run(|_, r, _| r.hardware_version = None),
        "HardwareVersionUnknown",
        Severity::Warning,
        "did not report",
    );
    assert!(run(|_, r, _| r.hardware_version = Some(7)).is_empty());
    assert!(run(|_, r, _| r.hardware_version = Some(21)).is_empty());
}

#[test]
fn guest_families() {
    assert_eq!(GuestFamily::of("windows2019srv_64Guest"), GuestFamily::Windows);
    assert_eq!(GuestFamily::of("ubuntu64Guest"), GuestFamily::Linux);
    assert_eq!(GuestFamily::of("otherGuest64"), GuestFamily::Other);
    only(
        &run(|_, r, _| {
            r.guest_id = Some("otherGuest64".into());
            r.guest_name = Some("Other (64-bit)".into());
        }),
        "GuestOs",
        Severity::Info,
        "otherGuest64",
    );
}

#[test]
fn windows_with_vmxnet3_nvme_and_pvscsi_is_told_what_the_import_maps_them_to() {
    let concerns = run(|_, r, _| {
        r.guest_id = Some("windows2019srv_64Guest".into());
        r.disks.push(DiskRisk {
            label: "Hard disk 2".into(),
            controller: ControllerKind::Nvme,
            controller_class: "VirtualNVMEController".into(),
            ..DiskRisk::default()
        });
        r.disks.push(DiskRisk {
            label: "Hard disk 3".into(),
            controller: ControllerKind::ParaVirtualScsi,
            controller_class: "ParaVirtualSCSIController".into(),
            ..DiskRisk::default()
        });
    });
    assert_eq!(
        ids(&concerns),
        vec![
            ("WindowsNeedsVirtioDrivers", Severity::Warning),
            ("WindowsNeedsVirtioDrivers", Severity::Warning),
            ("WindowsNeedsAhci", Severity::Info),
        ]
    );
    assert!(
        concerns[0]
            .message
            .contains("Network adapter 1 is VirtualVmxnet3")
    );
    assert!(concerns[0].message.contains("virtio-net"));
    assert!(concerns[1].message.contains("Hard disk 2"));
    assert!(concerns[1].message.contains("virtio bus"));
    assert!(concerns[2].message.contains("Hard disk 3"));
    assert!(concerns[2].message.contains("SATA"));
    // The same devices on Linux are fine.
    assert!(
        run(|_, r, _| r.disks[0].controller = ControllerKind::Nvme).is_empty(),
        "Linux has virtio drivers"
    );
}

#[test]
fn e1000_only_guests() {
    only(
        &run(|vm, _, _| vm.nics[0].model = Some(NicModel::E1000)),
        "EmulatedNicsOnly",
        Severity::Info,
        "e1000",
    );
}

#[test]
fn graceful_shutdown_without_tools() {
    let (vm, risk) = clean();
    let mut f = facts(vm, risk);
    f.powered_off = false;
    f.tools_running = false;
    only(
        &check(&spec(), &f),
        "GuestShutdownImpossible",
        Severity::Critical,
        "guest tools",
    );
}

#[test]
fn snapshots_independent_rdm_shared_encrypted_and_odd_controllers() {
    only(
        &run(|_, r, _| r.snapshots = true),
        "SnapshotsPresent",
        Severity::Warning,
        "snapshots",
    );
    only(
        &run(|_, r, _| r.disks[0].independent = true),
        "IndependentDisk",
        Severity::Warning,
        "Hard disk 1",
    );
    only(
        &run(|_, r, _| r.disks[0].rdm = Some("physicalMode".into())),
        "RawDeviceMapping",
        Severity::Critical,
        "Hard disk 1",
    );
    only(
        &run(|_, r, _| r.disks[0].rdm = Some("virtualMode".into())),
        "RawDeviceMapping",
        Severity::Warning,
        "virtualMode",
    );
    only(
        &run(|_, r, _| r.disks[0].shared = true),
        "SharedDisk",
        Severity::Warning,
        "Hard disk 1",
    );
    only(
        &run(|_, r, _| r.encrypted = true),
        "EncryptedVm",
        Severity::Critical,
        "encrypted",
    );
    only(
        &run(|_, r, _| {
            r.disks[0].controller = ControllerKind::Usb;
            r.disks[0].controller_class = "VirtualUSBController".into();
        }),
        "UnsupportedController",
        Severity::Critical,
        "VirtualUSBController",
    );
}

#[test]
fn vtpm_efi_secure_boot_and_cdroms() {
    only(
        &run(|vm, _, _| vm.tpm = true),
        "VtpmStateNotCarried",
        Severity::Warning,
        "vTPM",
    );
    only(
        &run(|vm, _, _| vm.firmware = Firmware::Efi),
        "EfiFirmware",
        Severity::Info,
        "EFI",
    );
    only(
        &run(|vm, _, _| {
            vm.firmware = Firmware::Efi;
            vm.secure_boot = true;
        }),
        "SecureBootNeedsSmm",
        Severity::Info,
        "SMM",
    );
    only(
        &run(|_, r, _| {
            r.cdroms.push(CdromRisk {
                label: "CD/DVD drive 1".into(),
                iso: Some("[LocalDS_0] iso/tools.iso".into()),
                connected: false,
            })
        }),
        "CdromNotCarried",
        Severity::Warning,
        "[LocalDS_0] iso/tools.iso",
    );
    assert!(
        run(|_, r, _| r.cdroms.push(CdromRisk {
            label: "CD/DVD drive 1".into(),
            ..CdromRisk::default()
        }))
        .is_empty(),
        "an empty, disconnected drive is harmless"
    );
}

#[test]
fn duplicate_macs_and_name_collisions_in_the_namespace() {
    only(
        &run(|_, _, f| {
            f.namespace_vms = Some(vec![TargetVm {
                name: "other".into(),
                macs: vec!["00:50:56:00:00:01".to_uppercase()],
            }])
        }),
        "DuplicateMac",
        Severity::Critical,
        "00:50:56:00:00:01",
    );
    only(
        &run(|_, _, f| {
            f.namespace_vms = Some(vec![TargetVm {
                name: "clean".into(),
                macs: vec![],
            }])
        }),
        "VirtualMachineExists",
        Severity::Critical,
        "\"clean\"",
    );
}

#[test]
fn scratch_space_counts_allocated_bytes() {
    // 2 MiB allocated of 8 MiB provisioned: 3 MiB free is enough, 1 MiB is not.
    assert!(
        run(|_, _, f| f.scratch.as_mut().unwrap().free_bytes = 3 * MIB).is_empty(),
        "allocated bytes fit"
    );
    only(
        &run(|_, _, f| f.scratch.as_mut().unwrap().free_bytes = MIB),
        "ScratchSpaceLow",
        Severity::Critical,
        "/images",
    );
    // Unknown allocation counts the whole disk.
    only(
        &run(|_, r, f| {
            r.disks[0].allocated_bytes = None;
            f.scratch.as_mut().unwrap().free_bytes = 3 * MIB;
        }),
        "ScratchSpaceLow",
        Severity::Critical,
        "8388608 bytes",
    );
    // The reserve the admin keeps free is not for imports: 3 MiB free less 2 MiB kept is too little.
    only(
        &run(|_, _, f| {
            let space = f.scratch.as_mut().unwrap();
            space.free_bytes = 3 * MIB;
            space.reserved_bytes = 2 * MIB;
        }),
        "ScratchSpaceLow",
        Severity::Critical,
        "2.0 MiB are kept in reserve",
    );
}

#[test]
fn unreachable_ports_name_the_host_and_port() {
    only(
        &run(|_, _, f| {
            f.probes[2].outcome = ProbeOutcome::Failed("connection refused".into());
        }),
        "HostPortUnreachable",
        Severity::Critical,
        "ESXi host esx1 port 902: connection refused",
    );
    only(
        &run(|_, _, f| {
            f.probes[0].outcome = ProbeOutcome::Failed("timed out after 3s".into());
        }),
        "VcenterUnreachable",
        Severity::Critical,
        "vCenter vc port 443",
    );
    only(
        &run(|_, _, f| {
            f.probes[1].outcome = ProbeOutcome::Unresolved("no such host".into());
        }),
        "HostUnresolved",
        Severity::Warning,
        "esx1",
    );
}

#[test]
fn skip_preflight_checks_downgrades_risks_visibly_but_not_configuration_errors() {
    let mut spec = spec();
    spec.skip_preflight_checks = Some(true);
    spec.storage_class = "missing".into();
    let (vm, mut risk) = clean();
    risk.encrypted = true;
    let mut f = facts(vm, risk);
    f.storage_class_exists = false;
    let concerns = check(&spec, &f);
    assert_eq!(
        ids(&concerns),
        vec![
            ("StorageClassNotFound", Severity::Critical),
            ("EncryptedVm", Severity::Warning),
        ]
    );
    assert!(
        concerns[1]
            .message
            .starts_with("downgraded from Critical by skipPreflightChecks: "),
        "{}",
        concerns[1].message
    );
}
