//! Request envelopes: one pure function per vim25 method we call, each returning a [`Request`]
//! (method name + complete SOAP body). Every caller-supplied value goes through
//! [`super::xml::escape`]; element order follows the WSDL sequences (vim25 servers reject
//! out-of-order children).

use std::fmt;

use super::{
    MoRef,
    xml::{escape, escape_into},
};

/// `maxObjects` asked for per `RetrievePropertiesEx` page; the server may send fewer and a token.
pub const PAGE_SIZE: u32 = 500;

const HEADER: &str = concat!(
    r#"<?xml version="1.0" encoding="UTF-8"?>"#,
    r#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/""#,
    r#" xmlns:xsd="http://www.w3.org/2001/XMLSchema""#,
    r#" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>"#
);
const FOOTER: &str = "</soapenv:Body></soapenv:Envelope>";

/// A secret that never shows in `Debug` or `Display` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// Wraps a password.
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// The secret itself; only the `Login` envelope should need it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl From<String> for Password {
    fn from(value: String) -> Self {
        Self(value)
    }
}

/// One SOAP call ready to send.
#[derive(Clone, PartialEq, Eq)]
pub struct Request {
    /// The vim25 method name (for logs and errors).
    pub method: &'static str,
    /// The full XML envelope. May hold a password (`Login`), hence the redacting `Debug`.
    pub body: String,
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method)
            .finish_non_exhaustive()
    }
}

fn push_moref(out: &mut String, element: &str, moref: &MoRef) {
    out.push('<');
    out.push_str(element);
    out.push_str(" type=\"");
    escape_into(out, &moref.kind);
    out.push_str("\">");
    escape_into(out, &moref.value);
    out.push_str("</");
    out.push_str(element);
    out.push('>');
}

fn push_text(out: &mut String, element: &str, value: &str) {
    out.push('<');
    out.push_str(element);
    out.push('>');
    escape_into(out, value);
    out.push_str("</");
    out.push_str(element);
    out.push('>');
}

/// Builds `<method xmlns="urn:vim25"><_this …/>…</method>` with `rest` already-escaped XML after `_this`.
fn call(method: &'static str, this: &MoRef, rest: &str) -> Request {
    let mut body = String::with_capacity(HEADER.len() + FOOTER.len() + rest.len() + 128);
    body.push_str(HEADER);
    body.push('<');
    body.push_str(method);
    body.push_str(r#" xmlns="urn:vim25">"#);
    push_moref(&mut body, "_this", this);
    body.push_str(rest);
    body.push_str("</");
    body.push_str(method);
    body.push('>');
    body.push_str(FOOTER);
    Request { method, body }
}

/// `RetrieveServiceContent` on the well-known `ServiceInstance`.
pub fn retrieve_service_content() -> Request {
    call(
        "RetrieveServiceContent",
        &MoRef::new("ServiceInstance", "ServiceInstance"),
        "",
    )
}

/// `Login(userName, password)`.
pub fn login(session_manager: &MoRef, username: &str, password: &Password) -> Request {
    let mut rest = String::new();
    push_text(&mut rest, "userName", username);
    push_text(&mut rest, "password", password.expose());
    call("Login", session_manager, &rest)
}

/// `Logout`.
pub fn logout(session_manager: &MoRef) -> Request {
    call("Logout", session_manager, "")
}

/// `FindByInventoryPath`; `path` is already joined and `%2f`-escaped (see [`inventory_path`]).
pub fn find_by_inventory_path(search_index: &MoRef, path: &str) -> Request {
    let mut rest = String::new();
    push_text(&mut rest, "inventoryPath", path);
    call("FindByInventoryPath", search_index, &rest)
}

/// `FindChild(entity, name)`: one level below a folder (or datacenter), by exact name.
pub fn find_child(search_index: &MoRef, entity: &MoRef, name: &str) -> Request {
    let mut rest = String::new();
    push_moref(&mut rest, "entity", entity);
    push_text(&mut rest, "name", name);
    call("FindChild", search_index, &rest)
}

/// Joins inventory names into a `FindByInventoryPath` path: a literal `/` inside a name is `%2f`
/// and `%` itself is `%25`, as vSphere escapes them in inventory names.
pub fn inventory_path<'a>(segments: impl IntoIterator<Item = &'a str>) -> String {
    let mut path = String::new();
    for (i, segment) in segments.into_iter().enumerate() {
        if i > 0 {
            path.push('/');
        }
        for c in segment.chars() {
            match c {
                '%' => path.push_str("%25"),
                '/' => path.push_str("%2f"),
                c => path.push(c),
            }
        }
    }
    path
}

/// `CreateContainerView(container, type[], recursive)`.
pub fn create_container_view(
    view_manager: &MoRef,
    container: &MoRef,
    types: &[&str],
    recursive: bool,
) -> Request {
    let mut rest = String::new();
    push_moref(&mut rest, "container", container);
    for t in types {
        push_text(&mut rest, "type", t);
    }
    push_text(&mut rest, "recursive", if recursive { "true" } else { "false" });
    call("CreateContainerView", view_manager, &rest)
}

/// `DestroyView`.
pub fn destroy_view(view: &MoRef) -> Request {
    call("DestroyView", view, "")
}

/// Which properties to read for objects of one type (`PropertySpec`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PropertySpec {
    /// Managed object type, e.g. `VirtualMachine`.
    pub kind: String,
    /// Property paths, e.g. `config.hardware.device`.
    pub paths: Vec<String>,
}

impl PropertySpec {
    /// A spec for `kind` reading `paths`.
    pub fn new(kind: &str, paths: &[&str]) -> Self {
        Self {
            kind: kind.to_owned(),
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
        }
    }
}

/// Where to start collecting (`ObjectSpec`): one object, or everything a `ContainerView` holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectSpec {
    /// Exactly this object.
    Object(MoRef),
    /// The objects in this `ContainerView` (the view itself skipped), via a `view` traversal.
    View(MoRef),
}

/// `RetrievePropertiesEx(specSet, options{maxObjects})`.
pub fn retrieve_properties_ex(collector: &MoRef, props: &[PropertySpec], objects: &[ObjectSpec]) -> Request {
    let mut rest = String::from("<specSet>");
    for spec in props {
        rest.push_str("<propSet>");
        push_text(&mut rest, "type", &spec.kind);
        push_text(&mut rest, "all", "false");
        for p in &spec.paths {
            push_text(&mut rest, "pathSet", p);
        }
        rest.push_str("</propSet>");
    }
    for object in objects {
        rest.push_str("<objectSet>");
        match object {
            ObjectSpec::Object(moref) => {
                push_moref(&mut rest, "obj", moref);
                push_text(&mut rest, "skip", "false");
            }
            ObjectSpec::View(view) => {
                push_moref(&mut rest, "obj", view);
                push_text(&mut rest, "skip", "true");
                rest.push_str(r#"<selectSet xsi:type="TraversalSpec">"#);
                push_text(&mut rest, "name", "traverseView");
                push_text(&mut rest, "type", "ContainerView");
                push_text(&mut rest, "path", "view");
                push_text(&mut rest, "skip", "false");
                rest.push_str("</selectSet>");
            }
        }
        rest.push_str("</objectSet>");
    }
    rest.push_str("</specSet><options>");
    push_text(&mut rest, "maxObjects", &PAGE_SIZE.to_string());
    rest.push_str("</options>");
    call("RetrievePropertiesEx", collector, &rest)
}

/// `ContinueRetrievePropertiesEx(token)`.
pub fn continue_retrieve_properties_ex(collector: &MoRef, token: &str) -> Request {
    let mut rest = String::new();
    push_text(&mut rest, "token", token);
    call("ContinueRetrievePropertiesEx", collector, &rest)
}

/// `CancelRetrievePropertiesEx(token)`: releases a result set we stop reading early.
pub fn cancel_retrieve_properties_ex(collector: &MoRef, token: &str) -> Request {
    let mut rest = String::new();
    push_text(&mut rest, "token", token);
    call("CancelRetrievePropertiesEx", collector, &rest)
}

/// `ExportVm` (returns an `HttpNfcLease`, not a task).
pub fn export_vm(vm: &MoRef) -> Request {
    call("ExportVm", vm, "")
}

/// `HttpNfcLeaseProgress(percent)`; `percent` is clamped to 0..=100.
pub fn lease_progress(lease: &MoRef, percent: u8) -> Request {
    let rest = format!("<percent>{}</percent>", percent.min(100));
    call("HttpNfcLeaseProgress", lease, &rest)
}

/// `HttpNfcLeaseComplete`.
pub fn lease_complete(lease: &MoRef) -> Request {
    call("HttpNfcLeaseComplete", lease, "")
}

/// `HttpNfcLeaseAbort`, optionally with a `LocalizedMethodFault` saying why (shown in vCenter's tasks).
pub fn lease_abort(lease: &MoRef, reason: Option<&str>) -> Request {
    let rest = match reason {
        Some(reason) => format!(
            r#"<fault><fault xsi:type="SystemError"><reason>{0}</reason></fault><localizedMessage>{0}</localizedMessage></fault>"#,
            escape(reason)
        ),
        None => String::new(),
    };
    call("HttpNfcLeaseAbort", lease, &rest)
}

/// `ShutdownGuest` (asks VMware Tools; returns immediately).
pub fn shutdown_guest(vm: &MoRef) -> Request {
    call("ShutdownGuest", vm, "")
}

/// `PowerOffVM_Task` (returns a `Task`).
pub fn power_off(vm: &MoRef) -> Request {
    call("PowerOffVM_Task", vm, "")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::xml;

    #[test]
    fn login_escapes_values_and_hides_password_in_debug() {
        let req = login(
            &MoRef::new("SessionManager", "SessionManager"),
            "a<b",
            &Password::new("p&'\"<>"),
        );
        assert!(req.body.contains("<userName>a&lt;b</userName>"));
        assert!(
            req.body
                .contains("<password>p&amp;&apos;&quot;&lt;&gt;</password>")
        );
        assert!(!format!("{req:?}").contains("p&"));
        assert_eq!(format!("{:?}", Password::new("secret")), "***");
        // The envelope is well-formed and round-trips the hostile value.
        let root = xml::parse(req.body.as_bytes()).unwrap();
        assert_eq!(root.text_at("Body/Login/password"), Some("p&'\"<>"));
    }

    #[test]
    fn retrieve_properties_ex_orders_children_per_wsdl() {
        let req = retrieve_properties_ex(
            &MoRef::new("PropertyCollector", "propertyCollector"),
            &[PropertySpec::new("VirtualMachine", &["name", "config"])],
            &[ObjectSpec::View(MoRef::new("ContainerView", "session[1]2"))],
        );
        let expected = concat!(
            r#"<RetrievePropertiesEx xmlns="urn:vim25"><_this type="PropertyCollector">propertyCollector</_this>"#,
            r#"<specSet><propSet><type>VirtualMachine</type><all>false</all><pathSet>name</pathSet>"#,
            r#"<pathSet>config</pathSet></propSet><objectSet><obj type="ContainerView">session[1]2</obj>"#,
            r#"<skip>true</skip><selectSet xsi:type="TraversalSpec"><name>traverseView</name>"#,
            r#"<type>ContainerView</type><path>view</path><skip>false</skip></selectSet></objectSet>"#,
            r#"</specSet><options><maxObjects>500</maxObjects></options></RetrievePropertiesEx>"#
        );
        assert!(req.body.contains(expected), "{}", req.body);
    }

    #[test]
    fn inventory_path_escapes_slash_and_percent() {
        assert_eq!(inventory_path(["DC0", "vm", "a/b", "50%"]), "DC0/vm/a%2fb/50%25");
    }

    #[test]
    fn find_child_names_entity_then_escaped_name() {
        let req = find_child(
            &MoRef::new("SearchIndex", "SearchIndex"),
            &MoRef::new("Folder", "group-v3"),
            "a&b",
        );
        assert!(
            req.body
                .contains(r#"<entity type="Folder">group-v3</entity><name>a&amp;b</name>"#),
            "{}",
            req.body
        );
    }

    #[test]
    fn progress_is_clamped() {
        let req = lease_progress(&MoRef::new("HttpNfcLease", "lease-1"), 250);
        assert!(req.body.contains("<percent>100</percent>"));
    }
}
