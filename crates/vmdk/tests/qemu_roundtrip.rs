//! Property test against the real `qemu-img`: random sparse disk content, written by qemu-img
//! in a random VMDK subformat, read back by [`VmdkReader`] (and, for streamOptimized, by the
//! stream decoder plus inflater) equals the original. qemu-img is required (apt: qemu-utils).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{fs, io::Read, path::Path, process::Command};

use proptest::prelude::*;
use vmi_vmdk::{Event, GrainInflater, StreamDecoder, VmdkReader};

const SUBFORMATS: [&str; 5] = [
    "monolithicSparse",
    "monolithicFlat",
    "twoGbMaxExtentSparse",
    "twoGbMaxExtentFlat",
    "streamOptimized",
];

fn qemu_img(args: &[&str], raw: &Path, out: &Path) {
    let status = Command::new("qemu-img")
        .args(args)
        .arg(raw)
        .arg(out)
        .status()
        .unwrap_or_else(|e| panic!("cannot run qemu-img ({e}); install it: apt-get install qemu-utils"));
    assert!(status.success(), "qemu-img {args:?} failed");
}

/// Sparse content: a size in sectors and some runs of bytes at sector offsets.
fn content() -> impl Strategy<Value = Vec<u8>> {
    (
        1u64..=2048,
        prop::collection::vec((0u64..2048, 1usize..70_000, any::<u8>(), any::<bool>()), 0..6),
    )
        .prop_map(|(sectors, runs)| {
            let len = (sectors * 512) as usize;
            let mut data = vec![0u8; len];
            for (at, run_len, byte, noisy) in runs {
                let start = ((at * 512) as usize).min(len);
                let end = (start + run_len).min(len);
                for (i, b) in data[start..end].iter_mut().enumerate() {
                    *b = if noisy {
                        byte ^ (i as u8).wrapping_mul(31)
                    } else {
                        byte
                    };
                }
            }
            data
        })
}

fn read_with_reader(image: &Path) -> Vec<u8> {
    let dir = image.parent().unwrap().to_owned();
    let mut open = |name: &str| fs::File::open(dir.join(name));
    let mut reader = VmdkReader::open(fs::File::open(image).unwrap(), "image", &mut open).unwrap();
    let mut out = Vec::new();
    reader.read_to_end(&mut out).unwrap();
    out
}

fn read_with_stream_decoder(image: &Path) -> Vec<u8> {
    let bytes = fs::read(image).unwrap();
    let mut decoder = StreamDecoder::new();
    let mut inflater = GrainInflater::new();
    let mut out = Vec::new();
    let mut grain = Vec::new();
    for chunk in bytes.chunks(3000) {
        decoder.feed(chunk);
        while let Some(event) = decoder.next_event().unwrap() {
            match event {
                Event::Header(h) => {
                    out = vec![0u8; h.capacity_bytes() as usize];
                    grain = vec![0u8; h.grain_bytes() as usize];
                }
                Event::Grain(g) => {
                    grain.fill(0);
                    inflater.inflate(&g.compressed, &mut grain).unwrap();
                    let at = (g.lba * 512) as usize;
                    let n = grain.len().min(out.len() - at);
                    out[at..at + n].copy_from_slice(&grain[..n]);
                }
                _ => {}
            }
        }
    }
    decoder.finish().unwrap();
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn qemu_written_vmdk_reads_back_identical(data in content(), which in 0usize..5) {
        let subformat = SUBFORMATS[which];
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("disk.raw");
        fs::write(&raw, &data).unwrap();
        let image = dir.path().join("disk.vmdk");
        qemu_img(&["convert", "-f", "raw", "-O", "vmdk", "-o", &format!("subformat={subformat}")], &raw, &image);
        prop_assert_eq!(read_with_reader(&image), data.clone(), "reader, {}", subformat);
        if subformat == "streamOptimized" {
            prop_assert_eq!(read_with_stream_decoder(&image), data, "stream decoder");
        }
    }
}
