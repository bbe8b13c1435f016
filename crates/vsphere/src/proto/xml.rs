//! XML plumbing for SOAP: escaping values into envelopes, and a small bounded element tree built
//! from a response body with quick-xml. It owns no vim25 knowledge; typed parsing lives in
//! [`super::response`] and [`super::vm`].
//!
//! Namespace prefixes are dropped (vim25 bodies use one default namespace; `soapenv:` and `xsi:` are
//! recognised by local name), except that the `xsi:type` attribute is kept as [`Element::xsi_type`]
//! because vim25 dispatches polymorphic values on it.

use std::fmt::Write as _;

use quick_xml::{Reader, events::Event};

/// A response bigger than this is refused before parsing. The largest body we ask for is one VM's
/// `config` (a few hundred KiB even with hundreds of devices) or a page of `maxObjects` objects
/// ([`super::envelope::PAGE_SIZE`]); 64 MiB leaves two orders of magnitude of slack while keeping a
/// hostile server from making us build a multi-GiB tree.
pub const MAX_BODY_BYTES: usize = 64 << 20;

/// Nesting deeper than this is refused. vim25 values nest about 12 deep (envelope → body → response →
/// returnval → objects → propSet → val → device → backing → port …); 128 keeps recursion in the
/// parsers shallow and bounded.
pub const MAX_DEPTH: usize = 128;

/// More elements than this are refused: bounds memory at roughly this many small allocations.
pub const MAX_ELEMENTS: usize = 2_000_000;

/// Most attributes one element may carry (vim25 elements carry one or two: `type`, `xsi:type`).
pub const MAX_ATTRIBUTES: usize = 256;

/// Escapes text for an XML element body or a double-quoted attribute value.
pub fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    escape_into(&mut out, value);
    out
}

/// Appends `value` escaped to `out`. Control characters that XML 1.0 cannot carry at all are
/// written as U+FFFD so a hostile VM or datastore name cannot break the envelope.
pub fn escape_into(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => {
                // Written as references so they survive attribute-value normalisation too.
                let _ = write!(out, "&#{};", u32::from(c));
            }
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
}

/// Why a body could not be read as XML.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The body is larger than [`MAX_BODY_BYTES`].
    #[error("response body of {len} bytes exceeds the {MAX_BODY_BYTES}-byte limit")]
    TooLarge { len: usize },
    /// The body is not UTF-8.
    #[error("response body is not UTF-8 at byte {offset}")]
    NotUtf8 { offset: usize },
    /// quick-xml rejected the markup.
    #[error("malformed XML at byte {offset}: {message}")]
    Malformed { offset: u64, message: String },
    /// An entity other than the five predefined ones or a character reference.
    #[error("unknown XML entity '&{name};' at byte {offset}")]
    UnknownEntity { name: String, offset: u64 },
    /// Elements nest deeper than [`MAX_DEPTH`].
    #[error("XML nests deeper than {MAX_DEPTH} elements at byte {offset}")]
    TooDeep { offset: u64 },
    /// More than [`MAX_ELEMENTS`] elements.
    #[error("XML has more than {MAX_ELEMENTS} elements (at byte {offset})")]
    TooManyElements { offset: u64 },
    /// The document ended inside an element or had no root.
    #[error("XML document is truncated or empty")]
    Truncated,
}

/// One element: local name, the two attributes vim25 uses, text and children.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Element {
    /// Local name, prefix dropped.
    pub name: String,
    /// `xsi:type` without its prefix (`xsd:string` → `string`, `VirtualDisk` stays).
    pub xsi_type: Option<String>,
    /// The plain `type` attribute (managed-object references carry their type there).
    pub mor_type: Option<String>,
    /// Concatenated character data directly inside this element (entities resolved, not trimmed).
    pub text: String,
    /// Child elements in document order.
    pub children: Vec<Element>,
}

impl Element {
    /// First child with this local name.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// All children with this local name.
    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// Follows a `/`-separated path of child names.
    pub fn path(&self, path: &str) -> Option<&Element> {
        path.split('/').try_fold(self, |e, step| e.child(step))
    }

    /// Trimmed text of the child at `path`.
    pub fn text_at(&self, path: &str) -> Option<&str> {
        self.path(path).map(|e| e.text.trim())
    }

    /// The trimmed text of this element.
    pub fn trimmed(&self) -> &str {
        self.text.trim()
    }
}

fn local(name: &str) -> &str {
    name.rsplit_once(':').map_or(name, |(_, local)| local)
}

fn strip_prefix(value: &str) -> &str {
    value.rsplit_once(':').map_or(value, |(_, v)| v)
}

fn start_element(start: &quick_xml::events::BytesStart<'_>, offset: u64) -> Result<Element, Error> {
    let mut element = Element {
        name: local(start.name().as_ref()).to_owned(),
        ..Element::default()
    };
    // Unchecked: quick-xml's duplicate check is quadratic in the attributes of an element. A
    // duplicate `type` simply overrides; the count is bounded instead.
    for (n, attr) in start.attributes().with_checks(false).enumerate() {
        if n >= MAX_ATTRIBUTES {
            return Err(Error::Malformed {
                offset,
                message: format!("an element has more than {MAX_ATTRIBUTES} attributes"),
            });
        }
        let attr = attr.map_err(|e| Error::Malformed {
            offset,
            message: e.to_string(),
        })?;
        let key = attr.key.as_ref();
        let is_type = local(key) == "type";
        if !is_type {
            continue;
        }
        let value = attr
            .normalized_value(quick_xml::XmlVersion::Implicit1_0)
            .map_err(|e| Error::Malformed {
                offset,
                message: e.to_string(),
            })?
            .into_owned();
        if key.contains(':') {
            element.xsi_type = Some(strip_prefix(&value).to_owned());
        } else {
            element.mor_type = Some(value);
        }
    }
    Ok(element)
}

/// Parses `body` into its root element, enforcing the limits above.
///
/// # Errors
/// Any [`Error`]; the offset fields point into `body`.
pub fn parse(body: &[u8]) -> Result<Element, Error> {
    if body.len() > MAX_BODY_BYTES {
        return Err(Error::TooLarge { len: body.len() });
    }
    let text = std::str::from_utf8(body).map_err(|e| Error::NotUtf8 {
        offset: e.valid_up_to(),
    })?;
    let mut reader = Reader::from_str(text);
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let mut count = 0usize;
    loop {
        let offset = reader.buffer_position();
        let event = reader.read_event().map_err(|e| Error::Malformed {
            offset: reader.error_position(),
            message: e.to_string(),
        })?;
        match event {
            Event::Start(_) | Event::Empty(_) if root.is_some() => {
                return Err(Error::Malformed {
                    offset,
                    message: "content after the root element".into(),
                });
            }
            Event::Start(start) => {
                count += 1;
                if count > MAX_ELEMENTS {
                    return Err(Error::TooManyElements { offset });
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(Error::TooDeep { offset });
                }
                stack.push(start_element(&start, offset)?);
            }
            Event::Empty(start) => {
                count += 1;
                if count > MAX_ELEMENTS {
                    return Err(Error::TooManyElements { offset });
                }
                let element = start_element(&start, offset)?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(element),
                    None => root = Some(element),
                }
            }
            Event::End(_) => {
                let element = stack.pop().ok_or(Error::Truncated)?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(element),
                    None => root = Some(element),
                }
            }
            Event::Text(t) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&t.xml10_content());
                }
            }
            Event::CData(c) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&c.xml10_content());
                }
            }
            Event::GeneralRef(r) => {
                let resolved = match r.resolve_char_ref() {
                    Ok(Some(c)) => c,
                    Ok(None) => match &*r {
                        "amp" => '&',
                        "lt" => '<',
                        "gt" => '>',
                        "quot" => '"',
                        "apos" => '\'',
                        other => {
                            return Err(Error::UnknownEntity {
                                name: other.chars().take(64).collect(),
                                offset,
                            });
                        }
                    },
                    Err(e) => {
                        return Err(Error::Malformed {
                            offset,
                            message: e.to_string(),
                        });
                    }
                };
                if let Some(top) = stack.last_mut() {
                    top.text.push(resolved);
                }
            }
            Event::DocType(_) => {
                // A DTD could declare entities; vim25 never sends one, so refuse rather than half-support it.
                return Err(Error::Malformed {
                    offset,
                    message: "DOCTYPE is not allowed".into(),
                });
            }
            Event::Comment(_) | Event::Decl(_) | Event::PI(_) => {}
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err(Error::Truncated);
    }
    root.ok_or(Error::Truncated)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_covers_markup_quotes_and_controls() {
        assert_eq!(escape(r#"a<b>&"c'"#), "a&lt;b&gt;&amp;&quot;c&apos;");
        assert_eq!(escape("x\u{1}y\nz"), "x\u{FFFD}y&#10;z");
    }

    #[test]
    fn parse_keeps_types_and_resolves_entities() {
        let root = parse(
            br#"<?xml version="1.0"?><a xmlns:xsi="x"><b type="VirtualMachine" xsi:type="xsd:string">v&amp;m&#45;1</b><c/></a>"#,
        )
        .unwrap();
        let b = root.child("b").unwrap();
        assert_eq!(b.mor_type.as_deref(), Some("VirtualMachine"));
        assert_eq!(b.xsi_type.as_deref(), Some("string"));
        assert_eq!(b.text, "v&m-1");
        assert!(root.child("c").is_some());
    }

    #[test]
    fn parse_rejects_unknown_entity_doctype_and_truncation() {
        assert!(matches!(parse(b"<a>&foo;</a>"), Err(Error::UnknownEntity { .. })));
        assert!(matches!(parse(b"<!DOCTYPE a><a/>"), Err(Error::Malformed { .. })));
        assert!(parse(b"<a><b></b>").is_err());
        assert!(matches!(parse(b""), Err(Error::Truncated)));
    }

    #[test]
    fn many_attributes_are_refused_in_linear_time() {
        let mut body = String::from("<a");
        for i in 0..500_000 {
            body.push_str(&format!(" x{i}=\"1\""));
        }
        body.push_str("/>");
        let started = std::time::Instant::now();
        let err = parse(body.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("more than 256 attributes"), "{err}");
        // The quadratic duplicate check took minutes on this input.
        assert!(started.elapsed().as_secs() < 10, "{:?}", started.elapsed());
        assert!(parse(b"<a type=\"VirtualMachine\" b=\"1\">vm-1</a>").is_ok());
    }

    #[test]
    fn parse_rejects_deep_nesting() {
        let body = "<a>".repeat(MAX_DEPTH + 1);
        assert!(matches!(parse(body.as_bytes()), Err(Error::TooDeep { .. })));
    }

    #[test]
    fn parse_reports_utf8_offset() {
        assert_eq!(parse(b"<a>\xff</a>"), Err(Error::NotUtf8 { offset: 3 }));
    }
}
