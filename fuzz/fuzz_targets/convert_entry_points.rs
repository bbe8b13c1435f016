//! The conversion entry points on arbitrary bytes: `detect`, `inspect_reader` and `convert_reader`
//! into a discarding sink, never panicking. Oracle for the completeness rule: when a
//! streamOptimized input converts, every prefix of it that ends before one of its grain records
//! must fail (a stream cut between records is never a disk).
#![no_main]

use std::io::{self, Cursor};

use diskconv::{InputFormat, Options, Output, StreamWriter, detect, inspect::inspect_reader};
use libfuzzer_sys::fuzz_target;
use vmdk::{Event, StreamDecoder};

fn convert(data: &[u8]) -> Result<diskconv::Report, diskconv::Error> {
    let options = Options {
        threads: 1,
        sync: false,
        ..Options::default()
    };
    diskconv::convert_reader(
        Cursor::new(data),
        Output::RawStream(StreamWriter(Box::new(io::sink()))),
        &options,
    )
}

/// Byte offsets of the grain records of a stream.
fn grain_offsets(data: &[u8]) -> Vec<u64> {
    let mut decoder = StreamDecoder::new();
    decoder.feed(data);
    let mut offsets = Vec::new();
    while let Ok(Some(event)) = decoder.next_event() {
        if let Event::Grain(grain) = event {
            offsets.push(grain.offset);
        }
    }
    offsets
}

fuzz_target!(|data: &[u8]| {
    let format = detect(data);
    let Ok(info) = inspect_reader(Cursor::new(data)) else {
        let _ = convert(data);
        return;
    };
    // Fuzzed sizes can be petabytes of zeros to write: keep each run short.
    if info.virtual_size > 64 << 20 {
        return;
    }
    if convert(data).is_ok() && format == InputFormat::VmdkStream {
        for offset in grain_offsets(data) {
            let cut = &data[..offset as usize];
            assert!(
                convert(cut).is_err(),
                "a stream cut before its grain at {offset} converted"
            );
        }
    }
});
