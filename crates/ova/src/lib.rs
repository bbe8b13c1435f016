//! OVA archives and the OVF envelopes inside them. Pure code over `Read`: the archive may arrive from
//! a file, a pipe or an HTTP body, and is walked once, front to back.
//!
//! * [`tar`]: [`TarWalker`] yields members in order (name, size, a `Read` for the body); refuses
//!   unsafe names (`..`, absolute) and absurd sizes; never seeks.
//! * [`ovf`]: [`ovf::parse`] / [`ovf::read_envelope`] turn an OVF 1.x (VMware) or 2.x (VirtualBox)
//!   descriptor into a [`VmDescription`] (CPUs, cores per socket, memory, firmware / secure boot / vTPM,
//!   disks with capacity, controller and unit, NICs with network, model and MAC, CD-ROMs, files).
//!   DTDs are refused, so entity expansion is impossible.
//! * [`manifest`]: [`Manifest`] (`SHA1(file)= hex`, SHA256, SHA512) and [`HashingReader`], which hashes
//!   a member while the converter consumes it.
//!
//! A conforming OVA holds the `.ovf` first, then optionally the `.mf` (and `.cert`), then the files in
//! `References` order, so one pass suffices: parse the descriptor, read the manifest, convert each disk
//! as it streams by. What to do with a disk member (VMDK decode, gunzip for
//! `ovf:compression="gzip"`, qcow2/raw) is the caller's business.
//!
//! # Example
//!
//! ```no_run
//! use std::io::Read;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let file = std::fs::File::open("vm.ova")?;
//! let mut walker = ova::TarWalker::new(file);
//! let mut vm = None;
//! let mut manifest = ova::Manifest::default();
//! while let Some(mut entry) = walker.next_entry()? {
//!     let name = entry.name().to_owned();
//!     if name.ends_with(".ovf") {
//!         vm = Some(ova::ovf::read_envelope(&mut entry)?);
//!     } else if name.ends_with(".mf") {
//!         manifest = ova::Manifest::read_from(&mut entry)?;
//!     } else if let Some(entry_digest) = manifest.get(&name) {
//!         let mut hashed = ova::HashingReader::new(&mut entry, entry_digest.algorithm);
//!         std::io::copy(&mut hashed, &mut std::io::sink())?; // a real caller decodes the disk here
//!         let (_, algorithm, digest) = hashed.finish();
//!         manifest.verify(&name, algorithm, &digest)?;
//!     }
//! }
//! let vm = vm.ok_or("no .ovf in the archive")?;
//! println!("{} has {} CPUs and {} disks", vm.name, vm.cpus, vm.disks.len());
//! # Ok(())
//! # }
//! ```

pub mod description;
pub mod manifest;
pub mod ovf;
pub mod tar;

pub use description::{
    CdRom, Compression, Controller, ControllerKind, Disk, FileReference, Firmware, Nic, NicModel, OvfVersion,
    VmDescription,
};
pub use manifest::{Algorithm, HashingReader, Manifest, ManifestEntry};
pub use tar::{Entry, EntryKind, TarWalker};
