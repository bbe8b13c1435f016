//! [`SparseForward`]: a hosted sparse extent (monolithicSparse, uncompressed grains) decoded from a
//! forward-only `Read` (a pipe, an HTTP body, an OVA member), with no seeking and no scratch file.
//!
//! The walk follows the file in physical order: header, grain directory, grain tables (captured as
//! the stream passes them; qemu-img and VMware put them all before the first grain), then grains.
//! Grains come out in ascending logical order. A grain stored before the one the walk is waiting
//! for is taken from a [`Window`] of the last bytes read, so a small disorder (a writer's parallel
//! requests) is absorbed; anything the window no longer holds is a [`window::Error::OutOfOrder`], as is a
//! grain table stored after the grains it maps beyond the window. Memory: the window, plus 4 bytes
//! per grain of each grain table read ahead of the logical cursor.

use std::{collections::BTreeMap, io::Read};

use window::Window;

use crate::{
    SECTOR_SIZE,
    descriptor::Descriptor,
    header::{self, GdLocation, SparseHeader},
};

/// Default window: absorbs the disorder of qemu-img's parallel writers (8 requests of 2 MiB).
pub const DEFAULT_WINDOW: usize = 16 << 20;

/// Why a forward-only decode failed. Offsets are byte offsets in the sparse file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The window could not hand out bytes: the input failed or ended, or an item lies before
    /// bytes already passed and no longer held (the file cannot be read in one pass).
    #[error(transparent)]
    Window(#[from] window::Error),
    /// The sparse header is invalid.
    #[error("invalid sparse header")]
    Header(#[source] header::Error),
    /// The embedded descriptor is invalid.
    #[error("invalid embedded descriptor")]
    Descriptor(#[source] crate::descriptor::Error),
    /// A layout this decoder does not read (the seekable reader or the stream decoder does).
    #[error("{0} cannot be decoded forward-only")]
    Unsupported(&'static str),
    /// A table entry is corrupt.
    #[error("{what} entry {index} ({entry:#x}) is corrupt: {reason}")]
    CorruptEntry {
        what: &'static str,
        index: u64,
        entry: u32,
        reason: &'static str,
    },
}

impl Error {
    /// Whether the failure is the file's layout (readable with random access), not corruption.
    pub fn needs_random_access(&self) -> bool {
        matches!(self, Error::Window(e) if e.needs_random_access())
    }

    /// The byte offset the error names, if any.
    pub fn offset(&self) -> Option<u64> {
        match self {
            Error::Window(e) => Some(e.offset()),
            _ => None,
        }
    }
}

/// Forward-only decoder of a hosted sparse extent; see the module docs.
pub struct SparseForward<R> {
    window: Window<R>,
    header: SparseHeader,
    descriptor: Option<Descriptor>,
    /// Grain tables not yet read: byte offset → directory index.
    pending: BTreeMap<u64, u64>,
    /// Grain tables read and not yet passed by the cursor, by directory index.
    tables: BTreeMap<u64, Vec<u32>>,
    /// Byte offset of each directory index's table, 0 for none.
    table_offsets: Vec<u64>,
    /// Next logical grain to look at.
    cursor: u64,
    grains: u64,
}

impl<R: Read> SparseForward<R> {
    /// Reads the header and the grain directory; `window` is the byte budget for disorder
    /// ([`DEFAULT_WINDOW`] is a good value).
    ///
    /// # Errors
    /// Header errors, [`Error::Unsupported`] for streamOptimized or compressed extents and a
    /// directory at the end, [`window::Error::Truncated`], [`window::Error::OutOfOrder`].
    pub fn new(input: R, window: usize) -> Result<Self, Error> {
        let mut window = Window::new(input, window);
        let mut head = [0u8; header::HEADER_SIZE];
        window.read_at(0, &mut head, "sparse header")?;
        let header = SparseHeader::parse(&head).map_err(Error::Header)?;
        if header.flags & header::FLAG_COMPRESSED != 0 {
            return Err(Error::Unsupported("a compressed sparse extent"));
        }
        // A grain table entry is a sector number, a grain needs to fit the window.
        if header.grain_bytes() * 4 > window.capacity() {
            return Err(Error::Unsupported("a grain larger than a quarter of the window"));
        }
        let gd_sector = match header.gd {
            GdLocation::Sector(s) => s,
            GdLocation::AtEnd => return Err(Error::Unsupported("a grain directory at the end of the file")),
        };
        let entries = header.gd_entries();
        let gd_offset = sector_bytes(gd_sector, "grain directory", 0)?;
        // The embedded descriptor, when it comes before the directory (it does in every writer's
        // layout); the header bounds its size.
        let descriptor = match header.descriptor {
            Some((sector, sectors)) if sector.saturating_mul(SECTOR_SIZE) < gd_offset => {
                let mut bytes = vec![0u8; (sectors * SECTOR_SIZE) as usize];
                window.read_at(sector * SECTOR_SIZE, &mut bytes, "embedded descriptor")?;
                Some(Descriptor::parse_bytes(&bytes).map_err(Error::Descriptor)?)
            }
            _ => None,
        };
        let mut raw = vec![0u8; (entries * 4) as usize];
        window.read_at(gd_offset, &mut raw, "grain directory")?;
        let mut pending = BTreeMap::new();
        let mut table_offsets = vec![0u64; entries as usize];
        for (index, chunk) in raw.chunks_exact(4).enumerate() {
            let entry = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            if entry == 0 {
                continue;
            }
            let offset = sector_bytes(u64::from(entry), "grain directory", index as u64)?;
            if pending.insert(offset, index as u64).is_some() {
                return Err(Error::CorruptEntry {
                    what: "grain directory",
                    index: index as u64,
                    entry,
                    reason: "two grain tables at one offset",
                });
            }
            table_offsets[index] = offset;
        }
        let grains = header.capacity_sectors.div_ceil(header.grain_sectors);
        let mut decoder = Self {
            window,
            header,
            descriptor,
            pending,
            tables: BTreeMap::new(),
            table_offsets,
            cursor: 0,
            grains,
        };
        // Tables already passed (before or inside the directory) must come from the window now.
        decoder.capture_tables(decoder.window.position())?;
        Ok(decoder)
    }

    /// The validated header.
    pub fn header(&self) -> &SparseHeader {
        &self.header
    }

    /// The embedded descriptor, if the file has one before its grain directory.
    pub fn descriptor(&self) -> Option<&Descriptor> {
        self.descriptor.as_ref()
    }

    /// Virtual size in bytes.
    pub fn capacity(&self) -> u64 {
        self.header.capacity_bytes()
    }

    /// Bytes read from the input so far.
    pub fn position(&self) -> u64 {
        self.window.position()
    }

    /// Appends the next allocated grain to `out` and returns its logical byte offset; `None` once
    /// every grain is out. Offsets ascend; unallocated and zeroed grains are skipped (they read as
    /// zeros). The last grain is cut at the capacity.
    ///
    /// # Errors
    /// [`window::Error::OutOfOrder`] when the layout needs random access, [`window::Error::Truncated`],
    /// [`Error::CorruptEntry`], [`Error::Read`].
    pub fn next_grain(&mut self, out: &mut Vec<u8>) -> Result<Option<u64>, Error> {
        let per_gt = u64::from(self.header.gtes_per_gt);
        while self.cursor < self.grains {
            let gd_index = self.cursor / per_gt;
            let table_offset = self.table_offsets.get(gd_index as usize).copied().unwrap_or(0);
            if table_offset == 0 {
                self.cursor = (gd_index + 1) * per_gt;
                continue;
            }
            if !self.tables.contains_key(&gd_index) {
                self.capture_tables(table_offset.saturating_add(self.header.gt_bytes()))?;
            }
            // Tables behind the cursor are done with.
            while let Some((&first, _)) = self.tables.first_key_value() {
                if first >= gd_index {
                    break;
                }
                self.tables.remove(&first);
            }
            let index = self.cursor;
            let entry = self
                .tables
                .get(&gd_index)
                .and_then(|t| t.get((index % per_gt) as usize).copied())
                .unwrap_or(0);
            self.cursor += 1;
            if entry == 0 || (entry == 1 && self.header.zeroed_grain_entries()) {
                continue;
            }
            let offset = sector_bytes(u64::from(entry), "grain table", index)?;
            let logical = index * self.header.grain_bytes();
            let len = self.header.grain_bytes().min(self.capacity() - logical);
            let start = out.len();
            out.resize(start + len as usize, 0);
            self.capture_tables(offset.saturating_add(len))?;
            if !self.window.copy_out(offset, &mut out[start..]) {
                out.truncate(start);
                return Err(Error::Window(self.window.missed("grain", offset)));
            }
            return Ok(Some(logical));
        }
        Ok(None)
    }

    /// Reads up to `end`, capturing every pending grain table on the way.
    fn capture_tables(&mut self, end: u64) -> Result<(), Error> {
        let gt_bytes = self.header.gt_bytes();
        let per_gt = self.header.gtes_per_gt as usize;
        loop {
            let next = self.pending.first_key_value().map(|(&o, &i)| (o, i));
            let Some((offset, index)) = next.filter(|&(o, _)| o < end) else {
                self.window.fill(end)?;
                return Ok(());
            };
            self.pending.remove(&offset);
            let mut raw = vec![0u8; gt_bytes as usize];
            let table_end = offset.saturating_add(gt_bytes);
            self.window.fill(table_end)?;
            if !self.window.copy_out(offset, &mut raw) {
                return Err(Error::Window(self.window.missed("grain table", offset)));
            }
            let table = raw
                .chunks_exact(4)
                .take(per_gt)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            self.tables.insert(index, table);
        }
    }
}

fn sector_bytes(sector: u64, what: &'static str, index: u64) -> Result<u64, Error> {
    sector.checked_mul(SECTOR_SIZE).ok_or(Error::CorruptEntry {
        what,
        index,
        entry: u32::try_from(sector).unwrap_or(u32::MAX),
        reason: "offset overflows",
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::header::{FLAG_COMPRESSED, FLAG_MARKERS, RawSparseHeader, tests::stream_raw};

    const GRAIN: usize = 4096;

    /// A sparse file of `grains` 4 KiB grains (one grain table of 512 entries): header at sector 0,
    /// directory at sector 1, table at sector 2, grains stored in the order of `placement`
    /// (logical grain indexes), each grain filled with its index + 1.
    fn image(grains: u64, placement: &[u64], table_last: bool) -> Vec<u8> {
        let mut raw: RawSparseHeader = stream_raw(grains * 8);
        raw.flags &= !(FLAG_COMPRESSED | FLAG_MARKERS);
        raw.version = 1;
        raw.grain_size = 8;
        raw.compress_algorithm = 0;
        raw.gd_offset = 1;
        raw.overhead = 6;
        let mut file = raw.to_bytes().to_vec();
        file.resize(6 * 512, 0);
        let mut table = vec![0u32; 512];
        for &g in placement {
            table[g as usize] = (file.len() / 512) as u32;
            file.extend(std::iter::repeat_n((g as u8).wrapping_add(1), GRAIN));
        }
        let gt_sector = if table_last { (file.len() / 512) as u32 } else { 2 };
        if table_last {
            file.resize(file.len() + 2048, 0);
        }
        file[512..516].copy_from_slice(&gt_sector.to_le_bytes());
        let at = gt_sector as usize * 512;
        for (i, e) in table.iter().enumerate() {
            file[at + i * 4..at + i * 4 + 4].copy_from_slice(&e.to_le_bytes());
        }
        file
    }

    fn decode(file: &[u8], window: usize) -> Result<Vec<(u64, u8)>, Error> {
        let mut d = SparseForward::new(file, window)?;
        let mut out = Vec::new();
        let mut grain = Vec::new();
        while let Some(offset) = d.next_grain(&mut grain)? {
            assert_eq!(grain.len(), GRAIN);
            out.push((offset, grain[0]));
            grain.clear();
        }
        Ok(out)
    }

    #[test]
    fn in_order_grains_come_out_ascending_and_holes_are_skipped() {
        let file = image(8, &[0, 2, 5], false);
        let got = decode(&file, 1 << 20).unwrap();
        assert_eq!(got, [(0, 1), (2 * 4096, 3), (5 * 4096, 6)]);
    }

    #[test]
    fn small_disorder_is_absorbed_by_the_window() {
        let file = image(8, &[3, 1, 0, 2], false);
        let got = decode(&file, 1 << 20).unwrap();
        assert_eq!(got, [(0, 1), (4096, 2), (2 * 4096, 3), (3 * 4096, 4)]);
    }

    #[test]
    fn disorder_beyond_the_window_names_the_offset() {
        // Grain 0 is stored first, then 400 grains (1.6 MiB), then grain 1.. the window is 512 KiB:
        // grain 0 is fine, but grain 1 is stored after grain 401 and grain 2 long before it.
        let mut placement: Vec<u64> = (2..402).collect();
        placement.insert(0, 0);
        placement.push(1);
        let file = image(402, &placement, false);
        let err = decode(&file, 512 << 10).unwrap_err();
        let Error::Window(window::Error::OutOfOrder { what, offset, .. }) = err else {
            panic!("{err:?}");
        };
        assert_eq!(what, "grain");
        // Grain 2 is the second one stored.
        assert_eq!(offset, 6 * 512 + GRAIN as u64);
    }

    #[test]
    fn a_table_after_its_grains_is_read_from_the_window() {
        let file = image(4, &[0, 1], true);
        assert_eq!(decode(&file, 1 << 20).unwrap(), [(0, 1), (4096, 2)]);
    }

    #[test]
    fn truncation_is_an_error() {
        let file = image(8, &[0, 2, 5], false);
        let err = decode(&file[..file.len() - 100], 1 << 20).unwrap_err();
        assert!(
            matches!(err, Error::Window(window::Error::Truncated { what: "grain", .. })),
            "{err:?}"
        );
        let err = decode(&file[..700], 1 << 20).unwrap_err();
        assert!(
            matches!(err, Error::Window(window::Error::Truncated { .. })),
            "{err:?}"
        );
    }

    #[test]
    fn stream_optimized_is_refused() {
        let file = stream_raw(4096).to_bytes();
        let err = decode(&file, 1 << 20).unwrap_err();
        assert!(matches!(err, Error::Unsupported(_)), "{err:?}");
    }

    #[test]
    fn hostile_directory_entries_do_not_panic() {
        let mut file = image(8, &[0, 1], false);
        // Table far past the end of the input, then at an overflowing sector.
        file[512..516].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&file, 1 << 20).is_err());
        let mut file = image(8, &[0, 1], false);
        let at = 2 * 512;
        file[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&file, 1 << 20).is_err());
    }
}
