//! The hosted sparse extent header (`SparseExtentHeader`, sector 0 of a monolithicSparse,
//! twoGbMaxExtentSparse or streamOptimized file), in two layers: [`RawSparseHeader`] mirrors the
//! 512 on-disk bytes exactly, [`SparseHeader`] is the validated value the rest of the crate uses.
//!
//! Validation here is what can be checked from the header alone; pointers into the file are
//! checked against the file length by [`crate::reader`].

use crate::SECTOR_SIZE;

/// `"KDMV"` read as a little-endian `u32`.
pub const MAGIC: u32 = 0x564d_444b;
/// `gdOffset` value meaning "the grain directory is at the end; read the footer".
pub const GD_AT_END: u64 = u64::MAX;
/// Size of the header on disk.
pub const HEADER_SIZE: usize = 512;

/// Flag bit 0: the newline-detection bytes are valid.
pub const FLAG_VALID_NEWLINE_TEST: u32 = 1 << 0;
/// Flag bit 1: a redundant grain directory exists.
pub const FLAG_REDUNDANT_GD: u32 = 1 << 1;
/// Flag bit 2: grain table entry 1 means "zeroed grain" (version 2 and later).
pub const FLAG_ZEROED_GRAIN_GTE: u32 = 1 << 2;
/// Flag bit 16: grains are compressed.
pub const FLAG_COMPRESSED: u32 = 1 << 16;
/// Flag bit 17: the file contains markers (streamOptimized).
pub const FLAG_MARKERS: u32 = 1 << 17;

/// Highest header version defined (3 = streamOptimized / change tracking).
pub const MAX_VERSION: u32 = 3;
/// Largest capacity accepted: 64 TiB. vSphere's limit is 62 TiB; a larger value is corruption,
/// and rejecting it keeps every byte offset derived from it far from `u64` overflow.
pub const MAX_CAPACITY_SECTORS: u64 = (64 << 40) / SECTOR_SIZE;
/// Smallest grain accepted (4 KiB). The spec requires a power of two greater than 8 sectors.
pub const MIN_GRAIN_SECTORS: u64 = 8;
/// Largest grain accepted (1 MiB). Every writer we know uses 128 sectors (64 KiB); a bigger grain
/// multiplies the per-grain buffers held by each inflate worker and queue slot.
pub const MAX_GRAIN_SECTORS: u64 = 2048;
/// Most grain table entries per grain table. VMware and qemu write 512; qemu rejects more.
pub const MAX_GTES_PER_GT: u32 = 512;
/// Largest embedded descriptor: 1 MiB, the same cap as [`crate::descriptor::MAX_DESCRIPTOR_BYTES`].
pub const MAX_DESCRIPTOR_SECTORS: u64 = (1 << 20) / SECTOR_SIZE;
/// Most grain directory entries: 2 Mi entries (8 MiB of directory) covers 64 TiB with the
/// standard geometry; more would let a header make us allocate an arbitrary directory.
pub const MAX_GD_ENTRIES: u64 = 1 << 21;

/// Why a header was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// Fewer than 512 bytes.
    #[error("header is truncated: {len} bytes, need {HEADER_SIZE}")]
    Truncated { len: usize },
    /// Wrong magic number.
    #[error("bad magic {found:#010x}, expected \"KDMV\" ({MAGIC:#010x})")]
    BadMagic { found: u32 },
    /// Version 0 or above [`MAX_VERSION`].
    #[error("unsupported sparse header version {version}")]
    UnsupportedVersion { version: u32 },
    /// Capacity above [`MAX_CAPACITY_SECTORS`].
    #[error("capacity of {sectors} sectors is absurd (limit {MAX_CAPACITY_SECTORS})")]
    AbsurdCapacity { sectors: u64 },
    /// Grain size not a power of two in range.
    #[error(
        "grain size of {sectors} sectors is not a power of two between {MIN_GRAIN_SECTORS} and {MAX_GRAIN_SECTORS}"
    )]
    BadGrainSize { sectors: u64 },
    /// `numGTEsPerGT` zero or above [`MAX_GTES_PER_GT`].
    #[error("{count} grain table entries per grain table (must be 1..={MAX_GTES_PER_GT})")]
    BadGtesPerGt { count: u32 },
    /// Embedded descriptor too large or overlapping the header.
    #[error("embedded descriptor at sector {offset} with {size} sectors is out of range")]
    BadDescriptorArea { offset: u64, size: u64 },
    /// The grain directory would have more than [`MAX_GD_ENTRIES`] entries.
    #[error("grain directory would need {entries} entries (limit {MAX_GD_ENTRIES})")]
    GrainDirectoryTooLarge { entries: u64 },
    /// The newline-detection bytes were mangled (the file went through a text-mode transfer).
    #[error("newline check bytes are {found:02x?}: the file was corrupted by a text-mode transfer")]
    NewlinesMangled { found: [u8; 4] },
    /// Unknown compression algorithm, or compressed flag without deflate.
    #[error("unsupported compression algorithm {algorithm} (flags {flags:#x})")]
    UnsupportedCompression { algorithm: u16, flags: u32 },
}

/// The 512 header bytes, field by field, exactly as on disk (little-endian decoded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawSparseHeader {
    /// offset 0
    pub magic: u32,
    /// offset 4
    pub version: u32,
    /// offset 8
    pub flags: u32,
    /// offset 12, sectors
    pub capacity: u64,
    /// offset 20, sectors
    pub grain_size: u64,
    /// offset 28, sectors
    pub descriptor_offset: u64,
    /// offset 36, sectors
    pub descriptor_size: u64,
    /// offset 44
    pub num_gtes_per_gt: u32,
    /// offset 48, sectors
    pub rgd_offset: u64,
    /// offset 56, sectors
    pub gd_offset: u64,
    /// offset 64, sectors
    pub overhead: u64,
    /// offset 72
    pub unclean_shutdown: u8,
    /// offset 73: `'\n' ' ' '\r' '\n'`
    pub newline_check: [u8; 4],
    /// offset 77
    pub compress_algorithm: u16,
}

fn le_u32(b: &[u8; HEADER_SIZE], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le_u64(b: &[u8; HEADER_SIZE], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

impl RawSparseHeader {
    /// Decodes the first 512 bytes of `bytes`.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        let b: &[u8; HEADER_SIZE] = bytes
            .get(..HEADER_SIZE)
            .and_then(|s| s.try_into().ok())
            .ok_or(Error::Truncated { len: bytes.len() })?;
        Ok(Self {
            magic: le_u32(b, 0),
            version: le_u32(b, 4),
            flags: le_u32(b, 8),
            capacity: le_u64(b, 12),
            grain_size: le_u64(b, 20),
            descriptor_offset: le_u64(b, 28),
            descriptor_size: le_u64(b, 36),
            num_gtes_per_gt: le_u32(b, 44),
            rgd_offset: le_u64(b, 48),
            gd_offset: le_u64(b, 56),
            overhead: le_u64(b, 64),
            unclean_shutdown: b[72],
            newline_check: [b[73], b[74], b[75], b[76]],
            compress_algorithm: u16::from_le_bytes([b[77], b[78]]),
        })
    }

    /// Encodes the header into 512 bytes (padding zeroed). Used to build test images and
    /// fuzz seeds.
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..4].copy_from_slice(&self.magic.to_le_bytes());
        b[4..8].copy_from_slice(&self.version.to_le_bytes());
        b[8..12].copy_from_slice(&self.flags.to_le_bytes());
        b[12..20].copy_from_slice(&self.capacity.to_le_bytes());
        b[20..28].copy_from_slice(&self.grain_size.to_le_bytes());
        b[28..36].copy_from_slice(&self.descriptor_offset.to_le_bytes());
        b[36..44].copy_from_slice(&self.descriptor_size.to_le_bytes());
        b[44..48].copy_from_slice(&self.num_gtes_per_gt.to_le_bytes());
        b[48..56].copy_from_slice(&self.rgd_offset.to_le_bytes());
        b[56..64].copy_from_slice(&self.gd_offset.to_le_bytes());
        b[64..72].copy_from_slice(&self.overhead.to_le_bytes());
        b[72] = self.unclean_shutdown;
        b[73..77].copy_from_slice(&self.newline_check);
        b[77..79].copy_from_slice(&self.compress_algorithm.to_le_bytes());
        b
    }
}

/// Grain compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Grains are stored as is.
    None,
    /// Each grain is a zlib (RFC 1950) stream.
    Deflate,
}

/// Where the grain directory lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GdLocation {
    /// At this sector.
    Sector(u64),
    /// Given by the footer near the end of the file (`GD_AT_END`).
    AtEnd,
}

/// A validated sparse extent header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SparseHeader {
    /// Header version (1..=3).
    pub version: u32,
    /// Raw flags.
    pub flags: u32,
    /// Virtual size of the extent, in sectors.
    pub capacity_sectors: u64,
    /// Grain size in sectors (power of two).
    pub grain_sectors: u64,
    /// Embedded descriptor `(offset, size)` in sectors, if any.
    pub descriptor: Option<(u64, u64)>,
    /// Grain table entries per grain table.
    pub gtes_per_gt: u32,
    /// Redundant grain directory sector, if flagged.
    pub rgd_sector: Option<u64>,
    /// Grain directory location.
    pub gd: GdLocation,
    /// Sectors of metadata before the first grain.
    pub overhead_sectors: u64,
    /// Whether the extent was not closed cleanly.
    pub unclean_shutdown: bool,
    /// Grain compression.
    pub compression: Compression,
}

impl TryFrom<RawSparseHeader> for SparseHeader {
    type Error = Error;

    fn try_from(raw: RawSparseHeader) -> Result<Self, Error> {
        if raw.magic != MAGIC {
            return Err(Error::BadMagic { found: raw.magic });
        }
        if raw.version == 0 || raw.version > MAX_VERSION {
            return Err(Error::UnsupportedVersion { version: raw.version });
        }
        if raw.capacity > MAX_CAPACITY_SECTORS {
            return Err(Error::AbsurdCapacity {
                sectors: raw.capacity,
            });
        }
        if !raw.grain_size.is_power_of_two()
            || !(MIN_GRAIN_SECTORS..=MAX_GRAIN_SECTORS).contains(&raw.grain_size)
        {
            return Err(Error::BadGrainSize {
                sectors: raw.grain_size,
            });
        }
        if raw.num_gtes_per_gt == 0 || raw.num_gtes_per_gt > MAX_GTES_PER_GT {
            return Err(Error::BadGtesPerGt {
                count: raw.num_gtes_per_gt,
            });
        }
        let descriptor = match (raw.descriptor_offset, raw.descriptor_size) {
            (0, _) | (_, 0) => None,
            (offset, size) if size <= MAX_DESCRIPTOR_SECTORS && offset < MAX_CAPACITY_SECTORS => {
                Some((offset, size))
            }
            (offset, size) => return Err(Error::BadDescriptorArea { offset, size }),
        };
        if raw.flags & FLAG_VALID_NEWLINE_TEST != 0 && raw.newline_check != *b"\n \r\n" {
            return Err(Error::NewlinesMangled {
                found: raw.newline_check,
            });
        }
        let compression = match raw.compress_algorithm {
            0 if raw.flags & FLAG_COMPRESSED == 0 => Compression::None,
            1 => Compression::Deflate,
            algorithm => {
                return Err(Error::UnsupportedCompression {
                    algorithm,
                    flags: raw.flags,
                });
            }
        };
        let header = Self {
            version: raw.version,
            flags: raw.flags,
            capacity_sectors: raw.capacity,
            grain_sectors: raw.grain_size,
            descriptor,
            gtes_per_gt: raw.num_gtes_per_gt,
            rgd_sector: (raw.flags & FLAG_REDUNDANT_GD != 0).then_some(raw.rgd_offset),
            gd: if raw.gd_offset == GD_AT_END {
                GdLocation::AtEnd
            } else {
                GdLocation::Sector(raw.gd_offset)
            },
            overhead_sectors: raw.overhead,
            unclean_shutdown: raw.unclean_shutdown != 0,
            compression,
        };
        let entries = header.gd_entries();
        if entries > MAX_GD_ENTRIES {
            return Err(Error::GrainDirectoryTooLarge { entries });
        }
        Ok(header)
    }
}

impl SparseHeader {
    /// Parses and validates the first 512 bytes of `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        RawSparseHeader::from_bytes(bytes)?.try_into()
    }

    /// Grain size in bytes (at most 1 MiB).
    pub fn grain_bytes(&self) -> u64 {
        self.grain_sectors * SECTOR_SIZE
    }

    /// Virtual size in bytes (at most 64 TiB).
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_sectors * SECTOR_SIZE
    }

    /// Sectors covered by one grain table.
    pub fn gt_coverage_sectors(&self) -> u64 {
        u64::from(self.gtes_per_gt) * self.grain_sectors
    }

    /// Number of grain directory entries needed to cover the capacity.
    pub fn gd_entries(&self) -> u64 {
        self.capacity_sectors.div_ceil(self.gt_coverage_sectors())
    }

    /// Size of one grain table in bytes, rounded up to whole sectors.
    pub fn gt_bytes(&self) -> u64 {
        (u64::from(self.gtes_per_gt) * 4).next_multiple_of(SECTOR_SIZE)
    }

    /// Whether grains are compressed and the file has markers (streamOptimized).
    pub fn is_stream_optimized(&self) -> bool {
        self.flags & (FLAG_COMPRESSED | FLAG_MARKERS) == FLAG_COMPRESSED | FLAG_MARKERS
    }

    /// Whether grain table entry 1 means "zeroed grain".
    pub fn zeroed_grain_entries(&self) -> bool {
        self.version >= 2 && self.flags & FLAG_ZEROED_GRAIN_GTE != 0
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn stream_raw(capacity: u64) -> RawSparseHeader {
        RawSparseHeader {
            magic: MAGIC,
            version: 3,
            flags: FLAG_VALID_NEWLINE_TEST | FLAG_COMPRESSED | FLAG_MARKERS,
            capacity,
            grain_size: 128,
            descriptor_offset: 1,
            descriptor_size: 1,
            num_gtes_per_gt: 512,
            rgd_offset: 0,
            gd_offset: GD_AT_END,
            overhead: 2,
            unclean_shutdown: 0,
            newline_check: *b"\n \r\n",
            compress_algorithm: 1,
        }
    }

    #[test]
    fn roundtrips_through_bytes() {
        let raw = stream_raw(4096);
        assert_eq!(RawSparseHeader::from_bytes(&raw.to_bytes()), Ok(raw));
    }

    #[test]
    fn accepts_stream_header() {
        let h = SparseHeader::try_from(stream_raw(4096)).unwrap();
        assert!(h.is_stream_optimized());
        assert_eq!(h.gd, GdLocation::AtEnd);
        assert_eq!(h.grain_bytes(), 65536);
        assert_eq!(h.gd_entries(), 1);
    }

    #[test]
    fn rejects_bad_magic() {
        let raw = RawSparseHeader {
            magic: 0x1234,
            ..stream_raw(1)
        };
        assert_eq!(
            SparseHeader::try_from(raw),
            Err(Error::BadMagic { found: 0x1234 })
        );
    }

    #[test]
    fn rejects_absurd_capacity() {
        let raw = stream_raw(u64::MAX / 2);
        assert!(matches!(
            SparseHeader::try_from(raw),
            Err(Error::AbsurdCapacity { .. })
        ));
    }

    #[test]
    fn rejects_grain_size_not_power_of_two() {
        let raw = RawSparseHeader {
            grain_size: 100,
            ..stream_raw(1)
        };
        assert_eq!(
            SparseHeader::try_from(raw),
            Err(Error::BadGrainSize { sectors: 100 })
        );
    }

    #[test]
    fn rejects_grain_size_too_large() {
        let raw = RawSparseHeader {
            grain_size: 1 << 21,
            ..stream_raw(1)
        };
        assert!(matches!(
            SparseHeader::try_from(raw),
            Err(Error::BadGrainSize { .. })
        ));
    }

    #[test]
    fn rejects_too_many_gtes() {
        let raw = RawSparseHeader {
            num_gtes_per_gt: 4096,
            ..stream_raw(1)
        };
        assert_eq!(
            SparseHeader::try_from(raw),
            Err(Error::BadGtesPerGt { count: 4096 })
        );
    }

    #[test]
    fn rejects_grain_directory_too_large() {
        let raw = RawSparseHeader {
            num_gtes_per_gt: 1,
            grain_size: 8,
            ..stream_raw(MAX_CAPACITY_SECTORS)
        };
        assert!(matches!(
            SparseHeader::try_from(raw),
            Err(Error::GrainDirectoryTooLarge { .. })
        ));
    }

    #[test]
    fn rejects_mangled_newlines() {
        let raw = RawSparseHeader {
            newline_check: *b"\n \n\n",
            ..stream_raw(1)
        };
        assert!(matches!(
            SparseHeader::try_from(raw),
            Err(Error::NewlinesMangled { .. })
        ));
    }

    #[test]
    fn rejects_unknown_compression() {
        let raw = RawSparseHeader {
            compress_algorithm: 7,
            ..stream_raw(1)
        };
        assert!(matches!(
            SparseHeader::try_from(raw),
            Err(Error::UnsupportedCompression { .. })
        ));
    }

    #[test]
    fn rejects_huge_descriptor_area() {
        let raw = RawSparseHeader {
            descriptor_size: 1 << 40,
            ..stream_raw(1)
        };
        assert!(matches!(
            SparseHeader::try_from(raw),
            Err(Error::BadDescriptorArea { .. })
        ));
    }

    #[test]
    fn rejects_short_input() {
        assert_eq!(
            SparseHeader::parse(&[0u8; 100]),
            Err(Error::Truncated { len: 100 })
        );
    }
}
