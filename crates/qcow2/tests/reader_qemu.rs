//! The reader against images written by the real `qemu-img`/`qemu-io`: every combination of version
//! and cluster size, compressed images, zero clusters, and the features we must refuse.

// Test helpers outside #[test] fns fail loudly by design.
#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)]

mod common;

use std::{fs::File, io::BufReader};

use common::{join, path_str, run, run_ok, sparse_content, tmp, write_file};
use qcow2::{ErrorKind, ExtentKind, Qcow2Reader};

const MIB: usize = 1 << 20;

fn open(path: &std::path::Path) -> Qcow2Reader<BufReader<File>> {
    let file = File::open(path).expect("open qcow2");
    Qcow2Reader::new(BufReader::new(file)).unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

/// Reads the whole disk through `read_at` in odd-sized pieces, and checks the extents are consistent
/// with the content (no non-zero byte outside a Data extent) and cover the disk exactly.
fn read_all_and_check_extents(reader: &mut Qcow2Reader<BufReader<File>>, expected: &[u8]) {
    let size = reader.virtual_size();
    assert_eq!(size, expected.len() as u64);
    let mut got = vec![0u8; expected.len()];
    let mut off = 0usize;
    let mut step = 1usize;
    while off < got.len() {
        let n = (step * 4093).min(got.len() - off);
        reader
            .read_at(off as u64, &mut got[off..off + n])
            .expect("read_at");
        off += n;
        step = step % 97 + 13;
    }
    assert!(got == expected, "content differs from the raw original");

    let extents: Vec<_> = reader.extents().collect::<Result<_, _>>().expect("extents");
    let mut pos = 0;
    for e in &extents {
        assert_eq!(e.offset, pos, "extents must be contiguous");
        assert!(e.len > 0);
        if e.kind.reads_as_zero() {
            let range = &expected[e.offset as usize..e.end() as usize];
            assert!(
                range.iter().all(|&b| b == 0),
                "non-zero bytes in a {:?} extent at {:#x}",
                e.kind,
                e.offset
            );
        }
        pos = e.end();
    }
    assert_eq!(pos, size);
    for pair in extents.windows(2) {
        assert_ne!(
            pair[0].kind, pair[1].kind,
            "adjacent extents of one kind must be merged"
        );
    }
}

#[test]
fn reads_qemu_images_of_every_version_and_cluster_size() {
    let dir = tmp();
    // Not a multiple of any cluster size, so the last cluster is partial.
    let size = 9 * MIB + 4096 + 512;
    let content = sparse_content(7, size, 24);
    let raw = join(&dir, "disk.raw");
    write_file(&raw, &content);
    for compat in ["0.10", "1.1"] {
        for cluster in [4096u32, 65536, 2 << 20] {
            let out = join(&dir, &format!("disk-{compat}-{cluster}.qcow2"));
            let opts = format!("compat={compat},cluster_size={cluster}");
            run_ok(
                "qemu-img",
                &[
                    "convert",
                    "-f",
                    "raw",
                    "-O",
                    "qcow2",
                    "-o",
                    &opts,
                    path_str(&raw),
                    path_str(&out),
                ],
            );
            let mut reader = open(&out);
            assert_eq!(reader.header().version, if compat == "0.10" { 2 } else { 3 });
            assert_eq!(reader.cluster_size(), u64::from(cluster));
            read_all_and_check_extents(&mut reader, &content);
            let data: u64 = reader
                .extents()
                .map(|e| e.expect("extent"))
                .filter(|e| e.kind == ExtentKind::Data)
                .map(|e| e.len)
                .sum();
            // qemu-img convert allocates exactly the clusters holding a non-zero byte.
            let nonzero: u64 = content
                .chunks(cluster as usize)
                .filter(|c| c.iter().any(|&b| b != 0))
                .map(|c| c.len() as u64)
                .sum();
            assert_eq!(
                data, nonzero,
                "allocated bytes, compat={compat} cluster={cluster}"
            );
        }
    }
}

#[test]
fn reads_compressed_clusters() {
    let dir = tmp();
    let size = 6 * MIB + 1024;
    let content = sparse_content(11, size, 16);
    let raw = join(&dir, "disk.raw");
    write_file(&raw, &content);
    for cluster in [4096u32, 65536, 1 << 20] {
        let out = join(&dir, &format!("c-{cluster}.qcow2"));
        let opts = format!("cluster_size={cluster}");
        run_ok(
            "qemu-img",
            &[
                "convert",
                "-c",
                "-f",
                "raw",
                "-O",
                "qcow2",
                "-o",
                &opts,
                path_str(&raw),
                path_str(&out),
            ],
        );
        let mut reader = open(&out);
        read_all_and_check_extents(&mut reader, &content);
    }
}

#[test]
fn reads_zero_clusters_as_zero_extents() {
    let dir = tmp();
    let img = join(&dir, "z.qcow2");
    run_ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "compat=1.1",
            path_str(&img),
            "4M",
        ],
    );
    // Allocate data, then zero part of it (qemu sets the L2 zero flag), and zero an unallocated range.
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
            "write -z 3M 64k",
            path_str(&img),
        ],
    );
    let mut expected = vec![0u8; 4 * MIB];
    expected[..2 * MIB].fill(0x5a);
    expected[512 << 10..MIB].fill(0);
    let mut reader = open(&img);
    read_all_and_check_extents(&mut reader, &expected);
    let extents: Vec<_> = reader.extents().collect::<Result<_, _>>().expect("extents");
    assert!(
        extents
            .iter()
            .any(|e| e.kind == ExtentKind::Zero && e.offset == 512 << 10 && e.len == 512 << 10),
        "expected a Zero extent at 512 KiB, got {extents:?}"
    );
    assert_eq!(extents[0].kind, ExtentKind::Data);
    assert_eq!(extents.last().map(|e| e.kind), Some(ExtentKind::Unallocated));
}

#[test]
fn refuses_backing_file_naming_it() {
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
    let err = Qcow2Reader::new(File::open(&top).expect("open")).expect_err("backing file must be refused");
    assert_eq!(err.kind(), ErrorKind::Unsupported);
    let msg = err.to_string();
    assert!(
        msg.contains("backing file") && msg.contains("base.qcow2"),
        "{msg}"
    );
}

#[test]
fn refuses_encrypted_image() {
    let dir = tmp();
    let img = join(&dir, "enc.qcow2");
    let args = [
        "create",
        "-q",
        "-f",
        "qcow2",
        "--object",
        "secret,id=sec0,data=secret123",
        "-o",
        "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10",
        path_str(&img),
        "1M",
    ];
    // qemu's PBKDF calibration can fail with "Unable to get accurate CPU usage" on a loaded machine;
    // that is qemu timing itself, not our code, so give it a few tries.
    let mut out = run("qemu-img", &args);
    for _ in 0..4 {
        if out.status.success() || !String::from_utf8_lossy(&out.stderr).contains("accurate CPU usage") {
            break;
        }
        out = run("qemu-img", &args);
    }
    assert!(
        out.status.success(),
        "qemu-img create (LUKS) failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = Qcow2Reader::new(File::open(&img).expect("open")).expect_err("encryption must be refused");
    assert!(matches!(err, qcow2::Error::Encrypted { method: 2 }), "{err}");
}

#[test]
fn refuses_zstd() {
    let dir = tmp();
    let zstd = join(&dir, "zstd.qcow2");
    let out = run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "compression_type=zstd",
            path_str(&zstd),
            "1M",
        ],
    );
    assert!(
        out.status.success(),
        "this qemu-img lacks zstd: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = Qcow2Reader::new(File::open(&zstd).expect("open")).expect_err("zstd must be refused");
    assert!(err.to_string().contains("zstd"), "{err}");
}

/// Extended L2 entries (`extended_l2=on`): 32 subclusters per cluster, each allocated, zero or
/// unallocated on its own; written piecemeal by qemu-io so clusters mix all three, plus a compressed
/// cluster.
#[test]
fn reads_extended_l2_subclusters() {
    let dir = tmp();
    let img = join(&dir, "ext.qcow2");
    run_ok(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "extended_l2=on,cluster_size=64k",
            path_str(&img),
            "4M",
        ],
    );
    run_ok(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x11 0 4k",
            "-c",
            "write -P 0x22 6k 2k",
            "-c",
            "write -z 10k 4k",
            "-c",
            "write -P 0x33 1M 64k",
            "-c",
            "write -z 1040k 8k",
            "-c",
            "write -c -P 0x44 2M 64k",
            "-c",
            "write -P 0x55 3M 3k",
            path_str(&img),
        ],
    );
    let mut expected = vec![0u8; 4 * MIB];
    expected[..4096].fill(0x11);
    expected[6144..8192].fill(0x22);
    expected[MIB..MIB + 65536].fill(0x33);
    expected[1040 << 10..1048 << 10].fill(0);
    expected[2 * MIB..2 * MIB + 65536].fill(0x44);
    expected[3 * MIB..3 * MIB + 3072].fill(0x55);
    let mut reader = open(&img);
    assert!(reader.header().has_extended_l2());
    read_all_and_check_extents(&mut reader, &expected);
    let extents: Vec<_> = reader.extents().collect::<Result<_, _>>().expect("extents");
    let kind_at = |offset: u64| {
        extents
            .iter()
            .find(|e| e.offset <= offset && offset < e.end())
            .map(|e| e.kind)
    };
    assert_eq!(kind_at(0), Some(ExtentKind::Data));
    assert_eq!(
        kind_at(5 << 10),
        Some(ExtentKind::Unallocated),
        "subcluster 2 was never written"
    );
    assert_eq!(kind_at(6 << 10), Some(ExtentKind::Data));
    assert_eq!(kind_at(10 << 10), Some(ExtentKind::Zero));
    assert_eq!(kind_at(1040 << 10), Some(ExtentKind::Zero));
    assert_eq!(kind_at(2 << 20), Some(ExtentKind::Data), "compressed cluster");
    // 3 KiB written into 2 KiB subclusters allocates two of them.
    let data_at_3m = extents
        .iter()
        .find(|e| e.offset == 3 << 20)
        .expect("extent at 3 MiB");
    assert_eq!((data_at_3m.kind, data_at_3m.len), (ExtentKind::Data, 4096));
}

#[test]
fn reads_extended_l2_images_from_qemu_img_convert() {
    let dir = tmp();
    let size = 5 * MIB + 2048;
    let content = sparse_content(21, size, 14);
    let raw = join(&dir, "disk.raw");
    write_file(&raw, &content);
    for (cluster, compress) in [(16384u32, false), (65536, true), (2 << 20, false)] {
        let out = join(&dir, &format!("x-{cluster}-{compress}.qcow2"));
        let opts = format!("extended_l2=on,cluster_size={cluster}");
        let mut args = vec!["convert", "-f", "raw", "-O", "qcow2", "-o", &opts];
        if compress {
            args.push("-c");
        }
        args.extend([path_str(&raw), path_str(&out)]);
        run_ok("qemu-img", &args);
        let mut reader = open(&out);
        read_all_and_check_extents(&mut reader, &content);
    }
}

#[test]
fn reads_empty_and_tiny_images() {
    let dir = tmp();
    for size in [0usize, 512, 65536 + 512] {
        let raw = join(&dir, &format!("{size}.raw"));
        let content = sparse_content(size as u64, size, 1);
        write_file(&raw, &content);
        let img = join(&dir, &format!("{size}.qcow2"));
        run_ok(
            "qemu-img",
            &[
                "convert",
                "-f",
                "raw",
                "-O",
                "qcow2",
                path_str(&raw),
                path_str(&img),
            ],
        );
        let mut reader = open(&img);
        read_all_and_check_extents(&mut reader, &content);
    }
}

#[test]
fn extent_at_is_bounded_to_one_l2_span_and_cached() {
    let dir = tmp();
    let raw = join(&dir, "full.raw");
    let mut content = vec![0u8; MIB];
    common::Rng(5).fill(&mut content);
    write_file(&raw, &content);
    let img = join(&dir, "full.qcow2");
    run_ok(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "-o",
            "cluster_size=512",
            path_str(&raw),
            path_str(&img),
        ],
    );
    let mut reader = open(&img);
    // 512-byte clusters: an L2 table holds 64 entries and spans 32 KiB.
    let first = reader.extent_at(0).expect("extent");
    assert_eq!((first.kind, first.len), (ExtentKind::Data, 32 << 10));
    let inside = reader.extent_at(100).expect("extent");
    assert_eq!((inside.offset, inside.len), (100, (32 << 10) - 100));
    let extents: Vec<_> = reader.extents().collect::<Result<_, _>>().expect("extents");
    assert_eq!(
        extents,
        vec![qcow2::Extent {
            offset: 0,
            len: MIB as u64,
            kind: ExtentKind::Data
        }]
    );
}

mod proptests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 16, .. ProptestConfig::default() })]

        /// Random sparse content → written by qemu-img (random version, cluster size, compression)
        /// → read back by us equals the original.
        #[test]
        fn qemu_written_random_content_reads_back(
            seed in any::<u64>(),
            sectors in 1usize..(8 << 11),
            runs in 0usize..10,
            compat in prop::sample::select(vec!["0.10", "1.1"]),
            cluster_bits in 9u32..=21,
            compress in any::<bool>(),
            extended in any::<bool>(),
        ) {
            let dir = tmp();
            let content = sparse_content(seed, sectors * 512, runs);
            let raw = join(&dir, "r.raw");
            write_file(&raw, &content);
            let img = join(&dir, "r.qcow2");
            // Extended L2 needs a v3 image and clusters of at least 16 KiB.
            let extended = extended && compat == "1.1" && cluster_bits >= 14;
            let opts = format!(
                "compat={compat},cluster_size={},extended_l2={}",
                1u32 << cluster_bits,
                if extended { "on" } else { "off" }
            );
            let mut args = vec!["convert", "-f", "raw", "-O", "qcow2", "-o", &opts];
            if compress {
                args.push("-c");
            }
            args.extend([path_str(&raw), path_str(&img)]);
            run_ok("qemu-img", &args);
            let mut reader = open(&img);
            read_all_and_check_extents(&mut reader, &content);
        }
    }
}
