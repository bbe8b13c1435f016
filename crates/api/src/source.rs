//! The three source kinds (`VmwareSource`, `OpenstackSource`, `OvaSource`): where to find VMs and the
//! Secret with the credentials. They share one status shape ([`SourceStatus`]).
//!
//! Secret keys per kind are in [`crate::names`]. Upstream's Go types are in
//! `pkg/apis/migration.harvesterhci.io/v1beta1/{vmware,openstack,ova}.go`.

use k8s_openapi::api::core::v1::SecretReference;
use kube_derive::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    condition::Condition,
    serde_util::{is_zero_i64, null_default},
};

string_enum! {
    /// `status.status` of a source.
    pub enum ClusterStatus {
        /// Login and datacenter check succeeded.
        ClusterReady = "clusterReady",
        /// The check failed; the conditions say why.
        ClusterNotReady = "clusterNotReady",
        /// Not reconciled yet (upstream also leaves it empty when the login itself fails).
        Unset = "",
    }
    default = Unset;
    schema_enum = false;
}

/// The status shared by every source kind.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourceStatus {
    /// `clusterReady`, `clusterNotReady` or empty.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "ClusterStatus::is_default"
    )]
    pub status: ClusterStatus,
    /// `ClusterReady` / `ClusterError` (a complementary pair), plus ours (`InsecureSkipVerify`).
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub conditions: Vec<Condition>,
    /// **Ours**: the `metadata.generation` this status was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// A vCenter (or ESXi) endpoint and datacenter.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "migration.harvesterhci.io",
    version = "v1beta1",
    kind = "VmwareSource",
    namespaced,
    status = "SourceStatus",
    derive = "PartialEq",
    derive = "Default",
    printcolumn(name = "Status", type_ = "string", json_path = ".status.status"),
    doc = "A VMware vCenter/ESXi endpoint VMs are imported from.",
    crates(
        kube_core = "::kube_core",
        k8s_openapi = "::k8s_openapi",
        schemars = "::schemars"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct VmwareSourceSpec {
    /// SDK URL, e.g. `https://vcenter.example.com/sdk`.
    #[serde(rename = "endpoint", default, deserialize_with = "null_default")]
    pub endpoint_address: String,
    /// Datacenter name (a leading `/` is added when missing).
    #[serde(rename = "dc", default, deserialize_with = "null_default")]
    pub datacenter: String,
    /// Secret with `username`, `password` and optionally `caCert`.
    #[serde(default, deserialize_with = "null_default")]
    pub credentials: SecretReference,
    /// **Ours**: skip TLS verification (reported as an `InsecureSkipVerify` warning condition). Unset
    /// means verify against the Secret's `caCert`, else the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,
    /// **Ours**: the most bytes per second all imports from this source read together (absent or
    /// 0: the controller's `--source-bytes-per-second`, else no cap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes_per_second: Option<u64>,
}

/// An OpenStack (Keystone) endpoint and region.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "migration.harvesterhci.io",
    version = "v1beta1",
    kind = "OpenstackSource",
    namespaced,
    status = "SourceStatus",
    derive = "PartialEq",
    derive = "Default",
    printcolumn(name = "Status", type_ = "string", json_path = ".status.status"),
    doc = "An OpenStack cloud VMs are imported from.",
    crates(
        kube_core = "::kube_core",
        k8s_openapi = "::k8s_openapi",
        schemars = "::schemars"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct OpenstackSourceSpec {
    /// Keystone URL.
    #[serde(rename = "endpoint", default, deserialize_with = "null_default")]
    pub endpoint_address: String,
    /// Region of the compute/volume/image services.
    #[serde(default, deserialize_with = "null_default")]
    pub region: String,
    /// Secret with `username`, `password`, `project_name`, `domain_name` and optionally `ca_cert`.
    #[serde(default, deserialize_with = "null_default")]
    pub credentials: SecretReference,
    /// Polls of the uploaded Glance image; `<= 0` means 30.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "is_zero_i64"
    )]
    #[schemars(schema_with = "crate::crd::go_int")]
    pub upload_image_retry_count: i64,
    /// Seconds between those polls; `<= 0` means 10.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "is_zero_i64"
    )]
    #[schemars(schema_with = "crate::crd::go_int")]
    pub upload_image_retry_delay: i64,
    /// **Ours**: skip TLS verification (reported as an `InsecureSkipVerify` warning condition). Unset
    /// means verify against the Secret's `ca_cert`, else the system roots (upstream never verifies
    /// without `ca_cert`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,
    /// **Ours**: the most bytes per second all imports from this source read together (absent or
    /// 0: the controller's `--source-bytes-per-second`, else no cap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes_per_second: Option<u64>,
}

/// An OVA file reachable over HTTP(S).
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "migration.harvesterhci.io",
    version = "v1beta1",
    kind = "OvaSource",
    namespaced,
    status = "SourceStatus",
    derive = "PartialEq",
    derive = "Default",
    printcolumn(name = "Status", type_ = "string", json_path = ".status.status"),
    doc = "An OVA archive, downloaded over http(s), VMs are imported from.",
    crates(
        kube_core = "::kube_core",
        k8s_openapi = "::k8s_openapi",
        schemars = "::schemars"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct OvaSourceSpec {
    /// `http://` or `https://` URL of the `.ova`.
    #[serde(default, deserialize_with = "null_default")]
    pub url: String,
    /// Seconds the server may stay silent (connecting, or mid-transfer) before the request fails;
    /// unset means 600, 0 means no limit. Upstream applies it to the whole download, which cut
    /// large OVAs short; here it is an idle timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::crd::go_optional_int")]
    pub http_timeout_seconds: Option<i64>,
    /// Optional Secret with `username`+`password` (basic auth) and/or `ca.crt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<SecretReference>,
    /// **Ours**: skip TLS verification of an `https://` URL (reported as an `InsecureSkipVerify`
    /// warning condition). Unset means verify against the Secret's `ca.crt`, else the system roots
    /// (upstream never verifies without `ca.crt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,
    /// **Ours**: the most bytes per second all imports from this source read together (absent or
    /// 0: the controller's `--source-bytes-per-second`, else no cap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes_per_second: Option<u64>,
}
