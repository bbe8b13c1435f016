//! streamOptimized stream decoder: arbitrary bytes fed in chunks of a size chosen by the first
//! input byte, every event drained, every grain inflated into a grain-sized buffer, then finish.
//! Checks the decoder's promises: grains ascend, stay below the capacity, and are bounded.
//!
//! Seed the corpus with small real streams, e.g.
//! `qemu-img convert -f raw -O vmdk -o subformat=streamOptimized small.raw fuzz/corpus/vmdk_stream/q.vmdk` and
//! `python3 /usr/lib/python3/dist-packages/VMDKstream.py small.raw fuzz/corpus/vmdk_stream/v.vmdk`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmdk::{Event, GrainInflater, StreamDecoder};

fuzz_target!(|data: &[u8]| {
    let Some((&first, data)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(first) * 7 + 1;
    let mut decoder = StreamDecoder::new();
    let mut inflater = GrainInflater::new();
    let mut grain = Vec::new();
    let mut capacity = 0;
    let mut next_lba = 0;
    for part in data.chunks(chunk) {
        decoder.feed(part);
        loop {
            match decoder.next_event() {
                Ok(Some(Event::Header(h))) => {
                    capacity = h.capacity_sectors;
                    grain = vec![0u8; h.grain_bytes() as usize];
                }
                Ok(Some(Event::Grain(g))) => {
                    assert!(g.lba < capacity && g.lba >= next_lba);
                    assert!(g.compressed.len() <= grain.len() * 2 + 12);
                    next_lba = g.lba + 1;
                    let _ = inflater.inflate(&g.compressed, &mut grain);
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }
    let _ = decoder.finish();
});
