//! End to end on the lab: the real `vm-import controller` process against the real kube-apiserver
//! (with Harvester's, KubeVirt's and Multus' CRDs) and the vCenter simulator. The test plays
//! Harvester and KubeVirt: it downloads every image URL as Longhorn/CDI would (a real HTTP client,
//! once `qemu-img convert` straight from the URL), checks each digest against the source disk, then
//! sets the image's `Imported` condition and the VM's `ready` status.

// Test helpers: a failed step must fail the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use api::{ImportPhase, VirtualMachineImport};
use controller::kinds::image_resource;
use kube::{ResourceExt, api::ApiResource};
use serde_json::{Value, json};

use support::{
    Scene, condition, files_in, harvester, lab,
    lab::{Control, make_vmdk, sha512_file, unique},
    phase, vm_resource,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_disk_vm_is_imported_and_every_object_is_shaped_as_harvester_expects() {
    let scene = Scene::new("e2e-full").await;
    let control = Control::new();
    // Disk 0 carries a tiny BIOS boot program; the others are random data with zero runs.
    let boot_marker = "vm-import e2e: disk 0 booted from the image server";
    let boot_raw = scene.dir.path().join("d0.raw");
    test_support::boot::write_bios_boot_disk(&boot_raw, boot_marker, 6 << 20).unwrap();
    let boot_vmdk = scene.dir.path().join("d0.vmdk");
    lab::run(
        Command::new("qemu-img")
            .args([
                "convert",
                "-q",
                "-f",
                "raw",
                "-O",
                "vmdk",
                "-o",
                "subformat=streamOptimized",
            ])
            .arg(&boot_raw)
            .arg(&boot_vmdk),
    );
    let disks: Vec<(PathBuf, PathBuf)> = std::iter::once((boot_vmdk, boot_raw))
        .chain(
            [(1, 4u64 << 20), (2, 3 << 20)]
                .map(|(i, size)| make_vmdk(scene.dir.path(), &format!("d{i}"), size, 40 + i as u64)),
        )
        .collect();
    let vm_name = unique("Full_VM");
    control
        .create_vm(json!({
            "name": vm_name,
            "cpus": 8, "coresPerSocket": 8, "memoryMB": 4096,
            "firmware": "efi", "secureBoot": true, "vtpm": true,
            "power": "on", "tools": "running",
            "disks": [
                {"bus": "lsilogic", "path": disks[0].0},
                {"bus": "sata", "path": disks[1].0},
                {"bus": "nvme", "path": disks[2].0}
            ],
            "nics": [
                {"type": "e1000", "network": "VM Network", "mac": "00:50:56:aa:cc:01"},
                {"type": "vmxnet3", "network": "DC0_DVPG0", "mac": "00:50:56:aa:cc:02"}
            ]
        }))
        .await;
    let image_dir = scene.image_dir();
    let controller = scene.start_controller();
    // Booted while the controller still serves it (SeaBIOS whatever the VM's firmware: the point is
    // that the served bytes are a disk a PC boots from).
    let serial: Arc<Mutex<Option<String>>> = Arc::default();
    let boot_seen = serial.clone();
    let harvester = scene.harvester(harvester::Options {
        qemu_img_first_into: Some(scene.dir.path().to_owned()),
        before_imported: Some(Arc::new(move |image: &harvester::Fetched| {
            if image.url.contains("-disk-0-") {
                let out = test_support::boot::boot_and_read_serial(
                    &image.url,
                    image.format,
                    boot_marker,
                    Duration::from_secs(120),
                )
                .map_err(|e| e.to_string())?;
                *boot_seen.lock().unwrap() = Some(out);
            }
            Ok(())
        })),
    });
    // Trusted by the SHA-256 of vCenter's certificate instead of a CA.
    let pin = lab::lab().certificate_sha256("vcsim");
    scene
        .vmware_source(
            "vcenter",
            json!({"caCert": null, "certificateFingerprint": pin}),
            json!({}),
        )
        .await;
    scene.nad("vlan1").await;
    scene
        .import(
            "full",
            "vcenter",
            &vm_name,
            json!({"networkMapping": [{"sourceNetwork": "VM Network", "destinationNetwork": "vlan1"}],
                   "gracefulShutdownTimeoutSeconds": 30}),
        )
        .await;

    let started = Instant::now();
    let import = scene
        .wait_finished(&controller, "full", Duration::from_secs(180))
        .await;
    let status = import.status.clone().unwrap();
    assert_eq!(
        status.phase,
        ImportPhase::VirtualMachineRunning,
        "{status:#?}\n{}\nHarvester stand-in: {:?}",
        controller.log_tail(),
        harvester.last_error()
    );
    eprintln!("import to virtualMachineRunning took {:?}", started.elapsed());
    let serial = serial.lock().unwrap().clone();
    assert!(
        serial.as_deref().is_some_and(|s| s.contains(boot_marker)),
        "disk 0 did not boot from its served image: {serial:?}"
    );
    assert_eq!(
        status.imported_virtual_machine_name,
        vm_name.to_ascii_lowercase().replace('_', "-")
    );

    // Every disk: served bytes identical to the source, digest in status, image shaped as upstream.
    assert_eq!(status.disk_import_status.len(), 3);
    let images = scene.dynamic(&image_resource());
    for (disk, (_, raw)) in status.disk_import_status.iter().zip(&disks) {
        let fetched = harvester.fetched(&disk.virtual_machine_image).unwrap();
        assert_eq!(
            fetched.content_sha512,
            sha512_file(raw),
            "the served disk is the source disk"
        );
        assert_eq!(fetched.format, "qcow2", "served as qcow2 by default");
        assert_eq!(
            disk.checksum.as_deref(),
            Some(fetched.sha512.as_str()),
            "{disk:?}"
        );
        assert!(fetched.display_name.starts_with("vm-import-full-"), "{fetched:?}");
        assert!(
            disk.condition_is_true(&api::ConditionType::ImageReady),
            "{disk:?}"
        );
        let image = images.get(&disk.virtual_machine_image).await.unwrap();
        assert!(image.name_any().starts_with("image-"));
        assert_eq!(image.labels()["migration.harvesterhci.io/imported"], "true");
        assert_eq!(
            image.labels()["harvesterhci.io/imageDisplayName"],
            plan::names::label_value(&format!("vm-import-full-{}", disk.name))
        );
        assert_eq!(image.data["spec"]["sourceType"], "download");
    }
    // Tidying comes after the phase is written: owner references go in a later reconcile.
    let tidy_deadline = Instant::now() + Duration::from_secs(30);
    for disk in &status.disk_import_status {
        loop {
            let image = images.get(&disk.virtual_machine_image).await.unwrap();
            if image.owner_references().is_empty() {
                break;
            }
            assert!(
                Instant::now() < tidy_deadline,
                "owner reference is not tidied once the VM runs: {:?}\n{}",
                image.owner_references(),
                controller.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let buses: Vec<_> = status
        .disk_import_status
        .iter()
        .map(|d| d.bus_type.as_str().to_owned())
        .collect();
    assert_eq!(buses, ["scsi", "sata", "virtio"]);

    // The KubeVirt VM, field by field where upstream got it wrong.
    let vm = scene
        .dynamic(&vm_resource())
        .get(&status.imported_virtual_machine_name)
        .await
        .unwrap();
    assert_eq!(vm.labels()["migration.harvesterhci.io/imported"], "true");
    let domain = &vm.data["spec"]["template"]["spec"]["domain"];
    assert_eq!(domain["cpu"], json!({"sockets": 1, "cores": 8, "threads": 1}));
    assert_eq!(domain["memory"]["guest"], "4096Mi");
    assert_eq!(domain["firmware"]["bootloader"]["efi"]["secureBoot"], true);
    assert_eq!(domain["features"]["smm"]["enabled"], true);
    assert!(domain["devices"]["tpm"].is_object());
    let interfaces = domain["devices"]["interfaces"].as_array().unwrap();
    assert_eq!(interfaces.len(), 2, "{interfaces:?}");
    assert_eq!(interfaces[0]["macAddress"], "00:50:56:aa:cc:01");
    assert_eq!(interfaces[0]["model"], "e1000");
    let networks = vm.data["spec"]["template"]["spec"]["networks"]
        .as_array()
        .unwrap();
    assert!(
        networks.iter().any(|n| n["multus"]["networkName"] == "vlan1"),
        "{networks:?}"
    );
    assert!(
        networks.iter().any(|n| n["pod"].is_object()),
        "unmapped NIC goes to the pod network: {networks:?}"
    );
    let volumes = vm.data["spec"]["template"]["spec"]["volumes"].as_array().unwrap();
    let claims: Vec<_> = volumes
        .iter()
        .map(|v| v["persistentVolumeClaim"]["claimName"].as_str().unwrap())
        .collect();
    let expected: Vec<_> = status
        .disk_import_status
        .iter()
        .map(|d| d.virtual_machine_image.as_str())
        .collect();
    assert_eq!(claims, expected);

    // Files are gone once the VM runs, and with them their URLs.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !files_in(&image_dir).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(files_in(&image_dir), BTreeSet::new());
    let url = format!(
        "http://127.0.0.1:{}/{}",
        controller.port, status.disk_import_status[0].name
    );
    assert_eq!(reqwest::get(&url).await.unwrap().status(), 404);

    // The guest was shut down gracefully (tools ran), and the lease completed.
    let leases = control.leases_of(&vm_name).await;
    assert!(leases.iter().any(|l| l["completed"] == true), "{leases:?}");
    let metrics = controller.metrics().await;
    assert!(
        metrics.contains("vm_import_imports{phase=\"virtualMachineRunning\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_credentials_tls_vms_and_mappings_end_with_reasons() {
    let scene = Scene::new("e2e-bad").await;
    let control = Control::new();
    let (vmdk, _) = make_vmdk(scene.dir.path(), "d", 1 << 20, 3);
    let vm_name = unique("bad");
    control
        .create_vm(json!({"name": vm_name, "cpus": 1, "memoryMB": 256, "disks": [{"bus": "lsilogic", "path": vmdk}]}))
        .await;
    let controller = scene.start_controller();
    scene.source("wrong", "not-the-password").await;
    scene.source("right", &lab::lab().vsphere_password).await;
    let served = lab::lab().certificate_sha256("vcsim");
    let other = lab::lab().certificate_sha256("openstack");
    scene.import("unknown-vm", "right", "no-such-vm", json!({})).await;
    scene
        .import(
            "bad-mapping",
            "right",
            &vm_name,
            json!({"networkMapping": [{"sourceNetwork": "VM Network", "destinationNetwork": "missing-nad"}]}),
        )
        .await;

    for (name, secret, spec) in [
        ("no-ca", json!({"caCert": null}), json!({})),
        (
            "pinned",
            json!({"caCert": null, "certificateFingerprint": served}),
            json!({}),
        ),
        (
            "wrong-pin",
            json!({"caCert": null, "certificateFingerprint": other}),
            json!({}),
        ),
        ("pin-and-ca", json!({"certificateFingerprint": served}), json!({})),
        (
            "insecure",
            json!({"caCert": null}),
            json!({"insecureSkipVerify": true}),
        ),
    ] {
        scene.vmware_source(name, secret, spec).await;
    }

    let sources = ApiResource::erase::<api::VmwareSource>(&());
    for (name, reason, text) in [
        ("wrong", "InvalidCredentials", "rejected the credentials"),
        ("no-ca", "TLSVerificationFailed", "'certificateFingerprint'"),
        ("wrong-pin", "TLSVerificationFailed", served.as_str()),
        ("pin-and-ca", "SecretKeyInvalid", "together with 'caCert'"),
    ] {
        let status = scene.source_checked(&controller, &sources, name).await;
        assert_eq!(status["status"], "clusterNotReady", "{name}: {status}");
        let error = condition(&status, "ClusterError").unwrap();
        assert_eq!(error["reason"], reason, "{name}: {status}");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains(text), "{name}: {message}");
        assert!(!message.contains("not-the-password"), "{message}");
    }
    for (name, insecure) in [("pinned", None), ("insecure", Some("True"))] {
        let status = scene.source_checked(&controller, &sources, name).await;
        assert_eq!(status["status"], "clusterReady", "{name}: {status}");
        assert_eq!(
            condition(&status, "InsecureSkipVerify").map(|c| c["status"].as_str().unwrap()),
            insecure,
            "{name}: {status}"
        );
    }
    for (name, concern) in [
        ("unknown-vm", "VirtualMachineNotFound"),
        ("bad-mapping", "NetworkAttachmentDefinitionNotFound"),
    ] {
        let import = scene
            .wait_import(&controller, name, Duration::from_secs(60), |i| {
                phase(i) == ImportPhase::Invalid
            })
            .await;
        let status = import.status.unwrap();
        assert!(
            status.concerns.iter().any(|c| c.id == concern),
            "{name}: {:?}",
            status.concerns
        );
        let failed =
            api::condition::find(&status.import_conditions, &api::ConditionType::ImportFailed).unwrap();
        assert_eq!(failed.reason, "PreflightFailed");
        assert!(!failed.message.is_empty());
    }
    assert!(!controller.log_tail().contains("not-the-password"));
}

/// Downloads of `target` summed over every lease of `vm`.
async fn downloads_of(control: &Control, vm: &str) -> BTreeMap<String, i64> {
    let mut total = BTreeMap::new();
    for lease in control.leases_of(vm).await {
        if let Some(downloads) = lease["downloads"].as_object() {
            for (target, count) in downloads {
                *total.entry(target.clone()).or_insert(0) += count.as_i64().unwrap_or(0);
            }
        }
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_controller_resumes_without_downloading_a_finished_disk_twice() {
    let scene = Scene::new("e2e-kill").await;
    let control = Control::new();
    let small = make_vmdk(scene.dir.path(), "small", 2 << 20, 11);
    let big = make_vmdk(scene.dir.path(), "big", 24 << 20, 12);
    let vm_name = unique("kill");
    control
        .create_vm(json!({"name": vm_name, "cpus": 2, "memoryMB": 1024,
            "disks": [{"bus": "lsilogic", "path": small.0}, {"bus": "lsilogic", "path": big.0}]}))
        .await;
    // Slow enough that the kill lands mid-transfer, small enough to leave CI's disk alone.
    control.throttle(&vm_name, Some(2 << 20)).await;
    let image_dir = scene.image_dir();
    let mut controller = scene.start_controller();
    scene.source("vcenter", &lab::lab().vsphere_password).await;
    scene.import("kill", "vcenter", &vm_name, json!({})).await;

    // Kill once the small disk is committed and the big one is under way.
    let import = scene
        .wait_import(&controller, "kill", Duration::from_secs(120), |i| {
            let disks = i.status.clone().unwrap_or_default().disk_import_status;
            disks.len() == 2
                && disks[0].is_exported()
                && !disks[1].is_exported()
                && disks[1].bytes_done.unwrap_or(0) > 0
        })
        .await;
    // The lease is recorded in status while it is open.
    let open_before_kill: Vec<String> = control
        .leases_of(&vm_name)
        .await
        .iter()
        .filter(|l| !l["completed"].as_bool().unwrap_or(false) && !l["aborted"].as_bool().unwrap_or(false))
        .filter_map(|l| l["id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(open_before_kill.len(), 1, "{open_before_kill:?}");
    let recorded = scene.get_import("kill").await;
    let recorded = recorded
        .status
        .unwrap()
        .source_temporary_objects
        .unwrap_or_default()
        .leases;
    assert_eq!(recorded, open_before_kill, "the open lease is in status");
    controller.kill();
    control.throttle(&vm_name, None).await;
    let small_image = image_dir.join(&import.status.unwrap().disk_import_status[0].name);
    let downloads_before = downloads_of(&control, &vm_name).await;
    assert!(
        files_in(&image_dir).iter().any(|f| f.ends_with(".part")),
        "the big disk was mid-transfer: {:?}",
        files_in(&image_dir)
    );

    let controller = scene.start_controller();
    let restarted = std::time::Instant::now();
    // Within 30 s of the restart the killed process's lease is aborted (the lab's lease timeout is
    // 300 s, an open lease blocks power operations on a real vCenter).
    loop {
        let leases = control.leases_of(&vm_name).await;
        let still_open: Vec<&Value> = leases
            .iter()
            .filter(|l| open_before_kill.iter().any(|id| l["id"] == id.as_str()))
            .filter(|l| {
                !l["aborted"].as_bool().unwrap_or(false) && !l["completed"].as_bool().unwrap_or(false)
            })
            .collect();
        if still_open.is_empty() {
            break;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(30),
            "the killed process's lease is still open 30 s after the restart: {still_open:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let harvester = scene.harvester(harvester::Options::default());
    let import = scene
        .wait_finished(&controller, "kill", Duration::from_secs(180))
        .await;
    let status = import.status.unwrap();
    assert_eq!(status.phase, ImportPhase::VirtualMachineRunning, "{status:#?}");
    support::assert_served(&harvester, &status.disk_import_status[0], &sha512_file(&small.1));
    support::assert_served(&harvester, &status.disk_import_status[1], &sha512_file(&big.1));

    // The small disk was fetched once over all leases; the big one again after the kill.
    let downloads = downloads_of(&control, &vm_name).await;
    eprintln!("downloads before the kill {downloads_before:?}, after {downloads:?}");
    let of_unit = |map: &BTreeMap<String, i64>, unit: &str| {
        map.iter()
            .filter(|(t, _)| t.ends_with(unit))
            .map(|(_, n)| *n)
            .sum::<i64>()
    };
    assert_eq!(
        of_unit(&downloads, "disk-0.vmdk"),
        1,
        "finished disk downloaded again: {downloads:?}"
    );
    assert_eq!(
        of_unit(&downloads, "disk-1.vmdk"),
        of_unit(&downloads_before, "disk-1.vmdk") + 1,
        "{downloads:?}"
    );
    assert!(!small_image.exists(), "files are removed once the VM runs");
    // Every lease was completed or aborted (the killed one times out or is aborted by the server).
    assert!(
        files_in(&image_dir).iter().all(|f| !f.ends_with(".part")),
        "{:?}",
        files_in(&image_dir)
    );
}

/// A powered-off VM with one SATA disk of `size` bytes (see `make_vmdk`) in the simulator; returns
/// the disk (VMDK, raw) and the VM's name.
async fn one_disk_vm(
    scene: &Scene,
    control: &Control,
    name: &str,
    size: u64,
    seed: u64,
) -> ((PathBuf, PathBuf), String) {
    let disk = make_vmdk(scene.dir.path(), name, size, seed);
    let vm_name = unique(name);
    control
        .create_vm(json!({"name": vm_name, "cpus": 1, "memoryMB": 512,
            "disks": [{"bus": "sata", "path": disk.0}]}))
        .await;
    (disk, vm_name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_served_image_altered_after_its_checksum_was_taken_fails_in_harvester_never_becomes_a_disk() {
    let scene = Scene::new("e2e-altered").await;
    let control = Control::new();
    let (disk, vm_name) = one_disk_vm(&scene, &control, "altered", 4 << 20, 47).await;
    // No Harvester yet: the image is exported, served and waits for its download.
    let controller = scene.start_controller();
    scene.source("vcenter", &lab::lab().vsphere_password).await;
    scene.import("altered", "vcenter", &vm_name, json!({})).await;
    let exported = scene
        .wait_import(&controller, "altered", Duration::from_secs(120), |i| {
            i.status.as_ref().is_some_and(|s| {
                s.disk_import_status.len() == 1
                    && s.disk_import_status[0].is_exported()
                    && !s.disk_import_status[0].virtual_machine_image.is_empty()
            })
        })
        .await;
    let status = exported.status.unwrap();
    let checksum = status.disk_import_status[0].checksum.clone().unwrap();
    let served = scene.image_dir().join(&status.disk_import_status[0].name);
    assert_eq!(
        checksum,
        harvester::sha512_of(&served).unwrap(),
        "the checksum is the SHA-512 of the file as served"
    );
    assert_eq!(
        support::disk_sha512(&served),
        sha512_file(&disk.1),
        "which holds the disk"
    );
    let image = scene
        .dynamic(&image_resource())
        .get(&status.disk_import_status[0].virtual_machine_image)
        .await
        .unwrap();
    assert_eq!(image.data["spec"]["checksum"], json!(checksum), "{image:?}");

    // One byte of the served file changes between the export and Harvester's download.
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&served)
            .unwrap();
        let middle = file.metadata().unwrap().len() / 2;
        let mut byte = [0u8];
        file.read_at(&mut byte, middle).unwrap();
        file.write_at(&[byte[0] ^ 0xA5], middle).unwrap();
    }
    let harvester = scene.harvester(harvester::Options::default());
    let import = scene
        .wait_finished(&controller, "altered", Duration::from_secs(180))
        .await;
    let status = import.status.clone().unwrap();
    assert_eq!(status.phase, ImportPhase::MigrationFailed, "{status:#?}");
    let refused = harvester.refused();
    assert!(
        !refused.is_empty() && refused.values().all(|m| m.contains(harvester::CHECKSUM_MISMATCH)),
        "every download of the altered file failed its checksum: {refused:?}"
    );
    assert!(
        harvester
            .fetched(&status.disk_import_status[0].virtual_machine_image)
            .is_none(),
        "no image was imported"
    );
    assert!(
        support::import_failed(&import).message.contains("image"),
        "{status:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn served_format_raw_keeps_upstreams_raw_images_with_their_checksum() {
    let scene = Scene::new("e2e-raw").await;
    let control = Control::new();
    let (disk, vm_name) = one_disk_vm(&scene, &control, "raw", 4 << 20, 53).await;
    let controller = scene.start_controller_with_env(&[("VM_IMPORT_SERVED_FORMAT", "raw")]);
    let harvester = scene.harvester(harvester::Options::default());
    scene.source("vcenter", &lab::lab().vsphere_password).await;
    scene.import("raw", "vcenter", &vm_name, json!({})).await;
    let import = scene
        .wait_finished(&controller, "raw", Duration::from_secs(120))
        .await;
    let status = import.status.unwrap();
    assert_eq!(status.phase, ImportPhase::VirtualMachineRunning, "{status:#?}");
    let disk0 = &status.disk_import_status[0];
    let fetched = harvester.fetched(&disk0.virtual_machine_image).unwrap();
    assert_eq!((fetched.format, fetched.size), ("raw", 4 << 20), "{fetched:?}");
    support::assert_served(&harvester, disk0, &sha512_file(&disk.1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_import_reads_its_source_no_faster_than_its_cap_and_status_shows_the_caps() {
    let scene = Scene::new("e2e-cap").await;
    let control = Control::new();
    // Two thirds random: the export stream is about 8 MiB, 16 s at the cap.
    let (disk, vm_name) = one_disk_vm(&scene, &control, "cap", 12 << 20, 61).await;
    let stream_bytes = std::fs::metadata(&disk.0).unwrap().len();
    let cap: u64 = 512 << 10;
    let controller = scene.start_controller_with_env(&[("VM_IMPORT_CONVERSION_THREADS", "1")]);
    scene.source("vcenter", &lab::lab().vsphere_password).await;
    scene
        .import("cap", "vcenter", &vm_name, json!({"maxBytesPerSecond": cap}))
        .await;
    let started = scene
        .wait_import(&controller, "cap", Duration::from_secs(60), |i| {
            i.status.as_ref().is_some_and(|s| s.transfer_limits.is_some())
        })
        .await;
    let clock = Instant::now();
    let limits = started.status.unwrap().transfer_limits.unwrap();
    assert_eq!(limits.import_bytes_per_second, Some(cap), "{limits:?}");
    assert_eq!(limits.source_bytes_per_second, None, "{limits:?}");
    assert_eq!(limits.conversion_threads, 1, "{limits:?}");
    scene
        .wait_import(&controller, "cap", Duration::from_secs(120), |i| {
            i.status.as_ref().is_some_and(|s| {
                !s.disk_import_status.is_empty() && s.disk_import_status.iter().all(|d| d.is_exported())
            })
        })
        .await;
    let rate = stream_bytes as f64 / clock.elapsed().as_secs_f64();
    eprintln!("{stream_bytes} bytes at {rate:.0} B/s under a cap of {cap} B/s");
    assert!(
        rate <= cap as f64 * 1.1,
        "the export read {rate:.0} B/s, more than 10% over its cap of {cap}"
    );
    assert!(rate >= cap as f64 * 0.5, "a cap, not a stall: {rate:.0} B/s");
}

/// Byte offset of the last grain record of the streamOptimized file at `path`: a cut there falls
/// exactly between two records.
fn last_grain_offset(path: &std::path::Path) -> u64 {
    let bytes = std::fs::read(path).unwrap();
    let mut decoder = vmdk::StreamDecoder::new();
    decoder.feed(&bytes);
    let mut last = None;
    while let Ok(Some(event)) = decoder.next_event() {
        if let vmdk::Event::Grain(grain) = event {
            last = Some(grain.offset);
        }
    }
    last.expect("the stream has grains")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lease_body_closing_cleanly_at_a_grain_boundary_is_retried_never_committed() {
    let scene = Scene::new("e2e-cut").await;
    let control = Control::new();
    let disk = make_vmdk(scene.dir.path(), "cut", 4 << 20, 31);
    let boundary = last_grain_offset(&disk.0);
    let vm_name = unique("cut");
    control
        .create_vm(json!({"name": vm_name, "cpus": 1, "memoryMB": 512,
            "disks": [{"bus": "sata", "path": disk.0}]}))
        .await;
    // The first body ends cleanly right before the last grain: the import must retry.
    control.add_clean_cut(boundary, 1, &vm_name).await;
    let controller = scene.start_controller();
    let harvester = scene.harvester(harvester::Options::default());
    scene.source("vcenter", &lab::lab().vsphere_password).await;
    scene.import("cut", "vcenter", &vm_name, json!({})).await;
    let import = scene
        .wait_finished(&controller, "cut", Duration::from_secs(120))
        .await;
    let status = import.status.unwrap();
    assert_eq!(status.phase, ImportPhase::VirtualMachineRunning, "{status:#?}");
    // The image is the whole disk.
    support::assert_served(&harvester, &status.disk_import_status[0], &sha512_file(&disk.1));
    let cuts: i64 = control
        .leases_of(&vm_name)
        .await
        .iter()
        .map(|l| l["cuts"].as_i64().unwrap_or(0))
        .sum();
    assert_eq!(cuts, 1);
    assert!(
        controller
            .log_tail()
            .contains(&format!("stream ends early at offset {boundary}")),
        "the retry names the cut"
    );

    // Every attempt cut the same way: the export fails, nothing is committed or served.
    let vm_name = unique("cut");
    control
        .create_vm(json!({"name": vm_name, "cpus": 1, "memoryMB": 512,
            "disks": [{"bus": "sata", "path": disk.0}]}))
        .await;
    control.add_clean_cut(boundary, 10, &vm_name).await;
    scene.import("cut2", "vcenter", &vm_name, json!({})).await;
    let import = scene
        .wait_finished(&controller, "cut2", Duration::from_secs(120))
        .await;
    let status = import.status.clone().unwrap();
    assert_eq!(status.phase, ImportPhase::MigrationFailed, "{status:#?}");
    assert!(
        support::import_failed(&import)
            .message
            .contains("stream ends early"),
        "{status:#?}"
    );
    assert!(
        status.disk_import_status.iter().all(|d| d.checksum.is_none()),
        "{status:#?}"
    );
    let image_dir = scene.image_dir();
    assert!(
        files_in(&image_dir).iter().all(|f| !f.contains("cut2")),
        "{:?}",
        files_in(&image_dir)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleting_an_import_mid_transfer_aborts_the_lease_and_removes_files() {
    let scene = Scene::new("e2e-del").await;
    let control = Control::new();
    let big = make_vmdk(scene.dir.path(), "big", 24 << 20, 21);
    let vm_name = unique("del");
    control
        .create_vm(json!({"name": vm_name, "cpus": 1, "memoryMB": 512,
            "disks": [{"bus": "sata", "path": big.0}]}))
        .await;
    control.throttle(&vm_name, Some(1 << 20)).await;
    let image_dir = scene.image_dir();
    let controller = scene.start_controller();
    scene.source("vcenter", &lab::lab().vsphere_password).await;
    scene.import("del", "vcenter", &vm_name, json!({})).await;
    scene
        .wait_import(&controller, "del", Duration::from_secs(120), |i| {
            i.status
                .clone()
                .unwrap_or_default()
                .disk_import_status
                .first()
                .is_some_and(|d| d.bytes_done.unwrap_or(0) > 0)
        })
        .await;
    scene
        .api::<VirtualMachineImport>()
        .delete("del", &Default::default())
        .await
        .unwrap();
    let start = Instant::now();
    while scene
        .api::<VirtualMachineImport>()
        .get_opt("del")
        .await
        .unwrap()
        .is_some()
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{}",
            controller.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let start = Instant::now();
    loop {
        let leases = control.leases_of(&vm_name).await;
        if leases.iter().any(|l| l["aborted"] == true) {
            assert!(leases.iter().all(|l| l["completed"] != true), "{leases:?}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "lease not aborted: {leases:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let start = Instant::now();
    while !files_in(&image_dir).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{:?}",
            files_in(&image_dir)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_imports_at_once_all_complete() {
    let scene = Scene::new("e2e-twenty").await;
    let control = Control::new();
    let (vmdk, raw) = make_vmdk(scene.dir.path(), "shared", 2 << 20, 31);
    let digest = sha512_file(&raw);
    let mut names = Vec::new();
    for i in 0..20 {
        let vm_name = unique(&format!("many{i}"));
        control
            .create_vm(json!({"name": vm_name, "cpus": 1, "memoryMB": 256,
                "disks": [{"bus": "lsilogic", "path": vmdk}]}))
            .await;
        names.push(vm_name);
    }
    let controller = scene.start_controller();
    let harvester = scene.harvester(harvester::Options::default());
    scene.source("vcenter", &lab::lab().vsphere_password).await;
    let started = Instant::now();
    for (i, vm_name) in names.iter().enumerate() {
        scene
            .import(&format!("many-{i}"), "vcenter", vm_name, json!({}))
            .await;
    }
    for i in 0..names.len() {
        let import = scene
            .wait_finished(&controller, &format!("many-{i}"), Duration::from_secs(300))
            .await;
        let status = import.status.unwrap();
        assert_eq!(
            status.phase,
            ImportPhase::VirtualMachineRunning,
            "many-{i}: {status:#?}"
        );
        support::assert_served(&harvester, &status.disk_import_status[0], &digest);
    }
    eprintln!("20 imports to virtualMachineRunning in {:?}", started.elapsed());
    let pid = controller.child.id();
    if let Ok(statm) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
        let hwm = statm
            .lines()
            .find(|l| l.starts_with("VmHWM"))
            .unwrap_or_default()
            .to_owned();
        eprintln!("controller peak RSS with 20 imports: {hwm}");
    }
}
