//! The reconciler of source objects (`VmwareSource`, `OvaSource`, `OpenstackSource`), one generic
//! function for every kind: the kind's check ([`SourceObject::check`]: log in and find the
//! datacenter; HEAD the OVA's URL with the Secret's basic auth and `ca.crt`; log in to Keystone, read
//! the region's catalog and list servers) runs again every few minutes and whenever the source's
//! Secret changes (upstream checks once, ever). Status gets `clusterReady`/`clusterNotReady` with
//! `ClusterReady` and `ClusterError` conditions that carry a reason and a message saying what to
//! fix, plus an `InsecureSkipVerify` warning condition when the source opted out of TLS
//! verification. Status is written only when it changes, so a failing source is not re-checked in a
//! tight loop.

use std::{sync::Arc, time::Duration};

use api::{ClusterStatus, Condition, ConditionStatus, ConditionType, SourceStatus};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
    runtime::controller::Action,
};
use serde_json::json;

use crate::{
    context::Context,
    source::{Check, SourceObject},
    time::now_rfc3339,
};

/// Re-check of a source that is not ready.
const NOT_READY_RECHECK: Duration = Duration::from_secs(30);

/// Why a source reconcile failed (it is retried with backoff).
#[derive(Debug, thiserror::Error)]
pub(crate) enum CheckError {
    /// Writing status failed.
    #[error("writing the status of {kind} {namespace}/{name}")]
    WriteStatus {
        /// Kind.
        kind: &'static str,
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
}

impl CheckError {
    /// Low-cardinality reason.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Self::WriteStatus { .. } => "StatusWriteFailed",
        }
    }
}

/// The status a check produces, keeping condition timestamps of conditions that did not change.
fn status_for(check: &Check, previous: Option<&SourceStatus>, generation: Option<i64>) -> SourceStatus {
    let now = now_rfc3339();
    let mut conditions = previous.map(|s| s.conditions.clone()).unwrap_or_default();
    let (ready, error) = if check.ready {
        (ConditionStatus::True, ConditionStatus::False)
    } else {
        (ConditionStatus::False, ConditionStatus::True)
    };
    let ready_message = if check.ready { "" } else { check.message.as_str() };
    let set = |conditions: &mut Vec<Condition>,
               type_: ConditionType,
               status: ConditionStatus,
               reason: &str,
               message: &str| {
        let unchanged = api::condition::find(conditions, &type_)
            .is_some_and(|c| c.status == status && c.reason == reason && c.message == message);
        if !unchanged {
            api::condition::upsert(
                conditions,
                Condition::new(type_, status, &now).with_reason(reason, message),
            );
        }
    };
    set(
        &mut conditions,
        ConditionType::ClusterReady,
        ready,
        &check.reason,
        ready_message,
    );
    set(
        &mut conditions,
        ConditionType::ClusterError,
        error,
        if check.ready { "" } else { &check.reason },
        if check.ready { "" } else { &check.message },
    );
    if check.insecure {
        set(
            &mut conditions,
            ConditionType::InsecureSkipVerify,
            ConditionStatus::True,
            "TLSVerificationDisabled",
            "spec.insecureSkipVerify is true: the server's certificate is not verified",
        );
    } else {
        api::condition::remove(&mut conditions, &ConditionType::InsecureSkipVerify);
    }
    SourceStatus {
        status: if check.ready {
            ClusterStatus::ClusterReady
        } else {
            ClusterStatus::ClusterNotReady
        },
        conditions,
        observed_generation: generation,
    }
}

async fn write_status<K: SourceObject>(
    ctx: &Context,
    object: &K,
    status: SourceStatus,
) -> Result<(), CheckError> {
    let namespace = object.namespace().unwrap_or_default();
    let name = object.name_any();
    let api: Api<K> = Api::namespaced(ctx.kube.clone(), &namespace);
    api.patch_status(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await
    .map(|_| ())
    .map_err(|source| CheckError::WriteStatus {
        kind: K::KIND,
        namespace,
        name,
        source,
    })
}

/// Reconciles a source object: checks it as upstream does for its kind ([`SourceObject::check`]),
/// with the reason in the conditions when that fails; writes the outcome when it changed, with an
/// Event when readiness flipped, and says when to check again.
///
/// # Errors
/// [`CheckError`] when status cannot be written.
pub(crate) async fn reconcile<K: SourceObject>(
    source: Arc<K>,
    ctx: Arc<Context>,
) -> Result<Action, CheckError> {
    if source.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let check = source.check(&ctx.kube).await;
    let kind = K::KIND;
    let previous = source.source_status();
    ctx.metrics
        .source_checked(kind, if check.ready { "Ready" } else { &check.reason });
    let status = status_for(&check, previous, source.meta().generation);
    if previous != Some(&status) {
        let was_ready = previous.map(|s| &s.status) == Some(&ClusterStatus::ClusterReady);
        if check.ready != was_ready || previous.is_none() {
            let (reason, note) = if check.ready {
                ("ClusterReady", source.ready_note())
            } else {
                (check.reason.as_str(), check.message.clone())
            };
            ctx.event(&*source, !check.ready, reason, note).await;
        }
        if check.ready {
            tracing::info!(kind, source = %source.name_any(), "source ready");
        } else {
            tracing::warn!(kind, source = %source.name_any(), reason = %check.reason, message = %check.message, "source not ready");
        }
        write_status(&ctx, &*source, status).await?;
    }
    Ok(Action::requeue(if check.ready {
        ctx.settings.source_recheck
    } else {
        NOT_READY_RECHECK
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failing() -> Check {
        Check {
            ready: false,
            reason: "InvalidCredentials".into(),
            message: "rejected".into(),
            insecure: false,
        }
    }

    #[test]
    fn a_repeated_outcome_produces_an_identical_status() {
        let first = status_for(&failing(), None, Some(1));
        let second = status_for(&failing(), Some(&first), Some(1));
        assert_eq!(
            first, second,
            "same outcome must not rewrite timestamps (no hot loop)"
        );
        assert_eq!(first.status, ClusterStatus::ClusterNotReady);
        let error = api::condition::find(&first.conditions, &ConditionType::ClusterError).expect("set");
        assert_eq!(
            (error.reason.as_str(), error.message.as_str()),
            ("InvalidCredentials", "rejected")
        );
    }

    #[test]
    fn ready_clears_the_error_and_insecure_adds_a_warning() {
        let failed = status_for(&failing(), None, None);
        let ready = Check {
            ready: true,
            reason: "Verified".into(),
            message: String::new(),
            insecure: true,
        };
        let status = status_for(&ready, Some(&failed), None);
        assert_eq!(status.status, ClusterStatus::ClusterReady);
        assert!(api::condition::is_true(
            &status.conditions,
            &ConditionType::ClusterReady
        ));
        assert!(!api::condition::is_true(
            &status.conditions,
            &ConditionType::ClusterError
        ));
        assert!(api::condition::is_true(
            &status.conditions,
            &ConditionType::InsecureSkipVerify
        ));
        let secure = Check {
            insecure: false,
            ..ready
        };
        let status = status_for(&secure, Some(&status), None);
        assert!(api::condition::find(&status.conditions, &ConditionType::InsecureSkipVerify).is_none());
    }
}
