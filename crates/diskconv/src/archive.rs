//! OVA archives in one forward pass: the `.ovf` (which must come first, as the OVF spec requires),
//! the `.mf` manifest, then each disk member converted while it streams by — no temporary files,
//! so an OVA can come from a pipe or an HTTP body. Every member the manifest lists is hashed on
//! the way and checked; a mismatch is an error, a missing manifest a warning (or an error when
//! required).

use std::{
    collections::BTreeSet,
    io::{self, Cursor, Read},
    path::{Path, PathBuf},
};

use ova::{Algorithm, EntryKind, Manifest, TarWalker, VmDescription, manifest::Hasher};

use crate::{
    Error,
    inspect::{self, ImageInfo},
    pipeline::{Options, Report},
    sink::Output,
    source::{self, InputFormat},
};

/// Output format for each disk of an OVA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    /// `disk-<N>.raw`, sparse.
    Raw,
    /// `disk-<N>.qcow2`.
    Qcow2,
}

/// What the manifest check found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ManifestCheck {
    /// Every listed member was present and matched.
    Verified {
        /// Members checked.
        files: Vec<String>,
    },
    /// The archive has no manifest.
    Missing,
    /// The manifest came after some of the members it lists, which were not checked.
    Partial {
        /// Members checked.
        files: Vec<String>,
        /// Members listed but not checked.
        unverified: Vec<String>,
    },
}

/// One converted (or inspected) disk of an OVA.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OvaDisk {
    /// Position in the OVF disk list (0-based).
    pub index: usize,
    /// The archive member.
    pub member: String,
    /// The output file (conversion only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<PathBuf>,
    /// Conversion report (conversion only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<Report>,
    /// Image facts (inspection only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageInfo>,
}

/// The result of walking an OVA.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OvaResult {
    /// The VM the `.ovf` describes.
    pub vm: VmDescription,
    /// Disks with a file, in OVF order.
    pub disks: Vec<OvaDisk>,
    /// Manifest check.
    pub manifest: ManifestCheck,
}

enum Mode<'a> {
    Convert {
        dir: &'a Path,
        format: DiskFormat,
        opts: &'a Options,
        /// Every output file opened so far, to remove if the archive fails.
        created: Vec<PathBuf>,
    },
    Inspect,
}

/// Converts every disk of an OVA read from `input` into `dir/disk-<N>.<raw|qcow2>` (N = position
/// in the OVF disk list). On failure no `disk-<N>` file is left behind: a disk converted before a
/// later member (or the manifest check) failed must not pass for an imported one.
pub fn convert_ova(
    input: impl Read,
    dir: &Path,
    format: DiskFormat,
    opts: &Options,
    require_manifest: bool,
) -> Result<OvaResult, Error> {
    let mut mode = Mode::Convert {
        dir,
        format,
        opts,
        created: Vec::new(),
    };
    let result = walk(input, &mut mode, require_manifest);
    if result.is_err()
        && let Mode::Convert { created, .. } = &mode
    {
        for path in created {
            // Best effort: the conversion error is the one to report.
            let _ = std::fs::remove_file(path);
        }
    }
    result
}

/// Describes an OVA: the VM, each disk image (scanned, not converted) and the manifest check.
pub fn inspect_ova(input: impl Read, require_manifest: bool) -> Result<OvaResult, Error> {
    walk(input, &mut Mode::Inspect, require_manifest)
}

fn member_err(member: &str, source: Error) -> Error {
    Error::OvaMember {
        member: member.to_owned(),
        source: Box::new(source),
    }
}

fn walk(input: impl Read, mode: &mut Mode<'_>, require_manifest: bool) -> Result<OvaResult, Error> {
    let mut walker = TarWalker::new(input);
    let mut vm: Option<VmDescription> = None;
    let mut ovf: Option<(String, Vec<u8>)> = None;
    let mut manifest: Option<Manifest> = None;
    let mut disks = Vec::new();
    let mut checked = Vec::new();
    let mut seen = BTreeSet::new();
    while let Some(mut entry) = walker.next_entry().map_err(Error::Tar)? {
        if entry.kind() != EntryKind::File {
            continue;
        }
        let name = entry.name().to_owned();
        seen.insert(name.clone());
        if name.ends_with(".ovf") && vm.is_none() {
            let mut bytes = Vec::new();
            (&mut entry)
                .take(ova::ovf::MAX_OVF_SIZE as u64 + 1)
                .read_to_end(&mut bytes)
                .map_err(|source| member_err(&name, Error::Read { offset: 0, source }))?;
            let parsed =
                ova::ovf::read_envelope(Cursor::new(&bytes)).map_err(|e| member_err(&name, Error::Ovf(e)))?;
            vm = Some(parsed);
            ovf = Some((name, bytes));
            continue;
        }
        if name.ends_with(".mf") && manifest.is_none() {
            let m = Manifest::read_from(&mut entry).map_err(|e| member_err(&name, Error::Manifest(e)))?;
            if let Some((ovf_name, bytes)) = &ovf
                && let Some(listed) = m.get(ovf_name)
            {
                let mut h = Hasher::new(listed.algorithm);
                h.update(bytes);
                m.verify(ovf_name, listed.algorithm, &h.finalize())
                    .map_err(Error::Manifest)?;
                checked.push(ovf_name.clone());
            }
            manifest = Some(m);
            continue;
        }
        let Some(vm) = vm.as_ref() else {
            return Err(Error::OvaLayout {
                member: name,
                reason: "comes before the .ovf descriptor",
            });
        };
        let disk = vm.disks.iter().enumerate().find(|(_, d)| {
            d.file
                .as_ref()
                .is_some_and(|f| f.href == name && f.chunk_size.is_none())
        });
        let algorithm: Option<Algorithm> = manifest.as_ref().and_then(|m| m.get(&name)).map(|e| e.algorithm);
        let mut hashed = HashedMember {
            inner: &mut entry,
            hasher: algorithm.map(Hasher::new),
        };
        if let Some((index, d)) = disk {
            let gzip = d.file.as_ref().is_some_and(|f| f.compression.is_some());
            let result = convert_member(&mut hashed, gzip, index, mode).map_err(|e| member_err(&name, e))?;
            disks.push(OvaDisk {
                index,
                member: name.clone(),
                ..result
            });
        }
        // Whatever the decoder left unread (padding after EOS, non-disk members) still counts.
        io::copy(&mut hashed, &mut io::sink())
            .map_err(|source| member_err(&name, Error::Read { offset: 0, source }))?;
        if let (Some(m), Some(hasher)) = (&manifest, hashed.hasher.take()) {
            let algorithm = hasher.algorithm();
            m.verify(&name, algorithm, &hasher.finalize())
                .map_err(Error::Manifest)?;
            checked.push(name.clone());
        }
    }
    let vm = vm.ok_or(Error::OvaIncomplete {
        missing: "an .ovf descriptor",
    })?;
    for (index, disk) in vm.disks.iter().enumerate() {
        if let Some(file) = &disk.file
            && !disks.iter().any(|d: &OvaDisk| d.index == index)
        {
            let reason = if file.chunk_size.is_some() {
                "is split into chunks (ovf:chunkSize), which is not supported"
            } else {
                "is referenced by the .ovf but missing from the archive"
            };
            return Err(Error::OvaLayout {
                member: file.href.clone(),
                reason,
            });
        }
    }
    let manifest = match manifest {
        Some(m) => {
            if let Some(missing) = m.entries.iter().find(|e| !seen.contains(&e.file)) {
                return Err(Error::OvaLayout {
                    member: missing.file.clone(),
                    reason: "is listed in the manifest but missing",
                });
            }
            // Members that came before the manifest (against the OVF packaging rules) streamed
            // by unhashed: a warning, or an error when the manifest is required.
            let unverified: Vec<String> = m
                .entries
                .iter()
                .filter(|e| !checked.contains(&e.file))
                .map(|e| e.file.clone())
                .collect();
            match unverified.first() {
                None => ManifestCheck::Verified { files: checked },
                Some(first) if require_manifest => {
                    return Err(Error::OvaLayout {
                        member: first.clone(),
                        reason: "precedes the manifest, so its digest could not be checked in one pass",
                    });
                }
                Some(_) => ManifestCheck::Partial {
                    files: checked,
                    unverified,
                },
            }
        }
        None if require_manifest => {
            return Err(Error::OvaIncomplete {
                missing: "a manifest (.mf), and --require-manifest is set",
            });
        }
        None => ManifestCheck::Missing,
    };
    Ok(OvaResult { vm, disks, manifest })
}

/// Hashes what passes through when the manifest lists the member.
struct HashedMember<R> {
    inner: R,
    hasher: Option<Hasher>,
}

impl<R: Read> Read for HashedMember<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        Ok(n)
    }
}

fn convert_member(
    member: &mut impl Read,
    gzip: bool,
    index: usize,
    mode: &mut Mode<'_>,
) -> Result<OvaDisk, Error> {
    if gzip {
        let mut decoder = flate2::read::GzDecoder::new(member);
        return convert_disk(&mut decoder, index, mode);
    }
    convert_disk(member, index, mode)
}

fn convert_disk(input: &mut impl Read, index: usize, mode: &mut Mode<'_>) -> Result<OvaDisk, Error> {
    let empty = OvaDisk {
        index,
        member: String::new(),
        output: None,
        report: None,
        image: None,
    };
    match mode {
        Mode::Convert {
            dir,
            format,
            opts,
            created,
        } => {
            let (ext, make): (&str, fn(PathBuf) -> Output) = match format {
                DiskFormat::Raw => ("raw", Output::RawFile),
                DiskFormat::Qcow2 => ("qcow2", Output::Qcow2File),
            };
            let path = dir.join(format!("disk-{index}.{ext}"));
            created.push(path.clone());
            let report = source::convert_reader(input, make(path.clone()), opts)?;
            Ok(OvaDisk {
                output: Some(path),
                report: Some(report),
                ..empty
            })
        }
        Mode::Inspect => Ok(OvaDisk {
            image: Some(inspect::inspect_reader(input)?),
            ..empty
        }),
    }
}

/// Whether a file starts like a tar archive.
pub fn is_ova(head: &[u8]) -> bool {
    source::detect(head) == InputFormat::Ova
}
