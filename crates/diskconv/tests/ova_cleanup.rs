//! A failed OVA conversion leaves no `disk-<N>` file behind, neither the disks converted before
//! the failure nor the one being written when it happened; OVAs assembled by GNU tar around the
//! ova crate's VMware OVF fixture and hand-built streamOptimized disks.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    process::Command,
};

use sha2::Digest;
use vmdk::{
    grain::deflate_grain,
    header::{FLAG_COMPRESSED, FLAG_MARKERS, FLAG_VALID_NEWLINE_TEST, GD_AT_END, MAGIC, RawSparseHeader},
};
use vmi_diskconv::{Error, ImageFormat, Options, archive::convert_ova};

#[path = "../../ova/tests/support/fixtures.rs"]
#[allow(dead_code, unreachable_pub)]
mod fixtures;

/// A streamOptimized disk of 128 KiB whose second grain is `fill` (no footer, no EOS: the
/// decoder needs neither).
fn stream(fill: u8) -> Vec<u8> {
    let mut s = RawSparseHeader {
        magic: MAGIC,
        version: 3,
        flags: FLAG_VALID_NEWLINE_TEST | FLAG_COMPRESSED | FLAG_MARKERS,
        capacity: 256,
        grain_size: 128,
        descriptor_offset: 0,
        descriptor_size: 0,
        num_gtes_per_gt: 512,
        rgd_offset: 0,
        gd_offset: GD_AT_END,
        overhead: 1,
        unclean_shutdown: 0,
        newline_check: *b"\n \r\n",
        compress_algorithm: 1,
    }
    .to_bytes()
    .to_vec();
    let z = deflate_grain(&[fill; 65536]);
    s.extend_from_slice(&128u64.to_le_bytes());
    s.extend_from_slice(&(z.len() as u32).to_le_bytes());
    s.extend_from_slice(&z);
    s.resize(s.len().next_multiple_of(512), 0);
    s
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn sha256(data: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(data))
}

/// `web-01.ova` in `dir` with the fixture's two disks and ISO, and a manifest that lists the ISO
/// with `iso_digest`.
fn build(dir: &Path, disk1: &[u8], disk2_gz: &[u8], iso_digest: &str) -> PathBuf {
    let iso = vec![7u8; 4096];
    let ovf = fixtures::VMWARE_OVF
        .replace("{DISK1_SIZE}", &disk1.len().to_string())
        .replace("{DISK2_SIZE}", &disk2_gz.len().to_string())
        .replace("{ISO_SIZE}", &iso.len().to_string());
    let manifest = format!(
        "SHA256(web-01.ovf)= {}\nSHA256(tools.iso)= {iso_digest}\n",
        sha256(ovf.as_bytes())
    );
    let members: [(&str, &[u8]); 5] = [
        ("web-01.ovf", ovf.as_bytes()),
        ("web-01.mf", manifest.as_bytes()),
        ("web-01-disk1.vmdk", disk1),
        ("web-01-disk2.vmdk.gz", disk2_gz),
        ("tools.iso", &iso),
    ];
    for (name, data) in members {
        fs::write(dir.join(name), data).unwrap();
    }
    let ova = dir.join("web-01.ova");
    let status = Command::new("tar")
        .args(["--format=ustar", "-cf"])
        .arg(&ova)
        .arg("-C")
        .arg(dir)
        .args(members.map(|(name, _)| name))
        .status()
        .expect("GNU tar");
    assert!(status.success());
    ova
}

fn convert(ova: &Path, out: &Path) -> Result<vmi_diskconv::archive::OvaResult, Error> {
    fs::create_dir_all(out).unwrap();
    let opts = Options {
        threads: 2,
        progress: None,
        sync: false,
    };
    convert_ova(fs::File::open(ova).unwrap(), out, ImageFormat::Raw, &opts, true)
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn truncated_second_disk_removes_both_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let good = stream(1);
    let mut truncated = stream(2);
    truncated.truncate(truncated.len() - 100);
    let ova = build(tmp.path(), &good, &gzip(&truncated), &sha256(&[7u8; 4096]));
    let out = tmp.path().join("out");
    let err = convert(&ova, &out).unwrap_err();
    assert!(
        matches!(&err, Error::OvaMember { member, .. } if member == "web-01-disk2.vmdk.gz"),
        "{err:?}"
    );
    assert_eq!(entries(&out), Vec::<String>::new());
}

#[test]
fn manifest_mismatch_after_the_disks_removes_them() {
    let tmp = tempfile::tempdir().unwrap();
    let ova = build(tmp.path(), &stream(1), &gzip(&stream(2)), &sha256(b"not the iso"));
    let out = tmp.path().join("out");
    let err = convert(&ova, &out).unwrap_err();
    assert!(err.to_string().contains("manifest"), "{err}");
    assert_eq!(entries(&out), Vec::<String>::new());
}

#[test]
fn successful_conversion_keeps_the_disks() {
    let tmp = tempfile::tempdir().unwrap();
    let ova = build(tmp.path(), &stream(1), &gzip(&stream(2)), &sha256(&[7u8; 4096]));
    let out = tmp.path().join("out");
    let result = convert(&ova, &out).unwrap();
    assert_eq!(result.disks.len(), 2);
    assert_eq!(entries(&out), ["disk-0.img", "disk-1.img"]);
    let mut want = vec![0u8; 65536];
    want.extend_from_slice(&[2u8; 65536]);
    assert_eq!(fs::read(out.join("disk-1.img")).unwrap(), want);
}

/// Records what [`convert_ova_into`] tells its targets.
#[derive(Default)]
struct Recorder {
    dir: PathBuf,
    skip: Vec<usize>,
    events: Vec<String>,
}

impl vmi_diskconv::archive::DiskTargets for Recorder {
    fn described(&mut self, vm: &ova::VmDescription) -> Result<(), Error> {
        self.events.push(format!("described {}", vm.disks.len()));
        Ok(())
    }

    fn output(&mut self, index: usize, member: &str) -> Option<(vmi_diskconv::Output, Options)> {
        self.events.push(format!("output {index} {member}"));
        if self.skip.contains(&index) {
            return None;
        }
        let opts = Options {
            threads: 1,
            progress: None,
            sync: false,
        };
        Some((
            vmi_diskconv::Output::RawFile(self.dir.join(format!("{index}.part"))),
            opts,
        ))
    }

    fn verified(
        &mut self,
        index: usize,
        member: &str,
        report: &vmi_diskconv::Report,
        digest_checked: bool,
    ) -> Result<(), Error> {
        self.events.push(format!(
            "verified {index} {member} {} {digest_checked}",
            report.virtual_size
        ));
        Ok(())
    }

    fn failed(&mut self, index: usize) {
        self.events.push(format!("failed {index}"));
    }
}

#[test]
fn targets_hear_of_each_disk_once_its_member_is_read_and_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let ova = build(tmp.path(), &stream(1), &gzip(&stream(2)), &sha256(&[7u8; 4096]));
    let mut recorder = Recorder {
        dir: tmp.path().to_owned(),
        skip: vec![0],
        ..Recorder::default()
    };
    vmi_diskconv::archive::convert_ova_into(fs::File::open(&ova).unwrap(), &mut recorder, true).unwrap();
    // The fixture's manifest lists neither disk: converted, but not digest-checked; disk 0 skipped.
    assert_eq!(
        recorder.events,
        [
            "described 2",
            "output 0 web-01-disk1.vmdk",
            "output 1 web-01-disk2.vmdk.gz",
            "verified 1 web-01-disk2.vmdk.gz 131072 false",
        ]
    );
    assert!(!tmp.path().join("0.part").exists());
}

#[test]
fn targets_hear_which_disk_failed_and_nothing_is_verified_after_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mut truncated = stream(2);
    truncated.truncate(truncated.len() - 100);
    let ova = build(tmp.path(), &stream(1), &gzip(&truncated), &sha256(&[7u8; 4096]));
    let mut recorder = Recorder {
        dir: tmp.path().to_owned(),
        ..Recorder::default()
    };
    let err = vmi_diskconv::archive::convert_ova_into(fs::File::open(&ova).unwrap(), &mut recorder, true)
        .unwrap_err();
    assert!(
        matches!(&err, Error::OvaMember { member, .. } if member == "web-01-disk2.vmdk.gz"),
        "{err:?}"
    );
    assert_eq!(
        recorder.events,
        [
            "described 2",
            "output 0 web-01-disk1.vmdk",
            "verified 0 web-01-disk1.vmdk 131072 false",
            "output 1 web-01-disk2.vmdk.gz",
            "failed 1",
        ]
    );
    // Unlike convert_ova, what the targets made is theirs to keep or remove.
    assert!(tmp.path().join("0.part").exists());
}
