//! The conversion error: which step failed, with the byte offset (in the input, unless said
//! otherwise) or the format element at fault. Format-level detail is in the source chain.

use std::{io, path::PathBuf};

/// Why a conversion or inspection failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The input file could not be opened.
    #[error("cannot open {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Reading the input failed.
    #[error("failed to read input at byte offset {offset}")]
    Read {
        offset: u64,
        #[source]
        source: io::Error,
    },
    /// The image's virtual size is not the disk size its source describes.
    #[error("the image is {found} bytes, but its source describes a disk of {declared} bytes")]
    SizeMismatch { declared: u64, found: u64 },
    /// A raw input goes on past the size its source describes.
    #[error("input goes on past the {declared} bytes of the disk its source describes")]
    LongerThanDeclared { declared: u64 },
    /// A raw input ended before the size its source describes.
    #[error("input ends early at byte offset {offset}: its source describes a disk of {declared} bytes")]
    EndedEarly { offset: u64, declared: u64 },
    /// The input's first bytes are not of the format its name, the user or the OVF declares.
    #[error(
        "declared as {declared}, but its first bytes are those of {found} (a damaged or mislabelled file)"
    )]
    FormatMismatch {
        declared: &'static str,
        found: &'static str,
    },
    /// The input ended before the first byte of a header.
    #[error("input is empty")]
    Empty,
    /// The streamOptimized stream is invalid (the source names the offset).
    #[error("invalid streamOptimized VMDK")]
    Stream(#[source] vmdk::stream::Error),
    /// A grain did not inflate.
    #[error("grain record at byte offset {offset} (LBA {lba}) is corrupt")]
    Inflate {
        offset: u64,
        lba: u64,
        #[source]
        source: vmdk::grain::InflateError,
    },
    /// The VMDK could not be read.
    #[error("invalid VMDK")]
    Vmdk(#[source] vmdk::reader::Error),
    /// The qcow2 image could not be read.
    #[error("invalid qcow2 image")]
    Qcow2(#[source] qcow2::Error),
    /// The hosted sparse VMDK read from a pipe is invalid.
    #[error("invalid VMDK sparse extent")]
    VmdkForward(#[source] vmdk::forward::Error),
    /// The qcow2 image read from a pipe is invalid or uses an unsupported feature.
    #[error("invalid qcow2 image")]
    Qcow2Forward(#[source] qcow2::forward::Error),
    /// The image's layout needs random access: data stored before the tables that map it, or
    /// out of order beyond what the bounded window absorbs.
    #[error(
        "{format} image cannot be converted in one pass (layout problem at byte offset {offset} of the image); \
         convert it from a file instead (for an OVA: `vm-import convert FILE.ova DIR`)"
    )]
    NotOnePass {
        format: &'static str,
        offset: u64,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The format needs random access but the input is a pipe.
    #[error("{format} input needs random access; give a file, not a pipe or URL")]
    NeedsSeekable { format: &'static str },
    /// An OVA was given where a single disk image was expected.
    #[error("input is an OVA archive; convert it into a directory")]
    IsOva,
    /// The output file could not be staged or committed (it exists, it is the input, ...).
    #[error(transparent)]
    Output(crate::staged::Error),
    /// Writing the output failed.
    #[error("cannot write output")]
    Write(#[source] crate::writer::Error),
    /// The OVA's tar structure is invalid.
    #[error("invalid OVA archive")]
    Tar(#[source] ova::tar::Error),
    /// The OVF descriptor is invalid.
    #[error("invalid OVF descriptor")]
    Ovf(#[source] ova::ovf::Error),
    /// The manifest is invalid or a digest does not match.
    #[error("manifest check failed")]
    Manifest(#[source] ova::manifest::Error),
    /// The archive's members are not what the OVF promises.
    #[error("OVA member {member:?} {reason}")]
    OvaLayout { member: String, reason: &'static str },
    /// The archive lacks a member it must have.
    #[error("OVA archive has no {missing}")]
    OvaIncomplete { missing: &'static str },
    /// Converting or reading one OVA member failed.
    #[error("in OVA member {member:?}")]
    OvaMember {
        member: String,
        #[source]
        source: Box<Error>,
    },
    /// The caller's [`crate::archive::DiskTargets`] refused the archive or a disk; the message says why.
    #[error("{0}")]
    Rejected(String),
    /// A pipeline thread could not be started.
    #[error("cannot start a conversion thread")]
    Spawn(#[source] io::Error),
}

impl Error {
    /// Whether the input stopped before its end was proven (a body that ended early, cleanly or
    /// not): a transfer problem that fetching the input again may cure, not a bad image.
    pub fn is_cut_short(&self) -> bool {
        matches!(
            self,
            Error::Stream(vmdk::stream::Error::Incomplete { .. } | vmdk::stream::Error::Truncated { .. })
                | Error::EndedEarly { .. }
        )
    }
}

impl From<vmdk::forward::Error> for Error {
    fn from(e: vmdk::forward::Error) -> Self {
        match (e.needs_random_access(), e.offset()) {
            (true, Some(offset)) => Error::NotOnePass {
                format: "vmdk",
                offset,
                source: Box::new(e),
            },
            _ => Error::VmdkForward(e),
        }
    }
}

impl From<qcow2::forward::Error> for Error {
    fn from(e: qcow2::forward::Error) -> Self {
        match (e.needs_random_access(), e.offset()) {
            (true, Some(offset)) => Error::NotOnePass {
                format: "qcow2",
                offset,
                source: Box::new(e),
            },
            _ => Error::Qcow2Forward(e),
        }
    }
}
