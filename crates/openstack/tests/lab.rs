//! The OpenStack client against the lab: real Keystone (tokens, domains, catalog, application
//! credentials) and real Glance (image data, Range), with the project's stateful Nova/Cinder/Neutron
//! fakes. Disks are made with `qemu-img` and exported images compared with `qemu-img compare`.
//! Every test names its servers and temporary objects after itself, so tests run in parallel on
//! one lab.

// Test helpers outside #[test] functions fail loudly on purpose.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex},
    time::Duration,
};

use diskconv::stream::HashingSink;
use openstack::{
    Auth, Client, Config, DiskSource, Domain, Secret, TlsMode, client,
    convert::ImageFormat,
    export::{ExportOptions, Hooks, TempObjects},
    inspect,
    proto::image::DiskFormat,
};
use serde_json::{Value, json};
use test_support::{
    Lab,
    openstack::{KeystoneAdmin, OpenstackLab},
};

fn lab() -> OpenstackLab {
    OpenstackLab::of(Lab::get()).expect("the lab has its OpenStack part")
}

fn ca(os: &OpenstackLab) -> Vec<u8> {
    std::fs::read(&os.ca_cert).expect("lab CA")
}

fn password_auth(os: &OpenstackLab, password: &str) -> Auth {
    Auth::Password {
        username: os.username.clone(),
        user_domain: Domain::Name(os.user_domain.clone()),
        project: os.project.clone(),
        project_domain: Domain::Name(os.project_domain.clone()),
        password: Secret::new(password),
    }
}

fn config(os: &OpenstackLab) -> Config {
    Config::new(os.auth_url.clone(), password_auth(os, &os.password))
        .with_region(os.region.clone())
        .with_tls(TlsMode::CaBundle(ca(os)))
}

async fn connect(os: &OpenstackLab) -> Client {
    Client::connect(config(os))
        .await
        .expect("login as the lab's importer")
}

/// The digest the tests compare exported images by.
const SHA256: Option<diskconv::Checksum> = Some(diskconv::Checksum::Sha256);

/// Fast polling for the lab, where every step takes a fraction of a second. Volumes upload raw, so
/// the bytes a test's sink hashes are the volume's own; the qcow2 upload has a test of its own.
fn options(prefix: &str) -> ExportOptions {
    ExportOptions {
        name_prefix: prefix.into(),
        poll_interval: Duration::from_millis(100),
        step_timeout: Duration::from_secs(60),
        retry_backoff: Duration::from_millis(100),
        idle_timeout: Duration::from_secs(30),
        cleanup_timeout: Duration::from_secs(60),
        volume_upload_format: DiskFormat::Raw,
        ..ExportOptions::default()
    }
}

/// A unique name per test and process (tests share one lab).
fn unique(test: &str) -> String {
    format!("{test}-{}", std::process::id())
}

/// The fakes' control API.
struct Control {
    http: reqwest::Client,
    url: String,
    password: String,
}

impl Control {
    fn new(os: &OpenstackLab) -> Self {
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(
                openstack::tls::client_config(&TlsMode::CaBundle(ca(os))).expect("tls"),
            )
            .build()
            .expect("http client");
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
        let response = request.send().await.expect("control API reachable");
        let status = response.status();
        let text = response.text().await.expect("control answer");
        assert!(status.is_success(), "{method} {path}: {status}: {text}");
        if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).expect("json")
        }
    }

    async fn create_server(&self, spec: Value) -> Value {
        self.call(reqwest::Method::POST, "/servers", Some(spec)).await
    }

    async fn fault(&self, fault: Value) {
        self.call(reqwest::Method::POST, "/faults", Some(fault)).await;
    }

    /// Snapshots, volumes and images whose name starts with `prefix`.
    async fn objects(&self, prefix: &str) -> Value {
        self.call(
            reqwest::Method::GET,
            &format!("/objects?namePrefix={prefix}"),
            None,
        )
        .await
    }

    /// Waits (bounded) until no snapshot, volume or image named `prefix…` is left; returns what is.
    async fn wait_no_objects(&self, prefix: &str) -> Value {
        let mut objects = Value::Null;
        for _ in 0..100 {
            objects = self.objects(prefix).await;
            let count: usize = ["snapshots", "volumes", "images"]
                .iter()
                .map(|k| objects[k].as_array().map_or(0, Vec::len))
                .sum();
            if count == 0 {
                return objects;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        objects
    }

    async fn downloads(&self) -> Vec<Value> {
        self.call(reqwest::Method::GET, "/downloads", None)
            .await
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

fn assert_no_objects(objects: &Value, prefix: &str) {
    for kind in ["snapshots", "volumes", "images"] {
        assert_eq!(
            objects[kind].as_array().map_or(0, Vec::len),
            0,
            "temporary {kind} named {prefix}* left: {objects}"
        );
    }
}

/// A raw disk of `mib` MiB with a few distinct, non-zero regions (the rest stays a hole).
fn raw_disk(dir: &Path, name: &str, mib: u64, seed: u8) -> PathBuf {
    test_support::disk::seeded_raw_disk(dir, name, mib, seed).expect("writing a test disk")
}

fn qemu_img(args: &[&str]) -> String {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img (qemu-utils) is needed by these tests");
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `qemu-img compare` (exit 0: same guest-visible content).
fn assert_same_disk(exported: &Path, exported_format: &str, source: &Path, source_format: &str) {
    let out = Command::new("qemu-img")
        .args(["compare", "-f", exported_format, "-F", source_format])
        .arg(exported)
        .arg(source)
        .output()
        .expect("qemu-img");
    assert!(
        out.status.success(),
        "{} differs from {}: {}{}",
        exported.display(),
        source.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sha256_file(path: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

fn volume_sha256(path: &Path) -> String {
    test_support::disk::cinder_volume_sha256(path).expect("reading a test disk")
}

/// Records every ledger state the export reports.
fn recording_hooks() -> (Hooks, Arc<Mutex<Vec<TempObjects>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let hooks = Hooks {
        temp_objects: Some(Arc::new(move |t: &TempObjects| {
            sink.lock().unwrap().push(t.clone())
        })),
        progress: None,
    };
    (hooks, seen)
}

/// A volume-backed server, SHUTOFF, with its data volume listed before its root volume (the client
/// must order them by device).
/// A `SHUTOFF` server of the test `test` with `root` and `data` as volumes, as the client sees it,
/// and the prefix its temporary objects get.
async fn shut_off_volume_server(
    control: &Control,
    client: &Client,
    test: &str,
    root: &Path,
    data: &Path,
) -> (openstack::ServerDescription, String) {
    let name = unique(test);
    volume_server(control, &name, root, data).await;
    let server = client.inspect(&name).await.unwrap();
    (server, format!("vmi-{name}"))
}

async fn volume_server(control: &Control, name: &str, root: &Path, data: &Path) -> Value {
    control
        .create_server(json!({
            "name": name, "status": "SHUTOFF", "description": "lab server",
            "flavor": {"name": "lab.medium", "vcpus": 2, "ram": 1536},
            "image": {"properties": {"hw_firmware_type": "uefi", "os_secure_boot": "required", "hw_disk_bus": "scsi"}},
            "volumes": [
                {"path": data, "device": "/dev/vdb", "bootable": false},
                {"path": root, "device": "/dev/vda", "bootable": true}],
            "networks": [
                {"name": "net-a", "mac": "fa:16:3e:00:00:0a", "ips": ["10.0.0.5", "fd00::5"]},
                {"name": "net-b", "mac": "fa:16:3e:00:00:0b", "ips": ["10.1.0.5"]}]
        }))
        .await
}

#[tokio::test]
async fn inspect_describes_a_volume_backed_server_by_name_and_id() {
    let os = lab();
    let control = Control::new(&os);
    let dir = tempfile::tempdir().unwrap();
    let root = raw_disk(dir.path(), "root.raw", 3, 1);
    let data = raw_disk(dir.path(), "data.raw", 2, 2);
    let name = unique("inspect");
    let created = volume_server(&control, &name, &root, &data).await;
    let client = connect(&os).await;
    assert_eq!(client.microversion().to_string(), "2.79");

    let server = client.inspect(&name).await.expect("inspect by name");
    assert_eq!(server.id, created["id"].as_str().unwrap());
    assert_eq!(server.status, "SHUTOFF");
    assert_eq!(server.project_id, os.project_id);
    assert_eq!(server.description.as_deref(), Some("lab server"));
    assert_eq!(
        (
            server.flavor.vcpus,
            server.flavor.ram_mib,
            server.flavor.name.as_str()
        ),
        (2, 1536, "lab.medium")
    );
    assert!(server.firmware.uefi && server.firmware.secure_boot && !server.firmware.tpm);
    assert_eq!(
        server.image_properties.get("hw_disk_bus").map(String::as_str),
        Some("scsi")
    );
    let devices: Vec<_> = server.disks.iter().map(|d| d.device.clone().unwrap()).collect();
    assert_eq!(devices, ["/dev/vda", "/dev/vdb"], "boot order");
    assert!(server.disks[0].bootable && !server.disks[1].bootable);
    assert!(matches!(
        server.disks[0].source,
        DiskSource::Volume { size_gib: 1, .. }
    ));
    assert_eq!(server.disks[0].capacity_bytes, 1 << 30);
    assert_eq!(
        server.nics.len(),
        2,
        "dual-stack addresses merged: {:?}",
        server.nics
    );
    assert_eq!(server.nics[0].nic.addresses, ["10.0.0.5", "fd00::5"]);
    assert_eq!(server.nics[0].nic.mac.as_deref(), Some("fa:16:3e:00:00:0a"));
    assert!(
        server
            .nics
            .iter()
            .all(|n| n.network_id.is_some() && n.port_id.is_some())
    );

    let by_id = client.inspect(&server.id).await.expect("inspect by id");
    assert_eq!(by_id, server);
}

#[tokio::test]
async fn volume_backed_server_with_two_volumes_exports_byte_identical_and_leaves_nothing() {
    let os = lab();
    let control = Control::new(&os);
    let dir = tempfile::tempdir().unwrap();
    let root = raw_disk(dir.path(), "root.raw", 4, 3);
    let data = raw_disk(dir.path(), "data.raw", 3, 4);
    let name = unique("export-volumes");
    volume_server(&control, &name, &root, &data).await;
    control
        .call(
            reqwest::Method::PATCH,
            &format!("/servers/{name}"),
            Some(json!({"status": "ACTIVE"})),
        )
        .await;
    let client = connect(&os).await;
    let server = client.inspect(&name).await.unwrap();
    let prefix = format!("vmi-{name}");

    // A running server is refused, then stopped.
    let err = client
        .export_to_dir(
            &server,
            dir.path(),
            (ImageFormat::Raw, None),
            &options(&prefix),
            &Hooks::default(),
        )
        .await
        .expect_err("running server");
    assert!(
        matches!(err, openstack::convert::DirError::Export(ref e) if matches!(e.error, openstack::export::Error::Running { .. })),
        "{err}"
    );
    client
        .stop(&server.id, Duration::from_secs(30), Duration::from_millis(100))
        .await
        .expect("os-stop reaches SHUTOFF");

    let (hooks, seen) = recording_hooks();
    let out = dir.path().join("out");
    let exported = client
        .export_to_dir(
            &server,
            &out,
            (ImageFormat::Raw, SHA256),
            &options(&prefix),
            &hooks,
        )
        .await
        .expect("export");
    assert_eq!(exported.images.len(), 2);
    assert_same_disk(&exported.images[0].path, "raw", &root, "raw");
    assert_same_disk(&exported.images[1].path, "raw", &data, "raw");
    assert_eq!(
        exported.images[0]
            .conversion
            .digest(diskconv::Checksum::Sha256)
            .unwrap(),
        volume_sha256(&root)
    );
    for disk in &exported.export.disks {
        assert_eq!(
            disk.verified_with.as_deref(),
            Some("sha512"),
            "Glance's hash checked"
        );
        assert_eq!((disk.requests, disk.resumes), (1, 0));
    }
    assert!(exported.export.left_behind.is_empty());
    // Each disk had a snapshot, a volume and an image, all recorded, then all deleted.
    let seen = seen.lock().unwrap().clone();
    let max = |f: fn(&TempObjects) -> usize| seen.iter().map(f).max().unwrap_or(0);
    assert_eq!(
        (
            max(|t| t.snapshots.len()),
            max(|t| t.volumes.len()),
            max(|t| t.images.len())
        ),
        (1, 1, 1)
    );
    assert!(seen.last().is_some_and(TempObjects::is_empty));
    assert_no_objects(&control.objects(&prefix).await, &prefix);
}

#[tokio::test]
async fn image_backed_server_exports_its_root_disk_through_a_server_image() {
    let os = lab();
    let control = Control::new(&os);
    let dir = tempfile::tempdir().unwrap();
    let raw = raw_disk(dir.path(), "root.raw", 5, 5);
    let qcow2 = dir.path().join("root.qcow2");
    qemu_img(&[
        "convert",
        "-q",
        "-f",
        "raw",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        qcow2.to_str().unwrap(),
    ]);
    let data = raw_disk(dir.path(), "data.raw", 2, 6);
    let name = unique("export-image");
    control
        .create_server(json!({
            "name": name, "status": "SHUTOFF", "flavor": {"vcpus": 1, "ram": 512, "disk": 1},
            "rootDisk": {"path": qcow2, "format": "qcow2"},
            "image": {"name": format!("{name}-base"), "properties": {"hw_tpm_model": "tpm-crb", "hw_firmware_type": "uefi"}},
            "volumes": [{"path": data}]
        }))
        .await;
    let client = connect(&os).await;
    let server = client.inspect(&name).await.unwrap();
    assert!(matches!(server.disks[0].source, DiskSource::ServerImage { .. }));
    assert!(matches!(server.disks[1].source, DiskSource::Volume { .. }));
    assert_eq!(server.disks[1].device.as_deref(), Some("/dev/vdb"));
    assert!(server.firmware.uefi && server.firmware.tpm);

    let prefix = format!("vmi-{name}");
    for format in [ImageFormat::Raw, ImageFormat::Qcow2] {
        let out = dir.path().join(format.extension());
        let exported = client
            .export_to_dir(
                &server,
                &out,
                (format, SHA256),
                &options(&prefix),
                &Hooks::default(),
            )
            .await
            .expect("export");
        let out_format = format.extension().replace("img", "raw");
        assert_same_disk(&exported.images[0].path, &out_format, &qcow2, "qcow2");
        assert_same_disk(&exported.images[1].path, &out_format, &data, "raw");
        assert_eq!(
            exported.images[0].conversion.format, "qcow2",
            "decoded by diskconv"
        );
        assert_eq!(
            exported.images[0]
                .conversion
                .digest(diskconv::Checksum::Sha256)
                .unwrap(),
            sha256_file(&raw),
            "logical content"
        );
        assert!(!out.join("disk-0.qcow2.download").exists() && !out.join("disk-0.img.download").exists());
        assert_no_objects(&control.wait_no_objects(&prefix).await, &prefix);
    }
}

#[tokio::test]
async fn volumes_upload_as_qcow2_so_only_their_data_leaves_the_cloud() {
    let os = lab();
    let control = Control::new(&os);
    let dir = tempfile::tempdir().unwrap();
    let root = raw_disk(dir.path(), "root.raw", 4, 11);
    let data = raw_disk(dir.path(), "data.raw", 3, 12);
    let client = connect(&os).await;
    let (server, prefix) = shut_off_volume_server(&control, &client, "qcow2-upload", &root, &data).await;
    let options = ExportOptions {
        volume_upload_format: DiskFormat::Qcow2,
        ..options(&prefix)
    };
    assert_eq!(
        ExportOptions::default().volume_upload_format,
        DiskFormat::Qcow2,
        "the default"
    );
    let out = dir.path().join("out");
    let exported = client
        .export_to_dir(
            &server,
            &out,
            (ImageFormat::Raw, SHA256),
            &options,
            &Hooks::default(),
        )
        .await
        .expect("export");
    for ((image, source), report) in exported
        .images
        .iter()
        .zip([&root, &data])
        .zip(&exported.export.disks)
    {
        assert_same_disk(&image.path, "raw", source, "raw");
        assert_eq!(
            image.conversion.digest(diskconv::Checksum::Sha256).unwrap(),
            volume_sha256(source),
            "the whole volume, zeros included"
        );
        assert_eq!(report.format, DiskFormat::Qcow2, "{report:?}");
        assert_eq!(
            report.verified_with.as_deref(),
            Some("sha512"),
            "Glance's hash checked"
        );
        // Each 1 GiB volume holds a few MiB: only those (and qcow2's tables) leave the cloud.
        assert!(
            report.bytes < 16 << 20,
            "{} bytes downloaded for a volume holding {} bytes",
            report.bytes,
            std::fs::metadata(source).unwrap().len()
        );
    }
    assert_eq!(exported.images[0].conversion.virtual_size, 1 << 30);
    assert_no_objects(&control.wait_no_objects(&prefix).await, &prefix);

    // A qcow2 image smaller than its volume (a backend that lost the volume's end) is refused.
    let (server, prefix) = shut_off_volume_server(&control, &client, "qcow2-short", &root, &data).await;
    control
        .fault(json!({"op": "volume.upload", "mode": "short", "target": format!("{prefix}-1"), "times": 10}))
        .await;
    let options = ExportOptions {
        volume_upload_format: DiskFormat::Qcow2,
        ..self::options(&prefix)
    };
    let err = client
        .export_to_dir(
            &server,
            &dir.path().join("short"),
            (ImageFormat::Raw, None),
            &options,
            &Hooks::default(),
        )
        .await
        .expect_err("a short volume");
    let text = error_text::chain(&err);
    assert!(text.contains("1073741824"), "{text}");
    assert!(!dir.path().join("short").join("disk-1.img").exists());
    assert_no_objects(&control.wait_no_objects(&prefix).await, &prefix);
}

#[tokio::test]
async fn a_glance_download_cut_halfway_resumes_with_range_and_verifies() {
    let os = lab();
    let control = Control::new(&os);
    let dir = tempfile::tempdir().unwrap();
    let root = raw_disk(dir.path(), "root.raw", 4, 7);
    let name = unique("cut");
    control
        .create_server(json!({"name": name, "status": "SHUTOFF", "volumes": [{"path": root}]}))
        .await;
    let prefix = format!("vmi-{name}");
    let half = 2 << 20;
    control
        .fault(json!({"op": "image.download", "mode": "cut", "cutAfterBytes": half, "target": format!("{prefix}-0")}))
        .await;
    let client = connect(&os).await;
    let server = client.inspect(&name).await.unwrap();
    let exported = client
        .export_server(
            &server,
            vec![HashingSink::default()],
            &options(&prefix),
            &Hooks::default(),
        )
        .await
        .expect("export survives the cut");
    let disk = &exported.report.disks[0];
    assert_eq!((disk.requests, disk.resumes), (2, 1));
    assert_eq!(disk.verified_with.as_deref(), Some("sha512"));
    let sink = &exported.sinks[0];
    assert_eq!(sink.begins, 1, "resumed, not restarted");
    assert_eq!(sink.sha256.as_deref(), Some(volume_sha256(&root).as_str()));
    let downloads: Vec<Value> = control
        .downloads()
        .await
        .into_iter()
        .filter(|d| d["imageId"] == disk.image_id.as_str() && d["path"].as_str().unwrap().ends_with("/file"))
        .collect();
    assert_eq!(downloads.len(), 2, "{downloads:?}");
    assert_eq!(
        (downloads[0]["cut"].as_bool(), downloads[0]["bytes"].as_u64()),
        (Some(true), Some(half))
    );
    assert_eq!(downloads[1]["range"], format!("bytes={half}-"));
    assert_eq!(downloads[1]["status"], 206);
    assert_no_objects(&control.wait_no_objects(&prefix).await, &prefix);
}

#[tokio::test]
async fn failures_between_steps_leave_no_temporary_object() {
    let os = lab();
    let control = Control::new(&os);
    let dir = tempfile::tempdir().unwrap();
    let root = raw_disk(dir.path(), "root.raw", 2, 8);
    let data = raw_disk(dir.path(), "data.raw", 2, 9);
    let client = connect(&os).await;
    // (operation, mode, disk it hits, what the error must say)
    let cases = [
        ("volume.upload", "http", 0, "uploading to an image the volume"),
        ("volume.create", "status", 0, "volume"),
        ("snapshot.create", "status", 1, "snapshot"),
        ("volume.upload", "status", 1, "upload to image"),
        ("image.download", "http", 1, "downloading image"),
        // The image goes active smaller than its volume: refused before a byte is downloaded.
        (
            "volume.upload",
            "short",
            1,
            "bytes but the disk is 1073741824 bytes",
        ),
        // The volume is made but its id never arrives: it is found by name and deleted too.
        ("volume.create", "lostAnswer", 1, "volume"),
    ];
    for (i, (op, mode, disk, expected)) in cases.into_iter().enumerate() {
        let name = unique(&format!("fail{i}"));
        volume_server(&control, &name, &root, &data).await;
        let prefix = format!("vmi-{name}");
        let server = client.inspect(&name).await.unwrap();
        let target = match op {
            // Snapshots are asked for by volume: target the attached volume's id.
            "snapshot.create" => match &server.disks[disk].source {
                DiskSource::Volume { volume_id, .. } => volume_id.clone(),
                DiskSource::ServerImage { .. } => unreachable!(),
            },
            _ => format!("{prefix}-{disk}"),
        };
        // Downloads are retried: the fault must outlast every attempt.
        control
            .fault(json!({"op": op, "mode": mode, "target": target, "status": 503, "times": 10}))
            .await;
        let (hooks, seen) = recording_hooks();
        let err = client
            .export_server(
                &server,
                vec![HashingSink::default(), HashingSink::default()],
                &options(&prefix),
                &hooks,
            )
            .await
            .expect_err(op);
        let text = error_text::chain(&err);
        assert!(
            text.contains(expected) && text.contains(&format!("disk {disk}")),
            "{op}/{mode}: {text}"
        );
        assert!(err.left_behind.is_empty(), "{op}: {err}");
        assert!(
            seen.lock().unwrap().iter().any(|t| !t.is_empty()),
            "{op}: objects were created first"
        );
        assert_no_objects(&control.wait_no_objects(&prefix).await, &prefix);
    }
}

#[tokio::test]
async fn a_dropped_export_cleans_up_and_a_crash_is_cleaned_from_the_recorded_ids() {
    let os = lab();
    let control = Control::new(&os);
    let dir = tempfile::tempdir().unwrap();
    let root = raw_disk(dir.path(), "root.raw", 2, 10);
    let client = connect(&os).await;
    for crash in [false, true] {
        let name = unique(&format!("drop-{crash}"));
        control
            .create_server(json!({"name": name, "status": "SHUTOFF", "volumes": [{"path": root}]}))
            .await;
        let prefix = format!("vmi-{name}");
        let server = client.inspect(&name).await.unwrap();
        let (hooks, seen) = recording_hooks();
        let options = options(&prefix);
        let mut export =
            Box::pin(client.export_server(&server, vec![HashingSink::default()], &options, &hooks));
        // Run the export until a snapshot and a volume exist, then stop polling it.
        let reached = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                tokio::select! {
                    _ = &mut export => panic!("the export finished before it could be interrupted"),
                    () = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
                if seen.lock().unwrap().last().is_some_and(|t| !t.volumes.is_empty()) {
                    break;
                }
            }
        })
        .await;
        assert!(reached.is_ok(), "no volume was created");
        let recorded = seen.lock().unwrap().last().cloned().unwrap();
        if crash {
            // As if the process died: nothing runs the guard. A new client cleans up what was recorded.
            std::mem::forget(export);
            let fresh = connect(&os).await;
            fresh
                .cleanup(&recorded, &options, 0)
                .await
                .expect("cleanup from recorded ids");
        } else {
            drop(export);
        }
        assert_no_objects(&control.wait_no_objects(&prefix).await, &prefix);
    }
}

#[tokio::test]
async fn credentials_projects_regions_and_names_fail_with_typed_errors() {
    let os = lab();
    let control = Control::new(&os);

    let err = Client::connect(config(&os).clone_with_auth(password_auth(&os, "wrong")))
        .await
        .unwrap_err();
    assert!(matches!(err, client::Error::InvalidCredentials { .. }), "{err}");

    let mut auth = password_auth(&os, &os.password);
    if let Auth::Password { project, .. } = &mut auth {
        *project = "no-such-project".into();
    }
    let err = Client::connect(config(&os).clone_with_auth(auth))
        .await
        .unwrap_err();
    assert!(
        matches!(err, client::Error::UnknownProject { ref project, .. } if project == "no-such-project"),
        "{err}"
    );

    for region in ["RegionTwo", "RegionX"] {
        let err = Client::connect(config(&os).with_region(region))
            .await
            .unwrap_err();
        let text = err.source_text();
        assert!(matches!(err, client::Error::Catalog(_)), "{err}");
        assert!(
            text.contains(&format!("region '{region}'")) && text.contains("RegionOne"),
            "{text}"
        );
    }

    let client = connect(&os).await;
    let missing = unique("no-such-server");
    assert!(matches!(
        client.inspect(&missing).await,
        Err(inspect::Error::NotFound { .. })
    ));
    assert!(matches!(
        client.inspect("00000000-0000-4000-8000-000000000000").await,
        Err(inspect::Error::NotFound { .. })
    ));

    let dir = tempfile::tempdir().unwrap();
    let disk = raw_disk(dir.path(), "d.raw", 1, 11);
    let twin = unique("twin");
    for _ in 0..2 {
        control
            .create_server(json!({"name": twin, "volumes": [{"path": disk}]}))
            .await;
    }
    // A name that only the regex filter would match is not ambiguous with them.
    control
        .create_server(json!({"name": format!("{twin}x"), "volumes": [{"path": disk}]}))
        .await;
    let err = client.inspect(&twin).await.unwrap_err();
    assert!(matches!(err, inspect::Error::Ambiguous(_)), "{err}");
    assert!(err.to_string().contains("2 servers are named"), "{err}");
    client
        .inspect(&format!("{twin}x"))
        .await
        .expect("the unique longer name");
}

#[tokio::test]
async fn application_credentials_and_split_domains_log_in() {
    let os = lab();
    let app = Config::new(
        os.auth_url.clone(),
        Auth::ApplicationCredential {
            id: os.app_cred_id.clone(),
            secret: Secret::new(os.app_cred_secret.clone()),
        },
    )
    .with_tls(TlsMode::CaBundle(ca(&os)));
    let client = Client::connect(app).await.expect("application credential");
    assert_eq!(client.project_id(), os.project_id);
    client.verify().await.expect("servers list");

    // The user lives in domain `lab`, project `elsewhere` in `Default`: upstream's single
    // `domain_name` cannot say this, separate domains can.
    let split = Auth::Password {
        username: os.username.clone(),
        user_domain: Domain::Name("lab".into()),
        project: "elsewhere".into(),
        project_domain: Domain::Id("default".into()),
        password: Secret::new(os.password.clone()),
    };
    let client = Client::connect(config(&os).clone_with_auth(split))
        .await
        .expect("split domains");
    assert_ne!(client.project_id(), os.project_id);

    let bad = Config::new(
        os.auth_url.clone(),
        Auth::ApplicationCredential {
            id: os.app_cred_id.clone(),
            secret: Secret::new("nope"),
        },
    )
    .with_tls(TlsMode::CaBundle(ca(&os)));
    assert!(matches!(
        Client::connect(bad).await,
        Err(client::Error::InvalidCredentials { .. })
    ));

    // The lab CA is required: the system roots do not know it.
    let err = Client::connect(config(&os).with_tls(TlsMode::SystemRoots))
        .await
        .unwrap_err();
    assert!(
        err.source_text().to_ascii_lowercase().contains("certificate"),
        "{}",
        err.source_text()
    );
}

#[tokio::test]
async fn tokens_are_renewed_before_expiry_and_after_a_revocation() {
    let os = lab();
    let control = Control::new(&os);
    let dir = tempfile::tempdir().unwrap();
    let root = raw_disk(dir.path(), "root.raw", 2, 12);

    // Keystone's tokens live an hour: renewing when less than two hours are left renews every call.
    let eager = Client::connect(config(&os).with_renew_before(Duration::from_secs(7200)))
        .await
        .unwrap();
    let before = eager.logins();
    eager.verify().await.unwrap();
    eager.verify().await.unwrap();
    assert_eq!(eager.logins(), before + 2);

    // The fakes revoke every token of the user right after the upload starts (as an expiry would):
    // the next call gets a 401, the client logs in again and the export finishes.
    let name = unique("revoked");
    control
        .create_server(json!({"name": name, "status": "SHUTOFF", "volumes": [{"path": root}]}))
        .await;
    let prefix = format!("vmi-{name}");
    control
        .fault(json!({"op": "volume.upload", "mode": "revokeTokens", "target": format!("{prefix}-0")}))
        .await;
    let client = connect(&os).await;
    let server = client.inspect(&name).await.unwrap();
    let exported = client
        .export_server(
            &server,
            vec![HashingSink::default()],
            &options(&prefix),
            &Hooks::default(),
        )
        .await
        .expect("export across a revoked token");
    assert_eq!(
        exported.sinks[0].sha256.as_deref(),
        Some(volume_sha256(&root).as_str())
    );
    assert!(client.logins() >= 2, "logged in again after the 401");
    assert_no_objects(&control.wait_no_objects(&prefix).await, &prefix);
}

#[tokio::test]
async fn a_token_that_cannot_be_renewed_is_a_clear_error() {
    let os = lab();
    let keystone = KeystoneAdmin::login(&os).unwrap();
    // A user of its own: its password changes under the client (which revokes its tokens).
    let user = unique("rotated");
    let user_id = keystone
        .create_member(&user, "first-password", "Default", &os.project_id)
        .unwrap();
    let auth = Auth::Password {
        username: user.clone(),
        user_domain: Domain::Name("Default".into()),
        project: os.project.clone(),
        project_domain: Domain::Name(os.project_domain.clone()),
        password: Secret::new("first-password"),
    };
    let client = Client::connect(config(&os).clone_with_auth(auth))
        .await
        .expect("login");
    client.verify().await.expect("works before the change");
    keystone.set_password(&user_id, "second-password").unwrap();
    let err = client.verify().await.unwrap_err();
    assert!(
        matches!(&err, client::Error::Reauthenticate { source, .. } if matches!(**source, client::Error::InvalidCredentials { .. })),
        "{}",
        err.source_text()
    );
    assert!(err.is_auth());
    keystone.delete_user(&user_id).unwrap();
}

/// Test conveniences on the library's types.
trait ConfigExt {
    fn clone_with_auth(&self, auth: Auth) -> Config;
}

impl ConfigExt for Config {
    fn clone_with_auth(&self, auth: Auth) -> Config {
        Config { auth, ..self.clone() }
    }
}

trait SourceText {
    fn source_text(&self) -> String;
}

impl<E: std::error::Error> SourceText for E {
    fn source_text(&self) -> String {
        error_text::chain(self)
    }
}
