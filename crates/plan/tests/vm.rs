//! The KubeVirt VM and Harvester image builders: upstream's shape, upstream's defects fixed.

use std::collections::BTreeMap;

use api::{DiskBus, NetworkMapping, NicModel, VirtualMachineImportSpec};
use plan::{
    BuildError, ControllerKind, Firmware, SourceDisk, SourceNic, SourceVm,
    image::{self, Backend, ImageInput, Owner},
    vm::{VmInput, build_virtual_machine, cpu_topology, disk_bus},
};
use serde_json::{Value, json};

fn nic(network: &str, switch: Option<&str>, mac: &str, model: Option<NicModel>) -> SourceNic {
    SourceNic {
        model,
        mac: Some(mac.into()),
        network: network.into(),
        switch: switch.map(Into::into),
    }
}

fn disk(controller: ControllerKind, unit: u32) -> SourceDisk {
    SourceDisk {
        controller,
        bus: 0,
        unit,
        capacity_bytes: 1 << 30,
        boot_order: None,
    }
}

/// The reference VM: 8 vCPUs at 8 cores/socket, 4096 MiB, EFI + secure boot + vTPM, SCSI/SATA/NVMe
/// disks, one mapped and one unmapped NIC.
fn reference_vm() -> SourceVm {
    SourceVm {
        name: "Win2022_App".into(),
        cpus: 8,
        cores_per_socket: 8,
        memory_mib: 4096,
        firmware: Firmware::Efi,
        secure_boot: true,
        tpm: true,
        disks: vec![
            disk(ControllerKind::Scsi, 0),
            disk(ControllerKind::Sata, 0),
            disk(ControllerKind::Nvme, 0),
        ],
        nics: vec![
            nic(
                "VM Network",
                Some("DSwitch"),
                "00:50:56:aa:bb:01",
                Some(NicModel::Virtio),
            ),
            nic("Backup", None, "00:50:56:aa:bb:02", Some(NicModel::E1000e)),
        ],
        description: Some("app server".into()),
    }
}

fn reference_spec() -> VirtualMachineImportSpec {
    VirtualMachineImportSpec {
        mapping: vec![NetworkMapping {
            source_network: "DSwitch/VM Network".into(),
            destination_network: "default/vlan1".into(),
            network_interface_model: None,
        }],
        ..VirtualMachineImportSpec::default()
    }
}

fn claims(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("image-{i:05}")).collect()
}

fn build(spec: &VirtualMachineImportSpec, vm: &SourceVm) -> Result<Value, BuildError> {
    let claims = claims(vm.disks.len());
    build_virtual_machine(&VmInput {
        name: "win2022-app",
        namespace: "default",
        spec,
        source: vm,
        claims: &claims,
    })
}

#[test]
fn reference_vm_is_built_field_by_field() {
    let vm = build(&reference_spec(), &reference_vm()).expect("builds");
    assert_eq!(
        vm,
        json!({
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachine",
            "metadata": {
                "name": "win2022-app",
                "namespace": "default",
                "labels": {"migration.harvesterhci.io/imported": "true"},
                "annotations": {"field.cattle.io/description": "app server"},
            },
            "spec": {
                "runStrategy": "RerunOnFailure",
                "template": {
                    "metadata": {"labels": {"harvesterhci.io/vmName": "win2022-app"}},
                    "spec": {
                        "evictionStrategy": "LiveMigrateIfPossible",
                        "domain": {
                            "cpu": {"sockets": 1, "cores": 8, "threads": 1},
                            "memory": {"guest": "4096Mi"},
                            "resources": {"limits": {"cpu": "8", "memory": "4096Mi"}},
                            "features": {"acpi": {"enabled": true}, "smm": {"enabled": true}},
                            "firmware": {"bootloader": {"efi": {"secureBoot": true}}},
                            "devices": {
                                "disks": [
                                    {"name": "disk-0", "bootOrder": 1, "disk": {"bus": "scsi"}},
                                    {"name": "disk-1", "bootOrder": 2, "disk": {"bus": "sata"}},
                                    {"name": "disk-2", "bootOrder": 3, "disk": {"bus": "virtio"}},
                                ],
                                "interfaces": [
                                    {"name": "migrated-0", "model": "virtio",
                                     "macAddress": "00:50:56:aa:bb:01", "bridge": {}},
                                    {"name": "pod-network", "model": "e1000e",
                                     "macAddress": "00:50:56:aa:bb:02", "masquerade": {}},
                                ],
                                "tpm": {},
                            },
                        },
                        "networks": [
                            {"name": "migrated-0", "multus": {"networkName": "default/vlan1"}},
                            {"name": "pod-network", "pod": {}},
                        ],
                        "volumes": [
                            {"name": "disk-0", "persistentVolumeClaim": {"claimName": "image-00000"}},
                            {"name": "disk-1", "persistentVolumeClaim": {"claimName": "image-00001"}},
                            {"name": "disk-2", "persistentVolumeClaim": {"claimName": "image-00002"}},
                        ],
                    },
                },
            },
        })
    );
}

#[test]
fn cpu_topology_is_sockets_times_cores_never_the_upstream_swap() {
    // Regression: harvester/harvester#11410 (8 vCPUs at 8 cores/socket became 64).
    let t = cpu_topology(8, 8).expect("topology");
    assert_eq!((t.sockets, t.cores, t.threads), (1, 8, 1));
    let t = cpu_topology(8, 2).expect("topology");
    assert_eq!((t.sockets, t.cores), (4, 2));
    // No topology from the source (OpenStack, OVA): one core per socket.
    assert_eq!(cpu_topology(4, 0).map(|t| (t.sockets, t.cores)), Ok((4, 1)));
    // A topology that does not divide keeps the vCPU count exact.
    assert_eq!(cpu_topology(6, 4).map(|t| (t.sockets, t.cores)), Ok((6, 1)));
    // More cores per socket than vCPUs.
    assert_eq!(cpu_topology(2, 8).map(|t| (t.sockets, t.cores)), Ok((1, 2)));
    assert_eq!(cpu_topology(0, 1), Err(BuildError::NoCpus));
}

#[test]
fn disk_bus_follows_the_controller_and_falls_back_to_the_default() {
    let default = DiskBus::Scsi;
    let cases = [
        (ControllerKind::Scsi, DiskBus::Scsi),
        (ControllerKind::ParaVirtualScsi, DiskBus::Sata),
        (ControllerKind::Sata, DiskBus::Sata),
        (ControllerKind::Ide, DiskBus::Sata),
        (ControllerKind::Nvme, DiskBus::Virtio),
        (ControllerKind::Virtio, DiskBus::Virtio),
        (ControllerKind::Usb, DiskBus::Usb),
        (ControllerKind::Unknown, DiskBus::Scsi),
    ];
    for (controller, bus) in cases {
        assert_eq!(disk_bus(controller, &default), bus, "{controller:?}");
    }
    let mut spec = reference_spec();
    spec.default_disk_bus_type = Some(DiskBus::Sata);
    let mut vm = reference_vm();
    vm.disks = vec![disk(ControllerKind::Unknown, 0)];
    let built = build(&spec, &vm).expect("builds");
    assert_eq!(
        built.pointer("/spec/template/spec/domain/devices/disks/0/disk/bus"),
        Some(&json!("sata"))
    );
}

#[test]
fn boot_order_follows_the_source_when_it_has_one() {
    let mut vm = reference_vm();
    vm.disks[2].boot_order = Some(1);
    vm.disks[0].boot_order = Some(2);
    let built = build(&reference_spec(), &vm).expect("builds");
    let orders: Vec<_> = (0..3)
        .map(|i| {
            built
                .pointer(&format!("/spec/template/spec/domain/devices/disks/{i}/bootOrder"))
                .cloned()
        })
        .collect();
    assert_eq!(orders, [Some(json!(2)), Some(json!(3)), Some(json!(1))]);
}

#[test]
fn bios_vm_has_no_firmware_block_and_keeps_its_tpm() {
    let mut vm = reference_vm();
    vm.firmware = Firmware::Bios;
    vm.secure_boot = false;
    let built = build(&reference_spec(), &vm).expect("builds");
    let domain = &built["spec"]["template"]["spec"]["domain"];
    assert!(domain.get("firmware").is_none());
    assert_eq!(domain["devices"]["tpm"], json!({}));
    assert_eq!(domain["features"]["smm"], json!({"enabled": true}));
    vm.tpm = false;
    let built = build(&reference_spec(), &vm).expect("builds");
    let domain = &built["spec"]["template"]["spec"]["domain"];
    assert!(domain["devices"].get("tpm").is_none() && domain["features"].get("smm").is_none());
}

#[test]
fn efi_without_secure_boot_needs_no_smm() {
    let mut vm = reference_vm();
    vm.secure_boot = false;
    vm.tpm = false;
    let built = build(&reference_spec(), &vm).expect("builds");
    let domain = &built["spec"]["template"]["spec"]["domain"];
    assert_eq!(
        domain["firmware"],
        json!({"bootloader": {"efi": {"secureBoot": false}}})
    );
    assert!(domain["features"].get("smm").is_none());
}

#[test]
fn mappings_match_by_port_group_name_too_and_pick_the_mapping_model() {
    let mut spec = reference_spec();
    spec.mapping = vec![
        NetworkMapping {
            source_network: "VM Network".into(),
            destination_network: "vlan1".into(),
            network_interface_model: Some(NicModel::E1000),
        },
        NetworkMapping {
            source_network: "Backup".into(),
            destination_network: "vlan2".into(),
            ..Default::default()
        },
    ];
    let built = build(&spec, &reference_vm()).expect("builds");
    let template = &built["spec"]["template"]["spec"];
    assert_eq!(template["domain"]["devices"]["interfaces"][0]["model"], "e1000");
    assert_eq!(template["domain"]["devices"]["interfaces"][1]["model"], "e1000e");
    assert_eq!(
        template["domain"]["devices"]["interfaces"][1]["name"],
        "migrated-1"
    );
    assert_eq!(
        template["networks"][1],
        json!({"name": "migrated-1", "multus": {"networkName": "vlan2"}})
    );
}

#[test]
fn nic_model_falls_back_to_the_default() {
    let mut spec = reference_spec();
    spec.default_network_interface_model = Some(NicModel::Rtl8139);
    let mut vm = reference_vm();
    vm.nics[1].model = None;
    let built = build(&spec, &vm).expect("builds");
    assert_eq!(
        built["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"][1]["model"],
        "rtl8139"
    );
}

#[test]
fn two_unmapped_nics_are_an_error_naming_both() {
    let err = build(&VirtualMachineImportSpec::default(), &reference_vm()).expect_err("refused");
    assert_eq!(
        err.to_string(),
        "2 NICs have no network mapping (only one can use the pod network): \
         VM Network (00:50:56:aa:bb:01), Backup (00:50:56:aa:bb:02)"
    );
    assert_eq!(err.reason(), "UnmappedNetworks");
}

#[test]
fn a_vm_without_nics_gets_the_pod_network() {
    let mut vm = reference_vm();
    vm.nics.clear();
    let built = build(&VirtualMachineImportSpec::default(), &vm).expect("builds");
    let template = &built["spec"]["template"]["spec"];
    assert_eq!(
        template["domain"]["devices"]["interfaces"],
        json!([{"name": "pod-network", "model": "virtio", "masquerade": {}}])
    );
    assert_eq!(template["networks"], json!([{"name": "pod-network", "pod": {}}]));
}

#[test]
fn builder_refuses_impossible_input() {
    let spec = reference_spec();
    let mut vm = reference_vm();
    vm.memory_mib = 0;
    assert_eq!(build(&spec, &vm), Err(BuildError::NoMemory));
    let vm = reference_vm();
    let claims = claims(2);
    let input = VmInput {
        name: "x",
        namespace: "default",
        spec: &spec,
        source: &vm,
        claims: &claims,
    };
    assert_eq!(
        build_virtual_machine(&input),
        Err(BuildError::ClaimCountMismatch { disks: 3, claims: 2 })
    );
}

// ---- VirtualMachineImage ----

fn owner() -> Owner<'static> {
    Owner {
        name: "alpine-export-test",
        namespace: "default",
        uid: "0b6c1b52-6f0a-4f7e-a0a4-5d8b3b7b9c11",
    }
}

#[test]
fn image_is_shaped_as_upstream_with_a_storage_class() {
    let url = image::image_url(None, "disk-0.img");
    let built = image::virtual_machine_image(&ImageInput {
        owner: owner(),
        disk_name: "disk-0.img",
        storage_class: "longhorn-v1",
        backend: Backend::BackingImage,
        url: &url,
        checksum: &"5e".repeat(64),
    });
    assert_eq!(
        built,
        json!({
            "apiVersion": "harvesterhci.io/v1beta1",
            "kind": "VirtualMachineImage",
            "metadata": {
                "generateName": "image-",
                "namespace": "default",
                "ownerReferences": [{"apiVersion": "migration.harvesterhci.io/v1beta1",
                    "kind": "VirtualMachineImport", "name": "alpine-export-test",
                    "uid": "0b6c1b52-6f0a-4f7e-a0a4-5d8b3b7b9c11"}],
                "labels": {
                    "migration.harvesterhci.io/imported": "true",
                    "harvesterhci.io/imageDisplayName":
                        "vm-import-alpine-export-test-disk-0.img",
                },
                "annotations": {"harvesterhci.io/storageClassName": "longhorn-v1"},
            },
            "spec": {
                "displayName": "vm-import-alpine-export-test-disk-0.img",
                "sourceType": "download",
                "url": "http://harvester-vm-import-controller.harvester-system.svc:8080/disk-0.img",
                "checksum": "5e".repeat(64),
                "backend": "backingimage",
                "targetStorageClassName": "longhorn-v1",
            },
        })
    );
}

#[test]
fn image_without_a_storage_class_leaves_backend_to_harvester() {
    let built = image::virtual_machine_image(&ImageInput {
        owner: owner(),
        disk_name: "d.img",
        storage_class: "",
        backend: Backend::Cdi,
        url: "http://x:8080/d.img",
        checksum: "",
    });
    assert!(built["metadata"].get("annotations").is_none());
    assert!(
        built["spec"].get("checksum").is_none(),
        "an unknown checksum is not made up"
    );
    assert!(built["spec"].get("backend").is_none() && built["spec"].get("targetStorageClassName").is_none());
}

#[test]
fn long_display_names_get_cluster_api_hashed_labels() {
    let disk = format!("{}.img", "x".repeat(60));
    let built = image::virtual_machine_image(&ImageInput {
        owner: owner(),
        disk_name: &disk,
        storage_class: "",
        backend: Backend::Cdi,
        url: "http://x:8080/d.img",
        checksum: "",
    });
    let label = built["metadata"]["labels"]["harvesterhci.io/imageDisplayName"]
        .as_str()
        .expect("label");
    assert!(
        label.starts_with("hash_") && label.ends_with("_z") && label.len() <= 63,
        "{label}"
    );
}

#[test]
fn backend_is_backing_image_only_for_longhorn_v1() {
    let params = |engine: Option<&str>| -> BTreeMap<String, String> {
        engine
            .map(|e| ("dataEngine".to_owned(), e.to_owned()))
            .into_iter()
            .collect()
    };
    assert_eq!(
        image::backend_for_storage_class("driver.longhorn.io", &params(Some("v1"))),
        Backend::BackingImage
    );
    assert_eq!(
        image::backend_for_storage_class("driver.longhorn.io", &params(Some("v2"))),
        Backend::Cdi
    );
    assert_eq!(
        image::backend_for_storage_class("driver.longhorn.io", &params(None)),
        Backend::Cdi
    );
    assert_eq!(
        image::backend_for_storage_class("lvm.driver.harvesterhci.io", &params(Some("v1"))),
        Backend::Cdi
    );
}

#[test]
fn image_url_uses_svc_address_when_set() {
    assert_eq!(
        image::image_url(Some("10.0.0.5"), "/tok/d.img"),
        "http://10.0.0.5:8080/tok/d.img"
    );
    assert_eq!(
        image::image_url(Some(""), "d.img"),
        "http://harvester-vm-import-controller.harvester-system.svc:8080/d.img"
    );
    // Ours: an address that names its port keeps it; IPv6 literals are not mistaken for one.
    assert_eq!(
        image::image_url(Some("127.0.0.1:18080"), "d.img"),
        "http://127.0.0.1:18080/d.img"
    );
    assert_eq!(
        image::image_url(Some("[fd00::5]:9000"), "d.img"),
        "http://[fd00::5]:9000/d.img"
    );
    assert_eq!(
        image::image_url(Some("[fd00::5]"), "d.img"),
        "http://[fd00::5]:8080/d.img"
    );
}

#[test]
fn backing_image_claim_is_shaped_as_upstream() {
    let claim = image::backing_image_claim("default", "image-abcde", 10_737_418_240, "longhorn-image-abcde");
    assert_eq!(
        claim,
        json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "image-abcde", "namespace": "default",
                         "annotations": {"harvesterhci.io/imageId": "default/image-abcde"}},
            "spec": {"accessModes": ["ReadWriteMany"], "volumeMode": "Block",
                     "resources": {"requests": {"storage": "10737418240"}},
                     "storageClassName": "longhorn-image-abcde"},
        })
    );
}
