//! VMDK, the VMware virtual disk family: descriptor text, hosted sparse extents (header, grain
//! directory and tables) and the streamOptimized stream that vCenter's `ExportVm` serves.
//!
//! Pure code: parsers take bytes or `Read + Seek`, never open files or sockets themselves.
//!
//! - [`descriptor`]: `createType`, extent lines, the disk database (`ddb.*`), from text.
//! - [`header`]: the 512-byte `SparseExtentHeader` as raw fields and as a validated value.
//! - [`grain`]: compressed grain records and the zlib inflater.
//! - [`stream`]: [`StreamDecoder`], a sans-IO decoder for streamOptimized bytes of unknown length
//!   that yields grains with their LBA; it needs no seeking, and reads the footer or tables only
//!   to prove the stream's end.
//! - [`stream_end`]: what proves that a stream ended where its writer ended it (footer and EOS,
//!   or the grain tables before the first grain all satisfied): a cut stream is never a disk.
//! - [`forward`]: [`SparseForward`], a hosted sparse extent (monolithicSparse) decoded from a
//!   forward-only `Read`: directory and tables first, then grains in ascending logical order.
//! - [`reader`]: [`VmdkReader`], random access over every hosted layout (sparse, flat, split,
//!   vmfs), opening extents through a caller's callback.
//!
//! Spec references: VMware "Virtual Disk Format 5.0" technote; qemu `block/vmdk.c` for the
//! quirks of qemu-written files (no EOS marker, metadata before `overHead`).

pub mod descriptor;
pub mod forward;
pub mod grain;
pub mod header;
pub mod reader;
pub mod stream;
pub mod stream_end;

pub use descriptor::{CreateType, Descriptor};
pub use forward::SparseForward;
pub use grain::GrainInflater;
pub use header::SparseHeader;
pub use reader::{Segment, VmdkReader};
pub use stream::{Event, StreamDecoder};

/// VMDK sizes and offsets count 512-byte sectors, whatever the guest's logical sector size.
pub const SECTOR_SIZE: u64 = 512;
