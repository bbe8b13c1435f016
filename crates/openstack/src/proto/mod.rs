//! The pure layer: request bodies and response models of the OpenStack APIs the importer uses, the
//! decisions made on them (endpoint choice, server lookup, NIC merging, boot order, microversion),
//! the server description an inspect produces, and the few header values parsed by hand. No IO.
//!
//! JSON is decoded by serde into these types (unknown fields ignored, as every OpenStack client must:
//! microversions add fields); the only hand-written parsers are [`parse_content_range`] and
//! [`parse_microversion`], both fuzzed (`fuzz/fuzz_targets/openstack_headers.rs`).

pub mod block_storage;
pub mod clouds;
pub mod compute;
pub mod description;
pub mod identity;
pub mod image;
pub mod network;

use std::fmt;

/// A password or credential secret: `Debug` prints `***`, and it is only read where a request body
/// is built.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the request body that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The message inside an OpenStack error body, whatever the service's spelling:
/// `{"itemNotFound": {"message": ..}}` (Nova, Cinder), `{"error": {"message": ..}}` (Keystone),
/// `{"NeutronError": {"message": ..}}`, or Glance's plain text/HTML (first line that is not markup).
/// Never longer than 300 characters.
pub fn error_message(body: &[u8]) -> String {
    const LIMIT: usize = 300;
    let clip = |s: &str| s.chars().take(LIMIT).collect::<String>();
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_slice::<serde_json::Value>(body) {
        for value in map.values() {
            if let Some(message) = value.get("message").and_then(|m| m.as_str()) {
                return clip(message);
            }
        }
        if let Some(message) = map.get("message").and_then(|m| m.as_str()) {
            return clip(message);
        }
    }
    let text = String::from_utf8_lossy(body);
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('<'))
        .unwrap_or("");
    clip(line)
}

/// A `Content-Range: bytes START-END/TOTAL` value (TOTAL may be `*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentRange {
    /// First byte.
    pub start: u64,
    /// Last byte, inclusive.
    pub end: u64,
    /// Whole length, when the server says.
    pub total: Option<u64>,
}

/// Parses a `Content-Range` header of a 206 answer. `None` for anything malformed, unsatisfied
/// (`bytes */N`) or inverted.
pub fn parse_content_range(value: &str) -> Option<ContentRange> {
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.trim().split_once('-')?;
    let digits = |s: &str| -> Option<u64> {
        let s = s.trim();
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    let start = digits(start)?;
    let end = digits(end)?;
    let total = match total.trim() {
        "*" => None,
        t => Some(digits(t)?),
    };
    if end < start || total.is_some_and(|t| end >= t) {
        return None;
    }
    Some(ContentRange { start, end, total })
}

/// A compute microversion `MAJOR.MINOR`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Microversion(pub u16, pub u16);

impl fmt::Display for Microversion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

/// Parses `2.79`, or the `compute 2.79` form of an `OpenStack-API-Version` header (other services in
/// a comma-separated list are skipped). `None` when there is no compute version in it.
pub fn parse_microversion(value: &str) -> Option<Microversion> {
    let one = |text: &str| -> Option<Microversion> {
        let (major, minor) = text.trim().split_once('.')?;
        let num = |s: &str| -> Option<u16> {
            if s.is_empty() || s.len() > 4 || !s.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            s.parse().ok()
        };
        Some(Microversion(num(major)?, num(minor)?))
    };
    for item in value.split(',') {
        let mut words = item.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some(service), Some(version), None) if service.eq_ignore_ascii_case("compute") => {
                return one(version);
            }
            (Some(version), None, None) => {
                if let Some(v) = one(version) {
                    return Some(v);
                }
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages_come_out_of_every_spelling() {
        assert_eq!(
            error_message(br#"{"itemNotFound": {"code": 404, "message": "Instance x could not be found."}}"#),
            "Instance x could not be found."
        );
        assert_eq!(
            error_message(br#"{"error": {"code": 401, "message": "The request you have made requires authentication.", "title": "Unauthorized"}}"#),
            "The request you have made requires authentication."
        );
        assert_eq!(
            error_message(br#"{"NeutronError": {"type": "NotFound", "message": "Port p could not be found.", "detail": ""}}"#),
            "Port p could not be found."
        );
        assert_eq!(
            error_message(b"<html>\n <head>\n  <title>404 Not Found</title>\n </head>\n <body>\n  No image found with ID x\n"),
            "No image found with ID x"
        );
        assert_eq!(error_message(&[b'a'; 1000]).len(), 300);
    }

    #[test]
    fn content_ranges_parse_strictly() {
        assert_eq!(
            parse_content_range("bytes 1000-3145727/3145728"),
            Some(ContentRange {
                start: 1000,
                end: 3_145_727,
                total: Some(3_145_728)
            })
        );
        assert_eq!(
            parse_content_range("bytes 0-9/*"),
            Some(ContentRange {
                start: 0,
                end: 9,
                total: None
            })
        );
        for bad in [
            "bytes */100",
            "bytes 10-5/100",
            "bytes 0-100/100",
            "items 0-1/2",
            "bytes -1-2/3",
            "bytes 1-2",
            "bytes +1-2/3",
            "",
        ] {
            assert_eq!(parse_content_range(bad), None, "{bad}");
        }
    }

    #[test]
    fn microversions_parse_in_both_header_forms() {
        assert_eq!(parse_microversion("compute 2.79"), Some(Microversion(2, 79)));
        assert_eq!(
            parse_microversion("volume 3.0, compute 2.47"),
            Some(Microversion(2, 47))
        );
        assert_eq!(parse_microversion("2.96"), Some(Microversion(2, 96)));
        assert_eq!(parse_microversion("compute latest"), None);
        assert_eq!(parse_microversion("volume 3.0"), None);
        assert!(Microversion(2, 9) < Microversion(2, 47));
        assert_eq!(Microversion(2, 79).to_string(), "2.79");
    }
}
