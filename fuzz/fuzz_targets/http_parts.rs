//! The image server's name check and `Range` parser and the `Content-Range` parser of resumed
//! downloads, on arbitrary text: never a panic; a served name is one plain `.img` segment; a
//! partial range lies inside the file.
#![no_main]

use http_parts::{RangeRequest, content_range_start, is_servable_name, parse_range};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((size_bytes, text)) = data.split_at_checked(8) else {
        return;
    };
    let size = u64::from_le_bytes(size_bytes.try_into().unwrap_or_default());
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    if is_servable_name(text) {
        assert!(!text.contains('/') && !text.starts_with('.') && text.ends_with(".img"));
    }
    match parse_range(Some(text), size) {
        RangeRequest::Partial { start, end } => assert!(start <= end && end < size),
        RangeRequest::Full | RangeRequest::Unsatisfiable => {}
    }
    let _ = content_range_start(text);
});
