//! `vm-import convert` / `inspect` on OVAs assembled by GNU tar from qemu-img streamOptimized
//! disks (one of them gzip-compressed, as `ovf:compression="gzip"` allows) and a VMware OVF 1.0
//! descriptor with EFI, secure boot, vTPM, 2 disks and 2 NICs (the ova crate's fixture). Checks
//! the converted bytes, vm.json, the manifest check from a file and from a pipe.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

#[path = "../../ova/tests/support/fixtures.rs"]
#[allow(dead_code, unreachable_pub)]
mod fixtures;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vm-import"))
}

fn tool(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!(
            "cannot run {:?}: {e} (needs qemu-utils, tar, gzip, coreutils)",
            cmd.get_program()
        )
    });
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn digest(tool_name: &str, path: &Path) -> String {
    String::from_utf8(tool(Command::new(tool_name).arg(path)))
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_owned()
}

struct Ova {
    dir: tempfile::TempDir,
    ova: PathBuf,
    raw1: Vec<u8>,
    raw2: Vec<u8>,
}

/// Builds `web-01.ova`; `manifest` false leaves the `.mf` out, `corrupt_iso` changes a byte of
/// the ISO after the manifest was computed.
fn build(manifest: bool, corrupt_iso: bool) -> Ova {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut raw1 = vec![0u8; 3 << 20];
    raw1[..100_000]
        .iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b = (i * 13 % 256) as u8);
    raw1[(2 << 20)..(2 << 20) + 5000].fill(0x5a);
    let mut raw2 = vec![0u8; (1 << 20) + 512];
    let n = raw2.len();
    raw2[n - 512..].fill(0xee);
    fs::write(d.join("d1.raw"), &raw1).unwrap();
    fs::write(d.join("d2.raw"), &raw2).unwrap();
    for (raw, vmdk) in [("d1.raw", "web-01-disk1.vmdk"), ("d2.raw", "web-01-disk2.vmdk")] {
        tool(
            Command::new("qemu-img")
                .args([
                    "convert",
                    "-f",
                    "raw",
                    "-O",
                    "vmdk",
                    "-o",
                    "subformat=streamOptimized",
                ])
                .arg(d.join(raw))
                .arg(d.join(vmdk)),
        );
    }
    tool(Command::new("gzip").arg("-n").arg(d.join("web-01-disk2.vmdk")));
    fs::write(d.join("tools.iso"), vec![7u8; 4096]).unwrap();
    let size = |name: &str| fs::metadata(d.join(name)).unwrap().len().to_string();
    let ovf = fixtures::vmware_ovf_with_capacities(raw1.len() as u64, raw2.len() as u64)
        .replace("{DISK1_SIZE}", &size("web-01-disk1.vmdk"))
        .replace("{DISK2_SIZE}", &size("web-01-disk2.vmdk.gz"))
        .replace("{ISO_SIZE}", &size("tools.iso"));
    fs::write(d.join("web-01.ovf"), ovf).unwrap();
    let mut members = vec!["web-01.ovf"];
    if manifest {
        let mf = format!(
            "SHA256(web-01.ovf)= {}\nSHA256(web-01-disk1.vmdk)= {}\nSHA1(web-01-disk2.vmdk.gz)= {}\nSHA512(tools.iso)= {}\n",
            digest("sha256sum", &d.join("web-01.ovf")),
            digest("sha256sum", &d.join("web-01-disk1.vmdk")),
            digest("sha1sum", &d.join("web-01-disk2.vmdk.gz")),
            digest("sha512sum", &d.join("tools.iso")),
        );
        fs::write(d.join("web-01.mf"), mf).unwrap();
        members.push("web-01.mf");
    }
    if corrupt_iso {
        fs::write(d.join("tools.iso"), vec![8u8; 4096]).unwrap();
    }
    members.extend(["web-01-disk1.vmdk", "web-01-disk2.vmdk.gz", "tools.iso"]);
    let ova = d.join("web-01.ova");
    tool(
        Command::new("tar")
            .args(["--format=ustar", "-cf"])
            .arg(&ova)
            .arg("-C")
            .arg(d)
            .args(&members),
    );
    Ova { dir, ova, raw1, raw2 }
}

fn check_output(out: &Path, ova: &Ova) {
    assert_eq!(fs::read(out.join("disk-0.img")).unwrap(), ova.raw1);
    assert_eq!(fs::read(out.join("disk-1.img")).unwrap(), ova.raw2);
    let vm: serde_json::Value = serde_json::from_slice(&fs::read(out.join("vm.json")).unwrap()).unwrap();
    assert_eq!(vm["name"], "web-01");
    assert_eq!(vm["cpus"], 4);
    assert_eq!(vm["memory_mib"], 8192);
    assert_eq!(vm["secure_boot"], true);
    assert_eq!(vm["tpm"], true);
    assert_eq!(vm["nics"].as_array().unwrap().len(), 2);
}

#[test]
fn converts_ova_file_into_directory() {
    let ova = build(true, false);
    let out = ova.dir.path().join("out");
    let report = ova.dir.path().join("report.json");
    let result = bin()
        .args(["convert", "--progress", "none", "--report"])
        .arg(&report)
        .arg(&ova.ova)
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    check_output(&out, &ova);
    let report: serde_json::Value = serde_json::from_slice(&fs::read(&report).unwrap()).unwrap();
    assert_eq!(report["disks"].as_array().unwrap().len(), 2);
    assert_eq!(report["disks"][1]["virtual_size"], (1 << 20) + 512);
}

#[test]
fn converts_ova_from_a_pipe_to_qcow2() {
    let ova = build(true, false);
    let out = ova.dir.path().join("out");
    let result = bin()
        .args(["convert", "-O", "qcow2", "--progress", "none", "-"])
        .arg(&out)
        .stdin(Stdio::from(fs::File::open(&ova.ova).unwrap()))
        .output()
        .unwrap();
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    for (i, raw) in [&ova.raw1, &ova.raw2].into_iter().enumerate() {
        let raw_path = ova.dir.path().join(format!("expect-{i}.raw"));
        fs::write(&raw_path, raw).unwrap();
        let q = out.join(format!("disk-{i}.qcow2"));
        tool(Command::new("qemu-img").args(["check", "-q"]).arg(&q));
        tool(
            Command::new("qemu-img")
                .args(["compare", "-q", "-f", "raw", "-F", "qcow2"])
                .arg(&raw_path)
                .arg(&q),
        );
    }
}

#[test]
fn manifest_mismatch_exits_1_naming_the_member() {
    let ova = build(true, true);
    let result = bin()
        .args(["convert", "--progress", "none"])
        .arg(&ova.ova)
        .arg(ova.dir.path().join("out"))
        .output()
        .unwrap();
    assert_eq!(result.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(
        stderr.contains("tools.iso") && stderr.contains("does not match the manifest"),
        "{stderr}"
    );
}

#[test]
fn missing_manifest_warns_unless_required() {
    let ova = build(false, false);
    let out = ova.dir.path().join("out");
    let lenient = bin()
        .args(["convert", "--progress", "none"])
        .arg(&ova.ova)
        .arg(&out)
        .output()
        .unwrap();
    assert!(lenient.status.success());
    assert!(String::from_utf8_lossy(&lenient.stderr).contains("no manifest"));
    check_output(&out, &ova);
    let strict = bin()
        .args(["convert", "--require-manifest", "--progress", "none"])
        .arg(&ova.ova)
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(strict.status.code(), Some(1));
}

#[test]
fn inspect_ova_reports_vm_disks_and_manifest() {
    let ova = build(true, false);
    let result = bin().arg("inspect").arg(&ova.ova).output().unwrap();
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&result.stdout).unwrap();
    assert_eq!(json["vm"]["name"], "web-01");
    assert_eq!(json["vm"]["firmware"], "efi");
    assert_eq!(json["manifest"]["status"], "verified");
    assert_eq!(json["manifest"]["files"].as_array().unwrap().len(), 4);
    assert_eq!(json["disks"][0]["image"]["virtual_size"], 3 << 20);
    assert_eq!(json["disks"][1]["image"]["subformat"], "streamOptimized");
}

#[test]
fn manifest_after_the_disks_warns_or_fails_when_required() {
    let ova = build(true, false);
    let d = ova.dir.path();
    let late = d.join("late.ova");
    tool(
        Command::new("tar")
            .args(["--format=ustar", "-cf"])
            .arg(&late)
            .arg("-C")
            .arg(d)
            .args([
                "web-01.ovf",
                "web-01-disk1.vmdk",
                "web-01-disk2.vmdk.gz",
                "tools.iso",
                "web-01.mf",
            ]),
    );
    let lenient = bin()
        .args(["convert", "--progress", "none"])
        .arg(&late)
        .arg(d.join("out"))
        .output()
        .unwrap();
    assert!(
        lenient.status.success(),
        "{}",
        String::from_utf8_lossy(&lenient.stderr)
    );
    let stderr = String::from_utf8_lossy(&lenient.stderr);
    assert!(
        stderr.contains("manifest comes after") && stderr.contains("web-01-disk1.vmdk"),
        "{stderr}"
    );
    let strict = bin()
        .args(["convert", "--require-manifest", "--progress", "none"])
        .arg(&late)
        .arg(d.join("out2"))
        .output()
        .unwrap();
    assert_eq!(strict.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&strict.stderr).contains("precedes the manifest"));
}
