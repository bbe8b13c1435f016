//! The generated CRDs: checked in under `deploy/crds/` without drift, and never stricter than
//! upstream's (as rendered by hand in `lab/crds/migration.harvesterhci.io/`, which the lab installs).

// Test helpers outside #[test] functions fail loudly on purpose.
#![allow(clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn plural(crd: &CustomResourceDefinition) -> &str {
    &crd.spec.names.plural
}

fn checked_in_path(crd: &CustomResourceDefinition) -> PathBuf {
    repo_root()
        .join("deploy/crds")
        .join(format!("{}.yaml", plural(crd)))
}

fn lab_crd(plural: &str) -> CustomResourceDefinition {
    let path = repo_root().join(format!("lab/crds/migration.harvesterhci.io/{plural}.yaml"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

fn schema_value(crd: &CustomResourceDefinition) -> Value {
    let version = &crd.spec.versions[0];
    let schema = version
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("CRD has a schema");
    serde_json::to_value(schema).expect("schema to JSON")
}

#[test]
fn checked_in_crds_match_the_generated_ones() {
    let bless = std::env::var_os("VM_IMPORT_BLESS").is_some_and(|v| v == "1");
    let mut drifted = Vec::new();
    for crd in api::crds() {
        let path = checked_in_path(&crd);
        let generated = format!("{}{}", api::crd::YAML_HEADER, api::crd::crd_yaml(&crd));
        if bless {
            std::fs::write(&path, &generated).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
            continue;
        }
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        if on_disk != generated {
            drifted.push(path.display().to_string());
        }
    }
    assert!(
        drifted.is_empty(),
        "checked-in CRDs differ from the generated ones: {drifted:?}\n\
         regenerate with: VM_IMPORT_BLESS=1 cargo test -p vmi-api --test crds"
    );
}

#[test]
fn crds_yaml_holds_all_four_documents() {
    let yaml = api::crds_yaml();
    assert!(yaml.starts_with(api::crd::YAML_HEADER));
    let crds: Vec<CustomResourceDefinition> = serde_yaml_ng::Deserializer::from_str(&yaml)
        .map(|doc| serde::Deserialize::deserialize(doc).expect("each document is a CRD"))
        .collect();
    let names: Vec<_> = crds
        .iter()
        .map(|c| c.metadata.name.clone().unwrap_or_default())
        .collect();
    assert_eq!(
        names,
        [
            "openstacksources.migration.harvesterhci.io",
            "ovasources.migration.harvesterhci.io",
            "virtualmachineimports.migration.harvesterhci.io",
            "vmwaresources.migration.harvesterhci.io",
        ]
    );
}

#[test]
fn names_scope_columns_and_subresources_equal_upstream() {
    for ours in api::crds() {
        let lab = lab_crd(plural(&ours));
        assert_eq!(ours.metadata.name, lab.metadata.name);
        assert_eq!(ours.spec.group, lab.spec.group);
        assert_eq!(ours.spec.scope, lab.spec.scope);
        assert_eq!(ours.spec.names.kind, lab.spec.names.kind);
        assert_eq!(ours.spec.names.plural, lab.spec.names.plural);
        assert_eq!(ours.spec.names.singular, lab.spec.names.singular);
        assert_eq!(ours.spec.names.list_kind, lab.spec.names.list_kind);
        assert_eq!(
            ours.spec.names.short_names.as_deref().unwrap_or_default(),
            &[] as &[String]
        );
        assert_eq!(
            ours.spec.names.categories.as_deref().unwrap_or_default(),
            &[] as &[String]
        );
        assert_eq!(ours.spec.versions.len(), 1);
        let (o, l) = (&ours.spec.versions[0], &lab.spec.versions[0]);
        assert_eq!((o.name.as_str(), o.served, o.storage), ("v1beta1", true, true));
        assert_eq!((&o.name, o.served, o.storage), (&l.name, l.served, l.storage));
        assert_eq!(
            o.additional_printer_columns,
            l.additional_printer_columns,
            "{}",
            plural(&ours)
        );
        assert_eq!(o.subresources, l.subresources, "{}", plural(&ours));
    }
}

/// Keywords that would make a schema reject something upstream's accepts.
const STRICTER: &[&str] = &[
    "required",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "uniqueItems",
    "minProperties",
    "maxProperties",
    "x-kubernetes-validations",
    "oneOf",
    "anyOf",
    "allOf",
    "not",
];

/// Walks every property path of the lab (upstream-shaped) schema and checks ours at the same path.
fn assert_not_stricter(path: &str, lab: &Value, ours: &Value, failures: &mut Vec<String>) {
    let get = |v: &Value, k: &str| v.get(k).cloned();
    if get(lab, "type") != get(ours, "type") {
        failures.push(format!(
            "{path}: type {:?} vs ours {:?}",
            get(lab, "type"),
            get(ours, "type")
        ));
    }
    if let Some(format) = get(ours, "format")
        && get(lab, "format") != Some(format.clone())
    {
        failures.push(format!("{path}: ours adds format {format}"));
    }
    if get(lab, "nullable") == Some(Value::Bool(true)) && get(ours, "nullable") != Some(Value::Bool(true)) {
        failures.push(format!("{path}: upstream is nullable, ours is not"));
    }
    match (get(lab, "enum"), get(ours, "enum")) {
        (_, None) => {}
        (None, Some(e)) => failures.push(format!("{path}: ours adds enum {e}")),
        (Some(Value::Array(l)), Some(Value::Array(o))) => {
            for value in &l {
                if !o.contains(value) {
                    failures.push(format!("{path}: enum value {value} missing in ours"));
                }
            }
        }
        (Some(l), Some(o)) => failures.push(format!("{path}: malformed enums {l} / {o}")),
    }
    for keyword in STRICTER {
        if ours.get(*keyword).is_some() && lab.get(*keyword).is_none() {
            failures.push(format!("{path}: ours adds {keyword}"));
        }
    }
    if let Some(Value::Object(props)) = lab.get("properties") {
        for (name, lab_child) in props {
            let child_path = format!("{path}.{name}");
            match ours.get("properties").and_then(|p| p.get(name)) {
                Some(ours_child) => assert_not_stricter(&child_path, lab_child, ours_child, failures),
                None => failures.push(format!("{child_path}: missing in ours")),
            }
        }
    }
    if let Some(lab_items) = lab.get("items") {
        match ours.get("items") {
            Some(ours_items) => assert_not_stricter(&format!("{path}[]"), lab_items, ours_items, failures),
            None => failures.push(format!("{path}[]: items missing in ours")),
        }
    }
}

#[test]
fn every_upstream_property_exists_with_the_same_type_and_no_stricter_constraint() {
    let mut failures = Vec::new();
    for ours in api::crds() {
        let lab = lab_crd(plural(&ours));
        assert_not_stricter(
            plural(&ours),
            &schema_value(&lab),
            &schema_value(&ours),
            &mut failures,
        );
    }
    assert!(
        failures.is_empty(),
        "ours is stricter than upstream:\n{}",
        failures.join("\n")
    );
}

/// Every keyword anywhere in our schemas that could reject a value.
fn collect_stricter(path: &str, node: &Value, found: &mut Vec<String>) {
    match node {
        Value::Object(map) => {
            for (key, value) in map {
                if STRICTER.contains(&key.as_str()) && key != "minimum" {
                    found.push(format!("{path}: {key}"));
                }
                if key == "default"
                    || (key == "enum" && value.as_array().is_some_and(|a| a.contains(&Value::Null)))
                {
                    found.push(format!("{path}: {key} {value}"));
                }
                if key == "enum" && !value.as_array().is_some_and(|a| a.contains(&Value::from(""))) {
                    found.push(format!("{path}: enum without \"\""));
                }
                collect_stricter(&format!("{path}/{key}"), value, found);
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                collect_stricter(&format!("{path}/{i}"), item, found);
            }
        }
        _ => {}
    }
}

#[test]
fn our_schemas_require_and_default_nothing_and_every_enum_accepts_empty() {
    let mut found = Vec::new();
    for crd in api::crds() {
        collect_stricter(plural(&crd), &schema_value(&crd), &mut found);
    }
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn additive_fields_are_in_the_schema() {
    let crds = api::crds();
    let find = |plural: &str| schema_value(crds.iter().find(|c| c.spec.names.plural == plural).expect("crd"));
    let vmware = find("vmwaresources");
    assert_eq!(
        vmware.pointer("/properties/spec/properties/insecureSkipVerify/type"),
        Some(&Value::from("boolean"))
    );
    let ova = find("ovasources");
    assert_eq!(
        ova.pointer("/properties/spec/properties/insecureSkipVerify/type"),
        Some(&Value::from("boolean"))
    );
    let import = find("virtualmachineimports");
    let status = import.pointer("/properties/status/properties").expect("status");
    assert_eq!(
        status.pointer("/observedGeneration/type"),
        Some(&Value::from("integer"))
    );
    for field in ["bytesDone", "bytesTotal", "bytesPerSecond", "imageSubmissions"] {
        assert_eq!(
            status.pointer(&format!("/diskImportStatus/items/properties/{field}/type")),
            Some(&Value::from("integer")),
            "{field}"
        );
    }
    assert_eq!(
        status.pointer("/diskImportStatus/items/properties/checksum/type"),
        Some(&Value::from("string"))
    );
    let severity = status
        .pointer("/concerns/items/properties/severity/enum")
        .expect("severity enum");
    assert_eq!(severity, &serde_json::json!(["Critical", "Warning", "Info", ""]));
}
