//! The vSphere client against the lab's vCenter simulator (govmomi + ExportVm), over real HTTPS
//! with the lab CA: login, lookups, the VM description, export byte-for-byte, lease completion,
//! abort, retries after a cut connection, keep-alive, and power-off.

mod lab;

use std::{collections::BTreeMap, time::Duration};

use diskconv::stream::{HashingSink, StreamSink};
use serde_json::json;
use vsphere::{
    Client,
    export::ExportOptions,
    inventory,
    power::{self, PowerOffMode, PowerOffOutcome},
    proto::{
        FaultKind, envelope, response,
        vm::{BusFamily, Firmware, NicNetwork, PowerState, Provisioning},
    },
};

use lab::{Control, client, config_with_password, lab, make_vmdk, sha256_file, unique};

fn sinks(vm: &vsphere::VmDescription) -> BTreeMap<i32, HashingSink> {
    vm.disks.iter().map(|d| (d.key, HashingSink::default())).collect()
}

/// A powered-off VM with one pvscsi disk backed by a fresh streamOptimized VMDK of random content.
struct OneDiskVm {
    control: Control,
    /// Keeps the VMDK (and anything a test writes next to it) alive for the test.
    dir: tempfile::TempDir,
    name: String,
    vmdk: std::path::PathBuf,
}

// A fixture: failing loudly when the temp dir cannot be made is the point.
#[allow(clippy::expect_used)]
async fn one_disk_vm(prefix: &str, file: &str, size: u64, seed: u64) -> OneDiskVm {
    let control = Control::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let (vmdk, _raw) = make_vmdk(dir.path(), file, size, seed);
    let name = unique(prefix);
    control
        .create_vm(json!({"name": name, "disks": [{"bus": "pvscsi", "path": vmdk}]}))
        .await;
    OneDiskVm {
        control,
        dir,
        name,
        vmdk,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn login_with_right_and_wrong_password() {
    let ok = client().await;
    assert!(!ok.service().api_version.is_empty());
    assert!(!ok.tls_insecure());
    ok.logout().await.unwrap();

    let wrong = format!("{}-wrong-Zq9", lab().vsphere_password);
    let err = Client::connect(config_with_password(&wrong)).await.unwrap_err();
    assert!(err.is_invalid_login(), "expected InvalidLogin, got {err:?}");
    let mut texts = vec![format!("{err}"), format!("{err:?}")];
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(&err);
    while let Some(s) = source {
        texts.push(s.to_string());
        source = s.source();
    }
    for text in &texts {
        assert!(!text.contains(&wrong), "password leaked into error text: {text}");
    }
    assert!(texts.iter().any(|t| t.contains("InvalidLogin")), "{texts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vm_in_nested_folder_is_found_and_unknown_names_are_named() {
    let control = Control::new();
    let dir = tempfile::tempdir().unwrap();
    let (vmdk, _) = make_vmdk(dir.path(), "d0", 2 << 20, 1);
    let name = unique("nested");
    let folder = format!("{}/inner", unique("outer"));
    control
        .create_vm(json!({"name": name, "folder": folder, "disks": [{"bus": "pvscsi", "path": vmdk}]}))
        .await;

    let c = client().await;
    let dc = c.datacenter(&lab().vsphere_dc).await.unwrap();
    let in_folder = c.find_vm(&dc, Some(&folder), &name).await.unwrap();
    let anywhere = c.find_vm(&dc, None, &name).await.unwrap();
    assert_eq!(in_folder, anywhere);
    assert_eq!(in_folder.kind, "VirtualMachine");

    let err = c.datacenter("NoSuchDC").await.unwrap_err();
    assert!(matches!(err, inventory::Error::DatacenterNotFound { .. }));
    assert!(
        err.to_string().contains("NoSuchDC") && err.to_string().contains(&lab().vsphere_dc),
        "{err}"
    );

    let err = c.find_vm(&dc, Some("no/such/folder"), &name).await.unwrap_err();
    assert!(matches!(err, inventory::Error::FolderNotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("no/such/folder"), "{err}");

    let err = c.find_vm(&dc, Some(&folder), "no-such-vm").await.unwrap_err();
    assert!(matches!(err, inventory::Error::VmNotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("no-such-vm"), "{err}");
    c.logout().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn description_export_and_completed_lease_of_a_three_disk_vm() {
    let control = Control::new();
    let dir = tempfile::tempdir().unwrap();
    let sizes = [6u64 << 20, 4 << 20, 3 << 20];
    let disks: Vec<_> = sizes
        .iter()
        .enumerate()
        .map(|(i, s)| make_vmdk(dir.path(), &format!("d{i}"), *s, i as u64 + 7))
        .collect();
    let name = unique("full");
    control
        .create_vm(json!({
            "name": name, "folder": "imports",
            "cpus": 8, "coresPerSocket": 8, "memoryMB": 4096,
            "firmware": "efi", "secureBoot": true, "vtpm": true,
            "guestId": "otherGuest64", "hwVersion": "vmx-19",
            // A disk=false NVRAM item in the lease, as real vCenter lists: must be ignored.
            "exportNvram": true,
            "disks": [
                {"bus": "lsilogic", "path": disks[0].0},
                {"bus": "sata", "path": disks[1].0},
                {"bus": "nvme", "path": disks[2].0}
            ],
            "nics": [
                {"type": "e1000", "network": "VM Network", "mac": "00:50:56:aa:bb:01"},
                {"type": "vmxnet3", "network": "DC0_DVPG0", "mac": "00:50:56:aa:bb:02"}
            ]
        }))
        .await;

    let c = client().await;
    let vm = c
        .inspect(&lab().vsphere_dc, Some("imports"), &name)
        .await
        .unwrap();
    assert_eq!(vm.name, name);
    assert_eq!(vm.power_state, PowerState::PoweredOff);
    assert_eq!((vm.num_cpu, vm.num_cores_per_socket, vm.memory_mb), (8, 8, 4096));
    assert_eq!(vm.firmware, Firmware::Efi);
    assert!(vm.secure_boot && vm.vtpm && !vm.snapshot_present);
    assert_eq!(vm.guest_id.as_deref(), Some("otherGuest64"));
    assert_eq!(vm.hardware_version.as_deref(), Some("vmx-19"));
    assert_eq!(vm.disks.len(), 3);
    let families: Vec<_> = vm.disks.iter().map(|d| d.controller.family).collect();
    assert_eq!(families, [BusFamily::Scsi, BusFamily::Sata, BusFamily::Nvme]);
    let classes: Vec<_> = vm.disks.iter().map(|d| d.controller.class.as_str()).collect();
    assert_eq!(
        classes,
        [
            "VirtualLsiLogicController",
            "VirtualAHCIController",
            "VirtualNVMEController"
        ]
    );
    for (disk, size) in vm.disks.iter().zip(sizes) {
        assert_eq!(disk.capacity_bytes, size, "{disk:?}");
        assert_eq!(disk.provisioning, Provisioning::Thin);
        assert!(!disk.independent && !disk.shared && disk.rdm.is_none());
        assert!(
            disk.backing_file.as_deref().is_some_and(|f| f.contains(&name)),
            "{disk:?}"
        );
    }
    assert_eq!(vm.nics.len(), 2);
    assert_eq!(vm.nics[0].device_type, "VirtualE1000");
    assert_eq!(vm.nics[0].mac_address.as_deref(), Some("00:50:56:aa:bb:01"));
    assert!(
        matches!(&vm.nics[0].network, NicNetwork::Standard { name, .. } if name == "VM Network"),
        "{:?}",
        vm.nics[0]
    );
    assert_eq!(vm.nics[1].device_type, "VirtualVmxnet3");
    assert_eq!(vm.nics[1].mac_address.as_deref(), Some("00:50:56:aa:bb:02"));
    match &vm.nics[1].network {
        NicNetwork::Distributed {
            name,
            switch_name,
            portgroup_key,
            ..
        } => {
            assert_eq!(name.as_deref(), Some("DC0_DVPG0"));
            assert_eq!(switch_name.as_deref(), Some("DVS0"));
            assert!(portgroup_key.starts_with("dvportgroup-"), "{portgroup_key}");
        }
        other => panic!("second NIC should be on a distributed port group: {other:?}"),
    }
    // The description is what `vm-import vsphere inspect` prints.
    let json = serde_json::to_value(&vm).unwrap();
    assert_eq!(json["numCoresPerSocket"], 8);

    let started = std::time::Instant::now();
    let exported = c
        .export_vm(&vm, sinks(&vm), &ExportOptions::default())
        .await
        .unwrap();
    let secs = started.elapsed().as_secs_f64();
    for (disk, (vmdk, _)) in vm.disks.iter().zip(&disks) {
        let sink = &exported.sinks[&disk.key];
        assert_eq!(
            sink.sha256.as_deref(),
            Some(sha256_file(vmdk).as_str()),
            "disk {} differs",
            disk.label
        );
        assert_eq!(sink.begins, 1);
    }
    let total: u64 = exported.report.disks.iter().map(|d| d.bytes).sum();
    eprintln!(
        "exported {total} bytes over 3 concurrent disks in {secs:.3}s ({:.1} MB/s)",
        total as f64 / secs / 1e6
    );
    assert_eq!(exported.report.leases, 1);

    let records = control.leases_of(&name).await;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["completed"], true, "{:?}", records[0]);
    assert_eq!(records[0]["aborted"], false);
    assert!(
        records[0]["progressCalls"]["count"].as_u64().unwrap() >= 1,
        "{:?}",
        records[0]
    );
    let files = records[0]["files"].as_array().unwrap();
    assert_eq!(files.len(), 4, "3 disks and the NVRAM item: {files:?}");
    let downloads = records[0]["downloads"].as_object().unwrap();
    assert_eq!(
        downloads.values().filter(|n| n.as_u64() > Some(0)).count(),
        3,
        "only the disks are fetched: {downloads:?}"
    );
    c.logout().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lease_urls_serve_the_vmdk_bytes_and_abort_is_recorded() {
    let OneDiskVm {
        control,
        dir: _dir,
        name,
        vmdk,
        ..
    } = one_disk_vm("abort", "a", 3 << 20, 3).await;

    let c = client().await;
    let dc = c.datacenter(&lab().vsphere_dc).await.unwrap();
    let vm = c.find_vm(&dc, None, &name).await.unwrap();
    // Raw protocol steps, so the test sees exactly what the lease hands out.
    let req = envelope::export_vm(&vm);
    let lease = response::moref(req.method, &c.call(&req).await.unwrap()).unwrap();
    let spec = envelope::PropertySpec::new("HttpNfcLease", &["state", "info"]);
    let objects = c
        .retrieve("lease", &[spec], &[envelope::ObjectSpec::Object(lease.clone())])
        .await
        .unwrap();
    let info = response::lease_info(objects[0].prop("info").unwrap()).unwrap();
    assert_eq!(info.device_urls.len(), 1);
    let url = info.device_urls[0]
        .url
        .replace("://*", &format!("://{}", c.sdk_url().host_str().unwrap()));
    let tls = vsphere::tls::client_config(&vsphere::TlsMode::CaBundle(lab::ca_pem())).unwrap();
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .build()
        .unwrap();
    let body = http.get(&url).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&body)),
        sha256_file(&vmdk)
    );

    c.call(&envelope::lease_abort(&lease, Some("test abort")))
        .await
        .unwrap();
    let records = control.leases_of(&name).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["aborted"], true, "{:?}", records[0]);
    assert_eq!(records[0]["completed"], false);
    c.logout().await.unwrap();
}

/// A sink that refuses data: the export fails without retry and its lease is aborted.
#[derive(Debug)]
struct FailingSink;

impl StreamSink for FailingSink {
    async fn begin(
        &mut self,
        _meta: &diskconv::stream::StreamMeta,
    ) -> Result<(), diskconv::stream::SinkError> {
        Ok(())
    }
    async fn write(&mut self, _chunk: bytes::Bytes) -> Result<(), diskconv::stream::SinkError> {
        Err("disk full (test)".into())
    }
    async fn finish(&mut self) -> Result<(), diskconv::stream::SinkError> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failing_export_aborts_its_lease() {
    let control = Control::new();
    let dir = tempfile::tempdir().unwrap();
    let (vmdk, _) = make_vmdk(dir.path(), "f", 2 << 20, 5);
    let name = unique("failing");
    control
        .create_vm(json!({"name": name, "disks": [{"bus": "sata", "path": vmdk}]}))
        .await;
    let c = client().await;
    let vm = c.inspect(&lab().vsphere_dc, None, &name).await.unwrap();
    let sinks: BTreeMap<i32, FailingSink> = vm.disks.iter().map(|d| (d.key, FailingSink)).collect();
    let err = c
        .export_vm(&vm, sinks, &ExportOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, vsphere::export::Error::Download { attempts: 1, .. }),
        "{err:?}"
    );
    let records = control.leases_of(&name).await;
    assert_eq!(
        records.len(),
        1,
        "a sink failure must not be retried: {records:?}"
    );
    assert_eq!(records[0]["aborted"], true, "{:?}", records[0]);
    c.logout().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cut_connection_is_retried_with_a_fresh_lease() {
    let OneDiskVm {
        control,
        dir: _dir,
        name,
        vmdk,
        ..
    } = one_disk_vm("cut", "c", 8 << 20, 9).await;
    control.add_fault(200_000, 1, &name).await;
    let c = client().await;
    let vm = c.inspect(&lab().vsphere_dc, None, &name).await.unwrap();
    let options = ExportOptions {
        backoff: Duration::from_millis(200),
        ..ExportOptions::default()
    };
    let exported = c.export_vm(&vm, sinks(&vm), &options).await.unwrap();
    let sink = &exported.sinks[&vm.disks[0].key];
    assert_eq!(sink.sha256.as_deref(), Some(sha256_file(&vmdk).as_str()));
    assert_eq!(sink.begins, 2);
    assert_eq!(exported.report.leases, 2);
    assert_eq!(exported.report.disks[0].attempts, 2);
    let records = control.leases_of(&name).await;
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(records[0]["cuts"], 1);
    assert_eq!(records[0]["aborted"], true, "{:?}", records[0]);
    assert_eq!(records[1]["completed"], true, "{:?}", records[1]);
    c.logout().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn repeated_cuts_give_up_after_max_attempts_and_abort_every_lease() {
    let OneDiskVm {
        control,
        dir: _dir,
        name,
        vmdk: _,
        ..
    } = one_disk_vm("cuts", "r", 4 << 20, 11).await;
    control.add_fault(100_000, 5, &name).await;
    let c = client().await;
    let vm = c.inspect(&lab().vsphere_dc, None, &name).await.unwrap();
    let options = ExportOptions {
        max_attempts: 2,
        backoff: Duration::from_millis(100),
        ..ExportOptions::default()
    };
    let err = c.export_vm(&vm, sinks(&vm), &options).await.unwrap_err();
    assert!(
        matches!(err, vsphere::export::Error::Download { attempts: 2, .. }),
        "{err:?}"
    );
    let records = control.leases_of(&name).await;
    assert_eq!(records.len(), 2);
    assert!(
        records
            .iter()
            .all(|r| r["aborted"] == true && r["completed"] == false),
        "{records:?}"
    );
    c.logout().await.unwrap();
}

/// A consumer that takes in about 3.3 µs per byte (300 kB/s), whatever the chunk sizes.
#[derive(Debug, Default)]
struct SlowSink(HashingSink);

impl StreamSink for SlowSink {
    async fn begin(
        &mut self,
        meta: &diskconv::stream::StreamMeta,
    ) -> Result<(), diskconv::stream::SinkError> {
        self.0.begin(meta).await
    }
    async fn write(&mut self, chunk: bytes::Bytes) -> Result<(), diskconv::stream::SinkError> {
        tokio::time::sleep(Duration::from_micros(chunk.len() as u64 * 10 / 3)).await;
        self.0.write(chunk).await
    }
    async fn finish(&mut self) -> Result<(), diskconv::stream::SinkError> {
        self.0.finish().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_consumer_keeps_a_short_lease_alive() {
    let control = Control::new();
    let dir = tempfile::tempdir().unwrap();
    // 3 MiB with 2 MiB of random data: a ~2 MiB stream, about 7 s at 300 kB/s.
    let (vmdk, _) = make_vmdk(dir.path(), "s", 3 << 20, 13);
    let name = unique("slow");
    control
        .create_vm(
            json!({"name": name, "leaseTimeoutSeconds": 2, "exportInitMillis": 700,
                          "disks": [{"bus": "pvscsi", "path": vmdk}]}),
        )
        .await;
    let c = client().await;
    let vm = c.inspect(&lab().vsphere_dc, None, &name).await.unwrap();
    let sinks: BTreeMap<i32, SlowSink> = vm.disks.iter().map(|d| (d.key, SlowSink::default())).collect();
    let started = std::time::Instant::now();
    let exported = c.export_vm(&vm, sinks, &ExportOptions::default()).await.unwrap();
    let took = started.elapsed();
    assert!(
        took > Duration::from_secs(4),
        "the consumer was not slow enough to test anything: {took:?}"
    );
    assert_eq!(
        exported.sinks[&vm.disks[0].key].0.sha256.as_deref(),
        Some(sha256_file(&vmdk).as_str())
    );
    assert_eq!(
        exported.report.leases, 1,
        "the lease must survive, not be replaced"
    );
    let records = control.leases_of(&name).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["expired"], false, "{:?}", records[0]);
    assert_eq!(records[0]["completed"], true, "{:?}", records[0]);
    let calls = records[0]["progressCalls"]["count"].as_u64().unwrap();
    assert!(calls >= 4, "only {calls} progress calls in {took:?}");
    // One call may have been in flight when the keep-alive stopped.
    assert!(
        calls.abs_diff(exported.report.progress_calls) <= 1,
        "{calls} vs {}",
        exported.report.progress_calls
    );
    c.logout().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn graceful_shutdown_with_tools_and_clear_error_without() {
    let control = Control::new();
    let dir = tempfile::tempdir().unwrap();
    let (vmdk, _) = make_vmdk(dir.path(), "p", 1 << 20, 17);
    let with_tools = unique("tools");
    let without_tools = unique("notools");
    control.create_vm(json!({"name": with_tools, "power": "on", "tools": "running", "disks": [{"bus": "pvscsi", "path": vmdk}]})).await;
    control.create_vm(json!({"name": without_tools, "power": "on", "tools": "notRunning", "disks": [{"bus": "pvscsi", "path": vmdk}]})).await;
    let c = client().await;
    let dc = c.datacenter(&lab().vsphere_dc).await.unwrap();
    let graceful = PowerOffMode::Graceful {
        timeout: Duration::from_secs(30),
    };

    let vm = c.find_vm(&dc, None, &with_tools).await.unwrap();
    assert_eq!(
        c.ensure_powered_off(&vm, graceful).await.unwrap(),
        PowerOffOutcome::ShutDown
    );
    assert_eq!(c.power_state(&vm).await.unwrap().0, PowerState::PoweredOff);
    assert_eq!(
        c.ensure_powered_off(&vm, graceful).await.unwrap(),
        PowerOffOutcome::AlreadyOff
    );

    let vm = c.find_vm(&dc, None, &without_tools).await.unwrap();
    let err = c.ensure_powered_off(&vm, graceful).await.unwrap_err();
    assert!(matches!(err, power::Error::ToolsNotRunning { .. }), "{err:?}");
    assert!(err.to_string().contains("VMware Tools are not running"), "{err}");
    assert_eq!(
        c.power_state(&vm).await.unwrap().0,
        PowerState::PoweredOn,
        "a refused graceful stop must not power off"
    );
    let err = c.ensure_powered_off(&vm, PowerOffMode::Never).await.unwrap_err();
    assert!(matches!(err, power::Error::NotOff { .. }), "{err:?}");
    // Exporting a running VM fails with the server's InvalidPowerState, typed.
    let described = c.describe_vm(&vm, &Default::default()).await.unwrap();
    let err = c
        .export_vm(&described, sinks(&described), &ExportOptions::default())
        .await
        .unwrap_err();
    let fault = match &err {
        vsphere::export::Error::Call { source, .. } => source.fault().cloned(),
        _ => None,
    };
    assert!(
        matches!(fault.map(|f| f.kind), Some(FaultKind::InvalidPowerState { .. })),
        "{err:?}"
    );
    assert_eq!(
        c.ensure_powered_off(&vm, PowerOffMode::Force).await.unwrap(),
        PowerOffOutcome::PoweredOff
    );
    assert_eq!(c.power_state(&vm).await.unwrap().0, PowerState::PoweredOff);
    c.logout().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pinned_fingerprint_and_wrong_ca() {
    // The lab's server certificate, read over TLS with verification off, then pinned.
    let insecure = Client::connect(lab::config().with_tls(vsphere::TlsMode::Insecure))
        .await
        .unwrap();
    assert!(insecure.tls_insecure());
    insecure.logout().await.unwrap();

    // The certificate the server really presents, as openssl sees it, pinned by its SHA-256.
    let url = reqwest::Url::parse(&lab().vsphere_url).unwrap();
    let addr = format!(
        "{}:{}",
        url.host_str().unwrap(),
        url.port_or_known_default().unwrap()
    );
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {addr} </dev/null 2>/dev/null | openssl x509 -outform DER"
        ))
        .output()
        .expect("openssl is needed for this test");
    assert!(
        out.status.success() && !out.stdout.is_empty(),
        "could not read the server certificate with openssl"
    );
    let pin = vsphere::tls::fingerprint_sha256(&out.stdout);
    let pinned = Client::connect(lab::config().with_tls(vsphere::TlsMode::pinned_from_hex(&pin).unwrap()))
        .await
        .unwrap();
    assert!(!pinned.tls_insecure());
    pinned.logout().await.unwrap();

    let wrong_pin = vsphere::TlsMode::PinnedSha256([0u8; 32]);
    let err = Client::connect(lab::config().with_tls(wrong_pin))
        .await
        .unwrap_err();
    assert!(matches!(err, vsphere::client::Error::Transport { .. }), "{err:?}");

    let err = Client::connect(lab::config().with_tls(vsphere::TlsMode::SystemRoots))
        .await
        .unwrap_err();
    assert!(
        matches!(err, vsphere::client::Error::Transport { .. }),
        "lab CA is not a system root: {err:?}"
    );
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn export_to_dir_decodes_streams_into_identical_images() {
    let control = Control::new();
    let dir = tempfile::tempdir().unwrap();
    let sizes = [24u64 << 20, 16 << 20, 8 << 20];
    let disks: Vec<_> = sizes
        .iter()
        .enumerate()
        .map(|(i, s)| make_vmdk(dir.path(), &format!("x{i}"), *s, i as u64 + 21))
        .collect();
    let name = unique("todir");
    control
        .create_vm(json!({"name": name, "disks": [
            {"bus": "pvscsi", "path": disks[0].0}, {"bus": "sata", "path": disks[1].0}, {"bus": "nvme", "path": disks[2].0}
        ]}))
        .await;
    let c = client().await;
    let vm = c.inspect(&lab().vsphere_dc, None, &name).await.unwrap();

    let out = dir.path().join("raw-out");
    let started = std::time::Instant::now();
    let result = c
        .export_to_dir(
            &vm,
            &out,
            (
                vsphere::convert::ImageFormat::Raw,
                Some(diskconv::Checksum::Sha256),
            ),
            &ExportOptions::default(),
        )
        .await
        .unwrap();
    let secs = started.elapsed().as_secs_f64();
    for (image, (_, raw)) in result.images.iter().zip(&disks) {
        assert_eq!(
            sha256_file(&image.path),
            sha256_file(raw),
            "{} differs from its source",
            image.path.display()
        );
        assert_eq!(
            image.conversion.digest(diskconv::Checksum::Sha256).unwrap(),
            sha256_file(raw)
        );
        assert_eq!(image.conversion.virtual_size, image.capacity_bytes);
    }
    let wire: u64 = result.export.disks.iter().map(|d| d.bytes).sum();
    let logical: u64 = sizes.iter().sum();
    eprintln!(
        "export_to_dir raw, 3 disks in parallel: {wire} stream bytes / {logical} disk bytes in {secs:.2}s \
         = {:.1} MB/s stream, {:.1} MB/s disk; per disk {:?}; peak RSS {} KiB",
        wire as f64 / secs / 1e6,
        logical as f64 / secs / 1e6,
        result
            .export
            .disks
            .iter()
            .map(|d| format!("{:.1} MB/s", d.bytes as f64 / d.elapsed.as_secs_f64() / 1e6))
            .collect::<Vec<_>>(),
        peak_rss_kib()
    );
    // Nothing but the images in the output directory: no VMDK, no scratch file.
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["disk-0.img", "disk-1.img", "disk-2.img"]);

    let out = dir.path().join("qcow2-out");
    let result = c
        .export_to_dir(
            &vm,
            &out,
            (vsphere::convert::ImageFormat::Qcow2, None),
            &ExportOptions::default(),
        )
        .await
        .unwrap();
    for (image, (_, raw)) in result.images.iter().zip(&disks) {
        lab::run(
            std::process::Command::new("qemu-img")
                .args(["compare", "-q", "-f", "qcow2", "-F", "raw"])
                .arg(&image.path)
                .arg(raw),
        );
    }
    c.logout().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn export_to_dir_leaves_nothing_behind_when_it_fails() {
    let OneDiskVm {
        control,
        dir,
        name,
        vmdk: _,
        ..
    } = one_disk_vm("nothing", "n", 4 << 20, 31).await;
    control.add_fault(150_000, 5, &name).await;
    let c = client().await;
    let vm = c.inspect(&lab().vsphere_dc, None, &name).await.unwrap();
    let out = dir.path().join("out");
    let options = ExportOptions {
        max_attempts: 2,
        backoff: Duration::from_millis(100),
        ..ExportOptions::default()
    };
    let err = c
        .export_to_dir(&vm, &out, (vsphere::convert::ImageFormat::Raw, None), &options)
        .await
        .unwrap_err();
    assert!(
        matches!(err, vsphere::convert::DirError::Export { .. }),
        "{err:?}"
    );
    assert_eq!(
        std::fs::read_dir(&out).unwrap().count(),
        0,
        "partial images must be removed"
    );
    c.logout().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lost_session_is_renewed_by_one_login() {
    let c = client().await;
    let before = c.datacenters().await.unwrap();
    // Logging out makes the server answer NotAuthenticated; the next call must log in again once.
    c.logout().await.unwrap();
    let req = envelope::retrieve_properties_ex(
        &c.service().property_collector,
        &[envelope::PropertySpec::new("Folder", &["name"])],
        &[envelope::ObjectSpec::Object(c.service().root_folder.clone())],
    );
    let body = c.call(&req).await.unwrap();
    assert!(
        response::retrieve_result(req.method, &body)
            .unwrap()
            .objects
            .len()
            == 1
    );
    assert_eq!(c.datacenters().await.unwrap(), before);
    c.logout().await.unwrap();
}

/// Export throughput from the simulator, one disk alone and three in parallel, plus decode into RAW.
/// Prints the numbers (run with `--nocapture`); asserts only correctness.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn export_throughput_single_and_parallel() {
    const MIB: u64 = 1 << 20;
    let size = 96 * MIB;
    let control = Control::new();
    let dir = tempfile::tempdir().unwrap();
    let disks: Vec<_> = (0..3)
        .map(|i| make_vmdk(dir.path(), &format!("t{i}"), size, 40 + i))
        .collect();
    let one = unique("tput1");
    let three = unique("tput3");
    control
        .create_vm(json!({"name": one, "disks": [{"bus": "pvscsi", "path": disks[0].0}]}))
        .await;
    control
        .create_vm(json!({"name": three, "disks": [
            {"bus": "pvscsi", "path": disks[0].0}, {"bus": "pvscsi", "path": disks[1].0}, {"bus": "pvscsi", "path": disks[2].0}
        ]}))
        .await;
    let c = client().await;
    for name in [&one, &three] {
        let vm = c.inspect(&lab().vsphere_dc, None, name).await.unwrap();
        let started = std::time::Instant::now();
        let exported = c
            .export_vm(&vm, sinks(&vm), &ExportOptions::default())
            .await
            .unwrap();
        let secs = started.elapsed().as_secs_f64();
        let wire: u64 = exported.report.disks.iter().map(|d| d.bytes).sum();
        for (disk, (vmdk, _)) in vm.disks.iter().zip(&disks) {
            assert_eq!(
                exported.sinks[&disk.key].sha256.as_deref(),
                Some(sha256_file(vmdk).as_str())
            );
        }
        eprintln!(
            "THROUGHPUT hash-only {} disk(s): {:.1} MB/s total stream ({} bytes in {secs:.2}s); per disk {:?}",
            vm.disks.len(),
            wire as f64 / secs / 1e6,
            wire,
            exported
                .report
                .disks
                .iter()
                .map(|d| format!("{:.1} MB/s", d.bytes as f64 / d.elapsed.as_secs_f64() / 1e6))
                .collect::<Vec<_>>()
        );
        let out = dir.path().join(format!("out-{}", vm.disks.len()));
        let started = std::time::Instant::now();
        let result = c
            .export_to_dir(
                &vm,
                &out,
                (
                    vsphere::convert::ImageFormat::Raw,
                    Some(diskconv::Checksum::Sha256),
                ),
                &ExportOptions::default(),
            )
            .await
            .unwrap();
        let secs = started.elapsed().as_secs_f64();
        for (image, (_, raw)) in result.images.iter().zip(&disks) {
            assert_eq!(
                image.conversion.digest(diskconv::Checksum::Sha256).unwrap(),
                sha256_file(raw)
            );
        }
        eprintln!(
            "THROUGHPUT decode-to-raw {} disk(s): {:.1} MB/s stream, {:.1} MB/s disk content, in {secs:.2}s; peak RSS {} KiB",
            vm.disks.len(),
            result.export.disks.iter().map(|d| d.bytes).sum::<u64>() as f64 / secs / 1e6,
            (size * vm.disks.len() as u64) as f64 / secs / 1e6,
            peak_rss_kib()
        );
    }
    c.logout().await.unwrap();
}

/// The counterpart of the keep-alive test: without progress calls the same short lease expires
/// mid-transfer, and the export fails instead of returning data read under a dead lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lease_without_keepalive_expires_and_export_fails() {
    let control = Control::new();
    let dir = tempfile::tempdir().unwrap();
    let (vmdk, _) = make_vmdk(dir.path(), "e", 3 << 20, 51);
    let name = unique("expire");
    control
        .create_vm(
            json!({"name": name, "leaseTimeoutSeconds": 1, "disks": [{"bus": "pvscsi", "path": vmdk}]}),
        )
        .await;
    let c = client().await;
    let vm = c.inspect(&lab().vsphere_dc, None, &name).await.unwrap();
    let sinks: BTreeMap<i32, SlowSink> = vm.disks.iter().map(|d| (d.key, SlowSink::default())).collect();
    let options = ExportOptions {
        max_attempts: 1,
        keepalive_interval: Some(Duration::from_secs(3600)),
        ..ExportOptions::default()
    };
    let err = c.export_vm(&vm, sinks, &options).await.unwrap_err();
    assert!(matches!(err, vsphere::export::Error::Download { .. }), "{err:?}");
    let records = control.leases_of(&name).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["expired"], true, "{:?}", records[0]);
    assert_eq!(records[0]["completed"], false, "{:?}", records[0]);
    c.logout().await.unwrap();
}

/// Disk URLs on another host than the SDK (an ESXi behind vCenter) are checked against the lease's
/// `sslThumbprint`: connecting as `localhost` makes the lab's `127.0.0.1` URLs "another host".
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disk_urls_on_another_host_are_pinned_to_the_lease_thumbprint() {
    let OneDiskVm {
        control: _,
        dir: _dir,
        name,
        vmdk,
        ..
    } = one_disk_vm("otherhost", "h", 2 << 20, 61).await;

    let mut config = lab::config();
    let mut url = reqwest::Url::parse(&config.endpoint).unwrap();
    assert_eq!(
        url.host_str(),
        Some("127.0.0.1"),
        "the test assumes the lab listens on 127.0.0.1"
    );
    url.set_host(Some("localhost")).unwrap();
    config.endpoint = url.to_string();
    let c = Client::connect(config).await.unwrap();
    let vm = c.inspect(&lab().vsphere_dc, None, &name).await.unwrap();
    let exported = c
        .export_vm(&vm, sinks(&vm), &ExportOptions::default())
        .await
        .unwrap();
    assert_eq!(
        exported.report.disks[0].tls,
        vsphere::export::NfcTls::LeaseThumbprint
    );
    assert_eq!(
        exported.sinks[&vm.disks[0].key].sha256.as_deref(),
        Some(sha256_file(&vmdk).as_str())
    );
    c.logout().await.unwrap();

    // Same host: the session's own TLS policy.
    let c = client().await;
    let exported = c
        .export_vm(&vm, sinks(&vm), &ExportOptions::default())
        .await
        .unwrap();
    assert_eq!(exported.report.disks[0].tls, vsphere::export::NfcTls::Session);
    c.logout().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn non_soap_answers_and_timeouts_are_typed_errors() {
    // The lab's control API is not SOAP and wants basic auth: a 401 page, not a fault.
    let mut config = lab::config();
    config.endpoint = lab().vcsim_control_url.clone();
    let err = Client::connect(config).await.unwrap_err();
    match &err {
        vsphere::client::Error::HttpStatus { method, status, .. } => {
            assert_eq!(*method, "RetrieveServiceContent");
            assert_eq!(status.as_u16(), 401, "{err}");
        }
        other => panic!("expected HttpStatus, got {other:?}"),
    }
    let err = Client::connect(lab::config().with_call_timeout(Duration::from_micros(1)))
        .await
        .unwrap_err();
    assert!(matches!(err, vsphere::client::Error::Timeout { .. }), "{err:?}");
}

/// Records, in one shared timeline, when each disk's stream started and finished.
#[derive(Clone)]
struct TimelineSink {
    disk: i32,
    timeline: std::sync::Arc<std::sync::Mutex<Vec<(i32, &'static str)>>>,
    started: bool,
}

impl TimelineSink {
    fn record(&self, event: &'static str) {
        // A poisoned lock means another sink panicked; that test fails anyway, keep the event.
        let mut timeline = self
            .timeline
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        timeline.push((self.disk, event));
    }
}

impl StreamSink for TimelineSink {
    async fn begin(
        &mut self,
        _meta: &diskconv::stream::StreamMeta,
    ) -> Result<(), diskconv::stream::SinkError> {
        self.started = false;
        Ok(())
    }
    async fn write(&mut self, _chunk: bytes::Bytes) -> Result<(), diskconv::stream::SinkError> {
        if !self.started {
            self.started = true;
            self.record("first-bytes");
        }
        // A slow consumer: if disks were fetched one after another, the first would finish long
        // before the second started.
        tokio::time::sleep(Duration::from_millis(2)).await;
        Ok(())
    }
    async fn finish(&mut self) -> Result<(), diskconv::stream::SinkError> {
        self.record("finished");
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disks_are_downloaded_concurrently() {
    let control = Control::new();
    let dir = tempfile::tempdir().unwrap();
    let disks: Vec<_> = (0..3u64)
        .map(|i| make_vmdk(dir.path(), &format!("c{i}"), 4 << 20, i + 31))
        .collect();
    let name = unique("concurrent");
    control
        .create_vm(json!({
            "name": name,
            "disks": disks.iter().map(|(vmdk, _)| json!({"bus": "pvscsi", "path": vmdk})).collect::<Vec<_>>()
        }))
        .await;
    let c = client().await;
    let vm = c.inspect(&lab().vsphere_dc, None, &name).await.unwrap();
    let timeline = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sinks: BTreeMap<i32, TimelineSink> = vm
        .disks
        .iter()
        .map(|d| {
            let sink = TimelineSink {
                disk: d.key,
                timeline: timeline.clone(),
                started: false,
            };
            (d.key, sink)
        })
        .collect();
    c.export_vm(&vm, sinks, &ExportOptions::default()).await.unwrap();
    c.logout().await.unwrap();

    let events = timeline.lock().unwrap().clone();
    let first_finish = events
        .iter()
        .position(|(_, e)| *e == "finished")
        .expect("a disk finished");
    let started_before: std::collections::BTreeSet<i32> = events[..first_finish]
        .iter()
        .filter(|(_, e)| *e == "first-bytes")
        .map(|(disk, _)| *disk)
        .collect();
    assert_eq!(
        started_before.len(),
        3,
        "every disk's transfer must be under way before the first one finishes: {events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nic_on_an_opaque_network_is_described_with_its_name_and_type() {
    let control = Control::new();
    let network = unique("nsx-seg");
    let id = unique("ls");
    let created = control
        .create_network(json!({"name": network, "kind": "opaque", "opaqueNetworkId": id}))
        .await;
    assert_eq!(created["opaqueNetworkType"], "nsx.LogicalSwitch", "{created}");
    let name = unique("nsx");
    control
        .create_vm(json!({"name": name, "nics": [
            {"type": "vmxnet3", "network": network, "mac": "00:50:56:aa:dd:01"},
            {"type": "e1000", "network": "VM Network", "mac": "00:50:56:aa:dd:02"}
        ]}))
        .await;

    let c = client().await;
    let vm = c.inspect(&lab().vsphere_dc, None, &name).await.unwrap();
    assert_eq!(vm.nics.len(), 2, "{:?}", vm.nics);
    assert_eq!(vm.nics[0].device_type, "VirtualVmxnet3");
    assert_eq!(vm.nics[0].mac_address.as_deref(), Some("00:50:56:aa:dd:01"));
    assert_eq!(
        vm.nics[0].network,
        NicNetwork::Opaque {
            name: Some(network.clone()),
            id: id.clone(),
            network_type: "nsx.LogicalSwitch".to_owned(),
        }
    );
    assert_eq!(vm.nics[0].network.name(), Some(network.as_str()));
    assert!(
        matches!(&vm.nics[1].network, NicNetwork::Standard { name, .. } if name == "VM Network"),
        "{:?}",
        vm.nics[1]
    );
    // What `vm-import vsphere inspect` prints for it.
    let json = serde_json::to_value(&vm.nics[0]).unwrap();
    assert_eq!(json["network"]["kind"], "opaque", "{json}");
    assert_eq!(json["network"]["name"], network.as_str(), "{json}");
    assert_eq!(json["network"]["networkType"], "nsx.LogicalSwitch", "{json}");
    c.logout().await.unwrap();
}
