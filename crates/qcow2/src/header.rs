//! The qcow2 header in two layers: [`RawHeader`] mirrors the on-disk big-endian bytes exactly
//! (`docs/interop/qcow2.txt`, "Header"), [`Header`] is the validated view the reader and writer use.
//! Also owns the table-entry bit layouts shared by reader and writer.
//!
//! Validation here is pure (bytes in, `Header` out); checks that need the file length (tables inside
//! the file) live in the reader.

use zerocopy::{
    FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned,
    byteorder::big_endian::{U32, U64},
};

use crate::{Error, Result};

/// `QFI\xfb`.
pub(crate) const MAGIC: u32 = 0x5146_49fb;

/// Length of the version 2 header; every field after it is implied (v2 has no feature bits).
pub(crate) const V2_HEADER_LEN: usize = 72;

/// Length of the version 3 header without the optional `compression_type` byte and padding.
pub(crate) const V3_HEADER_LEN: usize = 104;

/// Smallest cluster: 512 bytes. qemu refuses anything outside 2^9..=2^21 and so do we.
pub const MIN_CLUSTER_BITS: u32 = 9;

/// Largest cluster: 2 MiB (qemu's limit).
pub const MAX_CLUSTER_BITS: u32 = 21;

/// Largest L1 table we accept, in entries: qemu's `QCOW_MAX_L1_SIZE` is 32 MiB, i.e. 4 Mi entries, which
/// with 64 KiB clusters covers 2 PiB. Bounds the one allocation sized by the header.
pub const MAX_L1_ENTRIES: u64 = (32 << 20) / 8;

/// Largest virtual size we read or write: host offsets in table entries have 56 bits, and no disk we
/// migrate comes near 64 PiB. Keeps every `offset + len` on guest addresses far from `u64` overflow.
pub const MAX_VIRTUAL_SIZE: u64 = 1 << 56;

/// Longest backing file name qemu writes (1023 bytes); used only to quote it in the error.
const MAX_BACKING_NAME: u32 = 1023;

/// Bits 9..=55 of L1 and standard L2 entries: the host offset.
pub(crate) const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Bit 63 of L1/L2 entries: refcount is exactly one.
pub(crate) const COPIED: u64 = 1 << 63;
/// Bit 62 of L2 entries: the cluster is compressed.
pub(crate) const COMPRESSED: u64 = 1 << 62;
/// Bit 0 of standard L2 entries (v3): the cluster reads as zeros.
pub(crate) const ZERO: u64 = 1;

/// Incompatible feature bit 0: refcounts may be inconsistent (harmless for reading).
pub(crate) const INCOMPAT_DIRTY: u64 = 1 << 0;
/// Incompatible feature bit 1: qemu found corruption.
pub(crate) const INCOMPAT_CORRUPT: u64 = 1 << 1;
/// Incompatible feature bit 2: guest data lives in an external file.
pub(crate) const INCOMPAT_EXTERNAL_DATA: u64 = 1 << 2;
/// Incompatible feature bit 3: the `compression_type` header byte is meaningful.
pub(crate) const INCOMPAT_COMPRESSION_TYPE: u64 = 1 << 3;
/// Incompatible feature bit 4: 128-bit L2 entries with subcluster bitmaps.
pub(crate) const INCOMPAT_EXTENDED_L2: u64 = 1 << 4;

/// log2 of the subclusters per cluster with extended L2 entries (32).
pub(crate) const SUBCLUSTER_BITS: u32 = 5;

/// qemu refuses extended L2 entries below 16 KiB clusters (subclusters would be under 512 bytes).
const MIN_EXTENDED_L2_CLUSTER_BITS: u32 = 14;

/// The header exactly as stored: big-endian, no padding, 104 bytes (a v2 header is the first 72).
#[derive(Debug, Clone, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct RawHeader {
    /// `QFI\xfb`.
    pub magic: U32,
    /// 2 or 3.
    pub version: U32,
    /// Offset of the backing file name, 0 if none.
    pub backing_file_offset: U64,
    /// Length of the backing file name.
    pub backing_file_size: U32,
    /// log2 of the cluster size.
    pub cluster_bits: U32,
    /// Virtual disk size in bytes.
    pub size: U64,
    /// 0 none, 1 AES, 2 LUKS.
    pub crypt_method: U32,
    /// Entries in the active L1 table.
    pub l1_size: U32,
    /// Host offset of the active L1 table.
    pub l1_table_offset: U64,
    /// Host offset of the refcount table.
    pub refcount_table_offset: U64,
    /// Clusters occupied by the refcount table.
    pub refcount_table_clusters: U32,
    /// Number of snapshots.
    pub nb_snapshots: U32,
    /// Host offset of the snapshot table.
    pub snapshots_offset: U64,
    /// v3: features an implementation must understand to open the image.
    pub incompatible_features: U64,
    /// v3: features safe to ignore.
    pub compatible_features: U64,
    /// v3: features cleared by writers that do not understand them.
    pub autoclear_features: U64,
    /// v3: log2 of the refcount width in bits.
    pub refcount_order: U32,
    /// v3: length of the header structure in bytes.
    pub header_length: U32,
}

/// A validated qcow2 header.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Header {
    /// 2 (`compat=0.10`) or 3 (`compat=1.1`).
    pub version: u32,
    /// log2 of the cluster size, 9..=21.
    pub cluster_bits: u32,
    /// Virtual disk size in bytes.
    pub virtual_size: u64,
    /// Entries in the L1 table.
    pub l1_size: u64,
    /// Host offset of the L1 table (cluster aligned).
    pub l1_table_offset: u64,
    /// Host offset of the refcount table (unused by the reader).
    pub refcount_table_offset: u64,
    /// Clusters of the refcount table.
    pub refcount_table_clusters: u32,
    /// Number of internal snapshots (the reader reads only the active layer).
    pub nb_snapshots: u32,
    /// Incompatible feature bits (only `dirty` may be set in an image we accept).
    pub incompatible_features: u64,
    /// Compatible feature bits.
    pub compatible_features: u64,
    /// log2 of the refcount width in bits.
    pub refcount_order: u32,
    /// Header length in bytes (72 for v2).
    pub header_length: u32,
    /// Offset of the backing file name (0: none).
    pub backing_file_offset: u64,
    /// Length of the backing file name.
    pub backing_file_size: u32,
}

impl Header {
    /// Parses and validates a header from the first bytes of an image.
    ///
    /// `bytes` should hold at least 104 bytes (a v3 header) when available (a v2 image may be shorter
    /// than that only if it is nearly empty). Backing files are reported by the reader, which can read
    /// the name; everything else this implementation cannot read is rejected here.
    ///
    /// # Errors
    /// [`Error::BadMagic`], [`Error::UnsupportedVersion`], [`Error::InvalidHeader`],
    /// [`Error::Encrypted`], [`Error::Unsupported`].
    pub fn parse(bytes: &[u8]) -> Result<Header> {
        let mut buf = [0u8; V3_HEADER_LEN];
        let n = bytes.len().min(V3_HEADER_LEN);
        buf[..n].copy_from_slice(&bytes[..n]);
        if n < 8 {
            return Err(Error::InvalidHeader {
                field: "header_length",
                value: n as u64,
                reason: "image is shorter than the magic and version",
            });
        }
        let raw = RawHeader::read_from_bytes(&buf).map_err(|_| Error::InvalidHeader {
            field: "header_length",
            value: n as u64,
            reason: "header buffer has the wrong size",
        })?;
        if raw.magic.get() != MAGIC {
            return Err(Error::BadMagic {
                found: raw.magic.get(),
            });
        }
        let version = raw.version.get();
        let min_len = match version {
            2 => V2_HEADER_LEN,
            3 => V3_HEADER_LEN,
            _ => return Err(Error::UnsupportedVersion { version }),
        };
        if n < min_len {
            return Err(Error::InvalidHeader {
                field: "header_length",
                value: n as u64,
                reason: "file is shorter than the fixed header of its version",
            });
        }
        Header::validate(&raw, bytes)
    }

    fn validate(raw: &RawHeader, bytes: &[u8]) -> Result<Header> {
        let version = raw.version.get();
        let cluster_bits = raw.cluster_bits.get();
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
            return Err(Error::InvalidHeader {
                field: "cluster_bits",
                value: cluster_bits.into(),
                reason: "must be between 9 (512 B) and 21 (2 MiB)",
            });
        }
        let cluster_size = 1u64 << cluster_bits;
        let crypt_method = raw.crypt_method.get();
        if crypt_method != 0 {
            return Err(Error::Encrypted { method: crypt_method });
        }
        let (incompatible_features, compatible_features, refcount_order, header_length) = if version == 2 {
            (0, 0, 4, V2_HEADER_LEN as u32)
        } else {
            (
                raw.incompatible_features.get(),
                raw.compatible_features.get(),
                raw.refcount_order.get(),
                raw.header_length.get(),
            )
        };
        if version == 3 {
            if (header_length as usize) < V3_HEADER_LEN || !header_length.is_multiple_of(8) {
                return Err(Error::InvalidHeader {
                    field: "header_length",
                    value: header_length.into(),
                    reason: "a v3 header is at least 104 bytes and a multiple of 8",
                });
            }
            if u64::from(header_length) > cluster_size {
                return Err(Error::InvalidHeader {
                    field: "header_length",
                    value: header_length.into(),
                    reason: "header is longer than the first cluster",
                });
            }
        }
        if refcount_order > 6 {
            return Err(Error::InvalidHeader {
                field: "refcount_order",
                value: refcount_order.into(),
                reason: "refcounts are at most 64 bits wide",
            });
        }
        check_incompatible_features(incompatible_features, header_length, bytes)?;

        let virtual_size = raw.size.get();
        if virtual_size > MAX_VIRTUAL_SIZE {
            return Err(Error::InvalidHeader {
                field: "size",
                value: virtual_size,
                reason: "virtual size above 64 PiB",
            });
        }
        let l1_size = u64::from(raw.l1_size.get());
        if l1_size > MAX_L1_ENTRIES {
            return Err(Error::InvalidHeader {
                field: "l1_size",
                value: l1_size,
                reason: "L1 table larger than 32 MiB",
            });
        }
        let extended_l2 = incompatible_features & INCOMPAT_EXTENDED_L2 != 0;
        if extended_l2 && cluster_bits < MIN_EXTENDED_L2_CLUSTER_BITS {
            return Err(Error::InvalidHeader {
                field: "cluster_bits",
                value: cluster_bits.into(),
                reason: "extended L2 entries need clusters of at least 16 KiB",
            });
        }
        let needed = l1_entries_for(virtual_size, cluster_bits + l2_bits(cluster_bits, extended_l2));
        if l1_size < needed {
            return Err(Error::InvalidHeader {
                field: "l1_size",
                value: l1_size,
                reason: "L1 table too small to map the virtual size",
            });
        }
        let l1_table_offset = raw.l1_table_offset.get();
        if l1_size > 0 && (l1_table_offset == 0 || !l1_table_offset.is_multiple_of(cluster_size)) {
            return Err(Error::InvalidHeader {
                field: "l1_table_offset",
                value: l1_table_offset,
                reason: "must be non-zero and cluster aligned",
            });
        }
        let backing_file_offset = raw.backing_file_offset.get();
        let backing_file_size = raw.backing_file_size.get();
        if backing_file_offset != 0 && backing_file_size > MAX_BACKING_NAME {
            return Err(Error::InvalidHeader {
                field: "backing_file_size",
                value: backing_file_size.into(),
                reason: "backing file name longer than 1023 bytes",
            });
        }
        Ok(Header {
            version,
            cluster_bits,
            virtual_size,
            l1_size,
            l1_table_offset,
            refcount_table_offset: raw.refcount_table_offset.get(),
            refcount_table_clusters: raw.refcount_table_clusters.get(),
            nb_snapshots: raw.nb_snapshots.get(),
            incompatible_features,
            compatible_features,
            refcount_order,
            header_length,
            backing_file_offset,
            backing_file_size,
        })
    }

    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Whether L2 entries are 128 bits with 32 subclusters per cluster (`extended_l2=on`).
    pub fn has_extended_l2(&self) -> bool {
        self.incompatible_features & INCOMPAT_EXTENDED_L2 != 0
    }

    /// log2 of the entries in one L2 table.
    pub(crate) fn l2_bits(&self) -> u32 {
        l2_bits(self.cluster_bits, self.has_extended_l2())
    }

    /// Whether the image was not closed cleanly (refcounts may be stale; data is still readable).
    pub fn is_dirty(&self) -> bool {
        self.incompatible_features & INCOMPAT_DIRTY != 0
    }
}

fn check_incompatible_features(bits: u64, header_length: u32, bytes: &[u8]) -> Result<()> {
    if bits & INCOMPAT_CORRUPT != 0 {
        return Err(Error::Unsupported {
            feature: "image is marked corrupt by qemu (run `qemu-img check -r all` first)".into(),
        });
    }
    if bits & INCOMPAT_EXTERNAL_DATA != 0 {
        return Err(Error::Unsupported {
            feature: "external data file (guest data is not inside this file)".into(),
        });
    }
    if bits & INCOMPAT_COMPRESSION_TYPE != 0 {
        // The byte exists only when the header is long enough to hold it.
        let ty = if header_length as usize > V3_HEADER_LEN {
            bytes.get(V3_HEADER_LEN).copied()
        } else {
            None
        };
        match ty {
            Some(0) => {}
            Some(1) => {
                return Err(Error::Unsupported {
                    feature: "zstd-compressed clusters (only deflate is supported)".into(),
                });
            }
            Some(other) => {
                return Err(Error::InvalidHeader {
                    field: "compression_type",
                    value: other.into(),
                    reason: "unknown compression type",
                });
            }
            None => {
                return Err(Error::InvalidHeader {
                    field: "header_length",
                    value: header_length.into(),
                    reason: "compression-type feature set but the header has no compression_type byte",
                });
            }
        }
    }
    let known = INCOMPAT_DIRTY | INCOMPAT_COMPRESSION_TYPE | INCOMPAT_EXTENDED_L2;
    let unknown = bits & !known;
    if unknown != 0 {
        return Err(Error::Unsupported {
            feature: format!("unknown incompatible feature bits {unknown:#x}"),
        });
    }
    Ok(())
}

/// log2 of the entries in one L2 table: a table is one cluster of 8-byte (16-byte extended) entries.
pub(crate) fn l2_bits(cluster_bits: u32, extended_l2: bool) -> u32 {
    cluster_bits - if extended_l2 { 4 } else { 3 }
}

/// L1 entries needed to map `virtual_size` bytes when one L1 entry maps `2^l1_entry_bits` bytes
/// (cluster bits + L2 bits). `virtual_size <= MAX_VIRTUAL_SIZE` keeps this free of overflow.
pub(crate) fn l1_entries_for(virtual_size: u64, l1_entry_bits: u32) -> u64 {
    virtual_size.div_ceil(1u64 << l1_entry_bits)
}
