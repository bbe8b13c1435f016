//! Preflight on the lab: `vm-import vsphere assess` over VMs shaped to trigger rules (and one that
//! triggers none, on hosts renamed so its probes reach this machine), its JSON stability and exit
//! codes, and a blocked ESXi port named with its host.

// Test helpers: a failed step must fail the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::{
    collections::BTreeMap,
    process::{Command, Output},
};

use serde_json::{Value, json};
use support::lab::{self, Control, make_vmdk, unique};

fn assess(args: &[&str]) -> Output {
    let lab = lab::lab();
    Command::new(env!("CARGO_BIN_EXE_vm-import"))
        .args([
            "vsphere",
            "assess",
            "--endpoint",
            &lab.vsphere_url,
            "--dc",
            &lab.vsphere_dc,
        ])
        .arg("--ca-cert")
        .arg(&lab.vsphere_ca_cert)
        .args(args)
        .env("VSPHERE_USERNAME", &lab.vsphere_username)
        .env("VSPHERE_PASSWORD", &lab.vsphere_password)
        .output()
        .expect("run vm-import")
}

/// VM name → sorted "Id:Severity" list.
fn concerns(report: &Value) -> BTreeMap<String, Vec<String>> {
    report["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|vm| {
            let mut ids: Vec<String> = vm["concerns"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| {
                    format!(
                        "{}:{}",
                        c["id"].as_str().unwrap(),
                        c["severity"].as_str().unwrap()
                    )
                })
                .collect();
            ids.sort();
            (vm["name"].as_str().unwrap().to_owned(), ids)
        })
        .collect()
}

fn strings(list: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = list.iter().map(|s| (*s).to_owned()).collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assess_reports_each_shaped_risk_sorted_and_stable_with_exit_codes() {
    let control = Control::new();
    let dir = tempfile::tempdir().unwrap();
    let (vmdk, _) = make_vmdk(dir.path(), "d", 1 << 20, 7);
    let folder = unique("assess");
    let clean = unique("clean");
    let windows = unique("win");
    let other = unique("other");
    let running = unique("running");
    let risky = unique("risky");
    let rdm = unique("rdm");
    let base = json!({"folder": folder, "hwVersion": "vmx-19", "power": "off"});
    let spec = |extra: Value| {
        let mut s = base.clone();
        s.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        s
    };
    control
        .create_vm(spec(json!({"name": clean, "guestId": "rhel9_64Guest",
            "disks": [{"bus": "lsilogic", "path": vmdk}],
            "nics": [{"type": "vmxnet3", "network": "VM Network"}]})))
        .await;
    control
        .create_vm(spec(json!({"name": windows, "guestId": "windows2019srv_64Guest",
            "firmware": "efi", "secureBoot": true, "vtpm": true,
            "disks": [{"bus": "nvme", "path": vmdk}, {"bus": "pvscsi", "path": vmdk}],
            "nics": [{"type": "vmxnet3", "network": "VM Network"}]})))
        .await;
    control
        .create_vm(spec(json!({"name": other, "guestId": "otherGuest64",
            "disks": [{"bus": "sata", "path": vmdk}],
            "nics": [{"type": "e1000", "network": "VM Network"}]})))
        .await;
    control
        .create_vm(spec(json!({"name": running, "guestId": "ubuntu64Guest",
            "power": "on", "tools": "notRunning",
            "disks": [{"bus": "lsilogic", "path": vmdk}],
            "nics": [{"type": "vmxnet3", "network": "VM Network"}]})))
        .await;
    control
        .create_vm(spec(json!({"name": risky, "guestId": "rhel9_64Guest",
            "snapshot": "before-upgrade", "encrypted": true, "cdromIso": "[LocalDS_0] iso/tools.iso",
            "disks": [{"bus": "lsilogic", "path": vmdk, "mode": "independent_persistent"},
                      {"bus": "lsilogic", "path": vmdk, "sharing": "sharingMultiWriter"}],
            "nics": [{"type": "vmxnet3", "network": "VM Network"}]})))
        .await;
    // Newer hardware than the rules know, two raw device mappings (a physical-mode LUN cannot be
    // exported, a virtual-mode one is copied into an image) and a disk on a controller KubeVirt
    // cannot boot from.
    control
        .create_vm(spec(
            json!({"name": rdm, "guestId": "rhel9_64Guest", "hwVersion": "vmx-22",
            "disks": [{"bus": "lsilogic", "path": vmdk, "rdm": "physicalMode"},
                      {"bus": "lsilogic", "path": vmdk, "rdm": "virtualMode"},
                      {"bus": "usb", "path": vmdk}],
            "nics": [{"type": "vmxnet3", "network": "VM Network"}]}),
        ))
        .await;
    let mapping = dir.path().join("mapping.json");
    std::fs::write(
        &mapping,
        r#"[{"sourceNetwork": "VM Network", "destinationNetwork": "default/vlan1"}]"#,
    )
    .unwrap();
    let mapping = mapping.to_str().unwrap();

    let out = assess(&["--folder", &folder, "--mapping", mapping, "--format", "json"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let again = assess(&["--folder", &folder, "--mapping", mapping, "--format", "json"]);
    assert_eq!(out.stdout, again.stdout, "JSON is stable between runs");

    let names: Vec<&str> = report["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted);
    assert_eq!(names.len(), 6, "{names:?}");

    // The lab's ESXi host (DC0_H0) has no DNS name: both its ports are reported as unresolved, naming it.
    let host = ["HostUnresolved:Warning", "HostUnresolved:Warning"];
    let got = concerns(&report);
    assert_eq!(got[&clean], strings(&host), "{report:#}");
    assert_eq!(
        got[&windows],
        strings(&[
            host[0],
            host[1],
            "WindowsNeedsVirtioDrivers:Warning",
            "WindowsNeedsVirtioDrivers:Warning",
            "WindowsNeedsAhci:Info",
            "VtpmStateNotCarried:Warning",
            "SecureBootNeedsSmm:Info",
        ]),
        "{report:#}"
    );
    assert_eq!(
        got[&other],
        strings(&[host[0], host[1], "GuestOs:Info", "EmulatedNicsOnly:Info"]),
        "{report:#}"
    );
    assert_eq!(
        got[&running],
        strings(&[host[0], host[1], "GuestShutdownImpossible:Critical"]),
        "{report:#}"
    );
    assert_eq!(
        got[&risky],
        strings(&[
            host[0],
            host[1],
            "SnapshotsPresent:Warning",
            "EncryptedVm:Critical",
            "IndependentDisk:Warning",
            "SharedDisk:Warning",
            "CdromNotCarried:Warning",
        ]),
        "{report:#}"
    );
    assert_eq!(
        got[&rdm],
        strings(&[
            host[0],
            host[1],
            "HardwareVersionUnknown:Warning",
            "RawDeviceMapping:Critical",
            "RawDeviceMapping:Warning",
            "UnsupportedController:Critical",
        ]),
        "{report:#}"
    );
    let vm = report["vms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == windows.as_str())
        .unwrap();
    assert_eq!(vm["disks"], 2);
    assert_eq!(vm["provisionedBytes"], 2 << 20);
    assert_eq!(vm["critical"], false);
    let text = vm.to_string();
    assert!(text.contains("DC0_H0") && text.contains("902"), "{text}");

    // Nothing Critical in scope: exit 0; CSV has a header and one line per VM.
    let out = assess(&[
        "--folder",
        &folder,
        "--mapping",
        mapping,
        "--vm",
        &clean,
        "--vm",
        &windows,
        "--format",
        "csv",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 3);
    // A name not in scope is a Critical row.
    let out = assess(&["--folder", &folder, "--vm", "no-such-vm-here", "--format", "json"]);
    assert_eq!(out.status.code(), Some(3));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        concerns(&report)["no-such-vm-here"],
        strings(&["VirtualMachineNotFound:Critical"])
    );
}

#[test]
fn assess_over_the_default_inventory_is_sorted_and_blocks_on_critical() {
    let out = assess(&["--format", "json"]);
    // The simulator's own VMs run without tools: a graceful shutdown is impossible (Critical).
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<String> = report["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(names.contains(&"DC0_H0_VM0".to_owned()), "{names:?}");
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    let got = concerns(&report);
    assert!(got["DC0_H0_VM0"].contains(&"GuestShutdownImpossible:Critical".to_owned()));
}

/// The one concern of `id` in `status`; fails the test when there is none or more than one.
fn only_concern<'a>(status: &'a api::VirtualMachineImportStatus, id: &str) -> &'a api::Concern {
    let found: Vec<_> = status.concerns.iter().filter(|c| c.id == id).collect();
    assert_eq!(found.len(), 1, "one {id}: {:?}", status.concerns);
    found[0]
}

/// A preflight refusal: the import failed with `PreflightFailed`, the source VM is still on with no
/// export lease, and an Event of the concern's `reason` was recorded.
async fn refused_before_power_off(
    scene: &support::Scene,
    control: &Control,
    status: &api::VirtualMachineImportStatus,
    vm_name: &str,
    reason: &str,
) {
    use std::time::Duration;
    let failed = api::condition::find(&status.import_conditions, &api::ConditionType::ImportFailed).unwrap();
    assert_eq!(failed.reason, "PreflightFailed");
    let vm = lab::client()
        .await
        .inspect(&lab::lab().vsphere_dc, None, vm_name)
        .await
        .unwrap();
    assert_eq!(vm.power_state, vsphere::proto::vm::PowerState::PoweredOn);
    assert!(control.leases_of(vm_name).await.is_empty());
    let start = std::time::Instant::now();
    while events(scene, reason).await.is_empty() {
        assert!(start.elapsed() < Duration::from_secs(30), "no {reason} Event");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The Events of `namespace` with this reason.
async fn events(scene: &support::Scene, reason: &str) -> Vec<k8s_openapi::api::events::v1::Event> {
    let api: kube::Api<k8s_openapi::api::events::v1::Event> =
        kube::Api::namespaced(scene.client.clone(), &scene.namespace);
    api.list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_duplicate_mac_blocks_before_power_off_and_skip_preflight_downgrades_it() {
    use api::{ImportPhase, Severity};
    use std::time::Duration;
    use support::{Scene, phase, vm_resource};

    let scene = Scene::new("e2e-pre").await;
    let control = Control::new();
    let (vmdk, _) = make_vmdk(scene.dir.path(), "d", 1 << 20, 9);
    let vm_name = unique("dupmac");
    let mac = "00:50:56:aa:ee:42";
    control
        .create_vm(
            json!({"name": vm_name, "cpus": 1, "memoryMB": 256, "hwVersion": "vmx-19",
            "guestId": "rhel9_64Guest", "power": "on", "tools": "running",
            "disks": [{"bus": "lsilogic", "path": vmdk}],
            "nics": [{"type": "vmxnet3", "network": "VM Network", "mac": mac}]}),
        )
        .await;
    // A VM already in the namespace holds the same MAC.
    let mut existing = kube::api::DynamicObject::new("holder", &vm_resource());
    existing.data = json!({"spec": {"running": false, "template": {"spec": {"domain": {"devices": {
        "interfaces": [{"name": "default", "macAddress": mac.to_uppercase(), "masquerade": {}}]}}}}}});
    scene
        .dynamic(&vm_resource())
        .create(&Default::default(), &existing)
        .await
        .unwrap();
    let controller = scene.start_controller();
    scene.source("vc", &lab::lab().vsphere_password).await;
    scene.import("blocked", "vc", &vm_name, json!({})).await;
    let import = scene
        .wait_import(&controller, "blocked", Duration::from_secs(60), |i| {
            phase(i) == ImportPhase::Invalid
        })
        .await;
    let status = import.status.unwrap();
    let dup = only_concern(&status, "DuplicateMac");
    assert_eq!(dup.severity, Severity::Critical);
    assert!(
        dup.message.contains(mac) && dup.message.contains("holder"),
        "{}",
        dup.message
    );
    refused_before_power_off(&scene, &control, &status, &vm_name, "DuplicateMac").await;

    // A VM of the import's name already in the namespace: Critical, and not downgradable.
    let mut same_name = kube::api::DynamicObject::new(&vm_name, &vm_resource());
    same_name.data = json!({"spec": {"running": false, "template": {"spec": {"domain": {"devices": {}}}}}});
    let vms = scene.dynamic(&vm_resource());
    vms.create(&Default::default(), &same_name).await.unwrap();
    scene
        .import("taken", "vc", &vm_name, json!({"skipPreflightChecks": true}))
        .await;
    let import = scene
        .wait_import(&controller, "taken", Duration::from_secs(60), |i| {
            phase(i) == ImportPhase::Invalid
        })
        .await;
    let status = import.status.unwrap();
    let taken = status
        .concerns
        .iter()
        .find(|c| c.id == "VirtualMachineExists")
        .unwrap_or_else(|| panic!("{:?}", status.concerns));
    assert_eq!(taken.severity, Severity::Critical);
    assert!(taken.message.contains(&vm_name), "{}", taken.message);
    vms.delete(&vm_name, &Default::default()).await.unwrap();

    // skipPreflightChecks: the same risk is a Warning that says it was downgraded, and the import runs.
    scene
        .import(
            "accepted",
            "vc",
            &vm_name,
            json!({"skipPreflightChecks": true, "forcePowerOff": true}),
        )
        .await;
    let import = scene
        .wait_import(&controller, "accepted", Duration::from_secs(60), |i| {
            !matches!(phase(i), ImportPhase::New) && !i.status.as_ref().is_some_and(|s| s.concerns.is_empty())
        })
        .await;
    assert_ne!(phase(&import), ImportPhase::Invalid, "{:?}", import.status);
    let status = import.status.unwrap();
    let dup = status.concerns.iter().find(|c| c.id == "DuplicateMac").unwrap();
    assert_eq!(dup.severity, Severity::Warning);
    assert!(
        dup.message
            .starts_with("downgraded from Critical by skipPreflightChecks"),
        "{}",
        dup.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_name_a_closed_esxi_port_and_a_reachable_clean_vm_triggers_nothing() {
    let control = Control::new();
    let dir = tempfile::tempdir().unwrap();
    let (vmdk, _) = make_vmdk(dir.path(), "d", 1 << 20, 9);
    let vm = |name: &str, host: &str, extra: Value| {
        let mut spec = json!({"name": name, "host": host, "guestId": "rhel9_64Guest",
            "hwVersion": "vmx-19", "power": "off",
            "disks": [{"bus": "lsilogic", "path": vmdk}],
            "nics": [{"type": "vmxnet3", "network": "VM Network"}]});
        spec.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        spec
    };
    let (probed, old, efi, clean) = (unique("probed"), unique("old"), unique("efi"), unique("clean"));
    control.create_vm(vm(&probed, "DC0_C0_H2", json!({}))).await;
    control
        .create_vm(vm(&old, "DC0_C0_H2", json!({"hwVersion": "vmx-04"})))
        .await;
    control
        .create_vm(vm(&efi, "DC0_C0_H2", json!({"firmware": "efi"})))
        .await;
    control.create_vm(vm(&clean, "DC0_C0_H0", json!({}))).await;
    // The probes reach a host by its inventory name, as they would a real ESXi: give the VMs'
    // hosts names that resolve here. Nothing listens on port 1; the test listens on `open`.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let open = listener.local_addr().unwrap().port().to_string();
    control.rename_host("DC0_C0_H2", "localhost").await;
    control.rename_host("DC0_C0_H0", "127.0.0.1").await;
    let mapping = dir.path().join("mapping.json");
    std::fs::write(
        &mapping,
        r#"[{"sourceNetwork": "VM Network", "destinationNetwork": "default/vlan1"}]"#,
    )
    .unwrap();
    let mapping = mapping.to_str().unwrap();
    let closed = assess(&[
        "--vm",
        &probed,
        "--vm",
        &old,
        "--vm",
        &efi,
        "--esxi-port",
        "1",
        "--mapping",
        mapping,
        "--format",
        "json",
    ]);
    let reachable = assess(&[
        "--vm",
        &clean,
        "--esxi-port",
        &open,
        "--mapping",
        mapping,
        "--format",
        "json",
    ]);
    control.rename_host("localhost", "DC0_C0_H2").await;
    control.rename_host("127.0.0.1", "DC0_C0_H0").await;

    assert_eq!(
        closed.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&closed.stderr)
    );
    let report: Value = serde_json::from_slice(&closed.stdout).unwrap();
    let got = concerns(&report);
    let port = "HostPortUnreachable:Critical";
    assert_eq!(got[&probed], strings(&[port]), "{report:#}");
    assert_eq!(
        got[&old],
        strings(&[port, "HardwareVersionTooOld:Critical"]),
        "{report:#}"
    );
    assert_eq!(got[&efi], strings(&[port, "EfiFirmware:Info"]), "{report:#}");
    let text = report.to_string();
    assert!(text.contains("ESXi host localhost port 1"), "{text}");

    assert_eq!(
        reachable.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&reachable.stderr)
    );
    let report: Value = serde_json::from_slice(&reachable.stdout).unwrap();
    assert_eq!(concerns(&report)[&clean], strings(&[]), "{report:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_import_that_would_eat_the_image_directory_reserve_is_refused_before_power_off() {
    use api::{ImportPhase, Severity};
    use std::time::Duration;
    use support::{ControllerProcess, Scene, phase};

    let scene = Scene::new("e2e-scratch").await;
    let control = Control::new();
    let (vmdk, _) = make_vmdk(scene.dir.path(), "d", 1 << 20, 11);
    let vm_name = unique("big");
    control
        .create_vm(
            json!({"name": vm_name, "cpus": 1, "memoryMB": 256, "hwVersion": "vmx-19",
            "guestId": "rhel9_64Guest", "power": "on", "tools": "running",
            "disks": [{"bus": "lsilogic", "path": vmdk}],
            "nics": [{"type": "vmxnet3", "network": "VM Network"}]}),
        )
        .await;
    // No file system here has a pebibyte free: whatever this machine has, the import's bytes do
    // not fit beside the reserve.
    let image_dir = scene.image_dir();
    let controller = ControllerProcess::start_with_env(
        &scene.namespace,
        &image_dir,
        scene.dir.path().join("controller.log"),
        &[("VM_IMPORT_IMAGE_DIR_RESERVE", std::ffi::OsStr::new("1Pi"))],
    );
    scene.source("vc", &lab::lab().vsphere_password).await;
    scene.import("big", "vc", &vm_name, json!({})).await;
    let import = scene
        .wait_import(&controller, "big", Duration::from_secs(60), |i| {
            phase(i) == ImportPhase::Invalid
        })
        .await;
    let status = import.status.unwrap();
    let low = only_concern(&status, "ScratchSpaceLow");
    assert_eq!(low.severity, Severity::Critical);
    let dir = image_dir.display().to_string();
    assert!(low.message.contains(&dir), "{}", low.message);
    assert!(
        low.message.contains("kept in reserve") && !low.remedy.is_empty(),
        "{:?}",
        low
    );
    refused_before_power_off(&scene, &control, &status, &vm_name, "ScratchSpaceLow").await;
    assert!(support::files_in(&image_dir).is_empty(), "nothing was written");
}
