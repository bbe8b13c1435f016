//! Random-access reading of a VMDK: [`VmdkReader`] presents the virtual disk as one byte range
//! over monolithicSparse, streamOptimized (header or footer grain directory), monolithicFlat,
//! twoGbMaxExtentSparse/Flat and vmfs files.
//!
//! The reader never opens files itself: extents named by a descriptor are opened through a
//! caller-supplied callback, so the caller decides where names resolve (and the descriptor parser
//! has already refused names that leave the directory). Every pointer read from the file (grain
//! directory, grain tables, grains) is checked against the file length before use.

use std::io::{self, Read, Seek, SeekFrom};

use crate::{
    SECTOR_SIZE,
    descriptor::{self, CreateType, Descriptor, ExtentKind},
    grain::{GRAIN_RECORD_HEADER, GrainInflater, InflateError, max_compressed_grain},
    header::{self, Compression, GdLocation, HEADER_SIZE, SparseHeader},
    stream::{MARKER_EOS, MARKER_FOOTER},
};

/// Why a VMDK could not be opened or read. `file` names the extent file at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O error while reading.
    #[error("{file}: failed to read {what} at byte offset {offset}")]
    Read {
        file: String,
        what: &'static str,
        offset: u64,
        #[source]
        source: io::Error,
    },
    /// The extent opener failed.
    #[error("cannot open extent file {file:?}")]
    OpenExtent {
        file: String,
        #[source]
        source: io::Error,
    },
    /// The file is neither a sparse extent nor a descriptor.
    #[error("{file}: neither a VMDK sparse header (\"KDMV\") nor a descriptor")]
    NotVmdk { file: String },
    /// The sparse header is invalid.
    #[error("{file}: invalid sparse header at byte offset {offset}")]
    Header {
        file: String,
        offset: u64,
        #[source]
        source: header::Error,
    },
    /// The descriptor is invalid.
    #[error("{file}: invalid descriptor")]
    Descriptor {
        file: String,
        #[source]
        source: descriptor::Error,
    },
    /// A descriptor extent kind this reader cannot read.
    #[error(
        "{file}: extent type {kind:?} is not supported (delta disks and raw device mappings cannot be read)"
    )]
    UnsupportedExtent { file: String, kind: ExtentKind },
    /// The descriptor points at a parent disk.
    #[error("{file}: is a delta disk (parentCID {parent_cid:08x}); convert the flattened disk instead")]
    HasParent { file: String, parent_cid: u32 },
    /// `gdOffset` is `GD_AT_END` but no footer is where the spec puts it.
    #[error(
        "{file}: grain directory is at the end but no footer precedes the EOS marker at byte offset {offset}"
    )]
    FooterMissing { file: String, offset: u64 },
    /// The grain directory extends past the end of the file.
    #[error(
        "{file}: grain directory at sector {sector} ({entries} entries) extends past the end of the file ({file_len} bytes)"
    )]
    GdPastEnd {
        file: String,
        sector: u64,
        entries: u64,
        file_len: u64,
    },
    /// A grain directory entry points past the end of the file.
    #[error(
        "{file}: grain directory entry {index} points to a grain table at sector {sector}, past the end of the file ({file_len} bytes)"
    )]
    GtPastEnd {
        file: String,
        index: u64,
        sector: u64,
        file_len: u64,
    },
    /// A grain table entry points past the end of the file.
    #[error("{file}: grain {grain} points to sector {sector}, past the end of the file ({file_len} bytes)")]
    GrainPastEnd {
        file: String,
        grain: u64,
        sector: u64,
        file_len: u64,
    },
    /// A compressed grain record carries another LBA than the grain table says.
    #[error("{file}: grain record at byte offset {offset} has LBA {found}, expected {expected}")]
    GrainLbaMismatch {
        file: String,
        offset: u64,
        expected: u64,
        found: u64,
    },
    /// A compressed grain record claims an impossible size.
    #[error("{file}: grain record at byte offset {offset} claims {size} compressed bytes (limit {limit})")]
    GrainTooLarge {
        file: String,
        offset: u64,
        size: u64,
        limit: u64,
    },
    /// A compressed grain did not inflate.
    #[error("{file}: grain record at byte offset {offset} does not inflate")]
    Inflate {
        file: String,
        offset: u64,
        #[source]
        source: InflateError,
    },
    /// A sparse extent is smaller than its descriptor line says.
    #[error("{file}: sparse extent holds {header_sectors} sectors but the descriptor lists {extent_sectors}")]
    ExtentSizeMismatch {
        file: String,
        extent_sectors: u64,
        header_sectors: u64,
    },
    /// A flat extent file is shorter than the extent.
    #[error("{file}: flat extent needs {needed} bytes but the file has {file_len}")]
    FlatTooShort {
        file: String,
        needed: u64,
        file_len: u64,
    },
    /// The extents add up to more than the supported capacity.
    #[error("extents add up to more than {max} bytes", max = header::MAX_CAPACITY_SECTORS * SECTOR_SIZE)]
    CapacityTooLarge,
}

/// Where a byte range of the virtual disk stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Whether the range has stored data; `false` means it reads as zeros.
    pub allocated: bool,
    /// Length of the range in bytes (never 0 below the capacity).
    pub len: u64,
}

enum Backend<R> {
    Flat { file: R, offset: u64 },
    Zero,
    Sparse(Box<SparseExtent<R>>),
}

struct OpenExtent<R> {
    name: String,
    start: u64,
    len: u64,
    backend: Backend<R>,
}

/// One hosted sparse extent (monolithicSparse, a `-sNNN` extent, or a streamOptimized file).
struct SparseExtent<R> {
    name: String,
    file: R,
    file_len: u64,
    header: SparseHeader,
    gd: Vec<u32>,
    gt_index: Option<u64>,
    gt: Vec<u32>,
    inflater: GrainInflater,
    grain_buf: Vec<u8>,
    grain_buf_index: Option<u64>,
    compressed: Vec<u8>,
}

/// Location of one grain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GrainLocation {
    Unallocated,
    Sector(u64),
}

fn read_at<R: Read + Seek>(
    file: &mut R,
    name: &str,
    what: &'static str,
    offset: u64,
    buf: &mut [u8],
) -> Result<(), Error> {
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| file.read_exact(buf))
        .map_err(|source| Error::Read {
            file: name.to_owned(),
            what,
            offset,
            source,
        })
}

fn file_len<R: Seek>(file: &mut R, name: &str) -> Result<u64, Error> {
    file.seek(SeekFrom::End(0)).map_err(|source| Error::Read {
        file: name.to_owned(),
        what: "file length",
        offset: 0,
        source,
    })
}

impl<R: Read + Seek> SparseExtent<R> {
    /// Opens the extent; `with_descriptor` also parses the embedded descriptor (extents listed by
    /// a standalone descriptor carry an empty one).
    fn open(mut file: R, name: &str, with_descriptor: bool) -> Result<(Self, Option<Descriptor>), Error> {
        let file_len = file_len(&mut file, name)?;
        let mut sector = [0u8; HEADER_SIZE];
        read_at(&mut file, name, "sparse header", 0, &mut sector)?;
        let header_err = |offset, source| Error::Header {
            file: name.to_owned(),
            offset,
            source,
        };
        let mut header = SparseHeader::parse(&sector).map_err(|e| header_err(0, e))?;
        let descriptor = match header.descriptor.filter(|_| with_descriptor) {
            Some((offset, size)) => {
                let start = offset * SECTOR_SIZE;
                let len = (size * SECTOR_SIZE).min(file_len.saturating_sub(start));
                let mut bytes = vec![0u8; usize::try_from(len).unwrap_or(0)];
                read_at(&mut file, name, "embedded descriptor", start, &mut bytes)?;
                Some(
                    Descriptor::parse_bytes(&bytes).map_err(|source| Error::Descriptor {
                        file: name.to_owned(),
                        source,
                    })?,
                )
            }
            None => None,
        };
        if header.gd == GdLocation::AtEnd {
            header = Self::read_footer(&mut file, name, file_len, &header)?;
        }
        let GdLocation::Sector(gd_sector) = header.gd else {
            return Err(Error::FooterMissing {
                file: name.to_owned(),
                offset: file_len,
            });
        };
        let entries = header.gd_entries();
        // Bounded by header validation: entries ≤ 2 Mi, gd_sector < 2^64 / 512 is checked here.
        let gd_end = gd_sector
            .checked_mul(SECTOR_SIZE)
            .and_then(|s| s.checked_add(entries * 4));
        if gd_end.is_none_or(|end| end > file_len) {
            return Err(Error::GdPastEnd {
                file: name.to_owned(),
                sector: gd_sector,
                entries,
                file_len,
            });
        }
        let mut raw = vec![0u8; (entries * 4) as usize];
        read_at(
            &mut file,
            name,
            "grain directory",
            gd_sector * SECTOR_SIZE,
            &mut raw,
        )?;
        let gd: Vec<u32> = raw
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        for (index, &sector) in gd.iter().enumerate() {
            let end = u64::from(sector) * SECTOR_SIZE + header.gt_bytes();
            if sector != 0 && end > file_len {
                return Err(Error::GtPastEnd {
                    file: name.to_owned(),
                    index: index as u64,
                    sector: u64::from(sector),
                    file_len,
                });
            }
        }
        let grain_bytes = header.grain_bytes() as usize;
        let extent = Self {
            name: name.to_owned(),
            file,
            file_len,
            header,
            gd,
            gt_index: None,
            gt: Vec::new(),
            inflater: GrainInflater::new(),
            grain_buf: vec![0u8; grain_bytes],
            grain_buf_index: None,
            compressed: Vec::new(),
        };
        Ok((extent, descriptor))
    }

    /// Reads the footer of a `GD_AT_END` file: footer marker, footer, EOS in the last 1536 bytes.
    fn read_footer(
        file: &mut R,
        name: &str,
        file_len: u64,
        header: &SparseHeader,
    ) -> Result<SparseHeader, Error> {
        let missing = || Error::FooterMissing {
            file: name.to_owned(),
            offset: file_len.saturating_sub(512),
        };
        let start = file_len.checked_sub(3 * SECTOR_SIZE).ok_or_else(missing)?;
        let mut tail = [0u8; 1536];
        read_at(file, name, "footer", start, &mut tail)?;
        let marker_val = u64::from_le_bytes(tail[0..8].try_into().map_err(|_| missing())?);
        let marker_size = u32::from_le_bytes(tail[8..12].try_into().map_err(|_| missing())?);
        let marker_type = u32::from_le_bytes(tail[12..16].try_into().map_err(|_| missing())?);
        let eos_is_zero = tail[1024..1040].iter().all(|&b| b == 0);
        let eos_type = u32::from_le_bytes(tail[1036..1040].try_into().map_err(|_| missing())?);
        if marker_val != 1
            || marker_size != 0
            || marker_type != MARKER_FOOTER
            || !eos_is_zero
            || eos_type != MARKER_EOS
        {
            return Err(missing());
        }
        let footer = SparseHeader::parse(&tail[512..1024]).map_err(|source| Error::Header {
            file: name.to_owned(),
            offset: start + 512,
            source,
        })?;
        if footer.capacity_sectors != header.capacity_sectors || footer.grain_sectors != header.grain_sectors
        {
            return Err(missing());
        }
        Ok(footer)
    }

    fn locate(&mut self, grain: u64) -> Result<GrainLocation, Error> {
        let per_gt = u64::from(self.header.gtes_per_gt);
        let gd_index = grain / per_gt;
        let Some(&gt_sector) = self.gd.get(gd_index as usize) else {
            return Ok(GrainLocation::Unallocated);
        };
        if gt_sector == 0 {
            return Ok(GrainLocation::Unallocated);
        }
        if self.gt_index != Some(gd_index) {
            let mut raw = vec![0u8; (per_gt * 4) as usize];
            read_at(
                &mut self.file,
                &self.name,
                "grain table",
                u64::from(gt_sector) * SECTOR_SIZE,
                &mut raw,
            )?;
            self.gt = raw
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            self.gt_index = Some(gd_index);
        }
        let entry = self.gt.get((grain % per_gt) as usize).copied().unwrap_or(0);
        let sector = u64::from(entry);
        if entry == 0 || (entry == 1 && self.header.zeroed_grain_entries()) {
            return Ok(GrainLocation::Unallocated);
        }
        if sector * SECTOR_SIZE >= self.file_len {
            return Err(Error::GrainPastEnd {
                file: self.name.clone(),
                grain,
                sector,
                file_len: self.file_len,
            });
        }
        Ok(GrainLocation::Sector(sector))
    }

    /// Reads bytes at `offset` within the extent into `buf`, up to the end of its grain or, for
    /// uncompressed grains stored one after the other in the file, of that run of grains.
    /// Returns the number of bytes produced.
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, Error> {
        let grain_bytes = self.header.grain_bytes();
        let grain = offset / grain_bytes;
        let within = offset % grain_bytes;
        let mut n = (buf.len() as u64).min(grain_bytes - within) as usize;
        match self.locate(grain)? {
            GrainLocation::Unallocated => buf[..n].fill(0),
            GrainLocation::Sector(sector) => match self.header.compression {
                Compression::None => {
                    // qemu-img and VMware allocate grains in order, so one read usually covers a
                    // whole request instead of one read per grain.
                    let mut next = grain + 1;
                    while n < buf.len() {
                        let Some(contiguous) = (next - grain)
                            .checked_mul(self.header.grain_sectors)
                            .and_then(|d| d.checked_add(sector))
                        else {
                            break;
                        };
                        if self.locate(next)? != GrainLocation::Sector(contiguous) {
                            break;
                        }
                        n += (buf.len() - n).min(grain_bytes as usize);
                        next += 1;
                    }
                    let out = &mut buf[..n];
                    let at = sector * SECTOR_SIZE + within;
                    let available = self.file_len.saturating_sub(at).min(n as u64) as usize;
                    read_at(&mut self.file, &self.name, "grain", at, &mut out[..available])?;
                    out[available..].fill(0);
                }
                Compression::Deflate => {
                    self.inflate(grain, sector)?;
                    buf[..n].copy_from_slice(&self.grain_buf[within as usize..within as usize + n]);
                }
            },
        }
        Ok(n)
    }

    fn inflate(&mut self, grain: u64, sector: u64) -> Result<(), Error> {
        if self.grain_buf_index == Some(grain) {
            return Ok(());
        }
        self.grain_buf_index = None;
        let offset = sector * SECTOR_SIZE;
        let mut head = [0u8; GRAIN_RECORD_HEADER];
        read_at(&mut self.file, &self.name, "grain record", offset, &mut head)?;
        let lba = u64::from_le_bytes([
            head[0], head[1], head[2], head[3], head[4], head[5], head[6], head[7],
        ]);
        let size = u64::from(u32::from_le_bytes([head[8], head[9], head[10], head[11]]));
        let expected = grain * self.header.grain_sectors;
        if lba != expected {
            return Err(Error::GrainLbaMismatch {
                file: self.name.clone(),
                offset,
                expected,
                found: lba,
            });
        }
        let limit = max_compressed_grain(self.header.grain_bytes());
        if size > limit || offset + GRAIN_RECORD_HEADER as u64 + size > self.file_len {
            return Err(Error::GrainTooLarge {
                file: self.name.clone(),
                offset,
                size,
                limit,
            });
        }
        self.compressed.resize(size as usize, 0);
        read_at(
            &mut self.file,
            &self.name,
            "grain data",
            offset + 12,
            &mut self.compressed,
        )?;
        let n = self
            .inflater
            .inflate(&self.compressed, &mut self.grain_buf)
            .map_err(|source| Error::Inflate {
                file: self.name.clone(),
                offset,
                source,
            })?;
        self.grain_buf[n..].fill(0);
        self.grain_buf_index = Some(grain);
        Ok(())
    }

    fn segment(&mut self, offset: u64, limit: u64) -> Result<Segment, Error> {
        let grain_bytes = self.header.grain_bytes();
        let gt_bytes_covered = grain_bytes * u64::from(self.header.gtes_per_gt);
        let grain = offset / grain_bytes;
        let gd_index = offset / gt_bytes_covered;
        if self.gd.get(gd_index as usize).copied().unwrap_or(0) == 0 {
            let len = ((gd_index + 1) * gt_bytes_covered - offset).min(limit);
            return Ok(Segment {
                allocated: false,
                len,
            });
        }
        let allocated = self.locate(grain)? != GrainLocation::Unallocated;
        Ok(Segment {
            allocated,
            len: ((grain + 1) * grain_bytes - offset).min(limit),
        })
    }

    fn allocated_grains(&mut self) -> Result<u64, Error> {
        let grains = self.header.capacity_sectors.div_ceil(self.header.grain_sectors);
        let mut count = 0;
        let per_gt = u64::from(self.header.gtes_per_gt);
        let mut grain = 0;
        while grain < grains {
            if self.gd.get((grain / per_gt) as usize).copied().unwrap_or(0) == 0 {
                grain = (grain / per_gt + 1) * per_gt;
                continue;
            }
            if self.locate(grain)? != GrainLocation::Unallocated {
                count += 1;
            }
            grain += 1;
        }
        Ok(count)
    }
}

/// Facts about an opened VMDK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmdkInfo {
    /// `createType` from the descriptor (embedded or standalone), if any.
    pub create_type: Option<CreateType>,
    /// Virtual size in bytes.
    pub capacity: u64,
    /// Grain size in bytes of the first sparse extent.
    pub grain_size: Option<u64>,
    /// Number of extents.
    pub extents: usize,
}

/// A random-access reader over a whole VMDK. Implements [`Read`] and [`Seek`] over the virtual
/// disk; [`VmdkReader::segment`] tells allocated ranges from holes so callers can skip them.
pub struct VmdkReader<R> {
    extents: Vec<OpenExtent<R>>,
    capacity: u64,
    pos: u64,
    descriptor: Option<Descriptor>,
    grain_size: Option<u64>,
}

impl<R> std::fmt::Debug for VmdkReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmdkReader")
            .field("capacity", &self.capacity)
            .field("extents", &self.extents.len())
            .field("pos", &self.pos)
            .finish_non_exhaustive()
    }
}

impl<R: Read + Seek> VmdkReader<R> {
    /// Opens `file` (named `name` in errors): a sparse extent with its own header
    /// (monolithicSparse, streamOptimized), or a descriptor whose extents `open_extent` opens by
    /// their (already validated) relative names.
    pub fn open(
        mut file: R,
        name: &str,
        open_extent: &mut dyn FnMut(&str) -> io::Result<R>,
    ) -> Result<Self, Error> {
        let len = file_len(&mut file, name)?;
        let mut magic = [0u8; 4];
        if len >= 4 {
            read_at(&mut file, name, "magic", 0, &mut magic)?;
        }
        if u32::from_le_bytes(magic) == header::MAGIC {
            return Self::open_sparse(file, name);
        }
        if len > descriptor::MAX_DESCRIPTOR_BYTES as u64 {
            return Err(Error::NotVmdk {
                file: name.to_owned(),
            });
        }
        let mut text = vec![0u8; len as usize];
        read_at(&mut file, name, "descriptor", 0, &mut text)?;
        let descriptor = Descriptor::parse_bytes(&text).map_err(|source| match source {
            descriptor::Error::NotText { .. } | descriptor::Error::MissingCreateType => Error::NotVmdk {
                file: name.to_owned(),
            },
            source => Error::Descriptor {
                file: name.to_owned(),
                source,
            },
        })?;
        Self::open_descriptor(descriptor, name, open_extent)
    }

    /// Opens a single hosted sparse file (monolithicSparse or streamOptimized).
    pub fn open_sparse(file: R, name: &str) -> Result<Self, Error> {
        let (extent, descriptor) = SparseExtent::open(file, name, true)?;
        let capacity = extent.header.capacity_bytes();
        let grain_size = Some(extent.header.grain_bytes());
        Ok(Self {
            extents: vec![OpenExtent {
                name: name.to_owned(),
                start: 0,
                len: capacity,
                backend: Backend::Sparse(Box::new(extent)),
            }],
            capacity,
            pos: 0,
            descriptor,
            grain_size,
        })
    }

    /// Opens the extents a descriptor lists.
    pub fn open_descriptor(
        descriptor: Descriptor,
        name: &str,
        open_extent: &mut dyn FnMut(&str) -> io::Result<R>,
    ) -> Result<Self, Error> {
        if let Some(parent_cid) = descriptor.parent_cid.filter(|&c| c != u32::MAX) {
            return Err(Error::HasParent {
                file: name.to_owned(),
                parent_cid,
            });
        }
        let mut extents = Vec::with_capacity(descriptor.extents.len());
        let mut start: u64 = 0;
        let mut grain_size = None;
        for extent in &descriptor.extents {
            let file_name = extent.file.clone().unwrap_or_default();
            let len = extent
                .sectors
                .checked_mul(SECTOR_SIZE)
                .ok_or(Error::CapacityTooLarge)?;
            let open = |f: &mut dyn FnMut(&str) -> io::Result<R>| {
                f(&file_name).map_err(|source| Error::OpenExtent {
                    file: file_name.clone(),
                    source,
                })
            };
            let backend = match extent.kind {
                ExtentKind::Zero => Backend::Zero,
                ExtentKind::Flat | ExtentKind::Vmfs => {
                    let mut file = open(open_extent)?;
                    let offset = extent
                        .offset_sectors
                        .checked_mul(SECTOR_SIZE)
                        .ok_or(Error::CapacityTooLarge)?;
                    let file_len = file_len(&mut file, &file_name)?;
                    let needed = offset.checked_add(len).ok_or(Error::CapacityTooLarge)?;
                    if file_len < needed {
                        return Err(Error::FlatTooShort {
                            file: file_name,
                            needed,
                            file_len,
                        });
                    }
                    Backend::Flat { file, offset }
                }
                ExtentKind::Sparse => {
                    let file = open(open_extent)?;
                    let (sparse, _) = SparseExtent::open(file, &file_name, false)?;
                    if sparse.header.capacity_sectors < extent.sectors {
                        return Err(Error::ExtentSizeMismatch {
                            file: file_name,
                            extent_sectors: extent.sectors,
                            header_sectors: sparse.header.capacity_sectors,
                        });
                    }
                    grain_size.get_or_insert(sparse.header.grain_bytes());
                    Backend::Sparse(Box::new(sparse))
                }
                kind => {
                    return Err(Error::UnsupportedExtent {
                        file: file_name,
                        kind,
                    });
                }
            };
            extents.push(OpenExtent {
                name: file_name.clone(),
                start,
                len,
                backend,
            });
            start = start.checked_add(len).ok_or(Error::CapacityTooLarge)?;
        }
        if start > header::MAX_CAPACITY_SECTORS * SECTOR_SIZE {
            return Err(Error::CapacityTooLarge);
        }
        Ok(Self {
            extents,
            capacity: start,
            pos: 0,
            descriptor: Some(descriptor),
            grain_size,
        })
    }
}

impl<R: Read + Seek> VmdkReader<R> {
    /// Virtual size in bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The descriptor (standalone, or embedded in the sparse file).
    pub fn descriptor(&self) -> Option<&Descriptor> {
        self.descriptor.as_ref()
    }

    /// Summary facts.
    pub fn info(&self) -> VmdkInfo {
        VmdkInfo {
            create_type: self.descriptor.as_ref().map(|d| d.create_type.clone()),
            capacity: self.capacity,
            grain_size: self.grain_size,
            extents: self.extents.len(),
        }
    }

    /// Bytes of stored data: allocated grains of sparse extents plus the length of flat extents.
    /// Walks every grain table.
    pub fn allocated_bytes(&mut self) -> Result<u64, Error> {
        let mut total = 0u64;
        for extent in &mut self.extents {
            total += match &mut extent.backend {
                Backend::Flat { .. } => extent.len,
                Backend::Zero => 0,
                Backend::Sparse(s) => (s.allocated_grains()? * s.header.grain_bytes()).min(extent.len),
            };
        }
        Ok(total)
    }

    fn extent_index(&self, offset: u64) -> Option<usize> {
        let i = self.extents.partition_point(|e| e.start + e.len <= offset);
        (i < self.extents.len()).then_some(i)
    }

    /// For an offset inside a flat extent: the extent's file, the file offset holding that byte,
    /// and the bytes left in the extent. Lets a caller ask the file system where the holes of a
    /// thin flat file are (`SEEK_DATA`), which this pure reader cannot.
    pub fn flat_file_at(&mut self, offset: u64) -> Option<(&mut R, u64, u64)> {
        let i = self.extent_index(offset)?;
        let extent = &mut self.extents[i];
        let within = offset - extent.start;
        match &mut extent.backend {
            Backend::Flat { file, offset: base } => Some((file, *base + within, extent.len - within)),
            Backend::Zero | Backend::Sparse(_) => None,
        }
    }

    /// The allocation status of the range starting at `offset`, up to the next change the reader
    /// can cheaply know about (grain, grain table or extent boundary). `len == 0` at the end.
    pub fn segment(&mut self, offset: u64) -> Result<Segment, Error> {
        let Some(i) = self.extent_index(offset) else {
            return Ok(Segment {
                allocated: false,
                len: 0,
            });
        };
        let extent = &mut self.extents[i];
        let within = offset - extent.start;
        let remaining = extent.len - within;
        match &mut extent.backend {
            Backend::Flat { .. } => Ok(Segment {
                allocated: true,
                len: remaining,
            }),
            Backend::Zero => Ok(Segment {
                allocated: false,
                len: remaining,
            }),
            Backend::Sparse(s) => s.segment(within, remaining),
        }
    }

    /// Reads at `offset` into `buf`; returns the bytes produced (0 at the end). A read may stop
    /// early (at an extent boundary, or a grain stored apart from the previous one), so callers
    /// loop.
    pub fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<usize, Error> {
        let Some(i) = self.extent_index(offset) else {
            return Ok(0);
        };
        let extent = &mut self.extents[i];
        let within = offset - extent.start;
        let n = (buf.len() as u64).min(extent.len - within) as usize;
        let out = &mut buf[..n];
        match &mut extent.backend {
            Backend::Flat { file, offset: base } => {
                read_at(file, &extent.name, "flat extent data", *base + within, out)?;
                Ok(n)
            }
            Backend::Zero => {
                out.fill(0);
                Ok(n)
            }
            Backend::Sparse(s) => s.read(within, out),
        }
    }
}

impl<R: Read + Seek> Read for VmdkReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self
            .read_at(self.pos, buf)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl<R: Read + Seek> Seek for VmdkReader<R> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let new = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.capacity.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        let new = new.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before start"))?;
        self.pos = new;
        Ok(new)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;
    use crate::{
        header::{FLAG_VALID_NEWLINE_TEST, MAGIC, RawSparseHeader},
        stream::tests::StreamBuilder,
    };

    fn no_extents(name: &str) -> io::Result<Cursor<Vec<u8>>> {
        Err(io::Error::new(io::ErrorKind::NotFound, name.to_owned()))
    }

    /// monolithicSparse: header, GD at sector 1, one GT at sector 2..6, grain at sector 8.
    /// An uncompressed hosted sparse header: 128-sector grains, GD at sector 1, GT at sector 2.
    fn sparse_header() -> RawSparseHeader {
        RawSparseHeader {
            magic: MAGIC,
            version: 1,
            flags: FLAG_VALID_NEWLINE_TEST,
            capacity: 256,
            grain_size: 128,
            descriptor_offset: 0,
            descriptor_size: 0,
            num_gtes_per_gt: 512,
            rgd_offset: 0,
            gd_offset: 1,
            overhead: 8,
            unclean_shutdown: 0,
            newline_check: *b"\n \r\n",
            compress_algorithm: 0,
        }
    }

    fn sparse_image() -> Vec<u8> {
        let mut img = sparse_header().to_bytes().to_vec();
        img.resize(8 * 512 + 65536, 0);
        img[512..516].copy_from_slice(&2u32.to_le_bytes());
        // GT entry 1 (second grain) → sector 8.
        img[1024 + 4..1024 + 8].copy_from_slice(&8u32.to_le_bytes());
        img[8 * 512..].fill(0xab);
        img
    }

    #[test]
    fn reads_monolithic_sparse() {
        let mut r = VmdkReader::open(Cursor::new(sparse_image()), "x.vmdk", &mut no_extents).unwrap();
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out.len(), 131072);
        assert!(out[..65536].iter().all(|&b| b == 0));
        assert!(out[65536..].iter().all(|&b| b == 0xab));
        assert_eq!(r.allocated_bytes().unwrap(), 65536);
        assert_eq!(
            r.segment(0).unwrap(),
            Segment {
                allocated: false,
                len: 65536
            }
        );
        assert_eq!(
            r.segment(65536).unwrap(),
            Segment {
                allocated: true,
                len: 65536
            }
        );
    }

    #[test]
    fn grains_stored_one_after_the_other_are_read_at_once() {
        let mut img = RawSparseHeader {
            capacity: 512,
            ..sparse_header()
        }
        .to_bytes()
        .to_vec();
        // Grains 0 and 1 follow each other in the file; 3 is stored before 2.
        let sectors = [8u32, 136, 392, 264];
        img.resize(520 * 512, 0);
        img[512..516].copy_from_slice(&2u32.to_le_bytes());
        for (grain, sector) in sectors.iter().enumerate() {
            let entry = 1024 + grain * 4;
            img[entry..entry + 4].copy_from_slice(&sector.to_le_bytes());
            let at = *sector as usize * 512;
            img[at..at + 65536].fill(grain as u8 + 1);
        }
        let mut r = VmdkReader::open(Cursor::new(img), "x.vmdk", &mut no_extents).unwrap();
        let mut buf = vec![0u8; 4 * 65536];
        assert_eq!(r.read_at(0, &mut buf).unwrap(), 2 * 65536);
        assert_eq!(r.read_at(2 * 65536, &mut buf[2 * 65536..]).unwrap(), 65536);
        assert_eq!(r.read_at(3 * 65536, &mut buf[3 * 65536..]).unwrap(), 65536);
        for (grain, chunk) in buf.chunks(65536).enumerate() {
            assert!(chunk.iter().all(|&b| b == grain as u8 + 1), "grain {grain}");
        }
    }

    #[test]
    fn rejects_gd_past_end() {
        let mut img = sparse_image();
        img[56..64].copy_from_slice(&1000u64.to_le_bytes());
        let err = VmdkReader::open(Cursor::new(img), "x.vmdk", &mut no_extents).unwrap_err();
        assert!(matches!(err, Error::GdPastEnd { sector: 1000, .. }), "{err}");
    }

    #[test]
    fn rejects_gt_past_end() {
        let mut img = sparse_image();
        img[512..516].copy_from_slice(&5000u32.to_le_bytes());
        let err = VmdkReader::open(Cursor::new(img), "x.vmdk", &mut no_extents).unwrap_err();
        assert!(
            matches!(
                err,
                Error::GtPastEnd {
                    index: 0,
                    sector: 5000,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn rejects_grain_past_end() {
        let mut img = sparse_image();
        img[1024 + 4..1024 + 8].copy_from_slice(&9999u32.to_le_bytes());
        let mut r = VmdkReader::open(Cursor::new(img), "x.vmdk", &mut no_extents).unwrap();
        let err = r.read_at(65536, &mut [0u8; 512]).unwrap_err();
        assert!(
            matches!(
                err,
                Error::GrainPastEnd {
                    grain: 1,
                    sector: 9999,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn reads_stream_with_footer_gd() {
        // Grain at LBA 128 recorded at sector 2; GD → GT; built by hand around the builder.
        let mut s = StreamBuilder::new(256).grain(128, &[5u8; 65536]);
        let grain_sector = 2u32;
        let gt_sector = s.bytes.len() as u64 / 512 + 1;
        s = s.marker(4, crate::stream::MARKER_GT);
        let mut gt = vec![0u8; 2048];
        gt[4..8].copy_from_slice(&grain_sector.to_le_bytes());
        s.bytes.extend_from_slice(&gt);
        let gd_sector = s.bytes.len() as u64 / 512 + 1;
        s = s.marker(1, crate::stream::MARKER_GD);
        let mut gd = vec![0u8; 512];
        gd[0..4].copy_from_slice(&(gt_sector as u32).to_le_bytes());
        s.bytes.extend_from_slice(&gd);
        s = s.marker(1, MARKER_FOOTER);
        let footer = RawSparseHeader {
            gd_offset: gd_sector,
            ..crate::header::tests::stream_raw(256)
        };
        s.bytes.extend_from_slice(&footer.to_bytes());
        s = s.marker(0, MARKER_EOS);
        let mut r = VmdkReader::open(Cursor::new(s.bytes), "s.vmdk", &mut no_extents).unwrap();
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert!(out[..65536].iter().all(|&b| b == 0));
        assert!(out[65536..].iter().all(|&b| b == 5));
        assert_eq!(r.info().create_type, Some(CreateType::StreamOptimized));
    }

    #[test]
    fn rejects_stream_without_footer() {
        let s = StreamBuilder::new(256).grain(0, &[5u8; 512]);
        let err = VmdkReader::open(Cursor::new(s.bytes), "s.vmdk", &mut no_extents).unwrap_err();
        assert!(matches!(err, Error::FooterMissing { .. }), "{err}");
    }

    #[test]
    fn reads_multi_extent_flat_descriptor() {
        let text = "createType=\"twoGbMaxExtentFlat\"\nRW 1 FLAT \"a\" 0\nRW 1 ZERO\nRW 1 FLAT \"b\" 1\n";
        let mut open = |name: &str| -> io::Result<Cursor<Vec<u8>>> {
            match name {
                "a" => Ok(Cursor::new(vec![1u8; 512])),
                "b" => Ok(Cursor::new([vec![0u8; 512], vec![2u8; 512]].concat())),
                _ => Err(io::ErrorKind::NotFound.into()),
            }
        };
        let mut r = VmdkReader::open(Cursor::new(text.as_bytes().to_vec()), "d.vmdk", &mut open).unwrap();
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, [vec![1u8; 512], vec![0u8; 512], vec![2u8; 512]].concat());
    }

    #[test]
    fn rejects_short_flat_extent() {
        let text = "createType=\"monolithicFlat\"\nRW 4 FLAT \"a\" 0\n";
        let mut open = |_: &str| -> io::Result<Cursor<Vec<u8>>> { Ok(Cursor::new(vec![0u8; 512])) };
        let err = VmdkReader::open(Cursor::new(text.as_bytes().to_vec()), "d.vmdk", &mut open).unwrap_err();
        assert!(matches!(err, Error::FlatTooShort { needed: 2048, .. }), "{err}");
    }

    #[test]
    fn rejects_delta_disk() {
        let text = "parentCID=1234abcd\ncreateType=\"vmfsSparse\"\nRW 4 VMFSSPARSE \"a-delta.vmdk\"\n";
        let err =
            VmdkReader::open(Cursor::new(text.as_bytes().to_vec()), "d.vmdk", &mut no_extents).unwrap_err();
        assert!(
            matches!(
                err,
                Error::HasParent {
                    parent_cid: 0x1234_abcd,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn rejects_non_vmdk() {
        let err = VmdkReader::open(Cursor::new(vec![0xffu8; 4096]), "junk", &mut no_extents).unwrap_err();
        assert!(matches!(err, Error::NotVmdk { .. }), "{err}");
    }
}
