//! `VmdkReader::open` on arbitrary bytes, with extents: the first byte splits the input into the
//! main file and one extent that every extent name opens; then random-access reads and segment
//! queries at offsets taken from the input, including streamOptimized files read at random.
#![no_main]

use std::io::{self, Cursor};

use libfuzzer_sys::fuzz_target;
use vmdk::VmdkReader;

fuzz_target!(|data: &[u8]| {
    let Some((&split, data)) = data.split_first() else {
        return;
    };
    let at = (usize::from(split) * data.len() / 256).min(data.len());
    let (main, extent) = data.split_at(at);
    let extent = extent.to_vec();
    let mut opener = |_: &str| -> io::Result<Cursor<Vec<u8>>> { Ok(Cursor::new(extent.clone())) };
    let Ok(mut reader) = VmdkReader::open(Cursor::new(main.to_vec()), "fuzz.vmdk", &mut opener) else {
        return;
    };
    let capacity = reader.capacity();
    if capacity == 0 {
        return;
    }
    let mut buf = vec![0u8; 4096];
    for probe in data.chunks(8).take(16) {
        let mut raw = [0u8; 8];
        raw[..probe.len()].copy_from_slice(probe);
        let offset = u64::from_le_bytes(raw) % capacity;
        if let Ok(segment) = reader.segment(offset) {
            assert!(segment.len > 0 || offset >= capacity);
        }
        if let Ok(n) = reader.read_at(offset, &mut buf) {
            assert!(n as u64 <= capacity - offset);
        }
    }
});
