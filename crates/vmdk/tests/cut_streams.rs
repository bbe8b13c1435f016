//! Real streamOptimized streams cut short are never a disk: streams written by the real
//! `qemu-img` (tables before the grains, no footer) and by Debian's `python3-vmdkstream` (VMware's
//! layout: grain directory at the end, footer, end-of-stream marker) are cut at every sector
//! boundary (every record boundary is one) and at random offsets, fed in random chunkings, and
//! every cut must fail. The tools are required: a missing tool fails the test with the package.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{fs, path::Path, process::Command, sync::OnceLock};

use proptest::prelude::*;
use vmi_vmdk::{StreamDecoder, stream::Error};

const VMDKSTREAM: &str = "/usr/lib/python3/dist-packages/VMDKstream.py";

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!(
            "cannot run {:?}: {e}; install qemu-utils and python3-vmdkstream",
            cmd.get_program()
        )
    });
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A 4 MiB disk with data in a few places, including its last grain.
fn raw_disk(dir: &Path) -> std::path::PathBuf {
    let mut data = vec![0u8; 4 << 20];
    for (i, at) in [0usize, 70_000, 1 << 20, (4 << 20) - 4096]
        .into_iter()
        .enumerate()
    {
        for (j, b) in data[at..at + 4096].iter_mut().enumerate() {
            *b = (i * 37 + j * 13) as u8 | 1;
        }
    }
    let path = dir.join("disk.raw");
    fs::write(&path, data).unwrap();
    path
}

/// The two writers' streams of one disk, made once per test binary.
fn streams() -> &'static [(&'static str, Vec<u8>)] {
    static STREAMS: OnceLock<Vec<(&'static str, Vec<u8>)>> = OnceLock::new();
    STREAMS.get_or_init(make_streams)
}

fn make_streams() -> Vec<(&'static str, Vec<u8>)> {
    assert!(
        Path::new(VMDKSTREAM).exists(),
        "{VMDKSTREAM} missing: apt-get install python3-vmdkstream"
    );
    let dir = tempfile::tempdir().unwrap();
    let raw = raw_disk(dir.path());
    let qemu = dir.path().join("qemu.vmdk");
    run(Command::new("qemu-img")
        .args([
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "-o",
            "subformat=streamOptimized",
        ])
        .arg(&raw)
        .arg(&qemu));
    let vmware = dir.path().join("vmware.vmdk");
    run(Command::new("python3").arg(VMDKSTREAM).arg(&raw).arg(&vmware));
    vec![
        ("qemu-img", fs::read(qemu).unwrap()),
        ("vmdkstream", fs::read(vmware).unwrap()),
    ]
}

/// Decodes `bytes` in `chunk`-sized pieces to the end of input; the number of grains, or the error.
fn decode(bytes: &[u8], chunk: usize) -> Result<u64, Error> {
    let mut decoder = StreamDecoder::new();
    for part in bytes.chunks(chunk.max(1)) {
        decoder.feed(part);
        while decoder.next_event()?.is_some() {}
    }
    decoder.finish()?;
    Ok(decoder.grains())
}

/// How much of a writer's stream must arrive: all of VMware's (its last sector is the EOS
/// marker), and qemu's up to its last grain (qemu pads the file with zeros after it).
fn whole_len(writer: &str, stream: &[u8]) -> usize {
    if writer == "vmdkstream" {
        return stream.len();
    }
    let mut len = stream.len();
    while len > 0 && stream[len - 1] == 0 {
        len -= 1;
    }
    len.next_multiple_of(512)
}

#[test]
fn real_streams_cut_at_every_sector_boundary_are_errors() {
    for (writer, stream) in streams() {
        let grains = decode(stream, 1 << 16).unwrap_or_else(|e| panic!("{writer}: whole stream: {e}"));
        assert!(grains >= 4, "{writer}: {grains} grains");
        let mut incomplete = 0;
        for cut in (0..whole_len(writer, stream)).step_by(512) {
            match decode(&stream[..cut], 1 << 16) {
                Ok(n) => panic!("{writer}: cut at byte {cut} accepted as a disk of {n} grains"),
                Err(Error::Incomplete { offset, .. }) => {
                    assert_eq!(offset, cut as u64, "{writer}: the error names the cut");
                    incomplete += 1;
                }
                Err(_) => {}
            }
        }
        // Cuts between records are exactly the case a record-boundary check cannot see.
        assert!(incomplete >= 4, "{writer}: {incomplete} cuts between records");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn real_streams_cut_at_random_offsets_are_errors(at in 0.0f64..1.0, chunk in 1usize..70_000) {
        for (writer, stream) in streams() {
            let cut = (whole_len(writer, stream) as f64 * at) as usize;
            prop_assert!(decode(&stream[..cut], chunk).is_err(), "{} cut at {} accepted", writer, cut);
        }
    }
}
