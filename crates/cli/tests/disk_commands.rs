//! `vm-import convert` and `inspect` as a user runs them: real qemu-img images, stdin pipes, the
//! report file, JSON progress, and the exit-code contract (0 ok, 1 bad input, 2 usage).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vm-import"))
}

fn qemu_img(args: &[&str]) {
    let status = Command::new("qemu-img")
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("cannot run qemu-img ({e}); install it: apt-get install qemu-utils"));
    assert!(status.success(), "qemu-img {args:?} failed");
}

/// A 1 MiB + 512 raw disk with data at the start, the middle and the last sector, and its
/// streamOptimized VMDK.
fn fixture(dir: &Path) -> (PathBuf, PathBuf) {
    let raw = dir.join("disk.raw");
    let mut content = vec![0u8; (1 << 20) + 512];
    content[..3000].fill(b'a');
    content[500_000..600_000]
        .iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b = (i * 7 % 251) as u8);
    let len = content.len();
    content[len - 10..].fill(b'z');
    fs::write(&raw, &content).unwrap();
    let vmdk = dir.join("disk.vmdk");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "vmdk",
        "-o",
        "subformat=streamOptimized",
        raw.to_str().unwrap(),
        vmdk.to_str().unwrap(),
    ]);
    (raw, vmdk)
}

fn run_with_stdin(cmd: &mut Command, stdin: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

#[test]
fn convert_file_writes_identical_raw_and_report() {
    let dir = tempfile::tempdir().unwrap();
    let (raw, vmdk) = fixture(dir.path());
    let out = dir.path().join("out.raw");
    let report = dir.path().join("report.json");
    let result = bin()
        .args(["convert", "--progress", "none", "--report"])
        .arg(&report)
        .arg(&vmdk)
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    assert_eq!(fs::read(&out).unwrap(), fs::read(&raw).unwrap());
    let json: serde_json::Value = serde_json::from_slice(&fs::read(&report).unwrap()).unwrap();
    let disk = &json["disks"][0];
    assert_eq!(disk["virtual_size"], (1 << 20) + 512);
    assert_eq!(disk["bytes_read"], fs::metadata(&vmdk).unwrap().len());
    assert!(disk["bytes_written"].as_u64().unwrap() > 0);
    assert!(disk["seconds"].as_f64().is_some());
    assert_eq!(
        disk["checksum"],
        serde_json::Value::Null,
        "no digest unless asked"
    );

    // Asked for, the digest is of the disk's content, in the report and the summary.
    for (algorithm, tool) in [("sha256", "sha256sum"), ("sha512", "sha512sum")] {
        let out = dir.path().join(format!("out-{algorithm}.raw"));
        let result = bin()
            .args([
                "convert",
                "--progress",
                "none",
                "--checksum",
                algorithm,
                "--report",
            ])
            .arg(&report)
            .arg(&vmdk)
            .arg(&out)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert!(result.status.success(), "{stderr}");
        let json: serde_json::Value = serde_json::from_slice(&fs::read(&report).unwrap()).unwrap();
        let checksum = &json["disks"][0]["checksum"];
        assert_eq!(checksum["algorithm"], algorithm, "{json}");
        let hex = checksum["hex"].as_str().unwrap();
        let expected = Command::new(tool).arg(&raw).output().unwrap();
        assert!(
            String::from_utf8_lossy(&expected.stdout).starts_with(hex),
            "{algorithm}"
        );
        assert!(stderr.contains(&format!("{algorithm} {hex}")), "{stderr}");
    }
}

#[test]
fn convert_stdin_to_qcow2_with_json_progress() {
    let dir = tempfile::tempdir().unwrap();
    let (raw, vmdk) = fixture(dir.path());
    let out = dir.path().join("out.qcow2");
    let result = run_with_stdin(
        bin()
            .args([
                "convert",
                "-O",
                "qcow2",
                "--threads",
                "2",
                "--progress",
                "json",
                "-",
            ])
            .arg(&out),
        &fs::read(&vmdk).unwrap(),
    );
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let stderr = String::from_utf8_lossy(&result.stderr);
    let last_progress = stderr
        .lines()
        .rfind(|l| l.starts_with('{'))
        .expect("a JSON progress line");
    let progress: serde_json::Value = serde_json::from_str(last_progress).unwrap();
    assert_eq!(progress["event"], "progress");
    assert_eq!(progress["position"], progress["virtual_size"]);
    qemu_img(&["check", "-q", out.to_str().unwrap()]);
    qemu_img(&[
        "compare",
        "-q",
        "-f",
        "raw",
        "-F",
        "qcow2",
        raw.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
}

#[test]
fn convert_to_stdout_streams_raw() {
    let dir = tempfile::tempdir().unwrap();
    let (raw, vmdk) = fixture(dir.path());
    let result = bin()
        .args(["convert", "--progress", "none"])
        .arg(&vmdk)
        .arg("-")
        .output()
        .unwrap();
    assert!(result.status.success());
    assert_eq!(result.stdout, fs::read(&raw).unwrap());
}

#[test]
fn truncated_stream_exits_1_naming_input_and_offset_and_leaves_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let (_, vmdk) = fixture(dir.path());
    let bytes = fs::read(&vmdk).unwrap();
    let out = dir.path().join("out.raw");
    // qemu puts the first grain at 64 KiB; it compresses into one sector, so the second grain
    // record starts at 66048. Cut inside it.
    let result = run_with_stdin(
        bin().args(["convert", "--progress", "none", "-"]).arg(&out),
        &bytes[..66_300],
    );
    assert_eq!(result.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(
        stderr.contains("<stdin>") && stderr.contains("truncated at offset 66048"),
        "{stderr}"
    );
    assert!(!out.exists());
}

#[test]
fn garbage_file_is_converted_as_raw_but_bad_vmdk_header_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.vmdk");
    let mut header = vec![0u8; 1024];
    header[..4].copy_from_slice(b"KDMV");
    header[4] = 1; // version 1, grain size 0: invalid
    fs::write(&bad, &header).unwrap();
    let result = bin()
        .args(["convert", "--progress", "none"])
        .arg(&bad)
        .arg(dir.path().join("o.raw"))
        .output()
        .unwrap();
    assert_eq!(result.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(
        stderr.contains("bad.vmdk") && stderr.contains("byte offset 0"),
        "{stderr}"
    );
}

#[test]
fn usage_errors_exit_2() {
    let missing = bin().args(["convert", "only-input"]).output().unwrap();
    assert_eq!(missing.status.code(), Some(2));
    let qcow2_stdout = bin()
        .args(["convert", "-O", "qcow2", "in", "-"])
        .output()
        .unwrap();
    assert_eq!(qcow2_stdout.status.code(), Some(2));
    let bad_format = bin()
        .args(["convert", "-O", "vhd", "in", "out"])
        .output()
        .unwrap();
    assert_eq!(bad_format.status.code(), Some(2));
}

#[test]
fn inspect_prints_vmdk_facts_from_file_and_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let (_, vmdk) = fixture(dir.path());
    let from_file = bin().arg("inspect").arg(&vmdk).output().unwrap();
    assert!(
        from_file.status.success(),
        "{}",
        String::from_utf8_lossy(&from_file.stderr)
    );
    let from_stdin = run_with_stdin(bin().args(["inspect", "-"]), &fs::read(&vmdk).unwrap());
    assert!(
        from_stdin.status.success(),
        "{}",
        String::from_utf8_lossy(&from_stdin.stderr)
    );
    for out in [from_file, from_stdin] {
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(json["format"], "vmdk");
        assert_eq!(json["subformat"], "streamOptimized");
        assert_eq!(json["virtual_size"], (1 << 20) + 512);
        assert_eq!(json["grain_size"], 65536);
        assert_eq!(json["adapter_type"], "ide");
        assert_eq!(json["virtual_hw_version"], "4");
        assert!(json["allocated"].as_u64().unwrap() >= 3 * 65536);
    }
}

#[test]
fn completion_scripts_cover_the_grammar_and_bash_accepts_its_own() {
    for shell in ["bash", "zsh", "fish"] {
        let out = bin().args(["completion", shell]).output().unwrap();
        assert!(
            out.status.success(),
            "{shell}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let script = String::from_utf8(out.stdout).unwrap();
        for word in ["convert", "vsphere", "openstack", "checksum", "served-format"] {
            assert!(script.contains(word), "{shell} completion lacks {word}");
        }
        if shell == "bash" {
            let mut check = Command::new("bash")
                .arg("-n")
                .stdin(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            std::io::Write::write_all(&mut check.stdin.take().unwrap(), script.as_bytes()).unwrap();
            assert!(check.wait().unwrap().success(), "bash -n refuses the script");
        }
    }
    let out = bin().args(["completion", "tcsh"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "an unknown shell is a usage error");
}
