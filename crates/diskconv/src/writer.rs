//! Where decoded blocks go: a sparse RAW file, a RAW byte stream (stdout) or a qcow2 file.
//!
//! A [`BlockWriter`] receives the logical disk content as blocks at strictly ascending, non-overlapping
//! offsets; ranges never given read as zeros. Each writer decides what to do with zeros: the sparse
//! file leaves holes for zero runs of at least [`HOLE_GRANULARITY`], the stream writes them, qcow2
//! leaves clusters unallocated.

use std::{
    fs::File,
    io::{self, Seek, Write},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
};

/// Zero runs of at least this many bytes (aligned) become holes in a sparse RAW file: the file
/// system block size, below which a hole saves nothing.
pub const HOLE_GRANULARITY: usize = 4096;

/// A static block of zeros to write or hash gaps from.
pub(crate) static ZEROS: [u8; 1 << 20] = [0; 1 << 20];

/// Why a block writer failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Creating the output failed.
    #[error("cannot create output {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The output could not be given the disk's size (a file system's size limit: `EFBIG`).
    #[error("cannot make output {path} {size} bytes long")]
    Size {
        path: PathBuf,
        size: u64,
        #[source]
        source: io::Error,
    },
    /// A write failed.
    #[error("failed to write output at byte offset {offset}")]
    Write {
        offset: u64,
        #[source]
        source: io::Error,
    },
    /// Setting the final size or syncing failed.
    #[error("failed to finish output ({step})")]
    Finish {
        step: &'static str,
        #[source]
        source: io::Error,
    },
    /// The qcow2 writer failed.
    #[error("qcow2 output failed")]
    Qcow2(#[source] qcow2::Error),
    /// qcow2 needs the virtual size before the first byte; a raw stream of unknown length has none.
    #[error("qcow2 output needs a known virtual size; the input is a raw stream of unknown length")]
    UnknownSize,
}

/// Receives the logical content of one disk.
pub trait BlockWriter: Send {
    /// `data` is the disk content at `offset`; offsets ascend strictly and never overlap.
    fn write_block(&mut self, offset: u64, data: &[u8]) -> Result<(), Error>;
    /// Ends the disk at `virtual_size` bytes (and syncs it to stable storage when `sync`);
    /// returns the bytes physically written.
    fn finish(self: Box<Self>, virtual_size: u64, sync: bool) -> Result<u64, Error>;
}

/// The image file formats vm-import writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ImageFormat {
    /// Sparse RAW file.
    Raw,
    /// qcow2 file.
    Qcow2,
}

impl ImageFormat {
    /// The extension of image files in this format: `img` or `qcow2`.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Raw => "img",
            Self::Qcow2 => "qcow2",
        }
    }

    /// The [`Output`] that writes `path` in this format.
    pub fn output(self, path: impl Into<PathBuf>) -> Output {
        match self {
            Self::Raw => Output::RawFile(path.into()),
            Self::Qcow2 => Output::Qcow2File(path.into()),
        }
    }
}

/// What to write and where; opened once the virtual size is known.
#[derive(Debug)]
pub enum Output {
    /// A sparse RAW file (created or truncated).
    RawFile(PathBuf),
    /// A qcow2 file (created or truncated).
    Qcow2File(PathBuf),
    /// RAW bytes, zeros included, to a writer (stdout).
    RawStream(StreamWriter),
}

/// A boxed writer for [`Output::RawStream`].
pub struct StreamWriter(pub Box<dyn Write + Send>);

impl std::fmt::Debug for StreamWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StreamWriter")
    }
}

impl Output {
    /// Opens the writer; `virtual_size` is `None` for a raw input stream of unknown length.
    pub fn open(self, virtual_size: Option<u64>) -> Result<Box<dyn BlockWriter>, Error> {
        Ok(match self {
            Output::RawFile(path) => {
                let sink = SparseFileWriter::create(&path)?;
                // Sized first, so that a disk larger than the file system allows fails before
                // any work rather than at the end.
                if let Some(size) = virtual_size {
                    sink.file
                        .set_len(size)
                        .map_err(|source| Error::Size { path, size, source })?;
                }
                Box::new(sink)
            }
            Output::Qcow2File(path) => {
                let size = virtual_size.ok_or(Error::UnknownSize)?;
                let file = create(&path)?;
                Box::new(Qcow2Writer {
                    writer: Some(qcow2::Qcow2Writer::new(file, size).map_err(Error::Qcow2)?),
                    written: 0,
                })
            }
            Output::RawStream(w) => Box::new(RawStreamWriter { inner: w.0, pos: 0 }),
        })
    }
}

/// Creates or truncates `path` for writing, never through a symbolic link at it (a link planted
/// where an image goes must not redirect the write to the link's target).
fn create(path: &Path) -> Result<File, Error> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .map_err(|source| Error::Create {
            path: path.to_owned(),
            source,
        })
}

fn is_zero(block: &[u8]) -> bool {
    // Fold 64-byte chunks with OR so the compiler vectorises; bail out per chunk.
    block
        .chunks(64)
        .all(|c| c.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

/// Calls `f(start, run)` for each maximal run of non-zero [`HOLE_GRANULARITY`]-byte blocks.
pub(crate) fn for_each_nonzero_run(
    data: &[u8],
    mut f: impl FnMut(usize, &[u8]) -> Result<(), Error>,
) -> Result<(), Error> {
    let mut run_start: Option<usize> = None;
    let mut pos = 0;
    for block in data.chunks(HOLE_GRANULARITY) {
        let zero = is_zero(block);
        match (zero, run_start) {
            (false, None) => run_start = Some(pos),
            (true, Some(start)) => {
                f(start, &data[start..pos])?;
                run_start = None;
            }
            _ => {}
        }
        pos += block.len();
    }
    if let Some(start) = run_start {
        f(start, &data[start..])?;
    }
    Ok(())
}

/// Sparse RAW file: non-zero runs are written with `pwrite`, zero runs stay holes, the length is
/// set at the end. One thread writes: concurrent writers of one file only contend for its inode
/// lock.
#[derive(Debug)]
pub struct SparseFileWriter {
    file: File,
    written: u64,
}

impl SparseFileWriter {
    /// Creates (or truncates) `path`.
    pub fn create(path: &Path) -> Result<Self, Error> {
        Ok(Self {
            file: create(path)?,
            written: 0,
        })
    }
}

impl BlockWriter for SparseFileWriter {
    fn write_block(&mut self, offset: u64, data: &[u8]) -> Result<(), Error> {
        let (file, written) = (&self.file, &mut self.written);
        for_each_nonzero_run(data, |start, run| {
            let at = offset + start as u64;
            file.write_all_at(run, at)
                .map_err(|source| Error::Write { offset: at, source })?;
            *written += run.len() as u64;
            Ok(())
        })
    }

    fn finish(self: Box<Self>, virtual_size: u64, sync: bool) -> Result<u64, Error> {
        let file = &self.file;
        file.set_len(virtual_size).map_err(|source| Error::Finish {
            step: "set length",
            source,
        })?;
        if sync {
            file.sync_data()
                .map_err(|source| Error::Finish { step: "sync", source })?;
        }
        Ok(self.written)
    }
}

/// RAW stream: writes every byte in order, zeros included.
struct RawStreamWriter {
    inner: Box<dyn Write + Send>,
    pos: u64,
}

impl RawStreamWriter {
    fn zeros_to(&mut self, end: u64) -> Result<(), Error> {
        while self.pos < end {
            let n = (end - self.pos).min(ZEROS.len() as u64) as usize;
            self.inner.write_all(&ZEROS[..n]).map_err(|source| Error::Write {
                offset: self.pos,
                source,
            })?;
            self.pos += n as u64;
        }
        Ok(())
    }
}

impl BlockWriter for RawStreamWriter {
    fn write_block(&mut self, offset: u64, data: &[u8]) -> Result<(), Error> {
        self.zeros_to(offset)?;
        self.inner
            .write_all(data)
            .map_err(|source| Error::Write { offset, source })?;
        self.pos += data.len() as u64;
        Ok(())
    }

    fn finish(mut self: Box<Self>, virtual_size: u64, _sync: bool) -> Result<u64, Error> {
        self.zeros_to(virtual_size)?;
        self.inner.flush().map_err(|source| Error::Finish {
            step: "flush",
            source,
        })?;
        Ok(self.pos)
    }
}

/// qcow2 via the streaming writer; all-zero clusters stay unallocated.
struct Qcow2Writer {
    writer: Option<qcow2::Qcow2Writer<File>>,
    written: u64,
}

impl BlockWriter for Qcow2Writer {
    fn write_block(&mut self, offset: u64, data: &[u8]) -> Result<(), Error> {
        if let Some(w) = self.writer.as_mut() {
            for_each_nonzero_run(data, |start, run| {
                w.write_at(offset + start as u64, run).map_err(Error::Qcow2)?;
                Ok(())
            })?;
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>, _virtual_size: u64, sync: bool) -> Result<u64, Error> {
        if let Some(w) = self.writer.take() {
            let mut inner = w.finish().map_err(Error::Qcow2)?;
            if sync {
                inner
                    .sync_data()
                    .map_err(|source| Error::Finish { step: "sync", source })?;
            }
            self.written = inner
                .seek(io::SeekFrom::End(0))
                .map_err(|source| Error::Finish { step: "size", source })?;
        }
        Ok(self.written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(data: &[u8]) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        for_each_nonzero_run(data, |s, r| {
            out.push((s, r.len()));
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn zero_block_has_no_runs() {
        assert!(runs(&[0u8; 65536]).is_empty());
    }

    #[test]
    fn runs_split_on_4k_zero_blocks() {
        let mut d = vec![0u8; 16384];
        d[10] = 1;
        d[8192 + 4095] = 1;
        assert_eq!(runs(&d), vec![(0, 4096), (8192, 4096)]);
    }

    #[test]
    fn short_tail_is_a_run() {
        let mut d = vec![0u8; 5000];
        d[4999] = 1;
        assert_eq!(runs(&d), vec![(4096, 904)]);
    }
}
