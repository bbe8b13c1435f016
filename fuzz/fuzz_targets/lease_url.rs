//! vSphere lease device URLs on arbitrary text: never a panic; what resolves is http(s), and a `*`
//! host becomes the SDK's host.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vsphere::proto::nfc::resolve_device_url;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(sdk) = url::Url::parse("https://vcenter.example:8443/sdk") else {
        return;
    };
    if let Some(url) = resolve_device_url(text, &sdk) {
        assert!(matches!(url.scheme(), "http" | "https"));
        if text.contains("://*/") {
            assert_eq!(url.host_str(), Some("vcenter.example"));
        }
    }
});
