//! NFC device URLs of an export lease: where each disk is downloaded from. ESXi answering
//! directly (or through vCenter's proxy) may name itself `*`, meaning "the host you connected to".
//! The URL comes from the server, so it is checked: only http(s), and a `*` host becomes the SDK's.

use url::Url;

/// Replaces a `*` host by the SDK's host (and port, when the URL has none); refuses a URL that is
/// not http(s) or does not parse.
pub fn resolve_device_url(raw: &str, sdk: &Url) -> Option<Url> {
    let starred = raw.contains("://*/") || raw.contains("://*:");
    let text = if starred {
        raw.replacen("://*", "://placeholder.invalid", 1)
    } else {
        raw.to_owned()
    };
    let mut url = Url::parse(&text).ok()?;
    if url.scheme() != "https" && url.scheme() != "http" {
        return None;
    }
    if starred {
        url.set_host(sdk.host_str()).ok()?;
        if url.port().is_none() {
            url.set_port(sdk.port()).ok()?;
        }
    }
    Some(url)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn star_host_takes_the_sdk_host_and_port() {
        let sdk = Url::parse("https://127.0.0.1:8989/sdk").unwrap();
        assert_eq!(
            resolve_device_url("https://*/nfc/abc/disk-0.vmdk", &sdk)
                .unwrap()
                .as_str(),
            "https://127.0.0.1:8989/nfc/abc/disk-0.vmdk"
        );
        assert_eq!(
            resolve_device_url("https://esx1.example/nfc/abc/disk-0.vmdk", &sdk)
                .unwrap()
                .as_str(),
            "https://esx1.example/nfc/abc/disk-0.vmdk"
        );
        assert!(resolve_device_url("file:///etc/passwd", &sdk).is_none());
    }
}
