//! The conversion pipeline: a producer (stream decoder or random-access reader) feeds blocks of
//! logical disk content through an optional pool of inflate workers to one ordered consumer that
//! writes the output and reports progress and, when a checksum is asked for, hands every block to
//! a hasher thread that computes the digest of the logical content (zeros included, in order).
//!
//! ```text
//!  input ─► producer ──(work)──► inflate workers ×N ──(blocks)──► ordered consumer ─► sink
//!              ▲                                                   │
//!              │                                                   └──(Arc blocks)──► hasher (if asked)
//!              └──── credits (MAX_IN_FLIGHT), returned by whichever of consumer and hasher
//!                    lets go of a block last
//! ```
//!
//! A digest runs at ~1.5 GB/s (SHA-256) or ~0.8 GB/s (SHA-512) per core and cannot be split, so it
//! gets a thread of its own that waits for nothing but the next block; reading, inflating and
//! writing share the other core. Without a checksum there is no hasher and no zeros are hashed.
//! Memory is bounded by [`MAX_IN_FLIGHT`] blocks whatever the disk size: the producer takes a
//! credit before emitting a block and gets it back only once the block is both written and
//! hashed, so out-of-order results waiting for a slow grain cannot pile up. All code here is
//! synchronous; an async caller runs a whole conversion inside one `spawn_blocking`.

use std::{
    collections::BTreeMap,
    io::{self, Read},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::Instant,
};

use crossbeam_channel::{Receiver, Sender, bounded};
use vmdk::{Event, GrainInflater, StreamDecoder};

use crate::{
    Error,
    checksum::{Checksum, Digest, Digester},
    writer::{BlockWriter, Output, ZEROS},
};

/// Blocks in flight between producer and consumer. With 64 KiB grains this is at most ~8 MiB of
/// compressed plus inflated data, which keeps peak RSS far below 64 MiB on any disk size.
pub const MAX_IN_FLIGHT: usize = 64;
/// Blocks in flight for the random-access and raw paths, whose blocks are up to
/// [`RANDOM_BLOCK`]: 8 MiB of buffers is plenty to keep reader, writer and hasher overlapped.
pub const MAX_IN_FLIGHT_LARGE: usize = 8;
/// Bytes read from the input per `read` call: large enough to amortise syscalls and HTTP chunk
/// overhead, small against the memory budget.
pub const READ_CHUNK: usize = 256 * 1024;
/// Largest block the random-access producer sends (coalesced allocated grains or flat data).
pub const RANDOM_BLOCK: usize = 1 << 20;

/// Progress of one conversion, reported from the consumer thread after each block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Input bytes consumed so far (compressed bytes for a stream).
    pub bytes_read: u64,
    /// Logical disk bytes done so far (position of the end of the last block).
    pub position: u64,
    /// Virtual size, when known.
    pub virtual_size: Option<u64>,
}

/// A progress callback; called often, so it should be cheap (throttle inside).
pub type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

/// Conversion knobs.
#[derive(Clone)]
pub struct Options {
    /// Inflate workers for compressed input (at least 1).
    pub threads: usize,
    /// Progress callback.
    pub progress: Option<ProgressFn>,
    /// Sync the output to stable storage before reporting success (`fdatasync`). qemu-img does
    /// not by default; a controller that serves the image right away should.
    pub sync: bool,
    /// The disk's size as its source describes it (an OVF's capacity, vSphere's
    /// `capacityInBytes`, a Cinder volume's size). An image whose header says otherwise is refused
    /// before anything is written, and a raw stream must bring exactly this many bytes: a header
    /// cannot buy a larger disk than the source described, and a short raw body is no disk.
    pub expected_size: Option<u64>,
    /// The format family the input was declared as (`-f`, a `.vmdk` name, an OVF's disk
    /// format): an input whose first bytes say otherwise is refused, not read as raw.
    pub declared_format: Option<crate::source::Family>,
    /// The digest of the logical content to compute, if any (it costs a core at SHA speed, and
    /// zeros are hashed too).
    pub checksum: Option<Checksum>,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("threads", &self.threads)
            .finish_non_exhaustive()
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            threads: thread::available_parallelism().map_or(2, |n| n.get()),
            progress: None,
            sync: true,
            expected_size: None,
            declared_format: None,
            checksum: None,
        }
    }
}

impl Options {
    /// Refuses a virtual size other than the one the source described (a declared size that is
    /// not a whole number of sectors may be rounded up to one, as VMDK and qcow2 headers do).
    pub(crate) fn check_size(&self, found: u64) -> Result<(), Error> {
        match self.expected_size {
            Some(declared) if found != declared && found != declared.next_multiple_of(512) => {
                Err(Error::SizeMismatch { declared, found })
            }
            _ => Ok(()),
        }
    }
}

/// What one conversion did.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Report {
    /// Input format (`vmdk-streamOptimized`, `vmdk`, `qcow2`, `raw`).
    pub format: String,
    /// Virtual size in bytes.
    pub virtual_size: u64,
    /// Input bytes read.
    pub bytes_read: u64,
    /// Bytes physically written to the output.
    pub bytes_written: u64,
    /// The digest of the logical disk content (all `virtual_size` bytes), when one was asked for.
    pub checksum: Option<Digest>,
    /// Wall time.
    pub seconds: f64,
}

impl Report {
    /// The hex digest when the conversion computed a `checksum` digest.
    pub fn digest(&self, checksum: Checksum) -> Option<&str> {
        self.checksum
            .as_ref()
            .filter(|d| d.algorithm == checksum)
            .map(|d| d.hex.as_str())
    }
}

/// A `Read` that counts bytes into a shared counter (read by the progress reporter).
pub(crate) struct Counting<R> {
    pub(crate) inner: R,
    pub(crate) count: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Recycles block buffers: in steady state a conversion allocates nothing, because a fresh
/// 64 KiB–1 MiB allocation costs page faults every time (and glibc returns freed memory to the
/// kernel when another thread frees it).
#[derive(Clone)]
pub(crate) struct Pool {
    tx: Sender<Vec<u8>>,
    rx: Receiver<Vec<u8>>,
}

impl Pool {
    fn new() -> Self {
        // Every buffer in flight can come back, plus a few held by workers.
        let (tx, rx) = bounded(MAX_IN_FLIGHT * 2 + 16);
        Self { tx, rx }
    }

    /// A buffer of some earlier length (callers resize; contents are stale).
    fn take(&self) -> Vec<u8> {
        self.rx.try_recv().unwrap_or_default()
    }

    fn put(&self, buf: Vec<u8>) {
        // A full pool just drops the buffer.
        let _ = self.tx.try_send(buf);
    }
}

fn read_some(input: &mut impl Read, buf: &mut [u8], offset: u64) -> Result<usize, Error> {
    loop {
        match input.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => return Err(Error::Read { offset, source }),
        }
    }
}

/// What reaches the ordered consumer.
pub(crate) enum Msg {
    Block(Block),
    Failed(Error),
    /// Every block has been sent: only now may the hasher go on to the end of the disk.
    Produced,
}

/// A block of logical content on its way to the consumer.
pub(crate) struct Block {
    seq: u64,
    offset: u64,
    data: Vec<u8>,
}

struct Work {
    seq: u64,
    lba: u64,
    record_offset: u64,
    compressed: Vec<u8>,
}

/// A block shared by the ordered consumer (which writes it) and the hasher; whichever lets go
/// last recycles the buffer and returns the producer's credit.
struct Shared {
    offset: u64,
    data: Arc<Vec<u8>>,
}

/// Gives a block's buffer back to the pool and its credit to the producer, if no one else still
/// holds it.
fn release(data: Arc<Vec<u8>>, pool: &Pool, credits: &Sender<()>) {
    if let Some(buf) = Arc::into_inner(data) {
        pool.put(buf);
        // The producer may have stopped; a missing receiver is fine.
        let _ = credits.send(());
    }
}

/// The digest of the logical content, in order, zeros included, on its own thread: at SHA speed
/// it is the longest sequential chain of a conversion, so nothing else may wait for it and it
/// waits for nothing but the next block. Gaps are hashed from the static [`ZEROS`].
struct Hasher {
    hasher: Digester,
    pos: u64,
    /// Set when any stage fails: a gap of zeros can be petabytes long, and a failed pipeline
    /// must stop at once rather than hash it to the end.
    cancelled: Arc<AtomicBool>,
}

enum HashMsg {
    Block(Shared),
    /// The logical size: hash the trailing zeros up to it and stop.
    End(u64),
}

impl Hasher {
    fn zeros_to(&mut self, end: u64) {
        while self.pos < end && !self.cancelled.load(Ordering::Relaxed) {
            let n = (end - self.pos).min(ZEROS.len() as u64) as usize;
            self.hasher.update(&ZEROS[..n]);
            self.pos += n as u64;
        }
    }

    /// Hashes every block it receives up to [`HashMsg::End`]. A pipeline that stops earlier has
    /// failed, and its error is the outcome, not this digest.
    fn run(mut self, blocks: &Receiver<HashMsg>, pool: &Pool, credits: &Sender<()>) -> Digest {
        for msg in blocks {
            if self.cancelled.load(Ordering::Relaxed) {
                break;
            }
            match msg {
                HashMsg::Block(block) => {
                    self.zeros_to(block.offset);
                    self.hasher.update(&block.data[..]);
                    self.pos = block.offset + block.data.len() as u64;
                    release(block.data, pool, credits);
                }
                HashMsg::End(size) => {
                    self.zeros_to(size);
                    break;
                }
            }
        }
        self.hasher.finish()
    }
}

/// The ordered consumer: puts blocks back in order, hands each to the hasher, writes the sink,
/// reports progress.
pub(crate) struct Consumer {
    sink: Box<dyn BlockWriter>,
    pos: u64,
    virtual_size: Option<u64>,
    progress: Option<ProgressFn>,
    bytes_read: Arc<AtomicU64>,
    pool: Pool,
    /// Shared with every stage: set by the first one that fails.
    cancelled: Arc<AtomicBool>,
}

impl Consumer {
    pub(crate) fn new(
        sink: Box<dyn BlockWriter>,
        virtual_size: Option<u64>,
        progress: Option<ProgressFn>,
        bytes_read: Arc<AtomicU64>,
    ) -> Self {
        Self {
            sink,
            pos: 0,
            virtual_size,
            progress,
            bytes_read,
            pool: Pool::new(),
            cancelled: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Processes blocks in sequence order; a failure cancels the other stages.
    fn run_ordered(
        &mut self,
        done: &Receiver<Msg>,
        hash: Option<Sender<HashMsg>>,
        credits: &Sender<()>,
    ) -> Result<(), Error> {
        let result = self.consume_ordered(done, hash, credits);
        if result.is_err() {
            self.cancelled.store(true, Ordering::Relaxed);
        }
        result
    }

    fn consume_ordered(
        &mut self,
        done: &Receiver<Msg>,
        hash: Option<Sender<HashMsg>>,
        credits: &Sender<()>,
    ) -> Result<(), Error> {
        let mut pending = BTreeMap::new();
        let mut next = 0u64;
        for item in done {
            let block = match item {
                Msg::Block(block) => block,
                Msg::Failed(e) => return Err(e),
                Msg::Produced => {
                    // The blocks were all received before this message; none is left pending.
                    if let Some(hash) = &hash {
                        let _ = hash.send(HashMsg::End(self.virtual_size.unwrap_or(self.pos)));
                    }
                    return Ok(());
                }
            };
            pending.insert(block.seq, block);
            while let Some(block) = pending.remove(&next) {
                let offset = block.offset;
                let data = Arc::new(block.data);
                if let Some(hash) = &hash {
                    // The hasher only stops early when the pipeline is failing anyway.
                    let _ = hash.send(HashMsg::Block(Shared {
                        offset,
                        data: data.clone(),
                    }));
                }
                self.sink.write_block(offset, &data).map_err(Error::Write)?;
                self.pos = offset + data.len() as u64;
                release(data, &self.pool, credits);
                if let Some(progress) = &self.progress {
                    progress(&Progress {
                        bytes_read: self.bytes_read.load(Ordering::Relaxed),
                        position: self.pos,
                        virtual_size: self.virtual_size,
                    });
                }
                next += 1;
            }
        }
        Ok(())
    }

    /// Finishes the output (while the hasher, if any, hashes the trailing zeros) and builds the
    /// report.
    fn finish(
        self,
        hasher: Option<thread::ScopedJoinHandle<'_, Digest>>,
        format: &str,
        started: Instant,
        sync: bool,
    ) -> Result<Report, Error> {
        let virtual_size = self.virtual_size.unwrap_or(self.pos);
        let cancelled = self.cancelled.clone();
        let bytes_written = self.sink.finish(virtual_size, sync).map_err(|e| {
            cancelled.store(true, Ordering::Relaxed);
            Error::Write(e)
        })?;
        let checksum = hasher.map(|hasher| {
            hasher
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        });
        let bytes_read = self.bytes_read.load(Ordering::Relaxed);
        if let Some(progress) = &self.progress {
            progress(&Progress {
                bytes_read,
                position: virtual_size,
                virtual_size: Some(virtual_size),
            });
        }
        Ok(Report {
            format: format.to_owned(),
            virtual_size,
            bytes_read,
            bytes_written,
            checksum,
            seconds: started.elapsed().as_secs_f64(),
        })
    }
}

/// Runs `produce` on the calling thread, the ordered consumer and the hasher on helper threads,
/// connected by the credit-bounded block channel (`workers` extra threads may be spawned by
/// `produce` itself); then finishes the sink and returns the report.
fn run_pipeline<P>(
    mut consumer: Consumer,
    in_flight: usize,
    (format, started, sync, checksum): (&str, Instant, bool, Option<Checksum>),
    produce: P,
) -> Result<Report, Error>
where
    P: FnOnce(&Sender<Msg>, &Receiver<()>) -> Result<(), Error>,
{
    // One more than the blocks in flight: room for the final `Produced`.
    let (done_tx, done_rx) = bounded::<Msg>(in_flight + 1);
    let (credit_tx, credit_rx) = bounded::<()>(in_flight);
    for _ in 0..in_flight {
        // The receiver is alive and the channel has room for exactly this many.
        let _ = credit_tx.send(());
    }
    thread::scope(|scope| {
        let cancelled = consumer.cancelled.clone();
        let (hash_tx, hasher) = match checksum {
            Some(checksum) => {
                // Room for every block in flight, so the consumer never waits for the hasher.
                let (hash_tx, hash_rx) = bounded::<HashMsg>(in_flight + 1);
                let hasher = Hasher {
                    hasher: checksum.digester(),
                    pos: 0,
                    cancelled: cancelled.clone(),
                };
                let (pool, credits) = (consumer.pool.clone(), credit_tx.clone());
                let hasher = thread::Builder::new()
                    .name(format!("diskconv-{}", checksum.name()))
                    .spawn_scoped(scope, move || hasher.run(&hash_rx, &pool, &credits))
                    .map_err(Error::Spawn)?;
                (Some(hash_tx), Some(hasher))
            }
            None => (None, None),
        };
        // Only the consumer holds the hasher's sender: if it fails, the hasher stops, lets go of
        // its credit sender, and a producer waiting for a credit sees the channel close.
        let ordered = thread::Builder::new()
            .name("diskconv-writer".into())
            .spawn_scoped(scope, move || {
                let result = consumer.run_ordered(&done_rx, hash_tx, &credit_tx);
                result.map(|()| consumer)
            })
            .map_err(Error::Spawn)?;
        let produced = produce(&done_tx, &credit_rx);
        // The stage that failed first is the one reported: a producer stops quietly when the
        // consumer is gone, and the consumer stops quietly when told that the producer failed.
        let producer_failed_first = match &produced {
            Ok(()) => {
                let _ = done_tx.send(Msg::Produced);
                false
            }
            Err(_) => !cancelled.swap(true, Ordering::Relaxed),
        };
        drop(done_tx);
        drop(credit_rx);
        let consumed = ordered
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        match (produced, consumed) {
            (Err(first), _) if producer_failed_first => Err(first),
            (_, Err(first)) | (Err(first), Ok(_)) => Err(first),
            (Ok(()), Ok(consumer)) => consumer.finish(hasher, format, started, sync),
        }
    })
}

/// Converts a streamOptimized VMDK read sequentially from `input` (file, pipe, HTTP body, tar
/// entry): one pass, no seeking, no temporary file; grains are inflated on `opts.threads` workers.
pub fn convert_stream_optimized(input: impl Read, output: Output, opts: &Options) -> Result<Report, Error> {
    let started = Instant::now();
    let count = Arc::new(AtomicU64::new(0));
    let mut input = Counting {
        inner: input,
        count: count.clone(),
    };
    let mut decoder = StreamDecoder::new();
    let mut chunk = vec![0u8; READ_CHUNK];
    let header = loop {
        match decoder.next_event().map_err(Error::Stream)? {
            Some(Event::Header(h)) => break h,
            Some(_) => continue,
            None => {
                let n = read_some(&mut input, &mut chunk, decoder.position())?;
                if n == 0 {
                    decoder.finish().map_err(Error::Stream)?;
                    return Err(Error::Empty);
                }
                decoder.feed(&chunk[..n]);
            }
        }
    };
    let virtual_size = header.capacity_bytes();
    opts.check_size(virtual_size)?;
    let grain_bytes = header.grain_bytes() as usize;
    let sink = output.open(Some(virtual_size)).map_err(Error::Write)?;
    let consumer = Consumer::new(sink, Some(virtual_size), opts.progress.clone(), count);
    let pool = consumer.pool.clone();
    let zpool = Pool::new();
    let threads = opts.threads.max(1);
    let timing = ("vmdk-streamOptimized", started, opts.sync, opts.checksum);
    run_pipeline(consumer, MAX_IN_FLIGHT, timing, |done, credits| {
        thread::scope(|scope| {
            let (work_tx, work_rx) = bounded::<Work>(MAX_IN_FLIGHT);
            for i in 0..threads {
                let rx = work_rx.clone();
                let tx = done.clone();
                let (pool, zpool) = (pool.clone(), zpool.clone());
                thread::Builder::new()
                    .name(format!("diskconv-inflate-{i}"))
                    .spawn_scoped(scope, move || {
                        inflate_worker(&rx, &tx, (&pool, &zpool), grain_bytes, virtual_size)
                    })
                    .map_err(Error::Spawn)?;
            }
            drop(work_rx);
            let result = produce_grains(&mut decoder, &mut input, &mut chunk, (&work_tx, &zpool), credits);
            drop(work_tx);
            result
        })
    })
}

fn produce_grains(
    decoder: &mut StreamDecoder,
    input: &mut impl Read,
    chunk: &mut [u8],
    (work, zpool): (&Sender<Work>, &Pool),
    credits: &Receiver<()>,
) -> Result<(), Error> {
    let mut seq = 0u64;
    loop {
        match decoder.next_event().map_err(Error::Stream)? {
            Some(Event::Grain(grain)) => {
                let (grain_lba, record_offset) = (grain.lba, grain.offset);
                // A closed channel means the consumer or a worker failed; its error wins.
                if credits.recv().is_err() {
                    return Ok(());
                }
                // Copy out of the decoder's buffer so that it stays unshared and is reused in
                // place instead of reallocated on every read.
                let mut compressed = zpool.take();
                compressed.clear();
                compressed.extend_from_slice(&grain.compressed);
                drop(grain);
                let item = Work {
                    seq,
                    lba: grain_lba,
                    record_offset,
                    compressed,
                };
                if work.send(item).is_err() {
                    return Ok(());
                }
                seq += 1;
            }
            // Keep reading after EOS: the decoder checks that only padding follows.
            Some(Event::EndOfStream) => {}
            Some(_) => {}
            None => {
                let n = read_some(input, chunk, decoder.position())?;
                if n == 0 {
                    decoder.finish().map_err(Error::Stream)?;
                    return Ok(());
                }
                decoder.feed(&chunk[..n]);
            }
        }
    }
}

/// Inflates grains. Writing stays with the one ordered consumer: two threads writing one file
/// contend for its inode lock, and the kernel spins on it (5 % of all CPU time when measured).
fn inflate_worker(
    work: &Receiver<Work>,
    done: &Sender<Msg>,
    (pool, zpool): (&Pool, &Pool),
    grain_bytes: usize,
    virtual_size: u64,
) {
    let mut inflater = GrainInflater::new();
    for item in work {
        let offset = item.lba * vmdk::SECTOR_SIZE;
        // The decoder guarantees lba < capacity, so offset < virtual_size.
        let len = (virtual_size - offset).min(grain_bytes as u64) as usize;
        // Pooled buffers keep their length, so the steady state does no memset: inflate
        // overwrites what it produces and only a short grain's tail is cleared.
        let mut data = pool.take();
        data.resize(grain_bytes, 0);
        let inflated = inflater.inflate(&item.compressed, &mut data);
        zpool.put(item.compressed);
        let result = match inflated {
            Ok(n) => {
                data[n..].fill(0);
                data.truncate(len);
                Msg::Block(Block {
                    seq: item.seq,
                    offset,
                    data,
                })
            }
            Err(source) => Msg::Failed(Error::Inflate {
                offset: item.record_offset,
                lba: item.lba,
                source,
            }),
        };
        let failed = matches!(result, Msg::Failed(_));
        if done.send(result).is_err() || failed {
            return;
        }
    }
}

/// Random access to a disk image: allocation map plus reads.
pub(crate) trait RandomSource {
    /// Virtual size in bytes.
    fn size(&self) -> u64;
    /// `(allocated, len)` of the range at `offset` (len 0 at the end).
    fn segment(&mut self, offset: u64) -> Result<(bool, u64), Error>;
    /// Fills `buf` from `offset`.
    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), Error>;
}

/// Converts a random-access source: allocated ranges are read in blocks of up to
/// [`RANDOM_BLOCK`], unallocated ones are skipped (the sink leaves them as holes).
pub(crate) fn convert_random(
    source: &mut dyn RandomSource,
    format: &str,
    output: Output,
    opts: &Options,
    bytes_read: Arc<AtomicU64>,
) -> Result<Report, Error> {
    let started = Instant::now();
    let virtual_size = source.size();
    opts.check_size(virtual_size)?;
    let sink = output.open(Some(virtual_size)).map_err(Error::Write)?;
    let consumer = Consumer::new(
        sink,
        Some(virtual_size),
        opts.progress.clone(),
        bytes_read.clone(),
    );
    let pool = consumer.pool.clone();
    run_pipeline(
        consumer,
        MAX_IN_FLIGHT_LARGE,
        (format, started, opts.sync, opts.checksum),
        |done, credits| {
            let mut offset = 0u64;
            let mut seq = 0u64;
            while offset < virtual_size {
                let (allocated, len) = source.segment(offset)?;
                if len == 0 {
                    break;
                }
                if !allocated {
                    offset += len;
                    continue;
                }
                // The allocated run first (up to one block), then one read for all of it: the
                // reader turns grains stored one after the other into a single large read.
                let start = offset;
                let limit = virtual_size.min(start + RANDOM_BLOCK as u64);
                let (mut allocated, mut len) = (allocated, len);
                while allocated && len > 0 && offset < limit {
                    offset = offset.saturating_add(len).min(limit);
                    if offset < limit {
                        (allocated, len) = source.segment(offset)?;
                    }
                }
                let n = (offset - start) as usize;
                // Pooled buffers keep their length: no memset of a buffer about to be overwritten.
                let mut data = pool.take();
                data.resize(RANDOM_BLOCK, 0);
                data.truncate(n);
                source.read_exact_at(start, &mut data)?;
                bytes_read.fetch_add(n as u64, Ordering::Relaxed);
                // Reading, writing and hashing each get a thread: three stages over two cores.
                if credits.recv().is_err()
                    || done
                        .send(Msg::Block(Block {
                            seq,
                            offset: start,
                            data,
                        }))
                        .is_err()
                {
                    return Ok(());
                }
                seq += 1;
            }
            Ok(())
        },
    )
}

/// A forward-only decoder of a table-mapped format (hosted sparse VMDK, qcow2): allocated runs of
/// logical content in ascending order; what it never yields reads as zeros.
pub(crate) trait ForwardDecoder {
    /// Virtual size in bytes.
    fn virtual_size(&self) -> u64;
    /// Appends the next allocated run to `out` and returns its logical offset; `None` at the end.
    fn next_run(&mut self, out: &mut Vec<u8>) -> Result<Option<u64>, Error>;
}

/// Converts from a [`ForwardDecoder`] reading a pipe: runs are coalesced into blocks of up to
/// [`RANDOM_BLOCK`] and written in order; holes are left to the sink. `bytes_read` is the
/// counter of the decoder's input.
pub(crate) fn convert_forward(
    decoder: &mut dyn ForwardDecoder,
    format: &str,
    output: Output,
    opts: &Options,
    bytes_read: Arc<AtomicU64>,
) -> Result<Report, Error> {
    let started = Instant::now();
    let virtual_size = decoder.virtual_size();
    opts.check_size(virtual_size)?;
    let sink = output.open(Some(virtual_size)).map_err(Error::Write)?;
    let consumer = Consumer::new(sink, Some(virtual_size), opts.progress.clone(), bytes_read);
    let pool = consumer.pool.clone();
    run_pipeline(
        consumer,
        MAX_IN_FLIGHT_LARGE,
        (format, started, opts.sync, opts.checksum),
        |done, credits| {
            let mut seq = 0u64;
            let mut send = |offset: u64, data: Vec<u8>| -> bool {
                let sent =
                    credits.recv().is_ok() && done.send(Msg::Block(Block { seq, offset, data })).is_ok();
                seq += 1;
                sent
            };
            let mut block = pool.take();
            block.clear();
            let mut block_offset = 0u64;
            loop {
                let before = block.len();
                let Some(offset) = decoder.next_run(&mut block)? else {
                    break;
                };
                let contiguous = before > 0 && block_offset + before as u64 == offset;
                if before == 0 {
                    block_offset = offset;
                } else if !contiguous || block.len() > RANDOM_BLOCK {
                    // The new run starts a block of its own.
                    let mut next = pool.take();
                    next.clear();
                    next.extend_from_slice(&block[before..]);
                    block.truncate(before);
                    // A closed channel means the consumer failed; its error wins.
                    if !send(block_offset, std::mem::replace(&mut block, next)) {
                        return Ok(());
                    }
                    block_offset = offset;
                }
            }
            if !block.is_empty() {
                send(block_offset, block);
            }
            Ok(())
        },
    )
}

/// Converts raw bytes read sequentially (a pipe): the virtual size is whatever length arrives,
/// or exactly [`Options::expected_size`] when the source described one (reading stops with an
/// error as soon as the input goes past it).
pub fn convert_raw_stream(input: impl Read, output: Output, opts: &Options) -> Result<Report, Error> {
    let started = Instant::now();
    let count = Arc::new(AtomicU64::new(0));
    let expected = opts.expected_size;
    // One byte more than expected is enough to tell that the input is too long.
    let mut input = Counting {
        inner: input.take(expected.map_or(u64::MAX, |size| size.saturating_add(1))),
        count: count.clone(),
    };
    let sink = output.open(expected).map_err(Error::Write)?;
    let consumer = Consumer::new(sink, expected, opts.progress.clone(), count);
    let pool = consumer.pool.clone();
    run_pipeline(
        consumer,
        MAX_IN_FLIGHT_LARGE,
        ("raw", started, opts.sync, opts.checksum),
        |done, credits| {
            let mut offset = 0u64;
            let mut seq = 0u64;
            loop {
                let mut data = pool.take();
                data.resize(RANDOM_BLOCK, 0);
                let mut filled = 0;
                while filled < data.len() {
                    let n = read_some(&mut input, &mut data[filled..], offset + filled as u64)?;
                    if n == 0 {
                        break;
                    }
                    filled += n;
                }
                if let Some(declared) = expected
                    && offset + filled as u64 > declared
                {
                    return Err(Error::LongerThanDeclared { declared });
                }
                if filled == 0 {
                    return match expected {
                        Some(declared) if offset < declared => Err(Error::EndedEarly { offset, declared }),
                        _ => Ok(()),
                    };
                }
                data.truncate(filled);
                if credits.recv().is_err() || done.send(Msg::Block(Block { seq, offset, data })).is_err() {
                    return Ok(());
                }
                offset += filled as u64;
                seq += 1;
            }
        },
    )
}
