//! Conversion checked against independent writers: images made by the real `qemu-img` in every
//! VMDK subformat and by Debian's `python3-vmdkstream` (VMware's stream layout, footer and GD at
//! the end), read from a file and from a pipe, compared byte for byte, with `qemu-img compare` and
//! with SHA-256. The tools are required: a missing tool fails the test with the package to install.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use sha2::{Digest, Sha256};
use vmi_diskconv::{self as diskconv, Options, Output, Report};

const SUBFORMATS: [&str; 5] = [
    "monolithicSparse",
    "monolithicFlat",
    "twoGbMaxExtentSparse",
    "twoGbMaxExtentFlat",
    "streamOptimized",
];
const VMDKSTREAM: &str = "/usr/lib/python3/dist-packages/VMDKstream.py";

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!(
            "cannot run {:?}: {e}; install qemu-utils (qemu-img) and python3-vmdkstream",
            cmd.get_program()
        )
    });
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn require_tools() {
    run(Command::new("qemu-img").arg("--version"));
    assert!(
        Path::new(VMDKSTREAM).exists(),
        "{VMDKSTREAM} missing: apt-get install python3-vmdkstream"
    );
}

fn qemu_vmdk(raw: &Path, subformat: &str) -> PathBuf {
    let out = raw.with_file_name(format!("{subformat}.vmdk"));
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "vmdk", "-o"])
        .arg(format!("subformat={subformat}"))
        .arg(raw)
        .arg(&out));
    out
}

fn vmdkstream(raw: &Path) -> PathBuf {
    let out = raw.with_file_name("vmware-stream.vmdk");
    run(Command::new("python3").arg(VMDKSTREAM).arg(raw).arg(&out));
    out
}

fn opts() -> Options {
    Options {
        threads: 2,
        progress: None,
        sync: true,
        expected_size: None,
        declared_format: None,
        checksum: Some(diskconv::Checksum::Sha256),
    }
}

fn sha256_file(path: &Path) -> String {
    hex::encode(Sha256::digest(fs::read(path).unwrap()))
}

fn assert_same(raw: &Path, out: &Path, report: &Report, what: &str) {
    assert_eq!(
        fs::read(out).unwrap(),
        fs::read(raw).unwrap(),
        "{what}: bytes differ"
    );
    assert_eq!(
        report.digest(diskconv::Checksum::Sha256).unwrap(),
        sha256_file(raw),
        "{what}: report sha256"
    );
    assert_eq!(
        report.virtual_size,
        fs::metadata(raw).unwrap().len(),
        "{what}: virtual size"
    );
    let cmp = Command::new("qemu-img")
        .args(["compare", "-q", "-f", "raw", "-F", "raw"])
        .arg(raw)
        .arg(out)
        .status()
        .unwrap();
    assert!(cmp.success(), "{what}: qemu-img compare says the images differ");
}

/// Converts `image` from the file and (for stream layouts) from a pipe, to raw, and compares.
fn check_image(raw: &Path, image: &Path, stream: bool, what: &str) {
    let out = raw.with_file_name("out.raw");
    let report = diskconv::convert_path(image, Output::RawFile(out.clone()), &opts()).unwrap();
    assert_same(raw, &out, &report, &format!("{what} from file"));
    if stream {
        let mut cat = Command::new("cat")
            .arg(image)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let pipe = cat.stdout.take().unwrap();
        let report = diskconv::convert_reader(pipe, Output::RawFile(out.clone()), &opts()).unwrap();
        assert!(cat.wait().unwrap().success());
        assert_same(raw, &out, &report, &format!("{what} from a pipe"));
    }
}

fn check_all_writers(raw: &Path, case: &str) {
    require_tools();
    for subformat in SUBFORMATS {
        let image = qemu_vmdk(raw, subformat);
        check_image(
            raw,
            &image,
            // Both single-file sparse layouts convert from a pipe (monolithicSparse forward-only).
            matches!(subformat, "streamOptimized" | "monolithicSparse"),
            &format!("{case}: qemu-img {subformat}"),
        );
    }
    let image = vmdkstream(raw);
    check_image(raw, &image, true, &format!("{case}: python3-vmdkstream"));
}

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    // xorshift64*: deterministic, incompressible enough for zlib.
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

fn write_raw(dir: &Path, content: &[u8]) -> PathBuf {
    let path = dir.join("disk.raw");
    fs::write(&path, content).unwrap();
    path
}

#[test]
fn random_data_not_a_grain_multiple() {
    let dir = tempfile::tempdir().unwrap();
    let raw = write_raw(dir.path(), &random_bytes(3 * 65536 + 1536, 1));
    check_all_writers(&raw, "random, 3 grains + 3 sectors");
}

#[test]
fn one_sector() {
    let dir = tempfile::tempdir().unwrap();
    let raw = write_raw(dir.path(), &random_bytes(512, 2));
    check_all_writers(&raw, "one sector");
}

#[test]
fn all_zeros() {
    let dir = tempfile::tempdir().unwrap();
    let raw = write_raw(dir.path(), &vec![0u8; 1 << 20]);
    check_all_writers(&raw, "all zeros");
}

#[test]
fn data_only_in_last_sector() {
    let dir = tempfile::tempdir().unwrap();
    let mut content = vec![0u8; (1 << 20) + 512 * 7];
    let len = content.len();
    content[len - 512..].copy_from_slice(&random_bytes(512, 3));
    let raw = write_raw(dir.path(), &content);
    check_all_writers(&raw, "data in the last sector");
}

#[test]
fn mixed_sparse_content_spanning_grain_tables() {
    // 40 MiB: more than one 32 MiB grain table, with zero grains, partial grains, text, random.
    let dir = tempfile::tempdir().unwrap();
    let mut content = vec![0u8; 40 << 20];
    content[4096..8192].copy_from_slice(&random_bytes(4096, 4));
    content[(10 << 20)..(11 << 20)].fill(b'x');
    content[(33 << 20)..(33 << 20) + 100_000].copy_from_slice(&random_bytes(100_000, 5));
    let raw = write_raw(dir.path(), &content);
    check_all_writers(&raw, "mixed 40 MiB");
}

#[test]
fn zero_bytes() {
    // `qemu-img convert` of an empty raw trips an assertion in qemu 7.2 (`vmdk_get_info`), so the
    // empty images come from `qemu-img create`.
    require_tools();
    let dir = tempfile::tempdir().unwrap();
    let raw = write_raw(dir.path(), &[]);
    for subformat in SUBFORMATS {
        let image = dir.path().join(format!("empty-{subformat}.vmdk"));
        run(Command::new("qemu-img")
            .args(["create", "-q", "-f", "vmdk", "-o"])
            .arg(format!("subformat={subformat}"))
            .arg(&image)
            .arg("0"));
        check_image(
            &raw,
            &image,
            // Both single-file sparse layouts convert from a pipe (monolithicSparse forward-only).
            matches!(subformat, "streamOptimized" | "monolithicSparse"),
            &format!("empty: qemu-img {subformat}"),
        );
    }
    let image = vmdkstream(&raw);
    check_image(&raw, &image, true, "empty: python3-vmdkstream");
}

#[test]
fn qcow2_output_passes_qemu_img_check_and_compare() {
    require_tools();
    let dir = tempfile::tempdir().unwrap();
    let mut content = random_bytes(5 * 65536 + 512, 6);
    content[65536..2 * 65536].fill(0);
    let raw = write_raw(dir.path(), &content);
    for subformat in SUBFORMATS {
        let image = qemu_vmdk(&raw, subformat);
        let out = dir.path().join("out.qcow2");
        let report = diskconv::convert_path(&image, Output::Qcow2File(out.clone()), &opts()).unwrap();
        assert_eq!(
            report.digest(diskconv::Checksum::Sha256).unwrap(),
            sha256_file(&raw),
            "{subformat}"
        );
        run(Command::new("qemu-img").args(["check", "-f", "qcow2"]).arg(&out));
        run(Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "qcow2"])
            .arg(&raw)
            .arg(&out));
    }
}

#[test]
fn qcow2_input_plain_and_compressed() {
    require_tools();
    let dir = tempfile::tempdir().unwrap();
    let mut content = random_bytes(3 << 20, 7);
    content[(1 << 20)..(2 << 20)].fill(0);
    content[(2 << 20)..(2 << 20) + 65536].fill(b'q');
    let raw = write_raw(dir.path(), &content);
    for extra in [&[][..], &["-c"][..]] {
        let image = dir.path().join("in.qcow2");
        run(Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "qcow2"])
            .args(extra)
            .arg(&raw)
            .arg(&image));
        let out = dir.path().join("out.raw");
        let report = diskconv::convert_path(&image, Output::RawFile(out.clone()), &opts()).unwrap();
        assert_same(&raw, &out, &report, &format!("qcow2 {extra:?}"));
    }
}

#[test]
fn multi_extent_descriptors_past_two_gib() {
    // Sparse 2 GiB + 3 MiB raw with data near the start, across the 2 GiB extent boundary and at
    // the end: qemu-img writes two extents for both twoGbMaxExtent subformats.
    require_tools();
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    let size: u64 = (2 << 30) + (3 << 20);
    let file = fs::File::create(&raw).unwrap();
    file.set_len(size).unwrap();
    use std::os::unix::fs::FileExt;
    let marks = [(0u64, 1), ((2 << 30) - 4096, 2), (size - 512, 3)];
    for (at, seed) in marks {
        let len = if at == (2 << 30) - 4096 { 8192 } else { 512 };
        file.write_all_at(&random_bytes(len, seed), at).unwrap();
    }
    drop(file);
    for subformat in ["twoGbMaxExtentSparse", "twoGbMaxExtentFlat"] {
        let image = qemu_vmdk(&raw, subformat);
        let text = fs::read_to_string(&image).unwrap();
        assert!(
            text.matches("\nRW ").count() >= 2,
            "{subformat}: expected several extents:\n{text}"
        );
        let out = dir.path().join("out.raw");
        let report = diskconv::convert_path(&image, Output::RawFile(out.clone()), &opts()).unwrap();
        assert_eq!(report.virtual_size, size);
        run(Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "raw"])
            .arg(&raw)
            .arg(&out));
        // The output is sparse: only the written data (rounded to 4 KiB blocks) is allocated.
        use std::os::unix::fs::MetadataExt;
        assert!(
            fs::metadata(&out).unwrap().blocks() * 512 < 1 << 20,
            "{subformat}: output not sparse"
        );
        fs::remove_file(&image).unwrap();
    }
}

mod proptests {
    use proptest::prelude::*;

    use super::*;

    /// Sparse content of up to 4 MiB: runs of bytes at random sector offsets.
    fn sparse_content() -> impl Strategy<Value = Vec<u8>> {
        (
            1u64..=8192,
            prop::collection::vec((0u64..8192, 1usize..200_000, any::<u8>()), 0..5),
        )
            .prop_map(|(sectors, runs)| {
                let len = (sectors * 512) as usize;
                let mut data = vec![0u8; len];
                for (at, run_len, seed) in runs {
                    let start = ((at * 512) as usize).min(len);
                    let end = (start + run_len).min(len);
                    data[start..end].copy_from_slice(&random_bytes(end - start, u64::from(seed)));
                }
                data
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

        /// Random sparse content, written by qemu-img as a VMDK, converted by us to qcow2: qemu-img
        /// check accepts the image and compare finds it equal to the original.
        #[test]
        fn our_qcow2_output_passes_qemu_img_check_and_compare(data in sparse_content(), which in 0usize..5) {
            require_tools();
            let dir = tempfile::tempdir().unwrap();
            let raw = write_raw(dir.path(), &data);
            let image = qemu_vmdk(&raw, SUBFORMATS[which]);
            let out = dir.path().join("out.qcow2");
            let report = diskconv::convert_path(&image, Output::Qcow2File(out.clone()), &opts()).unwrap();
            prop_assert_eq!(report.digest(diskconv::Checksum::Sha256).unwrap(), sha256_file(&raw));
            run(Command::new("qemu-img").args(["check", "-q", "-f", "qcow2"]).arg(&out));
            run(Command::new("qemu-img").args(["compare", "-q", "-f", "raw", "-F", "qcow2"]).arg(&raw).arg(&out));
        }
    }
}
