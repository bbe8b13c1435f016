//! What every reconcile shares: the API client, settings, metrics, the background exports, the
//! Event recorder and the channel that wakes an import when its export changes state.

use std::sync::Arc;

use api::VirtualMachineImport;
use kube::{
    Resource,
    runtime::{
        events::{Event, EventType, Recorder, Reporter},
        reflector::ObjectRef,
    },
};
use tokio::sync::mpsc;

use crate::{export::Exports, metrics::Metrics, settings::Settings};

/// Shared state of the controller process.
pub(crate) struct Context {
    /// API client.
    pub kube: kube::Client,
    /// Settings.
    pub settings: Settings,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Background exports by import uid.
    pub exports: Arc<Exports>,
    recorder: Recorder,
}

impl Context {
    /// A context; `wake` feeds the import controller's `reconcile_on`.
    pub(crate) fn new(
        kube: kube::Client,
        settings: Settings,
        metrics: Arc<Metrics>,
        wake: mpsc::UnboundedSender<ObjectRef<VirtualMachineImport>>,
    ) -> Self {
        let reporter = Reporter {
            controller: "vm-import-controller".to_owned(),
            instance: Some(settings.identity.clone()),
        };
        let exports = Exports::new(kube.clone(), &settings, metrics.clone(), wake);
        Self {
            recorder: Recorder::new(kube.clone(), reporter),
            kube,
            settings,
            metrics,
            exports,
        }
    }

    /// Publishes an Event about `object`; failures are logged, never fatal.
    pub(crate) async fn event<K: Resource<DynamicType = ()>>(
        &self,
        object: &K,
        warning: bool,
        reason: &str,
        note: String,
    ) {
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.to_owned(),
            note: Some(truncate(note, 1000)),
            action: reason.to_owned(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, &object.object_ref(&())).await {
            tracing::warn!(%error, reason, "publishing an event failed");
        }
    }
}

fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}
