//! The HTTP parsing vm-import does on untrusted input, as pure functions: the image server's
//! request paths ([`is_servable_name`]) and `Range` headers ([`parse_range`]), and the
//! `Content-Range` of a resumed download ([`content_range_start`]). Kept apart from the servers
//! and clients that use them so that each is unit-tested and fuzzed on its own.

/// Suffix of a finished, servable image.
pub const IMAGE_SUFFIX: &str = ".img";
/// Longest image name served.
pub const MAX_NAME: usize = 240;

/// True for names the server may serve: one path segment of `[A-Za-z0-9._-]`, not hidden, `*.img`.
pub fn is_servable_name(name: &str) -> bool {
    name.len() <= MAX_NAME
        && name.ends_with(IMAGE_SUFFIX)
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A parsed `Range` header against a file of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeRequest {
    /// No (usable) range: the whole file, 200.
    Full,
    /// `start..=end`, 206.
    Partial {
        /// First byte.
        start: u64,
        /// Last byte (inclusive).
        end: u64,
    },
    /// 416.
    Unsatisfiable,
}

/// Parses one `bytes=` range. Several ranges are answered with the whole file, which RFC 9110
/// allows and every downloader handles.
pub fn parse_range(value: Option<&str>, size: u64) -> RangeRequest {
    let Some(spec) = value.and_then(|v| v.trim().strip_prefix("bytes=")) else {
        return RangeRequest::Full;
    };
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((first, last)) = spec.split_once('-') else {
        return RangeRequest::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    let parsed = match (first.is_empty(), last.is_empty()) {
        (true, true) => return RangeRequest::Full,
        // Suffix: the last N bytes.
        (true, false) => match last.parse::<u64>() {
            Ok(0) => return RangeRequest::Unsatisfiable,
            Ok(_) if size == 0 => return RangeRequest::Unsatisfiable,
            Ok(n) => Some((size.saturating_sub(n), size - 1)),
            Err(_) => None,
        },
        (false, true) => first
            .parse::<u64>()
            .ok()
            .map(|start| (start, size.saturating_sub(1))),
        (false, false) => match (first.parse::<u64>(), last.parse::<u64>()) {
            (Ok(start), Ok(end)) if end >= start => Some((start, end.min(size.saturating_sub(1)))),
            (Ok(_), Ok(_)) => return RangeRequest::Full,
            _ => None,
        },
    };
    match parsed {
        None => RangeRequest::Full,
        Some((start, _)) if start >= size => RangeRequest::Unsatisfiable,
        Some((start, end)) => RangeRequest::Partial { start, end },
    }
}

/// The first byte position of a `Content-Range: bytes <first>-<last>/<total>` header.
pub fn content_range_start(value: &str) -> Option<u64> {
    let range = value.trim().strip_prefix("bytes")?.trim_start();
    let (first, _) = range.split_once('-')?;
    first.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_single_plain_segments_ending_in_img() {
        assert!(is_servable_name("vm-default-disk-0-0123abcd.img"));
        for bad in [
            "",
            ".img",
            "../etc/passwd.img",
            "a/b.img",
            "disk.img.part",
            "disk.raw",
            "%2e%2e.img",
            "disk 1.img",
        ] {
            assert!(!is_servable_name(bad), "{bad:?}");
        }
        assert!(!is_servable_name(&format!("{}.img", "a".repeat(300))));
    }

    #[test]
    fn ranges_follow_rfc_9110() {
        use RangeRequest::*;
        assert_eq!(parse_range(None, 100), Full);
        assert_eq!(parse_range(Some("bytes=0-9"), 100), Partial { start: 0, end: 9 });
        assert_eq!(
            parse_range(Some("bytes=90-"), 100),
            Partial { start: 90, end: 99 }
        );
        assert_eq!(
            parse_range(Some("bytes=-10"), 100),
            Partial { start: 90, end: 99 }
        );
        assert_eq!(
            parse_range(Some("bytes=-1000"), 100),
            Partial { start: 0, end: 99 }
        );
        assert_eq!(
            parse_range(Some("bytes=50-1000"), 100),
            Partial { start: 50, end: 99 }
        );
        assert_eq!(parse_range(Some("bytes=100-"), 100), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), 100), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-"), 0), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-1,5-6"), 100), Full);
        assert_eq!(parse_range(Some("bytes=9-0"), 100), Full);
        assert_eq!(parse_range(Some("items=0-1"), 100), Full);
        assert_eq!(parse_range(Some("bytes=x-1"), 100), Full);
    }

    #[test]
    fn content_range_start_is_read_from_the_header() {
        assert_eq!(content_range_start("bytes 1000-1999/2000"), Some(1000));
        assert_eq!(content_range_start("bytes  0-0/*"), Some(0));
        assert_eq!(content_range_start("items 1-2/3"), None);
        assert_eq!(content_range_start("bytes */2000"), None);
    }
}
