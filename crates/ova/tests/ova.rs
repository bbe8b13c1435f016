//! OVAs assembled in the test (the `tar` crate and GNU tar), walked in one pass, their OVF parsed and
//! their members verified against manifests whose digests come from coreutils' `sha*sum`.

// Test helpers outside #[test] fns fail loudly by design.
#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)]

mod support;

use ova::{
    Compression, ControllerKind, Firmware, NicModel, OvfVersion, TarWalker, VmDescription, manifest, ovf,
};
use support::{build_with_gnu_tar, build_with_tar_crate, bytes, fixtures, system_digest, walk};

struct VmwareOva {
    archive: Vec<u8>,
    disk1: Vec<u8>,
    disk2: Vec<u8>,
    iso: Vec<u8>,
}

fn vmware_ova() -> VmwareOva {
    let disk1 = bytes(1, 300_001);
    let disk2 = bytes(2, 70_000);
    let iso = bytes(3, 2048);
    let ovf_text = fixtures::VMWARE_OVF
        .replace("{DISK1_SIZE}", &disk1.len().to_string())
        .replace("{DISK2_SIZE}", &disk2.len().to_string())
        .replace("{ISO_SIZE}", &iso.len().to_string());
    let mf = format!(
        "SHA256(web-01.ovf)= {}\nSHA256(web-01-disk1.vmdk)= {}\nSHA1(web-01-disk2.vmdk.gz) = {}\nSHA512(tools.iso)= {}\n",
        system_digest("sha256sum", ovf_text.as_bytes()),
        system_digest("sha256sum", &disk1),
        system_digest("sha1sum", &disk2),
        system_digest("sha512sum", &iso),
    );
    let archive = build_with_tar_crate(&[
        ("web-01.ovf", ovf_text.as_bytes()),
        ("web-01.mf", mf.as_bytes()),
        ("web-01-disk1.vmdk", &disk1),
        ("web-01-disk2.vmdk.gz", &disk2),
        ("tools.iso", &iso),
    ]);
    VmwareOva {
        archive,
        disk1,
        disk2,
        iso,
    }
}

fn assert_vmware_description(vm: &VmDescription) {
    assert_eq!(vm.name, "web-01");
    assert_eq!(vm.ovf_version, OvfVersion::V1);
    assert_eq!(vm.guest_os.as_deref(), Some("ubuntu64Guest"));
    assert_eq!(vm.system_type.as_deref(), Some("vmx-19"));
    assert_eq!((vm.cpus, vm.cores_per_socket), (4, Some(2)));
    assert_eq!(vm.memory_mib, 8192);
    assert_eq!(vm.firmware, Firmware::Efi);
    assert!(vm.secure_boot, "uefi.secureBoot.enabled = true");
    assert!(vm.tpm, "vmware.vtpm item");

    assert_eq!(vm.disks.len(), 2);
    let d1 = &vm.disks[0];
    assert_eq!(d1.disk_id, "vmdisk1");
    assert_eq!(d1.capacity_bytes, 20 << 30);
    assert_eq!(d1.populated_size, Some(1_287_454_720));
    assert!(
        d1.format
            .as_deref()
            .is_some_and(|f| f.ends_with("#streamOptimized"))
    );
    let c1 = d1.controller.as_ref().expect("disk 1 controller");
    assert_eq!(
        (c1.kind, c1.model.as_deref(), c1.bus),
        (ControllerKind::Scsi, Some("pvscsi"), Some(0))
    );
    assert_eq!(d1.unit, Some(0));
    let f1 = d1.file.as_ref().expect("disk 1 file");
    assert_eq!(
        (f1.href.as_str(), f1.size, f1.compression),
        ("web-01-disk1.vmdk", Some(300_001), None)
    );

    let d2 = &vm.disks[1];
    assert_eq!(d2.capacity_bytes, 512 << 20);
    let c2 = d2.controller.as_ref().expect("disk 2 controller");
    assert_eq!(
        (c2.kind, c2.model.as_deref()),
        (ControllerKind::Sata, Some("ahci"))
    );
    assert_eq!(d2.unit, Some(1));
    let f2 = d2.file.as_ref().expect("disk 2 file");
    assert_eq!(
        (f2.href.as_str(), f2.compression),
        ("web-01-disk2.vmdk.gz", Some(Compression::Gzip))
    );

    assert_eq!(vm.nics.len(), 2);
    assert_eq!(vm.nics[0].network.as_deref(), Some("VM Network"));
    assert_eq!(vm.nics[0].model, NicModel::Vmxnet3);
    assert_eq!(vm.nics[0].mac.as_deref(), Some("00:50:56:aa:bb:01"));
    assert_eq!(vm.nics[0].name.as_deref(), Some("Network adapter 1"));
    assert_eq!(vm.nics[1].network.as_deref(), Some("storage-vlan"));
    assert_eq!(vm.nics[1].model, NicModel::E1000e);
    assert_eq!(vm.nics[1].mac.as_deref(), Some("00:50:56:aa:bb:02"));

    assert_eq!(vm.cdroms.len(), 1);
    let cd = &vm.cdroms[0];
    assert_eq!(
        cd.controller.as_ref().map(|c| (c.kind, c.bus)),
        Some((ControllerKind::Ide, Some(1)))
    );
    assert_eq!(cd.file.as_ref().map(|f| f.href.as_str()), Some("tools.iso"));
    assert_eq!(vm.files.len(), 3);
}

#[test]
fn vmware_ova_walks_parses_and_verifies_in_one_pass() {
    let ova = vmware_ova();
    let walked = walk(&ova.archive).expect("walk");
    assert!(walked.mismatches.is_empty(), "{:?}", walked.mismatches);
    let manifest = walked.manifest.expect("manifest");
    assert_eq!(manifest.entries.len(), 4);
    assert_eq!(
        manifest.get("web-01-disk2.vmdk.gz").map(|e| e.algorithm),
        Some(manifest::Algorithm::Sha1)
    );
    assert_vmware_description(walked.vm.as_ref().expect("ovf"));
    let names: Vec<_> = walked.members.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["web-01-disk1.vmdk", "web-01-disk2.vmdk.gz", "tools.iso"]);
    assert!(walked.members[0].1 == ova.disk1);
    assert!(walked.members[1].1 == ova.disk2);
    assert!(walked.members[2].1 == ova.iso);
}

#[test]
fn vm_description_serialises_for_vm_json() {
    let ova = vmware_ova();
    let vm = walk(&ova.archive).expect("walk").vm.expect("ovf");
    let json = serde_json::to_value(&vm).expect("json");
    assert_eq!(json["name"], "web-01");
    assert_eq!(json["ovf_version"], "1");
    assert_eq!(json["memory_mib"], 8192);
    assert_eq!(json["firmware"], "efi");
    assert_eq!(json["disks"][0]["controller"]["kind"], "scsi");
    assert_eq!(json["disks"][1]["file"]["compression"], "gzip");
    assert_eq!(json["nics"][0]["model"], "vmxnet3");
    let back: VmDescription = serde_json::from_value(json).expect("round trip");
    assert_eq!(back, vm);
}

#[test]
fn manifest_mismatch_names_the_file() {
    let mut ova = vmware_ova();
    // Flip one byte in the middle of disk 1's body.
    let at = ova
        .archive
        .windows(64)
        .position(|w| w == &ova.disk1[1000..1064])
        .expect("disk1 in archive");
    ova.archive[at + 10] ^= 0xff;
    let walked = walk(&ova.archive).expect("walk");
    assert_eq!(walked.mismatches.len(), 1, "{:?}", walked.mismatches);
    let msg = &walked.mismatches[0];
    assert!(
        msg.contains("web-01-disk1.vmdk") && msg.contains("SHA256"),
        "{msg}"
    );
}

#[test]
fn virtualbox_ovf2_ova_by_gnu_tar() {
    let dir = tempfile::tempdir().expect("tmp");
    let disk = bytes(9, 123_457);
    let mf = format!(
        "SHA1 (debian12.ovf) = {}\nSHA1 (debian12-disk001.vmdk) = {}\n",
        system_digest("sha1sum", fixtures::VIRTUALBOX_OVF.as_bytes()),
        system_digest("sha1sum", &disk)
    );
    // VirtualBox's own manifests put a space before the parenthesis; accept it.
    let mf = mf.replace("SHA1 (", "SHA1(");
    let archive = build_with_gnu_tar(
        dir.path(),
        "ustar",
        &[
            ("debian12.ovf", fixtures::VIRTUALBOX_OVF.as_bytes()),
            ("debian12.mf", mf.as_bytes()),
            ("debian12-disk001.vmdk", &disk),
        ],
    );
    let walked = walk(&archive).expect("walk");
    assert!(walked.mismatches.is_empty(), "{:?}", walked.mismatches);
    let vm = walked.vm.expect("ovf");
    assert_eq!(vm.name, "debian12");
    assert_eq!(vm.ovf_version, OvfVersion::V2);
    assert_eq!(vm.guest_os.as_deref(), Some("Debian_64"));
    assert_eq!((vm.cpus, vm.cores_per_socket, vm.memory_mib), (2, None, 2048));
    assert_eq!(vm.firmware, Firmware::Efi, "from vbox:Machine/Hardware/Firmware");
    assert!(!vm.secure_boot && !vm.tpm);
    assert_eq!(vm.disks.len(), 1);
    assert_eq!(vm.disks[0].capacity_bytes, 10 << 30);
    let c = vm.disks[0].controller.as_ref().expect("controller");
    assert_eq!((c.kind, c.model.as_deref()), (ControllerKind::Sata, Some("ahci")));
    assert_eq!(
        vm.disks[0].file.as_ref().map(|f| f.href.as_str()),
        Some("debian12-disk001.vmdk")
    );
    assert_eq!(vm.nics.len(), 2);
    assert_eq!(
        (vm.nics[0].network.as_deref(), &vm.nics[0].model),
        (Some("NAT"), &NicModel::Virtio)
    );
    assert_eq!(
        (vm.nics[1].network.as_deref(), &vm.nics[1].model),
        (Some("HostOnly"), &NicModel::E1000)
    );
    assert_eq!(
        vm.nics[0].mac.as_deref(),
        Some("08:00:27:a1:b2:c3"),
        "from vbox:Machine slot 0"
    );
    assert_eq!(
        vm.nics[1].mac.as_deref(),
        Some("08:00:27:d4:e5:f6"),
        "from vbox:Machine slot 1"
    );
    assert_eq!(vm.cdroms.len(), 1);
    assert_eq!(
        vm.cdroms[0].controller.as_ref().map(|c| c.kind),
        Some(ControllerKind::Ide)
    );
    assert!(walked.members[0].1 == disk);
}

#[test]
fn long_names_in_gnu_and_pax_archives() {
    let long = format!("{}/{}.vmdk", "d".repeat(120), "x".repeat(150));
    let data = bytes(4, 5000);
    for format in ["gnu", "pax"] {
        let dir = tempfile::tempdir().expect("tmp");
        let archive = build_with_gnu_tar(dir.path(), format, &[("short.txt", b"hi"), (&long, &data)]);
        let mut walker = TarWalker::new(&archive[..]);
        let mut seen = Vec::new();
        while let Some(mut entry) = walker.next_entry().expect("entry") {
            let mut body = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut body).expect("body");
            seen.push((entry.name().to_owned(), entry.kind(), body));
        }
        // GNU tar also stores the parent directory of the long name.
        let files: Vec<_> = seen
            .iter()
            .filter(|(_, k, _)| *k == ova::EntryKind::File)
            .collect();
        assert_eq!(
            files.len(),
            2,
            "{format}: {:?}",
            seen.iter().map(|s| &s.0).collect::<Vec<_>>()
        );
        assert_eq!(files[0].0, "short.txt");
        assert_eq!(files[1].0, long, "{format}");
        assert!(files[1].2 == data, "{format}");
        assert_eq!(
            walker.offset(),
            archive.len() as u64 - trailing_zero_blocks_beyond_marker(&archive)
        );
    }
}

/// GNU tar pads archives to 10 KiB records; the walker stops after the two end-of-archive blocks.
fn trailing_zero_blocks_beyond_marker(archive: &[u8]) -> u64 {
    let zeros = archive.iter().rev().take_while(|&&b| b == 0).count() as u64;
    // Everything after the last non-zero block is zero; the walker reads exactly two of those blocks.
    let last_data_end = (archive.len() as u64 - zeros).div_ceil(512) * 512;
    archive.len() as u64 - (last_data_end + 1024)
}

#[test]
fn unread_bodies_are_skipped() {
    let ova = vmware_ova();
    let mut walker = TarWalker::new(&ova.archive[..]);
    let mut names = Vec::new();
    while let Some(entry) = walker.next_entry().expect("entry") {
        names.push((entry.name().to_owned(), entry.size()));
    }
    assert_eq!(names.len(), 5);
    assert_eq!(names[2], ("web-01-disk1.vmdk".to_owned(), 300_001));
    assert_eq!(
        walker
            .next_entry()
            .expect("after end")
            .map(|e| e.name().to_owned()),
        None
    );
}

#[test]
fn ovf_errors_name_the_element_and_line() {
    let bad_capacity =
        fixtures::VIRTUALBOX_OVF.replace("ovf:capacity=\"10737418240\"", "ovf:capacity=\"ten\"");
    let err = ovf::parse(&bad_capacity).expect_err("capacity");
    let msg = err.to_string();
    assert!(
        msg.contains("vmdisk1") && msg.contains("capacity") && msg.contains("line 8"),
        "{msg}"
    );

    let dangling = fixtures::VIRTUALBOX_OVF.replace("/disk/vmdisk1", "/disk/nope");
    let err = ovf::parse(&dangling).expect_err("dangling");
    assert!(
        matches!(&err, ovf::Error::UnknownReference { reference, .. } if reference == "nope"),
        "{err}"
    );

    let bad_parent =
        fixtures::VIRTUALBOX_OVF.replace("<sasd:Parent>4</sasd:Parent>", "<sasd:Parent>99</sasd:Parent>");
    let err = ovf::parse(&bad_parent).expect_err("parent");
    assert!(
        err.to_string().contains("StorageItem 5") && err.to_string().contains("\"99\""),
        "{err}"
    );

    // A disk on a USB controller (ResourceType 23) stays attached, as an `Other` controller.
    let usb = fixtures::VIRTUALBOX_OVF.replace(
        "<rasd:ResourceSubType>AHCI</rasd:ResourceSubType>\n        <rasd:ResourceType>20</rasd:ResourceType>",
        "<rasd:ResourceSubType>vmware.usb.xhci</rasd:ResourceSubType>\n        <rasd:ResourceType>23</rasd:ResourceType>",
    );
    assert_ne!(usb, fixtures::VIRTUALBOX_OVF);
    let vm = ovf::parse(&usb).expect("usb parent");
    let c = vm.disks[0].controller.as_ref().expect("controller");
    assert_eq!(
        (c.kind, c.model.as_deref()),
        (ControllerKind::Other, Some("vmware.usb.xhci"))
    );

    // Two VMs in a collection: refused, not silently reduced to the first.
    let start = fixtures::VIRTUALBOX_OVF.find("<VirtualSystem ").expect("vs");
    let end = fixtures::VIRTUALBOX_OVF.find("</VirtualSystem>").expect("end") + "</VirtualSystem>".len();
    let system = &fixtures::VIRTUALBOX_OVF[start..end];
    let two = fixtures::VIRTUALBOX_OVF.replacen(
        system,
        &format!(
            "<VirtualSystemCollection ovf:id=\"c\"><Info>x</Info>{system}{}</VirtualSystemCollection>",
            system.replace("debian12", "debian12b")
        ),
        1,
    );
    assert!(matches!(
        ovf::parse(&two),
        Err(ovf::Error::MultipleVirtualSystems { count: 2 })
    ));

    let huge = fixtures::VIRTUALBOX_OVF.replace("10737418240", "99999999999999999999");
    assert!(matches!(ovf::parse(&huge), Err(ovf::Error::InvalidValue { .. })));

    let absurd = fixtures::VIRTUALBOX_OVF.replace(
        "ovf:capacity=\"10737418240\"",
        "ovf:capacity=\"4000000\" ovf:capacityAllocationUnits=\"byte * 2^40\"",
    );
    assert!(matches!(
        ovf::parse(&absurd),
        Err(ovf::Error::InvalidValue { .. })
    ));

    let bad_mac = fixtures::VMWARE_OVF
        .replace("{DISK1_SIZE}", "1")
        .replace("{DISK2_SIZE}", "1")
        .replace("{ISO_SIZE}", "1")
        .replace("00:50:56:AA:BB:01", "not-a-mac");
    assert!(
        ovf::parse(&bad_mac)
            .expect_err("mac")
            .to_string()
            .contains("Network adapter 1")
    );

    let no_cpu = fixtures::VIRTUALBOX_OVF.replace("<rasd:ResourceType>3</rasd:ResourceType>", "");
    assert!(matches!(ovf::parse(&no_cpu), Err(ovf::Error::Missing { .. })));

    let not_ovf = "<?xml version=\"1.0\"?><html xmlns=\"http://www.w3.org/1999/xhtml\"/>";
    assert!(matches!(
        ovf::parse(not_ovf),
        Err(ovf::Error::NotAnEnvelope { .. })
    ));

    let broken = &fixtures::VMWARE_OVF[..2000];
    assert!(matches!(ovf::parse(broken), Err(ovf::Error::Xml { .. })));

    assert!(matches!(
        ovf::read_envelope(&[0xff, 0xfe, 0x00][..]),
        Err(ovf::Error::NotText { .. })
    ));
    let big = vec![b' '; ovf::MAX_OVF_SIZE + 1];
    assert!(matches!(
        ovf::read_envelope(&big[..]),
        Err(ovf::Error::TooLarge { .. })
    ));
}

mod proptests {
    use std::io::Read;

    use proptest::prelude::*;

    use super::*;

    fn member_name() -> impl Strategy<Value = String> {
        // Short and long (GNU long-name / ustar prefix) names, nested directories.
        prop::collection::vec("[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,40}", 1..6)
            .prop_map(|parts| parts.join("/"))
            .prop_filter("no dot-only components", |n| {
                n.split('/').all(|p| p != "." && p != "..")
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

        /// Whatever the `tar` crate writes (ustar or GNU headers, long names, any sizes), the walker
        /// yields the same members with the same bytes, reading some bodies partially.
        #[test]
        fn walker_agrees_with_the_tar_crate(
            members in prop::collection::vec((member_name(), 0usize..5000, any::<u64>()), 0..8),
            gnu in any::<bool>(),
            partial in any::<u8>(),
        ) {
            let mut builder = tar::Builder::new(Vec::new());
            let mut expected = Vec::new();
            for (name, len, seed) in &members {
                let data = bytes(*seed, *len);
                let mut header = if gnu { tar::Header::new_gnu() } else { tar::Header::new_ustar() };
                header.set_size(data.len() as u64);
                header.set_mode(0o644);
                if builder.append_data(&mut header, name, &data[..]).is_err() {
                    continue; // a ustar name the tar crate cannot split into prefix + name
                }
                expected.push((name.clone(), data));
            }
            let archive = builder.into_inner().expect("archive");
            let mut walker = TarWalker::new(&archive[..]);
            let mut got = Vec::new();
            let mut i = 0usize;
            while let Some(mut entry) = walker.next_entry().expect("walk") {
                let mut data = Vec::new();
                if partial as usize & (1 << (i % 8)) != 0 {
                    // Read only part; the walker must skip the rest.
                    let mut half = vec![0u8; (entry.size() / 2) as usize];
                    entry.read_exact(&mut half).expect("partial read");
                    got.push((entry.name().to_owned(), None));
                } else {
                    entry.read_to_end(&mut data).expect("body");
                    got.push((entry.name().to_owned(), Some(data)));
                }
                i += 1;
            }
            prop_assert_eq!(got.len(), expected.len());
            for ((name, data), (want_name, want_data)) in got.iter().zip(&expected) {
                prop_assert_eq!(name, want_name);
                if let Some(data) = data {
                    prop_assert!(data == want_data, "body of {}", name);
                }
            }
        }
    }
}
