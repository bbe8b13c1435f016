//! Conditions as upstream writes them (`pkg/apis/common/condition.go`): `type`, `status`, two RFC3339
//! timestamps **as strings** (not `metav1.Time`), `reason`, `message`; plus the upsert rule.
//!
//! Upstream's merge overwrites `lastTransitionTime` on every write; [`upsert`] keeps it while the
//! status does not change, which is what the field means (readers of upstream objects lose nothing).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::serde_util::null_default;

string_enum! {
    /// Every condition type the API uses, upstream's and ours.
    pub enum ConditionType {
        /// Source: the endpoint answered and the credentials and datacenter are good.
        ClusterReady = "ClusterReady",
        /// Source: the check failed; `reason`/`message` say why (upstream leaves them empty).
        ClusterError = "ClusterError",
        /// Import: a guest shutdown was requested.
        VmShutdownGuest = "VMShutdownGuest",
        /// Import: a hard power-off was requested.
        VmPoweringOff = "VMPoweringOff",
        /// Import: the source VM is off.
        VmPoweredOff = "VMPoweredOff",
        /// Import: every disk has been exported and converted.
        VmExported = "VMExported",
        /// Import: the export failed (`message: "error exporting VM: …"`).
        VmExportFailed = "VMExportFailed",
        /// Disk: its `VirtualMachineImage` was created.
        ImageSubmitted = "VirtualMachineImageSubmitted",
        /// Disk: its `VirtualMachineImage` is `Imported`.
        ImageReady = "VirtualMachineImageReady",
        /// Disk: its `VirtualMachineImage` failed to import.
        ImageFailed = "VirtualMachineImageFailed",
        /// **Ours**, source: TLS verification is switched off by `spec.insecureSkipVerify` (a warning).
        InsecureSkipVerify = "InsecureSkipVerify",
        /// **Ours**, import: why the import stopped (`reason` is a low-cardinality PascalCase word).
        ImportFailed = "ImportFailed",
        /// Not set.
        Unset = "",
    }
    default = Unset;
    schema_enum = false;
}

string_enum! {
    /// `corev1.ConditionStatus`.
    pub enum ConditionStatus {
        /// The condition holds.
        True = "True",
        /// The condition does not hold.
        False = "False",
        /// Not known.
        Unknown = "Unknown",
        /// Not set.
        Unset = "",
    }
    default = Unset;
    schema_enum = false;
}

/// One condition, exactly upstream's JSON shape.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// What the condition is about.
    #[serde(rename = "type", default, deserialize_with = "null_default")]
    pub type_: ConditionType,
    /// `True`, `False` or `Unknown`.
    #[serde(default, deserialize_with = "null_default")]
    pub status: ConditionStatus,
    /// RFC3339 time of the last write.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub last_update_time: String,
    /// RFC3339 time the status last changed.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub last_transition_time: String,
    /// PascalCase machine-readable cause.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub reason: String,
    /// Human-readable detail.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub message: String,
}

impl Condition {
    /// A condition written at `now` (an RFC3339 string; the caller owns the clock).
    pub fn new(type_: ConditionType, status: ConditionStatus, now: &str) -> Self {
        Self {
            type_,
            status,
            last_update_time: now.to_owned(),
            last_transition_time: now.to_owned(),
            reason: String::new(),
            message: String::new(),
        }
    }

    /// Sets `reason` and `message`.
    #[must_use]
    pub fn with_reason(mut self, reason: &str, message: impl Into<String>) -> Self {
        self.reason = reason.to_owned();
        self.message = message.into();
        self
    }

    /// True when this condition's status is `True`.
    pub fn is_true(&self) -> bool {
        self.status == ConditionStatus::True
    }
}

/// The condition of `type_` in `conditions`, if any.
pub fn find<'a>(conditions: &'a [Condition], type_: &ConditionType) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == *type_)
}

/// True when `conditions` holds `type_` with status `True`.
pub fn is_true(conditions: &[Condition], type_: &ConditionType) -> bool {
    find(conditions, type_).is_some_and(Condition::is_true)
}

/// Inserts `condition`, or replaces the one of the same type. `lastTransitionTime` is kept when the
/// status is unchanged (upstream bumps it on every write). Returns whether anything but
/// `lastUpdateTime` changed, so callers can skip no-op status writes.
pub fn upsert(conditions: &mut Vec<Condition>, mut condition: Condition) -> bool {
    match conditions.iter_mut().find(|c| c.type_ == condition.type_) {
        None => {
            conditions.push(condition);
            true
        }
        Some(existing) => {
            let changed = existing.status != condition.status
                || existing.reason != condition.reason
                || existing.message != condition.message;
            if existing.status == condition.status && !existing.last_transition_time.is_empty() {
                condition.last_transition_time = existing.last_transition_time.clone();
            }
            *existing = condition;
            changed
        }
    }
}

/// Removes the condition of `type_`; returns whether one was there.
pub fn remove(conditions: &mut Vec<Condition>, type_: &ConditionType) -> bool {
    let before = conditions.len();
    conditions.retain(|c| c.type_ != *type_);
    conditions.len() != before
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upsert_keeps_transition_time_while_status_is_unchanged() {
        let mut conditions = vec![Condition::new(
            ConditionType::ClusterReady,
            ConditionStatus::True,
            "t1",
        )];
        let changed = upsert(
            &mut conditions,
            Condition::new(ConditionType::ClusterReady, ConditionStatus::True, "t2"),
        );
        assert!(!changed);
        assert_eq!(conditions[0].last_transition_time, "t1");
        assert_eq!(conditions[0].last_update_time, "t2");
    }

    #[test]
    fn upsert_moves_transition_time_when_status_flips() {
        let mut conditions = vec![Condition::new(
            ConditionType::ClusterReady,
            ConditionStatus::True,
            "t1",
        )];
        assert!(upsert(
            &mut conditions,
            Condition::new(ConditionType::ClusterReady, ConditionStatus::False, "t2"),
        ));
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].last_transition_time, "t2");
    }

    #[test]
    fn condition_reads_nulls_and_unknown_types() {
        let c: Condition =
            serde_json::from_str(r#"{"type":"SomethingNew","status":null,"reason":null}"#).unwrap();
        assert_eq!(c.type_, ConditionType::Other("SomethingNew".into()));
        assert_eq!(c.status, ConditionStatus::Unset);
        assert_eq!(
            serde_json::to_string(&c).unwrap(),
            r#"{"type":"SomethingNew","status":""}"#
        );
    }
}
