//! [`Qcow2Forward`]: a standalone qcow2 image (v2 or v3) decoded from a forward-only `Read` (a
//! pipe, an HTTP body, an OVA member), with no seeking and no scratch file.
//!
//! The walk follows the file in physical order: header, L1 table, then L2 tables captured as the
//! stream passes them (their offsets come from L1), data clusters mapped by L2 tables already
//! read; refcount blocks, snapshots and everything else are skipped. Clusters come out in
//! ascending guest order: plain and compressed (deflate) ones as data, zero and unallocated ones
//! not at all (they read as zeros). A mapped cluster the stream passes before its turn is held
//! (up to [`REORDER_BUDGET`] bytes, compressed ones compressed: qemu-img `convert -c` interleaves
//! regions); a cluster stored before the L2 table that maps it is taken from a [`Window`] of the
//! last bytes read. Anything neither holds is a [`window::Error::OutOfOrder`] naming the offset.
//! Backing files, encryption, external data files, zstd and extended L2 entries are refused.
//! Memory: the window, the held clusters, and the L2 tables read ahead of the guest cursor with
//! 4 bytes per entry of physical order.

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BinaryHeap},
    io::Read,
};

use window::Window;

use crate::{
    header::{COMPRESSED, Header, OFFSET_MASK, V3_HEADER_LEN, ZERO, l1_entries_for},
    reader::inflate_cluster,
};

/// Default window of recent bytes: clusters stored before the L2 table that maps them.
pub const DEFAULT_WINDOW: usize = 16 << 20;

/// Most bytes of clusters held because the stream passed them before their turn (qemu-img
/// `convert -c` interleaves the compressed clusters of one region with the plain clusters of the
/// one before, across tens of MiB of file). Compressed clusters are held compressed.
pub const REORDER_BUDGET: usize = 32 << 20;

/// Why a forward-only decode failed. Offsets are byte offsets in the qcow2 file (host offsets).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The window could not hand out bytes: the input failed or ended, or an item lies before
    /// bytes already passed and no longer held (the file cannot be read in one pass).
    #[error(transparent)]
    Window(#[from] window::Error),
    /// The header, a table entry or a compressed cluster is invalid, or the image uses a feature
    /// that is not supported.
    #[error("invalid or unsupported qcow2 image")]
    Image(#[source] crate::Error),
    /// A layout this decoder does not read (the seekable reader does).
    #[error("{0} cannot be decoded forward-only")]
    Unsupported(&'static str),
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

/// Forward-only decoder of a qcow2 image; see the module docs.
pub struct Qcow2Forward<R> {
    window: Window<R>,
    header: Header,
    /// L2 tables not yet read: host offset → L1 index.
    pending: BTreeMap<u64, u64>,
    /// L2 tables read and not yet passed by the cursor, by L1 index.
    tables: BTreeMap<u64, Vec<u64>>,
    /// Host offset of each used L1 entry's table, 0 for none.
    l2_offsets: Vec<u64>,
    /// Next guest cluster to look at.
    cursor: u64,
    clusters: u64,
    l2_bits: u32,
    compressed: Vec<u8>,
    inflated: Vec<u8>,
    /// Per captured L2 table: its mapped entries ahead of the stream, by host offset (4 bytes per
    /// entry), and how many of them the stream has passed.
    orders: BTreeMap<u64, (Vec<u32>, usize)>,
    /// The next entry ahead of the stream of each table in `orders`: (host offset, L1 index).
    ahead: BinaryHeap<Reverse<(u64, u64)>>,
    /// Stored bytes of clusters passed before their turn, by guest cluster.
    held: BTreeMap<u64, Vec<u8>>,
    held_bytes: usize,
}

impl<R: Read> Qcow2Forward<R> {
    /// Reads the header and the L1 table; `window` is the byte budget for disorder
    /// ([`DEFAULT_WINDOW`] is a good value).
    ///
    /// # Errors
    /// [`Error::Image`] for header and L1 problems (including backing files, encryption and the
    /// other refused features), [`Error::Unsupported`], [`window::Error::Truncated`], [`window::Error::OutOfOrder`].
    pub fn new(input: R, window: usize) -> Result<Self, Error> {
        let mut window = Window::new(input, window);
        let mut head = [0u8; V3_HEADER_LEN + 8];
        window.fill(head.len() as u64)?;
        let n = (window.position() as usize).min(head.len());
        window.copy_out(0, &mut head[..n]);
        let header = Header::parse(&head[..n]).map_err(Error::Image)?;
        if header.backing_file_offset != 0 {
            let mut name = vec![0u8; header.backing_file_size as usize];
            window.read_at(header.backing_file_offset, &mut name, "backing file name")?;
            return Err(Error::Image(crate::Error::BackingFile {
                name: String::from_utf8_lossy(&name).into_owned(),
            }));
        }
        if header.has_extended_l2() {
            return Err(Error::Unsupported("an image with extended L2 entries"));
        }
        let cluster_size = header.cluster_size();
        // A compressed cluster may take two clusters of the file; both must fit with room to spare.
        if cluster_size * 8 > window.capacity() {
            return Err(Error::Unsupported(
                "a cluster larger than an eighth of the window",
            ));
        }
        let l2_bits = header.l2_bits();
        let used = l1_entries_for(header.virtual_size, header.cluster_bits + l2_bits).min(header.l1_size);
        let mut raw = vec![0u8; (used * 8) as usize];
        window.read_at(header.l1_table_offset, &mut raw, "L1 table")?;
        let mut pending = BTreeMap::new();
        let mut l2_offsets = vec![0u64; used as usize];
        for (index, chunk) in raw.chunks_exact(8).enumerate() {
            let entry = be_u64(chunk);
            let offset = entry & OFFSET_MASK;
            if offset == 0 {
                continue;
            }
            let corrupt = |reason| {
                Error::Image(crate::Error::CorruptL1Entry {
                    index: index as u64,
                    entry,
                    reason,
                })
            };
            if !offset.is_multiple_of(cluster_size) {
                return Err(corrupt("L2 table offset is not cluster aligned"));
            }
            if pending.insert(offset, index as u64).is_some() {
                return Err(corrupt("two L1 entries share an L2 table"));
            }
            l2_offsets[index] = offset;
        }
        let clusters = header.virtual_size.div_ceil(cluster_size);
        let mut decoder = Self {
            window,
            header,
            pending,
            tables: BTreeMap::new(),
            l2_offsets,
            cursor: 0,
            clusters,
            l2_bits,
            compressed: Vec::new(),
            inflated: Vec::new(),
            orders: BTreeMap::new(),
            ahead: BinaryHeap::new(),
            held: BTreeMap::new(),
            held_bytes: 0,
        };
        // Tables already passed (before or inside L1) must come from the window now.
        decoder.capture_tables(decoder.window.position())?;
        Ok(decoder)
    }

    /// The validated header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Virtual size in bytes.
    pub fn virtual_size(&self) -> u64 {
        self.header.virtual_size
    }

    /// Bytes read from the input so far.
    pub fn position(&self) -> u64 {
        self.window.position()
    }

    /// Appends the next cluster holding data to `out` and returns its guest offset; `None` once
    /// every cluster is out. Offsets ascend; zero and unallocated clusters are skipped (they read
    /// as zeros). The last cluster is cut at the virtual size.
    ///
    /// # Errors
    /// [`window::Error::OutOfOrder`] when the layout needs random access, [`window::Error::Truncated`],
    /// [`Error::Image`] for corrupt entries and compressed clusters, [`Error::Read`].
    pub fn next_cluster(&mut self, out: &mut Vec<u8>) -> Result<Option<u64>, Error> {
        let per_l2 = 1u64 << self.l2_bits;
        let cluster_size = self.header.cluster_size();
        while self.cursor < self.clusters {
            let l1_index = self.cursor >> self.l2_bits;
            let l2_offset = self.l2_offsets.get(l1_index as usize).copied().unwrap_or(0);
            if l2_offset == 0 {
                self.cursor = (l1_index + 1) * per_l2;
                continue;
            }
            if !self.tables.contains_key(&l1_index) {
                self.advance(l2_offset.saturating_add(cluster_size))?;
            }
            // Tables behind the cursor are done with.
            while let Some((&first, _)) = self.tables.first_key_value() {
                if first >= l1_index {
                    break;
                }
                self.tables.remove(&first);
                self.orders.remove(&first);
            }
            let cluster = self.cursor;
            let entry = self
                .tables
                .get(&l1_index)
                .and_then(|t| t.get((cluster & (per_l2 - 1)) as usize).copied())
                .unwrap_or(0);
            let guest_offset = cluster << self.header.cluster_bits;
            let len = cluster_size.min(self.header.virtual_size - guest_offset) as usize;
            let corrupt = |reason| {
                Error::Image(crate::Error::CorruptL2Entry {
                    guest_offset,
                    entry,
                    reason,
                })
            };
            if entry & COMPRESSED != 0 {
                let bits = self.header.cluster_bits;
                let x = 62 - (bits - 8);
                let host_offset = entry & ((1u64 << x) - 1);
                let sectors = (entry >> x) & ((1u64 << (62 - x)) - 1);
                let stored = ((sectors + 1) * 512).saturating_sub(host_offset & 511);
                // The sector count is rounded up; the file may end before it.
                let stored = self.fetch(cluster, host_offset, stored, "compressed cluster")?;
                self.compressed = stored;
                self.inflated.resize(cluster_size as usize, 0);
                inflate_cluster(&self.compressed, &mut self.inflated).map_err(|reason| {
                    Error::Image(crate::Error::BadCompressedCluster {
                        guest_offset,
                        host_offset,
                        reason,
                    })
                })?;
                out.extend_from_slice(&self.inflated[..len]);
                self.cursor += 1;
                return Ok(Some(guest_offset));
            }
            if entry & ZERO != 0 {
                if self.header.version < 3 {
                    return Err(corrupt("zero flag in a version 2 image"));
                }
                self.cursor += 1;
                continue;
            }
            let host_offset = entry & OFFSET_MASK;
            if host_offset == 0 {
                self.cursor += 1;
                continue;
            }
            if !host_offset.is_multiple_of(cluster_size) {
                return Err(corrupt("data cluster offset is not cluster aligned"));
            }
            let stored = self.fetch(cluster, host_offset, len as u64, "data cluster")?;
            // Like qemu, a last cluster cut by the end of the file reads as zeros past it.
            let start = out.len();
            out.extend_from_slice(&stored);
            out.resize(start + len, 0);
            self.recycle(stored);
            self.cursor += 1;
            return Ok(Some(guest_offset));
        }
        Ok(None)
    }

    /// Reads up to `end`, capturing every pending L2 table on the way.
    fn capture_tables(&mut self, end: u64) -> Result<(), Error> {
        let cluster_size = self.header.cluster_size();
        loop {
            let next = self.pending.first_key_value().map(|(&o, &i)| (o, i));
            let Some((offset, index)) = next.filter(|&(o, _)| o < end) else {
                return Ok(self.window.fill(end)?);
            };
            self.pending.remove(&offset);
            let mut raw = vec![0u8; cluster_size as usize];
            self.window.fill(offset.saturating_add(cluster_size))?;
            if !self.window.copy_out(offset, &mut raw) {
                return Err(Error::Window(self.window.missed("L2 table", offset)));
            }
            let table: Vec<u64> = raw.chunks_exact(8).map(be_u64).collect();
            self.index_table(index, &table);
            self.tables.insert(index, table);
        }
    }

    /// Orders a freshly read table's mapped entries not yet gone from the window by host offset
    /// (those already passed are picked up from the window by the next advance).
    fn index_table(&mut self, l1_index: u64, table: &[u64]) {
        let oldest = self.window.oldest();
        let mut order: Vec<(u64, u32)> = table
            .iter()
            .enumerate()
            .filter_map(|(j, &e)| stored_range(&self.header, e).map(|(host, _)| (host, j as u32)))
            .filter(|&(host, _)| host >= oldest)
            .collect();
        order.sort_unstable();
        if let Some(&(host, _)) = order.first() {
            self.ahead.push(Reverse((host, l1_index)));
            self.orders
                .insert(l1_index, (order.into_iter().map(|(_, j)| j).collect(), 0));
        }
    }

    /// The stored bytes of `cluster` (`len` bytes at `host`, fewer if the input ends first): held,
    /// or read forward (holding the clusters passed on the way), or still in the window.
    fn fetch(&mut self, cluster: u64, host: u64, len: u64, what: &'static str) -> Result<Vec<u8>, Error> {
        if let Some(bytes) = self.held.remove(&cluster) {
            self.held_bytes -= bytes.len();
            return Ok(bytes);
        }
        let end = host.saturating_add(len);
        if end > self.window.position() {
            self.advance(end)?;
            if let Some(bytes) = self.held.remove(&cluster) {
                self.held_bytes -= bytes.len();
                return Ok(bytes);
            }
        }
        let available = end.min(self.window.position()).saturating_sub(host) as usize;
        let mut bytes = self.spare();
        bytes.resize(available, 0);
        if available == 0 || !self.window.copy_out(host, &mut bytes) {
            return Err(Error::Window(self.window.missed(what, host)));
        }
        Ok(bytes)
    }

    /// Reads up to `end`, capturing pending L2 tables and holding (within [`REORDER_BUDGET`]) the
    /// clusters not yet emitted that the stream passes.
    fn advance(&mut self, end: u64) -> Result<(), Error> {
        let per_l2 = 1u64 << self.l2_bits;
        loop {
            let table = self
                .pending
                .first_key_value()
                .map(|(&o, _)| o)
                .filter(|&o| o < end);
            let item = self.ahead.peek().map(|Reverse(i)| *i).filter(|&(h, _)| h < end);
            let (host, l1_index) = match (table, item) {
                (None, None) => return Ok(self.window.fill(end)?),
                (Some(t), i) if i.is_none_or(|(h, _)| t <= h) => {
                    self.capture_tables(t.saturating_add(1))?;
                    continue;
                }
                (_, Some(i)) => i,
                // The guard above takes every `(Some, None)`.
                (Some(_), None) => return Ok(self.window.fill(end)?),
            };
            self.ahead.pop();
            let Some(j) = self.next_in_order(l1_index) else {
                continue;
            };
            let cluster = l1_index * per_l2 + u64::from(j);
            let entry = self
                .tables
                .get(&l1_index)
                .and_then(|t| t.get(j as usize).copied())
                .unwrap_or(0);
            let Some((_, stored)) = stored_range(&self.header, entry) else {
                continue;
            };
            if cluster < self.cursor || self.held.contains_key(&cluster) {
                continue;
            }
            let item_end = host.saturating_add(stored);
            self.window.fill(item_end)?;
            let available = item_end.min(self.window.position()).saturating_sub(host) as usize;
            if available == 0 || self.held_bytes + available > REORDER_BUDGET {
                continue;
            }
            let mut bytes = self.spare();
            bytes.resize(available, 0);
            if self.window.copy_out(host, &mut bytes) {
                self.held_bytes += available;
                self.held.insert(cluster, bytes);
            }
        }
    }

    /// Moves table `l1_index`'s order past its current entry, queues the next one, and returns the
    /// entry index passed (`None` if the table is gone).
    fn next_in_order(&mut self, l1_index: u64) -> Option<u32> {
        let (order, next) = self.orders.get_mut(&l1_index)?;
        let j = *order.get(*next)?;
        *next += 1;
        let following = order.get(*next).copied();
        let table = self.tables.get(&l1_index);
        if let Some(k) = following
            && let Some((host, _)) = table
                .and_then(|t| t.get(k as usize))
                .and_then(|&e| stored_range(&self.header, e))
        {
            self.ahead.push(Reverse((host, l1_index)));
        }
        Some(j)
    }

    fn spare(&mut self) -> Vec<u8> {
        let mut v = std::mem::take(&mut self.compressed);
        v.clear();
        v
    }

    fn recycle(&mut self, v: Vec<u8>) {
        if v.capacity() > self.compressed.capacity() {
            self.compressed = v;
        }
    }
}

/// `(host offset, stored length)` of a plain or compressed L2 entry (`None` for zero, unallocated
/// and entries whose offset is not cluster aligned: those are judged when their turn comes).
fn stored_range(header: &Header, entry: u64) -> Option<(u64, u64)> {
    if entry & COMPRESSED != 0 {
        let x = 62 - (header.cluster_bits - 8);
        let host = entry & ((1u64 << x) - 1);
        let sectors = (entry >> x) & ((1u64 << (62 - x)) - 1);
        return Some((host, ((sectors + 1) * 512).saturating_sub(host & 511)));
    }
    let host = entry & OFFSET_MASK;
    if entry & ZERO != 0 || host == 0 || !host.is_multiple_of(header.cluster_size()) {
        return None;
    }
    Some((host, header.cluster_size()))
}

fn be_u64(c: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&c[..8]);
    u64::from_be_bytes(b)
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use proptest::prelude::*;

    use super::*;
    use crate::Qcow2Writer;

    /// A 1 MiB image written by our writer with data at 128 KiB and at the end.
    fn image() -> Vec<u8> {
        let mut w = Qcow2Writer::new(Cursor::new(Vec::new()), 1 << 20).unwrap();
        w.write_at(128 << 10, &[0xab; 64 << 10]).unwrap();
        w.write_at((1 << 20) - 4096, &[0xcd; 4096]).unwrap();
        w.finish().unwrap().into_inner()
    }

    fn decode(bytes: &[u8]) -> Result<Vec<(u64, usize)>, Error> {
        let mut d = Qcow2Forward::new(bytes, 1 << 20)?;
        let mut out = Vec::new();
        let mut runs = Vec::new();
        while let Some(offset) = d.next_cluster(&mut out)? {
            runs.push((offset, out.len()));
            out.clear();
        }
        Ok(runs)
    }

    #[test]
    fn writer_image_decodes_forward() {
        // The writer puts its tables at the end, after the clusters they map: the window holds
        // them, since the whole image is smaller than it.
        assert_eq!(
            decode(&image()).unwrap(),
            [(128 << 10, 65536), ((1 << 20) - 65536, 65536)]
        );
    }

    #[test]
    fn refuses_a_non_qcow2_header() {
        let err = decode(&[0u8; 512]).unwrap_err();
        assert!(
            matches!(err, Error::Image(crate::Error::BadMagic { .. })),
            "{err:?}"
        );
    }

    proptest! {
        /// Any corruption of a valid image gives data or an error, never a panic.
        #[test]
        fn corrupt_images_never_panic(flips in prop::collection::vec((0usize..2048, any::<u8>()), 1..8), cut in 0usize..4) {
            let mut bytes = image();
            let len = bytes.len();
            for (at, byte) in flips {
                // Mostly the header, the start of the tables, and a few anywhere.
                let at = if at < 1024 { at } else { (at * 1021) % len };
                bytes[at] = byte;
            }
            let keep = len - cut * len / 5;
            let _ = decode(&bytes[..keep]);
        }
    }
}
