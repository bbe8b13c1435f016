//! The digest a conversion computes when asked: which algorithm ([`Checksum`]), the running
//! state ([`Digester`]) and the result ([`Digest`]). SHA-512 is what Harvester's
//! `VirtualMachineImage.spec.checksum` holds and Longhorn checks; SHA-256 is what most tools print.

use serde::Serialize;
use sha2::{Digest as _, Sha256, Sha512};

/// A digest algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Checksum {
    /// SHA-256.
    Sha256,
    /// SHA-512 (Harvester's and Longhorn's image checksum).
    Sha512,
}

impl Checksum {
    /// The algorithm's name as users type it (`sha256`, `sha512`).
    pub fn name(self) -> &'static str {
        match self {
            Checksum::Sha256 => "sha256",
            Checksum::Sha512 => "sha512",
        }
    }

    /// A fresh digester.
    pub fn digester(self) -> Digester {
        match self {
            Checksum::Sha256 => Digester::Sha256(Sha256::new()),
            Checksum::Sha512 => Digester::Sha512(Box::new(Sha512::new())),
        }
    }
}

/// A digest being computed.
#[derive(Debug, Clone)]
pub enum Digester {
    /// SHA-256.
    Sha256(Sha256),
    /// SHA-512 (boxed: its state is twice SHA-256's).
    Sha512(Box<Sha512>),
}

impl Digester {
    /// Adds `data`.
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Digester::Sha256(h) => h.update(data),
            Digester::Sha512(h) => h.update(data),
        }
    }

    /// The digest of everything added.
    pub fn finish(self) -> Digest {
        match self {
            Digester::Sha256(h) => Digest {
                algorithm: Checksum::Sha256,
                hex: hex::encode(h.finalize()),
            },
            Digester::Sha512(h) => Digest {
                algorithm: Checksum::Sha512,
                hex: hex::encode(h.finalize()),
            },
        }
    }
}

impl std::io::Write for Digester {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The digest of the whole file at `path`, read as plain bytes.
///
/// # Errors
/// When the file cannot be read.
pub fn digest_file(path: &std::path::Path, checksum: Checksum) -> std::io::Result<Digest> {
    let mut file = std::fs::File::open(path)?;
    let mut digester = checksum.digester();
    // Large reads: a served image can be many GiB, and the kernel reads ahead for a sequential pass.
    let mut reader = std::io::BufReader::with_capacity(1 << 20, &mut file);
    std::io::copy(&mut reader, &mut digester)?;
    Ok(digester.finish())
}

/// A finished digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Digest {
    /// The algorithm.
    pub algorithm: Checksum,
    /// Lowercase hex.
    pub hex: String,
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.algorithm.name(), self.hex)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_match_the_published_test_vectors() {
        let mut d = Checksum::Sha256.digester();
        d.update(b"abc");
        assert_eq!(
            d.finish().hex,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let mut d = Checksum::Sha512.digester();
        d.update(b"abc");
        let digest = d.finish();
        assert!(digest.hex.starts_with("ddaf35a193617aba"), "{digest}");
        assert_eq!(digest.hex.len(), 128);
        assert_eq!(digest.to_string(), format!("sha512 {}", digest.hex));
    }

    #[test]
    fn a_file_is_hashed_as_plain_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"abc").unwrap();
        let digest = digest_file(&path, Checksum::Sha256).unwrap();
        assert_eq!(
            digest.hex,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(digest_file(&dir.path().join("missing"), Checksum::Sha256).is_err());
    }
}
