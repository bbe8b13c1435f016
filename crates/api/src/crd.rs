//! The four CustomResourceDefinitions, generated from the types (kube-derive + schemars) and then made
//! exactly as lenient as upstream's, which wrangler generates at runtime from the Go structs:
//!
//! * no `required` anywhere (wrangler only requires fields tagged `wrangler:"required"`; none are);
//! * every string, array and object below `spec`/`status` is `nullable` (wrangler marks strings,
//!   slices, maps and pointers nullable; objects too here, because Go reads `null` as the zero value);
//! * every `enum` accepts `""` (wrangler appends it) and lists strings only;
//! * no `default` (schemars derives them from `#[serde(default)]`; upstream has none, and the apiserver
//!   would write them into stored objects);
//! * integers carry at most the Go widths `int32`/`int64` as `format` (schemars' `uint64` is not a
//!   Kubernetes format).
//!
//! A drop-in must never be stricter than upstream: an object the Go controller's CRD accepts must be
//! accepted by ours. `tests/crds.rs` checks that against the hand-derived CRDs the lab installs and
//! keeps `deploy/crds/*.yaml` equal to what this module generates.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps,
};
use kube_core::CustomResourceExt;
use schemars::{Schema, SchemaGenerator, json_schema};
use serde_json::Value;

use crate::{OpenstackSource, OvaSource, VirtualMachineImport, VmwareSource};

/// First line of every generated YAML document set.
pub const YAML_HEADER: &str = "# Generated from crates/api (api::crds_yaml); do not edit.\n\
# Regenerate: VM_IMPORT_BLESS=1 cargo test -p vmi-api --test crds\n";

/// The four CRDs, in a stable order (by name), with upstream's leniency applied.
pub fn crds() -> Vec<CustomResourceDefinition> {
    let mut crds = vec![
        OpenstackSource::crd(),
        OvaSource::crd(),
        VirtualMachineImport::crd(),
        VmwareSource::crd(),
    ];
    for crd in &mut crds {
        make_lenient(crd);
    }
    crds
}

/// One CRD as a YAML document (starting with `---`).
///
/// # Panics
/// Never in practice: a CRD is a tree of strings, bools, integers, maps with string keys and lists,
/// all of which YAML can express.
#[allow(clippy::expect_used)]
pub fn crd_yaml(crd: &CustomResourceDefinition) -> String {
    let body = serde_yaml_ng::to_string(crd).expect("a CRD always serialises to YAML");
    format!("---\n{body}")
}

/// All four CRDs as one multi-document YAML (what `vm-import crds` prints).
pub fn crds_yaml() -> String {
    let mut out = String::from(YAML_HEADER);
    for crd in crds() {
        out.push_str(&crd_yaml(&crd));
    }
    out
}

/// Schema of a Go `int` field: an integer of no declared width (as wrangler renders it).
pub(crate) fn go_int(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "type": "integer" })
}

/// Schema of a Go `*int` field.
pub(crate) fn go_optional_int(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "type": "integer", "nullable": true })
}

fn make_lenient(crd: &mut CustomResourceDefinition) {
    // The apiserver would default it; wrangler writes it, so the checked-in YAML says it too.
    crd.spec.names.list_kind = Some(format!("{}List", crd.spec.names.kind));
    for version in &mut crd.spec.versions {
        let Some(validation) = version.schema.as_mut() else {
            continue;
        };
        let Some(root) = validation.open_api_v3_schema.take() else {
            continue;
        };
        validation.open_api_v3_schema = Some(lenient_root(root));
    }
}

fn lenient_root(root: JSONSchemaProps) -> JSONSchemaProps {
    let Ok(mut value) = serde_json::to_value(&root) else {
        return root;
    };
    if let Some(object) = value.as_object_mut() {
        object.remove("required");
        if let Some(Value::Object(properties)) = object.get_mut("properties") {
            // Declared as wrangler does, so `kubectl explain` and schema diffs see them.
            properties.insert("apiVersion".into(), serde_json::json!({"type": "string"}));
            properties.insert("kind".into(), serde_json::json!({"type": "string"}));
            properties.insert("metadata".into(), serde_json::json!({"type": "object"}));
            // `spec` and `status` themselves stay non-nullable: the root type holds them by value.
            for (name, top) in properties.iter_mut() {
                if name == "metadata" {
                    continue;
                }
                lenient_children(top);
            }
        }
    }
    serde_json::from_value(value).unwrap_or(root)
}

/// Applies the rules to `node`'s own keywords and recursively to everything below it.
fn lenient_children(node: &mut Value) {
    let Some(object) = node.as_object_mut() else {
        return;
    };
    object.remove("required");
    if let Some(Value::Object(properties)) = object.get_mut("properties") {
        for child in properties.values_mut() {
            lenient_node(child);
        }
    }
    if let Some(items) = object.get_mut("items") {
        lenient_node(items);
    }
    if let Some(additional @ Value::Object(_)) = object.get_mut("additionalProperties") {
        lenient_node(additional);
    }
}

fn lenient_node(node: &mut Value) {
    if let Some(object) = node.as_object_mut() {
        let type_ = object.get("type").and_then(Value::as_str).map(str::to_owned);
        if matches!(type_.as_deref(), Some("string" | "array" | "object")) {
            object.insert("nullable".into(), Value::Bool(true));
        }
        // schemars derives defaults from `#[serde(default)]`; upstream has none, and a default would
        // make the apiserver rewrite stored objects.
        object.remove("default");
        if let Some(Value::Array(values)) = object.get_mut("enum") {
            // `nullable` already admits null; wrangler's enums list strings only.
            values.retain(|v| !v.is_null());
            if !values.iter().any(|v| v.as_str() == Some("")) {
                values.push(Value::String(String::new()));
            }
        }
        if type_.as_deref() == Some("integer") {
            let width = match object.get("format").and_then(Value::as_str) {
                Some("int32" | "uint32" | "uint16" | "uint8" | "int16" | "int8") => Some("int32"),
                Some(_) => Some("int64"),
                None => None,
            };
            match width {
                Some(width) => {
                    object.insert("format".into(), Value::String(width.into()));
                }
                None => {
                    object.remove("format");
                }
            }
        }
    }
    lenient_children(node);
}
