//! Disk streams arriving over the network, for async callers: the one sink trait every exporter
//! hands its bytes to ([`StreamSink`]: `begin, write*, finish` per attempt), and the one bridge
//! from async chunks to the synchronous decoders ([`bridge`]: a bounded channel read as
//! `io::Read` by one blocking thread), which [`ConvertingSink`] and the controller's OVA download
//! both use.
//!
//! What the bytes are is said by [`StreamMeta`] at `begin`, so one sink serves vSphere's
//! streamOptimized exports, Glance's raw images (never sniffed: a guest that wrote an image
//! header onto its own disk gets that disk back byte for byte) and Glance's qcow2 snapshots
//! (staged beside the output, because qcow2 needs random access, checked to really be qcow2,
//! then converted). An image whose stream did not finish is deleted.

use std::{
    io::{self, Read},
    path::{Path, PathBuf},
};

use bytes::{Buf, Bytes};
use sha2::{Digest, Sha256};
use tokio::{sync::mpsc, task::JoinHandle};

use crate::{ImageFormat, InputFormat, Options, Report};

/// Chunks buffered between the download and the blocking thread. HTTP chunks are at most a few
/// tens of KiB, so this bounds memory per disk to about a MiB while letting the two sides overlap.
const CHANNEL_CHUNKS: usize = 32;

/// Error from a sink; the sink decides what it carries.
pub type SinkError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// How the bytes of a stream encode the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum StreamFormat {
    /// A streamOptimized VMDK (what vSphere's `ExportVm` serves).
    VmdkStreamOptimized,
    /// The disk's bytes as they are.
    Raw,
    /// A qcow2 image (needs random access: staged before it is converted).
    Qcow2,
}

/// What is about to arrive, told to [`StreamSink::begin`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamMeta {
    /// The encoding.
    pub format: StreamFormat,
    /// Bytes of data that will arrive, when the source says (a raw stream must bring exactly
    /// these).
    pub size: Option<u64>,
    /// The guest disk's size as the source describes it apart from the data (vSphere's
    /// `capacityInBytes`, a Cinder volume's size, Glance's `virtual_size`). A disk decoded to any
    /// other size is refused, so a stream cut short at the source never becomes a smaller disk.
    pub disk_size: Option<u64>,
}

/// Where one disk's stream goes.
///
/// Calls come as `begin, write*, finish`. After a failed attempt `begin` comes again and the sink
/// must drop whatever it received before; a download resumed where it stopped just goes on with
/// `write`.
pub trait StreamSink: Send + 'static {
    /// An attempt starts at byte 0: discard anything received so far.
    fn begin(&mut self, meta: &StreamMeta) -> impl Future<Output = Result<(), SinkError>> + Send;
    /// The next bytes of the stream.
    fn write(&mut self, chunk: Bytes) -> impl Future<Output = Result<(), SinkError>> + Send;
    /// The source ended the stream normally (and checked what it could); validate and flush.
    fn finish(&mut self) -> impl Future<Output = Result<(), SinkError>> + Send;
}

/// What a sink's `finish` returns (boxed) when the stream ended before its own end was proven:
/// the body closed normally but was cut short. An exporter retries that like a cut connection and
/// never commits it.
#[derive(Debug, thiserror::Error)]
#[error("the stream was cut short")]
pub struct StreamCutShort(#[source] pub SinkError);

/// A sink that only counts and hashes the bytes as received: what tests compare against the
/// source files.
#[derive(Debug, Clone, Default)]
pub struct HashingSink {
    hasher: Sha256,
    /// Bytes received in the current attempt.
    pub bytes: u64,
    /// Hex SHA-256 once finished.
    pub sha256: Option<String>,
    /// How many attempts were started (`begin` calls).
    pub begins: u32,
    /// What the last `begin` announced.
    pub meta: Option<StreamMeta>,
}

impl StreamSink for HashingSink {
    async fn begin(&mut self, meta: &StreamMeta) -> Result<(), SinkError> {
        self.hasher = Sha256::new();
        self.bytes = 0;
        self.sha256 = None;
        self.begins += 1;
        self.meta = Some(meta.clone());
        Ok(())
    }

    async fn write(&mut self, chunk: Bytes) -> Result<(), SinkError> {
        self.hasher.update(&chunk);
        self.bytes += chunk.len() as u64;
        Ok(())
    }

    async fn finish(&mut self) -> Result<(), SinkError> {
        self.sha256 = Some(hex::encode(std::mem::take(&mut self.hasher).finalize()));
        Ok(())
    }
}

/// Why a [`ConvertingSink`] failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Decoding or writing the image failed (diskconv's own error is the source).
    #[error("writing the image {path} from the stream")]
    Convert {
        /// The output image.
        path: PathBuf,
        /// Why.
        #[source]
        source: crate::Error,
    },
    /// Staging a qcow2 download, or removing an old file, failed.
    #[error("{step} {path}")]
    Io {
        /// What was being done.
        step: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A stream announced as qcow2 holds something else (a VMDK descriptor would make the
    /// converter open extent files named inside it).
    #[error("{path}: the source says qcow2 but the data is {detected}")]
    NotQcow2 {
        /// The staged file.
        path: PathBuf,
        /// What it is.
        detected: &'static str,
    },
    /// The blocking thread panicked or was cancelled.
    #[error("the writer of {path} did not finish")]
    Join {
        /// The output image.
        path: PathBuf,
    },
    /// `write` or `finish` without `begin`.
    #[error("{path}: data before begin")]
    NotStarted {
        /// The output image.
        path: PathBuf,
    },
    /// The writer finished before the stream ended.
    #[error("{path}: the writer finished before the stream ended")]
    FinishedEarly {
        /// The output image.
        path: PathBuf,
    },
}

impl Error {
    /// Whether the stream ended before the image did (worth another attempt).
    pub fn is_cut_short(&self) -> bool {
        matches!(self, Error::Convert { source, .. } if source.is_cut_short())
    }
}

/// One piece of a bridged stream.
enum Piece {
    Data(Bytes),
    End,
    Failed(String),
}

/// The async half of the async→blocking bridge (see [`bridge`]).
#[derive(Debug)]
pub struct ChunkSender(mpsc::Sender<Piece>);

/// The reading thread has gone: it finished or failed, and says why itself.
#[derive(Debug, thiserror::Error)]
#[error("the reader of the stream has gone")]
pub struct ReaderGone;

impl ChunkSender {
    /// Hands over the next bytes, waiting while the reader is [`bridge`]'s capacity behind.
    ///
    /// # Errors
    /// [`ReaderGone`].
    pub async fn send(&self, chunk: Bytes) -> Result<(), ReaderGone> {
        self.0.send(Piece::Data(chunk)).await.map_err(|_| ReaderGone)
    }

    /// The stream ended where its source says it ends: the reader sees end-of-file.
    pub async fn end(&self) {
        let _ = self.0.send(Piece::End).await;
    }

    /// The stream cannot go on: the reader's next read fails with `message`.
    pub async fn fail(&self, message: String) {
        let _ = self.0.send(Piece::Failed(message)).await;
    }
}

/// The blocking half of the bridge: the chunks read as one byte stream. A sender dropped before
/// [`ChunkSender::end`] (a cancelled transfer) is an error, never an end of file, so a stopped
/// stream cannot pass for a short one that ended.
#[derive(Debug)]
pub struct ChunkReader {
    rx: mpsc::Receiver<Piece>,
    current: Bytes,
    ended: bool,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            if self.ended {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Piece::Data(chunk)) => self.current = chunk,
                Some(Piece::End) => self.ended = true,
                Some(Piece::Failed(message)) => return Err(io::Error::other(message)),
                None => return Err(io::Error::other("the stream was stopped before its end")),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }
}

/// The one async→blocking bridge: what an async task sends, a blocking thread reads, at most
/// `capacity` chunks apart (HTTP chunks are tens of KiB, so a few dozen bound memory to about a
/// MiB while letting both sides work).
pub fn bridge(capacity: usize) -> (ChunkSender, ChunkReader) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    (
        ChunkSender(tx),
        ChunkReader {
            rx,
            current: Bytes::new(),
            ended: false,
        },
    )
}

struct Running {
    tx: ChunkSender,
    task: JoinHandle<Result<Report, Error>>,
}

/// A [`StreamSink`] that writes the disk into an image file as the stream arrives, on one
/// blocking thread per attempt.
pub struct ConvertingSink {
    path: PathBuf,
    format: ImageFormat,
    options: Options,
    running: Option<Running>,
    /// The conversion report once [`StreamSink::finish`] succeeded.
    pub report: Option<Report>,
}

impl std::fmt::Debug for ConvertingSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConvertingSink")
            .field("path", &self.path)
            .field("format", &self.format)
            .field("report", &self.report)
            .finish_non_exhaustive()
    }
}

impl ConvertingSink {
    /// A sink writing `path` in `format` with `options` (threads, progress; the expected size and
    /// declared format come from each [`StreamMeta`]).
    pub fn new(path: impl Into<PathBuf>, format: ImageFormat, options: Options) -> Self {
        Self {
            path: path.into(),
            format,
            options,
            running: None,
            report: None,
        }
    }

    /// The output path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where a qcow2 stream is staged before it is converted.
    fn staging_path(&self) -> PathBuf {
        staging_path(&self.path)
    }

    /// Stops the current attempt, if any; its result is moot.
    async fn stop(&mut self) {
        if let Some(Running { tx, task }) = self.running.take() {
            // The writer's next read fails: the stream was stopped.
            drop(tx);
            let _ = task.await;
        }
    }

    /// Ends the input and waits for the writer's result.
    async fn join(&mut self) -> Result<Report, Error> {
        let Running { tx, task } = self.running.take().ok_or_else(|| Error::NotStarted {
            path: self.path.clone(),
        })?;
        tx.end().await;
        task.await.map_err(|_| Error::Join {
            path: self.path.clone(),
        })?
    }
}

fn staging_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".download");
    PathBuf::from(name)
}

fn remove_if_present(path: &Path) -> Result<(), Error> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::Io {
            step: "removing",
            path: path.to_owned(),
            source,
        }),
    }
}

/// Writes one attempt's stream into `path`: run on the blocking thread.
fn write_image(
    reader: ChunkReader,
    path: &Path,
    format: ImageFormat,
    meta: &StreamMeta,
    options: Options,
) -> Result<Report, Error> {
    let convert_err = |source| Error::Convert {
        path: path.to_owned(),
        source,
    };
    match meta.format {
        StreamFormat::VmdkStreamOptimized => {
            let options = Options {
                expected_size: meta.disk_size,
                ..options
            };
            crate::convert_stream_optimized(reader, format.output(path), &options).map_err(convert_err)
        }
        StreamFormat::Raw => {
            let options = Options {
                expected_size: meta.size.or(meta.disk_size),
                ..options
            };
            crate::pipeline::convert_raw_stream(reader, format.output(path), &options).map_err(convert_err)
        }
        StreamFormat::Qcow2 => {
            let staging = staging_path(path);
            let result = stage_and_convert(reader, &staging, path, format, meta, options);
            let _ = std::fs::remove_file(&staging);
            result
        }
    }
}

/// Stores the qcow2 stream in `staging`, checks that it is a qcow2 image, and converts it.
fn stage_and_convert(
    mut reader: ChunkReader,
    staging: &Path,
    path: &Path,
    format: ImageFormat,
    meta: &StreamMeta,
    options: Options,
) -> Result<Report, Error> {
    let io_err = |step, source| Error::Io {
        step,
        path: staging.to_owned(),
        source,
    };
    let mut file = std::fs::File::create(staging).map_err(|e| io_err("creating", e))?;
    io::copy(&mut reader, &mut file).map_err(|e| io_err("writing", e))?;
    drop(file);
    let detected = crate::source::detect_path(staging).map_err(|source| Error::Convert {
        path: staging.to_owned(),
        source,
    })?;
    if detected != InputFormat::Qcow2 {
        return Err(Error::NotQcow2 {
            path: staging.to_owned(),
            detected: detected.name(),
        });
    }
    let options = Options {
        expected_size: meta.disk_size,
        ..options
    };
    crate::convert_path(staging, format.output(path), &options).map_err(|source| Error::Convert {
        path: staging.to_owned(),
        source,
    })
}

impl StreamSink for ConvertingSink {
    async fn begin(&mut self, meta: &StreamMeta) -> Result<(), SinkError> {
        self.stop().await;
        self.report = None;
        remove_if_present(&self.path)?;
        remove_if_present(&self.staging_path())?;
        let (tx, reader) = bridge(CHANNEL_CHUNKS);
        let (path, format, meta, options) =
            (self.path.clone(), self.format, meta.clone(), self.options.clone());
        let task = tokio::task::spawn_blocking(move || {
            let result = write_image(reader, &path, format, &meta, options);
            if result.is_err() {
                // The thread may outlive the sink (dropped mid-transfer), so it cleans up after itself.
                let _ = std::fs::remove_file(&path);
            }
            result
        });
        self.running = Some(Running { tx, task });
        Ok(())
    }

    async fn write(&mut self, chunk: Bytes) -> Result<(), SinkError> {
        let Some(running) = &self.running else {
            return Err(Error::NotStarted {
                path: self.path.clone(),
            }
            .into());
        };
        if running.tx.send(chunk).await.is_err() {
            // The writer stopped reading: it failed; report why.
            return Err(match self.join().await {
                Err(e) => e.into(),
                Ok(_) => Error::FinishedEarly {
                    path: self.path.clone(),
                }
                .into(),
            });
        }
        Ok(())
    }

    async fn finish(&mut self) -> Result<(), SinkError> {
        match self.join().await {
            Ok(report) => {
                self.report = Some(report);
                Ok(())
            }
            Err(e) if e.is_cut_short() => Err(Box::new(StreamCutShort(e.into()))),
            Err(e) => Err(e.into()),
        }
    }
}

impl Drop for ConvertingSink {
    fn drop(&mut self) {
        if self.report.is_none() {
            self.running = None;
            // Never leave a half-written image that looks like a result.
            let _ = std::fs::remove_file(&self.path);
            let _ = std::fs::remove_file(self.staging_path());
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::time::Duration;

    use super::*;

    /// A qcow2 image of `size` bytes with one written MiB, made by diskconv's own writer.
    fn qcow2_bytes(dir: &Path, size: u64) -> Vec<u8> {
        let path = dir.join("source.qcow2");
        let mut sink = ImageFormat::Qcow2.output(path.clone()).open(Some(size)).unwrap();
        sink.write_block(0, &vec![7u8; 1 << 20]).unwrap();
        sink.finish(size, true).unwrap();
        std::fs::read(path).unwrap()
    }

    fn chain(error: &(dyn std::error::Error + 'static)) -> String {
        let mut text = error.to_string();
        let mut next = error.source();
        while let Some(cause) = next {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            next = cause.source();
        }
        text
    }

    fn meta(format: StreamFormat, size: u64, disk_size: Option<u64>) -> StreamMeta {
        StreamMeta {
            format,
            size: Some(size),
            disk_size,
        }
    }

    #[tokio::test]
    async fn a_qcow2_stream_must_have_the_disk_size_its_source_states() {
        let dir = tempfile::tempdir().unwrap();
        let size = 4 << 20;
        let bytes = Bytes::from(qcow2_bytes(dir.path(), size));
        for (disk_size, accepted) in [(None, true), (Some(size), true), (Some(size * 2), false)] {
            let out = dir.path().join("disk-0.img");
            let mut sink = ConvertingSink::new(&out, ImageFormat::Raw, Options::default());
            sink.begin(&meta(StreamFormat::Qcow2, bytes.len() as u64, disk_size))
                .await
                .unwrap();
            sink.write(bytes.clone()).await.unwrap();
            match sink.finish().await {
                Ok(()) => {
                    assert!(accepted, "{disk_size:?}");
                    assert_eq!(std::fs::metadata(&out).unwrap().len(), size);
                }
                Err(error) => {
                    assert!(!accepted, "{disk_size:?}: {error}");
                    let text = chain(&*error);
                    assert!(text.contains(&(size * 2).to_string()), "{text}");
                    drop(sink);
                    assert!(!out.exists(), "no image is left for a refused disk");
                }
            }
            assert!(!dir.path().join("disk-0.img.download").exists());
        }
    }

    #[tokio::test]
    async fn a_raw_stream_is_written_as_it_is_even_when_it_looks_like_an_image() {
        let dir = tempfile::tempdir().unwrap();
        // A guest disk whose first bytes are a qcow2 header: raw means raw.
        let mut content = qcow2_bytes(dir.path(), 1 << 20);
        content.resize(2 << 20, 0);
        let out = dir.path().join("disk.img");
        let options = Options {
            checksum: Some(crate::Checksum::Sha256),
            ..Options::default()
        };
        let mut sink = ConvertingSink::new(&out, ImageFormat::Raw, options);
        sink.begin(&meta(StreamFormat::Raw, content.len() as u64, None))
            .await
            .unwrap();
        for chunk in content.chunks(3000) {
            sink.write(Bytes::copy_from_slice(chunk)).await.unwrap();
        }
        sink.finish().await.unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), content);
        let report = sink.report.as_ref().unwrap();
        assert_eq!(
            report.digest(crate::Checksum::Sha256),
            Some(&*hex::encode(Sha256::digest(&content)))
        );
    }

    #[tokio::test]
    async fn a_short_raw_stream_is_cut_short_and_leaves_no_image() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("disk.img");
        let mut sink = ConvertingSink::new(&out, ImageFormat::Raw, Options::default());
        sink.begin(&meta(StreamFormat::Raw, 1 << 20, None)).await.unwrap();
        sink.write(Bytes::from(vec![1u8; 4096])).await.unwrap();
        let error = sink.finish().await.unwrap_err();
        assert!(error.is::<StreamCutShort>(), "{error}");
        assert!(!out.exists());
    }

    #[tokio::test]
    async fn a_second_begin_starts_over_and_a_dropped_sink_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("disk.img");
        let mut sink = ConvertingSink::new(&out, ImageFormat::Raw, Options::default());
        sink.begin(&meta(StreamFormat::Raw, 8192, None)).await.unwrap();
        sink.write(Bytes::from(vec![9u8; 4096])).await.unwrap();
        sink.begin(&meta(StreamFormat::Raw, 8192, None)).await.unwrap();
        sink.write(Bytes::from(vec![2u8; 8192])).await.unwrap();
        sink.finish().await.unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), vec![2u8; 8192]);

        let other = dir.path().join("other.img");
        let mut unfinished = ConvertingSink::new(&other, ImageFormat::Raw, Options::default());
        unfinished
            .begin(&meta(StreamFormat::Raw, 8192, None))
            .await
            .unwrap();
        unfinished.write(Bytes::from(vec![2u8; 4096])).await.unwrap();
        drop(unfinished);
        // The writer thread sees the stream end early and removes what it wrote; wait for it.
        for _ in 0..200 {
            if !other.exists() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("{} is still there after the sink was dropped", other.display());
    }

    #[tokio::test]
    async fn the_bridge_tells_an_end_from_a_failure_and_from_a_stopped_sender() {
        let read_all = |mut reader: ChunkReader| {
            tokio::task::spawn_blocking(move || {
                let mut out = Vec::new();
                reader.read_to_end(&mut out).map(|_| out)
            })
        };
        let (tx, reader) = bridge(2);
        let read = read_all(reader);
        for part in [&b"abc"[..], b"", b"def"] {
            tx.send(Bytes::copy_from_slice(part)).await.unwrap();
        }
        tx.end().await;
        assert_eq!(read.await.unwrap().unwrap(), b"abcdef");

        let (tx, reader) = bridge(2);
        let read = read_all(reader);
        tx.send(Bytes::from_static(b"abc")).await.unwrap();
        tx.fail("connection reset at byte 3".into()).await;
        let error = read.await.unwrap().unwrap_err();
        assert!(error.to_string().contains("byte 3"), "{error}");

        let (tx, reader) = bridge(2);
        let read = read_all(reader);
        tx.send(Bytes::from_static(b"abc")).await.unwrap();
        drop(tx);
        let error = read.await.unwrap().unwrap_err();
        assert!(
            error.to_string().contains("stopped"),
            "a cancelled stream is no short file: {error}"
        );

        let (tx, reader) = bridge(2);
        drop(reader);
        assert!(tx.send(Bytes::from_static(b"abc")).await.is_err());
    }

    #[tokio::test]
    async fn write_before_begin_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = ConvertingSink::new(dir.path().join("x.img"), ImageFormat::Raw, Options::default());
        let error = sink.write(Bytes::from_static(b"x")).await.unwrap_err();
        assert!(error.to_string().contains("before begin"), "{error}");
    }
}
