//! The `VirtualMachineImport` reconciler: gather the facts `plan::next` asks for, execute the one
//! decision it returns, write status, publish an Event. Long work (the export) runs in the
//! background ([`crate::export`]) and is observed, never awaited; everything a reconcile does
//! itself is a bounded API call.
//!
//! ```text
//!  reconcile ─► add finalizer ─► loop { next(&observed) ─► Observe(fact) ─► gather::fact }
//!                                           └─► decision ─► execute::apply ─► status, Event, metrics
//! ```

mod error;
mod execute;
mod finalizer;
mod gather;

use std::{sync::Arc, time::Duration};

use api::{VirtualMachineImport, names::IMPORT_FINALIZER};
use kube::{Resource, ResourceExt, runtime::controller::Action};
use plan::Decision;

pub(crate) use self::error::ImportError;
use self::error::MAX_OBSERVATIONS;
use crate::context::Context;

/// Reconciles one import.
///
/// # Errors
/// [`ImportError`]; the controller retries with backoff.
pub(crate) async fn reconcile(
    import: Arc<VirtualMachineImport>,
    ctx: Arc<Context>,
) -> Result<Action, ImportError> {
    let uid = import.uid().unwrap_or_default();
    let deleting = import.meta().deletion_timestamp.is_some();
    if deleting && !import.finalizers().iter().any(|f| f == IMPORT_FINALIZER) {
        ctx.metrics.set_phase(&uid, None);
        return Ok(Action::await_change());
    }
    if !deleting && !import.finalizers().iter().any(|f| f == IMPORT_FINALIZER) {
        finalizer::add_finalizer(&ctx, &import).await?;
        // The metadata write comes back as a watch event.
        return Ok(Action::await_change());
    }
    let status = import.status.clone().unwrap_or_default();
    ctx.metrics.set_phase(&uid, Some(status.phase.as_str()));

    let mut facts = gather::Facts::default();
    for _ in 0..MAX_OBSERVATIONS {
        let observed = facts.observed(&import.spec, &status, deleting);
        let decision = plan::next(&observed);
        if let Decision::Observe(fact) = decision {
            facts.gather(&ctx, &import, &status, fact).await?;
            continue;
        }
        if !matches!(decision, Decision::Wait { .. } | Decision::Done) {
            ctx.metrics.step(decision.reason());
            tracing::info!(import = %import.name_any(), namespace = %import.namespace().unwrap_or_default(), phase = %status.phase.as_str(), step = decision.reason(), "import step");
        }
        return execute::apply(&ctx, &import, status.clone(), &mut facts, decision).await;
    }
    Err(ImportError::Undecided)
}

/// Error policy: log, count, tell the user with an Event, retry with a short backoff.
pub(crate) fn on_error(import: Arc<VirtualMachineImport>, error: &ImportError, ctx: Arc<Context>) -> Action {
    if matches!(error, ImportError::Conflict) {
        return Action::requeue(Duration::from_millis(500));
    }
    let message = error_text::chain(error);
    tracing::warn!(import = %import.name_any(), namespace = %import.namespace().unwrap_or_default(), reason = error.reason(), error = %message, "reconcile failed; retrying");
    ctx.metrics.failed(error.reason());
    let reason = error.reason();
    tokio::spawn(async move {
        ctx.event(&*import, true, reason, message).await;
    });
    Action::requeue(Duration::from_secs(10))
}
