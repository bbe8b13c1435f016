//! Shared helpers for the OVA tests: envelope fixtures, archive builders (the `tar` crate and GNU tar),
//! and digests from the system's `sha*sum` tools (an implementation independent of ours).

#![allow(
    dead_code,
    unreachable_pub,
    clippy::expect_used,
    clippy::panic,
    clippy::unwrap_used
)]

pub mod fixtures;

use std::{io::Read, path::Path, process::Command};

use ova::{Manifest, TarWalker, VmDescription};

/// Deterministic bytes (SplitMix64).
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// An archive of `members` in order, written by the `tar` crate with ustar headers.
pub fn build_with_tar_crate(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, data) in members {
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(1_700_000_000);
        builder.append_data(&mut header, name, *data).expect("append");
    }
    builder.into_inner().expect("finish tar")
}

/// An archive of `members` in order, written by GNU tar in `format` (`ustar`, `gnu`, `pax`).
pub fn build_with_gnu_tar(dir: &Path, format: &str, members: &[(&str, &[u8])]) -> Vec<u8> {
    for (name, data) in members {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, data).expect("write member");
    }
    let out = dir.join("out.tar");
    let mut cmd = Command::new("tar");
    cmd.arg(format!("--format={format}"))
        .arg("-cf")
        .arg(&out)
        .arg("-C")
        .arg(dir);
    for (name, _) in members {
        cmd.arg(name);
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run GNU tar ({e}); install `tar`"));
    assert!(status.success(), "GNU tar failed: {status}");
    std::fs::read(&out).expect("read archive")
}

/// `sha256sum`/`sha1sum`/`sha512sum` of `data`, as lower-case hex.
pub fn system_digest(tool: &str, data: &[u8]) -> String {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("blob");
    std::fs::write(&path, data).expect("write");
    let out = Command::new(tool)
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{tool}` ({e}); it ships with coreutils"));
    assert!(out.status.success(), "{tool} failed");
    String::from_utf8(out.stdout)
        .expect("utf8")
        .split_whitespace()
        .next()
        .expect("digest")
        .to_owned()
}

/// What a one-pass consumer learns from an OVA.
#[derive(Debug)]
pub struct Walked {
    pub vm: Option<VmDescription>,
    pub manifest: Option<Manifest>,
    /// (name, bytes) of every member that is neither the OVF nor the manifest.
    pub members: Vec<(String, Vec<u8>)>,
    /// Manifest verification failures, as messages.
    pub mismatches: Vec<String>,
}

/// Walks an OVA the way the converter will: OVF, manifest, then each file hashed as it streams by.
pub fn walk(archive: &[u8]) -> Result<Walked, Box<dyn std::error::Error>> {
    let mut walker = TarWalker::new(archive);
    let mut walked = Walked {
        vm: None,
        manifest: None,
        members: Vec::new(),
        mismatches: Vec::new(),
    };
    while let Some(mut entry) = walker.next_entry()? {
        let name = entry.name().to_owned();
        if name.ends_with(".ovf") {
            walked.vm = Some(ova::ovf::read_envelope(&mut entry)?);
        } else if name.ends_with(".mf") {
            walked.manifest = Some(Manifest::read_from(&mut entry)?);
        } else {
            let algorithm = walked
                .manifest
                .as_ref()
                .and_then(|m| m.get(&name))
                .map(|e| e.algorithm);
            let mut data = Vec::new();
            match algorithm {
                Some(algorithm) => {
                    let mut hashed = ova::HashingReader::new(&mut entry, algorithm);
                    hashed.read_to_end(&mut data)?;
                    let (_, algorithm, digest) = hashed.finish();
                    if let Err(e) = walked
                        .manifest
                        .as_ref()
                        .expect("manifest")
                        .verify(&name, algorithm, &digest)
                    {
                        walked.mismatches.push(e.to_string());
                    }
                }
                None => {
                    entry.read_to_end(&mut data)?;
                }
            }
            walked.members.push((name, data));
        }
    }
    Ok(walked)
}
