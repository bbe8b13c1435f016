//! The Rust half of `scripts/demo`, which needs a lab (`KUBECONFIG` from its env file):
//!
//! * `lab-demo boot-disk PATH MARKER SIZE_MIB` writes a raw disk that boots on a PC BIOS and prints
//!   MARKER on the serial console, to be put into the simulated vCenter as the VM's first disk.
//! * `lab-demo play NAMESPACE IMPORT MARKER` plays Harvester and KubeVirt for the namespace (the
//!   lab has neither), prints the import's progress as it changes, boots the first disk's image in
//!   QEMU straight from the controller's image server before marking it imported, and once the import
//!   ends summarises the created objects. Exits non-zero unless the import reached
//!   `virtualMachineRunning` and the disk booted.

// A demo driver: it reports on stdout by design.
#![allow(clippy::print_stdout)]

#[path = "../tests/support/harvester.rs"]
mod harvester;

use std::{
    error::Error,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use api::{ImportPhase, VirtualMachineImport};
use controller::kinds::{image_resource, virtual_machine_resource};
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::{
    Api, ResourceExt,
    api::{DynamicObject, ListParams},
};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

const USAGE: &str = "usage: lab-demo boot-disk PATH MARKER SIZE_MIB | lab-demo play NAMESPACE IMPORT MARKER";
const IMPORT_TIMEOUT: Duration = Duration::from_secs(600);
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["boot-disk", path, marker, mib] => {
            let mib: u64 = mib.parse().map_err(|e| format!("SIZE_MIB {mib:?}: {e}"))?;
            test_support::boot::write_bios_boot_disk(&PathBuf::from(path), marker, mib << 20)?;
            Ok(())
        }
        ["play", namespace, import, marker] => play(namespace, import, marker).await,
        _ => Err(USAGE.into()),
    }
}

async fn play(namespace: &str, import_name: &str, marker: &str) -> Result<()> {
    let client = kube::Client::try_default().await?;
    let booted: Arc<Mutex<Option<String>>> = Arc::default();
    let boot_result = booted.clone();
    let marker = marker.to_owned();
    let options = harvester::Options {
        qemu_img_first_into: None,
        before_imported: Some(Arc::new(move |image: &harvester::Fetched| {
            // The controller names disk images `<import>-<namespace>-disk-<n>-<token>.img`.
            if !image.url.contains("-disk-0-") {
                return Ok(());
            }
            println!(
                "  harvester: booting {} in QEMU from {}",
                image.display_name, image.url
            );
            let started = Instant::now();
            let serial =
                test_support::boot::boot_and_read_serial(&image.url, image.format, &marker, BOOT_TIMEOUT)
                    .map_err(|e| format!("boot {}: {e}", image.url))?;
            let line = serial
                .lines()
                .find(|l| l.contains(marker.as_str()))
                .unwrap_or_default()
                .to_owned();
            println!(
                "  harvester: serial console after {:.1} s: {line:?}",
                started.elapsed().as_secs_f64()
            );
            *booted.lock().unwrap_or_else(|p| p.into_inner()) = Some(line);
            Ok(())
        })),
    };
    let stand_in = harvester::StandIn::start(client.clone(), namespace, options);
    let imports = Api::<VirtualMachineImport>::namespaced(client.clone(), namespace);

    let started = Instant::now();
    let mut last_line = String::new();
    let import = loop {
        let import = imports.get(import_name).await?;
        let status = import.status.clone().unwrap_or_default();
        let line = progress_line(&status);
        if line != last_line {
            println!("[{:5.1} s] {line}", started.elapsed().as_secs_f64());
            last_line = line;
        }
        if matches!(
            status.phase,
            ImportPhase::VirtualMachineRunning | ImportPhase::MigrationFailed | ImportPhase::Invalid
        ) {
            break import;
        }
        if started.elapsed() > IMPORT_TIMEOUT {
            return Err(format!(
                "import {import_name} still {:?} after {} s; Harvester stand-in: {:?}",
                status.phase,
                IMPORT_TIMEOUT.as_secs(),
                stand_in.last_error()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let took = started.elapsed();
    summarise(&client, namespace, &import, &stand_in).await?;
    let status = import.status.unwrap_or_default();
    if status.phase != ImportPhase::VirtualMachineRunning {
        return Err(format!("import ended {:?}: {:#?}", status.phase, status.import_conditions).into());
    }
    let booted = boot_result.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if booted.is_none() {
        return Err("the first disk was never booted".into());
    }
    println!(
        "\nimport {import_name}: virtualMachineRunning in {:.1} s, first disk booted",
        took.as_secs_f64()
    );
    Ok(())
}

fn progress_line(status: &api::VirtualMachineImportStatus) -> String {
    let phase = serde_json::to_value(&status.phase)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| "(new)".to_owned());
    let disks: Vec<String> = status
        .disk_import_status
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let done = d.bytes_done.unwrap_or(0);
            let total = d.bytes_total.unwrap_or(0).max(1);
            let state = if d.checksum.is_some() {
                "converted".to_owned()
            } else {
                format!(
                    "{:3}% {:.1} MiB/s",
                    done.saturating_mul(100) / total,
                    d.bytes_per_second.unwrap_or(0) as f64 / (1 << 20) as f64
                )
            };
            format!("disk {i}: {state}")
        })
        .collect();
    if disks.is_empty() {
        phase
    } else {
        format!("{phase:<26} {}", disks.join(" | "))
    }
}

async fn summarise(
    client: &kube::Client,
    namespace: &str,
    import: &VirtualMachineImport,
    stand_in: &harvester::StandIn,
) -> Result<()> {
    let status = import.status.clone().unwrap_or_default();
    println!("\nobjects in namespace {namespace}:");
    println!(
        "  VirtualMachineImport {}: {} ({} concerns)",
        import.name_any(),
        serde_json::to_value(&status.phase)?,
        status.concerns.len()
    );
    for concern in &status.concerns {
        println!(
            "    concern {:?} {}: {}",
            concern.severity, concern.id, concern.message
        );
    }
    let refused = stand_in.refused();
    for disk in &status.disk_import_status {
        let fetched = stand_in.fetched(&disk.virtual_machine_image);
        let verified = match (&fetched, &disk.checksum, refused.get(&disk.virtual_machine_image)) {
            (_, _, Some(message)) => message.as_str(),
            (Some(f), Some(s), None) if &f.sha512 == s => "SHA-512 (spec.checksum) verified by the download",
            (Some(_), _, None) => "SHA-512 MISMATCH",
            (None, _, None) => "not downloaded",
        };
        println!(
            "  VirtualMachineImage {} for {} ({} bytes, {} bus): {verified}",
            disk.virtual_machine_image,
            disk.name,
            disk.disk_size,
            serde_json::to_value(&disk.bus_type)?
        );
    }
    let images = Api::<DynamicObject>::namespaced_with(client.clone(), namespace, &image_resource());
    for image in images.list(&ListParams::default()).await?.items {
        println!(
            "    {} url {}",
            image.name_any(),
            image.data["spec"]["url"].as_str().unwrap_or("?")
        );
    }
    let pvcs = Api::<PersistentVolumeClaim>::namespaced(client.clone(), namespace);
    for pvc in pvcs.list(&ListParams::default()).await?.items {
        let spec = pvc.spec.clone().unwrap_or_default();
        println!(
            "  PersistentVolumeClaim {}: {} from {}",
            pvc.name_any(),
            spec.resources
                .and_then(|r| r.requests)
                .and_then(|r| r.get("storage").map(|q| q.0.clone()))
                .unwrap_or_default(),
            spec.storage_class_name.unwrap_or_default()
        );
    }
    let vms = Api::<DynamicObject>::namespaced_with(client.clone(), namespace, &virtual_machine_resource());
    for vm in vms.list(&ListParams::default()).await?.items {
        let domain = &vm.data["spec"]["template"]["spec"]["domain"];
        let cpu = &domain["cpu"];
        let list = |v: &serde_json::Value, describe: &dyn Fn(&serde_json::Value) -> String| {
            v.as_array()
                .map(|a| a.iter().map(describe).collect::<Vec<_>>().join(", "))
                .unwrap_or_default()
        };
        let disks = list(&domain["devices"]["disks"], &|d| {
            format!(
                "{} on {}",
                d["name"].as_str().unwrap_or("?"),
                d["disk"]["bus"].as_str().unwrap_or("?")
            )
        });
        let interfaces = list(&domain["devices"]["interfaces"], &|n| {
            format!(
                "{} {} {}",
                n["name"].as_str().unwrap_or("?"),
                n["model"].as_str().unwrap_or("?"),
                n["macAddress"].as_str().unwrap_or("?")
            )
        });
        println!(
            "  VirtualMachine {}: {} sockets x {} cores, memory {}, firmware {}\n    disks: {disks}\n    interfaces: {interfaces}",
            vm.name_any(),
            cpu["sockets"],
            cpu["cores"],
            domain["memory"]["guest"].as_str().unwrap_or("?"),
            if domain["firmware"]["bootloader"]["efi"].is_object() {
                "EFI"
            } else {
                "BIOS"
            },
        );
    }
    Ok(())
}
