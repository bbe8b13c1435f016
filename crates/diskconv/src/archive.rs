//! OVA archives in one forward pass: the `.ovf` (which must come first, as the OVF spec requires),
//! the `.mf` manifest, then each disk member converted while it streams by — no temporary files,
//! so an OVA can come from a pipe or an HTTP body. Every member the manifest lists is hashed on
//! the way and checked; a mismatch is an error, a missing manifest a warning (or an error when
//! required).
//!
//! [`convert_ova`] writes `disk-<N>` files into a directory and keeps none of them unless the
//! whole archive checks out. [`convert_ova_into`] lets the caller choose each disk's output (or
//! skip a disk) and tells it when each disk's member has been read to its end and matched the
//! manifest, so a caller that resumes (the controller) can commit disk by disk.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::File,
    io::{self, Cursor, Read},
    path::{Path, PathBuf},
};

use ova::{Algorithm, EntryKind, Manifest, TarWalker, VmDescription, manifest::Hasher};

use crate::{
    Error,
    inspect::{self, ImageInfo},
    pipeline::{Options, Report},
    source::{self, Family, InputFormat},
    staged::{self, Replace, StagedFile},
    writer::{ImageFormat, Output},
};

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

/// Where the disks of an OVA go, chosen disk by disk as their members stream by.
///
/// For each disk member in archive order: [`DiskTargets::output`], then (when it gave one) the
/// conversion, the rest of the member read and its digest checked, then either
/// [`DiskTargets::verified`] or [`DiskTargets::failed`]. A disk is only as good as its
/// `verified` call: until then its output may hold anything.
pub trait DiskTargets {
    /// The VM, once the `.ovf` is parsed and before any disk member; an error stops the walk
    /// (e.g. the archive is not the one the caller expected).
    fn described(&mut self, vm: &VmDescription) -> Result<(), Error> {
        let _ = vm;
        Ok(())
    }

    /// The output and conversion options of disk `index` (its position in the OVF disk list),
    /// stored in archive member `member`; `None` reads past the member without converting it
    /// (its digest is still checked).
    fn output(&mut self, index: usize, member: &str) -> Option<(Output, Options)>;

    /// Disk `index` is converted and its member read to the end; `digest_checked` says whether the
    /// manifest listed the member and its digest matched. An error stops the walk.
    fn verified(
        &mut self,
        index: usize,
        member: &str,
        report: &Report,
        digest_checked: bool,
    ) -> Result<(), Error>;

    /// Converting disk `index` failed, or its member did not match the manifest: whatever its
    /// output holds must not pass for the disk.
    fn failed(&mut self, index: usize);
}

enum Mode<'a> {
    Convert(&'a mut dyn DiskTargets),
    Inspect,
}

/// [`convert_ova`]'s targets: `dir/disk-<N>.<ext>`, each written as a [`StagedFile`] and
/// committed only when the whole archive checked out.
struct DirTargets<'a> {
    dir: &'a Path,
    format: ImageFormat,
    opts: &'a Options,
    replace: Replace,
    staged: BTreeMap<usize, StagedFile>,
    /// Why a disk's output could not be staged; the walk fails with it.
    refused: Option<staged::Error>,
}

impl<'a> DirTargets<'a> {
    fn new(dir: &'a Path, format: ImageFormat, opts: &'a Options, replace: Replace) -> Self {
        Self {
            dir,
            format,
            opts,
            replace,
            staged: BTreeMap::new(),
            refused: None,
        }
    }

    fn target(&self, index: usize) -> PathBuf {
        self.dir.join(format!("disk-{index}.{}", self.format.extension()))
    }

    /// Commits every disk once the walk succeeded; what was not committed is removed on drop.
    fn finish(mut self, result: Result<OvaResult, Error>) -> Result<OvaResult, Error> {
        if let Some(refused) = self.refused.take() {
            return Err(Error::Output(refused));
        }
        let mut result = result?;
        for disk in &mut result.disks {
            if let Some(staged) = self.staged.remove(&disk.index) {
                disk.output = Some(staged.commit().map_err(Error::Output)?);
            }
        }
        Ok(result)
    }
}

impl DiskTargets for DirTargets<'_> {
    /// Refuses at once when an output exists and may not be replaced.
    fn described(&mut self, vm: &VmDescription) -> Result<(), Error> {
        if self.replace == Replace::Nothing {
            for index in 0..vm.disks.len() {
                let target = self.target(index);
                if std::fs::symlink_metadata(&target).is_ok() {
                    return Err(Error::Output(staged::Error::Exists { target }));
                }
            }
        }
        Ok(())
    }

    fn output(&mut self, index: usize, _member: &str) -> Option<(Output, Options)> {
        // A second call for one disk (a re-read with random access) starts it over.
        self.staged.remove(&index);
        match StagedFile::create(&self.target(index), self.replace) {
            Ok(staged) => {
                let output = self.format.output(staged.temp());
                self.staged.insert(index, staged);
                Some((output, self.opts.clone()))
            }
            Err(refused) => {
                self.refused = Some(refused);
                None
            }
        }
    }

    fn verified(&mut self, _: usize, _: &str, _: &Report, _: bool) -> Result<(), Error> {
        match self.refused.take() {
            Some(refused) => Err(Error::Output(refused)),
            None => Ok(()),
        }
    }

    // The whole archive fails with it; every staged file goes then.
    fn failed(&mut self, _: usize) {}
}

/// Converts every disk of an OVA read from `input` into `dir/disk-<N>.<raw|qcow2>` (N = position
/// in the OVF disk list). The files appear only when the whole archive checked out: a disk
/// converted before a later member (or the manifest check) failed must not pass for an imported
/// one. An existing `disk-<N>` is replaced only with `Replace::Existing`.
pub fn convert_ova(
    input: impl Read,
    dir: &Path,
    (format, replace): (ImageFormat, Replace),
    opts: &Options,
    require_manifest: bool,
) -> Result<OvaResult, Error> {
    let mut targets = DirTargets::new(dir, format, opts, replace);
    let result = walk(input, &mut Mode::Convert(&mut targets), require_manifest, None);
    targets.finish(result)
}

/// [`convert_ova`] for an OVA file: one forward pass as well, but a qcow2 or hosted sparse VMDK
/// member whose layout cannot be read in one pass ([`Error::NotOnePass`]) is converted again
/// with random access to its bytes in the file (its digest is still taken on the forward pass).
pub fn convert_ova_file(
    path: &Path,
    dir: &Path,
    (format, replace): (ImageFormat, Replace),
    opts: &Options,
    require_manifest: bool,
) -> Result<OvaResult, Error> {
    let open = || {
        File::open(path).map_err(|source| Error::Open {
            path: path.to_owned(),
            source,
        })
    };
    let (walked, random) = (open()?, open()?);
    let mut targets = DirTargets::new(dir, format, opts, replace);
    let result = walk(
        io::BufReader::with_capacity(crate::pipeline::READ_CHUNK, walked),
        &mut Mode::Convert(&mut targets),
        require_manifest,
        Some(&random),
    );
    targets.finish(result)
}

/// Converts the disks of an OVA read from `input` into the outputs `targets` chooses, telling it
/// as each disk is verified. Unlike [`convert_ova`] nothing is removed here on failure: that is
/// the targets' business ([`DiskTargets::failed`] names the disk that failed, if one did).
pub fn convert_ova_into(
    input: impl Read,
    targets: &mut dyn DiskTargets,
    require_manifest: bool,
) -> Result<OvaResult, Error> {
    walk(input, &mut Mode::Convert(targets), require_manifest, None)
}

/// Describes an OVA: the VM, each disk image (scanned, not converted) and the manifest check.
pub fn inspect_ova(input: impl Read, require_manifest: bool) -> Result<OvaResult, Error> {
    walk(input, &mut Mode::Inspect, require_manifest, None)
}

fn member_err(member: &str, source: Error) -> Error {
    Error::OvaMember {
        member: member.to_owned(),
        source: Box::new(source),
    }
}

/// `ova_file` is the archive's file when it has one: a member that cannot be decoded in one pass
/// is then re-read from it with random access.
fn walk(
    input: impl Read,
    mode: &mut Mode<'_>,
    require_manifest: bool,
    ova_file: Option<&File>,
) -> Result<OvaResult, Error> {
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
            if let Mode::Convert(targets) = mode {
                targets.described(&parsed)?;
            }
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
        let range = (entry.data_offset(), entry.size());
        let algorithm: Option<Algorithm> = manifest.as_ref().and_then(|m| m.get(&name)).map(|e| e.algorithm);
        let mut hashed = HashedMember {
            inner: &mut entry,
            hasher: algorithm.map(Hasher::new),
        };
        let mut converted = None;
        if let Some((index, d)) = disk {
            let gzip = d.file.as_ref().is_some_and(|f| f.compression.is_some());
            // A gzip member's bytes in the file are not the image: no random access to them.
            let random = ova_file.filter(|_| !gzip).map(|f| (f, range));
            let member = MemberRef {
                index,
                name: &name,
                capacity: d.capacity_bytes,
                format: d.format.as_deref().and_then(declared_family),
                random,
            };
            let result = convert_member(&mut hashed, gzip, member, mode);
            let result = match result {
                Ok(result) => result,
                Err(e) => {
                    if let Mode::Convert(targets) = mode {
                        targets.failed(index);
                    }
                    return Err(member_err(&name, e));
                }
            };
            converted = Some((index, result.report.clone()));
            disks.push(OvaDisk {
                index,
                member: name.clone(),
                ..result
            });
        }
        // Whatever the decoder left unread (padding after EOS, non-disk members) still counts.
        let rest = io::copy(&mut hashed, &mut io::sink())
            .map_err(|source| member_err(&name, Error::Read { offset: 0, source }));
        let digest = rest.and_then(|_| match (&manifest, hashed.hasher.take()) {
            (Some(m), Some(hasher)) => {
                let algorithm = hasher.algorithm();
                m.verify(&name, algorithm, &hasher.finalize())
                    .map_err(Error::Manifest)?;
                checked.push(name.clone());
                Ok(true)
            }
            _ => Ok(false),
        });
        if let (Mode::Convert(targets), Some((index, report))) = (&mut *mode, converted) {
            match (digest, report) {
                (Ok(digest_checked), Some(report)) => {
                    targets.verified(index, &name, &report, digest_checked)?;
                }
                // Skipped by the targets: nothing was written, nothing to commit or undo.
                (Ok(_), None) => {}
                (Err(e), _) => {
                    targets.failed(index);
                    return Err(e);
                }
            }
        } else {
            digest?;
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

/// Which disk a member is.
struct MemberRef<'a> {
    /// Position in the OVF disk list.
    index: usize,
    name: &'a str,
    /// The capacity the OVF declares: the decoded disk must be this size.
    capacity: u64,
    /// The format family the OVF's `ovf:format` names, if it names one.
    format: Option<Family>,
    /// The member's byte range in the OVA file, if the archive is a file.
    random: Option<(&'a File, (u64, u64))>,
}

fn convert_member(
    member: &mut impl Read,
    gzip: bool,
    disk: MemberRef<'_>,
    mode: &mut Mode<'_>,
) -> Result<OvaDisk, Error> {
    if gzip {
        let mut decoder = flate2::read::GzDecoder::new(member);
        return convert_disk(&mut decoder, disk, mode);
    }
    convert_disk(member, disk, mode)
}

fn output_path(output: &Output) -> Option<PathBuf> {
    match output {
        Output::RawFile(path) | Output::Qcow2File(path) => Some(path.clone()),
        Output::RawStream(_) => None,
    }
}

fn convert_disk(input: &mut impl Read, member: MemberRef<'_>, mode: &mut Mode<'_>) -> Result<OvaDisk, Error> {
    let MemberRef {
        index,
        name,
        capacity,
        format,
        random,
    } = member;
    let declared = |(output, opts): (Output, Options)| {
        let opts = Options {
            expected_size: Some(capacity),
            declared_format: format,
            ..opts
        };
        (output, opts)
    };
    let empty = OvaDisk {
        index,
        member: String::new(),
        output: None,
        report: None,
        image: None,
    };
    match mode {
        Mode::Convert(targets) => {
            let Some((output, opts)) = targets.output(index, name).map(declared) else {
                return Ok(empty);
            };
            let mut path = output_path(&output);
            let report = match (source::convert_reader(input, output, &opts), random) {
                (Err(Error::NotOnePass { .. }), Some((file, range))) => {
                    // The archive is a file: read this member with random access instead.
                    let Some((output, opts)) = targets.output(index, name).map(declared) else {
                        return Ok(empty);
                    };
                    path = output_path(&output);
                    source::convert_file_range(file, range, output, &opts)?
                }
                (result, _) => result?,
            };
            Ok(OvaDisk {
                output: path,
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

/// The family an `ovf:format` URI names: VMware's VMDK specification URL (every OVA writer uses
/// it for VMDK disks) or a qcow format page; anything else declares nothing.
fn declared_family(uri: &str) -> Option<Family> {
    let lower = uri.to_ascii_lowercase();
    if lower.contains("vmdk") {
        Some(Family::Vmdk)
    } else if lower.contains("qcow") {
        Some(Family::Qcow2)
    } else {
        None
    }
}

/// Whether a file starts like a tar archive.
pub fn is_ova(head: &[u8]) -> bool {
    source::detect(head) == InputFormat::Ova
}
