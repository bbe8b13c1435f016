//! vSphere SOAP responses: envelope/fault unwrapping and every typed parser of `vsphere::proto`
//! (service content, property-collector pages, VM description, task and lease info, device keys).
//!
//! Seed the corpus with the recorded simulator bodies:
//! `mkdir -p fuzz/corpus/soap_response && cp crates/vsphere/tests/data/*.xml fuzz/corpus/soap_response/`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = vsphere::proto::parse_any_response(data);
    let _ = vsphere::proto::xml::parse(data);
});
