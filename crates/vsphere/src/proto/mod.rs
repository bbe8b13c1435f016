//! The pure half of the crate: vim25 SOAP as values. No sockets, no runtime, no clocks.
//!
//! ```text
//!  envelope::*()  ──► Request { method, body }   (sent by crate::client, or by anything else)
//!  bytes ──► response::body() ──► Element ──► response::{service_content, retrieve_result, lease_info, …}
//!                         └──► Err(Fault)       fault::Fault { kind: FaultKind, message }
//!  ObjectContent + NetworkInventory ──► vm::VmDescription ──► vm::match_device_url (lease ↔ disk)
//! ```
//!
//! Everything here is deterministic and fuzzable: [`response::body`] plus the typed parsers never
//! panic on hostile input, and bound what they allocate (see [`xml`]'s limits).

pub mod envelope;
pub mod fault;
pub mod nfc;
pub mod response;
pub mod vm;
pub mod xml;

use serde::{Deserialize, Serialize};

pub use envelope::{Password, Request};
pub use fault::{Fault, FaultKind};

/// A managed-object reference: the object's type and its server-side id (`VirtualMachine`, `vm-42`).
/// Ids are opaque (leases and views look like `session[52…]52…`) and only stable within one server.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MoRef {
    /// Managed object type, e.g. `VirtualMachine`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Server-side id, e.g. `vm-42`.
    pub value: String,
}

impl MoRef {
    /// A reference to `kind` object `value`.
    pub fn new(kind: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            value: value.into(),
        }
    }

    /// Reads `<x type="Kind">value</x>`; a missing `type` gives an empty kind.
    pub fn from_element(e: &xml::Element) -> Self {
        Self {
            kind: e.mor_type.clone().unwrap_or_default(),
            value: e.trimmed().to_owned(),
        }
    }
}

impl std::fmt::Display for MoRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.kind, self.value)
    }
}

/// Parses any SOAP response the client may receive and walks every typed parser over it; the
/// fuzz target `soap_response` calls this. Returns how many typed values were extracted, so the
/// optimiser cannot drop the work.
pub fn parse_any_response(bytes: &[u8]) -> usize {
    let mut found = 0;
    let body = match response::body("fuzz", bytes) {
        Ok(body) => body,
        Err(response::Error::Fault { fault, .. }) => return 1 + usize::from(fault.message.is_empty()),
        Err(_) => return 0,
    };
    found += usize::from(response::service_content(&body).is_ok());
    found += usize::from(response::moref("fuzz", &body).is_ok());
    if let Ok(page) = response::retrieve_result("fuzz", &body) {
        let networks = vm::NetworkInventory::from_objects(&page.objects);
        found += networks.networks.len();
        for object in &page.objects {
            found += usize::from(vm::VmDescription::from_object(object, &networks).is_ok());
            for (_, value) in &object.props {
                found += usize::from(response::task_info(value).is_ok());
                found += usize::from(response::lease_state(value).is_ok());
                if let Ok(info) = response::lease_info(value) {
                    found += info
                        .device_urls
                        .iter()
                        .filter_map(|d| vm::DeviceKey::parse(&d.key).ok())
                        .count();
                }
            }
        }
    }
    found
}

#[cfg(test)]
mod golden;

#[cfg(test)]
mod tests {
    /// Cheap deterministic fuzzing on every build: every prefix and a spread of byte flips of the
    /// recorded bodies must parse or fail cleanly, never panic.
    #[test]
    fn truncated_and_flipped_recorded_bodies_never_panic() {
        let bodies: [&[u8]; 6] = [
            include_bytes!("../../tests/data/service_content.xml"),
            include_bytes!("../../tests/data/fault_invalid_login.xml"),
            include_bytes!("../../tests/data/vm_properties_vcsim_default.xml"),
            include_bytes!("../../tests/data/vm_properties_lab_efi_nvme.xml"),
            include_bytes!("../../tests/data/lease_state_info_lab.xml"),
            include_bytes!("../../tests/data/task_info_error_lab.xml"),
        ];
        for body in bodies {
            assert!(super::parse_any_response(body) > 0);
            for end in (0..body.len()).step_by(7) {
                let _ = super::parse_any_response(&body[..end]);
            }
            for (i, flip) in (0..body.len())
                .step_by(13)
                .zip([b'<', b'>', b'&', b'"', 0xff, b'/', b'0'].iter().cycle())
            {
                let mut mutated = body.to_vec();
                mutated[i] = *flip;
                let _ = super::parse_any_response(&mutated);
            }
        }
    }
}
