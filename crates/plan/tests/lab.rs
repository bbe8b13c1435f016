//! The built objects against the lab's kube-apiserver, which serves the real KubeVirt and Harvester
//! CRDs with their real schemas: what the builders produce, the real peers accept.

// Test helpers outside #[test] functions fail loudly on purpose.
#![allow(clippy::expect_used, clippy::panic)]

use api::{NetworkMapping, NicModel, VirtualMachineImportSpec};
use kube::{
    Api, Client,
    api::{DeleteParams, DynamicObject, PostParams},
    core::{ApiResource, GroupVersionKind},
};
use plan::{
    ControllerKind, Firmware, SourceDisk, SourceNic, SourceVm,
    image::{self, Backend, ImageInput, Owner},
    vm::{VmInput, build_virtual_machine},
};
use test_support::Lab;

fn api(client: &Client, group: &str, version: &str, kind: &str, plural: &str) -> Api<DynamicObject> {
    let resource = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
    Api::namespaced_with(client.clone(), "default", &resource)
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .subsec_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

fn reference_vm() -> SourceVm {
    let disk = |controller, unit| SourceDisk {
        controller,
        bus: 0,
        unit,
        capacity_bytes: 1 << 30,
        boot_order: None,
    };
    SourceVm {
        name: "Lab VM".into(),
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
            SourceNic {
                model: Some(NicModel::Virtio),
                mac: Some("00:50:56:aa:bb:01".into()),
                network: "VM Network".into(),
                switch: Some("DSwitch".into()),
            },
            SourceNic {
                model: Some(NicModel::E1000e),
                mac: Some("00:50:56:aa:bb:02".into()),
                network: "Backup".into(),
                switch: None,
            },
        ],
        description: Some("built by plan".into()),
    }
}

#[tokio::test]
async fn built_virtual_machine_is_accepted_by_the_real_kubevirt_crd() {
    let client = Lab::get().kube_client().await.expect("kube client for the lab");
    let vms = api(&client, "kubevirt.io", "v1", "VirtualMachine", "virtualmachines");
    let spec = VirtualMachineImportSpec {
        mapping: vec![NetworkMapping {
            source_network: "DSwitch/VM Network".into(),
            destination_network: "default/vlan1".into(),
            network_interface_model: None,
        }],
        ..VirtualMachineImportSpec::default()
    };
    let source = reference_vm();
    let name = unique("plan-vm");
    let claims: Vec<String> = (0..3).map(|i| format!("image-{i}")).collect();
    let built = build_virtual_machine(&VmInput {
        name: &name,
        namespace: "default",
        spec: &spec,
        source: &source,
        claims: &claims,
    })
    .expect("builds");
    let object: DynamicObject = serde_json::from_value(built.clone()).expect("a DynamicObject");

    let created = vms
        .create(&PostParams::default(), &object)
        .await
        .expect("the real CRD accepts the VM");
    // Nothing was pruned: every field we sent is a field of the real schema.
    let stored = serde_json::to_value(&created).expect("to JSON");
    assert_eq!(
        stored["spec"], built["spec"],
        "the apiserver pruned or changed fields"
    );
    assert_eq!(stored["metadata"]["labels"], built["metadata"]["labels"]);
    vms.delete(&name, &DeleteParams::default()).await.expect("delete");
}

#[tokio::test]
async fn built_virtual_machine_image_is_accepted_by_the_real_harvester_crd() {
    let client = Lab::get().kube_client().await.expect("kube client for the lab");
    let images = api(
        &client,
        "harvesterhci.io",
        "v1beta1",
        "VirtualMachineImage",
        "virtualmachineimages",
    );
    let import = unique("plan-import");
    let url = image::image_url(None, "disk-0.img");
    for (storage_class, backend) in [
        ("longhorn-v1", Backend::BackingImage),
        ("", Backend::Cdi),
        ("lvm", Backend::Cdi),
    ] {
        let built = image::virtual_machine_image(&ImageInput {
            owner: Owner {
                name: &import,
                namespace: "default",
                uid: "0b6c1b52-6f0a-4f7e-a0a4-5d8b3b7b9c11",
            },
            disk_name: "disk-0.img",
            storage_class,
            backend,
            url: &url,
            checksum: &"5e".repeat(64),
        });
        let object: DynamicObject = serde_json::from_value(built.clone()).expect("a DynamicObject");
        let created = images
            .create(&PostParams::default(), &object)
            .await
            .expect("the real CRD accepts the image");
        let name = created.metadata.name.clone().expect("generated name");
        assert!(name.starts_with("image-"), "{name}");
        let stored = serde_json::to_value(&created).expect("to JSON");
        for field in ["displayName", "sourceType", "url", "targetStorageClassName"] {
            assert_eq!(stored["spec"].get(field), built["spec"].get(field), "{field}");
        }
        let expected_backend = if storage_class.is_empty() {
            "backingimage"
        } else {
            backend.as_str()
        };
        assert_eq!(
            stored["spec"]["backend"], expected_backend,
            "CRD default applies when we leave it out"
        );
        images
            .delete(&name, &DeleteParams::default())
            .await
            .expect("delete");
    }
}
