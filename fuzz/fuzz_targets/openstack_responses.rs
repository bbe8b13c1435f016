//! OpenStack answers: the hand-written header parsers (`Content-Range` of a resumed Glance download,
//! the compute microversion), the error-message extraction, every serde model with a custom decoder
//! (server image and flavor shapes, `bootable` strings, Glance's flattened properties, token expiry),
//! and clouds.yaml entries.
//!
//! Seed the corpus with a few real bodies, e.g. `curl` answers from the lab's fakes and Keystone.
#![no_main]

use libfuzzer_sys::fuzz_target;
use openstack::proto::{self, block_storage, clouds, compute, identity, image};

fuzz_target!(|data: &[u8]| {
    let _ = proto::error_message(data);
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some(range) = proto::parse_content_range(text) {
            assert!(range.start <= range.end);
            assert!(range.total.is_none_or(|t| range.end < t));
        }
        let _ = proto::parse_microversion(text);
        let _ = clouds::from_clouds_yaml(text, "lab", None);
    }
    if let Ok(server) = serde_json::from_slice::<compute::ServerResponse>(data) {
        let _ = compute::merge_nics(&server.server.addresses);
    }
    let _ = serde_json::from_slice::<compute::FlavorResponse>(data);
    let _ = serde_json::from_slice::<block_storage::VolumeResponse>(data);
    if let Ok(image) = serde_json::from_slice::<image::Image>(data) {
        let _ = image::Firmware::from_properties(&image.properties());
    }
    if let Ok(token) = serde_json::from_slice::<identity::TokenResponse>(data) {
        let _ = token.token.expires();
        let _ = identity::select_endpoint(
            &token.token.catalog,
            &["compute"],
            Some("RegionOne"),
            identity::Interface::Public,
        );
    }
});
