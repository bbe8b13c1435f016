//! qcow2 header + table walk: open an arbitrary image, walk its extents and read from each one.
//!
//! Seed the corpus with small real images, e.g.
//! `qemu-img create -f qcow2 -o cluster_size=512 fuzz/corpus/qcow2_header/empty.qcow2 64k` and
//! `qemu-img convert -c -O qcow2 -o cluster_size=4096 some.raw fuzz/corpus/qcow2_header/c.qcow2`.
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;

/// Bounds the work per input: a hostile header may describe a huge, fragmented disk.
const MAX_EXTENTS: usize = 256;
const MAX_READ: u64 = 64 << 10;

fuzz_target!(|data: &[u8]| {
    let _ = qcow2::Header::parse(data);
    let Ok(mut reader) = qcow2::Qcow2Reader::new(Cursor::new(data)) else {
        return;
    };
    let extents: Vec<_> = reader.extents().take(MAX_EXTENTS).collect();
    let mut buf = vec![0u8; MAX_READ as usize];
    for extent in extents.into_iter().flatten() {
        let len = extent.len.min(MAX_READ) as usize;
        let _ = reader.read_at(extent.offset, &mut buf[..len]);
        // An unaligned read that straddles a cluster boundary.
        if extent.offset > 1 {
            let _ = reader.read_at(extent.offset - 1, &mut buf[..len.min(3)]);
        }
    }
});
