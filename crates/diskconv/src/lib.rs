//! The conversion pipeline: a source of disk bytes, a decoder, and a sink (sparse raw, raw stream
//! or qcow2), with SHA-256 of the logical content and byte-level progress on the way.
//!
//! - [`source`]: format detection and the entry points [`convert_path`] (a file: every VMDK
//!   subformat, qcow2, raw) and [`convert_reader`] (a pipe or HTTP body: streamOptimized or
//!   monolithicSparse VMDK, qcow2, raw; the table-mapped ones decoded forward-only).
//! - [`pipeline`]: producer → inflate workers → ordered consumer, memory bounded by
//!   [`pipeline::MAX_IN_FLIGHT`] blocks; [`convert_stream_optimized`] is the one-pass path for
//!   vCenter exports and OVA entries.
//! - [`writer`]: where decoded blocks go: sparse RAW file, RAW stream, qcow2.
//! - [`checksum`]: SHA-256 or SHA-512 of the logical content, computed only when asked.
//! - [`inspect`]: what an image is, as a serialisable value.
//! - [`archive`]: OVA in one pass: OVF, manifest check, each disk converted as it streams by.
//! - [`staged`]: outputs the user named are written beside the target and renamed into place
//!   only when whole; an existing file is replaced only when asked.
//! - [`stream`] (feature `stream`): the one sink trait network exporters write to, and the one
//!   bridge from their async chunks to the decoders above.
//!
//! Synchronous code, except [`stream`], which runs each conversion on one blocking thread.

pub mod archive;
pub mod checksum;
mod error;
pub mod inspect;
pub mod pipeline;
pub mod source;
pub mod staged;
#[cfg(feature = "stream")]
pub mod stream;
pub mod writer;

pub use checksum::{Checksum, Digest};
pub use error::Error;
pub use pipeline::{Options, Progress, ProgressFn, Report, convert_stream_optimized};
pub use source::{InputFormat, convert_path, convert_reader, detect};
pub use writer::{ImageFormat, Output, StreamWriter};
