//! Proof that a streamOptimized stream ended where its writer ended it, not where a connection,
//! a disk or a tar member happened to stop.
//!
//! A stream cut exactly between two grain records looks like a whole stream to a decoder that
//! only checks record boundaries, and converting it yields a disk that is zeros after the cut. So
//! the end of a stream counts only when one of two proofs holds:
//!
//! - **Footer and end-of-stream marker.** When the header says the grain directory is at the end
//!   (`gdOffset = GD_AT_END`, VMware's own streams and every `ExportVm` body), the writer finishes
//!   with a footer marker + footer and an EOS marker; both must have been seen.
//! - **The tables agree.** qemu writes the grain directory and grain tables in the metadata area
//!   before the first grain and no footer. Those tables are read as they stream by (never
//!   buffered beyond the directory): they name how many grains were written and where the last one
//!   starts. The stream is whole when exactly that many grains arrived and the last one did.
//!
//! When the tables are not where they can be read before the grains (a directory after its tables,
//! or tables past the metadata area), only the footer proof is accepted.

use crate::{SECTOR_SIZE, header::GdLocation, header::SparseHeader};

/// How this stream's end is proven; chosen from the header and refined as the tables pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EndProof {
    /// A footer and then an EOS marker must arrive.
    FooterAndEos { footer: bool, eos: bool },
    /// The grain tables in the metadata area, read as they pass.
    Tables(TableScan),
}

/// Why the end of a stream is not proven.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Missing {
    /// The footer or the EOS marker never arrived.
    Footer,
    Eos,
    /// The tables name more grains, or a later last grain, than arrived.
    Grains {
        expected: u64,
        seen: u64,
    },
    LastGrain {
        sector: u64,
    },
}

impl Missing {
    pub(crate) fn describe(self) -> String {
        match self {
            Missing::Footer => "no footer: the grain directory is at the end of this stream".into(),
            Missing::Eos => "no end-of-stream marker after the footer".into(),
            Missing::Grains { expected, seen } => {
                format!("the grain tables name {expected} grains but {seen} arrived")
            }
            Missing::LastGrain { sector } => format!(
                "the grain tables name a grain at byte offset {} that never arrived",
                sector * SECTOR_SIZE
            ),
        }
    }
}

impl EndProof {
    /// The proof a stream with this header must give; `grains_start` is the byte offset where the
    /// metadata area ends.
    pub(crate) fn for_header(header: &SparseHeader, grains_start: u64) -> Self {
        match header.gd {
            GdLocation::Sector(sector) => {
                let gd_start = sector.saturating_mul(SECTOR_SIZE);
                let gd_len = header.gd_entries() * 4;
                if sector > 0 && gd_start.saturating_add(gd_len) <= grains_start {
                    return EndProof::Tables(TableScan::new(header, gd_start, gd_len, grains_start));
                }
                Self::footer()
            }
            GdLocation::AtEnd => Self::footer(),
        }
    }

    fn footer() -> Self {
        EndProof::FooterAndEos {
            footer: false,
            eos: false,
        }
    }

    /// Bytes of the metadata area at stream offset `offset` pass by.
    pub(crate) fn observe(&mut self, offset: u64, bytes: &[u8]) {
        if let EndProof::Tables(scan) = self
            && !scan.observe(offset, bytes)
        {
            *self = Self::footer();
        }
    }

    pub(crate) fn saw_footer(&mut self) {
        if let EndProof::FooterAndEos { footer, .. } = self {
            *footer = true;
        }
    }

    pub(crate) fn saw_eos(&mut self) {
        if let EndProof::FooterAndEos { footer: true, eos } = self {
            *eos = true;
        }
    }

    /// Whether the stream is whole after `grains` grains, the last at byte offset `last_grain`.
    pub(crate) fn check(&self, grains: u64, last_grain: Option<u64>) -> Result<(), Missing> {
        match self {
            EndProof::FooterAndEos { footer: false, .. } => Err(Missing::Footer),
            EndProof::FooterAndEos { eos: false, .. } => Err(Missing::Eos),
            EndProof::FooterAndEos { .. } => Ok(()),
            EndProof::Tables(scan) => scan.check(grains, last_grain),
        }
    }
}

/// Reads the primary grain directory and then its tables out of the metadata bytes as they pass,
/// keeping only the directory and two numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TableScan {
    gd_start: u64,
    gd: Vec<u8>,
    gd_len: u64,
    gt_bytes: u64,
    grains_start: u64,
    zeroed_grain_entries: bool,
    /// Table start offsets not yet passed, ascending (filled once the directory is whole).
    tables: Vec<u64>,
    next_table: usize,
    /// Bytes of the current table already read, and an entry split across calls.
    table_done: u64,
    entry: [u8; 4],
    entry_len: usize,
    allocated: u64,
    last_sector: u64,
}

impl TableScan {
    fn new(header: &SparseHeader, gd_start: u64, gd_len: u64, grains_start: u64) -> Self {
        Self {
            gd_start,
            gd: Vec::new(),
            gd_len,
            gt_bytes: u64::from(header.gtes_per_gt) * 4,
            grains_start,
            zeroed_grain_entries: header.zeroed_grain_entries(),
            tables: Vec::new(),
            next_table: 0,
            table_done: 0,
            entry: [0; 4],
            entry_len: 0,
            allocated: 0,
            last_sector: 0,
        }
    }

    fn directory_whole(&self) -> bool {
        self.gd.len() as u64 == self.gd_len
    }

    /// Takes the bytes at `offset` (every byte of the metadata area passes exactly once, in
    /// order); false when the layout turns out to be unreadable in one pass.
    fn observe(&mut self, offset: u64, bytes: &[u8]) -> bool {
        let end = offset + bytes.len() as u64;
        if !self.directory_whole() {
            let from = self.gd_start + self.gd.len() as u64;
            if offset > from {
                // Part of the directory went by unseen.
                return false;
            }
            let to = (self.gd_start + self.gd_len).min(end);
            if to > from {
                // Both bounds lie inside `bytes`.
                self.gd
                    .extend_from_slice(&bytes[(from - offset) as usize..(to - offset) as usize]);
            }
            if !self.directory_whole() {
                return true;
            }
            if !self.plan_tables(to) {
                return false;
            }
        }
        while let Some(&start) = self.tables.get(self.next_table) {
            let table_end = start + self.gt_bytes;
            let from = start + self.table_done;
            if from >= end {
                return true;
            }
            if offset > from {
                return false;
            }
            let to = table_end.min(end);
            for &byte in &bytes[(from - offset) as usize..(to - offset) as usize] {
                self.entry[self.entry_len] = byte;
                self.entry_len += 1;
                if self.entry_len == 4 {
                    self.entry_len = 0;
                    self.take_entry(u32::from_le_bytes(self.entry));
                }
            }
            self.table_done = to - start;
            if to < table_end {
                return true;
            }
            self.next_table += 1;
            self.table_done = 0;
        }
        true
    }

    fn take_entry(&mut self, entry: u32) {
        let unallocated = entry == 0 || (entry == 1 && self.zeroed_grain_entries);
        if !unallocated {
            self.allocated += 1;
            self.last_sector = self.last_sector.max(u64::from(entry));
        }
    }

    fn check(&self, grains: u64, last_grain: Option<u64>) -> Result<(), Missing> {
        if grains < self.allocated {
            return Err(Missing::Grains {
                expected: self.allocated,
                seen: grains,
            });
        }
        if self.allocated > 0 && last_grain.is_none_or(|at| at < self.last_sector * SECTOR_SIZE) {
            return Err(Missing::LastGrain {
                sector: self.last_sector,
            });
        }
        Ok(())
    }

    /// The directory is whole at `here`: list its tables, which must all lie ahead and before the
    /// first grain.
    fn plan_tables(&mut self, here: u64) -> bool {
        let mut tables = Vec::new();
        for entry in self.gd.chunks_exact(4) {
            let sector = u64::from(u32::from_le_bytes([entry[0], entry[1], entry[2], entry[3]]));
            if sector == 0 {
                continue;
            }
            let start = sector * SECTOR_SIZE;
            if start < here || start + self.gt_bytes > self.grains_start {
                return false;
            }
            tables.push(start);
        }
        tables.sort_unstable();
        tables.dedup();
        // Overlapping tables are not a layout any writer makes.
        if tables.windows(2).any(|w| w[0] + self.gt_bytes > w[1]) {
            return false;
        }
        self.tables = tables;
        // The directory is no longer needed.
        self.gd = Vec::new();
        self.gd_len = 0;
        true
    }
}
