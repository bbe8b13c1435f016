//! Inputs: format detection from the first bytes, and the entry points that pick the right
//! producer for a file (random access allowed) or a pipe (sequential only).

use std::{
    fs::File,
    io::{self, Cursor, Read},
    path::Path,
    sync::{Arc, atomic::AtomicU64},
};

use vmdk::{VmdkReader, header};

use crate::{
    Error,
    pipeline::{self, Options, RandomSource, Report},
    writer::Output,
};

/// Bytes inspected to detect the format: a tar header's `ustar` magic ends at byte 262, a text
/// descriptor is recognisable in its first lines.
pub const SNIFF_LEN: usize = 4096;

/// What the first bytes say the input is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputFormat {
    /// A streamOptimized VMDK (compressed grains with markers).
    VmdkStream,
    /// A hosted sparse VMDK (monolithicSparse or a sparse extent).
    VmdkSparse,
    /// A VMDK text descriptor with extents beside it.
    VmdkDescriptor,
    /// A qcow2 image.
    Qcow2,
    /// A tar archive (OVA).
    Ova,
    /// Anything else: raw disk bytes.
    Raw,
}

impl InputFormat {
    /// Name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            InputFormat::VmdkStream => "vmdk-streamOptimized",
            InputFormat::VmdkSparse | InputFormat::VmdkDescriptor => "vmdk",
            InputFormat::Qcow2 => "qcow2",
            InputFormat::Ova => "ova",
            InputFormat::Raw => "raw",
        }
    }
}

/// A format family as a user, a file name or an OVF declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Any VMDK layout.
    Vmdk,
    /// qcow2.
    Qcow2,
    /// Raw bytes.
    Raw,
    /// A tar archive (OVA).
    Ova,
}

impl Family {
    /// What a file name declares: `.vmdk`, `.qcow2`, `.ova` (other names declare nothing; an
    /// `.img` is as often qcow2 as raw).
    pub fn of_name(name: &str) -> Option<Self> {
        let lower = name.to_ascii_lowercase();
        let lower = lower.split(['?', '#']).next().unwrap_or(&lower);
        [
            (".vmdk", Family::Vmdk),
            (".qcow2", Family::Qcow2),
            (".ova", Family::Ova),
        ]
        .into_iter()
        .find_map(|(suffix, family)| lower.ends_with(suffix).then_some(family))
    }

    fn name(self) -> &'static str {
        match self {
            Family::Vmdk => "VMDK",
            Family::Qcow2 => "qcow2",
            Family::Raw => "raw",
            Family::Ova => "OVA",
        }
    }

    /// Refuses `found` when it is not of this family: a VMDK that reads as raw is a damaged
    /// header, not raw data.
    pub fn check(self, found: InputFormat) -> Result<(), Error> {
        let matches = match found {
            InputFormat::VmdkStream | InputFormat::VmdkSparse | InputFormat::VmdkDescriptor => {
                self == Family::Vmdk
            }
            InputFormat::Qcow2 => self == Family::Qcow2,
            InputFormat::Ova => self == Family::Ova,
            InputFormat::Raw => self == Family::Raw,
        };
        if matches {
            Ok(())
        } else {
            Err(Error::FormatMismatch {
                declared: self.name(),
                found: found.name(),
            })
        }
    }
}

/// Detects the format from the first bytes (up to [`SNIFF_LEN`]).
pub fn detect(head: &[u8]) -> InputFormat {
    if head.len() >= 12 && head[0..4] == header::MAGIC.to_le_bytes() {
        let flags = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
        let stream = header::FLAG_COMPRESSED | header::FLAG_MARKERS;
        return if flags & stream == stream {
            InputFormat::VmdkStream
        } else {
            InputFormat::VmdkSparse
        };
    }
    if head.starts_with(b"QFI\xfb") {
        return InputFormat::Qcow2;
    }
    if head.len() >= 262 && &head[257..262] == b"ustar" {
        return InputFormat::Ova;
    }
    let text_end = head.iter().position(|&b| b == 0).unwrap_or(head.len());
    if let Ok(text) = std::str::from_utf8(&head[..text_end])
        && (text.starts_with("# Disk DescriptorFile")
            || text.lines().any(|l| l.trim().starts_with("createType")))
    {
        return InputFormat::VmdkDescriptor;
    }
    InputFormat::Raw
}

fn read_head(input: &mut impl Read) -> Result<Vec<u8>, Error> {
    let mut head = vec![0u8; SNIFF_LEN];
    let mut filled = 0;
    while filled < head.len() {
        match input.read(&mut head[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(Error::Read {
                    offset: filled as u64,
                    source,
                });
            }
        }
    }
    head.truncate(filled);
    Ok(head)
}

fn open(path: &Path) -> Result<File, Error> {
    File::open(path).map_err(|source| Error::Open {
        path: path.to_owned(),
        source,
    })
}

/// Detects the format of a file.
pub fn detect_path(path: &Path) -> Result<InputFormat, Error> {
    Ok(detect(&read_head(&mut open(path)?)?))
}

/// Opens a VMDK file, resolving extents next to it (names were checked not to escape) with
/// [`open_regular`]: a descriptor is untrusted text, and what it names must be a plain file.
pub fn open_vmdk(path: &Path) -> Result<VmdkReader<File>, Error> {
    let dir = path.parent().unwrap_or(Path::new(".")).to_owned();
    let name = path.display().to_string();
    let mut opener = |extent: &str| open_regular(&dir.join(extent));
    VmdkReader::open(open(path)?, &name, &mut opener).map_err(Error::Vmdk)
}

/// Opens `path` for reading only if it is a regular file, without following a symbolic link at
/// its last component and without blocking (a FIFO would otherwise wait for a writer forever).
/// What is refused comes back as an error saying what the path is.
pub fn open_regular(path: &Path) -> io::Result<File> {
    use rustix::fs::{Mode, OFlags};
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = rustix::fs::open(path, flags, Mode::empty()).map_err(|errno| {
        if errno == rustix::io::Errno::LOOP {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "is a symbolic link; links are not followed here",
            )
        } else {
            io::Error::from(errno)
        }
    })?;
    let file = File::from(fd);
    let kind = file.metadata()?.file_type();
    if !kind.is_file() {
        use std::os::unix::fs::FileTypeExt;
        let what = if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_socket() {
            "a socket"
        } else if kind.is_char_device() || kind.is_block_device() {
            "a device"
        } else if kind.is_dir() {
            "a directory"
        } else {
            "an unusual file"
        };
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("is {what}, not a regular file"),
        ));
    }
    Ok(file)
}

struct VmdkSource(VmdkReader<File>);

impl RandomSource for VmdkSource {
    fn size(&self) -> u64 {
        self.0.capacity()
    }
    fn segment(&mut self, offset: u64) -> Result<(bool, u64), Error> {
        let s = self.0.segment(offset).map_err(Error::Vmdk)?;
        // A thin flat extent (monolithicFlat, vmfs) is a sparse file: skip its holes.
        if s.allocated
            && let Some((file, file_offset, left)) = self.0.flat_file_at(offset)
        {
            return Ok(data_or_hole(file, file_offset, left.min(s.len)));
        }
        Ok((s.allocated, s.len))
    }
    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), Error> {
        let mut done = 0;
        while done < buf.len() {
            let n = self
                .0
                .read_at(offset + done as u64, &mut buf[done..])
                .map_err(Error::Vmdk)?;
            if n == 0 {
                buf[done..].fill(0);
                break;
            }
            done += n;
        }
        Ok(())
    }
}

struct Qcow2Source<R>(qcow2::Qcow2Reader<R>);

impl<R: Read + io::Seek> RandomSource for Qcow2Source<R> {
    fn size(&self) -> u64 {
        self.0.virtual_size()
    }
    fn segment(&mut self, offset: u64) -> Result<(bool, u64), Error> {
        let e = self.0.extent_at(offset).map_err(Error::Qcow2)?;
        Ok((e.kind == qcow2::ExtentKind::Data, e.end().saturating_sub(offset)))
    }
    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), Error> {
        self.0.read_at(offset, buf).map_err(Error::Qcow2)
    }
}

/// `(allocated, len)` of the run at `offset` in `file`, at most `limit` bytes, from the file
/// system's `SEEK_DATA`/`SEEK_HOLE` (a file system that cannot tell reports all data).
fn data_or_hole(file: &File, offset: u64, limit: u64) -> (bool, u64) {
    use rustix::fs::{SeekFrom, seek};
    let data = match seek(file, SeekFrom::Data(offset)) {
        Ok(d) => d,
        // ENXIO: no data after offset.
        Err(rustix::io::Errno::NXIO) => return (false, limit),
        Err(_) => return (true, limit),
    };
    if data > offset {
        return (false, (data - offset).min(limit));
    }
    let hole = seek(file, SeekFrom::Hole(offset)).unwrap_or(offset.saturating_add(limit));
    (true, hole.saturating_sub(offset).clamp(1, limit))
}

/// A raw file; holes are found with `SEEK_DATA`/`SEEK_HOLE` so sparse inputs are not read.
struct RawSource {
    file: File,
    size: u64,
}

impl RandomSource for RawSource {
    fn size(&self) -> u64 {
        self.size
    }
    fn segment(&mut self, offset: u64) -> Result<(bool, u64), Error> {
        if offset >= self.size {
            return Ok((false, 0));
        }
        Ok(data_or_hole(&self.file, offset, self.size - offset))
    }
    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), Error> {
        use std::os::unix::fs::FileExt;
        self.file
            .read_exact_at(buf, offset)
            .map_err(|source| Error::Read { offset, source })
    }
}

/// Converts the disk image at `path` (VMDK of any hosted subformat, qcow2 or raw).
pub fn convert_path(path: &Path, output: Output, opts: &Options) -> Result<Report, Error> {
    let format = detect_path(path)?;
    if let Some(declared) = opts.declared_format {
        declared.check(format)?;
    }
    let bytes_read = Arc::new(AtomicU64::new(0));
    match format {
        InputFormat::VmdkStream => pipeline::convert_stream_optimized(open(path)?, output, opts),
        InputFormat::VmdkSparse | InputFormat::VmdkDescriptor => {
            let mut source = VmdkSource(open_vmdk(path)?);
            pipeline::convert_random(&mut source, format.name(), output, opts, bytes_read)
        }
        InputFormat::Qcow2 => {
            let mut source = Qcow2Source(qcow2::Qcow2Reader::new(open(path)?).map_err(Error::Qcow2)?);
            pipeline::convert_random(&mut source, format.name(), output, opts, bytes_read)
        }
        InputFormat::Raw => {
            let file = open(path)?;
            let size = file
                .metadata()
                .map_err(|source| Error::Read { offset: 0, source })?
                .len();
            let mut source = RawSource { file, size };
            pipeline::convert_random(&mut source, format.name(), output, opts, bytes_read)
        }
        InputFormat::Ova => Err(Error::IsOva),
    }
}

/// One tar member of an OVA file, as a file of its own (reads with `pread`, so the tar walk's
/// handle on the same file keeps its position).
struct FileRange {
    file: File,
    start: u64,
    len: u64,
    pos: u64,
}

impl Read for FileRange {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let left = self.len.saturating_sub(self.pos);
        let n = (buf.len() as u64).min(left) as usize;
        if n == 0 {
            return Ok(0);
        }
        let read = self.file.read_at(&mut buf[..n], self.start + self.pos)?;
        self.pos += read as u64;
        Ok(read)
    }
}

impl io::Seek for FileRange {
    fn seek(&mut self, pos: io::SeekFrom) -> io::Result<u64> {
        let target = match pos {
            io::SeekFrom::Start(p) => Some(p),
            io::SeekFrom::End(d) => self.len.checked_add_signed(d),
            io::SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = target.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before start"))?;
        Ok(self.pos)
    }
}

/// A hosted sparse VMDK inside an OVA file (no flat extents, so no hole probing).
struct SparseRangeSource(VmdkReader<FileRange>);

impl RandomSource for SparseRangeSource {
    fn size(&self) -> u64 {
        self.0.capacity()
    }
    fn segment(&mut self, offset: u64) -> Result<(bool, u64), Error> {
        let s = self.0.segment(offset).map_err(Error::Vmdk)?;
        Ok((s.allocated, s.len))
    }
    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), Error> {
        let mut done = 0;
        while done < buf.len() {
            let n = self
                .0
                .read_at(offset + done as u64, &mut buf[done..])
                .map_err(Error::Vmdk)?;
            if n == 0 {
                buf[done..].fill(0);
                break;
            }
            done += n;
        }
        Ok(())
    }
}

/// Converts the disk image stored at `[start, start + len)` of `file` (an OVA member) with random
/// access: the fallback for a member whose layout cannot be read in one pass.
pub(crate) fn convert_file_range(
    file: &File,
    (start, len): (u64, u64),
    output: Output,
    opts: &Options,
) -> Result<Report, Error> {
    let reopen = || {
        file.try_clone()
            .map(|file| FileRange {
                file,
                start,
                len,
                pos: 0,
            })
            .map_err(|source| Error::Read {
                offset: start,
                source,
            })
    };
    let format = detect(&read_head(&mut reopen()?)?);
    let bytes_read = Arc::new(AtomicU64::new(0));
    match format {
        InputFormat::Qcow2 => {
            let mut source = Qcow2Source(qcow2::Qcow2Reader::new(reopen()?).map_err(Error::Qcow2)?);
            pipeline::convert_random(&mut source, format.name(), output, opts, bytes_read)
        }
        InputFormat::VmdkSparse => {
            let reader = VmdkReader::open_sparse(reopen()?, "OVA member").map_err(Error::Vmdk)?;
            pipeline::convert_random(
                &mut SparseRangeSource(reader),
                format.name(),
                output,
                opts,
                bytes_read,
            )
        }
        other => Err(Error::NeedsSeekable { format: other.name() }),
    }
}

struct SparseForwardSource<R>(vmdk::SparseForward<R>);

impl<R: Read> pipeline::ForwardDecoder for SparseForwardSource<R> {
    fn virtual_size(&self) -> u64 {
        self.0.capacity()
    }
    fn next_run(&mut self, out: &mut Vec<u8>) -> Result<Option<u64>, Error> {
        Ok(self.0.next_grain(out)?)
    }
}

struct Qcow2ForwardSource<R>(qcow2::Qcow2Forward<R>);

impl<R: Read> pipeline::ForwardDecoder for Qcow2ForwardSource<R> {
    fn virtual_size(&self) -> u64 {
        self.0.virtual_size()
    }
    fn next_run(&mut self, out: &mut Vec<u8>) -> Result<Option<u64>, Error> {
        Ok(self.0.next_cluster(out)?)
    }
}

/// Converts a disk image read sequentially (stdin, an HTTP body, a tar entry): a streamOptimized
/// VMDK, a hosted sparse VMDK (monolithicSparse), qcow2 or raw bytes. The sparse VMDK and qcow2
/// are decoded forward-only ([`vmdk::SparseForward`], [`qcow2::Qcow2Forward`]); a layout that
/// needs random access fails with [`Error::NotOnePass`]. A descriptor with extents beside it is
/// refused with [`Error::NeedsSeekable`].
pub fn convert_reader(mut input: impl Read, output: Output, opts: &Options) -> Result<Report, Error> {
    let head = read_head(&mut input)?;
    let format = detect(&head);
    if let Some(declared) = opts.declared_format {
        declared.check(format)?;
    }
    let chained = Cursor::new(head).chain(input);
    match format {
        InputFormat::VmdkStream => pipeline::convert_stream_optimized(chained, output, opts),
        InputFormat::Raw => pipeline::convert_raw_stream(chained, output, opts),
        InputFormat::VmdkSparse => {
            let count = Arc::new(AtomicU64::new(0));
            let counted = pipeline::Counting {
                inner: chained,
                count: count.clone(),
            };
            let decoder = vmdk::SparseForward::new(counted, vmdk::forward::DEFAULT_WINDOW)?;
            let mut source = SparseForwardSource(decoder);
            pipeline::convert_forward(&mut source, format.name(), output, opts, count)
        }
        InputFormat::Qcow2 => {
            let count = Arc::new(AtomicU64::new(0));
            let counted = pipeline::Counting {
                inner: chained,
                count: count.clone(),
            };
            let decoder = qcow2::Qcow2Forward::new(counted, qcow2::forward::DEFAULT_WINDOW)?;
            let mut source = Qcow2ForwardSource(decoder);
            pipeline::convert_forward(&mut source, format.name(), output, opts, count)
        }
        InputFormat::Ova => Err(Error::IsOva),
        other => Err(Error::NeedsSeekable { format: other.name() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_qcow2() {
        assert_eq!(detect(b"QFI\xfb\0\0\0\x03"), InputFormat::Qcow2);
    }

    #[test]
    fn detects_descriptor() {
        assert_eq!(
            detect(b"# Disk DescriptorFile\nversion=1\n"),
            InputFormat::VmdkDescriptor
        );
    }

    #[test]
    fn detects_tar() {
        let mut h = vec![0u8; 512];
        h[257..262].copy_from_slice(b"ustar");
        assert_eq!(detect(&h), InputFormat::Ova);
    }

    #[test]
    fn zeros_are_raw() {
        assert_eq!(detect(&[0u8; 512]), InputFormat::Raw);
    }
}
