//! Hostile and corrupt images: every one must give a clear error naming the field or entry, never a
//! panic or a huge allocation.

// Test helpers outside #[test] fns fail loudly by design.
#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)]

mod common;

use std::io::Cursor;

use common::Rng;
use qcow2::{Error, ErrorKind, Qcow2Reader, Qcow2Writer};

const CLUSTER: usize = 65536;

/// A small valid image made by our writer (qemu-img validates the writer elsewhere): 4 MiB virtual,
/// data in clusters 0 and 20. Layout: header, L1 (cluster 1), refcount table (cluster 2), data...
fn image() -> Vec<u8> {
    let mut w = Qcow2Writer::new(Cursor::new(Vec::new()), 4 << 20).expect("writer");
    w.write_at(0, &[0x11; CLUSTER]).expect("write");
    w.write_at(20 * CLUSTER as u64, &[0x22; CLUSTER]).expect("write");
    w.finish().expect("finish").into_inner()
}

fn put_u32(img: &mut [u8], at: usize, v: u32) {
    img[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

fn put_u64(img: &mut [u8], at: usize, v: u64) {
    img[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

fn get_u64(img: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(img[at..at + 8].try_into().expect("8 bytes"))
}

fn open(img: Vec<u8>) -> Result<Qcow2Reader<Cursor<Vec<u8>>>, Error> {
    Qcow2Reader::new(Cursor::new(img))
}

fn read_everything(img: Vec<u8>) -> Result<(), Error> {
    let mut r = open(img)?;
    for e in r.extents() {
        e?;
    }
    // Corruption may grow the virtual size; the test only needs the mapped part it can read.
    let mut buf = vec![0u8; r.virtual_size().min(8 << 20) as usize];
    r.read_at(0, &mut buf)
}

#[test]
fn bad_magic_is_named() {
    let mut img = image();
    img[0] = b'X';
    let err = open(img).expect_err("bad magic");
    assert!(matches!(err, Error::BadMagic { found: 0x584649fb }), "{err}");
    assert_eq!(err.kind(), ErrorKind::InvalidImage);
    assert!(err.to_string().contains("not a qcow2 image"));
}

#[test]
fn truncated_header_and_empty_file() {
    for len in [0usize, 3, 8, 50, 100] {
        let img = image()[..len].to_vec();
        let err = open(img).expect_err("truncated");
        assert!(matches!(err, Error::InvalidHeader { .. }), "{len}: {err}");
    }
}

#[test]
fn unsupported_version_and_cluster_bits() {
    let mut img = image();
    put_u32(&mut img, 4, 4);
    assert!(matches!(
        open(img).expect_err("v4"),
        Error::UnsupportedVersion { version: 4 }
    ));
    for bits in [0u32, 8, 22, 63, u32::MAX] {
        let mut img = image();
        put_u32(&mut img, 20, bits);
        let err = open(img).expect_err("cluster bits");
        assert!(
            matches!(
                err,
                Error::InvalidHeader {
                    field: "cluster_bits",
                    ..
                }
            ),
            "{bits}: {err}"
        );
    }
}

#[test]
fn huge_l1_size_is_refused_without_allocating() {
    let mut img = image();
    put_u32(&mut img, 36, u32::MAX);
    let err = open(img).expect_err("huge L1");
    assert!(
        matches!(err, Error::InvalidHeader { field: "l1_size", .. }),
        "{err}"
    );

    // Within the 32 MiB cap but far beyond the file: refused before reading.
    let mut img = image();
    put_u32(&mut img, 36, 4 << 20);
    put_u64(&mut img, 24, 1 << 40);
    let err = open(img).expect_err("L1 past EOF");
    assert!(
        matches!(
            err,
            Error::InvalidHeader {
                field: "l1_table_offset",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("past the end of the file"), "{err}");
}

#[test]
fn l1_table_offset_outside_file_or_unaligned() {
    let mut img = image();
    put_u64(&mut img, 40, 1 << 50);
    let err = open(img).expect_err("L1 offset");
    assert!(
        matches!(
            err,
            Error::InvalidHeader {
                field: "l1_table_offset",
                ..
            }
        ),
        "{err}"
    );
    let mut img = image();
    put_u64(&mut img, 40, 12345);
    let err = open(img).expect_err("unaligned L1");
    assert!(
        matches!(
            err,
            Error::InvalidHeader {
                field: "l1_table_offset",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn l1_entry_pointing_outside_file() {
    let mut img = image();
    put_u64(&mut img, CLUSTER, (1 << 63) | (1u64 << 40));
    let err = open(img).expect_err("L2 outside");
    assert!(matches!(err, Error::CorruptL1Entry { index: 0, .. }), "{err}");
    assert!(err.to_string().contains("outside the file"), "{err}");

    let mut img = image();
    put_u64(&mut img, CLUSTER, (1 << 63) | 0x1200);
    let err = open(img).expect_err("unaligned L2");
    assert!(matches!(err, Error::CorruptL1Entry { index: 0, .. }), "{err}");
}

#[test]
fn l2_entries_pointing_outside_file_or_garbage_compressed() {
    let img = image();
    let l2 = (get_u64(&img, CLUSTER) & 0x00ff_ffff_ffff_fe00) as usize;

    let mut bad = img.clone();
    put_u64(&mut bad, l2, (1 << 63) | (1u64 << 45));
    let err = read_everything(bad).expect_err("data outside");
    assert!(
        matches!(err, Error::CorruptL2Entry { guest_offset: 0, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("outside the file"), "{err}");

    let mut bad = img.clone();
    put_u64(&mut bad, l2, (1 << 63) | 0x10200);
    let err = read_everything(bad).expect_err("unaligned data");
    assert!(matches!(err, Error::CorruptL2Entry { .. }), "{err}");

    // A compressed descriptor pointing at the header bytes: not a deflate stream of one cluster.
    let mut bad = img.clone();
    put_u64(&mut bad, l2, (1 << 62) | (3u64 << 54) | 8);
    let err = read_everything(bad).expect_err("garbage deflate");
    assert!(
        matches!(err, Error::BadCompressedCluster { guest_offset: 0, .. }),
        "{err}"
    );

    // Zero flag in a v2 image is corruption.
    let mut bad = img;
    put_u32(&mut bad, 4, 2);
    put_u64(&mut bad, l2, 1);
    let err = read_everything(bad).expect_err("v2 zero flag");
    assert!(matches!(err, Error::CorruptL2Entry { .. }), "{err}");
}

#[test]
fn truncated_images_error_or_read_zeros_never_panic() {
    let img = image();
    for cut in (0..img.len()).step_by(4099) {
        let _ = read_everything(img[..cut].to_vec());
    }
    // Cut inside the last data cluster: the L2 table after it is gone, which is an error.
    let err = read_everything(img[..img.len() - 3 * CLUSTER].to_vec()).expect_err("cut");
    assert!(matches!(err, Error::CorruptL1Entry { .. }), "{err}");
}

#[test]
fn random_corruption_never_panics() {
    let img = image();
    let mut rng = Rng(1234);
    for _ in 0..3000 {
        let mut bad = img.clone();
        for _ in 0..1 + rng.below(6) {
            // Mostly the metadata: header, L1, refcount table, and the L2 at the end.
            let at = if rng.below(3) == 0 {
                img.len() - 2 * CLUSTER + rng.below(CLUSTER as u64) as usize
            } else {
                rng.below(3 * CLUSTER as u64) as usize
            };
            let shift = rng.below(8);
            bad[at] ^= 1 << shift;
            if rng.below(4) == 0 {
                bad[at] = rng.below(256) as u8;
            }
        }
        let _ = read_everything(bad);
    }
}

#[test]
fn reads_past_virtual_size_are_refused() {
    let mut r = open(image()).expect("open");
    let mut buf = [0u8; 16];
    let err = r.read_at((4 << 20) - 8, &mut buf).expect_err("past end");
    assert!(matches!(err, Error::OutOfBounds { .. }), "{err}");
    let err = r.read_at(u64::MAX - 4, &mut buf).expect_err("overflow");
    assert!(matches!(err, Error::OutOfBounds { .. }), "{err}");
    assert!(matches!(r.extent_at(4 << 20), Err(Error::OutOfBounds { .. })));
}

#[test]
fn extended_l2_subcluster_both_allocated_and_zero_is_corrupt() {
    let dir = tempfile::tempdir().expect("tmp");
    let img = dir.path().join("ext.qcow2");
    let img_str = img.to_str().expect("utf8");
    common::run_ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "extended_l2=on",
            img_str,
            "1M",
        ],
    );
    common::run_ok("qemu-io", &["-f", "qcow2", "-c", "write -P 0x7 0 4k", img_str]);
    let mut bytes = std::fs::read(&img).expect("read");
    let l1 = u64::from_be_bytes(bytes[40..48].try_into().expect("8")) as usize;
    let l2 = (get_u64(&bytes, l1) & 0x00ff_ffff_ffff_fe00) as usize;
    let bitmap = get_u64(&bytes, l2 + 8);
    assert_eq!(
        bitmap & 0b11,
        0b11,
        "qemu-io allocated subclusters 0 and 1 (2 KiB each)"
    );
    put_u64(&mut bytes, l2 + 8, bitmap | 1 << 32);
    let err = read_everything(bytes).expect_err("alloc + zero");
    assert!(err.to_string().contains("both allocated and zero"), "{err}");
}
