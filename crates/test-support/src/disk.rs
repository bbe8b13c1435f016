//! Source disks for tests: sparse raw files with a few seeded data blocks (at the start, just past
//! 512 KiB, and near the end), so that two disks or two seeds never share content and holes stay
//! holes on the way through an export.

use std::{
    fs::File,
    io::{self, Read},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
};

/// Creates `dir/name`: `mib` MiB (at least 1), sparse, with three 64 KiB blocks derived from
/// `seed`.
///
/// # Errors
/// When the file cannot be created or written.
pub fn seeded_raw_disk(dir: &Path, name: &str, mib: u64, seed: u8) -> io::Result<PathBuf> {
    let path = dir.join(name);
    let file = File::create(&path)?;
    let size = mib.max(1) << 20;
    file.set_len(size)?;
    for (index, offset) in [0u64, 512 * 1024 + 17, size - 70_000].into_iter().enumerate() {
        let block: Vec<u8> = (0..65_536u32)
            .map(|j| {
                // Never zero, so a block is never taken for a hole.
                (j as u8)
                    .wrapping_mul(31)
                    .wrapping_add(seed)
                    .wrapping_add(index as u8)
                    | 1
            })
            .collect();
        file.write_all_at(&block, offset)?;
    }
    Ok(path)
}

/// SHA-256 of the Cinder volume whose data file is `path`: the file's bytes, then zeros up to the
/// whole GiB Cinder sizes volumes in. The lab's volumes are such files, and upload-to-image
/// sends the whole volume.
///
/// # Errors
/// When the file cannot be read.
pub fn cinder_volume_sha256(path: &Path) -> io::Result<String> {
    cinder_volume_digest(path, sha2::Sha256::default())
}

/// SHA-512 of the Cinder volume whose data file is `path` (see [`cinder_volume_sha256`]): the
/// `spec.checksum` of that volume served as a raw image.
///
/// # Errors
/// When the file cannot be read.
pub fn cinder_volume_sha512(path: &Path) -> io::Result<String> {
    cinder_volume_digest(path, sha2::Sha512::default())
}

fn cinder_volume_digest<D: sha2::Digest + io::Write>(path: &Path, mut hasher: D) -> io::Result<String> {
    let mut file = File::open(path)?;
    let data = io::copy(&mut file, &mut hasher)?;
    let size = data.div_ceil(1 << 30).max(1) << 30;
    io::copy(&mut io::repeat(0).take(size - data), &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}
