//! An OVA walked as a whole, as the controller and `convert` walk one: tar, OVF, manifest, gzip
//! members and every disk decoder, each disk converted to a discarding sink. Never a panic;
//! every disk the walk reports as converted is the size its OVF declares.
#![no_main]

use std::io::{self, Cursor};

use diskconv::{
    Options, Output, Report, StreamWriter,
    archive::{DiskTargets, convert_ova_into, inspect_ova},
};
use libfuzzer_sys::fuzz_target;

/// Converts every disk into nothing; remembers what was verified.
#[derive(Default)]
struct Discard {
    declared: Vec<u64>,
    verified: Vec<(usize, u64)>,
}

impl DiskTargets for Discard {
    fn described(&mut self, vm: &ova::VmDescription) -> Result<(), diskconv::Error> {
        self.declared = vm.disks.iter().map(|d| d.capacity_bytes).collect();
        // Fuzzed capacities can be petabytes: keep each run short.
        if self.declared.iter().any(|&c| c > 64 << 20) {
            return Err(diskconv::Error::Rejected("too large for the fuzzer".into()));
        }
        Ok(())
    }

    fn output(&mut self, _: usize, _: &str) -> Option<(Output, Options)> {
        let options = Options {
            threads: 1,
            sync: false,
            ..Options::default()
        };
        Some((Output::RawStream(StreamWriter(Box::new(io::sink()))), options))
    }

    fn verified(&mut self, index: usize, _: &str, report: &Report, _: bool) -> Result<(), diskconv::Error> {
        self.verified.push((index, report.virtual_size));
        Ok(())
    }

    fn failed(&mut self, _: usize) {}
}

fuzz_target!(|data: &[u8]| {
    let mut targets = Discard::default();
    if convert_ova_into(Cursor::new(data), &mut targets, false).is_ok() {
        for (index, size) in &targets.verified {
            let declared = targets.declared[*index];
            assert!(*size == declared || *size == declared.next_multiple_of(512));
        }
    }
    let _ = inspect_ova(Cursor::new(data), false);
});
