//! qcow2 (QEMU copy-on-write, versions 2 and 3): a reader for input images and a one-pass streaming
//! writer for output images. Pure code over `Read + Seek` / `Write + Seek`; no async runtime.
//!
//! Format reference: qemu `docs/interop/qcow2.txt`. Integers on disk are big-endian.
//!
//! ```text
//! guest offset ──► L1 entry ──► L2 table ──► L2 entry ──► data cluster | compressed bytes | zero | hole
//!                  (header.l1_table_offset)  (one cluster)
//! ```
//!
//! * [`Qcow2Reader`] reads the active layer of a standalone image: plain, zero and compressed
//!   (deflate) clusters, and extended L2 entries (32 subclusters per cluster). It rejects backing
//!   files, encryption, external data files and zstd with an [`Error`] that says so. [`Qcow2Reader::extents`] /
//!   [`Qcow2Reader::extent_at`] report data / zero / unallocated runs so a converter skips holes.
//! * [`Qcow2Forward`] reads the same images from a forward-only `Read` (a pipe, an HTTP body, an OVA
//!   member): header, L1, then L2 tables and clusters as the stream passes them, clusters out in
//!   ascending guest order; a layout that needs random access is a clear error naming the offset.
//! * [`Qcow2Writer`] takes data in ascending guest order and writes a v3 image with 16-bit refcounts
//!   that `qemu-img check` accepts; all-zero clusters are left unallocated. Memory is one L2 table, one
//!   cluster buffer and the L1 table (16 KiB per TiB at 64 KiB clusters), whatever the disk size.
//!
//! Every size and offset read from the file is checked against the file length and named limits
//! ([`MAX_L1_ENTRIES`], [`MAX_VIRTUAL_SIZE`]) before it is used, so hostile images give an error, not
//! a panic or a huge allocation.
//!
//! # Example
//!
//! ```
//! use std::io::Cursor;
//!
//! // Write a 1 MiB disk with one non-zero cluster at 128 KiB.
//! let mut writer = qcow2::Qcow2Writer::new(Cursor::new(Vec::new()), 1 << 20)?;
//! writer.write_at(128 << 10, &[0xab; 64 << 10])?;
//! let image = writer.finish()?.into_inner();
//!
//! // Read it back, skipping holes.
//! let mut reader = qcow2::Qcow2Reader::new(Cursor::new(image))?;
//! assert_eq!(reader.virtual_size(), 1 << 20);
//! let extents: Vec<_> = reader.extents().collect::<Result<_, _>>()?;
//! assert_eq!(extents[1], qcow2::Extent { offset: 128 << 10, len: 64 << 10, kind: qcow2::ExtentKind::Data });
//! let mut buf = [0u8; 4];
//! reader.read_at((128 << 10) - 2, &mut buf)?;
//! assert_eq!(buf, [0, 0, 0xab, 0xab]);
//! # Ok::<(), qcow2::Error>(())
//! ```

mod error;
pub mod forward;
mod header;
mod reader;
mod writer;

pub use error::{Error, ErrorKind, Result};
pub use forward::Qcow2Forward;
pub use header::{Header, MAX_CLUSTER_BITS, MAX_L1_ENTRIES, MAX_VIRTUAL_SIZE, MIN_CLUSTER_BITS, RawHeader};
pub use reader::{Extent, ExtentKind, Extents, Qcow2Reader};
pub use writer::{DEFAULT_CLUSTER_SIZE, Qcow2Writer};
