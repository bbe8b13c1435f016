//! Hosted sparse VMDK: sparse header, footer, grain directory and grain tables of an arbitrary
//! file, then reads through the allocation map (uncompressed and compressed grains).
//!
//! Seed the corpus with small real images, e.g.
//! `qemu-img convert -f raw -O vmdk -o subformat=monolithicSparse small.raw fuzz/corpus/vmdk_sparse_header/s.vmdk`
//! and a streamOptimized one from `python3 /usr/lib/python3/dist-packages/VMDKstream.py small.raw out.vmdk`.
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;

/// Bounds the work per input: a hostile header may describe a 64 TiB disk.
const MAX_SEGMENTS: usize = 512;
const MAX_READ: usize = 64 << 10;

fuzz_target!(|data: &[u8]| {
    let _ = vmdk::SparseHeader::parse(data);
    let Ok(mut reader) = vmdk::VmdkReader::open_sparse(Cursor::new(data), "fuzz.vmdk") else {
        return;
    };
    let _ = reader.allocated_bytes();
    let mut buf = vec![0u8; MAX_READ];
    let mut offset = 0u64;
    for _ in 0..MAX_SEGMENTS {
        let Ok(segment) = reader.segment(offset) else {
            return;
        };
        if segment.len == 0 {
            return;
        }
        if segment.allocated {
            let n = (segment.len as usize).min(MAX_READ);
            if reader.read_at(offset, &mut buf[..n]).is_err() {
                return;
            }
        }
        offset += segment.len;
    }
});
