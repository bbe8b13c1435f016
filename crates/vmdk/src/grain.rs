//! Compressed grains: the 12-byte grain record header of compressed sparse extents and the
//! zlib inflater that turns one grain back into at most `grain_bytes` of disk content.
//!
//! Grains are independent zlib streams, so callers may inflate them on as many threads as they
//! like, one [`GrainInflater`] per thread.

use crate::SECTOR_SIZE;

/// Size of `u64 lba; u32 size` in front of every compressed grain.
pub const GRAIN_RECORD_HEADER: usize = 12;

/// Largest compressed payload accepted for a grain, as a multiple of the grain size plus the
/// record header. Incompressible data makes zlib output slightly larger than its input (about
/// 0.03 % plus a few bytes); twice the grain leaves room for any sane encoder while refusing to
/// buffer arbitrary amounts on a hostile `size` field.
pub fn max_compressed_grain(grain_bytes: u64) -> u64 {
    grain_bytes * 2 + GRAIN_RECORD_HEADER as u64
}

/// Why a grain could not be inflated.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum InflateError {
    /// Not a valid zlib stream (bad header, bad deflate data, or Adler-32 mismatch).
    #[error("grain is not valid zlib data")]
    Corrupt,
    /// Inflates to more than one grain.
    #[error("grain inflates to more than the {limit}-byte grain size")]
    TooLarge {
        /// The grain size in bytes.
        limit: usize,
    },
}

/// A reusable zlib inflater for grains (libdeflate: the fastest backend measured on this
/// workload, see `BENCHMARKS.md`).
pub struct GrainInflater {
    inner: libdeflater::Decompressor,
}

impl std::fmt::Debug for GrainInflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrainInflater").finish_non_exhaustive()
    }
}

impl Default for GrainInflater {
    fn default() -> Self {
        Self::new()
    }
}

impl GrainInflater {
    /// A fresh inflater.
    pub fn new() -> Self {
        Self {
            inner: libdeflater::Decompressor::new(),
        }
    }

    /// Inflates one zlib stream into `out` (sized to one grain) and returns the inflated length.
    /// Bytes of `out` past that length are left untouched.
    pub fn inflate(&mut self, compressed: &[u8], out: &mut [u8]) -> Result<usize, InflateError> {
        self.inner.zlib_decompress(compressed, out).map_err(|e| match e {
            libdeflater::DecompressionError::InsufficientSpace => InflateError::TooLarge { limit: out.len() },
            libdeflater::DecompressionError::BadData => InflateError::Corrupt,
        })
    }
}

/// Compresses one grain as a zlib stream (level 6, what VMware and qemu use). For tests and
/// fixtures; conversion never compresses.
pub fn deflate_grain(data: &[u8]) -> Vec<u8> {
    let mut compressor = libdeflater::Compressor::new(libdeflater::CompressionLvl::default());
    let mut out = vec![0u8; compressor.zlib_compress_bound(data.len())];
    let len = compressor.zlib_compress(data, &mut out).unwrap_or(0);
    out.truncate(len);
    out
}

/// Rounds a record length up to whole sectors.
pub(crate) fn sector_round(len: u64) -> Option<u64> {
    len.checked_next_multiple_of(SECTOR_SIZE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inflates_what_deflate_grain_made() {
        let data: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
        let mut out = vec![0u8; 65536];
        let n = GrainInflater::new()
            .inflate(&deflate_grain(&data), &mut out)
            .unwrap();
        assert_eq!(n, 65536);
        assert_eq!(out, data);
    }

    #[test]
    fn rejects_garbage_zlib() {
        let mut out = vec![0u8; 65536];
        assert_eq!(
            GrainInflater::new().inflate(b"\x78\x9cgarbage", &mut out),
            Err(InflateError::Corrupt)
        );
    }

    #[test]
    fn rejects_grain_larger_than_buffer() {
        let mut out = vec![0u8; 4096];
        let z = deflate_grain(&[7u8; 8192]);
        assert_eq!(
            GrainInflater::new().inflate(&z, &mut out),
            Err(InflateError::TooLarge { limit: 4096 })
        );
    }
}
