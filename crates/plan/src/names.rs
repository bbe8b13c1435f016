//! Name rules: the VM name (a DNS-1123 label, sanitised rather than refused) and label values
//! (cluster-api's `MustFormatValue`, bit-for-bit, so images created by the Go controller are found
//! again by their label after a switch-over).

/// Longest DNS-1123 label / label value.
const MAX_LABEL: usize = 63;

/// A VM name made a DNS-1123 label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SanitizedName {
    /// The label.
    pub name: String,
    /// True when it differs from the lower-cased source name (upstream would have refused it).
    pub changed: bool,
}

/// True for a DNS-1123 label: 1–63 of `[a-z0-9-]`, alphanumeric at both ends.
pub fn is_dns1123_label(value: &str) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_LABEL
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

/// Lower-cases `source` (as upstream does) and, when that is not a DNS-1123 label, replaces each run
/// of other characters with `-`, trims `-` at both ends, and when too long keeps 54 characters plus
/// `-` and an 8-hex-digit hash of the source name (so two long names sharing a prefix do not collide).
/// An empty result becomes `vm-<hash>`.
pub fn sanitize_vm_name(source: &str) -> SanitizedName {
    let lower = source.to_lowercase();
    if is_dns1123_label(&lower) {
        return SanitizedName {
            name: lower,
            changed: false,
        };
    }
    let mut name = String::with_capacity(lower.len());
    for c in lower.chars() {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            name.push(c);
        } else if !name.ends_with('-') {
            name.push('-');
        }
    }
    let trimmed = name.trim_matches('-');
    let hash = format!("{:08x}", fnv32a(source.as_bytes()));
    let name = if trimmed.is_empty() {
        format!("vm-{hash}")
    } else if trimmed.len() > MAX_LABEL {
        // Only ASCII remains, so byte slicing is on char boundaries.
        let head = trimmed[..MAX_LABEL - 9].trim_end_matches('-');
        format!("{head}-{hash}")
    } else {
        trimmed.to_owned()
    };
    SanitizedName { name, changed: true }
}

/// True for a valid label value: up to 63 of `[A-Za-z0-9-_.]`, alphanumeric at both ends, or empty.
pub fn is_label_value(value: &str) -> bool {
    let bytes = value.as_bytes();
    bytes.is_empty()
        || (bytes.len() <= MAX_LABEL
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
            && bytes.last().is_some_and(u8::is_ascii_alphanumeric))
}

/// cluster-api `format.MustFormatValue`: `value` itself when it is a valid label value, else
/// `hash_<base64url-nopad(fnv32a(value), big-endian)>_z`.
pub fn label_value(value: &str) -> String {
    if is_label_value(value) {
        return value.to_owned();
    }
    let digest = fnv32a(value.as_bytes()).to_be_bytes();
    format!("hash_{}_z", base64url_nopad(&digest))
}

/// 32-bit FNV-1a.
pub fn fnv32a(bytes: &[u8]) -> u32 {
    const OFFSET: u32 = 0x811c_9dc5;
    const PRIME: u32 = 0x0100_0193;
    bytes
        .iter()
        .fold(OFFSET, |hash, b| (hash ^ u32::from(*b)).wrapping_mul(PRIME))
}

fn base64url_nopad(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            let index = (n >> (18 - 6 * i)) & 0x3f;
            out.push(char::from(ALPHABET[index as usize]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_names_are_only_lowercased() {
        assert_eq!(
            sanitize_vm_name("Alpine-01"),
            SanitizedName {
                name: "alpine-01".into(),
                changed: false
            }
        );
    }

    #[test]
    fn underscores_spaces_and_dots_become_single_dashes() {
        let s = sanitize_vm_name("Web_Server 01..prod.");
        assert_eq!(s.name, "web-server-01-prod");
        assert!(s.changed);
        assert!(is_dns1123_label(&s.name));
    }

    #[test]
    fn long_names_keep_a_hash_of_the_original() {
        let long = "a".repeat(70);
        let s = sanitize_vm_name(&long);
        assert_eq!(s.name.len(), 63);
        assert!(is_dns1123_label(&s.name));
        assert_ne!(s.name, sanitize_vm_name(&format!("{long}b")).name);
    }

    #[test]
    fn names_without_any_usable_character_get_a_hashed_name() {
        let s = sanitize_vm_name("___");
        assert!(
            s.name.starts_with("vm-") && is_dns1123_label(&s.name),
            "{}",
            s.name
        );
    }

    #[test]
    fn fnv32a_matches_the_reference_vectors() {
        // From the FNV reference test suite.
        assert_eq!(fnv32a(b""), 0x811c_9dc5);
        assert_eq!(fnv32a(b"a"), 0xe40c_292c);
        assert_eq!(fnv32a(b"foobar"), 0xbf9c_f968);
    }

    #[test]
    fn label_values_are_kept_when_valid_and_hashed_like_cluster_api_otherwise() {
        assert_eq!(label_value("vm-import-x-disk-0.img"), "vm-import-x-disk-0.img");
        // fnv32a("foobar") = bf 9c f9 68 → base64url "v5z5aA".
        let long = "foobar";
        assert_eq!(base64url_nopad(&fnv32a(long.as_bytes()).to_be_bytes()), "v5z5aA");
        let hashed = label_value(&"x".repeat(64));
        assert!(
            hashed.starts_with("hash_") && hashed.ends_with("_z") && hashed.len() == 13,
            "{hashed}"
        );
        assert!(is_label_value(&hashed));
    }
}
