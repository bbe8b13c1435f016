//! Manifest parsing and verification: arbitrary `.mf` text, then every listed file checked against
//! the digest of empty content.
//!
//! Seed the corpus with lines like `SHA256(disk1.vmdk)= <64 hex>` and `SHA1 (x.ovf) = <40 hex>`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(manifest) = ova::Manifest::read_from(data) else {
        return;
    };
    for entry in &manifest.entries {
        let hasher = ova::manifest::Hasher::new(entry.algorithm);
        let _ = manifest.verify(&entry.file, entry.algorithm, &hasher.finalize());
    }
});
