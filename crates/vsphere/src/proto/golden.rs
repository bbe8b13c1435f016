//! Golden tests on bodies recorded from the lab's simulator (`tests/data/*_lab.xml`): a VM with EFI,
//! secure boot, vTPM, PVSCSI + NVMe disks and a DVS NIC; the lease it exported (two disks and a
//! `disk=false` NVRAM item); a failed PowerOff task; a ShutdownGuest fault.

use super::{
    FaultKind, response,
    vm::{BusFamily, DeviceKey, Firmware, NetworkInventory, NicNetwork, VmDescription},
};

fn first_object(bytes: &[u8]) -> response::ObjectContent {
    let body = response::body("RetrievePropertiesEx", bytes).unwrap();
    response::retrieve_result("RetrievePropertiesEx", &body)
        .unwrap()
        .objects
        .remove(0)
}

fn lab_vm() -> VmDescription {
    let object = first_object(include_bytes!("../../tests/data/vm_properties_lab_efi_nvme.xml"));
    VmDescription::from_object(&object, &NetworkInventory::default()).unwrap()
}

#[test]
fn lab_vm_description() {
    let vm = lab_vm();
    assert_eq!(vm.name, "rec-vm");
    assert_eq!((vm.num_cpu, vm.num_cores_per_socket, vm.memory_mb), (4, 2, 2048));
    assert_eq!(vm.firmware, Firmware::Efi);
    assert!(vm.secure_boot && vm.vtpm);
    assert_eq!(vm.tools_running_status.as_deref(), Some("guestToolsNotRunning"));
    assert!(!vm.tools_running());
    let disks: Vec<_> = vm
        .disks
        .iter()
        .map(|d| (d.controller.family, d.capacity_bytes, d.unit))
        .collect();
    assert_eq!(
        disks,
        [(BusFamily::Scsi, 8 << 20, 0), (BusFamily::Nvme, 4 << 20, 0)]
    );
    assert_eq!(vm.nics.len(), 1);
    assert_eq!(vm.nics[0].mac_address.as_deref(), Some("00:50:56:aa:bb:09"));
    // Without the network inventory the key is known but not the name: resolution is the client's job.
    assert!(matches!(
        &vm.nics[0].network,
        NicNetwork::Distributed { name: None, portgroup_key, .. } if portgroup_key == "dvportgroup-12"
    ));
}

#[test]
fn lab_lease_maps_disks_and_skips_nvram() {
    let object = first_object(include_bytes!("../../tests/data/lease_state_info_lab.xml"));
    assert_eq!(
        response::lease_state(object.prop("state").unwrap()).unwrap(),
        response::LeaseState::Ready
    );
    let info = response::lease_info(object.prop("info").unwrap()).unwrap();
    assert_eq!(info.lease_timeout_secs, 300);
    assert_eq!(info.device_urls.len(), 3);
    let vm = lab_vm();
    let disk_items: Vec<_> = info.device_urls.iter().filter(|d| d.disk).collect();
    assert_eq!(disk_items.len(), 2);
    let matched: Vec<i32> = disk_items
        .iter()
        .map(|d| {
            DeviceKey::parse(&d.key)
                .unwrap()
                .find_disk(&d.key, &vm.disks)
                .unwrap()
                .key
        })
        .collect();
    assert_eq!(matched, vm.disks.iter().map(|d| d.key).collect::<Vec<_>>());
    let nvram = info.device_urls.iter().find(|d| !d.disk).unwrap();
    assert!(DeviceKey::parse(&nvram.key).is_err(), "{}", nvram.key);
}

#[test]
fn lab_failed_task_and_shutdown_fault() {
    let object = first_object(include_bytes!("../../tests/data/task_info_error_lab.xml"));
    let info = response::task_info(object.prop("info").unwrap()).unwrap();
    assert_eq!(info.state, response::TaskState::Error);
    assert_eq!(
        info.error.unwrap().kind,
        FaultKind::InvalidPowerState {
            requested: Some("poweredOff".into()),
            existing: Some("poweredOff".into())
        }
    );
    let err = response::body(
        "ShutdownGuest",
        include_bytes!("../../tests/data/fault_invalid_power_state_lab.xml"),
    )
    .unwrap_err();
    assert!(
        matches!(
            err.fault().map(|f| &f.kind),
            Some(FaultKind::InvalidPowerState { .. })
        ),
        "{err:?}"
    );
}
