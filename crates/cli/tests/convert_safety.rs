//! `vm-import convert` never destroys what the user owns: the input given as the output, an
//! existing output without `--force`, a link at the output path, a failed or interrupted run, and
//! a file whose name or `-f` declares another format than its bytes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    fs,
    io::Write,
    path::Path,
    process::{Command, Output, Stdio},
    time::Duration,
};

fn convert(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vm-import"))
        .args(["convert", "--progress", "none"])
        .args(args)
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Every name in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn disk(dir: &Path, name: &str, fill: u8) -> std::path::PathBuf {
    let p = dir.join(name);
    fs::write(&p, vec![fill; 1 << 20]).unwrap();
    p
}

#[test]
fn the_input_as_its_own_output_is_refused_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let a = disk(dir.path(), "a.raw", 7);
    let link = dir.path().join("link.raw");
    std::os::unix::fs::symlink(&a, &link).unwrap();
    for args in [
        vec![path(&a), path(&a)],
        vec!["--force", path(&a), path(&a)],
        vec!["--force", "-O", "qcow2", path(&a), path(&a)],
        vec!["--force", path(&a), path(&link)],
    ] {
        let out = convert(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            stderr(&out).contains("is the input file itself"),
            "{}",
            stderr(&out)
        );
        assert_eq!(fs::read(&a).unwrap(), vec![7u8; 1 << 20], "{args:?}");
    }
    assert_eq!(names(dir.path()), ["a.raw", "link.raw"]);
}

#[test]
fn an_existing_output_needs_force() {
    let dir = tempfile::tempdir().unwrap();
    let input = disk(dir.path(), "in.raw", 1);
    let existing = disk(dir.path(), "out.raw", 2);
    let out = convert(&[path(&input), path(&existing)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("exists; pass --force"), "{}", stderr(&out));
    assert_eq!(fs::read(&existing).unwrap(), vec![2u8; 1 << 20]);
    let out = convert(&["--force", path(&input), path(&existing)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(fs::read(&existing).unwrap(), vec![1u8; 1 << 20]);
    assert_eq!(names(dir.path()), ["in.raw", "out.raw"]);
}

#[test]
fn a_link_at_the_output_is_replaced_never_written_through() {
    let dir = tempfile::tempdir().unwrap();
    let input = disk(dir.path(), "in.raw", 1);
    let victim = disk(dir.path(), "victim", 9);
    let link = dir.path().join("out.raw");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let out = convert(&[path(&input), path(&link)]);
    assert_eq!(out.status.code(), Some(1), "a link is an existing output");
    // A failing conversion onto the link leaves its target whole.
    let broken = dir.path().join("broken.qcow2");
    fs::write(&broken, b"QFI\xfb\0\0\0\x03 not really").unwrap();
    let out = convert(&["--force", path(&broken), path(&link)]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(fs::read(&victim).unwrap(), vec![9u8; 1 << 20]);
    assert!(fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    let out = convert(&["--force", path(&input), path(&link)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(fs::read(&victim).unwrap(), vec![9u8; 1 << 20]);
    assert!(fs::symlink_metadata(&link).unwrap().file_type().is_file());
    assert_eq!(fs::read(&link).unwrap(), vec![1u8; 1 << 20]);
}

#[test]
fn a_failed_conversion_keeps_an_existing_output_and_leaves_no_partial_file() {
    let dir = tempfile::tempdir().unwrap();
    let existing = disk(dir.path(), "out.raw", 2);
    let broken = dir.path().join("broken.qcow2");
    fs::write(&broken, b"QFI\xfb\0\0\0\x03 not really").unwrap();
    let out = convert(&["--force", path(&broken), path(&existing)]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(fs::read(&existing).unwrap(), vec![2u8; 1 << 20]);
    let fresh = dir.path().join("fresh.raw");
    let out = convert(&[path(&broken), path(&fresh)]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(names(dir.path()), ["broken.qcow2", "out.raw"]);
}

#[test]
fn sigterm_or_sigint_mid_conversion_leaves_no_image_and_no_partial_file() {
    for (signal, code) in [
        (rustix::process::Signal::TERM, 143),
        (rustix::process::Signal::INT, 130),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.raw");
        let mut child = Command::new(env!("CARGO_BIN_EXE_vm-import"))
            .args(["convert", "--progress", "none", "-", path(&target)])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        // Raw bytes that keep coming: the conversion is under way, its file being written.
        stdin.write_all(&vec![5u8; 4 << 20]).unwrap();
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(names(dir.path()).len(), 1, "a staged file exists mid-run");
        let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
        rustix::process::kill_process(pid, signal).unwrap();
        let status = child.wait().unwrap();
        drop(stdin);
        assert_eq!(status.code(), Some(code), "{signal:?}");
        assert_eq!(names(dir.path()), Vec::<String>::new(), "{signal:?}");
    }
}

#[test]
fn a_declared_format_that_the_bytes_contradict_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let raw = disk(dir.path(), "x.raw", 3);
    let named_vmdk = dir.path().join("disk.vmdk");
    fs::copy(&raw, &named_vmdk).unwrap();
    let out = convert(&[path(&named_vmdk), path(&dir.path().join("a.img"))]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("declared as VMDK"), "{}", stderr(&out));
    let out = convert(&["-f", "qcow2", path(&raw), path(&dir.path().join("b.img"))]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("declared as qcow2"), "{}", stderr(&out));
    let out = convert(&["-f", "raw", path(&named_vmdk), path(&dir.path().join("c.img"))]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(names(dir.path()), ["c.img", "disk.vmdk", "x.raw"]);
}
