//! VMDK descriptor text: parse arbitrary bytes (embedded-descriptor path: NUL padding, UTF-8 check)
//! and exercise the accessors on whatever parses.
//!
//! Seed the corpus with real descriptors, e.g. `qemu-img create -f vmdk -o subformat=twoGbMaxExtentFlat
//! fuzz/corpus/vmdk_descriptor/d.vmdk 5G` (the small text file is the descriptor).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = vmdk::Descriptor::parse_bytes(data) {
        let _ = d.capacity_sectors();
        let _ = (
            d.adapter_type(),
            d.virtual_hw_version(),
            d.geometry(),
            d.thin_provisioned(),
        );
        for extent in &d.extents {
            // The parser promised names that stay inside the descriptor's directory.
            if let Some(file) = &extent.file {
                assert!(!file.starts_with('/') && !file.split(['/', '\\']).any(|p| p == ".."));
            }
        }
    }
});
