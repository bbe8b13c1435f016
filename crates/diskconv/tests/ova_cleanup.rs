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
use vmi_diskconv::{Error, ImageFormat, Options, archive::convert_ova, staged::Replace};

mod support;

#[path = "../../ova/tests/support/fixtures.rs"]
#[allow(dead_code, unreachable_pub)]
mod fixtures;

/// A whole streamOptimized disk of 128 KiB whose second grain is `fill`.
fn stream(fill: u8) -> Vec<u8> {
    support::stream::whole_stream(256, &[(128, &[fill; 65536])])
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
    build_with(dir, disk1, disk2_gz, iso_digest, |ovf| ovf)
}

/// [`build`] with the OVF text edited by `edit` first.
fn build_with(
    dir: &Path,
    disk1: &[u8],
    disk2_gz: &[u8],
    iso_digest: &str,
    edit: impl Fn(String) -> String,
) -> PathBuf {
    let iso = vec![7u8; 4096];
    // Both disks are 128 KiB here.
    let ovf = fixtures::vmware_ovf_with_capacities(131_072, 131_072)
        .replace("{DISK1_SIZE}", &disk1.len().to_string())
        .replace("{DISK2_SIZE}", &disk2_gz.len().to_string())
        .replace("{ISO_SIZE}", &iso.len().to_string());
    let ovf = edit(ovf);
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
        expected_size: None,
        declared_format: None,
        checksum: None,
    };
    convert_ova(
        fs::File::open(ova).unwrap(),
        out,
        (ImageFormat::Raw, Replace::Nothing),
        &opts,
        true,
    )
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

/// The OVF without the second disk's `ovf:format`, so that a raw member is acceptable.
fn no_format_for_disk2(ovf: String) -> String {
    ovf.replace(
        r#"ovf:diskId="vmdisk2" ovf:fileRef="file2" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized""#,
        r#"ovf:diskId="vmdisk2" ovf:fileRef="file2""#,
    )
}

#[test]
fn raw_member_declared_as_vmdk_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let ova = build(
        tmp.path(),
        &stream(1),
        &gzip(&[9u8; 131_072]),
        &sha256(&[7u8; 4096]),
    );
    let err = convert(&ova, &tmp.path().join("out")).unwrap_err();
    let Error::OvaMember { member, source } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(member, "web-01-disk2.vmdk.gz");
    assert!(
        matches!(
            **source,
            Error::FormatMismatch {
                declared: "VMDK",
                found: "raw"
            }
        ),
        "{source:?}"
    );
}

#[test]
fn disk_larger_than_the_ovf_capacity_is_refused_before_it_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    // The header says 64 TiB; the OVF says 128 KiB.
    let huge = support::stream::whole_stream(vmdk::header::MAX_CAPACITY_SECTORS, &[(0, &[1u8; 512])]);
    let ova = build(tmp.path(), &huge, &gzip(&stream(2)), &sha256(&[7u8; 4096]));
    let out = tmp.path().join("out");
    let err = convert(&ova, &out).unwrap_err();
    let Error::OvaMember { member, source } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(member, "web-01-disk1.vmdk");
    assert!(
        matches!(**source, Error::SizeMismatch { declared: 131_072, found } if found == 64 << 40),
        "{source:?}"
    );
    assert_eq!(entries(&out), Vec::<String>::new());
}

#[test]
fn gzip_member_inflating_past_the_ovf_capacity_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    // 4 MiB of raw zeros gzip to a few KiB; the OVF says the disk is 128 KiB, of no format.
    let bomb = gzip(&vec![0u8; 4 << 20]);
    let ova = build_with(
        tmp.path(),
        &stream(1),
        &bomb,
        &sha256(&[7u8; 4096]),
        no_format_for_disk2,
    );
    let out = tmp.path().join("out");
    let err = convert(&ova, &out).unwrap_err();
    let Error::OvaMember { member, source } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(member, "web-01-disk2.vmdk.gz");
    assert!(
        matches!(**source, Error::LongerThanDeclared { declared: 131_072 }),
        "{source:?}"
    );
    assert_eq!(entries(&out), Vec::<String>::new());
}

#[test]
fn raw_member_shorter_than_the_ovf_capacity_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let short = gzip(&[9u8; 65536]);
    let ova = build_with(
        tmp.path(),
        &stream(1),
        &short,
        &sha256(&[7u8; 4096]),
        no_format_for_disk2,
    );
    let err = convert(&ova, &tmp.path().join("out")).unwrap_err();
    let Error::OvaMember { source, .. } = &err else {
        panic!("{err:?}")
    };
    assert!(
        matches!(
            **source,
            Error::EndedEarly {
                offset: 65536,
                declared: 131_072
            }
        ),
        "{source:?}"
    );
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
            expected_size: None,
            declared_format: None,
            checksum: None,
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
