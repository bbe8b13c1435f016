//! `vm-import convert - DIR` with an OVA on stdin whose disks are the three layouts a forward-only
//! reader must handle besides streamOptimized: a monolithicSparse VMDK, a qcow2 (compressed
//! clusters) and a raw disk, each made by `qemu-img` from a raw original with data and holes; the
//! converted disks must equal the originals byte for byte. A qcow2 member whose layout needs random
//! access fails from stdin naming the member and the offset, and says to convert the OVA from a
//! file; from the file it converts (the member is re-read with random access).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vm-import"))
}

fn tool(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {:?}: {e} (needs qemu-utils, tar)", cmd.get_program()));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An OVF 1.0 envelope for `name` with one disk per `(file, capacity)` on a SCSI controller.
fn ovf(name: &str, disks: &[(&str, u64)]) -> String {
    let mut refs = String::new();
    let mut section = String::new();
    let mut items = String::new();
    for (i, (file, capacity)) in disks.iter().enumerate() {
        let n = i + 1;
        refs += &format!(r#"<File ovf:href="{file}" ovf:id="file{n}"/>"#);
        section += &format!(
            r#"<Disk ovf:capacity="{capacity}" ovf:capacityAllocationUnits="byte" ovf:diskId="vmdisk{n}" ovf:fileRef="file{n}"/>"#
        );
        items += &format!(
            r#"<Item><rasd:AddressOnParent>{i}</rasd:AddressOnParent><rasd:ElementName>Hard disk {n}</rasd:ElementName><rasd:HostResource>ovf:/disk/vmdisk{n}</rasd:HostResource><rasd:InstanceID>{}</rasd:InstanceID><rasd:Parent>3</rasd:Parent><rasd:ResourceType>17</rasd:ResourceType></Item>"#,
            10 + n
        );
    }
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData">
  <References>{refs}</References>
  <DiskSection><Info>Disks</Info>{section}</DiskSection>
  <VirtualSystem ovf:id="{name}">
    <Info>A virtual machine</Info>
    <Name>{name}</Name>
    <VirtualHardwareSection>
      <Info>Virtual hardware</Info>
      <System><vssd:ElementName>Virtual Hardware Family</vssd:ElementName><vssd:InstanceID>0</vssd:InstanceID><vssd:VirtualSystemType>vmx-19</vssd:VirtualSystemType></System>
      <Item><rasd:ElementName>2 virtual CPU(s)</rasd:ElementName><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>2</rasd:VirtualQuantity></Item>
      <Item><rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits><rasd:ElementName>1024MB of memory</rasd:ElementName><rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>1024</rasd:VirtualQuantity></Item>
      <Item><rasd:Address>0</rasd:Address><rasd:ElementName>SCSI controller 0</rasd:ElementName><rasd:InstanceID>3</rasd:InstanceID><rasd:ResourceSubType>lsilogic</rasd:ResourceSubType><rasd:ResourceType>6</rasd:ResourceType></Item>
      {items}
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"#
    )
}

/// A raw disk of `size` bytes: pseudo-random data, a text-like run, holes, data in the last sector.
fn raw_disk(size: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; size];
    let mut x = seed | 1;
    for b in &mut data[4096..200_000] {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    for (i, b) in data[size / 2..size / 2 + 300_000].iter_mut().enumerate() {
        *b = b'a' + (i % 26) as u8;
    }
    data[size - 512..].fill(0xee);
    data
}

/// Writes the raws, converts them with `qemu-img` (`(raw, member, qemu-img args)`; no args means
/// the raw itself is the member) and tars an OVA `vm.ova` in `dir`.
fn build(dir: &Path, disks: &[(&[u8], &str, &[&str])]) -> std::path::PathBuf {
    let mut members = vec!["vm.ovf".to_owned()];
    let mut entries = Vec::new();
    for (i, (raw, member, args)) in disks.iter().enumerate() {
        let raw_path = dir.join(format!("src-{i}.raw"));
        fs::write(&raw_path, raw).unwrap();
        let member_path = dir.join(member);
        if args.is_empty() {
            fs::copy(&raw_path, &member_path).unwrap();
        } else {
            tool(
                Command::new("qemu-img")
                    .args(["convert", "-f", "raw"])
                    .args(*args)
                    .arg(&raw_path)
                    .arg(&member_path),
            );
        }
        members.push((*member).to_owned());
        entries.push((*member, raw.len() as u64));
    }
    fs::write(dir.join("vm.ovf"), ovf("mixed", &entries)).unwrap();
    let ova = dir.join("vm.ova");
    tool(
        Command::new("tar")
            .args(["--format=ustar", "-cf"])
            .arg(&ova)
            .arg("-C")
            .arg(dir)
            .args(&members),
    );
    ova
}

#[test]
fn ova_with_sparse_vmdk_qcow2_and_raw_members_converts_from_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (a, b, c) = (raw_disk(6 << 20, 1), raw_disk(5 << 20, 2), raw_disk(3 << 20, 3));
    let ova = build(
        d,
        &[
            (
                &a,
                "disk-a.vmdk",
                &["-O", "vmdk", "-o", "subformat=monolithicSparse"],
            ),
            (&b, "disk-b.qcow2", &["-O", "qcow2", "-c"]),
            (&c, "disk-c.img", &[]),
        ],
    );
    let out = d.join("out");
    let report = d.join("report.json");
    let result = bin()
        .args(["convert", "--progress", "none", "--report"])
        .arg(&report)
        .arg("-")
        .arg(&out)
        .stdin(Stdio::from(fs::File::open(&ova).unwrap()))
        .output()
        .unwrap();
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    for (i, raw) in [&a, &b, &c].into_iter().enumerate() {
        let got = fs::read(out.join(format!("disk-{i}.img"))).unwrap();
        assert!(got == *raw, "disk {i} differs from its original");
    }
    let report: serde_json::Value = serde_json::from_slice(&fs::read(&report).unwrap()).unwrap();
    let formats: Vec<_> = report["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["format"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(formats, ["vmdk", "qcow2", "raw"], "{report}");
}

#[test]
fn qcow2_member_needing_random_access_fails_naming_member_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // qemu-io writes the end of the disk first: 56 MiB of it, more than the decoder holds.
    let image = d.join("rev.qcow2");
    tool(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&image)
            .arg("64M"),
    );
    tool(
        Command::new("qemu-io")
            .args([
                "-f",
                "qcow2",
                "-c",
                "write -P 0x77 8M 56M",
                "-c",
                "write -P 0x11 0 64k",
            ])
            .arg(&image),
    );
    fs::write(d.join("vm.ovf"), ovf("rev", &[("rev.qcow2", 64 << 20)])).unwrap();
    let ova = d.join("vm.ova");
    tool(
        Command::new("tar")
            .args(["--format=ustar", "-cf"])
            .arg(&ova)
            .arg("-C")
            .arg(d)
            .args(["vm.ovf", "rev.qcow2"]),
    );
    let result = bin()
        .args(["convert", "--progress", "none", "-"])
        .arg(d.join("out"))
        .stdin(Stdio::from(fs::File::open(&ova).unwrap()))
        .output()
        .unwrap();
    assert!(!result.status.success());
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(stderr.contains("rev.qcow2"), "{stderr}");
    assert!(stderr.contains("byte offset"), "{stderr}");
    assert!(stderr.contains("vm-import convert FILE.ova"), "{stderr}");
    // From the file, the same OVA converts (the member is read with random access).
    let result = bin()
        .args(["convert", "--progress", "none"])
        .arg(&ova)
        .arg(d.join("out2"))
        .output()
        .unwrap();
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let got = fs::read(d.join("out2/disk-0.img")).unwrap();
    assert!(got[..65536].iter().all(|&b| b == 0x11) && got[8 << 20..].iter().all(|&b| b == 0x77));
}
