//! The Kubernetes controller of vm-import: a drop-in replacement for Harvester's
//! `vm-import-controller`. It reconciles `VmwareSource`, `OpenstackSource` and `OvaSource` and
//! `VirtualMachineImport` through `plan`'s state
//! machine, runs exports in the background, serves the converted images on port 8080 and metrics on
//! a second port.
//!
//! ```text
//!  run ─► CRDs applied ─► leader lease ─► ┬─ import controller (watches imports, images, VMs; woken by exports)
//!                                         ├─ source controllers (watch sources and their Secrets)
//!                                         ├─ image server :8080 (GET/HEAD/Range of finished images)
//!                                         └─ metrics :9090 (/metrics, /healthz, /readyz)
//! ```
//!
//! * [`settings`]: what the binary passes in;
//! * [`import`]: the import reconciler (gather facts → `plan::next` → execute → status, Event);
//! * [`export`]: background exports with global and per-host limits, progress in status;
//! * [`source`]: the source seam, everything that differs per kind (vSphere, OVA, OpenStack): the
//!   VM's description, power, stop, the export's transfer, the source object's check;
//!   [`source_objects`]: the one reconciler of source objects;
//! * [`image_server`], [`metrics`], [`http_server`]: the two HTTP listeners;
//! * [`leader`], [`crds`], [`kinds`], [`context`], [`time`]: plumbing.

mod context;
mod crds;
mod disks;
mod export;
mod http_server;
mod image_server;
mod import;
pub mod kinds;
mod leader;
mod metrics;
pub mod preflight;
mod secret;
pub mod settings;
mod source;
mod source_objects;
mod throttle;
mod time;

pub use source::vmware;

use std::sync::Arc;

use api::{OpenstackSource, OvaSource, VirtualMachineImport, VmwareSource};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Secret, SecretReference};
use kube::{
    Api, ResourceExt,
    api::DynamicObject,
    runtime::{Controller, controller::Action, reflector::ObjectRef, watcher},
};
use tokio::{net::TcpListener, sync::mpsc};

pub use settings::Settings;

use crate::{context::Context, image_server::ImageServer, metrics::Metrics, source::SourceObject};

/// Why the controller stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// No usable kubeconfig or in-cluster config.
    #[error("connecting to the Kubernetes API")]
    Kube(#[source] kube::Error),
    /// A listener could not bind.
    #[error("listening on {address}")]
    Listen {
        /// The address.
        address: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The image directory cannot be created.
    #[error("creating the image directory {path}")]
    ImageDir {
        /// The path.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The CRDs could not be installed.
    #[error(transparent)]
    Crds(#[from] crds::CrdError),
    /// Leadership was lost; the process exits so it restarts as a candidate.
    #[error(transparent)]
    Leader(#[from] leader::LeaderError),
}

/// Runs the controller until SIGTERM/SIGINT or until leadership is lost.
///
/// # Errors
/// [`RunError`].
pub async fn run(settings: Settings) -> Result<(), RunError> {
    let client = kube::Client::try_default().await.map_err(RunError::Kube)?;
    run_with_client(client, settings).await
}

/// How long the controllers get to finish their reconciles after SIGTERM/SIGINT. Kubernetes'
/// default grace period is 30 s; the process must be gone well within it even when the API server
/// is unreachable and every call it makes is being retried.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Resolves on the first SIGTERM or SIGINT.
async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        // Without signal handling the default disposition ends the process anyway.
        _ => std::future::pending().await,
    }
}

/// [`run`] with a given client (tests point it at the lab). Returns within [`SHUTDOWN_GRACE`] of
/// SIGTERM/SIGINT whatever it was doing (waiting for leadership, installing CRDs, reconciling).
///
/// # Errors
/// [`RunError`].
pub async fn run_with_client(client: kube::Client, settings: Settings) -> Result<(), RunError> {
    // This function owns the signals: the controllers stop when told, never on a signal of their
    // own, so the grace period below always starts with the stop.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let work = serve(client, settings, StopRequested(stop_rx));
    tokio::pin!(work);
    tokio::select! {
        result = &mut work => result,
        () = stop_signal() => {
            tracing::info!(grace = ?SHUTDOWN_GRACE, "stop signal received; stopping");
            let _ = stop_tx.send(true);
            match tokio::time::timeout(SHUTDOWN_GRACE, &mut work).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::warn!("not stopped within the grace period; exiting now");
                    Ok(())
                }
            }
        }
    }
}

/// Resolves once [`run_with_client`] has been told to stop; each controller waits on a clone.
#[derive(Clone)]
struct StopRequested(tokio::sync::watch::Receiver<bool>);

impl StopRequested {
    fn wait(self) -> impl std::future::Future<Output = ()> + Send + Sync + 'static {
        let mut receiver = self.0;
        async move {
            // An error means the sender is gone, which happens only when the process is ending.
            let _ = receiver.wait_for(|stop| *stop).await;
        }
    }
}

async fn serve(client: kube::Client, settings: Settings, stop: StopRequested) -> Result<(), RunError> {
    tokio::fs::create_dir_all(&settings.image_dir)
        .await
        .map_err(|source| RunError::ImageDir {
            path: settings.image_dir.clone(),
            source,
        })?;
    let metrics = Arc::new(Metrics::new());
    let bind = |address| async move {
        TcpListener::bind(address)
            .await
            .map_err(|source| RunError::Listen { address, source })
    };
    let metrics_listener = bind(settings.metrics_listen).await?;
    let image_listener = bind(settings.listen).await?;
    tracing::info!(metrics = %settings.metrics_listen, images = %settings.listen, image_dir = %settings.image_dir.display(), "listening");
    {
        let metrics = metrics.clone();
        tokio::spawn(http_server::serve(metrics_listener, move |request| {
            let response = metrics.handle(&request);
            async move { response }
        }));
    }

    let elector = settings.leader_election_namespace.as_ref().map(|namespace| {
        leader::Elector::new(
            client.clone(),
            namespace,
            settings::LEADER_LEASE_NAME,
            &settings.identity,
        )
    });
    if let Some(elector) = &elector {
        elector.acquire().await;
    }
    if settings.install_crds {
        crds::install(&client).await?;
    }
    {
        let server = ImageServer::new(settings.image_dir.clone(), metrics.clone());
        tokio::spawn(http_server::serve(image_listener, move |request| {
            let server = server.clone();
            async move { server.handle(request).await }
        }));
    }

    let (wake_tx, wake_rx) = mpsc::unbounded_channel();
    let ctx = Arc::new(Context::new(client.clone(), settings, metrics.clone(), wake_tx));
    metrics.set_ready(true);

    let controllers = futures::future::join4(
        run_import_controller(client.clone(), ctx.clone(), wake_rx, stop.clone()),
        run_source_controller::<VmwareSource>(client.clone(), ctx.clone(), stop.clone()),
        run_source_controller::<OpenstackSource>(client.clone(), ctx.clone(), stop.clone()),
        run_source_controller::<OvaSource>(client.clone(), ctx.clone(), stop),
    );
    match elector {
        Some(elector) => {
            tokio::select! {
                _ = controllers => {},
                lost = elector.keep() => {
                    metrics.set_ready(false);
                    return Err(lost.into());
                }
            }
        }
        None => {
            controllers.await;
        }
    }
    tracing::info!("controller stopped");
    Ok(())
}

/// An API over all namespaces, or the one the controller is limited to.
fn scoped<K>(client: &kube::Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

fn scoped_dynamic(
    client: &kube::Client,
    namespace: Option<&str>,
    resource: &kube::api::ApiResource,
) -> Api<DynamicObject> {
    match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, resource),
        None => Api::all_with(client.clone(), resource),
    }
}

fn source_error_policy<K>(_: Arc<K>, error: &source_objects::CheckError, ctx: Arc<Context>) -> Action {
    tracing::warn!(reason = error.reason(), error = %error_text::chain(error), "source reconcile failed");
    ctx.metrics.failed(error.reason());
    Action::requeue(std::time::Duration::from_secs(15))
}

async fn run_import_controller(
    client: kube::Client,
    ctx: Arc<Context>,
    wake: mpsc::UnboundedReceiver<ObjectRef<VirtualMachineImport>>,
    stop: StopRequested,
) {
    let namespace = ctx.settings.namespace.clone();
    let namespace = namespace.as_deref();
    let imports = scoped::<VirtualMachineImport>(&client, namespace);
    let controller = Controller::new(imports, watcher::Config::default());
    let store = controller.store();
    let images = scoped_dynamic(&client, namespace, &kinds::image_resource());
    let vms = scoped_dynamic(&client, namespace, &kinds::virtual_machine_resource());
    let imported = format!("{}={}", api::names::LABEL_IMPORTED, api::names::LABEL_TRUE);
    let wake = futures::stream::unfold(wake, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
    controller
        .watches_with(
            images,
            kinds::image_resource(),
            watcher::Config::default().labels(&imported),
            |image| {
                // Upstream's relation: the import named in the image's owner reference.
                let namespace = image.namespace();
                image
                    .owner_references()
                    .iter()
                    .filter(|o| o.kind.eq_ignore_ascii_case("VirtualMachineImport"))
                    .map(|o| {
                        let reference = ObjectRef::new(&o.name);
                        match &namespace {
                            Some(ns) => reference.within(ns),
                            None => reference,
                        }
                    })
                    .collect::<Vec<_>>()
            },
        )
        .watches_with(
            vms,
            kinds::virtual_machine_resource(),
            watcher::Config::default().labels(&imported),
            move |vm| {
                // The import whose status names this VM (upstream polls every 2 minutes instead).
                let namespace = vm.namespace();
                let name = vm.name_any();
                store
                    .state()
                    .into_iter()
                    .filter(|i| {
                        i.namespace() == namespace
                            && i.status
                                .as_ref()
                                .is_some_and(|s| s.imported_virtual_machine_name == name)
                    })
                    .map(|i| ObjectRef::from_obj(&*i))
                    .collect::<Vec<_>>()
            },
        )
        .reconcile_on(wake)
        .graceful_shutdown_on(stop.wait())
        .run(import::reconcile, import::on_error, ctx)
        .for_each(|_| async {})
        .await;
}

/// Whether `secret` is the one `reference` names, a reference without a namespace meaning the
/// source's own.
fn names_secret(reference: &SecretReference, source_namespace: Option<String>, secret: &Secret) -> bool {
    let secret_namespace = reference
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .or(source_namespace);
    reference.name.as_deref() == Some(secret.name_any().as_str()) && secret_namespace == secret.namespace()
}

/// Runs the controller of one source kind: its check on every change of a source, and again on
/// every change of a Secret a source's `credentials` names.
async fn run_source_controller<K: SourceObject>(
    client: kube::Client,
    ctx: Arc<Context>,
    stop: StopRequested,
) {
    let namespace = ctx.settings.namespace.clone();
    let namespace = namespace.as_deref();
    let controller = Controller::new(scoped::<K>(&client, namespace), watcher::Config::default());
    let store = controller.store();
    controller
        .watches(
            scoped::<Secret>(&client, namespace),
            watcher::Config::default(),
            move |secret| {
                store
                    .state()
                    .into_iter()
                    .filter(|s| {
                        s.credentials()
                            .is_some_and(|reference| names_secret(reference, s.namespace(), &secret))
                    })
                    .map(|s| ObjectRef::from_obj(&*s))
                    .collect::<Vec<_>>()
            },
        )
        .graceful_shutdown_on(stop.wait())
        .run(source_objects::reconcile::<K>, source_error_policy, ctx)
        .for_each(|_| async {})
        .await;
}
