//! [`Qcow2Writer`]: a one-pass qcow2 (v3) writer for data arriving in ascending guest order.
//!
//! Layout, all decided before the first data byte:
//!
//! ```text
//! cluster 0            header (written last, by finish(); zeros until then)
//! clusters 1..         L1 table          (reserved from the virtual size, filled by finish())
//! next clusters        refcount table    (reserved for the worst case, filled by finish())
//! then, appended       data clusters and, after the data of each 512 MiB region (64 KiB clusters),
//!                      that region's L2 table
//! at the end           refcount blocks (written by finish())
//! ```
//!
//! Every host cluster from 0 to the end of the file is used exactly once, so every refcount is 1 and
//! the refcount blocks need no bookkeeping beyond the final cluster count. Nothing already written is
//! rewritten except the reserved table areas and the header.
//!
//! Memory: one L2 table and one partial-cluster buffer (one cluster each), plus the L1 table (8 bytes
//! per `cluster_size^2 / 8` bytes of virtual disk: 16 KiB per TiB with 64 KiB clusters). Independent
//! of how much data is written.
//!
//! All-zero clusters are not stored (they stay unallocated, which reads as zeros).

use std::io::{self, Seek, SeekFrom, Write};

use zerocopy::{
    IntoBytes,
    byteorder::big_endian::{U32, U64},
};

use crate::{
    Error, Result,
    header::{
        COPIED, MAGIC, MAX_CLUSTER_BITS, MAX_L1_ENTRIES, MAX_VIRTUAL_SIZE, MIN_CLUSTER_BITS, RawHeader,
    },
};

/// Default cluster size: 64 KiB, qemu's default and one VMDK grain.
pub const DEFAULT_CLUSTER_SIZE: u64 = 64 << 10;

/// log2 of the refcount width we write: 16-bit refcounts, qemu's default.
const REFCOUNT_ORDER: u32 = 4;

/// Largest refcount table we reserve, in clusters (the header field is 32 bits; qemu caps the table at
/// 8 MiB). Only tiny clusters with huge disks come near it.
const MAX_REFCOUNT_TABLE_BYTES: u64 = 8 << 20;

/// Zeros written when reserving table space, in pieces of this size.
const ZERO_CHUNK: usize = 64 << 10;

/// Streaming qcow2 writer; see the module docs for the layout.
///
/// Writes must ascend: each [`write_at`](Qcow2Writer::write_at) starts at or after the end of the
/// previous one (gaps read as zeros). Call [`finish`](Qcow2Writer::finish) to get a valid image; until
/// then cluster 0 is zeros, so an interrupted output is not mistaken for a qcow2 image.
///
/// Data is appended with no seeks until `finish`, and each run of non-zero whole clusters inside one
/// `write_at` goes out in a single `write_all`, so a plain `File` fed 1 MiB blocks needs no `BufWriter`
/// (`examples/writer_bench.rs`: on par with `qemu-img convert -O qcow2`). Many small writes do benefit
/// from one.
pub struct Qcow2Writer<W> {
    inner: W,
    cluster_bits: u32,
    virtual_size: u64,
    l1: Vec<u64>,
    l1_offset: u64,
    refcount_table_offset: u64,
    refcount_table_clusters: u64,
    /// Host offset where the next cluster is appended; always the current position of `inner`.
    next_host: u64,
    /// L2 table of region `l2_index` (only one is ever in memory).
    l2: Vec<u64>,
    l2_index: u64,
    l2_used: bool,
    /// A cluster filled by several smaller writes: (cluster index, bytes).
    partial: Option<(u64, Vec<u8>)>,
    write_end: u64,
    data_clusters: u64,
}

impl<W: Write + Seek> Qcow2Writer<W> {
    /// Starts an image of `virtual_size` bytes with 64 KiB clusters, written from offset 0 of `inner`,
    /// which should be empty (a new file): a longer existing file is not truncated.
    ///
    /// # Errors
    /// [`Error::InvalidWriterConfig`] for sizes we cannot represent; I/O errors reserving table space.
    pub fn new(inner: W, virtual_size: u64) -> Result<Self> {
        Self::with_cluster_size(inner, virtual_size, DEFAULT_CLUSTER_SIZE)
    }

    /// Like [`Qcow2Writer::new`] with a cluster size, a power of two from 512 B to 2 MiB.
    ///
    /// # Errors
    /// See [`Qcow2Writer::new`].
    pub fn with_cluster_size(mut inner: W, virtual_size: u64, cluster_size: u64) -> Result<Self> {
        let config = |field, value, reason| Error::InvalidWriterConfig { field, value, reason };
        if !cluster_size.is_power_of_two()
            || !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_size.trailing_zeros())
        {
            return Err(config(
                "cluster_size",
                cluster_size,
                "must be a power of two from 512 B to 2 MiB",
            ));
        }
        if virtual_size > MAX_VIRTUAL_SIZE {
            return Err(config("virtual_size", virtual_size, "above 64 PiB"));
        }
        let cluster_bits = cluster_size.trailing_zeros();
        let l1_size = crate::header::l1_entries_for(
            virtual_size,
            cluster_bits + crate::header::l2_bits(cluster_bits, false),
        );
        if l1_size > MAX_L1_ENTRIES {
            return Err(config(
                "virtual_size",
                virtual_size,
                "needs an L1 table above 32 MiB; use larger clusters",
            ));
        }
        let l1_clusters = (l1_size * 8).div_ceil(cluster_size);
        let data_clusters = virtual_size.div_ceil(cluster_size);
        // Worst case: header, L1, every data cluster, every L2 table, then the refcount table and blocks
        // covering all of it including themselves. Grow both until they cover themselves.
        let fixed = 1 + l1_clusters + data_clusters + l1_size;
        let refcounts_per_block = (cluster_size * 8) >> REFCOUNT_ORDER;
        let mut table_clusters = 1u64;
        loop {
            let blocks = (fixed + table_clusters).div_ceil(refcounts_per_block - 1);
            let needed = (blocks * 8).div_ceil(cluster_size).max(1);
            if needed <= table_clusters {
                break;
            }
            table_clusters = needed;
        }
        if table_clusters * cluster_size > MAX_REFCOUNT_TABLE_BYTES {
            return Err(config(
                "virtual_size",
                virtual_size,
                "needs a refcount table above 8 MiB; use larger clusters",
            ));
        }
        let l1_offset = cluster_size;
        let refcount_table_offset = l1_offset + l1_clusters * cluster_size;
        let data_start = refcount_table_offset + table_clusters * cluster_size;

        inner
            .seek(SeekFrom::Start(0))
            .and_then(|_| write_zeros(&mut inner, data_start))
            .map_err(|source| Error::WritingHeader { offset: 0, source })?;

        Ok(Qcow2Writer {
            inner,
            cluster_bits,
            virtual_size,
            l1: vec![0; l1_size as usize],
            l1_offset,
            refcount_table_offset,
            refcount_table_clusters: table_clusters,
            next_host: data_start,
            l2: vec![0; (cluster_size / 8) as usize],
            l2_index: 0,
            l2_used: false,
            partial: None,
            write_end: 0,
            data_clusters: 0,
        })
    }

    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Virtual disk size in bytes.
    pub fn virtual_size(&self) -> u64 {
        self.virtual_size
    }

    /// Bytes of guest data stored so far (non-zero clusters times the cluster size).
    pub fn allocated_bytes(&self) -> u64 {
        self.data_clusters << self.cluster_bits
    }

    /// Writes one whole cluster: `guest_offset` cluster aligned, `data` one cluster long (or up to the
    /// virtual size for the last cluster). An all-zero cluster is skipped.
    ///
    /// # Errors
    /// [`Error::InvalidWriterConfig`] for a misaligned offset or wrong length, then as
    /// [`Qcow2Writer::write_at`].
    pub fn write_cluster(&mut self, guest_offset: u64, data: &[u8]) -> Result<()> {
        let cluster_size = self.cluster_size();
        if !guest_offset.is_multiple_of(cluster_size) {
            return Err(Error::InvalidWriterConfig {
                field: "guest_offset",
                value: guest_offset,
                reason: "write_cluster needs a cluster-aligned offset",
            });
        }
        let expected = cluster_size.min(self.virtual_size.saturating_sub(guest_offset));
        if data.len() as u64 != expected {
            return Err(Error::InvalidWriterConfig {
                field: "data.len",
                value: data.len() as u64,
                reason: "write_cluster needs exactly one cluster (less only for the last one)",
            });
        }
        self.write_at(guest_offset, data)
    }

    /// Writes `data` at `guest_offset`, which must be at or after the end of the previous write.
    /// Any alignment and length; whole clusters are written straight through, partial ones are
    /// gathered in one buffer.
    ///
    /// # Errors
    /// [`Error::NotAscending`], [`Error::OutOfBounds`], I/O errors.
    pub fn write_at(&mut self, guest_offset: u64, data: &[u8]) -> Result<()> {
        let len = data.len() as u64;
        let virtual_size = self.virtual_size;
        if guest_offset < self.write_end {
            return Err(Error::NotAscending {
                offset: guest_offset,
                previous_end: self.write_end,
            });
        }
        let end = guest_offset
            .checked_add(len)
            .filter(|&end| end <= virtual_size)
            .ok_or(Error::OutOfBounds {
                offset: guest_offset,
                len,
                virtual_size,
            })?;
        let cluster_size = self.cluster_size();
        let mut done = 0usize;
        while done < data.len() {
            let pos = guest_offset + done as u64;
            let cluster = pos >> self.cluster_bits;
            let within = (pos & (cluster_size - 1)) as usize;
            let cluster_end = cluster_size.min(virtual_size - (cluster << self.cluster_bits)) as usize;
            let n = (cluster_end - within).min(data.len() - done);
            let piece = &data[done..done + n];
            if matches!(&self.partial, Some((c, _)) if *c != cluster) {
                self.flush_partial()?;
            }
            if within == 0 && n == cluster_end && self.partial.is_none() {
                done += self.store_whole_clusters(cluster, &data[done..])?;
                continue;
            } else {
                let (_, buf) = self
                    .partial
                    .get_or_insert_with(|| (cluster, vec![0; cluster_end]));
                buf[within..within + n].copy_from_slice(piece);
                if within + n == cluster_end {
                    self.flush_partial()?;
                }
            }
            done += n;
        }
        self.write_end = end;
        Ok(())
    }

    /// Writes the remaining L2 table, the refcount blocks and table, the L1 table and the header, then
    /// flushes and returns the writer (positioned somewhere inside the image).
    ///
    /// # Errors
    /// I/O errors, naming the table being written.
    pub fn finish(mut self) -> Result<W> {
        self.flush_partial()?;
        self.flush_l2()?;
        let cluster_size = self.cluster_size();

        // Refcount blocks go at the end and must count themselves.
        let used = self.next_host >> self.cluster_bits;
        let per_block = (cluster_size * 8) >> REFCOUNT_ORDER;
        let mut blocks = used.div_ceil(per_block);
        while (used + blocks).div_ceil(per_block) > blocks {
            blocks += 1;
        }
        let total = used + blocks;
        let table_capacity = self.refcount_table_clusters * cluster_size / 8;
        if blocks > table_capacity {
            // The reservation in `with_cluster_size` covers the worst case, so this is a bug guard.
            return Err(Error::InvalidWriterConfig {
                field: "refcount_blocks",
                value: blocks,
                reason: "more refcount blocks than the reserved refcount table holds",
            });
        }
        let first_block = self.next_host;
        let mut block = vec![0u8; cluster_size as usize];
        for b in 0..blocks {
            let start = b * per_block;
            let count = total.saturating_sub(start).min(per_block) as usize;
            block.fill(0);
            for entry in block.chunks_exact_mut(2).take(count) {
                entry.copy_from_slice(&1u16.to_be_bytes());
            }
            let offset = first_block + b * cluster_size;
            self.inner
                .write_all(&block)
                .map_err(|source| Error::WritingRefcounts { offset, source })?;
        }
        self.next_host += blocks * cluster_size;

        // The refcount table: `blocks` pointers, written in cluster-sized pieces.
        let mut offset = self.refcount_table_offset;
        self.inner
            .seek(SeekFrom::Start(offset))
            .map_err(|source| Error::WritingRefcounts { offset, source })?;
        let per_piece = cluster_size / 8;
        let mut b = 0;
        while b < blocks {
            let n = per_piece.min(blocks - b);
            let piece: Vec<u8> = (b..b + n)
                .flat_map(|i| (first_block + i * cluster_size).to_be_bytes())
                .collect();
            self.inner
                .write_all(&piece)
                .map_err(|source| Error::WritingRefcounts { offset, source })?;
            offset += piece.len() as u64;
            b += n;
        }

        let l1_offset = self.l1_offset;
        let l1: Vec<u8> = self.l1.iter().flat_map(|e| e.to_be_bytes()).collect();
        self.inner
            .seek(SeekFrom::Start(l1_offset))
            .and_then(|_| self.inner.write_all(&l1))
            .map_err(|source| Error::WritingL1Table {
                offset: l1_offset,
                source,
            })?;

        let header = self.raw_header();
        self.inner
            .seek(SeekFrom::Start(0))
            .and_then(|_| self.inner.write_all(header.as_bytes()))
            .and_then(|()| self.inner.flush())
            .map_err(|source| Error::WritingHeader { offset: 0, source })?;
        Ok(self.inner)
    }

    fn raw_header(&self) -> RawHeader {
        RawHeader {
            magic: U32::new(MAGIC),
            version: U32::new(3),
            backing_file_offset: U64::new(0),
            backing_file_size: U32::new(0),
            cluster_bits: U32::new(self.cluster_bits),
            size: U64::new(self.virtual_size),
            crypt_method: U32::new(0),
            // Both bounded in `with_cluster_size` (MAX_L1_ENTRIES, MAX_REFCOUNT_TABLE_BYTES).
            l1_size: U32::new(self.l1.len() as u32),
            l1_table_offset: U64::new(if self.l1.is_empty() { 0 } else { self.l1_offset }),
            refcount_table_offset: U64::new(self.refcount_table_offset),
            refcount_table_clusters: U32::new(self.refcount_table_clusters as u32),
            nb_snapshots: U32::new(0),
            snapshots_offset: U64::new(0),
            incompatible_features: U64::new(0),
            compatible_features: U64::new(0),
            autoclear_features: U64::new(0),
            refcount_order: U32::new(REFCOUNT_ORDER),
            header_length: U32::new(crate::header::V3_HEADER_LEN as u32),
        }
    }

    fn flush_partial(&mut self) -> Result<()> {
        if let Some((cluster, buf)) = self.partial.take() {
            self.store_cluster(cluster, &buf)?;
        }
        Ok(())
    }

    /// Stores the whole clusters at the start of `data` (the first one is whole), up to the end of the
    /// current L2 table's span; each run of non-zero clusters goes out in one write. Returns the bytes
    /// consumed.
    fn store_whole_clusters(&mut self, first: u64, data: &[u8]) -> Result<usize> {
        let bits = self.cluster_bits;
        let cluster_size = self.cluster_size() as usize;
        let region_end = ((first >> (bits - 3)) + 1) << (bits - 3);
        let mut consumed = 0usize;
        let mut run: Option<(u64, usize)> = None; // (first cluster, byte offset in data)
        let mut cluster = first;
        while cluster < region_end {
            let len = cluster_size.min((self.virtual_size - (cluster << bits)) as usize);
            if consumed + len > data.len() {
                break;
            }
            if is_zero(&data[consumed..consumed + len]) {
                if let Some((start, at)) = run.take() {
                    self.store_run(start, &data[at..consumed])?;
                }
            } else if run.is_none() {
                run = Some((cluster, consumed));
            }
            consumed += len;
            cluster += 1;
            if len < cluster_size {
                break; // the short last cluster of the disk
            }
        }
        if let Some((start, at)) = run {
            self.store_run(start, &data[at..consumed])?;
        }
        Ok(consumed)
    }

    /// Appends one cluster's data (unless all zero) and maps it in the current L2 table.
    fn store_cluster(&mut self, cluster: u64, data: &[u8]) -> Result<()> {
        if is_zero(data) {
            return Ok(());
        }
        self.store_run(cluster, data)
    }

    /// Appends consecutive non-zero clusters starting at `first` (all in one L2 table's span; the last
    /// may be short and is padded) with one write, and maps them.
    fn store_run(&mut self, first: u64, data: &[u8]) -> Result<()> {
        let l2_bits = self.cluster_bits - 3;
        let l1_index = first >> l2_bits;
        if l1_index != self.l2_index {
            self.flush_l2()?;
            self.l2_index = l1_index;
        }
        let cluster_size = self.cluster_size();
        let host_offset = self.next_host;
        let guest_offset = first << self.cluster_bits;
        let clusters = (data.len() as u64).div_ceil(cluster_size);
        let pad = clusters * cluster_size - data.len() as u64;
        self.inner
            .write_all(data)
            .and_then(|()| write_zeros(&mut self.inner, pad))
            .map_err(|source| Error::WritingCluster {
                guest_offset,
                host_offset,
                source,
            })?;
        for i in 0..clusters {
            let index = ((first + i) & ((1 << l2_bits) - 1)) as usize;
            self.l2[index] = (host_offset + i * cluster_size) | COPIED;
        }
        self.l2_used = true;
        self.next_host += clusters * cluster_size;
        self.data_clusters += clusters;
        Ok(())
    }

    /// Appends the in-memory L2 table (if it maps anything) and points its L1 entry at it.
    fn flush_l2(&mut self) -> Result<()> {
        if !self.l2_used {
            return Ok(());
        }
        let offset = self.next_host;
        let raw: Vec<u8> = self.l2.iter().flat_map(|e| e.to_be_bytes()).collect();
        self.inner
            .write_all(&raw)
            .map_err(|source| Error::WritingL2Table { offset, source })?;
        self.l1[self.l2_index as usize] = offset | COPIED;
        self.next_host += self.cluster_size();
        self.l2.fill(0);
        self.l2_used = false;
        Ok(())
    }
}

impl<W> std::fmt::Debug for Qcow2Writer<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qcow2Writer")
            .field("virtual_size", &self.virtual_size)
            .field("cluster_bits", &self.cluster_bits)
            .field("next_host", &self.next_host)
            .field("write_end", &self.write_end)
            .finish_non_exhaustive()
    }
}

/// Whether `buf` is all zeros; ORs 128-byte chunks so the compiler vectorises it.
pub(crate) fn is_zero(buf: &[u8]) -> bool {
    let mut chunks = buf.chunks_exact(128);
    for chunk in &mut chunks {
        if chunk.iter().fold(0u8, |acc, &b| acc | b) != 0 {
            return false;
        }
    }
    chunks.remainder().iter().all(|&b| b == 0)
}

fn write_zeros<W: Write>(w: &mut W, mut len: u64) -> io::Result<()> {
    let zeros = [0u8; ZERO_CHUNK];
    while len > 0 {
        let n = len.min(ZERO_CHUNK as u64) as usize;
        w.write_all(&zeros[..n])?;
        len -= n as u64;
    }
    Ok(())
}
