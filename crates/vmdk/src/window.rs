//! [`Window`]: a forward-only reader that remembers the last bytes it passed, so a decoder walking
//! a file in physical order can still pick up an item it learns about shortly after passing it.
//!
//! Memory is the ring (fixed at construction); nothing else grows with the input.

use std::io::{self, Read};

/// Bytes asked of the input per `read` beyond what the caller needs: amortises syscalls without
/// evicting much of the ring.
const READ_AHEAD: u64 = 256 * 1024;

/// A forward-only reader over `R` whose last `capacity` bytes stay addressable by file offset.
pub(crate) struct Window<R> {
    input: R,
    ring: Vec<u8>,
    /// Bytes consumed from the input so far: the file offset one past the newest byte in the ring.
    pos: u64,
    eof: bool,
}

impl<R: Read> Window<R> {
    /// A window of `capacity` bytes (at least twice [`READ_AHEAD`]).
    pub(crate) fn new(input: R, capacity: usize) -> Self {
        let capacity = capacity.max(2 * READ_AHEAD as usize);
        Self {
            input,
            ring: vec![0; capacity],
            pos: 0,
            eof: false,
        }
    }

    /// File offset one past the last byte read.
    pub(crate) fn position(&self) -> u64 {
        self.pos
    }

    /// Ring size in bytes.
    pub(crate) fn capacity(&self) -> u64 {
        self.ring.len() as u64
    }

    /// Oldest file offset still held.
    pub(crate) fn oldest(&self) -> u64 {
        self.pos.saturating_sub(self.capacity())
    }

    /// Reads until the position reaches `end` or the input ends; returns whether it reached `end`.
    /// Reads at most [`READ_AHEAD`] past `end`, so a range ending at `end` no longer than the
    /// capacity minus the read-ahead stays in the ring.
    pub(crate) fn fill_to(&mut self, end: u64) -> io::Result<bool> {
        while self.pos < end {
            if self.eof {
                return Ok(false);
            }
            let cap = self.capacity();
            let idx = (self.pos % cap) as usize;
            let want = (end - self.pos).max(READ_AHEAD).min(cap - idx as u64) as usize;
            match self.input.read(&mut self.ring[idx..idx + want]) {
                Ok(0) => self.eof = true,
                Ok(n) => self.pos += n as u64,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Copies the bytes at `[offset, offset + out.len())` into `out` if the ring holds all of them.
    pub(crate) fn copy_out(&self, offset: u64, out: &mut [u8]) -> bool {
        let Some(end) = offset.checked_add(out.len() as u64) else {
            return false;
        };
        if offset < self.oldest() || end > self.pos {
            return false;
        }
        let cap = self.capacity();
        let start = (offset % cap) as usize;
        let first = out.len().min(self.ring.len() - start);
        out[..first].copy_from_slice(&self.ring[start..start + first]);
        let rest = out.len() - first;
        out[first..].copy_from_slice(&self.ring[..rest]);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out at most 7 bytes per call.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(7).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn keeps_the_last_capacity_bytes_addressable() {
        let data: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
        let mut w = Window::new(Trickle(&data), 600_000);
        assert!(w.fill_to(1_500_000).unwrap());
        let mut out = vec![0u8; 1000];
        // Wraps around the ring end somewhere; every held range reads back exactly.
        for offset in [w.oldest(), 1_000_000, w.position() - 1000] {
            assert!(w.copy_out(offset, &mut out), "{offset}");
            assert_eq!(out, data[offset as usize..offset as usize + 1000]);
        }
        assert!(!w.copy_out(w.oldest() - 1, &mut out));
        assert!(!w.copy_out(w.position() - 999, &mut out));
        assert!(!w.fill_to(3_000_000).unwrap());
        assert_eq!(w.position(), 2_000_000);
    }
}
