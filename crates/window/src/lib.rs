//! [`Window`]: a forward-only reader that remembers the last bytes it passed, so a decoder walking
//! a file in physical order can still pick up an item it learns about shortly after passing it.
//! The one-pass decoders of `vmi-vmdk` (hosted sparse) and `vmi-qcow2` read through it.
//!
//! Memory is the ring (fixed at construction); nothing else grows with the input.

use std::io::{self, Read};

/// Bytes asked of the input per `read` beyond what the caller needs: amortises syscalls without
/// evicting much of the ring.
const READ_AHEAD: u64 = 256 * 1024;

/// A forward-only reader over `R` whose last `capacity` bytes stay addressable by file offset.
pub struct Window<R> {
    input: R,
    ring: Vec<u8>,
    /// Bytes consumed from the input so far: the file offset one past the newest byte in the ring.
    pos: u64,
    eof: bool,
}

impl<R: Read> Window<R> {
    /// A window of `capacity` bytes (at least twice [`READ_AHEAD`]).
    pub fn new(input: R, capacity: usize) -> Self {
        let capacity = capacity.max(2 * READ_AHEAD as usize);
        Self {
            input,
            ring: vec![0; capacity],
            pos: 0,
            eof: false,
        }
    }

    /// File offset one past the last byte read.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Ring size in bytes.
    pub fn capacity(&self) -> u64 {
        self.ring.len() as u64
    }

    /// Oldest file offset still held.
    pub fn oldest(&self) -> u64 {
        self.pos.saturating_sub(self.capacity())
    }

    /// Reads until the position reaches `end` or the input ends; returns whether it reached `end`.
    /// Reads at most [`READ_AHEAD`] past `end`, so a range ending at `end` no longer than the
    /// capacity minus the read-ahead stays in the ring.
    pub fn fill_to(&mut self, end: u64) -> io::Result<bool> {
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
    pub fn copy_out(&self, offset: u64, out: &mut [u8]) -> bool {
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

/// Why the window could not hand out bytes. Offsets are byte offsets in the input.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the input failed.
    #[error("failed to read the input at byte offset {offset}")]
    Read {
        /// The read position when it failed (bytes consumed so far).
        offset: u64,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The input ended before `what` was complete.
    #[error("input ends at byte offset {len}, inside the {what} at byte offset {offset}")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Where it starts.
        offset: u64,
        /// Where the input ended.
        len: u64,
    },
    /// An item lies before bytes already passed and no longer held by the window.
    #[error(
        "{what} at byte offset {offset} lies before the read position {position} \
         (more than the {window}-byte window back): the file cannot be read in one pass"
    )]
    OutOfOrder {
        /// What was being read.
        what: &'static str,
        /// The first byte not held.
        offset: u64,
        /// The read position.
        position: u64,
        /// The ring size.
        window: u64,
    },
}

impl Error {
    /// Whether the failure is the file's layout (readable with random access), not corruption.
    pub fn needs_random_access(&self) -> bool {
        matches!(self, Error::OutOfOrder { .. })
    }

    /// The byte offset the error names.
    pub fn offset(&self) -> u64 {
        match self {
            Error::Read { offset, .. }
            | Error::Truncated { offset, .. }
            | Error::OutOfOrder { offset, .. } => *offset,
        }
    }
}

impl<R: Read> Window<R> {
    /// Reads until the position reaches `end` (or the input ends).
    ///
    /// # Errors
    /// [`Error::Read`] when the input fails.
    pub fn fill(&mut self, end: u64) -> Result<(), Error> {
        match self.fill_to(end) {
            Ok(_) => Ok(()),
            Err(source) => Err(Error::Read {
                offset: self.pos,
                source,
            }),
        }
    }

    /// Copies `what`, at `[offset, offset + out.len())`, into `out`, reading forward as needed, in
    /// pieces of a quarter of the ring (a table may be larger than the ring).
    ///
    /// # Errors
    /// The input failed or ended, or the range is already behind the ring.
    pub fn read_at(&mut self, offset: u64, out: &mut [u8], what: &'static str) -> Result<(), Error> {
        let piece = (self.capacity() / 4) as usize;
        let mut done = 0usize;
        while done < out.len() {
            let n = piece.min(out.len() - done);
            let at = offset.saturating_add(done as u64);
            self.fill(at.saturating_add(n as u64))?;
            if !self.copy_out(at, &mut out[done..done + n]) {
                return Err(if at < self.oldest() {
                    self.missed(what, at)
                } else {
                    Error::Truncated {
                        what,
                        offset,
                        len: self.pos,
                    }
                });
            }
            done += n;
        }
        Ok(())
    }

    /// Why `what` at `offset` is not in the ring: already behind it, or past the end of the input.
    pub fn missed(&self, what: &'static str, offset: u64) -> Error {
        if offset < self.oldest() {
            Error::OutOfOrder {
                what,
                offset,
                position: self.pos,
                window: self.capacity(),
            }
        } else {
            Error::Truncated {
                what,
                offset,
                len: self.pos,
            }
        }
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

    #[test]
    fn read_at_reads_forward_and_names_what_it_cannot_hand_out() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        let mut w = Window::new(Trickle(&data), 1 << 20);
        // Larger than the ring: read in pieces as the input passes.
        let mut big = vec![0u8; 1_500_000];
        w.read_at(100, &mut big, "table").unwrap();
        assert_eq!(big, data[100..1_500_100]);
        let mut out = [0u8; 10];
        match w.read_at(50, &mut out, "table") {
            Err(Error::OutOfOrder {
                what,
                offset,
                position,
                window,
            }) => {
                assert_eq!((what, offset), ("table", 50));
                assert!(position >= 1_500_100);
                assert_eq!(window, 1 << 20);
            }
            other => panic!("{other:?}"),
        }
        match w.read_at(2_999_995, &mut out, "grain") {
            Err(Error::Truncated { what, offset, len }) => {
                assert_eq!((what, offset, len), ("grain", 2_999_995, 3_000_000));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_failing_input_is_a_read_miss_at_the_position_reached() {
        struct Fails(u64);
        impl Read for Fails {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0 == 0 {
                    return Err(io::Error::other("disk gone"));
                }
                let n = (buf.len() as u64).min(self.0) as usize;
                self.0 -= n as u64;
                Ok(n)
            }
        }
        let mut w = Window::new(Fails(4096), 1 << 20);
        match w.fill(10_000) {
            Err(Error::Read { offset, source }) => {
                assert_eq!(offset, 4096);
                assert_eq!(source.to_string(), "disk gone");
            }
            other => panic!("{other:?}"),
        }
    }
}
