//! Forward-only conversion of the table-mapped formats from a pipe: qcow2 written by the real
//! `qemu-img` (plain, compressed `-c`, v2) with data and holes, converted by `convert_reader` from
//! `cat`'s stdout and compared byte for byte and by SHA-256 with the raw original (the oracle);
//! `inspect_reader` on the same pipes; a qcow2 whose layout needs random access fails naming the
//! offset and the way out. qemu-img and qemu-io are required (apt: qemu-utils).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use sha2::{Digest, Sha256};
use vmi_diskconv::{self as diskconv, Error, Options, Output, inspect};

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {:?}: {e}; install qemu-utils", cmd.get_program()));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn opts() -> Options {
    Options {
        threads: 2,
        progress: None,
        sync: false,
        expected_size: None,
        declared_format: None,
        checksum: Some(diskconv::Checksum::Sha256),
    }
}

/// Runs `f` on a pipe carrying `image` (`cat`'s stdout: no seeking possible).
fn with_pipe<T>(image: &Path, f: impl FnOnce(std::process::ChildStdout) -> T) -> T {
    let mut cat = Command::new("cat")
        .arg(image)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pipe = cat.stdout.take().unwrap();
    let result = f(pipe);
    let _ = cat.wait();
    result
}

/// 40 MiB with random data, a text-like run, holes, and data in the last sector.
fn raw_disk(dir: &Path) -> (PathBuf, Vec<u8>) {
    let mut data = vec![0u8; 40 << 20];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for (start, len) in [(0usize, 300_000usize), (5 << 20, 2 << 20), (33 << 20, 70_000)] {
        for b in &mut data[start..start + len] {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
    }
    for (i, b) in data[20 << 20..(20 << 20) + 900_000].iter_mut().enumerate() {
        *b = b'a' + (i % 26) as u8;
    }
    let end = data.len();
    data[end - 512..].fill(0xee);
    let raw = dir.join("disk.raw");
    fs::write(&raw, &data).unwrap();
    (raw, data)
}

#[test]
fn qcow2_from_a_pipe_is_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let (raw, data) = raw_disk(dir.path());
    let sha = hex::encode(Sha256::digest(&data));
    for extra in [&[][..], &["-c"][..], &["-o", "compat=0.10"][..]] {
        let image = dir.path().join("disk.qcow2");
        run(Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "qcow2"])
            .args(extra)
            .arg(&raw)
            .arg(&image));
        let out = dir.path().join("out.raw");
        let report = with_pipe(&image, |pipe| {
            diskconv::convert_reader(pipe, Output::RawFile(out.clone()), &opts())
        })
        .unwrap_or_else(|e| panic!("{extra:?}: {e:?}"));
        assert_eq!(report.format, "qcow2");
        assert_eq!(report.virtual_size, data.len() as u64);
        assert_eq!(
            report.digest(diskconv::Checksum::Sha256).unwrap(),
            sha,
            "{extra:?}: sha256"
        );
        assert!(fs::read(&out).unwrap() == data, "{extra:?}: bytes differ");
        assert_eq!(
            report.bytes_read,
            fs::metadata(&image).unwrap().len(),
            "{extra:?}: read all"
        );

        let info = with_pipe(&image, inspect::inspect_reader).unwrap();
        assert_eq!(info.format, "qcow2");
        assert_eq!(info.virtual_size, data.len() as u64);
        assert!(info.allocated.unwrap() >= 3_370_000, "{info:?}");
    }
}

#[test]
fn monolithic_sparse_inspects_from_a_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let (raw, data) = raw_disk(dir.path());
    let image = dir.path().join("disk.vmdk");
    run(Command::new("qemu-img")
        .args([
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "-o",
            "subformat=monolithicSparse,adapter_type=lsilogic",
        ])
        .arg(&raw)
        .arg(&image));
    let info = with_pipe(&image, inspect::inspect_reader).unwrap();
    assert_eq!(info.format, "vmdk");
    assert_eq!(info.subformat.as_deref(), Some("monolithicSparse"));
    assert_eq!(info.adapter_type.as_deref(), Some("lsilogic"));
    assert_eq!(info.virtual_size, data.len() as u64);
    assert_eq!(info.grain_size, Some(65536));
}

/// qemu-io writes 56 MiB at the end of the disk first, then the first cluster: the first cluster's
/// data follows the end's in the file, and the end's data is more than the decoder holds (32 MiB
/// reorder budget plus 16 MiB window).
#[test]
fn qcow2_needing_random_access_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("rev.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&image)
        .arg("64M"));
    run(Command::new("qemu-io")
        .args([
            "-f",
            "qcow2",
            "-c",
            "write -P 0x77 8M 56M",
            "-c",
            "write -P 0x11 0 64k",
        ])
        .arg(&image));
    let out = dir.path().join("out.raw");
    let err = with_pipe(&image, |pipe| {
        diskconv::convert_reader(pipe, Output::RawFile(out.clone()), &opts())
    })
    .expect_err("layout needs random access");
    let Error::NotOnePass { format, offset, .. } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(*format, "qcow2");
    assert!(*offset > 0);
    let msg = err.to_string();
    assert!(
        msg.contains("vm-import convert FILE.ova") && msg.contains(&offset.to_string()),
        "{msg}"
    );
    // The same file converts from a file (random access).
    let report = diskconv::convert_path(&image, Output::RawFile(out.clone()), &opts()).unwrap();
    assert_eq!(report.virtual_size, 64 << 20);
}
