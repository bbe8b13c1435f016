//! [`Qcow2Reader`]: random access to the active layer of a standalone qcow2 image over any
//! `Read + Seek`, plus an extent walk that tells allocated data from zeros and holes.
//!
//! Owns L1/L2 lookup (standard 64-bit and extended 128-bit entries, whose subclusters are the lookup
//! unit), compressed-cluster inflation and bounds checks of every host offset against the
//! file length. Does not read refcounts or snapshots (neither changes what the guest sees).
//!
//! Memory: the L1 table (8 bytes per `cluster_size^2 / 8` bytes of virtual disk, at most 32 MiB, and
//! never more than the file holds), one cached L2 table and one inflated cluster (each one cluster).

use std::io::{self, Read, Seek, SeekFrom};

use flate2::{Decompress, FlushDecompress, Status};

use crate::{
    Error, Result,
    header::{COMPRESSED, Header, OFFSET_MASK, SUBCLUSTER_BITS, V3_HEADER_LEN, ZERO},
};

/// What a run of guest bytes is backed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ExtentKind {
    /// Clusters stored in the file (plain or compressed); read them.
    Data,
    /// Clusters explicitly marked as reading zeros (v3 zero flag).
    Zero,
    /// Clusters never written; they read as zeros (standalone images have no backing file).
    Unallocated,
}

impl ExtentKind {
    /// Whether the bytes are known to be zero without reading them.
    pub fn reads_as_zero(self) -> bool {
        !matches!(self, ExtentKind::Data)
    }
}

/// A maximal run of guest bytes with one [`ExtentKind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Extent {
    /// Guest offset of the first byte.
    pub offset: u64,
    /// Length in bytes (the last extent ends at the virtual size, which need not be cluster aligned).
    pub len: u64,
    /// What backs the run.
    pub kind: ExtentKind,
}

impl Extent {
    /// Guest offset one past the last byte.
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }
}

/// Where one guest cluster lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mapping {
    Unallocated,
    Zero,
    Data { host_offset: u64 },
    Compressed { host_offset: u64, len: u64 },
}

impl Mapping {
    fn kind(self) -> ExtentKind {
        match self {
            Mapping::Unallocated => ExtentKind::Unallocated,
            Mapping::Zero => ExtentKind::Zero,
            Mapping::Data { .. } | Mapping::Compressed { .. } => ExtentKind::Data,
        }
    }
}

/// Reader for a standalone qcow2 image (v2 or v3).
///
/// Reads plain, zero, compressed (deflate) clusters and extended L2 entries (subclusters). Rejects,
/// with a clear error: backing files, encryption, external data files, zstd compression, the
/// `corrupt` bit. The `dirty` bit is accepted (only refcounts are stale).
pub struct Qcow2Reader<R> {
    inner: R,
    header: Header,
    file_len: u64,
    l1: Vec<u64>,
    /// The most recently used L2 table, by L1 index.
    l2_cache: Option<(u64, Vec<u64>)>,
    /// The most recently inflated compressed cluster, by guest cluster index.
    inflated: Option<(u64, Vec<u8>)>,
    compressed_buf: Vec<u8>,
    /// Known position of `inner`, to skip redundant seeks (they flush a `BufReader`).
    pos: Option<u64>,
    /// The last result of `extent_at`.
    last_extent: Option<Extent>,
    /// log2 of the guest bytes one L2 entry (or, with extended L2, one subcluster bit) maps: the unit
    /// of every lookup.
    unit_bits: u32,
    /// log2 of units per cluster: 0, or 5 with extended L2 (32 subclusters).
    sub_bits: u32,
    /// log2 of entries per L2 table.
    l2_bits: u32,
}

impl<R: Read + Seek> Qcow2Reader<R> {
    /// Opens an image: reads and validates the header and the L1 table.
    ///
    /// # Errors
    /// Any header error (see [`Header::parse`]), [`Error::BackingFile`], an L1 table outside the file,
    /// or an I/O error.
    pub fn new(mut inner: R) -> Result<Self> {
        let file_len = inner
            .seek(SeekFrom::End(0))
            .map_err(|source| Error::ReadingFileLength { source })?;
        let mut head = [0u8; V3_HEADER_LEN + 8];
        inner
            .seek(SeekFrom::Start(0))
            .map_err(|source| Error::ReadingHeader { offset: 0, source })?;
        let n =
            read_up_to(&mut inner, &mut head).map_err(|source| Error::ReadingHeader { offset: 0, source })?;
        let header = Header::parse(&head[..n])?;

        if header.backing_file_offset != 0 {
            let name = read_backing_name(&mut inner, &header, file_len)?;
            return Err(Error::BackingFile { name });
        }

        let l1_bytes = header.l1_size * 8;
        let l1_end = header.l1_table_offset.checked_add(l1_bytes);
        if header.l1_size > 0 && l1_end.is_none_or(|end| end > file_len) {
            return Err(Error::InvalidHeader {
                field: "l1_table_offset",
                value: header.l1_table_offset,
                reason: "L1 table extends past the end of the file",
            });
        }
        let mut raw = vec![0u8; l1_bytes as usize];
        if !raw.is_empty() {
            let offset = header.l1_table_offset;
            inner
                .seek(SeekFrom::Start(offset))
                .and_then(|_| inner.read_exact(&mut raw))
                .map_err(|source| Error::ReadingL1Table { offset, source })?;
        }
        let l1 = be_u64s(&raw);
        let sub_bits = if header.has_extended_l2() {
            SUBCLUSTER_BITS
        } else {
            0
        };
        let reader = Qcow2Reader {
            inner,
            header: header.clone(),
            file_len,
            l1,
            l2_cache: None,
            inflated: None,
            compressed_buf: Vec::new(),
            pos: None,
            last_extent: None,
            unit_bits: header.cluster_bits - sub_bits,
            sub_bits,
            l2_bits: header.l2_bits(),
        };
        // Only the entries that map the virtual size matter; validate them up front so corruption is
        // reported at open time, naming the entry.
        for index in 0..reader.used_l1_entries() {
            reader.l2_offset(index)?;
        }
        Ok(reader)
    }

    /// The validated header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Virtual disk size in bytes.
    pub fn virtual_size(&self) -> u64 {
        self.header.virtual_size
    }

    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        self.header.cluster_size()
    }

    /// Length of the image file in bytes.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// Gives back the underlying reader.
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// Fills `buf` with the guest bytes starting at `offset`.
    ///
    /// # Errors
    /// [`Error::OutOfBounds`] if the range passes the virtual size; corrupt table entries; I/O errors.
    pub fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let len = buf.len() as u64;
        let virtual_size = self.header.virtual_size;
        if offset.checked_add(len).is_none_or(|end| end > virtual_size) {
            return Err(Error::OutOfBounds {
                offset,
                len,
                virtual_size,
            });
        }
        let unit_size = 1u64 << self.unit_bits;
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let unit = pos >> self.unit_bits;
            let within = pos & (unit_size - 1);
            let n = (unit_size - within).min((buf.len() - done) as u64) as usize;
            let mut n = n;
            match self.mapping(unit)? {
                Mapping::Unallocated | Mapping::Zero => buf[done..done + n].fill(0),
                Mapping::Data { host_offset } => {
                    // Extend over following units stored right after this one, so a large read of a
                    // contiguous image is one read call, not one per cluster.
                    let mut next = unit + 1;
                    while done + n + unit_size as usize <= buf.len()
                        && self.mapping(next)?
                            == (Mapping::Data {
                                host_offset: host_offset + ((next - unit) << self.unit_bits),
                            })
                    {
                        n += unit_size as usize;
                        next += 1;
                    }
                    self.read_host(
                        unit << self.unit_bits,
                        host_offset + within,
                        &mut buf[done..done + n],
                    )?;
                }
                Mapping::Compressed { host_offset, len } => {
                    // The whole cluster is compressed; find this unit inside it.
                    let cluster = unit >> self.sub_bits;
                    let at = (pos - (cluster << self.header.cluster_bits)) as usize;
                    let data = self.inflate(cluster, host_offset, len)?;
                    buf[done..done + n].copy_from_slice(&data[at..at + n]);
                }
            }
            done += n;
        }
        Ok(())
    }

    /// A run of one kind starting at `offset`.
    ///
    /// Bounded so that one call reads at most one L2 table: a data or zero run stops at the end of the
    /// L2 table's span (512 MiB with 64 KiB clusters); an unallocated run also covers the following
    /// unallocated L1 entries (no table reads needed). The last result is cached, so calling this
    /// again from inside it (as a converter reading a run in blocks does) costs nothing. Unlike
    /// [`Qcow2Reader::extents`] this does not borrow the reader across calls, so a converter can
    /// alternate `extent_at` and [`Qcow2Reader::read_at`].
    ///
    /// # Errors
    /// [`Error::OutOfBounds`] if `offset >= virtual_size`; corrupt table entries; I/O errors.
    pub fn extent_at(&mut self, offset: u64) -> Result<Extent> {
        let virtual_size = self.header.virtual_size;
        if offset >= virtual_size {
            return Err(Error::OutOfBounds {
                offset,
                len: 1,
                virtual_size,
            });
        }
        if let Some(last) = self.last_extent
            && last.offset <= offset
            && offset < last.end()
        {
            return Ok(Extent {
                offset,
                len: last.end() - offset,
                kind: last.kind,
            });
        }
        let bits = self.unit_bits;
        // Units mapped by one L1 entry.
        let region_bits = self.l2_bits + self.sub_bits;
        let first = offset >> bits;
        let last_unit = (virtual_size - 1) >> bits;
        let l1_index = first >> region_bits;
        let region_end = (l1_index + 1) << region_bits;
        let kind = self.mapping(first)?.kind();
        let mut unit = first + 1;
        if self.l2_offset(l1_index)? == 0 {
            unit = region_end;
        } else {
            while unit <= last_unit && unit < region_end && self.mapping(unit)?.kind() == kind {
                unit += 1;
            }
        }
        if kind == ExtentKind::Unallocated && unit == region_end {
            let mut next = l1_index + 1;
            while (next << region_bits) <= last_unit && self.l2_offset(next)? == 0 {
                next += 1;
            }
            unit = next << region_bits;
        }
        let end = (unit << bits).min(virtual_size);
        let extent = Extent {
            offset,
            len: end - offset,
            kind,
        };
        self.last_extent = Some(extent);
        Ok(extent)
    }

    /// Iterates the whole disk as maximal extents, in guest order.
    pub fn extents(&mut self) -> Extents<'_, R> {
        Extents {
            reader: self,
            next: 0,
            failed: false,
        }
    }

    fn used_l1_entries(&self) -> u64 {
        crate::header::l1_entries_for(self.header.virtual_size, self.header.cluster_bits + self.l2_bits)
    }

    /// Host offset of the L2 table for `l1_index`, 0 if unallocated; validated.
    fn l2_offset(&self, l1_index: u64) -> Result<u64> {
        let entry = self.l1.get(l1_index as usize).copied().unwrap_or(0);
        let offset = entry & OFFSET_MASK;
        if offset == 0 {
            return Ok(0);
        }
        let cluster_size = self.cluster_size();
        if !offset.is_multiple_of(cluster_size) {
            return Err(Error::CorruptL1Entry {
                index: l1_index,
                entry,
                reason: "L2 table offset is not cluster aligned",
            });
        }
        if offset
            .checked_add(cluster_size)
            .is_none_or(|end| end > self.file_len)
        {
            return Err(Error::CorruptL1Entry {
                index: l1_index,
                entry,
                reason: "L2 table lies outside the file",
            });
        }
        Ok(offset)
    }

    /// Where lookup unit `unit` (a cluster, or a subcluster with extended L2) lives.
    fn mapping(&mut self, unit: u64) -> Result<Mapping> {
        let cluster = unit >> self.sub_bits;
        let l1_index = cluster >> self.l2_bits;
        let l2_offset = self.l2_offset(l1_index)?;
        if l2_offset == 0 {
            return Ok(Mapping::Unallocated);
        }
        if self.l2_cache.as_ref().is_none_or(|(index, _)| *index != l1_index) {
            let mut raw = vec![0u8; self.cluster_size() as usize];
            self.seek_to(l2_offset)
                .and_then(|()| self.read_exact_tracked(&mut raw))
                .map_err(|source| Error::ReadingL2Table {
                    offset: l2_offset,
                    source,
                })?;
            self.l2_cache = Some((l1_index, be_u64s(&raw)));
        }
        let index = (cluster & ((1 << self.l2_bits) - 1)) as usize;
        let words = 1 + usize::from(self.sub_bits > 0);
        let (entry, bitmap) = match &self.l2_cache {
            Some((_, table)) => (
                table[index * words],
                if words == 2 { table[index * words + 1] } else { 0 },
            ),
            None => (0, 0),
        };
        let guest_offset = cluster << self.header.cluster_bits;
        if self.sub_bits == 0 {
            return self.decode_l2(guest_offset, entry);
        }
        self.decode_extended_l2(guest_offset, entry, bitmap, unit & ((1 << self.sub_bits) - 1))
    }

    /// A 128-bit entry: the standard descriptor, then 32 "allocated" bits and 32 "reads as zero" bits,
    /// one pair per subcluster.
    fn decode_extended_l2(&self, guest_offset: u64, entry: u64, bitmap: u64, sub: u64) -> Result<Mapping> {
        if entry & COMPRESSED != 0 {
            return self.decode_l2(guest_offset, entry);
        }
        let corrupt = |reason| Error::CorruptL2Entry {
            guest_offset,
            entry,
            reason,
        };
        let allocated = bitmap >> sub & 1 != 0;
        let zero = bitmap >> (32 + sub) & 1 != 0;
        match (allocated, zero) {
            (true, true) => Err(corrupt("subcluster is marked both allocated and zero")),
            (false, true) => Ok(Mapping::Zero),
            (false, false) => Ok(Mapping::Unallocated),
            (true, false) => {
                let host_offset = entry & OFFSET_MASK;
                if host_offset == 0 {
                    return Err(corrupt("allocated subcluster in a cluster without a host offset"));
                }
                match self.decode_l2(guest_offset, host_offset)? {
                    Mapping::Data { host_offset } => Ok(Mapping::Data {
                        host_offset: host_offset + (sub << self.unit_bits),
                    }),
                    other => Ok(other),
                }
            }
        }
    }

    fn decode_l2(&self, guest_offset: u64, entry: u64) -> Result<Mapping> {
        let bits = self.header.cluster_bits;
        let corrupt = |reason| Error::CorruptL2Entry {
            guest_offset,
            entry,
            reason,
        };
        if entry & COMPRESSED != 0 {
            // Compressed descriptor: x = 62 - (cluster_bits - 8) bits of byte offset, then the count of
            // additional 512-byte sectors holding the deflate stream.
            let x = 62 - (bits - 8);
            let host_offset = entry & ((1u64 << x) - 1);
            let sectors = (entry >> x) & ((1u64 << (62 - x)) - 1);
            let len = (sectors + 1) * 512 - (host_offset & 511);
            if host_offset >= self.file_len {
                return Err(corrupt("compressed data lies outside the file"));
            }
            return Ok(Mapping::Compressed { host_offset, len });
        }
        let host_offset = entry & OFFSET_MASK;
        if entry & ZERO != 0 {
            if self.header.version < 3 {
                return Err(corrupt("zero flag in a version 2 image"));
            }
            return Ok(Mapping::Zero);
        }
        if host_offset == 0 {
            return Ok(Mapping::Unallocated);
        }
        if !host_offset.is_multiple_of(self.cluster_size()) {
            return Err(corrupt("data cluster offset is not cluster aligned"));
        }
        if host_offset >= self.file_len {
            return Err(corrupt("data cluster lies outside the file"));
        }
        Ok(Mapping::Data { host_offset })
    }

    /// Reads host bytes; the part of a cluster past the end of the file reads as zeros (qemu's
    /// behaviour for a preallocated last cluster).
    fn read_host(&mut self, guest_offset: u64, host_offset: u64, out: &mut [u8]) -> Result<()> {
        let available = self.file_len.saturating_sub(host_offset).min(out.len() as u64) as usize;
        let (present, past_eof) = out.split_at_mut(available);
        past_eof.fill(0);
        if present.is_empty() {
            return Ok(());
        }
        self.seek_to(host_offset)
            .and_then(|()| self.read_exact_tracked(present))
            .map_err(|source| Error::ReadingCluster {
                guest_offset,
                host_offset,
                source,
            })
    }

    fn inflate(&mut self, cluster: u64, host_offset: u64, len: u64) -> Result<&[u8]> {
        let cluster_size = self.cluster_size() as usize;
        let guest_offset = cluster << self.header.cluster_bits;
        let cached = matches!(&self.inflated, Some((c, _)) if *c == cluster);
        if !cached {
            // The descriptor's length is rounded up to sectors; the file may end before that.
            let len = len.min(self.file_len - host_offset) as usize;
            let mut input = std::mem::take(&mut self.compressed_buf);
            input.resize(len, 0);
            let read = self
                .seek_to(host_offset)
                .and_then(|()| self.read_exact_tracked(&mut input))
                .map_err(|source| Error::ReadingCluster {
                    guest_offset,
                    host_offset,
                    source,
                });
            let mut out = match self.inflated.take() {
                Some((_, buf)) => buf,
                None => Vec::new(),
            };
            out.resize(cluster_size, 0);
            let result = read.and_then(|()| {
                inflate_cluster(&input, &mut out).map_err(|reason| Error::BadCompressedCluster {
                    guest_offset,
                    host_offset,
                    reason,
                })
            });
            self.compressed_buf = input;
            result?;
            self.inflated = Some((cluster, out));
        }
        match &self.inflated {
            Some((_, data)) => Ok(data),
            None => Ok(&[]),
        }
    }

    fn seek_to(&mut self, offset: u64) -> io::Result<()> {
        if self.pos != Some(offset) {
            self.pos = None;
            self.inner.seek(SeekFrom::Start(offset))?;
            self.pos = Some(offset);
        }
        Ok(())
    }

    fn read_exact_tracked(&mut self, buf: &mut [u8]) -> io::Result<()> {
        let result = self.inner.read_exact(buf);
        self.pos = match (&result, self.pos) {
            (Ok(()), Some(pos)) => Some(pos + buf.len() as u64),
            _ => None,
        };
        result
    }
}

impl<R> std::fmt::Debug for Qcow2Reader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qcow2Reader")
            .field("header", &self.header)
            .field("file_len", &self.file_len)
            .finish_non_exhaustive()
    }
}

/// Iterator over the extents of a [`Qcow2Reader`], from [`Qcow2Reader::extents`].
///
/// Stops after the first error.
#[derive(Debug)]
pub struct Extents<'a, R> {
    reader: &'a mut Qcow2Reader<R>,
    next: u64,
    failed: bool,
}

impl<R: Read + Seek> Extents<'_, R> {
    /// `extent_at` results joined while the kind stays the same, so extents are maximal.
    fn merged(&mut self) -> Result<Extent> {
        let mut extent = self.reader.extent_at(self.next)?;
        while extent.end() < self.reader.virtual_size() {
            let next = self.reader.extent_at(extent.end())?;
            if next.kind != extent.kind {
                break;
            }
            extent.len += next.len;
        }
        Ok(extent)
    }
}

impl<R: Read + Seek> Iterator for Extents<'_, R> {
    type Item = Result<Extent>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.next >= self.reader.virtual_size() {
            return None;
        }
        match self.merged() {
            Ok(extent) => {
                self.next = extent.end();
                Some(Ok(extent))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// Raw-deflate (qcow2 uses a 4 KiB window, no zlib wrapper) into exactly `out.len()` bytes.
///
/// Like qemu, success means the output is full; the input may carry sector padding after the stream.
pub(crate) fn inflate_cluster(input: &[u8], out: &mut [u8]) -> std::result::Result<(), String> {
    let mut inflater = Decompress::new(false);
    let status = inflater
        .decompress(input, out, FlushDecompress::Finish)
        .map_err(|e| format!("deflate error: {e}"))?;
    let produced = inflater.total_out();
    if produced == out.len() as u64 {
        return Ok(());
    }
    match status {
        Status::StreamEnd => Err(format!("inflated to {produced} bytes, expected {}", out.len())),
        Status::Ok | Status::BufError => Err(format!(
            "deflate stream ended early after {produced} of {} bytes",
            out.len()
        )),
    }
}

fn read_backing_name<R: Read + Seek>(inner: &mut R, header: &Header, file_len: u64) -> Result<String> {
    let offset = header.backing_file_offset;
    let len = u64::from(header.backing_file_size).min(file_len.saturating_sub(offset));
    let mut name = vec![0u8; len as usize];
    inner
        .seek(SeekFrom::Start(offset))
        .and_then(|_| inner.read_exact(&mut name))
        .map_err(|source| Error::ReadingHeader { offset, source })?;
    Ok(String::from_utf8_lossy(&name).into_owned())
}

/// Reads until `buf` is full or EOF; returns the bytes read.
fn read_up_to<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn be_u64s(raw: &[u8]) -> Vec<u64> {
    raw.chunks_exact(8)
        .map(|c| u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect()
}
