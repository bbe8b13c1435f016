//! OVF descriptor parsing: arbitrary bytes as an envelope, and the result serialised as `vm.json` is.
//!
//! Seed the corpus with the envelopes in `crates/ova/tests/support/fixtures.rs` (VMware OVF 1.0,
//! VirtualBox OVF 2.0) and any `.ovf` from a real OVA.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(vm) = ova::ovf::read_envelope(data) {
        let _ = format!("{vm:?}");
    }
});
