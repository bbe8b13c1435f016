//! What a disk image is: format and subformat, virtual size, grain or cluster size, allocation and
//! the VMDK descriptor keys, as a serialisable [`ImageInfo`] (the JSON `vm-import inspect` prints).

use std::{
    collections::BTreeMap,
    fs::File,
    io::{Cursor, Read},
    path::Path,
};

use vmdk::{Descriptor, Event, StreamDecoder};

use crate::{
    Error,
    source::{InputFormat, SNIFF_LEN, detect, open_vmdk},
};

/// Facts about one disk image.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ImageInfo {
    /// `vmdk`, `qcow2`, `raw` or `ova`.
    pub format: String,
    /// VMDK `createType`, or qcow2 version (`v2`/`v3`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subformat: Option<String>,
    /// Virtual size in bytes.
    pub virtual_size: u64,
    /// Grain (VMDK) or cluster (qcow2) size in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grain_size: Option<u64>,
    /// Bytes of allocated data, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocated: Option<u64>,
    /// Number of VMDK extents.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extents: Option<usize>,
    /// `ddb.adapterType`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adapter_type: Option<String>,
    /// `ddb.virtualHWVersion`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub virtual_hw_version: Option<String>,
    /// Every `ddb.*` key of the descriptor.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub ddb: BTreeMap<String, String>,
}

fn apply_descriptor(info: &mut ImageInfo, d: &Descriptor) {
    info.subformat = Some(d.create_type.to_string());
    info.adapter_type = d.adapter_type().map(str::to_owned);
    info.virtual_hw_version = d.virtual_hw_version().map(str::to_owned);
    info.ddb = d.ddb.clone();
}

/// Inspects a file.
pub fn inspect_path(path: &Path) -> Result<ImageInfo, Error> {
    let open = || {
        File::open(path).map_err(|source| Error::Open {
            path: path.to_owned(),
            source,
        })
    };
    let mut head = Vec::with_capacity(SNIFF_LEN);
    open()?
        .take(SNIFF_LEN as u64)
        .read_to_end(&mut head)
        .map_err(|source| Error::Read { offset: 0, source })?;
    match detect(&head) {
        InputFormat::VmdkStream | InputFormat::VmdkSparse | InputFormat::VmdkDescriptor => {
            match open_vmdk(path) {
                Ok(mut reader) => {
                    let vi = reader.info();
                    let mut info = ImageInfo {
                        format: "vmdk".into(),
                        virtual_size: vi.capacity,
                        grain_size: vi.grain_size,
                        extents: Some(vi.extents),
                        allocated: Some(reader.allocated_bytes().map_err(Error::Vmdk)?),
                        ..ImageInfo::default()
                    };
                    if let Some(d) = reader.descriptor() {
                        apply_descriptor(&mut info, d);
                    }
                    Ok(info)
                }
                // A stream without footer or directory (cut short, or written by a tool that
                // puts neither): scan it instead.
                Err(Error::Vmdk(vmdk::reader::Error::FooterMissing { .. })) => inspect_stream(open()?),
                Err(e) => Err(e),
            }
        }
        InputFormat::Qcow2 => {
            let mut r = qcow2::Qcow2Reader::new(open()?).map_err(Error::Qcow2)?;
            let mut allocated = 0;
            for extent in r.extents() {
                let extent = extent.map_err(Error::Qcow2)?;
                if extent.kind == qcow2::ExtentKind::Data {
                    allocated += extent.len;
                }
            }
            Ok(ImageInfo {
                format: "qcow2".into(),
                subformat: Some(format!("v{}", r.header().version)),
                virtual_size: r.virtual_size(),
                grain_size: Some(r.cluster_size()),
                allocated: Some(allocated),
                ..ImageInfo::default()
            })
        }
        InputFormat::Ova => Err(Error::IsOva),
        InputFormat::Raw => {
            let meta = open()?
                .metadata()
                .map_err(|source| Error::Read { offset: 0, source })?;
            use std::os::unix::fs::MetadataExt;
            Ok(ImageInfo {
                format: "raw".into(),
                virtual_size: meta.len(),
                allocated: Some((meta.blocks() * 512).min(meta.len())),
                ..ImageInfo::default()
            })
        }
    }
}

/// Inspects a sequential input (stdin, URL): a streamOptimized VMDK is scanned to the end
/// without inflating; a hosted sparse VMDK or a qcow2 is walked forward-only to count its
/// allocated bytes; raw input is measured.
pub fn inspect_reader(mut input: impl Read) -> Result<ImageInfo, Error> {
    let mut head = Vec::with_capacity(SNIFF_LEN);
    (&mut input)
        .take(SNIFF_LEN as u64)
        .read_to_end(&mut head)
        .map_err(|source| Error::Read { offset: 0, source })?;
    match detect(&head) {
        InputFormat::VmdkStream => inspect_stream(Cursor::new(head).chain(input)),
        InputFormat::VmdkSparse => {
            let mut d =
                vmdk::SparseForward::new(Cursor::new(head).chain(input), vmdk::forward::DEFAULT_WINDOW)?;
            let h = *d.header();
            let mut info = ImageInfo {
                format: "vmdk".into(),
                virtual_size: h.capacity_bytes(),
                grain_size: Some(h.grain_bytes()),
                extents: Some(1),
                ..ImageInfo::default()
            };
            if let Some(descriptor) = d.descriptor() {
                apply_descriptor(&mut info, descriptor);
            }
            info.allocated = Some(count_allocated(|out| Ok(d.next_grain(out)?))?);
            Ok(info)
        }
        InputFormat::Qcow2 => {
            let mut d =
                qcow2::Qcow2Forward::new(Cursor::new(head).chain(input), qcow2::forward::DEFAULT_WINDOW)?;
            let (version, virtual_size, cluster) =
                (d.header().version, d.virtual_size(), d.header().cluster_size());
            let allocated = count_allocated(|out| Ok(d.next_cluster(out)?))?;
            Ok(ImageInfo {
                format: "qcow2".into(),
                subformat: Some(format!("v{version}")),
                virtual_size,
                grain_size: Some(cluster),
                allocated: Some(allocated),
                ..ImageInfo::default()
            })
        }
        InputFormat::Raw => {
            let rest = std::io::copy(&mut input, &mut std::io::sink()).map_err(|source| Error::Read {
                offset: head.len() as u64,
                source,
            })?;
            Ok(ImageInfo {
                format: "raw".into(),
                virtual_size: head.len() as u64 + rest,
                ..ImageInfo::default()
            })
        }
        InputFormat::Ova => Err(Error::IsOva),
        other => Err(Error::NeedsSeekable { format: other.name() }),
    }
}

/// Bytes of the runs a forward decoder yields (the runs themselves are dropped).
fn count_allocated(mut next: impl FnMut(&mut Vec<u8>) -> Result<Option<u64>, Error>) -> Result<u64, Error> {
    let mut buf = Vec::new();
    let mut allocated = 0u64;
    while next(&mut buf)?.is_some() {
        allocated += buf.len() as u64;
        buf.clear();
    }
    Ok(allocated)
}

fn inspect_stream(mut input: impl Read) -> Result<ImageInfo, Error> {
    let mut decoder = StreamDecoder::new();
    let mut info = ImageInfo {
        format: "vmdk".into(),
        ..ImageInfo::default()
    };
    let mut buf = vec![0u8; crate::pipeline::READ_CHUNK];
    let mut grains = 0u64;
    loop {
        match decoder.next_event().map_err(Error::Stream)? {
            Some(Event::Header(h)) => {
                info.virtual_size = h.capacity_bytes();
                info.grain_size = Some(h.grain_bytes());
            }
            Some(Event::Descriptor(d)) => apply_descriptor(&mut info, &d),
            Some(Event::Grain(_)) => grains += 1,
            Some(Event::EndOfStream) => break,
            Some(_) => {}
            None => {
                let n = input.read(&mut buf).map_err(|source| Error::Read {
                    offset: decoder.position(),
                    source,
                })?;
                if n == 0 {
                    decoder.finish().map_err(Error::Stream)?;
                    break;
                }
                decoder.feed(&buf[..n]);
            }
        }
    }
    info.allocated = info.grain_size.map(|g| (grains * g).min(info.virtual_size));
    info.extents = Some(1);
    Ok(info)
}
