//! The generated CRDs against the lab's real kube-apiserver: they are valid structural schemas, and
//! the objects upstream documents (and nulls where upstream's schema allows them) validate.
//!
//! The lab already serves upstream-shaped CRDs under the real group, which other tests use, so ours
//! are installed under a unique test group instead (same names otherwise) and removed afterwards.

// Test helpers outside #[test] functions fail loudly on purpose.
#![allow(clippy::expect_used, clippy::panic)]

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api,
    api::{DeleteParams, DynamicObject, PostParams},
    core::{ApiResource, GroupVersionKind},
};
use serde_json::{Value, json};
use test_support::Lab;

fn unique_group() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .subsec_nanos();
    format!("t{}-{nanos}.vm-import.test", std::process::id())
}

fn regroup(mut crd: CustomResourceDefinition, group: &str) -> CustomResourceDefinition {
    crd.metadata.name = Some(format!("{}.{group}", crd.spec.names.plural));
    crd.spec.group = group.to_owned();
    crd
}

async fn wait_established(crds: &Api<CustomResourceDefinition>, name: &str) {
    for _ in 0..100 {
        let crd = crds.get(name).await.expect("get CRD");
        let established = crd
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        if established {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("CRD {name} not established after 10 s");
}

fn examples() -> Vec<Value> {
    let text = include_str!("fixtures/upstream-examples.yaml");
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| serde::Deserialize::deserialize(doc).expect("example is YAML"))
        .collect()
}

#[tokio::test]
async fn generated_crds_install_and_accept_upstream_shaped_objects() {
    let client = Lab::get().kube_client().await.expect("kube client for the lab");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let group = unique_group();
    let mut names = Vec::new();
    for crd in api::crds() {
        let crd = regroup(crd, &group);
        let name = crd.metadata.name.clone().expect("name");
        crds.create(&PostParams::default(), &crd)
            .await
            .unwrap_or_else(|e| panic!("the apiserver refuses our CRD {name}: {e}"));
        names.push(name);
    }
    for name in &names {
        wait_established(&crds, name).await;
    }

    let mut objects = examples();
    // Nulls wherever upstream's (wrangler's) schema allows them, and "" in the NIC-model enum.
    objects.push(json!({
        "apiVersion": "migration.harvesterhci.io/v1beta1", "kind": "VirtualMachineImport",
        "metadata": {"name": "nulls"},
        "spec": {"virtualMachineName": null, "folder": null, "networkMapping": null, "storageClass": null,
                 "defaultNetworkInterfaceModel": "", "defaultDiskBusType": null, "forcePowerOff": null,
                 "skipPreflightChecks": null,
                 "sourceCluster": {"apiVersion": null, "kind": null, "name": null, "namespace": null}}
    }));
    for mut object in objects {
        let kind = object["kind"].as_str().expect("kind").to_owned();
        object["apiVersion"] = json!(format!("{group}/v1beta1"));
        object["metadata"]["namespace"] = json!("default");
        let plural = format!("{}s", kind.to_lowercase());
        let resource =
            ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(&group, "v1beta1", &kind), &plural);
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &resource);
        let dynamic: DynamicObject = serde_json::from_value(object.clone()).expect("DynamicObject");
        let created = api
            .create(&PostParams::default(), &dynamic)
            .await
            .unwrap_or_else(|e| panic!("our CRD refuses {kind} {}: {e}", object["metadata"]["name"]));
        let stored = serde_json::to_value(&created).expect("to JSON");
        assert_eq!(
            stored["spec"], object["spec"],
            "the apiserver pruned or defaulted {kind}"
        );
    }

    for name in &names {
        crds.delete(name, &DeleteParams::default())
            .await
            .expect("delete CRD");
    }
}
