//! The streamOptimized stream decoder: a sans-IO state machine that is fed bytes in any chunking
//! and yields [`Event`]s — the header, the embedded descriptor, each compressed grain with its
//! LBA, metadata markers, the footer and the end of the stream.
//!
//! It never seeks: every grain record carries its own LBA, so a vCenter `ExportVm` body (footer
//! last, length unknown) converts in one pass. The footer and EOS marker, or the grain tables qemu
//! writes before the first grain, are what [`StreamDecoder::finish`] needs to accept the end of the
//! input as the end of the stream ([`crate::stream_end`]).
//! Inflation is left to the caller (see [`crate::grain`]) so that it can run on several threads.
//!
//! ```text
//! header | descriptor | ...pad to overHead... | {grain | GT marker + GT}* | GD marker + GD | footer marker + footer | EOS
//! ```
//!
//! Usage: [`StreamDecoder::feed`] some bytes, call [`StreamDecoder::next_event`] until it returns
//! `Ok(None)`, repeat; at the end of the input call [`StreamDecoder::finish`]. The decoder buffers at
//! most one record plus the last chunk fed.

use bytes::{Buf, Bytes, BytesMut};

use crate::{
    SECTOR_SIZE,
    descriptor::{self, Descriptor},
    grain::{GRAIN_RECORD_HEADER, max_compressed_grain, sector_round},
    header::{self, HEADER_SIZE, SparseHeader},
    stream_end::EndProof,
};

const SECTOR: usize = SECTOR_SIZE as usize;

/// Marker type: end of stream.
pub const MARKER_EOS: u32 = 0;
/// Marker type: a grain table follows.
pub const MARKER_GT: u32 = 1;
/// Marker type: a grain directory follows.
pub const MARKER_GD: u32 = 2;
/// Marker type: the footer (a copy of the header with the real `gdOffset`) follows.
pub const MARKER_FOOTER: u32 = 3;

/// Largest GT/GD payload a marker may announce: a grain directory for the largest accepted
/// capacity is [`header::MAX_GD_ENTRIES`] × 4 bytes = 16 384 sectors. Payloads are skipped, not
/// buffered, but a bigger count is corruption and would hide truncation.
pub const MAX_METADATA_SECTORS: u64 = header::MAX_GD_ENTRIES * 4 / SECTOR_SIZE;

/// Why the stream was rejected. `offset` is the byte offset in the stream of the record at fault.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The header is invalid.
    #[error("invalid sparse header at offset 0")]
    Header(#[source] header::Error),
    /// The header is valid but not a streamOptimized one.
    #[error("not a streamOptimized VMDK (flags {flags:#x}; need compressed grains and markers)")]
    NotStreamOptimized { flags: u32 },
    /// The embedded descriptor is invalid.
    #[error("invalid embedded descriptor at offset {offset}")]
    Descriptor {
        offset: u64,
        #[source]
        source: descriptor::Error,
    },
    /// A grain's LBA is at or past the capacity.
    #[error("grain at offset {offset} has LBA {lba}, past the capacity of {capacity} sectors")]
    GrainPastCapacity { offset: u64, lba: u64, capacity: u64 },
    /// A grain's LBA is not a multiple of the grain size.
    #[error("grain at offset {offset} has LBA {lba}, not a multiple of the grain size {grain_sectors}")]
    MisalignedGrain {
        offset: u64,
        lba: u64,
        grain_sectors: u64,
    },
    /// A grain starts before the end of the previous one.
    #[error(
        "grain at offset {offset} has LBA {lba}, overlapping or before the previous grain (next free LBA {expected_min})"
    )]
    GrainOutOfOrder {
        offset: u64,
        lba: u64,
        expected_min: u64,
    },
    /// A grain's compressed size exceeds the bound.
    #[error("grain at offset {offset} claims {size} compressed bytes (limit {limit})")]
    GrainTooLarge { offset: u64, size: u64, limit: u64 },
    /// Unknown marker type.
    #[error("unknown marker type {kind} at offset {offset}")]
    UnknownMarker { offset: u64, kind: u32 },
    /// A GT/GD/footer marker announces an impossible payload.
    #[error("marker type {kind} at offset {offset} announces {sectors} sectors")]
    BadMarkerSize { offset: u64, kind: u32, sectors: u64 },
    /// The footer is not a valid header.
    #[error("invalid footer at offset {offset}")]
    Footer {
        offset: u64,
        #[source]
        source: header::Error,
    },
    /// The footer disagrees with the header on the disk geometry.
    #[error("footer at offset {offset} disagrees with the header ({field})")]
    FooterMismatch { offset: u64, field: &'static str },
    /// The input ended inside a record.
    #[error("stream truncated at offset {offset} ({context})")]
    Truncated { offset: u64, context: &'static str },
    /// The input ended between records, but the stream's own end was never reached: a cut at a
    /// record boundary (see [`crate::stream_end`] for what proves an end).
    #[error("stream ends early at offset {offset}: {missing}")]
    Incomplete { offset: u64, missing: String },
    /// Non-zero bytes follow the end-of-stream marker (an all-zero sector).
    #[error("non-zero data at offset {offset} after the end-of-stream marker")]
    DataAfterEnd { offset: u64 },
    /// `feed` after the decoder failed or finished.
    #[error("decoder already failed or finished")]
    Finished,
}

/// One metadata marker seen in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker {
    /// Byte offset of the marker sector.
    pub offset: u64,
    /// [`MARKER_GT`] or [`MARKER_GD`].
    pub kind: u32,
    /// Payload length in sectors (skipped by the decoder).
    pub sectors: u64,
}

/// One compressed grain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grain {
    /// First virtual sector of the grain (a multiple of the grain size, below the capacity).
    pub lba: u64,
    /// The zlib stream.
    pub compressed: Bytes,
    /// Byte offset of the grain record in the stream.
    pub offset: u64,
}

/// What the decoder found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The validated header (always the first event).
    Header(SparseHeader),
    /// The embedded descriptor, when the header has one.
    Descriptor(Descriptor),
    /// A compressed grain.
    Grain(Grain),
    /// A GT or GD marker (its payload is skipped).
    Marker(Marker),
    /// The footer header.
    Footer(SparseHeader),
    /// The EOS marker (or, at [`StreamDecoder::finish`], a clean end after a whole record: qemu
    /// writes no EOS).
    EndOfStream,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Header,
    /// Discard bytes until `until`, then go to `then`.
    Skip {
        until: u64,
        then: After,
    },
    Descriptor {
        end: u64,
    },
    Record,
    Footer,
    Ended,
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    Descriptor { end: u64 },
    Record,
}

/// The sans-IO streamOptimized decoder. See the module docs.
#[derive(Debug)]
pub struct StreamDecoder {
    buf: BytesMut,
    /// Stream offset of `buf[0]`.
    offset: u64,
    state: State,
    header: Option<SparseHeader>,
    /// Lowest LBA the next grain may have.
    next_lba: u64,
    grains: u64,
    /// Byte offset of the last grain record.
    last_grain: Option<u64>,
    /// Where the metadata area ends and what proves the end of this stream (after the header).
    grains_start: u64,
    end: Option<EndProof>,
}

impl Default for StreamDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamDecoder {
    /// A decoder waiting for the header.
    pub fn new() -> Self {
        Self {
            buf: BytesMut::new(),
            offset: 0,
            state: State::Header,
            header: None,
            next_lba: 0,
            grains: 0,
            last_grain: None,
            grains_start: 0,
            end: None,
        }
    }

    /// Appends input. Call [`Self::next_event`] until it returns `Ok(None)` before feeding more,
    /// so that memory stays bounded.
    pub fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The header, once decoded.
    pub fn header(&self) -> Option<&SparseHeader> {
        self.header.as_ref()
    }

    /// Bytes consumed so far (the stream offset of the first unconsumed byte).
    pub fn position(&self) -> u64 {
        self.offset
    }

    /// Grains decoded so far.
    pub fn grains(&self) -> u64 {
        self.grains
    }

    /// Decodes the next event from the bytes fed so far; `Ok(None)` means "feed more".
    pub fn next_event(&mut self) -> Result<Option<Event>, Error> {
        let result = self.step();
        if result.is_err() {
            self.state = State::Failed;
        }
        result
    }

    /// Declares the end of input. Returns [`Event::EndOfStream`] if the stream ended cleanly
    /// after a whole record without an EOS marker (qemu-written files), `Ok(None)` if the EOS marker
    /// was already seen, [`Error::Truncated`] if the input stopped inside a record or before
    /// the first grain area, or [`Error::Incomplete`] if it stopped between records before the
    /// stream's end was proven (footer and EOS, or the grain tables all satisfied).
    pub fn finish(&mut self) -> Result<Option<Event>, Error> {
        let offset = self.offset;
        let result = match self.state {
            State::Ended => self.check_end().map(|()| None),
            State::Record if self.buf.is_empty() => self.check_end().map(|()| {
                self.state = State::Ended;
                Some(Event::EndOfStream)
            }),
            State::Skip {
                then: After::Record, ..
            } if self.header.is_some() && self.grains > 0 => Err(Error::Truncated {
                offset,
                context: "inside a grain table or directory",
            }),
            State::Record => Err(Error::Truncated {
                offset,
                context: "inside a grain or marker",
            }),
            State::Header => Err(Error::Truncated {
                offset,
                context: "inside the header",
            }),
            State::Descriptor { .. }
            | State::Skip {
                then: After::Descriptor { .. },
                ..
            } => Err(Error::Truncated {
                offset,
                context: "inside the embedded descriptor",
            }),
            State::Skip { .. } => Err(Error::Truncated {
                offset,
                context: "before the first grain",
            }),
            State::Footer => Err(Error::Truncated {
                offset,
                context: "inside the footer",
            }),
            State::Failed => Err(Error::Finished),
        };
        if result.is_err() {
            self.state = State::Failed;
        }
        result
    }

    /// Whether the stream's own end has been proven (see [`crate::stream_end`]).
    fn check_end(&self) -> Result<(), Error> {
        let Some(end) = &self.end else {
            return Err(Error::Finished);
        };
        end.check(self.grains, self.last_grain)
            .map_err(|missing| Error::Incomplete {
                offset: self.offset,
                missing: missing.describe(),
            })
    }

    /// Metadata bytes before the first grain pass by the end proof, which reads the tables there.
    fn observe(&mut self, n: usize) {
        if self.offset < self.grains_start
            && let Some(end) = self.end.as_mut()
        {
            end.observe(self.offset, &self.buf[..n]);
        }
    }

    fn step(&mut self) -> Result<Option<Event>, Error> {
        loop {
            match self.state {
                State::Header => return self.read_header(),
                State::Skip { until, then } => {
                    if !self.skip_to(until) {
                        return Ok(None);
                    }
                    self.state = match then {
                        After::Descriptor { end } => State::Descriptor { end },
                        After::Record => State::Record,
                    };
                }
                State::Descriptor { end } => return self.read_descriptor(end),
                State::Record => return self.read_record(),
                State::Footer => return self.read_footer(),
                State::Ended => {
                    // Zero padding after EOS is normal (qemu pads to a cluster). Anything else
                    // means the "EOS" was a stray zero sector inside the stream: stopping there
                    // would silently drop the rest of the disk.
                    if let Some(i) = self.buf.iter().position(|&b| b != 0) {
                        return Err(Error::DataAfterEnd {
                            offset: self.offset + i as u64,
                        });
                    }
                    self.offset += self.buf.len() as u64;
                    self.buf.clear();
                    return Ok(None);
                }
                State::Failed => return Err(Error::Finished),
            }
        }
    }

    /// Discards buffered bytes up to stream offset `until`; true once reached.
    fn skip_to(&mut self, until: u64) -> bool {
        let want = until.saturating_sub(self.offset);
        let n = want.min(self.buf.len() as u64);
        // n ≤ buf.len(), so it fits usize.
        self.observe(n as usize);
        self.buf.advance(n as usize);
        self.offset += n;
        self.offset >= until
    }

    fn consume(&mut self, n: usize) -> Bytes {
        self.observe(n);
        self.offset += n as u64;
        self.buf.split_to(n).freeze()
    }

    fn read_header(&mut self) -> Result<Option<Event>, Error> {
        if self.buf.len() < HEADER_SIZE {
            return Ok(None);
        }
        let header = SparseHeader::parse(&self.buf[..HEADER_SIZE]).map_err(Error::Header)?;
        if !header.is_stream_optimized() || header.compression != header::Compression::Deflate {
            return Err(Error::NotStreamOptimized { flags: header.flags });
        }
        let grains_start = header
            .overhead_sectors
            .saturating_mul(SECTOR_SIZE)
            .max(HEADER_SIZE as u64);
        self.grains_start = grains_start;
        self.end = Some(EndProof::for_header(&header, grains_start));
        self.consume(HEADER_SIZE);
        self.state = match header.descriptor {
            Some((offset, size)) => {
                // Both bounded by header validation, so the products cannot overflow.
                let start = offset * SECTOR_SIZE;
                State::Skip {
                    until: start,
                    then: After::Descriptor {
                        end: start + size * SECTOR_SIZE,
                    },
                }
            }
            None => State::Skip {
                until: grains_start,
                then: After::Record,
            },
        };
        self.header = Some(header);
        Ok(Some(Event::Header(header)))
    }

    fn read_descriptor(&mut self, end: u64) -> Result<Option<Event>, Error> {
        let len = end.saturating_sub(self.offset);
        if (self.buf.len() as u64) < len {
            return Ok(None);
        }
        let start = self.offset;
        // len ≤ buf.len() here.
        let bytes = self.consume(len as usize);
        let descriptor = Descriptor::parse_bytes(&bytes).map_err(|source| Error::Descriptor {
            offset: start,
            source,
        })?;
        let overhead = self.header.map_or(0, |h| h.overhead_sectors);
        self.state = State::Skip {
            until: overhead.saturating_mul(SECTOR_SIZE),
            then: After::Record,
        };
        Ok(Some(Event::Descriptor(descriptor)))
    }

    fn read_record(&mut self) -> Result<Option<Event>, Error> {
        if self.buf.len() < SECTOR {
            return Ok(None);
        }
        let Some(header) = self.header else {
            return Err(Error::Finished);
        };
        let offset = self.offset;
        let lba = u64::from_le_bytes(self.buf[0..8].try_into().map_err(|_| Error::Finished)?);
        let size = u64::from(u32::from_le_bytes(
            self.buf[8..12].try_into().map_err(|_| Error::Finished)?,
        ));
        if size == 0 {
            let kind = u32::from_le_bytes(self.buf[12..16].try_into().map_err(|_| Error::Finished)?);
            return self.read_marker(offset, lba, kind);
        }
        if lba >= header.capacity_sectors {
            return Err(Error::GrainPastCapacity {
                offset,
                lba,
                capacity: header.capacity_sectors,
            });
        }
        if !lba.is_multiple_of(header.grain_sectors) {
            return Err(Error::MisalignedGrain {
                offset,
                lba,
                grain_sectors: header.grain_sectors,
            });
        }
        if lba < self.next_lba {
            return Err(Error::GrainOutOfOrder {
                offset,
                lba,
                expected_min: self.next_lba,
            });
        }
        let limit = max_compressed_grain(header.grain_bytes());
        if size > limit {
            return Err(Error::GrainTooLarge { offset, size, limit });
        }
        // size ≤ 2 MiB + 12, so the record length is small and fits usize.
        let record = sector_round(GRAIN_RECORD_HEADER as u64 + size).unwrap_or(u64::MAX) as usize;
        if self.buf.len() < record {
            self.buf.reserve(record - self.buf.len());
            return Ok(None);
        }
        let bytes = self.consume(record);
        let compressed = bytes.slice(GRAIN_RECORD_HEADER..GRAIN_RECORD_HEADER + size as usize);
        self.next_lba = lba + header.grain_sectors;
        self.grains += 1;
        self.last_grain = Some(offset);
        Ok(Some(Event::Grain(Grain {
            lba,
            compressed,
            offset,
        })))
    }

    fn read_marker(&mut self, offset: u64, sectors: u64, kind: u32) -> Result<Option<Event>, Error> {
        match kind {
            MARKER_EOS => {
                self.consume(SECTOR);
                if let Some(end) = self.end.as_mut() {
                    end.saw_eos();
                }
                self.state = State::Ended;
                Ok(Some(Event::EndOfStream))
            }
            MARKER_GT | MARKER_GD => {
                if sectors > MAX_METADATA_SECTORS {
                    return Err(Error::BadMarkerSize {
                        offset,
                        kind,
                        sectors,
                    });
                }
                self.consume(SECTOR);
                let until = self.offset + sectors * SECTOR_SIZE;
                self.state = State::Skip {
                    until,
                    then: After::Record,
                };
                Ok(Some(Event::Marker(Marker {
                    offset,
                    kind,
                    sectors,
                })))
            }
            MARKER_FOOTER => {
                if sectors != 1 {
                    return Err(Error::BadMarkerSize {
                        offset,
                        kind,
                        sectors,
                    });
                }
                self.consume(SECTOR);
                self.state = State::Footer;
                self.read_footer()
            }
            kind => Err(Error::UnknownMarker { offset, kind }),
        }
    }

    fn read_footer(&mut self) -> Result<Option<Event>, Error> {
        if self.buf.len() < HEADER_SIZE {
            return Ok(None);
        }
        let offset = self.offset;
        let footer = SparseHeader::parse(&self.buf[..HEADER_SIZE])
            .map_err(|source| Error::Footer { offset, source })?;
        if let Some(header) = self.header {
            let field = if footer.capacity_sectors != header.capacity_sectors {
                Some("capacity")
            } else if footer.grain_sectors != header.grain_sectors {
                Some("grain size")
            } else {
                None
            };
            if let Some(field) = field {
                return Err(Error::FooterMismatch { offset, field });
            }
        }
        self.consume(HEADER_SIZE);
        if let Some(end) = self.end.as_mut() {
            end.saw_footer();
        }
        self.state = State::Record;
        Ok(Some(Event::Footer(footer)))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{
        grain::{GrainInflater, deflate_grain},
        header::{GD_AT_END, RawSparseHeader, tests::stream_raw},
    };

    /// Builds a VMware-layout stream: header, descriptor, grains, GD marker + GD, footer, EOS.
    pub(crate) struct StreamBuilder {
        pub(crate) bytes: Vec<u8>,
        raw: RawSparseHeader,
    }

    impl StreamBuilder {
        pub(crate) fn new(capacity: u64) -> Self {
            let raw = stream_raw(capacity);
            let mut bytes = raw.to_bytes().to_vec();
            let mut desc = format!(
                "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n\
                 createType=\"streamOptimized\"\nRW {capacity} SPARSE \"x.vmdk\"\nddb.adapterType = \"lsilogic\"\n"
            )
            .into_bytes();
            desc.resize(512, 0);
            bytes.extend_from_slice(&desc);
            Self { bytes, raw }
        }

        pub(crate) fn raw_grain(mut self, lba: u64, compressed: &[u8]) -> Self {
            self.bytes.extend_from_slice(&lba.to_le_bytes());
            self.bytes
                .extend_from_slice(&(compressed.len() as u32).to_le_bytes());
            self.bytes.extend_from_slice(compressed);
            self.pad()
        }

        pub(crate) fn grain(self, lba: u64, data: &[u8]) -> Self {
            let z = deflate_grain(data);
            self.raw_grain(lba, &z)
        }

        pub(crate) fn marker(mut self, val: u64, kind: u32) -> Self {
            let mut s = [0u8; 512];
            s[0..8].copy_from_slice(&val.to_le_bytes());
            s[12..16].copy_from_slice(&kind.to_le_bytes());
            self.bytes.extend_from_slice(&s);
            self
        }

        pub(crate) fn gd_and_footer(self) -> Self {
            let gd_sector = self.bytes.len() as u64 / 512 + 1;
            let mut b = self.marker(1, MARKER_GD);
            b.bytes.extend_from_slice(&[0u8; 512]);
            let footer = RawSparseHeader {
                gd_offset: gd_sector,
                ..b.raw
            };
            b = b.marker(1, MARKER_FOOTER);
            b.bytes.extend_from_slice(&footer.to_bytes());
            b.marker(0, MARKER_EOS)
        }

        fn pad(mut self) -> Self {
            let len = self.bytes.len().next_multiple_of(512);
            self.bytes.resize(len, 0);
            self
        }
    }

    fn decode_all(bytes: &[u8], chunk: usize) -> Result<Vec<Event>, Error> {
        let mut d = StreamDecoder::new();
        let mut events = Vec::new();
        for part in bytes.chunks(chunk.max(1)) {
            d.feed(part);
            while let Some(e) = d.next_event()? {
                events.push(e);
            }
        }
        if let Some(e) = d.finish()? {
            events.push(e);
        }
        Ok(events)
    }

    fn grains(events: &[Event]) -> Vec<u64> {
        events
            .iter()
            .filter_map(|e| {
                if let Event::Grain(g) = e {
                    Some(g.lba)
                } else {
                    None
                }
            })
            .collect()
    }

    #[test]
    fn decodes_vmware_layout_in_any_chunking() {
        let stream = StreamBuilder::new(1024)
            .grain(0, &[1u8; 65536])
            .grain(256, &[2u8; 65536])
            .gd_and_footer();
        for chunk in [1, 7, 512, 4096, 1 << 20] {
            let events = decode_all(&stream.bytes, chunk).unwrap();
            assert_eq!(grains(&events), vec![0, 256], "chunk {chunk}");
            assert!(matches!(events[0], Event::Header(_)));
            assert!(matches!(events[1], Event::Descriptor(_)));
            assert!(matches!(events.last(), Some(Event::EndOfStream)));
            assert!(
                events
                    .iter()
                    .any(|e| matches!(e, Event::Footer(f) if f.gd != header::GdLocation::AtEnd))
            );
        }
    }

    #[test]
    fn grain_payload_inflates_to_content() {
        let stream = StreamBuilder::new(128).grain(0, &[9u8; 65536]).gd_and_footer();
        let events = decode_all(&stream.bytes, 100).unwrap();
        let Some(Event::Grain(g)) = events.iter().find(|e| matches!(e, Event::Grain(_))) else {
            panic!("no grain");
        };
        let mut out = vec![0u8; 65536];
        assert_eq!(GrainInflater::new().inflate(&g.compressed, &mut out), Ok(65536));
        assert!(out.iter().all(|&b| b == 9));
    }

    #[test]
    fn gd_at_end_stream_cut_after_a_grain_is_incomplete() {
        let stream = StreamBuilder::new(256).grain(0, &[1u8; 512]);
        assert_eq!(
            decode_all(&stream.bytes, 512),
            Err(Error::Incomplete {
                offset: 1536,
                missing: "no footer: the grain directory is at the end of this stream".into()
            })
        );
    }

    #[test]
    fn gd_at_end_stream_cut_after_the_footer_is_incomplete() {
        let whole = StreamBuilder::new(256).grain(0, &[1u8; 512]).gd_and_footer();
        let cut = &whole.bytes[..whole.bytes.len() - 512];
        assert!(matches!(
            decode_all(cut, 512),
            Err(Error::Incomplete { missing, .. }) if missing.contains("end-of-stream marker")
        ));
    }

    #[test]
    fn eos_before_the_footer_is_incomplete() {
        let stream = StreamBuilder::new(256)
            .grain(0, &[1u8; 512])
            .marker(0, MARKER_EOS);
        assert!(matches!(
            decode_all(&stream.bytes, 512),
            Err(Error::Incomplete { offset: 2048, .. })
        ));
    }

    #[test]
    fn gd_at_end_stream_cut_at_every_record_boundary_is_an_error() {
        let whole = StreamBuilder::new(4096)
            .grain(0, &[1u8; 65536])
            .grain(128, &[2u8; 512])
            .grain(1024, &[3u8; 4096])
            .gd_and_footer();
        assert!(decode_all(&whole.bytes, 4096).is_ok());
        for cut in (0..whole.bytes.len()).step_by(512) {
            assert!(
                decode_all(&whole.bytes[..cut], 4096).is_err(),
                "cut at {cut} accepted"
            );
        }
    }

    /// A qemu-layout stream: the grain directory in the header area (sector 2), one grain table
    /// after it (sectors 3 to 6), grains from sector 7 on, each table entry naming its record's
    /// sector; no footer, no EOS.
    fn qemu_layout(grains: &[(u64, u8)]) -> Vec<u8> {
        let raw = RawSparseHeader {
            gd_offset: 2,
            overhead: 7,
            ..stream_raw(4096)
        };
        let mut bytes = raw.to_bytes().to_vec();
        let mut desc = b"# Disk DescriptorFile\nversion=1\ncreateType=\"streamOptimized\"\n".to_vec();
        desc.resize(512, 0);
        bytes.extend_from_slice(&desc);
        let mut gd = [0u8; 512];
        gd[..4].copy_from_slice(&3u32.to_le_bytes());
        bytes.extend_from_slice(&gd);
        let table_at = bytes.len();
        bytes.extend_from_slice(&[0u8; 2048]);
        for &(lba, fill) in grains {
            let sector = bytes.len() as u32 / 512;
            let entry = table_at + (lba / 128) as usize * 4;
            bytes[entry..entry + 4].copy_from_slice(&sector.to_le_bytes());
            let z = deflate_grain(&[fill; 512]);
            bytes.extend_from_slice(&lba.to_le_bytes());
            bytes.extend_from_slice(&(z.len() as u32).to_le_bytes());
            bytes.extend_from_slice(&z);
            bytes.resize(bytes.len().next_multiple_of(512), 0);
        }
        bytes
    }

    #[test]
    fn qemu_layout_whole_stream_is_accepted_with_or_without_padding() {
        let mut whole = qemu_layout(&[(0, 1), (256, 2), (3968, 3)]);
        let events = decode_all(&whole, 700).unwrap();
        assert_eq!(grains(&events), vec![0, 256, 3968]);
        whole.extend_from_slice(&[0u8; 8192]);
        assert_eq!(grains(&decode_all(&whole, 700).unwrap()), vec![0, 256, 3968]);
    }

    #[test]
    fn qemu_layout_cut_at_a_grain_boundary_names_the_missing_grain() {
        let whole = qemu_layout(&[(0, 1), (256, 2), (3968, 3)]);
        let last = whole.len() - 512;
        let err = decode_all(&whole[..last], 512).unwrap_err();
        assert_eq!(
            err,
            Error::Incomplete {
                offset: last as u64,
                missing: "the grain tables name 3 grains but 2 arrived".into()
            }
        );
        // Zero padding where the cut grain was does not pass for an end either.
        let mut padded = whole[..last].to_vec();
        padded.extend_from_slice(&[0u8; 4096]);
        assert!(matches!(decode_all(&padded, 512), Err(Error::Incomplete { .. })));
        for cut in (0..whole.len()).step_by(512) {
            assert!(decode_all(&whole[..cut], 1000).is_err(), "cut at {cut} accepted");
        }
    }

    #[test]
    fn tables_after_the_first_grain_need_the_footer() {
        let raw = RawSparseHeader {
            gd_offset: 100,
            ..stream_raw(256)
        };
        let mut stream = StreamBuilder::new(256).grain(0, &[1u8; 512]);
        stream.bytes[..512].copy_from_slice(&raw.to_bytes());
        assert!(matches!(
            decode_all(&stream.bytes, 512),
            Err(Error::Incomplete { missing, .. }) if missing.starts_with("no footer")
        ));
        assert!(decode_all(&stream.gd_and_footer().bytes, 512).is_ok());
    }

    #[test]
    fn rejects_truncated_grain_with_offset() {
        let stream = StreamBuilder::new(256).grain(0, &[1u8; 65536]);
        let cut = &stream.bytes[..stream.bytes.len() - 100];
        let err = decode_all(cut, 4096).unwrap_err();
        assert_eq!(
            err,
            Error::Truncated {
                offset: 1024,
                context: "inside a grain or marker"
            }
        );
    }

    #[test]
    fn rejects_truncated_header() {
        let stream = StreamBuilder::new(256);
        assert!(matches!(
            decode_all(&stream.bytes[..300], 64),
            Err(Error::Truncated { offset: 0, .. })
        ));
    }

    #[test]
    fn rejects_grain_past_capacity() {
        let stream = StreamBuilder::new(256).grain(256, &[1u8; 512]);
        let err = decode_all(&stream.bytes, 512).unwrap_err();
        assert_eq!(
            err,
            Error::GrainPastCapacity {
                offset: 1024,
                lba: 256,
                capacity: 256
            }
        );
    }

    #[test]
    fn rejects_descending_grains() {
        let stream = StreamBuilder::new(1024)
            .grain(256, &[1u8; 512])
            .grain(0, &[1u8; 512]);
        let err = decode_all(&stream.bytes, 512).unwrap_err();
        assert!(matches!(
            err,
            Error::GrainOutOfOrder {
                lba: 0,
                expected_min: 384,
                ..
            }
        ));
    }

    #[test]
    fn rejects_duplicate_grain() {
        let stream = StreamBuilder::new(1024)
            .grain(128, &[1u8; 512])
            .grain(128, &[1u8; 512]);
        assert!(matches!(
            decode_all(&stream.bytes, 512),
            Err(Error::GrainOutOfOrder { lba: 128, .. })
        ));
    }

    #[test]
    fn rejects_misaligned_grain() {
        let stream = StreamBuilder::new(1024).grain(3, &[1u8; 512]);
        assert!(matches!(
            decode_all(&stream.bytes, 512),
            Err(Error::MisalignedGrain { lba: 3, .. })
        ));
    }

    #[test]
    fn rejects_huge_compressed_size() {
        let mut stream = StreamBuilder::new(1024).grain(0, &[1u8; 512]);
        stream.bytes[1024 + 8..1024 + 12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode_all(&stream.bytes, 512),
            Err(Error::GrainTooLarge { offset: 1024, .. })
        ));
    }

    #[test]
    fn rejects_unknown_marker() {
        let stream = StreamBuilder::new(1024).marker(1, 9);
        assert_eq!(
            decode_all(&stream.bytes, 512),
            Err(Error::UnknownMarker {
                offset: 1024,
                kind: 9
            })
        );
    }

    #[test]
    fn rejects_oversized_metadata_marker() {
        let stream = StreamBuilder::new(1024).marker(u64::MAX, MARKER_GD);
        assert!(matches!(
            decode_all(&stream.bytes, 512),
            Err(Error::BadMarkerSize { .. })
        ));
    }

    #[test]
    fn rejects_footer_with_other_capacity() {
        let mut s = StreamBuilder::new(1024)
            .grain(0, &[1u8; 512])
            .marker(1, MARKER_FOOTER);
        s.bytes.extend_from_slice(
            &RawSparseHeader {
                gd_offset: GD_AT_END,
                ..stream_raw(2048)
            }
            .to_bytes(),
        );
        assert!(matches!(
            decode_all(&s.bytes, 512),
            Err(Error::FooterMismatch {
                field: "capacity",
                ..
            })
        ));
    }

    #[test]
    fn rejects_monolithic_sparse_header() {
        let raw = RawSparseHeader {
            flags: 3,
            compress_algorithm: 0,
            ..stream_raw(128)
        };
        assert!(matches!(
            decode_all(&raw.to_bytes(), 512),
            Err(Error::NotStreamOptimized { flags: 3 })
        ));
    }

    #[test]
    fn rejects_bad_magic() {
        assert!(matches!(
            decode_all(&[0u8; 1024], 512),
            Err(Error::Header(header::Error::BadMagic { found: 0 }))
        ));
    }

    #[test]
    fn zero_padding_after_eos_is_accepted() {
        let mut stream = StreamBuilder::new(256).grain(0, &[1u8; 512]).gd_and_footer();
        stream.bytes.extend_from_slice(&[0u8; 4096]);
        assert_eq!(grains(&decode_all(&stream.bytes, 1000).unwrap()), vec![0]);
    }

    #[test]
    fn rejects_grain_after_stray_zero_sector() {
        let stream = StreamBuilder::new(1024)
            .grain(0, &[1u8; 512])
            .marker(0, MARKER_EOS)
            .grain(128, &[2u8; 512]);
        assert_eq!(
            decode_all(&stream.bytes, 512),
            Err(Error::DataAfterEnd { offset: 2048 })
        );
    }

    #[test]
    fn errors_are_sticky() {
        let mut d = StreamDecoder::new();
        d.feed(&[0u8; 512]);
        assert!(d.next_event().is_err());
        assert_eq!(d.next_event(), Err(Error::Finished));
    }
}
