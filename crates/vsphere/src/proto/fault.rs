//! vmodl faults: the `soapenv:Fault` of a failed call and the `LocalizedMethodFault` carried inside
//! task and lease errors, turned into one typed [`Fault`].

use serde::{Deserialize, Serialize};

use super::{MoRef, xml::Element};

/// Longest fault message we keep; longer ones are cut so a hostile server cannot make every error huge.
pub const MAX_FAULT_MESSAGE: usize = 4096;

/// The fault types callers act on; everything else keeps its vim25 type name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
#[non_exhaustive]
pub enum FaultKind {
    /// Wrong user name or password.
    InvalidLogin,
    /// The session is gone (expired or never logged in): log in again.
    NotAuthenticated,
    /// The object does not exist (any more).
    ManagedObjectNotFound {
        /// The object the server named, if it did.
        obj: Option<MoRef>,
    },
    /// The object is in the wrong state for the call.
    InvalidState,
    /// The VM's power state forbids the call.
    InvalidPowerState {
        /// `requestedState`, if given.
        requested: Option<String>,
        /// `existingState`, if given.
        existing: Option<String>,
    },
    /// Another task holds the object.
    TaskInProgress,
    /// VMware Tools are not running in the guest.
    ToolsUnavailable,
    /// The operation timed out on the server side.
    Timedout,
    /// The user lacks a privilege.
    NoPermission {
        /// `privilegeId`, if given.
        privilege: Option<String>,
    },
    /// Any other fault, by its vim25 type name.
    Other {
        /// e.g. `FileFault`, `RestrictedVersion`, `SystemError`.
        name: String,
    },
}

impl FaultKind {
    /// The vim25 type name of this fault.
    pub fn type_name(&self) -> &str {
        match self {
            Self::InvalidLogin => "InvalidLogin",
            Self::NotAuthenticated => "NotAuthenticated",
            Self::ManagedObjectNotFound { .. } => "ManagedObjectNotFound",
            Self::InvalidState => "InvalidState",
            Self::InvalidPowerState { .. } => "InvalidPowerState",
            Self::TaskInProgress => "TaskInProgress",
            Self::ToolsUnavailable => "ToolsUnavailable",
            Self::Timedout => "Timedout",
            Self::NoPermission { .. } => "NoPermission",
            Self::Other { name } => name,
        }
    }
}

/// A vmodl fault: its kind and the server's localized message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("vSphere fault {}: {message}", kind.type_name())]
pub struct Fault {
    /// What went wrong, typed.
    pub kind: FaultKind,
    /// `faultstring` / `localizedMessage` (may be empty; cut at [`MAX_FAULT_MESSAGE`] bytes).
    pub message: String,
}

fn bounded(message: &str) -> String {
    let message = message.trim();
    if message.len() <= MAX_FAULT_MESSAGE {
        return message.to_owned();
    }
    let mut end = MAX_FAULT_MESSAGE;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &message[..end])
}

/// Reads the typed kind from a fault-detail element (`<InvalidLoginFault xsi:type="InvalidLogin">`,
/// or govmomi's `<InvalidLogin>`), falling back to the element name without a `Fault` suffix.
pub fn kind_from_detail(detail: &Element) -> FaultKind {
    let name = detail.xsi_type.clone().unwrap_or_else(|| {
        detail
            .name
            .strip_suffix("Fault")
            .unwrap_or(&detail.name)
            .to_owned()
    });
    match name.as_str() {
        "InvalidLogin" => FaultKind::InvalidLogin,
        "NotAuthenticated" => FaultKind::NotAuthenticated,
        "ManagedObjectNotFound" => FaultKind::ManagedObjectNotFound {
            obj: detail.child("obj").map(MoRef::from_element),
        },
        "InvalidState" => FaultKind::InvalidState,
        "InvalidPowerState" => FaultKind::InvalidPowerState {
            requested: detail.text_at("requestedState").map(str::to_owned),
            existing: detail.text_at("existingState").map(str::to_owned),
        },
        "TaskInProgress" => FaultKind::TaskInProgress,
        "ToolsUnavailable" => FaultKind::ToolsUnavailable,
        "Timedout" => FaultKind::Timedout,
        "NoPermission" => FaultKind::NoPermission {
            privilege: detail.text_at("privilegeId").map(str::to_owned),
        },
        _ => FaultKind::Other { name: bounded(&name) },
    }
}

/// Parses a `soapenv:Fault` element. A fault without `detail` (e.g. a malformed request) becomes
/// [`FaultKind::Other`] named after its `faultcode`.
pub fn from_soap_fault(fault: &Element) -> Fault {
    let message = bounded(fault.text_at("faultstring").unwrap_or_default());
    let kind = match fault.child("detail").and_then(|d| d.children.first()) {
        Some(detail) => kind_from_detail(detail),
        None => FaultKind::Other {
            name: bounded(fault.text_at("faultcode").unwrap_or("SoapFault")),
        },
    };
    Fault { kind, message }
}

/// Parses a `LocalizedMethodFault` (`<error><fault xsi:type="…">…</fault><localizedMessage>…`).
pub fn from_localized(element: &Element) -> Fault {
    let message = bounded(element.text_at("localizedMessage").unwrap_or_default());
    let kind = match element.child("fault") {
        Some(detail) => kind_from_detail(detail),
        None => FaultKind::Other {
            name: "LocalizedMethodFault".into(),
        },
    };
    Fault { kind, message }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::xml;

    #[test]
    fn vcenter_style_invalid_login() {
        let root = xml::parse(
            br#"<soapenv:Fault xmlns:soapenv="s" xmlns:xsi="x"><faultcode>ServerFaultCode</faultcode>
            <faultstring>Cannot complete login due to an incorrect user name or password.</faultstring>
            <detail><InvalidLoginFault xmlns="urn:vim25" xsi:type="InvalidLogin"></InvalidLoginFault></detail>
            </soapenv:Fault>"#,
        )
        .unwrap();
        let fault = from_soap_fault(&root);
        assert_eq!(fault.kind, FaultKind::InvalidLogin);
        assert!(fault.message.starts_with("Cannot complete login"));
    }

    #[test]
    fn govmomi_style_detail_and_fields() {
        let root = xml::parse(
            br#"<Fault xmlns:xsi="x"><faultcode>ServerFaultCode</faultcode><faultstring></faultstring>
            <detail><InvalidPowerStateFault xsi:type="InvalidPowerState"><requestedState>poweredOn</requestedState>
            <existingState>poweredOff</existingState></InvalidPowerStateFault></detail></Fault>"#,
        )
        .unwrap();
        assert_eq!(
            from_soap_fault(&root).kind,
            FaultKind::InvalidPowerState {
                requested: Some("poweredOn".into()),
                existing: Some("poweredOff".into())
            }
        );
        let root = xml::parse(br#"<Fault><detail><ManagedObjectNotFound><obj type="VirtualMachine">vm-9</obj></ManagedObjectNotFound></detail></Fault>"#).unwrap();
        assert_eq!(
            from_soap_fault(&root).kind,
            FaultKind::ManagedObjectNotFound {
                obj: Some(MoRef::new("VirtualMachine", "vm-9"))
            }
        );
    }

    #[test]
    fn unknown_faults_keep_their_name_and_messages_are_bounded() {
        let long = "x".repeat(MAX_FAULT_MESSAGE * 2);
        let body = format!(
            r#"<Fault xmlns:xsi="x"><faultstring>{long}</faultstring><detail><F xsi:type="RestrictedVersion"/></detail></Fault>"#
        );
        let fault = from_soap_fault(&xml::parse(body.as_bytes()).unwrap());
        assert_eq!(
            fault.kind,
            FaultKind::Other {
                name: "RestrictedVersion".into()
            }
        );
        assert!(fault.message.len() <= MAX_FAULT_MESSAGE + 4);
        assert_eq!(
            fault.to_string().len(),
            fault.message.len() + "vSphere fault RestrictedVersion: ".len()
        );
    }
}
