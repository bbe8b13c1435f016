//! `OpenstackSource` end to end on the lab: the real `vm-import controller` process and
//! kube-apiserver, the lab's real Keystone and Glance and its stateful Nova/Cinder/Neutron fakes
//! (shaped and faulted through `OPENSTACK_CONTROL_URL`). The test plays Harvester as `controller.rs`
//! does, checks every served image byte for byte against the raw disk the server was made from, and
//! checks that no temporary snapshot, volume or image is left at the cloud.

// Test helpers: a failed step must fail the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use api::{ImportPhase, OpenstackSource, VirtualMachineImport};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ApiResource, PostParams};
use openstack::TlsMode;
use serde_json::{Value, json};
use support::{
    ControllerProcess, Scene, condition, harvester, import_failed, lab::sha512_file, merged, phase,
    vm_resource,
};
use test_support::{
    Lab,
    openstack::{KeystoneAdmin, OpenstackLab},
};

fn os_lab() -> OpenstackLab {
    OpenstackLab::of(Lab::get()).expect("the lab has its OpenStack part")
}

fn ca(os: &OpenstackLab) -> String {
    std::fs::read_to_string(&os.ca_cert).unwrap()
}

/// The lab's control API.
struct Control {
    http: reqwest::Client,
    url: String,
    password: String,
}

impl Control {
    fn new(os: &OpenstackLab) -> Self {
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(
                openstack::tls::client_config(&TlsMode::CaBundle(ca(os).into_bytes())).unwrap(),
            )
            .build()
            .unwrap();
        Self {
            http,
            url: os.control_url.clone(),
            password: os.admin_password.clone(),
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.url))
            .basic_auth("admin", Some(&self.password));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        assert!(status.is_success(), "{method} {path}: {status}: {text}");
        if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        }
    }

    async fn create_server(&self, spec: Value) -> Value {
        self.call(reqwest::Method::POST, "/servers", Some(spec)).await
    }

    async fn fault(&self, fault: Value) {
        self.call(reqwest::Method::POST, "/faults", Some(fault)).await;
    }

    /// Snapshots, volumes and images named `prefix…`.
    async fn count_objects(&self, prefix: &str) -> (usize, Value) {
        let objects = self
            .call(
                reqwest::Method::GET,
                &format!("/objects?namePrefix={prefix}"),
                None,
            )
            .await;
        let count = ["snapshots", "volumes", "images"]
            .iter()
            .map(|k| objects[k].as_array().map_or(0, Vec::len))
            .sum();
        (count, objects)
    }

    /// Waits (bounded) until nothing named `prefix…` is left.
    async fn assert_no_objects(&self, prefix: &str) {
        let mut last = Value::Null;
        for _ in 0..150 {
            let (count, objects) = self.count_objects(prefix).await;
            if count == 0 {
                return;
            }
            last = objects;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("temporary objects named {prefix}* left: {last}");
    }
}

/// Waits (120 s at most) until the failed import `name` has no temporary objects recorded, and
/// checks that none named `prefix…` is left at the cloud.
async fn failed_and_cleaned(
    scene: &Scene,
    controller: &ControllerProcess,
    control: &Control,
    name: &str,
    prefix: &str,
) {
    let import = scene
        .wait_import(controller, name, Duration::from_secs(120), |i| {
            i.status
                .as_ref()
                .is_some_and(|s| s.source_temporary_objects.is_none())
        })
        .await;
    assert_eq!(phase(&import), ImportPhase::MigrationFailed);
    control.assert_no_objects(prefix).await;
}

/// A raw disk of `mib` MiB with distinct non-zero regions (the rest a hole).
fn raw_disk(dir: &Path, name: &str, mib: u64, seed: u8) -> PathBuf {
    test_support::disk::seeded_raw_disk(dir, name, mib, seed).expect("writing a test disk")
}

fn qcow2_of(raw: &Path) -> PathBuf {
    let out = raw.with_extension("qcow2");
    let status = Command::new("qemu-img")
        .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
        .arg(raw)
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    out
}

fn source_resource() -> ApiResource {
    ApiResource::erase::<OpenstackSource>(&())
}

/// A Secret with upstream's keys and an `OpenstackSource` using it; `secret` and `spec` are merged
/// over them (a null removes a key).
async fn openstack_source(scene: &Scene, name: &str, secret: Value, spec: Value) {
    let os = os_lab();
    let base = json!({
        "username": os.username, "password": os.password, "project_name": os.project,
        "domain_name": os.user_domain, "ca_cert": ca(&os),
    });
    scene.secret(name, merged(base, secret)).await;
    let base = json!({"endpoint": os.auth_url, "region": os.region,
                      "credentials": {"name": name, "namespace": scene.namespace}});
    scene
        .create_source(&source_resource(), name, merged(base, spec))
        .await;
}

async fn source_checked(scene: &Scene, controller: &ControllerProcess, name: &str) -> Value {
    scene.source_checked(controller, &source_resource(), name).await
}

async fn finished(scene: &Scene, controller: &ControllerProcess, name: &str) -> VirtualMachineImport {
    scene
        .wait_finished(controller, name, Duration::from_secs(240))
        .await
}

/// The prefix of the import's temporary objects at the cloud.
fn temp_prefix(import: &VirtualMachineImport) -> String {
    let uid = import.metadata.uid.clone().unwrap();
    format!(
        "vm-import-{}-{}",
        import.metadata.name.clone().unwrap(),
        &uid[..8]
    )
}

/// SHA-256 of the volume the lab's Cinder makes of the data file at `path`.
fn volume_sha512(path: &Path) -> String {
    test_support::disk::cinder_volume_sha512(path).expect("reading a test disk")
}

fn assert_digests(import: &VirtualMachineImport, harvester: &harvester::StandIn, expected: &[String]) {
    let status = import.status.clone().unwrap();
    assert_eq!(status.disk_import_status.len(), expected.len(), "{status:#?}");
    for (disk, expected) in status.disk_import_status.iter().zip(expected) {
        support::assert_served(harvester, disk, expected);
    }
    assert!(status.source_temporary_objects.is_none(), "{status:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn volume_and_image_backed_servers_import_to_running_with_identical_images() {
    let os = os_lab();
    let control = Control::new(&os);
    let scene = Scene::new("os-full").await;
    let dir = scene.dir.path();
    let root = raw_disk(dir, "root.raw", 8, 11);
    let data = raw_disk(dir, "data.raw", 4, 12);
    let image_root = raw_disk(dir, "image-root.raw", 6, 13);
    let image_root_qcow2 = qcow2_of(&image_root);
    let suffix = scene.namespace.rsplit('-').next().unwrap().to_owned();
    let db = format!("db-{suffix}");
    let web = format!("web-{suffix}");
    control
        .create_server(json!({
            "name": db, "status": "ACTIVE", "description": "the database", "stopSeconds": 1,
            "flavor": {"vcpus": 2, "ram": 2048, "disk": 10},
            "image": {"name": format!("{db}-base"), "properties": {"hw_firmware_type": "uefi", "os_secure_boot": "required"}},
            "volumes": [{"path": root, "bootable": true}, {"path": data}],
            "networks": [{"name": format!("net-{suffix}"), "mac": "fa:16:3e:00:10:01", "ips": ["10.0.0.5", "fd00::5"]}]
        }))
        .await;
    let web_server = control
        .create_server(json!({
            "name": web, "status": "SHUTOFF", "flavor": {"vcpus": 1, "ram": 1024, "disk": 1},
            "rootDisk": {"path": image_root_qcow2, "format": "qcow2"},
            "image": {"name": format!("{web}-base"), "properties": {"hw_tpm_model": "tpm-crb"}}
        }))
        .await;
    let web_id = web_server["id"].as_str().unwrap().to_owned();

    let controller = scene.start_controller();
    let harvester = scene.harvester(harvester::Options::default());
    scene.nad("vlan1").await;
    // Trusted by the SHA-256 of the certificate Keystone, the fakes and Glance present, not by a CA:
    // login, the stop, every temporary object and the downloads go through the pin.
    let pin = Lab::get().certificate_sha256("openstack");
    openstack_source(
        &scene,
        "cloud",
        json!({"ca_cert": null, "certificate_fingerprint": pin}),
        json!({}),
    )
    .await;
    let status = source_checked(&scene, &controller, "cloud").await;
    assert_eq!(status["status"], "clusterReady", "{status}");
    assert!(condition(&status, "InsecureSkipVerify").is_none(), "{status}");

    let started = Instant::now();
    scene
        .import_from(
            "OpenstackSource",
            "db",
            "cloud",
            &db,
            json!({"networkMapping": [{"sourceNetwork": format!("net-{suffix}"), "destinationNetwork": "vlan1"}]}),
        )
        .await;
    // The image-backed server by its UUID: the VM is named after the server.
    scene
        .import_from("OpenstackSource", "web", "cloud", &web_id, json!({}))
        .await;
    let db_import = scene.get_import("db").await;
    // The token is revoked in the middle of the first volume's export: the client logs in again.
    control
        .fault(json!({"op": "volume.upload", "mode": "revokeTokens", "target": format!("{}-0", temp_prefix(&db_import))}))
        .await;
    let db_import = finished(&scene, &controller, "db").await;
    let db_elapsed = started.elapsed();
    let web_import = finished(&scene, &controller, "web").await;
    eprintln!(
        "2-volume server (two 1 GiB volumes, 8 + 4 MiB written) running after {db_elapsed:?}; both servers after {:?}",
        started.elapsed()
    );
    for import in [&db_import, &web_import] {
        assert_eq!(
            phase(import),
            ImportPhase::VirtualMachineRunning,
            "{:#?}\n{}",
            import.status,
            controller.log_tail()
        );
    }
    assert_digests(
        &db_import,
        &harvester,
        &[volume_sha512(&root), volume_sha512(&data)],
    );
    assert_digests(&web_import, &harvester, &[sha512_file(&image_root)]);
    control.assert_no_objects(&temp_prefix(&db_import)).await;
    control.assert_no_objects(&temp_prefix(&web_import)).await;

    // The source server was stopped with os-stop.
    let db_server = control
        .call(reqwest::Method::GET, &format!("/servers/{db}"), None)
        .await;
    assert_eq!(db_server["status"], "SHUTOFF", "{db_server}");

    // The VMs: flavor, firmware from the image properties, description, NIC.
    let vm = scene
        .dynamic(&vm_resource())
        .get(&db_import.status.clone().unwrap().imported_virtual_machine_name)
        .await
        .unwrap();
    assert_eq!(
        vm.metadata
            .annotations
            .clone()
            .unwrap_or_default()
            .get("field.cattle.io/description")
            .map(String::as_str),
        Some("the database")
    );
    let domain = &vm.data["spec"]["template"]["spec"]["domain"];
    let cpu = &domain["cpu"];
    assert_eq!(
        cpu["sockets"].as_u64().unwrap_or(1) * cpu["cores"].as_u64().unwrap_or(1),
        2,
        "{domain}"
    );
    assert_eq!(domain["memory"]["guest"], "2048Mi");
    assert_eq!(domain["firmware"]["bootloader"]["efi"]["secureBoot"], true);
    let interfaces = domain["devices"]["interfaces"].as_array().unwrap();
    assert_eq!(
        interfaces.len(),
        1,
        "dual-stack addresses are one NIC: {interfaces:?}"
    );
    assert_eq!(interfaces[0]["macAddress"], "fa:16:3e:00:10:01");
    let web_status = web_import.status.clone().unwrap();
    assert_eq!(web_status.imported_virtual_machine_name, web);
    let vm = scene
        .dynamic(&vm_resource())
        .get(&web_status.imported_virtual_machine_name)
        .await
        .unwrap();
    assert!(
        vm.data["spec"]["template"]["spec"]["domain"]["devices"]["tpm"].is_object(),
        "{}",
        vm.data
    );
    assert!(!controller.log_tail().contains(&os.password));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_sources_and_bad_imports_end_with_clear_reasons() {
    let os = os_lab();
    let control = Control::new(&os);
    let scene = Scene::new("os-bad").await;
    let controller = scene.start_controller();
    let unreachable = format!("https://127.0.0.1:{}/v3", support::free_port());
    // A project whose catalog (Keystone's endpoint filter) offers identity and image only: compute
    // and block storage are missing from the whole catalog, not just from a region.
    let keystone = KeystoneAdmin::login(&os).unwrap();
    let suffix = scene.namespace.rsplit('-').next().unwrap().to_owned();
    let partial = format!("partial-{suffix}");
    let partial_id = keystone.create_project(&partial, &os.project_domain).unwrap();
    let importer = keystone.user_id(&os.username, &os.user_domain).unwrap();
    keystone.grant_member(&partial_id, &importer).unwrap();
    keystone
        .restrict_catalog(&partial_id, &["identity", "image"])
        .unwrap();
    let cases = [
        (
            "wrong-password",
            json!({"password": "not-it"}),
            json!({}),
            "InvalidCredentials",
        ),
        (
            "unknown-project",
            json!({"project_name": "nope"}),
            json!({}),
            "ProjectNotFound",
        ),
        (
            "other-region",
            json!({}),
            json!({"region": "RegionTwo"}),
            "RegionNotFound",
        ),
        (
            "no-region",
            json!({}),
            json!({"region": "Atlantis"}),
            "RegionNotFound",
        ),
        (
            "no-ca",
            json!({"ca_cert": null}),
            json!({}),
            "TLSVerificationFailed",
        ),
        (
            "wrong-pin",
            json!({"ca_cert": null, "certificate_fingerprint": Lab::get().certificate_sha256("vcsim")}),
            json!({}),
            "TLSVerificationFailed",
        ),
        (
            "pin-and-ca",
            json!({"certificate_fingerprint": "00".repeat(32)}),
            json!({}),
            "SecretKeyInvalid",
        ),
        (
            "nowhere",
            json!({}),
            json!({"endpoint": unreachable}),
            "EndpointUnreachable",
        ),
        (
            "no-password",
            json!({"password": null}),
            json!({}),
            "SecretKeyMissing",
        ),
        (
            "no-compute",
            json!({"project_name": partial}),
            json!({}),
            "EndpointNotFound",
        ),
    ];
    for (name, secret, spec, _) in &cases {
        openstack_source(&scene, name, secret.clone(), spec.clone()).await;
    }
    openstack_source(
        &scene,
        "insecure",
        json!({"ca_cert": null}),
        json!({"insecureSkipVerify": true}),
    )
    .await;
    openstack_source(&scene, "cloud", json!({}), json!({})).await;
    for (name, _, _, reason) in &cases {
        let status = source_checked(&scene, &controller, name).await;
        assert_eq!(status["status"], "clusterNotReady", "{name}: {status}");
        let error = condition(&status, "ClusterError").unwrap();
        assert_eq!(error["reason"], *reason, "{name}: {status}");
        assert!(!error["message"].as_str().unwrap().is_empty(), "{status}");
        assert!(!status.to_string().contains(&os.password));
    }
    let no_compute = source_checked(&scene, &controller, "no-compute").await;
    let message = condition(&no_compute, "ClusterError").unwrap()["message"].to_string();
    assert!(
        message.contains("compute"),
        "names the missing service: {message}"
    );
    let wrong_pin = source_checked(&scene, &controller, "wrong-pin").await;
    let message = condition(&wrong_pin, "ClusterError").unwrap()["message"].to_string();
    let served = Lab::get().certificate_sha256("openstack");
    assert!(
        message.contains(&served) && message.contains("certificate_fingerprint"),
        "names the certificate presented and the key to fix: {message}"
    );
    keystone.delete_project(&partial_id).unwrap();
    let status = source_checked(&scene, &controller, "insecure").await;
    assert_eq!(status["status"], "clusterReady", "{status}");
    assert_eq!(
        condition(&status, "InsecureSkipVerify").unwrap()["status"],
        "True"
    );
    assert_eq!(
        source_checked(&scene, &controller, "cloud").await["status"],
        "clusterReady"
    );

    // Unknown server, ambiguous name: invalid imports saying so.
    let dir = scene.dir.path();
    let disk = raw_disk(dir, "twin.raw", 2, 21);
    let twin = format!("twin-{suffix}");
    for _ in 0..2 {
        control
            .create_server(json!({"name": twin, "status": "SHUTOFF", "volumes": [{"path": disk}]}))
            .await;
    }
    scene
        .import_from(
            "OpenstackSource",
            "ghost",
            "cloud",
            &format!("ghost-{suffix}"),
            json!({}),
        )
        .await;
    scene
        .import_from("OpenstackSource", "twin", "cloud", &twin, json!({}))
        .await;
    let ghost = finished(&scene, &controller, "ghost").await;
    assert_eq!(phase(&ghost), ImportPhase::Invalid, "{:#?}", ghost.status);
    let concerns = ghost.status.clone().unwrap().concerns;
    assert!(
        concerns.iter().any(|c| c.id == "VirtualMachineNotFound"),
        "{concerns:#?}"
    );
    let twin_import = finished(&scene, &controller, "twin").await;
    assert_eq!(
        phase(&twin_import),
        ImportPhase::Invalid,
        "{:#?}",
        twin_import.status
    );
    let concerns = twin_import.status.clone().unwrap().concerns;
    assert!(
        concerns
            .iter()
            .any(|c| c.message.contains("not unique") || c.message.contains("UUID")),
        "{concerns:#?}"
    );

    // A VM of the server's name already in the namespace: refused by preflight, with the running
    // server left alone (not stopped).
    let taken = format!("taken-{suffix}");
    let server = control
        .create_server(json!({"name": taken, "status": "ACTIVE", "volumes": [{"path": disk}]}))
        .await;
    let mut existing = kube::api::DynamicObject::new(&taken, &vm_resource());
    existing.data = json!({"spec": {"running": false, "template": {"spec": {"domain": {"devices": {}}}}}});
    scene
        .dynamic(&vm_resource())
        .create(&PostParams::default(), &existing)
        .await
        .unwrap();
    scene
        .import_from("OpenstackSource", "taken", "cloud", &taken, json!({}))
        .await;
    let import = finished(&scene, &controller, "taken").await;
    assert_eq!(phase(&import), ImportPhase::Invalid, "{:#?}", import.status);
    let concerns = import.status.clone().unwrap().concerns;
    assert!(
        concerns
            .iter()
            .any(|c| c.id == "VirtualMachineExists" && c.severity == api::Severity::Critical),
        "{concerns:#?}"
    );
    let id = server["id"].as_str().unwrap();
    let now = control
        .call(reqwest::Method::GET, &format!("/servers/{id}"), None)
        .await;
    assert_eq!(now["status"], "ACTIVE", "the server was not stopped: {now}");

    // A failure injected between steps (the temporary volume cannot be made): the import fails with
    // the step in its message and nothing is left at the cloud.
    let broken = format!("broken-{suffix}");
    let data = raw_disk(dir, "broken.raw", 2, 22);
    control
        .create_server(
            json!({"name": broken, "status": "SHUTOFF", "volumes": [{"path": disk}, {"path": data}]}),
        )
        .await;
    scene
        .import_from("OpenstackSource", "broken", "cloud", &broken, json!({}))
        .await;
    let import = scene.get_import("broken").await;
    let prefix = temp_prefix(&import);
    control
        .fault(json!({"op": "volume.create", "mode": "http", "status": 503, "target": format!("{prefix}-1"), "times": 20}))
        .await;
    let import = finished(&scene, &controller, "broken").await;
    let status = import.status.clone().unwrap();
    assert_eq!(status.phase, ImportPhase::MigrationFailed, "{status:#?}");
    let failed = import_failed(&import);
    assert_eq!(failed.reason, "ExportFailed", "{status:#?}");
    assert!(failed.message.contains("disk 1"), "{}", failed.message);
    control.assert_no_objects(&prefix).await;
    // Whatever the export could not delete itself (e.g. its token revoked by another test's fault
    // during its cleanup) is deleted from the record in status, and the record cleared.
    failed_and_cleaned(&scene, &controller, &control, "broken", &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_controller_mid_download_deletes_the_recorded_objects_and_finishes() {
    let os = os_lab();
    let control = Control::new(&os);
    let scene = Scene::new("os-kill").await;
    let dir = scene.dir.path();
    let root = raw_disk(dir, "root.raw", 16, 31);
    let suffix = scene.namespace.rsplit('-').next().unwrap().to_owned();
    let name = format!("slow-{suffix}");
    control
        .create_server(json!({"name": name, "status": "SHUTOFF", "volumes": [{"path": root}]}))
        .await;
    let image_dir = scene.image_dir();
    let log = scene.dir.path().join("controller.log");
    let mut controller = ControllerProcess::start(&scene.namespace, &image_dir, log.clone());
    openstack_source(&scene, "cloud", json!({}), json!({})).await;
    source_checked(&scene, &controller, "cloud").await;
    scene
        .import_from("OpenstackSource", "kill", "cloud", &name, json!({}))
        .await;
    let import = scene.get_import("kill").await;
    let prefix = temp_prefix(&import);
    // The volume uploads as qcow2 holding its three data blocks (a few hundred KiB with qcow2's
    // tables), downloaded at 32 KiB/s: the download is still running when the controller is killed.
    control
        .fault(json!({"op": "image.download", "mode": "throttle", "bytesPerSecond": 32 << 10, "target": format!("{prefix}-0")}))
        .await;
    let mid = scene
        .wait_import(&controller, "kill", Duration::from_secs(120), |i| {
            let status = i.status.clone().unwrap_or_default();
            status
                .source_temporary_objects
                .as_ref()
                .is_some_and(|o| !o.images.is_empty())
                && status
                    .disk_import_status
                    .first()
                    .is_some_and(|d| d.bytes_done.unwrap_or(0) > 0 && !d.is_exported())
        })
        .await;
    controller.kill();
    let recorded = mid.status.clone().unwrap().source_temporary_objects.unwrap();
    let (count, objects) = control.count_objects(&prefix).await;
    assert_eq!(
        count, 3,
        "a snapshot, a volume and an image are left by the killed controller: {objects}"
    );
    assert_eq!(
        (
            recorded.images.len(),
            recorded.volumes.len(),
            recorded.snapshots.len()
        ),
        (1, 1, 1),
        "{recorded:?}"
    );

    let controller = ControllerProcess::start(&scene.namespace, &image_dir, log);
    let harvester = scene.harvester(harvester::Options::default());
    let import = finished(&scene, &controller, "kill").await;
    assert_eq!(
        phase(&import),
        ImportPhase::VirtualMachineRunning,
        "{:#?}\n{}",
        import.status,
        controller.log_tail()
    );
    assert_digests(&import, &harvester, &[volume_sha512(&root)]);
    control.assert_no_objects(&prefix).await;
    let text = std::fs::read_to_string(scene.dir.path().join("controller.log")).unwrap();
    assert!(
        text.contains("temporary OpenStack objects from an earlier export cleaned up"),
        "the restarted controller deleted the recorded objects first"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_that_cannot_be_renewed_mid_import_fails_with_token_expired_and_nothing_is_lost() {
    let os = os_lab();
    let control = Control::new(&os);
    let scene = Scene::new("os-rotate").await;
    let dir = scene.dir.path();
    let suffix = scene.namespace.rsplit('-').next().unwrap().to_owned();
    // A user of its own, whose password an admin changes while its import downloads: Keystone
    // revokes the user's tokens, and logging in again with the Secret's password fails.
    let keystone = KeystoneAdmin::login(&os).unwrap();
    let user = format!("rotate-{suffix}");
    let (first, second) = (format!("first-{suffix}"), format!("second-{suffix}"));
    let user_id = keystone
        .create_member(&user, &first, &os.user_domain, &os.project_id)
        .unwrap();
    let root = raw_disk(dir, "root.raw", 8, 41);
    let data = raw_disk(dir, "data.raw", 2, 42);
    let name = format!("rotate-{suffix}");
    control
        .create_server(
            json!({"name": name, "status": "SHUTOFF", "volumes": [{"path": root}, {"path": data}]}),
        )
        .await;
    let controller = scene.start_controller();
    openstack_source(
        &scene,
        "rotating",
        json!({"username": user, "password": first}),
        json!({}),
    )
    .await;
    assert_eq!(
        source_checked(&scene, &controller, "rotating").await["status"],
        "clusterReady"
    );
    scene
        .import_from("OpenstackSource", "rotate", "rotating", &name, json!({}))
        .await;
    let prefix = temp_prefix(&scene.get_import("rotate").await);
    // The 1 GiB volume at 64 MiB/s: the first disk is still downloading when the password changes.
    control
        .fault(json!({"op": "image.download", "mode": "throttle", "bytesPerSecond": 64 << 20, "target": format!("{prefix}-0")}))
        .await;
    scene
        .wait_import(&controller, "rotate", Duration::from_secs(120), |i| {
            i.status
                .as_ref()
                .and_then(|s| s.disk_import_status.first())
                .is_some_and(|d| d.bytes_done.unwrap_or(0) > 0)
        })
        .await;
    let admin = tokio::task::spawn_blocking(move || {
        keystone.set_password(&user_id, &second).unwrap();
        (keystone, user_id, second)
    });
    let (keystone, user_id, second) = admin.await.unwrap();

    let import = finished(&scene, &controller, "rotate").await;
    let status = import.status.clone().unwrap();
    assert_eq!(status.phase, ImportPhase::MigrationFailed, "{status:#?}");
    let failed = import_failed(&import);
    assert_eq!(failed.reason, "TokenExpired", "{status:#?}");
    assert!(!failed.message.is_empty());
    let text = serde_json::to_string(&status).unwrap();
    assert!(
        !text.contains(&first) && !text.contains(&second),
        "no password in status"
    );
    // The first disk's snapshot, volume and image could not be deleted without a token: they stay
    // at the cloud and in status, not forgotten.
    let (count, objects) = control.count_objects(&prefix).await;
    assert!(count > 0, "{objects}");
    let recorded = status.source_temporary_objects.clone().unwrap_or_default();
    assert!(!recorded.is_empty(), "left objects are recorded: {status:#?}");

    // The admin puts the new password into the Secret: the controller deletes them by itself.
    scene
        .api::<Secret>()
        .patch(
            "rotating",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"stringData": {"password": second}})),
        )
        .await
        .unwrap();
    failed_and_cleaned(&scene, &controller, &control, "rotate", &prefix).await;
    tokio::task::spawn_blocking(move || keystone.delete_user(&user_id).unwrap())
        .await
        .unwrap();
}
