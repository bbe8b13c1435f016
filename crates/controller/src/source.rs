//! Source reconcilers. A `VmwareSource` is checked by logging in and finding its datacenter, then
//! again every few minutes and whenever its Secret changes (upstream checks once, ever). Status gets
//! `clusterReady`/`clusterNotReady` with `ClusterReady` and `ClusterError` conditions that carry a
//! reason and a message saying what to fix, plus an `InsecureSkipVerify` warning condition when the
//! source opted out of TLS verification. Status is written only when it changes, so a failing
//! source is not re-checked in a tight loop. An `OvaSource` is checked as upstream does (an http(s)
//! URL answering a HEAD with 2xx, with the Secret's basic auth and `ca.crt`), on the same schedule
//! and with the same conditions. An `OpenstackSource` is checked as upstream does (Keystone login
//! with the Secret, the catalog of `spec.region`, a server list), TLS verified unless it opts out,
//! on the same schedule; its reasons are `InvalidCredentials`, `ProjectNotFound`, `RegionNotFound`,
//! `EndpointNotFound`, `TLSVerificationFailed`, `EndpointUnreachable` and the Secret's.

use std::{sync::Arc, time::Duration};

use api::{
    ClusterStatus, Condition, ConditionStatus, ConditionType, OpenstackSource, OvaSource, SourceStatus,
    VmwareSource,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::controller::Action,
};
use serde_json::json;

use crate::{context::Context, openstack, ova, time::now_rfc3339, vmware};

/// Re-check of a source that is not ready.
const NOT_READY_RECHECK: Duration = Duration::from_secs(30);

/// Why a source reconcile failed (it is retried with backoff).
#[derive(Debug, thiserror::Error)]
pub(crate) enum SourceError {
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

impl SourceError {
    /// Low-cardinality reason.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Self::WriteStatus { .. } => "StatusWriteFailed",
        }
    }
}

/// The outcome of one check, before timestamps.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Check {
    ready: bool,
    reason: String,
    message: String,
    insecure: bool,
}

impl Check {
    /// The source answered as it should.
    fn verified(insecure: bool) -> Self {
        Self {
            ready: true,
            reason: "Verified".into(),
            message: String::new(),
            insecure,
        }
    }

    /// The source could not be used, for `reason`.
    fn failed(reason: &str, error: &dyn std::error::Error, insecure: bool) -> Self {
        Self {
            ready: false,
            reason: reason.to_owned(),
            message: error_text::chain(error),
            insecure,
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

async fn write_status<K>(
    ctx: &Context,
    object: &K,
    kind: &'static str,
    status: SourceStatus,
) -> Result<(), SourceError>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
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
    .map_err(|source| SourceError::WriteStatus {
        kind,
        namespace,
        name,
        source,
    })
}

/// Reconciles a `VmwareSource`.
///
/// # Errors
/// [`SourceError`] when status cannot be written.
pub(crate) async fn reconcile_vmware(
    source: Arc<VmwareSource>,
    ctx: Arc<Context>,
) -> Result<Action, SourceError> {
    if source.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let insecure = source.spec.insecure_skip_verify == Some(true);
    let check = match vmware::verify(&ctx.kube, &source).await {
        Ok(client) => {
            let _ = client.logout().await;
            Check::verified(insecure || client.tls_insecure())
        }
        Err(error) => Check::failed(error.reason(), &error, insecure),
    };
    let note = format!(
        "logged in to {} and found datacenter {}",
        source.spec.endpoint_address, source.spec.datacenter
    );
    report(
        &ctx,
        &*source,
        source.status.as_ref(),
        "VmwareSource",
        check,
        note,
    )
    .await
}

/// Reconciles an `OvaSource`: upstream's check (http or https URL, HEAD answered with 2xx), with
/// the reason in the conditions when it fails.
///
/// # Errors
/// [`SourceError`] when status cannot be written.
pub(crate) async fn reconcile_ova(source: Arc<OvaSource>, ctx: Arc<Context>) -> Result<Action, SourceError> {
    if source.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let insecure = source.spec.insecure_skip_verify == Some(true);
    let client = ova::OvaClient::connect(&ctx.kube, &source).await;
    let verified = match &client {
        Ok(client) => client.verify().await,
        Err(_) => Ok(()),
    };
    let check = match client.and_then(|c| verified.map(|()| c)) {
        Ok(client) => Check::verified(client.insecure()),
        Err(error) => Check::failed(error.reason(), &error, insecure),
    };
    let note = match ova::parse_url(&source.spec.url) {
        Ok(url) => format!("{} answered", ova::display_url(&url)),
        Err(_) => String::new(),
    };
    report(&ctx, &*source, source.status.as_ref(), "OvaSource", check, note).await
}

/// Writes a check's outcome (when it changed), with an Event when readiness flipped, and says
/// when to check again.
async fn report<K>(
    ctx: &Context,
    source: &K,
    previous: Option<&SourceStatus>,
    kind: &'static str,
    check: Check,
    ready_note: String,
) -> Result<Action, SourceError>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    ctx.metrics
        .source_checked(kind, if check.ready { "Ready" } else { &check.reason });
    let status = status_for(&check, previous, source.meta().generation);
    if previous != Some(&status) {
        let was_ready = previous.map(|s| &s.status) == Some(&ClusterStatus::ClusterReady);
        if check.ready != was_ready || previous.is_none() {
            let note = if check.ready {
                ready_note
            } else {
                check.message.clone()
            };
            ctx.event(
                source,
                !check.ready,
                if check.ready {
                    "ClusterReady"
                } else {
                    &check.reason
                },
                note,
            )
            .await;
        }
        if check.ready {
            tracing::info!(kind, source = %source.name_any(), "source ready");
        } else {
            tracing::warn!(kind, source = %source.name_any(), reason = %check.reason, message = %check.message, "source not ready");
        }
        write_status(ctx, source, kind, status).await?;
    }
    Ok(Action::requeue(if check.ready {
        ctx.settings.source_recheck
    } else {
        NOT_READY_RECHECK
    }))
}

/// Reconciles an `OpenstackSource`: logs in with its Secret, reads the catalog of its region and
/// lists servers, as upstream does, with the reason in the conditions when that fails.
///
/// # Errors
/// [`SourceError`] when status cannot be written.
pub(crate) async fn reconcile_openstack(
    source: Arc<OpenstackSource>,
    ctx: Arc<Context>,
) -> Result<Action, SourceError> {
    if source.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let insecure = source.spec.insecure_skip_verify == Some(true);
    let check = match openstack::verify(&ctx.kube, &source).await {
        Ok(session) => {
            let _ = session.client.logout().await;
            Check::verified(session.insecure)
        }
        Err(error) => Check::failed(error.reason(), &error, insecure),
    };
    let note = format!(
        "logged in to {} and listed the servers of region {:?}",
        source.spec.endpoint_address, source.spec.region
    );
    report(
        &ctx,
        &*source,
        source.status.as_ref(),
        "OpenstackSource",
        check,
        note,
    )
    .await
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
