//! Response bodies: unwrap the SOAP envelope (or its fault) and read the typed results of the calls
//! in [`super::envelope`]: service content, managed-object references, property-collector pages,
//! task info and NFC lease info.

use serde::{Deserialize, Serialize};

use super::{
    MoRef,
    fault::{self, Fault},
    xml::{self, Element},
};

/// Why a response could not be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The body is not acceptable XML.
    #[error("{method} response is not valid XML")]
    Xml {
        /// The call that was answered.
        method: &'static str,
        /// What the XML layer found.
        #[source]
        source: xml::Error,
    },
    /// The server answered with a vmodl fault.
    #[error("{method} failed")]
    Fault {
        /// The call that failed.
        method: &'static str,
        /// The typed fault.
        #[source]
        fault: Fault,
    },
    /// The XML is fine but an element we need is missing or malformed.
    #[error("{method} response: {what}")]
    Shape {
        /// The call that was answered.
        method: &'static str,
        /// What was wrong, naming the element.
        what: String,
    },
}

impl Error {
    /// The vmodl fault, if the server sent one.
    pub fn fault(&self) -> Option<&Fault> {
        match self {
            Self::Fault { fault, .. } => Some(fault),
            Self::Xml { .. } | Self::Shape { .. } => None,
        }
    }
}

fn shape(method: &'static str, what: impl Into<String>) -> Error {
    Error::Shape {
        method,
        what: what.into(),
    }
}

/// Parses an envelope and returns the first element inside `Body` (the `…Response`), or the fault.
///
/// # Errors
/// [`Error::Xml`] for bad XML, [`Error::Fault`] for a `soapenv:Fault`, [`Error::Shape`] without a body.
pub fn body(method: &'static str, bytes: &[u8]) -> Result<Element, Error> {
    let root = xml::parse(bytes).map_err(|source| Error::Xml { method, source })?;
    if root.name != "Envelope" {
        return Err(shape(
            method,
            format!("root element is <{}>, expected <Envelope>", root.name),
        ));
    }
    let mut body = root
        .children
        .into_iter()
        .find(|c| c.name == "Body")
        .ok_or_else(|| shape(method, "no <Body> in the envelope"))?;
    if body.children.is_empty() {
        return Err(shape(method, "empty <Body>"));
    }
    let first = body.children.swap_remove(0);
    if first.name == "Fault" {
        return Err(Error::Fault {
            method,
            fault: fault::from_soap_fault(&first),
        });
    }
    Ok(first)
}

/// The handles and facts from `RetrieveServiceContent`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceContent {
    /// Root folder of the inventory.
    pub root_folder: MoRef,
    /// The property collector.
    pub property_collector: MoRef,
    /// The view manager (container views).
    pub view_manager: MoRef,
    /// The search index (`FindByInventoryPath`).
    pub search_index: MoRef,
    /// The session manager (`Login`/`Logout`).
    pub session_manager: MoRef,
    /// `about.apiVersion`, e.g. `8.0.3.0`: goes into `SOAPAction`.
    pub api_version: String,
    /// `about.apiType`: `VirtualCenter` or `HostAgent` (standalone ESXi).
    pub api_type: String,
    /// `about.fullName`, for reports.
    pub full_name: String,
}

fn moref_at(method: &'static str, e: &Element, path: &str) -> Result<MoRef, Error> {
    let element = e
        .path(path)
        .ok_or_else(|| shape(method, format!("missing <{path}>")))?;
    let moref = MoRef::from_element(element);
    if moref.kind.is_empty() || moref.value.is_empty() {
        return Err(shape(
            method,
            format!("<{path}> is not a managed object reference"),
        ));
    }
    Ok(moref)
}

/// Parses a `RetrieveServiceContentResponse` body element.
///
/// # Errors
/// [`Error::Shape`] naming the missing element.
pub fn service_content(response: &Element) -> Result<ServiceContent, Error> {
    const M: &str = "RetrieveServiceContent";
    let r = response
        .child("returnval")
        .ok_or_else(|| shape(M, "missing <returnval>"))?;
    let text = |path: &str| -> Result<String, Error> {
        r.text_at(path)
            .map(str::to_owned)
            .ok_or_else(|| shape(M, format!("missing <{path}>")))
    };
    Ok(ServiceContent {
        root_folder: moref_at(M, r, "rootFolder")?,
        property_collector: moref_at(M, r, "propertyCollector")?,
        view_manager: moref_at(M, r, "viewManager")?,
        search_index: moref_at(M, r, "searchIndex")?,
        session_manager: moref_at(M, r, "sessionManager")?,
        api_version: text("about/apiVersion")?,
        api_type: text("about/apiType")?,
        full_name: r.text_at("about/fullName").unwrap_or_default().to_owned(),
    })
}

/// The `returnval` managed-object reference of a response, `None` when absent (e.g.
/// `FindByInventoryPath` found nothing).
///
/// # Errors
/// [`Error::Shape`] when `returnval` is present but not a reference.
pub fn optional_moref(method: &'static str, response: &Element) -> Result<Option<MoRef>, Error> {
    match response.child("returnval") {
        None => Ok(None),
        Some(_) => moref_at(method, response, "returnval").map(Some),
    }
}

/// The `returnval` managed-object reference of a response (ExportVm, PowerOffVM_Task, CreateContainerView).
///
/// # Errors
/// [`Error::Shape`] when it is missing.
pub fn moref(method: &'static str, response: &Element) -> Result<MoRef, Error> {
    moref_at(method, response, "returnval")
}

/// One object of a property-collector result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectContent {
    /// The object.
    pub obj: MoRef,
    /// `(property path, value element)` pairs as returned.
    pub props: Vec<(String, Element)>,
    /// Properties the server could not read, with its fault.
    pub missing: Vec<(String, Fault)>,
}

impl ObjectContent {
    /// The value element of property `path`.
    pub fn prop(&self, path: &str) -> Option<&Element> {
        self.props.iter().find(|(p, _)| p == path).map(|(_, v)| v)
    }

    /// The trimmed text of property `path`.
    pub fn text(&self, path: &str) -> Option<&str> {
        self.prop(path).map(Element::trimmed)
    }
}

/// One page of `RetrievePropertiesEx`/`ContinueRetrievePropertiesEx`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RetrieveResult {
    /// Objects on this page.
    pub objects: Vec<ObjectContent>,
    /// Present when more pages remain.
    pub token: Option<String>,
}

/// Parses a `RetrievePropertiesExResponse`/`ContinueRetrievePropertiesExResponse` body element.
/// An absent `returnval` means "no objects".
///
/// # Errors
/// [`Error::Shape`] naming the malformed element.
pub fn retrieve_result(method: &'static str, response: &Element) -> Result<RetrieveResult, Error> {
    let Some(r) = response.child("returnval") else {
        return Ok(RetrieveResult::default());
    };
    let mut result = RetrieveResult {
        token: r.text_at("token").filter(|t| !t.is_empty()).map(str::to_owned),
        objects: Vec::new(),
    };
    for (i, o) in r.children_named("objects").enumerate() {
        let obj =
            moref_at(method, o, "obj").map_err(|_| shape(method, format!("objects[{i}] has no <obj>")))?;
        let mut props = Vec::new();
        for p in o.children_named("propSet") {
            let name = p
                .text_at("name")
                .ok_or_else(|| shape(method, format!("objects[{i}] propSet without <name>")))?;
            let val = p.child("val").cloned().unwrap_or_default();
            props.push((name.to_owned(), val));
        }
        let missing = o
            .children_named("missingSet")
            .map(|m| {
                (
                    m.text_at("path").unwrap_or_default().to_owned(),
                    m.child("fault").map(fault::from_localized).unwrap_or(Fault {
                        kind: fault::FaultKind::Other {
                            name: "MissingProperty".into(),
                        },
                        message: String::new(),
                    }),
                )
            })
            .collect();
        result.objects.push(ObjectContent { obj, props, missing });
    }
    Ok(result)
}

/// `TaskInfo.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum TaskState {
    /// Waiting to run.
    Queued,
    /// Running.
    Running,
    /// Finished well.
    Success,
    /// Finished with `info.error`.
    Error,
}

/// The part of `TaskInfo` we poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskInfo {
    /// Current state.
    pub state: TaskState,
    /// The fault when `state == Error`.
    pub error: Option<Fault>,
    /// `progress` percent while running, if reported.
    pub progress: Option<u8>,
}

/// Parses a `TaskInfo` value element (the `info` property of a `Task`).
///
/// # Errors
/// [`Error::Shape`] for a missing or unknown state.
pub fn task_info(val: &Element) -> Result<TaskInfo, Error> {
    const M: &str = "RetrievePropertiesEx(Task.info)";
    let state = match val.text_at("state") {
        Some("queued") => TaskState::Queued,
        Some("running") => TaskState::Running,
        Some("success") => TaskState::Success,
        Some("error") => TaskState::Error,
        Some(other) => {
            return Err(shape(
                M,
                format!(
                    "unknown task state '{}'",
                    other.chars().take(64).collect::<String>()
                ),
            ));
        }
        None => return Err(shape(M, "TaskInfo without <state>")),
    };
    Ok(TaskInfo {
        state,
        error: val.child("error").map(fault::from_localized),
        progress: val.text_at("progress").and_then(|p| p.parse::<u8>().ok()),
    })
}

/// `HttpNfcLease.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum LeaseState {
    /// Still preparing the export.
    Initializing,
    /// URLs are valid; download.
    Ready,
    /// Completed or aborted.
    Done,
    /// Failed; read `error`.
    Error,
}

/// Parses an `HttpNfcLeaseState` value.
///
/// # Errors
/// [`Error::Shape`] for an unknown state.
pub fn lease_state(val: &Element) -> Result<LeaseState, Error> {
    match val.trimmed() {
        "initializing" => Ok(LeaseState::Initializing),
        "ready" => Ok(LeaseState::Ready),
        "done" => Ok(LeaseState::Done),
        "error" => Ok(LeaseState::Error),
        other => Err(shape(
            "RetrievePropertiesEx(HttpNfcLease.state)",
            format!(
                "unknown lease state '{}'",
                other.chars().take(64).collect::<String>()
            ),
        )),
    }
}

/// One `HttpNfcLeaseDeviceUrl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceUrl {
    /// Device id, e.g. `/vm-42/VirtualLsiLogicController0:0`.
    pub key: String,
    /// Download URL, host possibly `*`.
    pub url: String,
    /// SHA-1 thumbprint of the host serving `url`, if given.
    pub ssl_thumbprint: Option<String>,
    /// Whether this item is a disk (nvram/iso items are not).
    pub disk: bool,
    /// e.g. `disk-0.vmdk`.
    pub target_id: Option<String>,
    /// Announced size; informational only (often 0 or the sum of all disks).
    pub file_size: Option<i64>,
}

/// The parts of `HttpNfcLeaseInfo` an export needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseInfo {
    /// Items to download.
    pub device_urls: Vec<DeviceUrl>,
    /// Seconds without progress after which the server expires the lease.
    pub lease_timeout_secs: u32,
    /// Sum of disk capacities (informational).
    pub total_disk_capacity_kb: Option<i64>,
}

/// Parses an `HttpNfcLeaseInfo` value element.
///
/// # Errors
/// [`Error::Shape`] for a device URL without key or url.
pub fn lease_info(val: &Element) -> Result<LeaseInfo, Error> {
    const M: &str = "RetrievePropertiesEx(HttpNfcLease.info)";
    let mut device_urls = Vec::new();
    for (i, d) in val.children_named("deviceUrl").enumerate() {
        let field = |name: &str| d.text_at(name).filter(|s| !s.is_empty()).map(str::to_owned);
        device_urls.push(DeviceUrl {
            key: field("key").ok_or_else(|| shape(M, format!("deviceUrl[{i}] without <key>")))?,
            url: field("url").ok_or_else(|| shape(M, format!("deviceUrl[{i}] without <url>")))?,
            ssl_thumbprint: field("sslThumbprint"),
            disk: d.text_at("disk") == Some("true"),
            target_id: field("targetId"),
            file_size: d.text_at("fileSize").and_then(|s| s.parse().ok()),
        });
    }
    Ok(LeaseInfo {
        device_urls,
        // vSphere's documented default; a missing or silly value must not disable our keep-alive.
        lease_timeout_secs: val
            .text_at("leaseTimeout")
            .and_then(|s| s.parse().ok())
            .filter(|&t| t > 0)
            .unwrap_or(300),
        total_disk_capacity_kb: val.text_at("totalDiskCapacityInKB").and_then(|s| s.parse().ok()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVICE_CONTENT: &[u8] = include_bytes!("../../tests/data/service_content.xml");
    const INVALID_LOGIN: &[u8] = include_bytes!("../../tests/data/fault_invalid_login.xml");

    #[test]
    fn service_content_from_simulator() {
        let r = body("RetrieveServiceContent", SERVICE_CONTENT).unwrap();
        let sc = service_content(&r).unwrap();
        assert_eq!(sc.session_manager, MoRef::new("SessionManager", "SessionManager"));
        assert_eq!(sc.property_collector.kind, "PropertyCollector");
        assert_eq!(sc.root_folder.kind, "Folder");
        assert_eq!(sc.api_type, "VirtualCenter");
        assert!(!sc.api_version.is_empty());
    }

    #[test]
    fn invalid_login_fault_from_simulator() {
        let err = body("Login", INVALID_LOGIN).unwrap_err();
        assert_eq!(
            err.fault().map(|f| &f.kind),
            Some(&fault::FaultKind::InvalidLogin)
        );
    }

    #[test]
    fn body_rejects_non_envelopes() {
        assert!(matches!(body("Login", b"<html/>"), Err(Error::Shape { .. })));
        assert!(matches!(body("Login", b"<html>"), Err(Error::Xml { .. })));
    }

    #[test]
    fn retrieve_result_with_token_props_and_missing() {
        let r = xml::parse(
            br#"<R xmlns:xsi="x"><returnval><token>7</token><objects><obj type="VirtualMachine">vm-1</obj>
            <propSet><name>name</name><val xsi:type="xsd:string">web</val></propSet>
            <missingSet><path>config</path><fault><fault xsi:type="NoPermission"/><localizedMessage>no</localizedMessage></fault></missingSet>
            </objects></returnval></R>"#,
        )
        .unwrap();
        let page = retrieve_result("RetrievePropertiesEx", &r).unwrap();
        assert_eq!(page.token.as_deref(), Some("7"));
        assert_eq!(page.objects[0].text("name"), Some("web"));
        assert_eq!(page.objects[0].missing[0].0, "config");
        assert!(matches!(
            page.objects[0].missing[0].1.kind,
            fault::FaultKind::NoPermission { .. }
        ));
    }

    #[test]
    fn lease_info_and_task_info() {
        let v = xml::parse(
            br#"<val><deviceUrl><key>/vm-4681/ParaVirtualSCSIController0:0</key><importKey></importKey>
            <url>https://*/nfc/52/disk-0.vmdk</url><sslThumbprint>69:21</sslThumbprint><disk>true</disk>
            <targetId>disk-0.vmdk</targetId></deviceUrl><totalDiskCapacityInKB>1024</totalDiskCapacityInKB>
            <leaseTimeout>30</leaseTimeout></val>"#,
        )
        .unwrap();
        let info = lease_info(&v).unwrap();
        assert_eq!(info.lease_timeout_secs, 30);
        assert!(info.device_urls[0].disk);
        assert_eq!(info.device_urls[0].file_size, None);
        let t = xml::parse(br#"<info><state>error</state><error><fault xsi:type="TaskInProgress" xmlns:xsi="x"/><localizedMessage>busy</localizedMessage></error></info>"#).unwrap();
        let t = task_info(&t).unwrap();
        assert_eq!(t.state, TaskState::Error);
        assert_eq!(t.error.unwrap().kind, fault::FaultKind::TaskInProgress);
    }
}
