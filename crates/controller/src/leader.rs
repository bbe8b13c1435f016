//! Leader election over a `coordination.k8s.io/v1` Lease, so two replicas (a rolling update, a
//! mis-scaled Deployment) never export into the same image directory at once. The leader renews
//! every few seconds; a leader that cannot renew before the lease expires exits, and Kubernetes
//! restarts it as a candidate.

use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{
    Api,
    api::{PostParams, ResourceExt},
};

/// Lease duration: a dead leader's lease is taken over after this long.
pub(crate) const LEASE_DURATION: Duration = Duration::from_secs(15);
const RENEW_EVERY: Duration = Duration::from_secs(5);
const RETRY_EVERY: Duration = Duration::from_secs(2);

/// Why leadership was lost or could not be sought.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// The Lease could not be renewed within its duration.
    #[error("lost the leader lease {namespace}/{name}: {detail}")]
    Lost {
        /// Lease namespace.
        namespace: String,
        /// Lease name.
        name: String,
        /// Last error.
        detail: String,
    },
}

/// A leader-election participant.
#[derive(Clone)]
pub(crate) struct Elector {
    api: Api<Lease>,
    namespace: String,
    name: String,
    identity: String,
}

fn seconds(duration: Duration) -> i32 {
    i32::try_from(duration.as_secs()).unwrap_or(i32::MAX)
}

impl Elector {
    /// Competes for Lease `namespace/name` as `identity`.
    pub(crate) fn new(client: kube::Client, namespace: &str, name: &str, identity: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            identity: identity.to_owned(),
        }
    }

    /// One attempt: true when this participant holds the lease afterwards.
    async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    namespace: Some(self.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(seconds(LEASE_DURATION)),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let ours = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        let duration = spec
            .lease_duration_seconds
            .map_or(LEASE_DURATION.as_secs(), |s| u64::try_from(s).unwrap_or_default());
        let expired = spec.renew_time.as_ref().is_none_or(|renewed| {
            let age = now.duration_since(renewed.0);
            Duration::try_from(age).is_ok_and(|age| age > Duration::from_secs(duration))
        });
        if !ours && !expired {
            return Ok(false);
        }
        if !ours {
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            tracing::info!(lease = %self.name, "taking over an expired leader lease");
        }
        spec.renew_time = Some(MicroTime(now));
        spec.lease_duration_seconds = Some(seconds(LEASE_DURATION));
        // Replace carries the resourceVersion: two candidates cannot both win.
        match self
            .api
            .replace(&lease.name_any(), &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits until this participant leads.
    pub(crate) async fn acquire(&self) {
        let mut logged = false;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    tracing::info!(lease = %self.name, identity = %self.identity, "became the leader");
                    return;
                }
                Ok(false) if !logged => {
                    tracing::info!(lease = %self.name, "another replica leads; waiting");
                    logged = true;
                }
                Ok(false) => {}
                Err(error) => tracing::warn!(%error, "leader election attempt failed"),
            }
            tokio::time::sleep(RETRY_EVERY).await;
        }
    }

    /// Renews forever; returns when leadership is lost.
    pub(crate) async fn keep(&self) -> LeaderError {
        let mut last_renewal = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(RENEW_EVERY).await;
            let detail = match self.try_acquire_or_renew().await {
                Ok(true) => {
                    last_renewal = tokio::time::Instant::now();
                    continue;
                }
                Ok(false) => "another replica holds the lease".to_owned(),
                Err(error) => error.to_string(),
            };
            if last_renewal.elapsed() >= LEASE_DURATION || detail.starts_with("another") {
                return LeaderError::Lost {
                    namespace: self.namespace.clone(),
                    name: self.name.clone(),
                    detail,
                };
            }
            tracing::warn!(%detail, "renewing the leader lease failed; retrying");
        }
    }
}
