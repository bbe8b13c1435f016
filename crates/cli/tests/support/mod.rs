//! Shared by the controller end-to-end tests (`controller.rs`: VMware, `controller_ova.rs`: OVA):
//! the `vm-import controller` process, a namespace per test, and (in [`harvester`]) a stand-in for
//! Harvester and KubeVirt that downloads every image as Longhorn/CDI would and marks images and VMs
//! ready.

// Test helpers: a failed step must fail the test loudly; not every binary uses every helper.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../../vsphere/tests/lab/mod.rs"]
pub(crate) mod lab;

pub(crate) mod harvester;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use api::{ImportPhase, VirtualMachineImport};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::{
    Api,
    api::{ApiResource, DynamicObject, PostParams},
};
use serde_json::{Value, json};

pub(crate) use controller::kinds::{nad_resource, virtual_machine_resource as vm_resource};
use lab::unique;

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `vm-import controller` process limited to one namespace.
pub(crate) struct ControllerProcess {
    pub(crate) child: Child,
    pub(crate) port: u16,
    pub(crate) metrics_port: u16,
    pub(crate) log: PathBuf,
}

impl ControllerProcess {
    pub(crate) fn start(namespace: &str, image_dir: &Path, log: PathBuf) -> Self {
        Self::start_with_env(namespace, image_dir, log, &[])
    }

    /// [`ControllerProcess::start`] with more environment (e.g. `TMPDIR`).
    pub(crate) fn start_with_env(
        namespace: &str,
        image_dir: &Path,
        log: PathBuf,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Self {
        let port = free_port();
        let metrics_port = free_port();
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_vm-import"))
            .arg("controller")
            .arg("--image-dir")
            .arg(image_dir)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
            .args([
                "--namespace",
                namespace,
                "--no-leader-election",
                "--progress-seconds",
                "1",
            ])
            .env("KUBECONFIG", &lab::lab().kubeconfig)
            .env("SVC_ADDRESS", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "info,vmi_controller=debug,controller=debug")
            .env_remove("POD_NAMESPACE")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("starting vm-import controller");
        Self {
            child,
            port,
            metrics_port,
            log,
        }
    }

    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub(crate) async fn metrics(&self) -> String {
        reqwest::get(format!("http://127.0.0.1:{}/metrics", self.metrics_port))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One namespace with a VmwareSource for the lab's simulator.
pub(crate) struct Scene {
    pub(crate) client: kube::Client,
    pub(crate) namespace: String,
    pub(crate) dir: tempfile::TempDir,
}

impl Scene {
    pub(crate) async fn new(prefix: &str) -> Self {
        let client = lab::lab().kube_client().await.unwrap();
        let namespace = unique(prefix).to_ascii_lowercase();
        let namespace = namespace.chars().take(60).collect::<String>();
        Api::<Namespace>::all(client.clone())
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": namespace}})).unwrap(),
            )
            .await
            .unwrap();
        Self {
            client,
            namespace,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Where the controller writes and serves images.
    pub(crate) fn image_dir(&self) -> PathBuf {
        self.dir.path().join("images")
    }

    /// A controller for this namespace; a restarted one appends to the same log.
    pub(crate) fn start_controller(&self) -> ControllerProcess {
        ControllerProcess::start(
            &self.namespace,
            &self.image_dir(),
            self.dir.path().join("controller.log"),
        )
    }

    /// Harvester and KubeVirt played for this namespace until dropped.
    pub(crate) fn harvester(&self, options: harvester::Options) -> harvester::StandIn {
        harvester::StandIn::start(self.client.clone(), &self.namespace, options)
    }

    /// Waits until the import reaches a terminal phase.
    pub(crate) async fn wait_finished(
        &self,
        controller: &ControllerProcess,
        name: &str,
        timeout: Duration,
    ) -> VirtualMachineImport {
        self.wait_import(controller, name, timeout, |i| {
            matches!(
                phase(i),
                ImportPhase::VirtualMachineRunning | ImportPhase::MigrationFailed | ImportPhase::Invalid
            )
        })
        .await
    }

    pub(crate) fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    pub(crate) fn dynamic(&self, resource: &ApiResource) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), &self.namespace, resource)
    }

    pub(crate) async fn source(&self, name: &str, password: &str) {
        let lab = lab::lab();
        let ca = String::from_utf8(lab::ca_pem()).unwrap();
        self.api::<Secret>()
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "metadata": {"name": name},
                    "stringData": {"username": lab.vsphere_username, "password": password, "caCert": ca}
                }))
                .unwrap(),
            )
            .await
            .unwrap();
        self.dynamic(&ApiResource::erase::<api::VmwareSource>(&()))
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "apiVersion": "migration.harvesterhci.io/v1beta1", "kind": "VmwareSource",
                    "metadata": {"name": name},
                    "spec": {"endpoint": lab.vsphere_url, "dc": lab.vsphere_dc,
                             "credentials": {"name": name, "namespace": self.namespace}}
                }))
                .unwrap(),
            )
            .await
            .unwrap();
    }

    pub(crate) async fn nad(&self, name: &str) {
        self.dynamic(&nad_resource())
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
                    "metadata": {"name": name},
                    "spec": {"config": "{\"cniVersion\":\"0.3.1\",\"type\":\"bridge\"}"}
                }))
                .unwrap(),
            )
            .await
            .unwrap();
    }

    pub(crate) async fn import(&self, name: &str, source: &str, vm: &str, extra: Value) {
        self.import_from("VmwareSource", name, source, vm, extra).await;
    }

    /// An import from a source of `kind`; `extra` is merged into its spec.
    pub(crate) async fn import_from(&self, kind: &str, name: &str, source: &str, vm: &str, extra: Value) {
        let mut spec = json!({
            "virtualMachineName": vm,
            "sourceCluster": {"name": source, "namespace": self.namespace, "kind": kind,
                              "apiVersion": "migration.harvesterhci.io/v1beta1"},
        });
        if let (Some(spec), Value::Object(extra)) = (spec.as_object_mut(), extra) {
            spec.extend(extra);
        }
        self.dynamic(&ApiResource::erase::<VirtualMachineImport>(&()))
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "apiVersion": "migration.harvesterhci.io/v1beta1", "kind": "VirtualMachineImport",
                    "metadata": {"name": name}, "spec": spec
                }))
                .unwrap(),
            )
            .await
            .unwrap();
    }

    pub(crate) async fn get_import(&self, name: &str) -> VirtualMachineImport {
        self.api::<VirtualMachineImport>().get(name).await.unwrap()
    }

    pub(crate) async fn wait_import(
        &self,
        controller: &ControllerProcess,
        name: &str,
        timeout: Duration,
        done: impl Fn(&VirtualMachineImport) -> bool,
    ) -> VirtualMachineImport {
        let start = Instant::now();
        loop {
            let import = self.get_import(name).await;
            if done(&import) {
                return import;
            }
            assert!(
                start.elapsed() < timeout,
                "import {name} stuck: {}\n--- controller log ---\n{}",
                serde_json::to_string_pretty(&import.status).unwrap(),
                controller.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    pub(crate) async fn source_status(&self, name: &str) -> Value {
        self.status_of(&ApiResource::erase::<api::VmwareSource>(&()), name)
            .await
    }

    /// Waits (60 s at most) until the source `name` of kind `resource` was checked (`status.status`
    /// set) and returns its status.
    pub(crate) async fn source_checked(
        &self,
        controller: &ControllerProcess,
        resource: &ApiResource,
        name: &str,
    ) -> Value {
        let start = std::time::Instant::now();
        loop {
            let status = self.status_of(resource, name).await;
            if status["status"].as_str().is_some_and(|s| !s.is_empty()) {
                return status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "source {name} never checked: {status}\n{}",
                controller.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `status` of the object `name` of kind `resource`.
    pub(crate) async fn status_of(&self, resource: &ApiResource, name: &str) -> Value {
        let object = self.dynamic(resource).get(name).await.unwrap();
        object.data["status"].clone()
    }
}

/// The condition of `type_` in a source's status (JSON).
pub(crate) fn condition<'a>(status: &'a Value, type_: &str) -> Option<&'a Value> {
    status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
}

/// The import's `ImportFailed` condition; fails the test when there is none.
pub(crate) fn import_failed(import: &VirtualMachineImport) -> api::Condition {
    let status = import.status.clone().unwrap_or_default();
    api::condition::find(&status.import_conditions, &api::ConditionType::ImportFailed)
        .cloned()
        .unwrap_or_else(|| panic!("no ImportFailed condition: {status:#?}"))
}

pub(crate) fn phase(import: &VirtualMachineImport) -> ImportPhase {
    import.status.clone().unwrap_or_default().phase
}

pub(crate) fn files_in(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}
