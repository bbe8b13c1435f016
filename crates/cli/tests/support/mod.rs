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
        let mut process = Self {
            child,
            port,
            metrics_port,
            log,
        };
        process.wait_ready();
        process
    }

    /// Blocks until `/readyz` answers 200, i.e. the controller has installed its CRDs (which carry
    /// our additive fields; objects created earlier would lose them to the lab's upstream-shaped
    /// CRDs) and its reconcilers run.
    fn wait_ready(&mut self) {
        use std::io::{Read, Write};
        let start = Instant::now();
        loop {
            let answer =
                std::net::TcpStream::connect(("127.0.0.1", self.metrics_port)).and_then(|mut stream| {
                    stream.write_all(b"GET /readyz HTTP/1.0\r\nHost: controller\r\n\r\n")?;
                    let mut text = String::new();
                    stream.read_to_string(&mut text)?;
                    Ok(text)
                });
            if answer.is_ok_and(|text| text.starts_with("HTTP/1.1 200") || text.starts_with("HTTP/1.0 200")) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the controller exited ({status}) before it was ready:\n{}",
                    self.log_tail()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the controller was not ready after 60 s:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
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

    /// A controller for this namespace with `env` set (its settings' variables).
    #[allow(dead_code)] // Not every test binary that includes this module uses it.
    pub(crate) fn start_controller_with_env(&self, env: &[(&str, &str)]) -> ControllerProcess {
        let env: Vec<(&str, &std::ffi::OsStr)> =
            env.iter().map(|(k, v)| (*k, std::ffi::OsStr::new(*v))).collect();
        ControllerProcess::start_with_env(
            &self.namespace,
            &self.image_dir(),
            self.dir.path().join("controller.log"),
            &env,
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

    /// A `VmwareSource` `name` for the lab's vCenter, with the lab user and `password`.
    pub(crate) async fn source(&self, name: &str, password: &str) {
        self.vmware_source(name, json!({ "password": password }), json!({}))
            .await;
    }

    /// A `VmwareSource` `name` for the lab's vCenter and its Secret: the lab user, password and
    /// CA, with `secret` and `spec` merged over them (a null removes a key).
    pub(crate) async fn vmware_source(&self, name: &str, secret: Value, spec: Value) {
        let lab = lab::lab();
        let ca = String::from_utf8(lab::ca_pem()).unwrap();
        let base = json!({"username": lab.vsphere_username, "password": lab.vsphere_password, "caCert": ca});
        self.secret(name, merged(base, secret)).await;
        let base = json!({"endpoint": lab.vsphere_url, "dc": lab.vsphere_dc,
                          "credentials": {"name": name, "namespace": self.namespace}});
        let resource = ApiResource::erase::<api::VmwareSource>(&());
        self.create_source(&resource, name, merged(base, spec)).await;
    }

    /// Creates the Secret `name` with these string values.
    pub(crate) async fn secret(&self, name: &str, data: Value) {
        self.api::<Secret>()
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": name}, "stringData": data})).unwrap(),
            )
            .await
            .unwrap();
    }

    /// Creates the source `name` of `resource`'s kind (a `VmwareSource`, `OpenstackSource`, ...).
    pub(crate) async fn create_source(&self, resource: &ApiResource, name: &str, spec: Value) {
        self.dynamic(resource)
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "apiVersion": resource.api_version, "kind": resource.kind,
                    "metadata": {"name": name}, "spec": spec
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

/// `base` with the keys of `overrides` set over it; a null in `overrides` removes the key.
pub(crate) fn merged(mut base: Value, overrides: Value) -> Value {
    if let (Some(object), Value::Object(overrides)) = (base.as_object_mut(), overrides) {
        for (key, value) in overrides {
            if value.is_null() {
                object.remove(&key);
            } else {
                object.insert(key, value);
            }
        }
    }
    base
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

/// SHA-512 of the disk a served image file holds, whatever its format: what a test compares with
/// the source disk's digest.
#[allow(dead_code)] // Not every test binary that includes this module uses it.
pub(crate) fn disk_sha512(path: &Path) -> String {
    match harvester::content_of(path) {
        Ok(("raw", _)) => harvester::sha512_of(path).unwrap_or_else(|e| panic!("{e}")),
        Ok((_, content)) => content,
        Err(e) => panic!("{e}"),
    }
}

/// Asserts that Harvester (the stand-in) downloaded `disk`'s image, that the download matched the
/// checksum in status, and that the disk it holds has the SHA-512 `content` (the source disk's).
#[allow(dead_code)] // Not every test binary that includes this module uses it.
pub(crate) fn assert_served(harvester: &harvester::StandIn, disk: &api::DiskInfo, content: &str) {
    let fetched = harvester
        .fetched(&disk.virtual_machine_image)
        .unwrap_or_else(|| panic!("{} was not downloaded: {disk:?}", disk.virtual_machine_image));
    assert_eq!(
        disk.checksum.as_deref(),
        Some(fetched.sha512.as_str()),
        "the checksum in status is the served file's: {disk:?}"
    );
    assert_eq!(
        fetched.content_sha512, content,
        "served bytes of {} differ from the source disk",
        disk.name
    );
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
