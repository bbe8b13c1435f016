//! The VMDK descriptor: the text that names the disk's `createType`, lists its extents and carries
//! the disk database (`ddb.*` keys such as `adapterType`, `virtualHWVersion` and the geometry).
//!
//! Parsed from text only; this module never opens the extent files it names. Extent file names
//! are checked so that a descriptor cannot point outside the directory it lives in.

use std::{collections::BTreeMap, fmt};

use crate::SECTOR_SIZE;

/// Largest descriptor accepted, embedded or standalone. qemu caps its read at 1 MiB too; real
/// descriptors are well under 4 KiB, so anything larger is not a descriptor.
pub const MAX_DESCRIPTOR_BYTES: usize = 1 << 20;

/// Most extents one descriptor may list. A 62 TiB `twoGbMaxExtentSparse` disk needs ~31 000; more
/// than this is hostile input meant to exhaust memory or file handles.
pub const MAX_EXTENTS: usize = 65_536;

/// Longest extent file name accepted (the limit qemu's `sscanf` pattern also uses).
pub const MAX_FILE_NAME_LEN: usize = 511;

/// Why a descriptor was rejected; `line` is 1-based.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The text is larger than [`MAX_DESCRIPTOR_BYTES`].
    #[error("descriptor is {len} bytes, more than the {MAX_DESCRIPTOR_BYTES}-byte limit")]
    TooLarge { len: usize },
    /// The bytes are not UTF-8 text.
    #[error("descriptor is not UTF-8 text (invalid byte at offset {offset})")]
    NotText { offset: usize },
    /// A line is neither a comment, a `key=value` pair nor an extent line.
    #[error("line {line}: not a key=value pair or an extent line: {text:?}")]
    UnrecognisedLine { line: usize, text: String },
    /// An extent line is malformed.
    #[error("line {line}: bad extent line ({reason}): {text:?}")]
    BadExtent {
        line: usize,
        reason: &'static str,
        text: String,
    },
    /// An extent file name would leave the descriptor's directory or is otherwise unusable.
    #[error("line {line}: extent file {file:?} is not a plain name inside the descriptor's directory")]
    ExtentEscapesDirectory { line: usize, file: String },
    /// More than [`MAX_EXTENTS`] extent lines.
    #[error("line {line}: more than {MAX_EXTENTS} extents")]
    TooManyExtents { line: usize },
    /// A header value that must be a number is not.
    #[error("line {line}: {key} value {value:?} is not a valid number")]
    BadNumber {
        line: usize,
        key: &'static str,
        value: String,
    },
    /// No `createType` key.
    #[error("descriptor has no createType")]
    MissingCreateType,
    /// The extents' sizes add up to more than `u64` bytes.
    #[error("extent sizes overflow")]
    CapacityOverflow,
}

/// `createType`: which file family the descriptor belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateType {
    /// One hosted sparse file with the descriptor embedded.
    MonolithicSparse,
    /// A descriptor plus one raw `-flat` file.
    MonolithicFlat,
    /// A descriptor plus hosted sparse extents of at most 2 GiB each.
    TwoGbMaxExtentSparse,
    /// A descriptor plus raw extents of at most 2 GiB each.
    TwoGbMaxExtentFlat,
    /// One compressed sparse file with markers (what `ExportVm` serves).
    StreamOptimized,
    /// ESXi: a descriptor plus a raw `-flat` file on VMFS.
    Vmfs,
    /// ESXi redo log (COWD delta).
    VmfsSparse,
    /// ESXi space-efficient sparse delta.
    SeSparse,
    /// Anything else, kept verbatim (`vmfsRDM`, `fullDevice`, `custom`, ...).
    Other(String),
}

impl CreateType {
    fn from_value(value: &str) -> Self {
        match value {
            "monolithicSparse" => Self::MonolithicSparse,
            "monolithicFlat" => Self::MonolithicFlat,
            "twoGbMaxExtentSparse" => Self::TwoGbMaxExtentSparse,
            "twoGbMaxExtentFlat" => Self::TwoGbMaxExtentFlat,
            "streamOptimized" => Self::StreamOptimized,
            "vmfs" => Self::Vmfs,
            "vmfsSparse" => Self::VmfsSparse,
            "seSparse" => Self::SeSparse,
            other => Self::Other(other.to_owned()),
        }
    }

    /// The name as written in a descriptor.
    pub fn as_str(&self) -> &str {
        match self {
            Self::MonolithicSparse => "monolithicSparse",
            Self::MonolithicFlat => "monolithicFlat",
            Self::TwoGbMaxExtentSparse => "twoGbMaxExtentSparse",
            Self::TwoGbMaxExtentFlat => "twoGbMaxExtentFlat",
            Self::StreamOptimized => "streamOptimized",
            Self::Vmfs => "vmfs",
            Self::VmfsSparse => "vmfsSparse",
            Self::SeSparse => "seSparse",
            Self::Other(s) => s,
        }
    }
}

impl fmt::Display for CreateType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Extent access mode. qemu ignores non-`RW` extents; we keep them and let readers decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `RW`
    ReadWrite,
    /// `RDONLY`
    ReadOnly,
    /// `NOACCESS`
    NoAccess,
}

/// How an extent stores its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtentKind {
    /// Raw bytes at `offset` in the file.
    Flat,
    /// A hosted sparse file (header, grain directory, grain tables).
    Sparse,
    /// Reads as zeros; no file.
    Zero,
    /// Raw bytes on VMFS (same layout as flat).
    Vmfs,
    /// COWD redo log.
    VmfsSparse,
    /// Space-efficient sparse delta.
    SeSparse,
    /// Raw device mapping (virtual).
    VmfsRdm,
    /// Raw device mapping (physical).
    VmfsRaw,
}

impl ExtentKind {
    fn from_token(token: &str) -> Option<Self> {
        Some(match token {
            "FLAT" => Self::Flat,
            "SPARSE" => Self::Sparse,
            "ZERO" => Self::Zero,
            "VMFS" => Self::Vmfs,
            "VMFSSPARSE" => Self::VmfsSparse,
            "SESPARSE" => Self::SeSparse,
            "VMFSRDM" => Self::VmfsRdm,
            "VMFSRAW" => Self::VmfsRaw,
            _ => return None,
        })
    }
}

/// One extent line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extent {
    /// Access mode.
    pub access: Access,
    /// Size in 512-byte sectors.
    pub sectors: u64,
    /// Storage kind.
    pub kind: ExtentKind,
    /// File name relative to the descriptor's directory; `None` for `ZERO` extents.
    pub file: Option<String>,
    /// Start of the extent's data inside `file`, in sectors (flat extents only; 0 otherwise).
    pub offset_sectors: u64,
}

/// Disk geometry from the DDB (informational: raw output never needs it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// `ddb.geometry.cylinders`
    pub cylinders: u64,
    /// `ddb.geometry.heads`
    pub heads: u64,
    /// `ddb.geometry.sectors`
    pub sectors: u64,
}

/// A parsed descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// `version` (1, 2 or 3); 1 when absent.
    pub version: u32,
    /// `CID`, the content id.
    pub cid: Option<u32>,
    /// `parentCID`; `0xffffffff` means no parent.
    pub parent_cid: Option<u32>,
    /// `createType`.
    pub create_type: CreateType,
    /// Extents in disk order.
    pub extents: Vec<Extent>,
    /// Other header keys (`encoding`, `parentFileNameHint`, ...), values unquoted.
    pub header: BTreeMap<String, String>,
    /// Disk database, keyed without the `ddb.` prefix (`adapterType`, `geometry.heads`, ...).
    pub ddb: BTreeMap<String, String>,
}

impl Descriptor {
    /// Parses descriptor bytes, as read from a standalone file or the embedded area of a sparse
    /// extent (trailing NUL padding is ignored).
    pub fn parse_bytes(bytes: &[u8]) -> Result<Self, Error> {
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        let text = std::str::from_utf8(&bytes[..end]).map_err(|e| Error::NotText {
            offset: e.valid_up_to(),
        })?;
        Self::parse(text)
    }

    /// Parses descriptor text.
    pub fn parse(text: &str) -> Result<Self, Error> {
        if text.len() > MAX_DESCRIPTOR_BYTES {
            return Err(Error::TooLarge { len: text.len() });
        }
        let mut version = 1;
        let mut cid = None;
        let mut parent_cid = None;
        let mut create_type = None;
        let mut extents = Vec::new();
        let mut header = BTreeMap::new();
        let mut ddb = BTreeMap::new();
        for (index, raw_line) in text.lines().enumerate() {
            let line_no = index + 1;
            let line = raw_line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if starts_with_access(line) {
                if extents.len() >= MAX_EXTENTS {
                    return Err(Error::TooManyExtents { line: line_no });
                }
                extents.push(parse_extent(line, line_no)?);
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(Error::UnrecognisedLine {
                    line: line_no,
                    text: line.to_owned(),
                });
            };
            let key = key.trim();
            let value = unquote(value.trim());
            if let Some(ddb_key) = key.strip_prefix("ddb.") {
                ddb.insert(ddb_key.to_owned(), value.to_owned());
                continue;
            }
            match key {
                "version" => version = parse_number(value, line_no, "version", 10)?,
                "CID" => cid = Some(parse_number(value, line_no, "CID", 16)?),
                "parentCID" => parent_cid = Some(parse_number(value, line_no, "parentCID", 16)?),
                "createType" => create_type = Some(CreateType::from_value(value)),
                _ => {
                    header.insert(key.to_owned(), value.to_owned());
                }
            }
        }
        let descriptor = Self {
            version,
            cid,
            parent_cid,
            create_type: create_type.ok_or(Error::MissingCreateType)?,
            extents,
            header,
            ddb,
        };
        descriptor.capacity_sectors()?;
        Ok(descriptor)
    }

    /// Sum of the extent sizes, in sectors.
    pub fn capacity_sectors(&self) -> Result<u64, Error> {
        let mut total: u64 = 0;
        for extent in &self.extents {
            total = total.checked_add(extent.sectors).ok_or(Error::CapacityOverflow)?;
        }
        total.checked_mul(SECTOR_SIZE).ok_or(Error::CapacityOverflow)?;
        Ok(total)
    }

    /// `ddb.adapterType` (`ide`, `buslogic`, `lsilogic`, `legacyESX`, `pvscsi`, ...).
    pub fn adapter_type(&self) -> Option<&str> {
        self.ddb.get("adapterType").map(String::as_str)
    }

    /// `ddb.virtualHWVersion`.
    pub fn virtual_hw_version(&self) -> Option<&str> {
        self.ddb.get("virtualHWVersion").map(String::as_str)
    }

    /// `ddb.thinProvisioned == "1"`.
    pub fn thin_provisioned(&self) -> bool {
        self.ddb.get("thinProvisioned").is_some_and(|v| v == "1")
    }

    /// The DDB geometry, when all three keys are present and numeric.
    pub fn geometry(&self) -> Option<Geometry> {
        let get = |k: &str| self.ddb.get(k).and_then(|v| v.parse::<u64>().ok());
        Some(Geometry {
            cylinders: get("geometry.cylinders")?,
            heads: get("geometry.heads")?,
            sectors: get("geometry.sectors")?,
        })
    }
}

fn starts_with_access(line: &str) -> bool {
    let first = line.split_ascii_whitespace().next().unwrap_or("");
    matches!(first, "RW" | "RDONLY" | "NOACCESS")
}

fn unquote(value: &str) -> &str {
    value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value)
}

fn parse_number(value: &str, line: usize, key: &'static str, radix: u32) -> Result<u32, Error> {
    u32::from_str_radix(value, radix).map_err(|_| Error::BadNumber {
        line,
        key,
        value: value.to_owned(),
    })
}

fn parse_extent(line: &str, line_no: usize) -> Result<Extent, Error> {
    let bad = |reason| Error::BadExtent {
        line: line_no,
        reason,
        text: line.to_owned(),
    };
    let (access_tok, rest) = split_token(line);
    let (sectors_tok, rest) = split_token(rest);
    let (kind_tok, rest) = split_token(rest);
    let access = match access_tok {
        "RW" => Access::ReadWrite,
        "RDONLY" => Access::ReadOnly,
        _ => Access::NoAccess,
    };
    let sectors: u64 = sectors_tok
        .parse()
        .map_err(|_| bad("size is not a sector count"))?;
    let kind = ExtentKind::from_token(kind_tok).ok_or_else(|| bad("unknown extent type"))?;
    let rest = rest.trim_start();
    if kind == ExtentKind::Zero && rest.is_empty() {
        return Ok(Extent {
            access,
            sectors,
            kind,
            file: None,
            offset_sectors: 0,
        });
    }
    let quoted = rest
        .strip_prefix('"')
        .ok_or_else(|| bad("file name is not quoted"))?;
    let (file, tail) = quoted
        .split_once('"')
        .ok_or_else(|| bad("file name has no closing quote"))?;
    check_file_name(file).map_err(|()| Error::ExtentEscapesDirectory {
        line: line_no,
        file: file.to_owned(),
    })?;
    let (offset_tok, tail) = split_token(tail.trim_start());
    let offset_sectors = if offset_tok.is_empty() {
        0
    } else {
        offset_tok
            .parse()
            .map_err(|_| bad("offset is not a sector count"))?
    };
    if !tail.trim().is_empty() {
        return Err(bad("unexpected text after the offset"));
    }
    Ok(Extent {
        access,
        sectors,
        kind,
        file: Some(file.to_owned()),
        offset_sectors,
    })
}

fn split_token(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find(|c: char| c.is_ascii_whitespace()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, ""),
    }
}

/// Extent names must stay inside the descriptor's directory: a descriptor from an untrusted
/// source (an OVA, an upload) must not make us read `/etc/shadow` or `../other-tenant/disk`.
fn check_file_name(file: &str) -> Result<(), ()> {
    let escapes = file.is_empty()
        || file.len() > MAX_FILE_NAME_LEN
        || file.starts_with('/')
        || file.starts_with('\\')
        || file.contains('\0')
        || file
            .split(['/', '\\'])
            .any(|part| part == ".." || part.is_empty())
        || file.as_bytes().get(1) == Some(&b':');
    if escapes { Err(()) } else { Ok(()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QEMU_FLAT: &str = "# Disk DescriptorFile\nversion=1\nCID=52a3f1b2\nparentCID=ffffffff\n\
        createType=\"monolithicFlat\"\n\n# Extent description\nRW 2048 FLAT \"disk-flat.vmdk\" 0\n\n\
        # The Disk Data Base\n#DDB\n\nddb.virtualHWVersion = \"4\"\nddb.geometry.cylinders = \"2\"\n\
        ddb.geometry.heads = \"16\"\nddb.geometry.sectors = \"63\"\nddb.adapterType = \"ide\"\n";

    #[test]
    fn parses_qemu_monolithic_flat_descriptor() {
        let d = Descriptor::parse(QEMU_FLAT).unwrap();
        assert_eq!(d.create_type, CreateType::MonolithicFlat);
        assert_eq!(d.cid, Some(0x52a3_f1b2));
        assert_eq!(d.parent_cid, Some(0xffff_ffff));
        assert_eq!(
            d.extents,
            vec![Extent {
                access: Access::ReadWrite,
                sectors: 2048,
                kind: ExtentKind::Flat,
                file: Some("disk-flat.vmdk".into()),
                offset_sectors: 0
            }]
        );
        assert_eq!(d.adapter_type(), Some("ide"));
        assert_eq!(d.virtual_hw_version(), Some("4"));
        assert_eq!(
            d.geometry(),
            Some(Geometry {
                cylinders: 2,
                heads: 16,
                sectors: 63
            })
        );
        assert_eq!(d.capacity_sectors(), Ok(2048));
    }

    #[test]
    fn parses_file_names_with_spaces_and_vmfs_without_offset() {
        let d = Descriptor::parse("createType=\"vmfs\"\r\nRW 8 VMFS \"my disk-flat.vmdk\"\r\n").unwrap();
        assert_eq!(d.extents[0].file.as_deref(), Some("my disk-flat.vmdk"));
        assert_eq!(d.extents[0].kind, ExtentKind::Vmfs);
    }

    #[test]
    fn parses_zero_extent_without_file() {
        let d = Descriptor::parse("createType=\"custom\"\nRW 16 ZERO\n").unwrap();
        assert_eq!(d.extents[0].file, None);
        assert_eq!(d.create_type, CreateType::Other("custom".into()));
    }

    #[test]
    fn rejects_extent_escaping_directory() {
        let err = Descriptor::parse("createType=\"vmfs\"\nRW 8 VMFS \"../x-flat.vmdk\"\n").unwrap_err();
        assert_eq!(
            err,
            Error::ExtentEscapesDirectory {
                line: 2,
                file: "../x-flat.vmdk".into()
            }
        );
    }

    #[test]
    fn rejects_absolute_extent_path() {
        let err = Descriptor::parse("createType=\"vmfs\"\nRW 8 VMFS \"/etc/shadow\"\n").unwrap_err();
        assert!(matches!(err, Error::ExtentEscapesDirectory { line: 2, .. }));
    }

    #[test]
    fn rejects_nested_parent_component() {
        let err = Descriptor::parse("createType=\"vmfs\"\nRW 8 FLAT \"a/../../b\" 0\n").unwrap_err();
        assert!(matches!(err, Error::ExtentEscapesDirectory { .. }));
    }

    #[test]
    fn rejects_unknown_extent_type() {
        let err = Descriptor::parse("createType=\"vmfs\"\nRW 8 BOGUS \"a\"\n").unwrap_err();
        assert!(matches!(
            err,
            Error::BadExtent {
                line: 2,
                reason: "unknown extent type",
                ..
            }
        ));
    }

    #[test]
    fn rejects_garbage_line() {
        let err = Descriptor::parse("createType=\"vmfs\"\nhello world\n").unwrap_err();
        assert!(matches!(err, Error::UnrecognisedLine { line: 2, .. }));
    }

    #[test]
    fn rejects_missing_create_type() {
        assert_eq!(Descriptor::parse("version=1\n"), Err(Error::MissingCreateType));
    }

    #[test]
    fn rejects_capacity_overflow() {
        let text = format!(
            "createType=\"vmfs\"\nRW {} FLAT \"a\" 0\nRW 1 FLAT \"b\" 0\n",
            u64::MAX
        );
        assert_eq!(Descriptor::parse(&text), Err(Error::CapacityOverflow));
    }

    #[test]
    fn rejects_oversized_text() {
        let text = "#".repeat(MAX_DESCRIPTOR_BYTES + 1);
        assert!(matches!(Descriptor::parse(&text), Err(Error::TooLarge { .. })));
    }

    #[test]
    fn parse_bytes_stops_at_nul_padding() {
        let mut bytes = b"createType=\"monolithicSparse\"\nRW 8 SPARSE \"x.vmdk\"\n".to_vec();
        bytes.resize(1024, 0);
        let d = Descriptor::parse_bytes(&bytes).unwrap();
        assert_eq!(d.create_type, CreateType::MonolithicSparse);
    }

    #[test]
    fn parse_bytes_rejects_binary() {
        assert_eq!(
            Descriptor::parse_bytes(&[b'a', 0xff, b'b']),
            Err(Error::NotText { offset: 1 })
        );
    }
}
