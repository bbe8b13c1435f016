//! Errors of the qcow2 reader and writer: one enum, variants named for the step that failed, with the
//! byte offsets (host = position in the qcow2 file, guest = position in the virtual disk) needed to find
//! the fault. `Display` never repeats the `source`; walk the chain to print it.

use std::io;

/// A qcow2 reader or writer failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The compressed cluster did not inflate to exactly one cluster.
    #[error(
        "compressed cluster for guest offset {guest_offset:#x} at host offset {host_offset:#x} is corrupt: {reason}"
    )]
    BadCompressedCluster {
        /// Guest offset of the cluster.
        guest_offset: u64,
        /// Host offset of the compressed bytes.
        host_offset: u64,
        /// What the inflater reported.
        reason: String,
    },

    /// The first four bytes are not `QFI\xfb`.
    #[error("not a qcow2 image: magic is {found:#010x}, expected 0x514649fb (\"QFI\\xfb\")")]
    BadMagic {
        /// The big-endian value found at offset 0.
        found: u32,
    },

    /// The image refers to a backing file; its content depends on another image.
    #[error(
        "qcow2 image has backing file {name:?}; only standalone images are supported \
         (flatten it first, e.g. `qemu-img convert -O qcow2 in.qcow2 flat.qcow2`)"
    )]
    BackingFile {
        /// The backing file name as stored (lossily decoded).
        name: String,
    },

    /// An L1 entry is malformed (unaligned or outside the file).
    #[error("L1 entry {index} ({entry:#018x}) is corrupt: {reason}")]
    CorruptL1Entry {
        /// Index in the L1 table.
        index: u64,
        /// The raw entry.
        entry: u64,
        /// Why it is rejected.
        reason: &'static str,
    },

    /// An L2 entry is malformed (unaligned, outside the file, or a zero flag in a v2 image).
    #[error("L2 entry for guest offset {guest_offset:#x} ({entry:#018x}) is corrupt: {reason}")]
    CorruptL2Entry {
        /// Guest offset of the cluster the entry maps.
        guest_offset: u64,
        /// The raw entry.
        entry: u64,
        /// Why it is rejected.
        reason: &'static str,
    },

    /// The image is encrypted.
    #[error("qcow2 image is encrypted (crypt_method {method}); encrypted images are not supported")]
    Encrypted {
        /// `crypt_method` from the header (1 = AES, 2 = LUKS).
        method: u32,
    },

    /// A header field has a value this implementation refuses.
    #[error("invalid qcow2 header: {field} = {value}: {reason}")]
    InvalidHeader {
        /// Header field name as in `docs/interop/qcow2.txt`.
        field: &'static str,
        /// The value found.
        value: u64,
        /// Why it is rejected.
        reason: &'static str,
    },

    /// The writer was asked for an image it cannot produce.
    #[error("cannot create qcow2 image: {field} = {value}: {reason}")]
    InvalidWriterConfig {
        /// The parameter.
        field: &'static str,
        /// The value given.
        value: u64,
        /// Why it is rejected.
        reason: &'static str,
    },

    /// A write did not start at or after the end of the previous one.
    #[error(
        "qcow2 writes must ascend: write at guest offset {offset:#x} starts before the previous write's end {previous_end:#x}"
    )]
    NotAscending {
        /// Start of the rejected write.
        offset: u64,
        /// End of the previous write.
        previous_end: u64,
    },

    /// A read or write reaches past the virtual disk size.
    #[error("{len} bytes at guest offset {offset:#x} reach past the virtual size {virtual_size}")]
    OutOfBounds {
        /// Start of the access.
        offset: u64,
        /// Length of the access.
        len: u64,
        /// Virtual disk size.
        virtual_size: u64,
    },

    /// Reading the file length (seek to end) failed.
    #[error("failed to determine the qcow2 file length")]
    ReadingFileLength {
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },

    /// Reading a data or compressed cluster failed.
    #[error("failed to read the cluster for guest offset {guest_offset:#x} at host offset {host_offset:#x}")]
    ReadingCluster {
        /// Guest offset of the cluster.
        guest_offset: u64,
        /// Host offset read from.
        host_offset: u64,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },

    /// Reading the fixed header or the backing file name failed.
    #[error("failed to read the qcow2 header at {offset:#x}")]
    ReadingHeader {
        /// Host offset of the failed read.
        offset: u64,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },

    /// Reading the L1 table failed.
    #[error("failed to read the L1 table at {offset:#x}")]
    ReadingL1Table {
        /// Host offset of the table.
        offset: u64,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },

    /// Reading an L2 table failed.
    #[error("failed to read the L2 table at {offset:#x}")]
    ReadingL2Table {
        /// Host offset of the table.
        offset: u64,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },

    /// The image needs a feature this implementation does not support.
    #[error("unsupported qcow2 image: {feature}")]
    Unsupported {
        /// Which feature, in words.
        feature: String,
    },

    /// The qcow2 version is neither 2 nor 3.
    #[error("unsupported qcow2 version {version} (supported: 2 and 3)")]
    UnsupportedVersion {
        /// The version found.
        version: u32,
    },

    /// Writing a data cluster failed.
    #[error(
        "failed to write the data cluster for guest offset {guest_offset:#x} at host offset {host_offset:#x}"
    )]
    WritingCluster {
        /// Guest offset of the cluster.
        guest_offset: u64,
        /// Host offset written to.
        host_offset: u64,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },

    /// Writing the header, or the zeroed space reserved for the tables, failed.
    #[error("failed to write the qcow2 header or reserved table space at {offset:#x}")]
    WritingHeader {
        /// Host offset of the failed write.
        offset: u64,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },

    /// Writing the L1 table failed.
    #[error("failed to write the L1 table at {offset:#x}")]
    WritingL1Table {
        /// Host offset of the table.
        offset: u64,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },

    /// Writing an L2 table failed.
    #[error("failed to write the L2 table at {offset:#x}")]
    WritingL2Table {
        /// Host offset of the table.
        offset: u64,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },

    /// Writing the refcount table or blocks failed.
    #[error("failed to write refcount metadata at {offset:#x}")]
    WritingRefcounts {
        /// Host offset of the failed write.
        offset: u64,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
}

/// Coarse classification of an [`Error`], for control flow (exit codes, retry decisions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The underlying reader or writer failed (or the file is truncated).
    Io,
    /// The bytes are not a valid qcow2 image.
    InvalidImage,
    /// A valid image using a feature we do not support (backing file, encryption, ...).
    Unsupported,
    /// The caller used the API wrongly (writes out of order or out of bounds, bad writer config).
    InvalidUsage,
}

impl Error {
    /// The class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::ReadingFileLength { .. }
            | Error::ReadingCluster { .. }
            | Error::ReadingHeader { .. }
            | Error::ReadingL1Table { .. }
            | Error::ReadingL2Table { .. }
            | Error::WritingCluster { .. }
            | Error::WritingHeader { .. }
            | Error::WritingL1Table { .. }
            | Error::WritingL2Table { .. }
            | Error::WritingRefcounts { .. } => ErrorKind::Io,
            Error::BadCompressedCluster { .. }
            | Error::BadMagic { .. }
            | Error::CorruptL1Entry { .. }
            | Error::CorruptL2Entry { .. }
            | Error::InvalidHeader { .. } => ErrorKind::InvalidImage,
            Error::BackingFile { .. }
            | Error::Encrypted { .. }
            | Error::Unsupported { .. }
            | Error::UnsupportedVersion { .. } => ErrorKind::Unsupported,
            Error::InvalidWriterConfig { .. } | Error::NotAscending { .. } | Error::OutOfBounds { .. } => {
                ErrorKind::InvalidUsage
            }
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
