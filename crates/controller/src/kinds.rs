//! The foreign kinds the controller reads and writes, as dynamic resources: Harvester's
//! `VirtualMachineImage`, KubeVirt's `VirtualMachine` and Multus' `NetworkAttachmentDefinition`.
//! Their schemas belong to those projects; the objects are built as JSON by `plan` and validated by
//! the API server against the real CRDs.

use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, GroupVersionKind},
};

/// `harvesterhci.io/v1beta1` `VirtualMachineImage`.
pub fn image_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("harvesterhci.io", "v1beta1", "VirtualMachineImage"),
        "virtualmachineimages",
    )
}

/// `kubevirt.io/v1` `VirtualMachine`.
pub fn virtual_machine_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("kubevirt.io", "v1", "VirtualMachine"),
        "virtualmachines",
    )
}

/// `k8s.cni.cncf.io/v1` `NetworkAttachmentDefinition`.
pub fn nad_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("k8s.cni.cncf.io", "v1", "NetworkAttachmentDefinition"),
        "network-attachment-definitions",
    )
}

/// Namespaced API of a dynamic kind.
pub fn namespaced(client: &Client, namespace: &str, resource: &ApiResource) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), namespace, resource)
}
