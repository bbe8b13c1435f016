//! OVF manifests (`.mf`): one digest per archive member, `SHA256(disk1.vmdk)= 3f…`, and the streaming
//! hasher that checks a member's bytes as they pass (the digest covers the bytes as stored in the
//! archive, e.g. the compressed VMDK, not the virtual disk).
//!
//! Accepts SHA1, SHA256 and SHA512, any case, optional spaces around `=`, blank lines and CRLF.

use std::io::{self, Read};

use sha1::Sha1;
use sha2::{Digest, Sha256, Sha512};

/// Largest manifest we parse: one line per file, and an OVA has a handful of files.
pub const MAX_MANIFEST_SIZE: usize = 1 << 20;

/// A digest algorithm allowed in a manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    /// SHA-1 (OVF 1.x, VMware's default before 6.5).
    Sha1,
    /// SHA-256.
    Sha256,
    /// SHA-512.
    Sha512,
}

impl Algorithm {
    fn digest_len(self) -> usize {
        match self {
            Algorithm::Sha1 => 20,
            Algorithm::Sha256 => 32,
            Algorithm::Sha512 => 64,
        }
    }

    fn from_name(name: &str) -> Option<Algorithm> {
        match name.to_ascii_uppercase().as_str() {
            "SHA1" => Some(Algorithm::Sha1),
            "SHA256" => Some(Algorithm::Sha256),
            "SHA512" => Some(Algorithm::Sha512),
            _ => None,
        }
    }
}

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Algorithm::Sha1 => "SHA1",
            Algorithm::Sha256 => "SHA256",
            Algorithm::Sha512 => "SHA512",
        })
    }
}

/// A manifest failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A line is not `ALGO(file)= hex`.
    #[error("manifest line {line} is malformed: {reason}")]
    BadLine {
        /// 1-based line number.
        line: usize,
        /// Why.
        reason: &'static str,
    },

    /// The same file is listed twice.
    #[error("manifest line {line} lists {file:?} a second time")]
    Duplicate {
        /// 1-based line number.
        line: usize,
        /// The file.
        file: String,
    },

    /// A member's digest differs from the manifest.
    #[error("{algorithm} digest of {file:?} does not match the manifest: expected {expected}, got {actual}")]
    Mismatch {
        /// The file.
        file: String,
        /// Algorithm used.
        algorithm: Algorithm,
        /// Hex digest from the manifest.
        expected: String,
        /// Hex digest of the bytes read.
        actual: String,
    },

    /// The manifest is not UTF-8 text.
    #[error("manifest is not UTF-8 text (invalid byte at {valid_up_to})")]
    NotText {
        /// Offset of the first invalid byte.
        valid_up_to: usize,
    },

    /// Reading the manifest failed.
    #[error("failed to read the manifest")]
    Reading {
        /// The I/O error.
        #[source]
        source: io::Error,
    },

    /// The manifest is larger than [`MAX_MANIFEST_SIZE`].
    #[error("manifest is larger than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One manifest line.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ManifestEntry {
    /// The archive member the digest is for.
    pub file: String,
    /// Digest algorithm.
    pub algorithm: Algorithm,
    /// Digest bytes.
    #[serde(with = "hex_bytes")]
    pub digest: Vec<u8>,
}

/// A parsed manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    /// Entries in file order.
    pub entries: Vec<ManifestEntry>,
}

impl Manifest {
    /// Parses manifest text.
    ///
    /// # Errors
    /// [`Error::BadLine`] naming the line, [`Error::Duplicate`], [`Error::TooLarge`].
    pub fn parse(text: &str) -> Result<Manifest> {
        if text.len() > MAX_MANIFEST_SIZE {
            return Err(Error::TooLarge {
                limit: MAX_MANIFEST_SIZE,
            });
        }
        let mut entries: Vec<ManifestEntry> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let entry = parse_line(line).map_err(|reason| Error::BadLine {
                line: line_no,
                reason,
            })?;
            if !seen.insert(entry.file.clone()) {
                return Err(Error::Duplicate {
                    line: line_no,
                    file: entry.file,
                });
            }
            entries.push(entry);
        }
        Ok(Manifest { entries })
    }

    /// Reads (at most [`MAX_MANIFEST_SIZE`] bytes) and parses a manifest, e.g. a tar member.
    ///
    /// # Errors
    /// As [`Manifest::parse`], plus [`Error::Reading`] and [`Error::NotText`].
    pub fn read_from<R: Read>(reader: R) -> Result<Manifest> {
        let mut bytes = Vec::new();
        reader
            .take(MAX_MANIFEST_SIZE as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| Error::Reading { source })?;
        if bytes.len() > MAX_MANIFEST_SIZE {
            return Err(Error::TooLarge {
                limit: MAX_MANIFEST_SIZE,
            });
        }
        let text = String::from_utf8(bytes).map_err(|e| Error::NotText {
            valid_up_to: e.utf8_error().valid_up_to(),
        })?;
        Manifest::parse(&text)
    }

    /// The entry for `file`, if listed.
    pub fn get(&self, file: &str) -> Option<&ManifestEntry> {
        self.entries.iter().find(|e| e.file == file)
    }

    /// A hasher for `file` with the manifest's algorithm, or `None` if the file is not listed.
    pub fn hasher_for(&self, file: &str) -> Option<Hasher> {
        self.get(file).map(|e| Hasher::new(e.algorithm))
    }

    /// Checks a finished digest of `file` against the manifest. A file the manifest does not list
    /// passes (the caller decides whether unlisted files matter).
    ///
    /// # Errors
    /// [`Error::Mismatch`].
    pub fn verify(&self, file: &str, algorithm: Algorithm, digest: &[u8]) -> Result<()> {
        match self.get(file) {
            Some(e) if e.algorithm != algorithm || e.digest != digest => Err(Error::Mismatch {
                file: file.into(),
                algorithm: e.algorithm,
                expected: hex::encode(&e.digest),
                actual: if e.algorithm == algorithm {
                    hex::encode(digest)
                } else {
                    format!("{algorithm} {}", hex::encode(digest))
                },
            }),
            Some(_) | None => Ok(()),
        }
    }
}

fn parse_line(line: &str) -> std::result::Result<ManifestEntry, &'static str> {
    let open = line.find('(').ok_or("expected `ALGORITHM(file)= digest`")?;
    let algorithm =
        Algorithm::from_name(line[..open].trim()).ok_or("unknown algorithm (SHA1, SHA256, SHA512)")?;
    // The file name may itself contain `)` or `=`; the digest never does, so split at the last `=`.
    let eq = line.rfind('=').ok_or("missing `=`")?;
    if eq <= open {
        return Err("missing `=` after the file name");
    }
    let file = line[open + 1..eq]
        .trim_end()
        .strip_suffix(')')
        .ok_or("missing `)` after the file name")?;
    if file.is_empty() {
        return Err("empty file name");
    }
    let hex_digest = line[eq + 1..].trim();
    let digest = hex::decode(hex_digest).map_err(|_| "digest is not hexadecimal")?;
    if digest.len() != algorithm.digest_len() {
        return Err("digest length does not fit the algorithm");
    }
    Ok(ManifestEntry {
        file: file.into(),
        algorithm,
        digest,
    })
}

/// Incremental digest of one member.
#[derive(Debug, Clone)]
pub struct Hasher {
    state: State,
}

#[derive(Debug, Clone)]
enum State {
    Sha1(Sha1),
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Hasher {
    /// A fresh hasher.
    pub fn new(algorithm: Algorithm) -> Hasher {
        let state = match algorithm {
            Algorithm::Sha1 => State::Sha1(Sha1::new()),
            Algorithm::Sha256 => State::Sha256(Sha256::new()),
            Algorithm::Sha512 => State::Sha512(Sha512::new()),
        };
        Hasher { state }
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        match self.state {
            State::Sha1(_) => Algorithm::Sha1,
            State::Sha256(_) => Algorithm::Sha256,
            State::Sha512(_) => Algorithm::Sha512,
        }
    }

    /// Feeds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        match &mut self.state {
            State::Sha1(h) => h.update(bytes),
            State::Sha256(h) => h.update(bytes),
            State::Sha512(h) => h.update(bytes),
        }
    }

    /// The digest.
    pub fn finalize(self) -> Vec<u8> {
        match self.state {
            State::Sha1(h) => h.finalize().to_vec(),
            State::Sha256(h) => h.finalize().to_vec(),
            State::Sha512(h) => h.finalize().to_vec(),
        }
    }
}

/// A `Read` adapter that hashes every byte passing through; wrap a tar entry with it and hand it to
/// the decoder, then call [`HashingReader::finish`].
#[derive(Debug)]
pub struct HashingReader<R> {
    inner: R,
    hasher: Hasher,
    bytes: u64,
}

impl<R: Read> HashingReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R, algorithm: Algorithm) -> Self {
        HashingReader {
            inner,
            hasher: Hasher::new(algorithm),
            bytes: 0,
        }
    }

    /// Bytes hashed so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Finishes: returns the reader and the digest of everything read through it.
    pub fn finish(self) -> (R, Algorithm, Vec<u8>) {
        let algorithm = self.hasher.algorithm();
        (self.inner, algorithm, self.hasher.finalize())
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

mod hex_bytes {
    pub(super) fn serialize<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text: String = serde::Deserialize::deserialize(d)?;
        hex::decode(text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA1_ABC: &str = "a9993e364706816aba3e25717850c26c9cd0d89d";
    const SHA256_ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn parses_all_spellings() {
        let text = format!(
            "SHA1(vm.ovf)= {SHA1_ABC}\r\n\nsha256(disk (1).vmdk) = {}\nSHA512(x=y.iso)={}\n",
            SHA256_ABC.to_uppercase(),
            "00".repeat(64)
        );
        let m = Manifest::parse(&text).unwrap();
        assert_eq!(m.entries.len(), 3);
        assert_eq!(m.get("vm.ovf").unwrap().algorithm, Algorithm::Sha1);
        assert_eq!(
            m.get("disk (1).vmdk").unwrap().digest,
            hex::decode(SHA256_ABC).unwrap()
        );
        assert_eq!(m.get("x=y.iso").unwrap().algorithm, Algorithm::Sha512);
    }

    #[test]
    fn streaming_hash_matches_and_mismatch_is_named() {
        let m = Manifest::parse(&format!("SHA256(a)= {SHA256_ABC}\nSHA1(b)= {SHA1_ABC}\n")).unwrap();
        let mut r = HashingReader::new(&b"abc"[..], Algorithm::Sha256);
        std::io::copy(&mut r, &mut std::io::sink()).unwrap();
        let (_, alg, digest) = r.finish();
        m.verify("a", alg, &digest).unwrap();
        let mut h = m.hasher_for("b").unwrap();
        h.update(b"abd");
        let err = m.verify("b", Algorithm::Sha1, &h.finalize()).unwrap_err();
        assert!(
            err.to_string().contains("\"b\"") && err.to_string().contains(SHA1_ABC),
            "{err}"
        );
    }

    #[test]
    fn bad_lines_are_numbered() {
        for (text, line) in [
            ("SHA1(a)= zz\n", 1),
            ("\nMD5(a)= 00\n", 2),
            ("SHA1 a = 00\n", 1),
            ("SHA256(a)= abcd\n", 1),
            ("SHA1()= a9993e364706816aba3e25717850c26c9cd0d89d\n", 1),
        ] {
            match Manifest::parse(text) {
                Err(Error::BadLine { line: l, .. }) => assert_eq!(l, line, "{text:?}"),
                other => panic!("{text:?}: {other:?}"),
            }
        }
        let dup = format!("SHA1(a)= {SHA1_ABC}\nSHA1(a)= {SHA1_ABC}\n");
        assert!(matches!(
            Manifest::parse(&dup),
            Err(Error::Duplicate { line: 2, .. })
        ));
    }
}
