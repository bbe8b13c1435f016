//! Prometheus metrics and the health endpoints, served on the metrics port: imports by phase, bytes
//! exported and served, throughput, failures by reason, steps taken. Labels are low-cardinality
//! (phases, reasons, steps); never names or namespaces of user objects.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use http::StatusCode;
use hyper::{Request, Response};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::http_server::{self, Body};

/// `phase` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct PhaseLabel {
    /// `status.importStatus` (empty for new imports).
    pub phase: String,
}

/// `reason` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabel {
    /// A low-cardinality PascalCase reason.
    pub reason: String,
}

/// `kind` + `result` label of source checks.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct SourceCheckLabel {
    /// Source kind.
    pub kind: String,
    /// `Ready` or the failure reason.
    pub result: String,
}

/// Every metric the controller exports.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    imports: Family<PhaseLabel, Gauge>,
    phases: Mutex<HashMap<String, String>>,
    /// Logical disk bytes written by exports.
    pub export_bytes: Counter,
    /// Current export throughput over all imports, bytes per second.
    pub export_bytes_per_second: Gauge,
    /// Exports running now.
    pub exports_running: Gauge,
    /// Exports waiting for a concurrency slot.
    pub exports_queued: Gauge,
    /// Bytes sent by the image server.
    pub image_bytes_served: Counter,
    /// Imports that failed, by reason.
    pub failures: Family<ReasonLabel, Counter>,
    /// Import steps taken, by decision.
    pub steps: Family<ReasonLabel, Counter>,
    /// Source checks, by kind and result.
    pub source_checks: Family<SourceCheckLabel, Counter>,
    ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("vm_import");
        let imports = Family::<PhaseLabel, Gauge>::default();
        registry.register("imports", "VirtualMachineImports by phase", imports.clone());
        let export_bytes = Counter::default();
        registry.register(
            "export_bytes",
            "Logical disk bytes exported and converted",
            export_bytes.clone(),
        );
        let export_bytes_per_second = Gauge::default();
        registry.register(
            "export_throughput_bytes_per_second",
            "Current export throughput over all imports",
            export_bytes_per_second.clone(),
        );
        let exports_running = Gauge::default();
        registry.register("exports_running", "Exports running now", exports_running.clone());
        let exports_queued = Gauge::default();
        registry.register(
            "exports_queued",
            "Exports waiting for a concurrency slot",
            exports_queued.clone(),
        );
        let image_bytes_served = Counter::default();
        registry.register(
            "image_served_bytes",
            "Bytes sent by the image server",
            image_bytes_served.clone(),
        );
        let failures = Family::<ReasonLabel, Counter>::default();
        registry.register("failures", "Imports that failed, by reason", failures.clone());
        let steps = Family::<ReasonLabel, Counter>::default();
        registry.register("steps", "Import steps taken, by decision", steps.clone());
        let source_checks = Family::<SourceCheckLabel, Counter>::default();
        registry.register(
            "source_checks",
            "Source connectivity checks, by kind and result",
            source_checks.clone(),
        );
        Self {
            registry,
            imports,
            phases: Mutex::new(HashMap::new()),
            export_bytes,
            export_bytes_per_second,
            exports_running,
            exports_queued,
            image_bytes_served,
            failures,
            steps,
            source_checks,
            ready: AtomicBool::new(false),
        }
    }

    /// Records the phase of import `uid` (`None`: it is gone).
    pub(crate) fn set_phase(&self, uid: &str, phase: Option<&str>) {
        let Ok(mut phases) = self.phases.lock() else {
            return;
        };
        let previous = match phase {
            Some(phase) => phases.insert(uid.to_owned(), phase.to_owned()),
            None => phases.remove(uid),
        };
        if previous.as_deref() == phase {
            return;
        }
        if let Some(previous) = previous {
            self.imports.get_or_create(&PhaseLabel { phase: previous }).dec();
        }
        if let Some(phase) = phase {
            self.imports
                .get_or_create(&PhaseLabel {
                    phase: phase.to_owned(),
                })
                .inc();
        }
    }

    /// Counts a failure.
    pub(crate) fn failed(&self, reason: &str) {
        self.failures
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Counts a step.
    pub(crate) fn step(&self, reason: &str) {
        self.steps
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Counts a source check.
    pub(crate) fn source_checked(&self, kind: &str, result: &str) {
        self.source_checks
            .get_or_create(&SourceCheckLabel {
                kind: kind.to_owned(),
                result: result.to_owned(),
            })
            .inc();
    }

    /// `/readyz` answers 200 from now on (the controllers run and this replica leads).
    pub(crate) fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// The text exposition.
    pub(crate) fn render(&self) -> String {
        let mut text = String::new();
        if encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }

    /// Answers `/metrics`, `/healthz`, `/readyz`.
    pub(crate) fn handle<B>(self: &Arc<Self>, request: &Request<B>) -> Response<Body> {
        match request.uri().path() {
            "/metrics" => {
                let mut response = Response::new(http_server::full(self.render()));
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                response
            }
            "/healthz" => http_server::text(StatusCode::OK, "ok\n"),
            "/readyz" if self.ready.load(Ordering::Relaxed) => http_server::text(StatusCode::OK, "ok\n"),
            "/readyz" => http_server::text(StatusCode::SERVICE_UNAVAILABLE, "not leading or not started\n"),
            _ => http_server::text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_move_between_gauges() {
        let metrics = Metrics::new();
        metrics.set_phase("a", Some(""));
        metrics.set_phase("b", Some(""));
        metrics.set_phase("a", Some("sourceReady"));
        metrics.set_phase("b", None);
        metrics.failed("ExportFailed");
        let text = metrics.render();
        assert!(
            text.contains("vm_import_imports{phase=\"sourceReady\"} 1"),
            "{text}"
        );
        assert!(text.contains("vm_import_imports{phase=\"\"} 0"), "{text}");
        assert!(
            text.contains("vm_import_failures_total{reason=\"ExportFailed\"} 1"),
            "{text}"
        );
    }
}
