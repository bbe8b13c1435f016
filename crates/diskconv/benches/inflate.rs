//! Inflate throughput per core for the zlib backends we considered, on the grains of a real
//! streamOptimized VMDK: `cargo bench -p vmi-diskconv --bench inflate -- FILE.vmdk [ROUNDS]`.
//!
//! Reads the whole stream into memory, collects its grains with the crate's own stream decoder,
//! then inflates every grain into a reused 64 KiB buffer with each backend's one-shot API.
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use vmdk::{Event, StreamDecoder};

fn grains(path: &str) -> Vec<bytes::Bytes> {
    let data = std::fs::read(path).expect("read stream file");
    let mut decoder = StreamDecoder::new();
    decoder.feed(&data);
    let mut out = Vec::new();
    while let Some(event) = decoder.next_event().expect("valid stream") {
        if let Event::Grain(g) = event {
            out.push(g.compressed);
        }
    }
    out
}

fn run(
    name: &str,
    grains: &[bytes::Bytes],
    rounds: usize,
    mut inflate: impl FnMut(&[u8], &mut [u8]) -> usize,
) {
    let mut buf = vec![0u8; 65536];
    let compressed: usize = grains.iter().map(|g| g.len()).sum();
    let mut best = f64::MAX;
    let mut out_bytes = 0usize;
    for _ in 0..rounds {
        let t = Instant::now();
        out_bytes = 0;
        for g in grains {
            out_bytes += inflate(g, &mut buf);
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!(
        "{name:<14} out {:>7.1} MB/s/core   in {:>7.1} MB/s/core   ({} grains, best of {rounds})",
        out_bytes as f64 / best / 1e6,
        compressed as f64 / best / 1e6,
        grains.len()
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let Some(path) = args.first() else {
        println!("usage: inflate FILE.vmdk [ROUNDS]  (streamOptimized)");
        return;
    };
    let rounds = args.get(1).and_then(|r| r.parse().ok()).unwrap_or(3);
    let grains = grains(path);

    let mut d = libdeflater::Decompressor::new();
    run("libdeflate", &grains, rounds, |z, out| {
        d.zlib_decompress(z, out).expect("libdeflate")
    });

    let mut z = flate2::Decompress::new(true);
    run("zlib-rs", &grains, rounds, |data, out| {
        z.reset(true);
        z.decompress(data, out, flate2::FlushDecompress::Finish)
            .expect("zlib-rs");
        z.total_out() as usize
    });

    let mut m = miniz_oxide::inflate::core::DecompressorOxide::new();
    run("miniz_oxide", &grains, rounds, |data, out| {
        use miniz_oxide::inflate::core::{decompress, inflate_flags};
        m.init();
        let flags = inflate_flags::TINFL_FLAG_PARSE_ZLIB_HEADER
            | inflate_flags::TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF;
        let (_, _, n) = decompress(&mut m, data, out, 0, flags);
        n
    });
}
