//! The lab's kube-apiserver serves the real CRDs with their real validation: what Harvester, KubeVirt
//! and Multus would accept or refuse, the lab accepts or refuses too.

// Test helpers outside #[test] functions fail loudly on purpose.
#![allow(clippy::expect_used, clippy::panic)]

use kube::{
    Api, Client,
    api::{DynamicObject, PostParams},
    core::{ApiResource, GroupVersionKind},
    discovery::Discovery,
};
use serde_json::json;
use test_support::Lab;

fn api(client: &Client, group: &str, version: &str, kind: &str, plural: &str) -> Api<DynamicObject> {
    let resource = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
    Api::namespaced_with(client.clone(), "default", &resource)
}

fn object(value: serde_json::Value) -> DynamicObject {
    serde_json::from_value(value).expect("test object is a valid DynamicObject")
}

async fn client() -> Client {
    Lab::get().kube_client().await.expect("kube client for the lab")
}

#[tokio::test]
async fn kubevirt_virtual_machine_schema_is_enforced() {
    let client = client().await;
    let vms = api(&client, "kubevirt.io", "v1", "VirtualMachine", "virtualmachines");

    let valid = object(json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"generateName": "schema-valid-"},
        "spec": {
            "runStrategy": "Halted",
            "template": {"spec": {
                "domain": {
                    "cpu": {"sockets": 1, "cores": 8, "threads": 1},
                    "memory": {"guest": "4096Mi"},
                    "devices": {"disks": [{"name": "disk-0", "disk": {"bus": "virtio"}}]}
                },
                "volumes": [{"name": "disk-0", "persistentVolumeClaim": {"claimName": "disk-0"}}]
            }}
        }
    }));
    let created = vms
        .create(&PostParams::default(), &valid)
        .await
        .expect("a valid VM is accepted");
    assert!(
        created
            .metadata
            .name
            .expect("generated name")
            .starts_with("schema-valid-")
    );
    assert!(created.metadata.uid.is_some(), "the apiserver assigned a uid");

    // `cores` must be an integer, and a VirtualMachine needs a template: the real schema says so.
    let invalid = object(json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": "schema-invalid"},
        "spec": {"runStrategy": "Halted", "template": {"spec": {"domain": {
            "cpu": {"cores": "eight"}, "devices": {}
        }}}}
    }));
    let err = vms
        .create(&PostParams::default(), &invalid)
        .await
        .expect_err("a VM that violates the KubeVirt schema is refused");
    let kube::Error::Api(status) = err else {
        panic!("expected an API error, got {err:?}")
    };
    assert_eq!(status.code, 422, "refused as Invalid: {status:?}");
    assert!(
        status.message.contains("spec.template.spec.domain.cpu.cores"),
        "the refusal names the offending field: {}",
        status.message
    );

    let no_template = object(json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": "schema-no-template"},
        "spec": {"runStrategy": "Halted"}
    }));
    let err = vms
        .create(&PostParams::default(), &no_template)
        .await
        .expect_err("template is required");
    let kube::Error::Api(status) = err else {
        panic!("expected an API error, got {err:?}")
    };
    assert_eq!(status.code, 422);
    assert!(status.message.contains("spec.template"), "{}", status.message);
}

#[tokio::test]
async fn harvester_image_and_network_attachment_can_be_created() {
    let client = client().await;
    let images = api(
        &client,
        "harvesterhci.io",
        "v1beta1",
        "VirtualMachineImage",
        "virtualmachineimages",
    );
    let image = object(json!({
        "apiVersion": "harvesterhci.io/v1beta1", "kind": "VirtualMachineImage",
        "metadata": {"generateName": "image-", "labels": {"migration.harvesterhci.io/imported": "true"}},
        "spec": {
            "displayName": "vm-disk-0.img",
            "sourceType": "download",
            "url": "http://harvester-vm-import-controller.harvester-system.svc:8080/vm-disk-0.img"
        }
    }));
    let created = images
        .create(&PostParams::default(), &image)
        .await
        .expect("image accepted");
    assert!(
        created
            .metadata
            .name
            .expect("generated name")
            .starts_with("image-")
    );

    let bad_image = object(json!({
        "apiVersion": "harvesterhci.io/v1beta1", "kind": "VirtualMachineImage",
        "metadata": {"name": "bad-source"},
        "spec": {"displayName": "x", "sourceType": "carrier-pigeon"}
    }));
    let err = images
        .create(&PostParams::default(), &bad_image)
        .await
        .expect_err("enum enforced");
    assert!(matches!(err, kube::Error::Api(ref s) if s.code == 422), "{err:?}");

    let nads = api(
        &client,
        "k8s.cni.cncf.io",
        "v1",
        "NetworkAttachmentDefinition",
        "network-attachment-definitions",
    );
    let nad = object(json!({
        "apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
        "metadata": {"generateName": "vlan100-"},
        "spec": {"config": "{\"cniVersion\":\"0.3.1\",\"type\":\"bridge\",\"bridge\":\"mgmt-br\",\"vlan\":100}"}
    }));
    let created = nads
        .create(&PostParams::default(), &nad)
        .await
        .expect("NAD accepted");
    let name = created.metadata.name.expect("generated name");
    let fetched = nads.get(&name).await.expect("NAD readable");
    assert_eq!(fetched.data["spec"]["config"], nad.data["spec"]["config"]);
}

#[tokio::test]
async fn migration_crds_are_served() {
    let client = client().await;
    let discovery = Discovery::new(client)
        .filter(&["migration.harvesterhci.io"])
        .run()
        .await
        .expect("discovery");
    let group = discovery
        .groups()
        .find(|g| g.name() == "migration.harvesterhci.io")
        .expect("group migration.harvesterhci.io is served");
    let mut kinds: Vec<String> = group
        .versioned_resources("v1beta1")
        .into_iter()
        .map(|(resource, _)| format!("{}/{}", resource.kind, resource.plural))
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "OpenstackSource/openstacksources",
            "OvaSource/ovasources",
            "VirtualMachineImport/virtualmachineimports",
            "VmwareSource/vmwaresources",
        ]
    );
}
