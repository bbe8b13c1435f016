//! [`Qcow2Forward`] against images written by the real `qemu-img`/`qemu-io`, read from a forward-only
//! reader (sometimes a few bytes per call): plain and compressed (`-c`) images, v2 and v3, several
//! cluster sizes, a disk larger than one L2 table's reach, zero clusters; a qcow2 whose data precedes
//! its tables beyond the window fails naming the offset; refused features fail clearly.

// Test helpers outside #[test] fns fail loudly by design.
#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)]

mod common;

use std::{fs::File, io::Read};

use common::{join, path_str, run_ok, sparse_content, tmp, write_file};
use qcow2::{Qcow2Forward, forward::DEFAULT_WINDOW};

const MIB: usize = 1 << 20;

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

fn decode(input: impl Read, window: usize) -> Result<Vec<u8>, qcow2::forward::Error> {
    let mut decoder = Qcow2Forward::new(input, window)?;
    let mut disk = vec![0u8; decoder.virtual_size() as usize];
    let mut cluster = Vec::new();
    let mut end = 0u64;
    while let Some(offset) = decoder.next_cluster(&mut cluster)? {
        assert!(offset >= end, "cluster at {offset} after one ending at {end}");
        disk[offset as usize..offset as usize + cluster.len()].copy_from_slice(&cluster);
        end = offset + cluster.len() as u64;
        cluster.clear();
    }
    Ok(disk)
}

fn convert(raw: &std::path::Path, out: &std::path::Path, extra: &[&str]) {
    let mut args = vec!["convert", "-q", "-f", "raw", "-O", "qcow2"];
    args.extend_from_slice(extra);
    args.push(path_str(raw));
    args.push(path_str(out));
    run_ok("qemu-img", &args);
}

#[test]
fn qemu_images_decode_forward_identical() {
    let cases: [(&[&str], usize); 6] = [
        (&[], 1),
        (&["-c"], 4096),
        (&["-o", "compat=0.10"], 1 << 20),
        (&["-o", "cluster_size=4096"], 3),
        (&["-c", "-o", "cluster_size=2M"], 1 << 20),
        (&["-o", "cluster_size=512"], 1 << 16),
    ];
    for (seed, (extra, step)) in cases.iter().enumerate() {
        let dir = tmp();
        let raw = join(&dir, "disk.raw");
        let img = join(&dir, "disk.qcow2");
        // Sector aligned (qemu-img rounds a raw size up to 512) but not cluster aligned.
        let size = 5 * MIB + 12_800 * (seed % 2);
        let data = sparse_content(seed as u64 + 1, size, 12);
        write_file(&raw, &data);
        convert(&raw, &img, extra);
        let got = decode(
            Trickle {
                inner: File::open(&img).unwrap(),
                step: *step,
            },
            DEFAULT_WINDOW,
        )
        .unwrap_or_else(|e| panic!("{extra:?}: {e}"));
        let first = got.iter().zip(&data).position(|(a, b)| a != b);
        assert!(
            got == data,
            "{extra:?}: content differs from the raw original at {first:?}"
        );
    }
}

/// 1.2 GiB with 64 KiB clusters needs three L2 tables; data at the start, middle and end, plus a
/// compressed copy: the later tables are captured while the walk passes them.
#[test]
fn several_l2_tables_plain_and_compressed() {
    let dir = tmp();
    let raw = join(&dir, "disk.raw");
    let size = 1200 * MIB;
    let f = File::create(&raw).unwrap();
    f.set_len(size as u64).unwrap();
    drop(f);
    let pieces = [(0usize, 0x11u8), (600 * MIB, 0x22), (size - 3 * MIB, 0x33)];
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&raw).unwrap();
        for (at, byte) in pieces {
            let run: Vec<u8> = (0..2 * MIB).map(|i| byte ^ (i % 251) as u8).collect();
            f.write_all_at(&run, at as u64).unwrap();
        }
    }
    let data = std::fs::read(&raw).unwrap();
    for extra in [&[][..], &["-c"][..]] {
        let img = join(&dir, "disk.qcow2");
        convert(&raw, &img, extra);
        let got = decode(File::open(&img).unwrap(), DEFAULT_WINDOW).unwrap();
        assert!(got == data, "{extra:?}: content differs");
    }
}

/// Zero clusters (v3 zero flag) and unallocated ranges read as zeros.
#[test]
fn zero_clusters_read_as_zeros() {
    let dir = tmp();
    let img = join(&dir, "z.qcow2");
    run_ok("qemu-img", &["create", "-q", "-f", "qcow2", path_str(&img), "4M"]);
    run_ok(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x5a 0 2M",
            "-c",
            "write -z 512k 512k",
            "-c",
            "write -c -P 0x66 3M 64k",
            path_str(&img),
        ],
    );
    let mut expected = vec![0u8; 4 * MIB];
    expected[..2 * MIB].fill(0x5a);
    expected[512 << 10..MIB].fill(0);
    expected[3 * MIB..3 * MIB + 65536].fill(0x66);
    let got = decode(File::open(&img).unwrap(), DEFAULT_WINDOW).unwrap();
    assert!(got == expected, "content differs");
}

/// qemu-io writes the end of the disk first, then the start: the end's clusters are held while the
/// walk reads on to the start's (2 MiB, within the reorder budget, with a window of only 1 MiB).
/// 56 MiB written first exceed the budget and the window together: the error names an offset.
#[test]
fn disorder_is_held_within_the_budget_and_beyond_it_is_a_clear_error() {
    let dir = tmp();
    let img = join(&dir, "rev.qcow2");
    run_ok("qemu-img", &["create", "-q", "-f", "qcow2", path_str(&img), "8M"]);
    run_ok(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x77 6M 2M",
            "-c",
            "write -P 0x11 0 64k",
            path_str(&img),
        ],
    );
    let mut expected = vec![0u8; 8 * MIB];
    expected[6 * MIB..].fill(0x77);
    expected[..65536].fill(0x11);
    assert!(decode(File::open(&img).unwrap(), 1 << 20).unwrap() == expected);

    let big = join(&dir, "big.qcow2");
    run_ok(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", path_str(&big), "64M"],
    );
    run_ok(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x77 8M 56M",
            "-c",
            "write -P 0x11 0 64k",
            path_str(&big),
        ],
    );
    let Err(err) = decode(File::open(&big).unwrap(), DEFAULT_WINDOW) else {
        panic!("decoded a layout that needs random access");
    };
    assert!(err.needs_random_access(), "{err}");
    assert!(err.offset().is_some());
    assert!(err.to_string().contains("cannot be read in one pass"), "{err}");
}

/// `qemu-img convert -c` of a disk alternating incompressible and text regions interleaves the
/// compressed clusters of one region with the plain clusters of the region before, across tens
/// of MiB: the compressed ones are held until their turn.
#[test]
fn compressed_convert_with_interleaved_regions() {
    let dir = tmp();
    let raw = join(&dir, "disk.raw");
    let img = join(&dir, "disk.qcow2");
    let region = 24 * MIB;
    let mut data = sparse_content(5, 4 * region, 0);
    for (i, chunk) in data.chunks_mut(region).enumerate() {
        if i % 2 == 0 {
            common::Rng(i as u64 + 1).fill(chunk);
        } else {
            for (j, b) in chunk.iter_mut().enumerate() {
                *b = b'a' + (j % 23) as u8;
            }
        }
    }
    write_file(&raw, &data);
    convert(&raw, &img, &["-c"]);
    let got = decode(File::open(&img).unwrap(), DEFAULT_WINDOW).unwrap();
    assert!(got == data, "content differs");
}

#[test]
fn refuses_backing_file_and_extended_l2() {
    let dir = tmp();
    let base = join(&dir, "base.qcow2");
    let top = join(&dir, "top.qcow2");
    run_ok(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", path_str(&base), "1M"],
    );
    run_ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            path_str(&base),
            "-F",
            "qcow2",
            path_str(&top),
        ],
    );
    let err = decode(File::open(&top).unwrap(), DEFAULT_WINDOW).expect_err("backing file");
    let chain = format!(
        "{err}: {}",
        std::error::Error::source(&err)
            .map(|s| s.to_string())
            .unwrap_or_default()
    );
    assert!(chain.contains("base.qcow2"), "{chain}");
    let ext = join(&dir, "ext.qcow2");
    run_ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "extended_l2=on",
            path_str(&ext),
            "1M",
        ],
    );
    let err = decode(File::open(&ext).unwrap(), DEFAULT_WINDOW).expect_err("extended L2");
    assert!(matches!(err, qcow2::forward::Error::Unsupported(_)), "{err}");
}

#[test]
fn truncated_image_is_an_error() {
    let dir = tmp();
    let raw = join(&dir, "disk.raw");
    let img = join(&dir, "disk.qcow2");
    write_file(&raw, &sparse_content(9, 3 * MIB, 6));
    convert(&raw, &img, &[]);
    let bytes = std::fs::read(&img).unwrap();
    for cut in [50, 300 << 10, bytes.len() / 2] {
        let err = decode(&bytes[..cut], DEFAULT_WINDOW).expect_err("truncated");
        assert!(
            matches!(
                err,
                qcow2::forward::Error::Window(window::Error::Truncated { .. })
                    | qcow2::forward::Error::Image(_)
            ),
            "{cut}: {err}"
        );
    }
}
