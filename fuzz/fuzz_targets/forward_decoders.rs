//! The forward-only decoders of hosted sparse VMDK (`vmdk::SparseForward`) and qcow2
//! (`qcow2::Qcow2Forward`) on arbitrary bytes read through a reader that hands out a few bytes per
//! call (count chosen by the first input byte). Checks their promises: runs ascend, never overlap,
//! stay within the virtual size, and every failure is an error, not a panic. The window is small
//! (1 MiB) so the out-of-order paths are reached with small inputs.
//!
//! Seed the corpus with small real images, e.g.
//! `qemu-img convert -f raw -O vmdk -o subformat=monolithicSparse small.raw fuzz/corpus/forward_decoders/s.vmdk`,
//! `qemu-img convert -f raw -O qcow2 -c small.raw fuzz/corpus/forward_decoders/c.qcow2` (prefix
//! each file with one byte, the read size).
#![no_main]

use std::io::Read;

use libfuzzer_sys::fuzz_target;

const WINDOW: usize = 1 << 20;

/// At most `step` bytes per `read`.
struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.step).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// Drains `next`, checking that runs ascend within `size`; stops at the first error.
fn drain(size: u64, mut next: impl FnMut(&mut Vec<u8>) -> Option<u64>) {
    let mut run = Vec::new();
    let mut end = 0u64;
    while let Some(offset) = next(&mut run) {
        assert!(offset >= end, "run at {offset} before the previous end {end}");
        end = offset + run.len() as u64;
        assert!(end <= size, "run ends at {end}, past the size {size}");
        run.clear();
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, data)) = data.split_first() else {
        return;
    };
    let step = usize::from(first) * 61 + 1;
    if let Ok(mut d) = vmdk::SparseForward::new(Trickle { data, step }, WINDOW) {
        let size = d.capacity();
        drain(size, |out| d.next_grain(out).ok().flatten());
    }
    if let Ok(mut d) = qcow2::Qcow2Forward::new(Trickle { data, step }, WINDOW) {
        let size = d.virtual_size();
        drain(size, |out| d.next_cluster(out).ok().flatten());
    }
});
