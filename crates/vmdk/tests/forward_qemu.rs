//! Property test against the real `qemu-img`: random sparse disk content written by qemu-img as
//! a monolithicSparse VMDK, read back through [`SparseForward`] from a forward-only reader (one
//! byte-at-a-time trickle for some cases), equals the original. qemu-img is required (apt:
//! qemu-utils).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{fs, io::Read, path::Path, process::Command};

use proptest::prelude::*;
use vmi_vmdk::{SparseForward, forward::DEFAULT_WINDOW};

fn qemu_img(args: &[&str], raw: &Path, out: &Path) {
    let status = Command::new("qemu-img")
        .args(args)
        .arg(raw)
        .arg(out)
        .status()
        .unwrap_or_else(|e| panic!("cannot run qemu-img ({e}); install it: apt-get install qemu-utils"));
    assert!(status.success(), "qemu-img {args:?} failed");
}

/// A `Read` that hands out at most `step` bytes per call and cannot seek.
struct Trickle<R> {
    inner: R,
    step: usize,
}

impl<R: Read> Read for Trickle<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.step);
        self.inner.read(&mut buf[..n])
    }
}

/// Decodes with [`SparseForward`] and lays the grains out as a raw disk, checking they ascend.
fn decode(input: impl Read, window: usize) -> Vec<u8> {
    let mut decoder = SparseForward::new(input, window).unwrap();
    let mut disk = vec![0u8; decoder.capacity() as usize];
    let mut grain = Vec::new();
    let mut end = 0u64;
    while let Some(offset) = decoder.next_grain(&mut grain).unwrap() {
        assert!(offset >= end, "grain at {offset} after one ending at {end}");
        disk[offset as usize..offset as usize + grain.len()].copy_from_slice(&grain);
        end = offset + grain.len() as u64;
        grain.clear();
    }
    disk
}

/// Sparse content: a size in sectors and some runs of bytes at sector offsets.
fn content() -> impl Strategy<Value = Vec<u8>> {
    (
        1u64..=20_000,
        prop::collection::vec((0u64..20_000, 1usize..300_000, any::<u8>()), 0..8),
    )
        .prop_map(|(sectors, runs)| {
            let len = (sectors * 512) as usize;
            let mut data = vec![0u8; len];
            for (at, run_len, byte) in runs {
                let start = ((at * 512) as usize).min(len);
                let end = (start + run_len).min(len);
                for (i, b) in data[start..end].iter_mut().enumerate() {
                    *b = byte ^ (i as u8).wrapping_mul(31);
                }
            }
            data
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn qemu_monolithic_sparse_decodes_forward_identical(data in content(), step in prop::sample::select(vec![1usize, 4096, 1 << 20])) {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("disk.raw");
        let vmdk = dir.path().join("disk.vmdk");
        fs::write(&raw, &data).unwrap();
        qemu_img(&["convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=monolithicSparse"], &raw, &vmdk);
        let input = Trickle { inner: fs::File::open(&vmdk).unwrap(), step };
        let out = decode(input, DEFAULT_WINDOW);
        prop_assert_eq!(out.len(), data.len());
        prop_assert!(out == data, "decoded bytes differ from the raw disk");
    }
}

/// A 64 MiB disk with data at both ends converts with a small window: the grain tables are
/// captured on the way, and qemu-img's layout (tables, then grains in order) needs no disorder.
#[test]
fn large_disk_with_small_window() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    let vmdk = dir.path().join("disk.vmdk");
    let mut data = vec![0u8; 64 << 20];
    data[..1 << 20].fill(0x11);
    let end = data.len();
    data[end - (3 << 20)..end - (1 << 19)].fill(0x22);
    data[40 << 20] = 7;
    fs::write(&raw, &data).unwrap();
    qemu_img(
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "-o",
            "subformat=monolithicSparse",
        ],
        &raw,
        &vmdk,
    );
    let out = decode(fs::File::open(&vmdk).unwrap(), 1 << 20);
    assert!(out == data, "decoded bytes differ");
}
