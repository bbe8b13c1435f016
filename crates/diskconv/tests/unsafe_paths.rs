//! Extents named by a VMDK descriptor are untrusted: a symbolic link (to `/etc/passwd`, say) or a
//! FIFO in the extent's place is refused with an error naming the extent, for `convert` and for
//! `inspect`, and nothing waits on a FIFO. Descriptors come from the real `qemu-img`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    sync::mpsc,
    time::Duration,
};

use support::error_chain;
use vmi_diskconv::{self as diskconv, Error, Options, Output};

mod support;

/// A monolithicFlat VMDK (descriptor plus `disk-flat.vmdk`) of 1 MiB in `dir`.
fn flat_vmdk(dir: &Path) -> (PathBuf, PathBuf) {
    let raw = dir.join("disk.raw");
    fs::write(&raw, vec![5u8; 1 << 20]).unwrap();
    let vmdk = dir.join("disk.vmdk");
    let status = Command::new("qemu-img")
        .args([
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "-o",
            "subformat=monolithicFlat",
        ])
        .arg(&raw)
        .arg(&vmdk)
        .status()
        .expect("qemu-img (apt-get install qemu-utils)");
    assert!(status.success());
    (vmdk, dir.join("disk-flat.vmdk"))
}

/// Runs `f` on a thread; fails the test if it has not returned in 60 s.
fn within_a_minute<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(f()));
    rx.recv_timeout(Duration::from_secs(60)).expect("hung")
}

fn convert(vmdk: PathBuf, out: PathBuf) -> Result<diskconv::Report, Error> {
    within_a_minute(move || diskconv::convert_path(&vmdk, Output::RawFile(out), &Options::default()))
}

#[test]
fn extent_that_is_a_symlink_is_refused_and_its_target_never_read() {
    let dir = tempfile::tempdir().unwrap();
    let (vmdk, extent) = flat_vmdk(dir.path());
    fs::remove_file(&extent).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", &extent).unwrap();
    let out = dir.path().join("out.img");
    let err = convert(vmdk.clone(), out.clone()).unwrap_err();
    let text = error_chain(&err);
    assert!(
        text.contains("disk-flat.vmdk") && text.contains("symbolic link"),
        "{text}"
    );
    assert!(!out.exists() || fs::read(&out).unwrap().iter().all(|&b| b == 0));
    let err = within_a_minute(move || diskconv::inspect::inspect_path(&vmdk)).unwrap_err();
    assert!(
        error_chain(&err).contains("symbolic link"),
        "{}",
        error_chain(&err)
    );
}

#[test]
fn extent_that_is_a_fifo_is_refused_without_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let (vmdk, extent) = flat_vmdk(dir.path());
    fs::remove_file(&extent).unwrap();
    rustix::fs::mkfifoat(rustix::fs::CWD, &extent, rustix::fs::Mode::from_raw_mode(0o600)).unwrap();
    let err = convert(vmdk.clone(), dir.path().join("out.img")).unwrap_err();
    let text = error_chain(&err);
    assert!(text.contains("disk-flat.vmdk") && text.contains("FIFO"), "{text}");
    let err = within_a_minute(move || diskconv::inspect::inspect_path(&vmdk)).unwrap_err();
    assert!(error_chain(&err).contains("FIFO"), "{}", error_chain(&err));
}

#[test]
fn regular_extent_still_converts() {
    let dir = tempfile::tempdir().unwrap();
    let (vmdk, _) = flat_vmdk(dir.path());
    let out = dir.path().join("out.img");
    convert(vmdk, out.clone()).unwrap();
    assert_eq!(fs::read(out).unwrap(), vec![5u8; 1 << 20]);
}
