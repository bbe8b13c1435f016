//! Shared helpers for the qcow2 integration tests: the real `qemu-img`/`qemu-io` oracle, deterministic
//! pseudo-random sparse content, and file helpers.

#![allow(dead_code, unreachable_pub, clippy::expect_used, clippy::panic)]

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// Runs a qemu tool, failing the test (never skipping) when it is missing or fails.
pub fn run(tool: &str, args: &[&str]) -> std::process::Output {
    Command::new(tool).args(args).output().unwrap_or_else(|e| {
        panic!("cannot run `{tool}` ({e}); install it with `apt-get install qemu-utils` — these tests need the real tool")
    })
}

/// Runs a qemu tool and asserts it succeeded.
pub fn run_ok(tool: &str, args: &[&str]) -> String {
    let out = run(tool, args);
    assert!(
        out.status.success(),
        "`{tool} {}` failed ({}):\nstdout: {}\nstderr: {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// SplitMix64: small, deterministic, good enough to make test content.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// A disk image of `size` bytes: zeros with `runs` random runs of random data (some compressible
/// text-like, some incompressible), a run touching the very last byte, and one all-zero-but-written
/// stretch for the caller to find unallocated.
pub fn sparse_content(seed: u64, size: usize, runs: usize) -> Vec<u8> {
    let mut rng = Rng(seed);
    let mut disk = vec![0u8; size];
    if size == 0 {
        return disk;
    }
    for i in 0..runs {
        let start = rng.below(size as u64) as usize;
        let len = (1 + rng.below(200 << 10) as usize).min(size - start);
        let run = &mut disk[start..start + len];
        if i % 2 == 0 {
            rng.fill(run);
        } else {
            let byte = (rng.below(255) + 1) as u8;
            for (j, b) in run.iter_mut().enumerate() {
                *b = if j % 7 == 0 { byte } else { b'a' + (j % 26) as u8 };
            }
        }
    }
    let tail = size.saturating_sub(100);
    rng.fill(&mut disk[tail..]);
    disk
}

pub fn write_file(path: &Path, data: &[u8]) {
    std::fs::write(path, data).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

pub fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

pub fn join(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}
