//! Tar walking: every member of an arbitrary archive, read to the end or skipped.
//!
//! Seed the corpus with small archives: `tar --format=ustar|gnu|pax -cf x.tar <files>` including a name
//! longer than 100 bytes.
#![no_main]

use std::io::Read;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut walker = ova::TarWalker::new(data);
    let mut n = 0u32;
    while let Ok(Some(mut entry)) = walker.next_entry() {
        // Alternate between reading bodies and letting the walker skip them.
        if n % 2 == 0 {
            let mut sink = [0u8; 4096];
            while let Ok(k) = entry.read(&mut sink) {
                if k == 0 {
                    break;
                }
            }
        }
        n += 1;
    }
});
