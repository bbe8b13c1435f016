//! A forward-only tar walker over any `Read` (a file, a pipe, an HTTP body): yields each member in
//! archive order with its name, size and a reader for its bytes, and never seeks.
//!
//! Understands USTAR (name + prefix), pax extended headers (`path`, `size`; global headers are read and
//! ignored), GNU long names (`L`) and GNU base-256 sizes. Owns the safety rules for member names (no
//! absolute paths, no `..`, no backslashes, valid UTF-8) and the size limits below; what the members
//! mean is for the caller ([`crate::ovf`], [`crate::manifest`]).
//!
//! ```text
//! [header 512][body, padded to 512] [header][body]... [zero block][zero block]
//!  ^ 'x' pax / 'L' long-name headers apply to the header that follows them
//! ```

use std::io::{self, Read};

/// Tar block size.
pub const BLOCK: usize = 512;

/// Largest member we accept: 256 TiB. VMDK tops out at 62 TiB and qcow2 images we write at far less;
/// anything bigger is a corrupt or hostile size field, not a disk.
pub const MAX_ENTRY_SIZE: u64 = 1 << 48;

/// Longest member name (Linux `PATH_MAX`); bounds GNU long-name and pax `path` buffers.
pub const MAX_NAME_LEN: usize = 4096;

/// Largest pax or GNU metadata body we read into memory. Real ones hold a few short records.
pub const MAX_METADATA_SIZE: u64 = 1 << 20;

/// Entries of metadata (pax / long-name headers) allowed in a row before a real member; a longer chain
/// is not something a tar writer produces.
pub const MAX_METADATA_CHAIN: usize = 16;

/// Bytes read (and dropped) per call when skipping an unread body.
const SKIP_CHUNK: usize = 64 << 10;

/// What a tar member is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EntryKind {
    /// A regular file (`0` or NUL typeflag, or contiguous file `7`).
    File,
    /// A directory (`5`).
    Directory,
    /// A symbolic link (`2`); never followed.
    Symlink,
    /// A hard link (`1`); never followed.
    HardLink,
    /// Any other typeflag (devices, FIFOs, vendor extensions).
    Other(u8),
}

/// A tar walker failure. Offsets are bytes from the start of the archive.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A header's stored checksum does not match its bytes.
    #[error("tar header at offset {offset} has a bad checksum (stored {stored}, computed {computed})")]
    BadChecksum {
        /// Offset of the header block.
        offset: u64,
        /// Checksum field value.
        stored: u64,
        /// Checksum of the header bytes.
        computed: u64,
    },

    /// A numeric or text header field cannot be parsed.
    #[error("tar header at offset {offset}: field {field} is invalid: {reason}")]
    BadField {
        /// Offset of the header block.
        offset: u64,
        /// The field.
        field: &'static str,
        /// Why.
        reason: &'static str,
    },

    /// A pax extended header record is malformed.
    #[error("pax extended header at offset {offset} is malformed: {reason}")]
    BadPaxRecord {
        /// Offset of the pax header's body.
        offset: u64,
        /// Why.
        reason: &'static str,
    },

    /// A member is larger than [`MAX_ENTRY_SIZE`].
    #[error("tar member {name:?} at offset {offset} claims {size} bytes, above the {limit}-byte limit")]
    EntryTooLarge {
        /// Member name.
        name: String,
        /// Offset of its header.
        offset: u64,
        /// Claimed size.
        size: u64,
        /// The limit.
        limit: u64,
    },

    /// Pax/long-name metadata larger than [`MAX_METADATA_SIZE`], or a chain longer than
    /// [`MAX_METADATA_CHAIN`].
    #[error("tar metadata header ({kind}) at offset {offset} is too large or too long a chain ({size})")]
    MetadataTooLarge {
        /// Which metadata.
        kind: &'static str,
        /// Offset of its header.
        offset: u64,
        /// Size or chain length found.
        size: u64,
    },

    /// Reading from the underlying stream failed.
    #[error("failed to read the tar stream at offset {offset}")]
    Reading {
        /// Offset of the failed read.
        offset: u64,
        /// The I/O error.
        #[source]
        source: io::Error,
    },

    /// The archive ended in the middle of something.
    #[error("tar archive truncated at offset {offset} while reading {what}")]
    Truncated {
        /// Where the data stopped.
        offset: u64,
        /// What was being read.
        what: String,
    },

    /// A member name that could escape the extraction directory or is otherwise unusable.
    #[error("tar member at offset {offset} has an unsafe name {name:?}: {reason}")]
    UnsafeName {
        /// Offset of its header.
        offset: u64,
        /// The name as found (lossy).
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Walks a tar archive front to back. Use as
/// `while let Some(mut entry) = walker.next_entry()? { ... }`; an entry's unread bytes are skipped
/// (read and discarded) when the next one is requested.
///
/// After an error the position in the stream is unknown; drop the walker (a stream cannot be
/// resynchronised without seeking).
#[derive(Debug)]
pub struct TarWalker<R> {
    inner: R,
    offset: u64,
    body_left: u64,
    pad_left: u64,
    current_name: String,
    finished: bool,
}

/// One archive member; reads its body through [`Read`].
#[derive(Debug)]
pub struct Entry<'a, R> {
    walker: &'a mut TarWalker<R>,
    name: String,
    size: u64,
    kind: EntryKind,
    header_offset: u64,
    data_offset: u64,
}

/// Overrides gathered from pax / GNU headers for the next real member.
#[derive(Default)]
struct Pending {
    path: Option<String>,
    size: Option<u64>,
    chain: usize,
}

impl<R: Read> TarWalker<R> {
    /// Starts walking `inner` at its current position (offset 0 of the archive).
    pub fn new(inner: R) -> Self {
        TarWalker {
            inner,
            offset: 0,
            body_left: 0,
            pad_left: 0,
            current_name: String::new(),
            finished: false,
        }
    }

    /// Bytes of the archive consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Gives back the underlying reader (positioned after whatever was consumed).
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// The next member, or `None` after the end-of-archive marker.
    ///
    /// # Errors
    /// Truncation (including an archive with no end marker), bad checksums or fields, unsafe names,
    /// absurd sizes, and I/O errors; each names the archive offset.
    pub fn next_entry(&mut self) -> Result<Option<Entry<'_, R>>> {
        if self.finished {
            return Ok(None);
        }
        self.skip_rest()?;
        let mut pending = Pending::default();
        loop {
            let header_offset = self.offset;
            let mut block = [0u8; BLOCK];
            if !self.read_block(&mut block, "a header block")? {
                return Err(Error::Truncated {
                    offset: header_offset,
                    what: "the next header (no end-of-archive marker)".into(),
                });
            }
            if block.iter().all(|&b| b == 0) {
                // End of archive: a second zero block should follow; tolerate its absence.
                let mut second = [0u8; BLOCK];
                let _ = self.read_block(&mut second, "the end-of-archive marker")?;
                self.finished = true;
                return Ok(None);
            }
            verify_checksum(&block, header_offset)?;
            let typeflag = block[156];
            let header_size = parse_number(&block[124..136]).ok_or(Error::BadField {
                offset: header_offset,
                field: "size",
                reason: "not a number",
            })?;
            match typeflag {
                b'x' | b'g' | b'L' | b'K' => {
                    pending.chain += 1;
                    if pending.chain > MAX_METADATA_CHAIN {
                        return Err(Error::MetadataTooLarge {
                            kind: "chain of metadata headers",
                            offset: header_offset,
                            size: pending.chain as u64,
                        });
                    }
                    let kind = match typeflag {
                        b'x' => "pax header",
                        b'g' => "pax global header",
                        b'L' => "GNU long name",
                        _ => "GNU long link name",
                    };
                    let limit = if typeflag == b'L' {
                        MAX_NAME_LEN as u64 + 1
                    } else {
                        MAX_METADATA_SIZE
                    };
                    if header_size > limit {
                        return Err(Error::MetadataTooLarge {
                            kind,
                            offset: header_offset,
                            size: header_size,
                        });
                    }
                    let body_offset = self.offset;
                    let body = self.read_metadata_body(header_size, kind)?;
                    match typeflag {
                        b'x' => apply_pax(&body, body_offset, &mut pending)?,
                        b'L' => {
                            let end = body.iter().position(|&b| b == 0).unwrap_or(body.len());
                            pending.path = Some(to_utf8(&body[..end], header_offset)?);
                        }
                        // Global pax headers and link names do not affect the members we yield.
                        _ => {}
                    }
                }
                _ => {
                    return self
                        .member(&block, header_offset, typeflag, header_size, pending)
                        .map(Some);
                }
            }
        }
    }

    fn member(
        &mut self,
        block: &[u8; BLOCK],
        header_offset: u64,
        typeflag: u8,
        header_size: u64,
        pending: Pending,
    ) -> Result<Entry<'_, R>> {
        let raw_name = match pending.path {
            Some(path) => path,
            None => header_name(block, header_offset)?,
        };
        let name = sanitize_name(&raw_name, header_offset)?;
        let kind = match typeflag {
            b'0' | 0 | b'7' => EntryKind::File,
            b'5' => EntryKind::Directory,
            b'2' => EntryKind::Symlink,
            b'1' => EntryKind::HardLink,
            other => EntryKind::Other(other),
        };
        let size = pending.size.unwrap_or(header_size);
        if size > MAX_ENTRY_SIZE {
            return Err(Error::EntryTooLarge {
                name,
                offset: header_offset,
                size,
                limit: MAX_ENTRY_SIZE,
            });
        }
        // Links and directories carry no body whatever the size field says (POSIX).
        let body = match kind {
            EntryKind::HardLink | EntryKind::Symlink | EntryKind::Directory => 0,
            EntryKind::File | EntryKind::Other(_) => size,
        };
        self.body_left = body;
        self.pad_left = padding(body);
        self.current_name = name.clone();
        let data_offset = self.offset;
        Ok(Entry {
            walker: self,
            name,
            size: body,
            kind,
            header_offset,
            data_offset,
        })
    }

    /// Reads and discards what is left of the current member and its padding.
    fn skip_rest(&mut self) -> Result<()> {
        let mut scratch = vec![0u8; SKIP_CHUNK];
        while self.body_left + self.pad_left > 0 {
            let want = (self.body_left + self.pad_left).min(scratch.len() as u64) as usize;
            let n = self.read_some(&mut scratch[..want])?;
            if n == 0 {
                return Err(Error::Truncated {
                    offset: self.offset,
                    what: format!("the body of member {:?}", self.current_name),
                });
            }
            let from_body = (n as u64).min(self.body_left);
            self.body_left -= from_body;
            self.pad_left -= n as u64 - from_body;
        }
        Ok(())
    }

    fn read_metadata_body(&mut self, size: u64, kind: &'static str) -> Result<Vec<u8>> {
        // Grown as bytes arrive, so a header claiming more than the input holds allocates only what
        // is really there (`size` is also capped by the caller).
        let mut body = Vec::new();
        let start = self.offset;
        let read = (&mut self.inner)
            .take(size)
            .read_to_end(&mut body)
            .map_err(|source| Error::Reading {
                offset: start,
                source,
            })?;
        self.offset += read as u64;
        if (read as u64) < size {
            return Err(Error::Truncated {
                offset: self.offset,
                what: format!("a {kind}"),
            });
        }
        let mut pad = [0u8; BLOCK];
        let mut pad_left = padding(size) as usize;
        while pad_left > 0 {
            let n = self.read_some(&mut pad[..pad_left])?;
            if n == 0 {
                return Err(Error::Truncated {
                    offset: self.offset,
                    what: format!("the padding of a {kind}"),
                });
            }
            pad_left -= n;
        }
        Ok(body)
    }

    /// Reads a whole block; `Ok(false)` on a clean EOF before its first byte.
    fn read_block(&mut self, block: &mut [u8; BLOCK], what: &str) -> Result<bool> {
        let mut filled = 0;
        while filled < BLOCK {
            let n = self.read_some(&mut block[filled..])?;
            if n == 0 {
                if filled == 0 {
                    return Ok(false);
                }
                return Err(Error::Truncated {
                    offset: self.offset,
                    what: what.into(),
                });
            }
            filled += n;
        }
        Ok(true)
    }

    fn read_some(&mut self, buf: &mut [u8]) -> Result<usize> {
        loop {
            match self.inner.read(buf) {
                Ok(n) => {
                    self.offset += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(Error::Reading {
                        offset: self.offset,
                        source,
                    });
                }
            }
        }
    }
}

impl<R> Entry<'_, R> {
    /// The member name, relative, with any leading `./` and trailing `/` removed.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Body size in bytes (0 for directories and links).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// What the member is.
    pub fn kind(&self) -> EntryKind {
        self.kind
    }

    /// Archive offset of the member's (last) header block.
    pub fn header_offset(&self) -> u64 {
        self.header_offset
    }

    /// Archive offset of the member's first body byte.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// Body bytes not yet read.
    pub fn remaining(&self) -> u64 {
        self.walker.body_left
    }
}

impl<R: Read> Read for Entry<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.walker.body_left;
        if left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = left.min(buf.len() as u64) as usize;
        let n = loop {
            match self.walker.inner.read(&mut buf[..want]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "tar member {:?} truncated at archive offset {}: {left} of {} bytes missing",
                    self.name, self.walker.offset, self.size
                ),
            ));
        }
        self.walker.offset += n as u64;
        self.walker.body_left -= n as u64;
        Ok(n)
    }
}

fn padding(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

/// Checksum: sum of the header bytes with the checksum field read as spaces. Some old writers summed
/// signed bytes; accept either.
fn verify_checksum(block: &[u8; BLOCK], offset: u64) -> Result<()> {
    let stored = parse_number(&block[148..156]).ok_or(Error::BadField {
        offset,
        field: "chksum",
        reason: "not a number",
    })?;
    let (mut unsigned, mut signed) = (0u64, 0i64);
    for (i, &b) in block.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    if stored != unsigned && i64::try_from(stored).ok() != Some(signed) {
        return Err(Error::BadChecksum {
            offset,
            stored,
            computed: unsigned,
        });
    }
    Ok(())
}

/// Octal ASCII (NUL/space padded), or GNU base-256 when the top bit of the first byte is set.
fn parse_number(field: &[u8]) -> Option<u64> {
    if let Some((&first, rest)) = field.split_first()
        && first & 0x80 != 0
    {
        if first & 0x40 != 0 {
            return None; // negative
        }
        let mut v = u64::from(first & 0x3f);
        for &b in rest {
            v = v.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(v);
    }
    let text: Vec<u8> = field.iter().copied().take_while(|&b| b != 0).collect();
    let text = std::str::from_utf8(&text).ok()?.trim();
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(text, 8).ok()
}

fn header_name(block: &[u8; BLOCK], offset: u64) -> Result<String> {
    let name = cstr(&block[0..100]);
    // POSIX ustar ("ustar\0") has a 155-byte prefix; old GNU ("ustar  ") uses that area for other data.
    let prefix = if &block[257..263] == b"ustar\0" {
        cstr(&block[345..500])
    } else {
        &[]
    };
    let mut full = Vec::with_capacity(prefix.len() + 1 + name.len());
    if !prefix.is_empty() {
        full.extend_from_slice(prefix);
        full.push(b'/');
    }
    full.extend_from_slice(name);
    to_utf8(&full, offset)
}

fn cstr(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    &field[..end]
}

fn to_utf8(bytes: &[u8], offset: u64) -> Result<String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| Error::UnsafeName {
        offset,
        name: String::from_utf8_lossy(bytes).into_owned(),
        reason: "not valid UTF-8",
    })
}

/// Refuses names that could escape a directory; normalises `./x` and `dir/`.
fn sanitize_name(raw: &str, offset: u64) -> Result<String> {
    let unsafe_name = |reason| Error::UnsafeName {
        offset,
        name: raw.into(),
        reason,
    };
    if raw.len() > MAX_NAME_LEN {
        return Err(unsafe_name("longer than 4096 bytes"));
    }
    if raw.contains('\0') {
        return Err(unsafe_name("contains a NUL byte"));
    }
    if raw.contains('\\') {
        return Err(unsafe_name("contains a backslash"));
    }
    if raw.starts_with('/') {
        return Err(unsafe_name("absolute path"));
    }
    let mut parts = Vec::new();
    for part in raw.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(unsafe_name("contains a `..` component")),
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Err(unsafe_name("empty name"));
    }
    Ok(parts.join("/"))
}

/// Applies pax records (`"<len> <key>=<value>\n"`, `len` counting the whole record) to `pending`.
fn apply_pax(body: &[u8], offset: u64, pending: &mut Pending) -> Result<()> {
    let bad = |reason| Error::BadPaxRecord { offset, reason };
    let mut rest = body;
    while !rest.is_empty() {
        if rest.iter().all(|&b| b == 0) {
            break; // some writers pad with NULs
        }
        let space = rest
            .iter()
            .position(|&b| b == b' ')
            .ok_or(bad("record without a length"))?;
        let len: usize = std::str::from_utf8(&rest[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(bad("record length is not a number"))?;
        if len <= space + 1 || len > rest.len() {
            return Err(bad("record length out of range"));
        }
        let record = &rest[space + 1..len];
        let record = record
            .strip_suffix(b"\n")
            .ok_or(bad("record does not end in a newline"))?;
        let eq = record
            .iter()
            .position(|&b| b == b'=')
            .ok_or(bad("record without `=`"))?;
        let (key, value) = (&record[..eq], &record[eq + 1..]);
        match key {
            b"path" => pending.path = Some(to_utf8(value, offset)?),
            b"size" => {
                let size = std::str::from_utf8(value)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or(bad("size is not a decimal number"))?;
                pending.size = Some(size);
            }
            _ => {}
        }
        rest = &rest[len..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalised_or_refused() {
        assert_eq!(sanitize_name("./vm.ovf", 0).unwrap(), "vm.ovf");
        assert_eq!(sanitize_name("dir//x/", 0).unwrap(), "dir/x");
        for bad in ["../x", "a/../../b", "/etc/passwd", "", "./", "a\\..\\b", "x\0y"] {
            assert!(sanitize_name(bad, 7).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn numbers_octal_and_base256() {
        assert_eq!(parse_number(b"00000001750\0"), Some(1000));
        assert_eq!(parse_number(b"        \0"), Some(0));
        let mut big = [0u8; 12];
        big[0] = 0x80;
        big[7] = 0x02; // 2 << 32
        assert_eq!(parse_number(&big), Some(2 << 32));
        assert_eq!(parse_number(b"0000008\0"), None);
        assert_eq!(parse_number(&[0xff; 12]), None);
    }

    #[test]
    fn pax_records() {
        let mut p = Pending::default();
        apply_pax(b"20 path=a/long.vmdk\n15 size=123456\n", 0, &mut p).unwrap();
        assert_eq!(p.path.as_deref(), Some("a/long.vmdk"));
        assert_eq!(p.size, Some(123_456));
        for bad in [&b"999 path=x\n"[..], b"x path=y\n", b"9 pathxx\n", b"3 \n"] {
            assert!(apply_pax(bad, 0, &mut Pending::default()).is_err(), "{bad:?}");
        }
    }
}
