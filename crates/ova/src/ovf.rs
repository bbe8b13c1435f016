//! OVF envelope parsing: OVF 1.x (VMware) and 2.x (VirtualBox "OVF 2.0") envelopes into a
//! [`VmDescription`].
//!
//! Resolution chain (DSP0243):
//!
//! ```text
//! Item(ResourceType 17).HostResource "ovf:/disk/<diskId>" ─► DiskSection/Disk@fileRef ─► References/File@href
//! Item.Parent ─► controller Item.InstanceID (5 IDE, 6 SCSI, 20 SATA/NVMe) ; Item.AddressOnParent = unit
//! ```
//!
//! Items are matched by local name, so `rasd:` (`Item`), `sasd:` (`StorageItem`) and `epasd:`
//! (`EthernetPortItem`) children read alike. Firmware, secure boot and the vTPM come from `vmw:Config`
//! keys and items (VMware) or the embedded `vbox:Machine` (VirtualBox), which also gives NIC MACs.
//!
//! Safety: any DTD (`<!DOCTYPE`, `<!ENTITY`) is refused before parsing, so entity expansion cannot
//! happen; the document size and node count are capped.

use std::{collections::HashMap, io::Read};

use roxmltree::{Document, Node, ParsingOptions};

use crate::description::{
    CdRom, Compression, Controller, ControllerKind, Disk, FileReference, Firmware, Nic, NicModel, OvfVersion,
    VmDescription,
};

/// Largest OVF descriptor we parse: real ones are tens of KiB; VirtualBox embeds its whole machine
/// config and stays well under 1 MiB.
pub const MAX_OVF_SIZE: usize = 16 << 20;

/// Largest number of XML nodes: bounds the DOM's memory (a few dozen bytes per node).
pub const MAX_XML_NODES: u32 = 1_000_000;

/// Most virtual CPUs we believe (vSphere 8 allows 768); more means a corrupt value.
pub const MAX_CPUS: u32 = 4096;

/// Largest memory we believe, in MiB (64 TiB; vSphere 8 allows 24 TiB).
pub const MAX_MEMORY_MIB: u64 = 64 << 20;

/// Largest disk capacity we believe: 64 PiB, the qcow2 crate's limit too.
pub const MAX_CAPACITY: u64 = 1 << 56;

const OVF1_NS: &str = "http://schemas.dmtf.org/ovf/envelope/1";
const OVF2_NS: &str = "http://schemas.dmtf.org/ovf/envelope/2";
const VMW_NS: &str = "http://www.vmware.com/schema/ovf";
const VBOX_NS: &str = "http://www.virtualbox.org/ovf/machine";

/// An OVF parsing failure; `line` is 1-based in the descriptor.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An element carries more attributes than any OVF writer uses: refused before the XML
    /// parser, whose duplicate-attribute check is quadratic in them.
    #[error("OVF element <{element}> on line {line} has more than {MAX_ATTRIBUTES} attributes")]
    TooManyAttributes { element: String, line: u32 },
    /// The descriptor has a DTD, which could declare entities; refused outright.
    #[error(
        "OVF descriptor contains a DTD or entity declaration (line {line}); refused to rule out entity expansion"
    )]
    DtdRefused {
        /// Line of the `<!DOCTYPE` / `<!ENTITY`.
        line: u32,
    },

    /// A value is malformed or out of range.
    #[error("OVF line {line}: {what} = {value:?} is invalid: {reason}")]
    InvalidValue {
        /// Which element/attribute, with its item context.
        what: String,
        /// The value found.
        value: String,
        /// Line of the element.
        line: u32,
        /// Why.
        reason: &'static str,
    },

    /// A required element is absent.
    #[error("OVF descriptor has no {what} (looked in {context})")]
    Missing {
        /// What is missing.
        what: &'static str,
        /// Where it was expected.
        context: &'static str,
    },

    /// A `VirtualSystemCollection` with several VMs; one import creates one VM.
    #[error("OVF describes {count} virtual systems; only single-VM OVAs are supported")]
    MultipleVirtualSystems {
        /// How many `VirtualSystem` elements there are.
        count: usize,
    },

    /// The root element is not an OVF `Envelope`.
    #[error("not an OVF envelope: root element is {root:?} in namespace {namespace:?}")]
    NotAnEnvelope {
        /// Root element local name.
        root: String,
        /// Its namespace.
        namespace: String,
    },

    /// The descriptor is not UTF-8.
    #[error("OVF descriptor is not UTF-8 (invalid byte at offset {valid_up_to})")]
    NotText {
        /// Offset of the first invalid byte.
        valid_up_to: usize,
    },

    /// Reading the descriptor failed.
    #[error("failed to read the OVF descriptor")]
    Reading {
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The descriptor is larger than [`MAX_OVF_SIZE`].
    #[error("OVF descriptor is larger than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },

    /// A reference (disk id, file id, parent instance) points at nothing.
    #[error("OVF line {line}: {what} refers to {reference:?}, which is not defined")]
    UnknownReference {
        /// The referring element.
        what: String,
        /// The dangling reference.
        reference: String,
        /// Line of the referring element.
        line: u32,
    },

    /// The descriptor is not well-formed XML (the source has the position).
    #[error("OVF descriptor is not well-formed XML")]
    Xml {
        /// The XML parser's error.
        #[source]
        source: roxmltree::Error,
    },
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Reads (at most [`MAX_OVF_SIZE`] bytes) and parses a descriptor, e.g. the `.ovf` tar member.
///
/// # Errors
/// [`Error::Reading`], [`Error::TooLarge`], [`Error::NotText`], then as [`parse`].
pub fn read_envelope<R: Read>(reader: R) -> Result<VmDescription> {
    let mut bytes = Vec::new();
    reader
        .take(MAX_OVF_SIZE as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| Error::Reading { source })?;
    if bytes.len() > MAX_OVF_SIZE {
        return Err(Error::TooLarge { limit: MAX_OVF_SIZE });
    }
    let text = String::from_utf8(bytes).map_err(|e| Error::NotText {
        valid_up_to: e.utf8_error().valid_up_to(),
    })?;
    parse(&text)
}

/// Parses an OVF descriptor with one `VirtualSystem` (also when wrapped in a
/// `VirtualSystemCollection`).
///
/// # Errors
/// [`Error::DtdRefused`], [`Error::Xml`], [`Error::NotAnEnvelope`], [`Error::Missing`],
/// [`Error::InvalidValue`], [`Error::UnknownReference`], [`Error::TooLarge`].
pub fn parse(text: &str) -> Result<VmDescription> {
    if text.len() > MAX_OVF_SIZE {
        return Err(Error::TooLarge { limit: MAX_OVF_SIZE });
    }
    for marker in ["<!DOCTYPE", "<!ENTITY"] {
        if let Some(at) = text.find(marker) {
            let line = 1 + text[..at].bytes().filter(|&b| b == b'\n').count() as u32;
            return Err(Error::DtdRefused { line });
        }
    }
    check_attribute_counts(text)?;
    let options = ParsingOptions {
        allow_dtd: false,
        nodes_limit: MAX_XML_NODES,
        ..ParsingOptions::default()
    };
    let doc = Document::parse_with_options(text, options).map_err(|source| match source {
        roxmltree::Error::DtdDetected => Error::DtdRefused { line: 1 },
        source => Error::Xml { source },
    })?;
    Parser { doc: &doc }.envelope()
}

/// Most attributes one element may carry. ovftool's `Envelope`, the busiest element any writer
/// produces, has about a dozen namespace declarations.
pub const MAX_ATTRIBUTES: usize = 1024;

/// One linear pass over the markup counting each start tag's attributes (an `=` outside quotes),
/// skipping comments, CDATA, processing instructions and end tags.
fn check_attribute_counts(text: &str) -> Result<()> {
    let mut rest = text;
    while let Some(open) = rest.find('<') {
        let tag = &rest[open + 1..];
        let skip_to = |end: &str, from: usize| tag[from..].find(end).map(|at| from + at + end.len());
        let consumed = if tag.starts_with("!--") {
            skip_to("-->", 3)
        } else if tag.starts_with("![CDATA[") {
            skip_to("]]>", 8)
        } else if tag.starts_with('?') {
            skip_to("?>", 1)
        } else if tag.starts_with('!') || tag.starts_with('/') {
            skip_to(">", 1)
        } else {
            let mut attributes = 0usize;
            let mut quote = None;
            let mut end = None;
            for (at, byte) in tag.bytes().enumerate() {
                match (quote, byte) {
                    (Some(q), b) if b == q => quote = None,
                    (Some(_), _) => {}
                    (None, b'"' | b'\'') => quote = Some(byte),
                    (None, b'=') => attributes += 1,
                    (None, b'>') => {
                        end = Some(at + 1);
                        break;
                    }
                    (None, _) => {}
                }
                if attributes > MAX_ATTRIBUTES {
                    let element = tag
                        .chars()
                        .take_while(|&c| !c.is_whitespace() && c != '>' && c != '/')
                        .take(64)
                        .collect();
                    let offset = text.len() - tag.len();
                    return Err(Error::TooManyAttributes {
                        element,
                        line: 1 + text[..offset].bytes().filter(|&b| b == b'\n').count() as u32,
                    });
                }
            }
            end
        };
        // An unterminated construct is the XML parser's to report.
        let Some(consumed) = consumed else {
            return Ok(());
        };
        rest = &tag[consumed..];
    }
    Ok(())
}

struct Parser<'a, 'input> {
    doc: &'a Document<'input>,
}

/// A hardware item (`Item`, `StorageItem` or `EthernetPortItem`) with its children by local name.
struct RawItem<'a, 'input> {
    node: Node<'a, 'input>,
    element: &'a str,
    resource_type: Option<u32>,
}

impl<'a, 'input> Parser<'a, 'input> {
    fn line(&self, node: Node<'_, '_>) -> u32 {
        self.doc.text_pos_at(node.range().start).row
    }

    fn envelope(&self) -> Result<VmDescription> {
        let root = self.doc.root_element();
        let namespace = root.tag_name().namespace().unwrap_or("");
        let ovf_version = match namespace {
            OVF1_NS => OvfVersion::V1,
            OVF2_NS => OvfVersion::V2,
            _ => {
                return Err(Error::NotAnEnvelope {
                    root: root.tag_name().name().into(),
                    namespace: namespace.into(),
                });
            }
        };
        if root.tag_name().name() != "Envelope" {
            return Err(Error::NotAnEnvelope {
                root: root.tag_name().name().into(),
                namespace: namespace.into(),
            });
        }

        let files = match child(root, "References") {
            Some(refs) => children(refs, "File")
                .map(|f| self.file(f))
                .collect::<Result<Vec<_>>>()?,
            None => Vec::new(),
        };
        let mut disk_section = Vec::new();
        if let Some(section) = child(root, "DiskSection") {
            for d in children(section, "Disk") {
                disk_section.push(self.disk(d, &files)?);
            }
        }

        let mut systems = root
            .descendants()
            .filter(|n| n.is_element() && n.tag_name().name() == "VirtualSystem");
        let system = systems.next().ok_or(Error::Missing {
            what: "VirtualSystem",
            context: "Envelope",
        })?;
        let others = systems.count();
        if others > 0 {
            return Err(Error::MultipleVirtualSystems { count: others + 1 });
        }
        let name = child(system, "Name")
            .and_then(|n| n.text())
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .or_else(|| ovf_attr(system, "id").map(str::to_owned))
            .ok_or(Error::Missing {
                what: "Name or ovf:id",
                context: "VirtualSystem",
            })?;
        let guest_os = child(system, "OperatingSystemSection").and_then(|os| {
            attr_ns(os, VMW_NS, "osType").map(str::to_owned).or_else(|| {
                child(os, "Description")
                    .and_then(|d| d.text())
                    .map(|t| t.trim().to_owned())
            })
        });
        let hardware = child(system, "VirtualHardwareSection").ok_or(Error::Missing {
            what: "VirtualHardwareSection",
            context: "VirtualSystem",
        })?;
        let system_type = child(hardware, "System")
            .and_then(|s| child(s, "VirtualSystemType"))
            .and_then(|t| t.text())
            .map(|t| t.trim().to_owned());

        let items: Vec<RawItem<'_, '_>> = hardware
            .children()
            .filter(|n| {
                n.is_element() && matches!(n.tag_name().name(), "Item" | "StorageItem" | "EthernetPortItem")
            })
            .map(|node| self.raw_item(node))
            .collect::<Result<_>>()?;

        let mut controllers = HashMap::new();
        for item in &items {
            if let Some(c) = self.controller(item)? {
                controllers.insert(c.instance_id.clone(), c);
            }
        }
        // A drive may hang on a device we do not classify (USB, a vendor type); keep it attached as
        // `Other` rather than calling a defined parent undefined. CPUs, memory, NICs and drives
        // themselves are never parents.
        for item in &items {
            if matches!(item.resource_type, Some(3 | 4 | 10 | 15 | 16 | 17))
                || item.element == "EthernetPortItem"
            {
                continue;
            }
            if let Some(instance_id) = item_text(item.node, "InstanceID").filter(|id| !id.is_empty()) {
                controllers
                    .entry(instance_id.clone())
                    .or_insert_with(|| Controller {
                        kind: ControllerKind::Other,
                        model: item_text(item.node, "ResourceSubType")
                            .map(|s| s.to_ascii_lowercase())
                            .filter(|s| !s.is_empty()),
                        bus: None,
                        instance_id,
                    });
            }
        }

        let mut description = VmDescription {
            name,
            ovf_version,
            guest_os,
            system_type,
            cpus: 0,
            cores_per_socket: None,
            memory_mib: 0,
            firmware: Firmware::Bios,
            secure_boot: false,
            tpm: false,
            disks: Vec::new(),
            cdroms: Vec::new(),
            nics: Vec::new(),
            files: files.clone(),
        };
        let mut attached = vec![false; disk_section.len()];
        let mut saw_cpu = false;
        let mut saw_memory = false;
        for item in &items {
            let subtype = item_text(item.node, "ResourceSubType")
                .unwrap_or_default()
                .to_ascii_lowercase();
            match (item.element, item.resource_type) {
                ("EthernetPortItem", _) | (_, Some(10)) => description.nics.push(self.nic(item)?),
                (_, Some(3)) if !saw_cpu => {
                    saw_cpu = true;
                    description.cpus = self.cpus(item)?;
                    description.cores_per_socket = self.cores_per_socket(item)?;
                }
                (_, Some(4)) if !saw_memory => {
                    saw_memory = true;
                    description.memory_mib = self.memory_mib(item)?;
                }
                (_, Some(15 | 16)) => {
                    let (controller, unit) = self.attachment(item, &controllers)?;
                    let file = match self.host_resource(item)? {
                        Some(HostResource::File(id)) => Some(self.lookup_file(item, &id, &files)?),
                        Some(HostResource::Disk(_)) | None => None,
                    };
                    description.cdroms.push(CdRom {
                        controller,
                        unit,
                        file,
                    });
                }
                (_, Some(17)) => {
                    let (controller, unit) = self.attachment(item, &controllers)?;
                    let index = match self.host_resource(item)? {
                        Some(HostResource::Disk(id)) => disk_section
                            .iter()
                            .position(|d| d.disk_id == id)
                            .ok_or_else(|| Error::UnknownReference {
                                what: format!("{} HostResource", self.item_label(item)),
                                reference: id.clone(),
                                line: self.line(item.node),
                            })?,
                        Some(HostResource::File(id)) => {
                            return Err(Error::InvalidValue {
                                what: format!("{} HostResource", self.item_label(item)),
                                value: format!("ovf:/file/{id}"),
                                line: self.line(item.node),
                                reason: "disk backed directly by a file (no DiskSection entry) is not supported",
                            });
                        }
                        None => continue, // a drive with no medium
                    };
                    let mut disk = disk_section[index].clone();
                    disk.controller = controller;
                    disk.unit = unit;
                    attached[index] = true;
                    description.disks.push(disk);
                }
                (_, Some(1)) if subtype.contains("tpm") => description.tpm = true,
                _ => {}
            }
        }
        if !saw_cpu {
            return Err(Error::Missing {
                what: "Processor item (ResourceType 3)",
                context: "VirtualHardwareSection",
            });
        }
        if !saw_memory {
            return Err(Error::Missing {
                what: "Memory item (ResourceType 4)",
                context: "VirtualHardwareSection",
            });
        }
        for (disk, used) in disk_section.into_iter().zip(attached) {
            if !used {
                description.disks.push(disk);
            }
        }
        self.vmware_config(hardware, &mut description);
        self.virtualbox_machine(system, &mut description);
        Ok(description)
    }

    fn file(&self, node: Node<'_, '_>) -> Result<FileReference> {
        let id = self.required_attr(node, "id", "File")?;
        let href = self.required_attr(node, "href", "File")?;
        let size = self.optional_u64_attr(node, "size", "File ovf:size")?;
        let chunk_size = self.optional_u64_attr(node, "chunkSize", "File ovf:chunkSize")?;
        let compression = match ovf_attr(node, "compression").map(str::trim) {
            None | Some("" | "identity") => None,
            Some("gzip") => Some(Compression::Gzip),
            Some(other) => {
                return Err(Error::InvalidValue {
                    what: format!("File {id:?} ovf:compression"),
                    value: other.into(),
                    line: self.line(node),
                    reason: "only gzip is defined by OVF",
                });
            }
        };
        Ok(FileReference {
            id,
            href,
            size,
            compression,
            chunk_size,
        })
    }

    fn disk(&self, node: Node<'_, '_>, files: &[FileReference]) -> Result<Disk> {
        let disk_id = self.required_attr(node, "diskId", "Disk")?;
        let what = |attr: &str| format!("Disk {disk_id:?} ovf:{attr}");
        let capacity_text = self.required_attr(node, "capacity", "Disk")?;
        if capacity_text.contains("${") {
            return Err(Error::InvalidValue {
                what: what("capacity"),
                value: capacity_text,
                line: self.line(node),
                reason: "capacity given as a property reference is not supported",
            });
        }
        let capacity: u64 = self.number(node, &what("capacity"), &capacity_text)?;
        let units_text = ovf_attr(node, "capacityAllocationUnits").unwrap_or("byte");
        let multiplier = parse_units(units_text).ok_or_else(|| Error::InvalidValue {
            what: what("capacityAllocationUnits"),
            value: units_text.into(),
            line: self.line(node),
            reason: "unknown unit (expected e.g. `byte * 2^30`, `GigaBytes`)",
        })?;
        let capacity_bytes = capacity
            .checked_mul(multiplier)
            .filter(|&b| b <= MAX_CAPACITY)
            .ok_or_else(|| Error::InvalidValue {
                what: what("capacity"),
                value: format!("{capacity} × {units_text}"),
                line: self.line(node),
                reason: "capacity above 64 PiB",
            })?;
        let file =
            match ovf_attr(node, "fileRef") {
                Some(id) => Some(files.iter().find(|f| f.id == id).cloned().ok_or_else(|| {
                    Error::UnknownReference {
                        what: what("fileRef"),
                        reference: id.into(),
                        line: self.line(node),
                    }
                })?),
                None => None,
            };
        Ok(Disk {
            populated_size: self.optional_u64_attr(node, "populatedSize", &what("populatedSize"))?,
            format: ovf_attr(node, "format").map(str::to_owned),
            disk_id,
            file,
            capacity_bytes,
            controller: None,
            unit: None,
        })
    }

    fn raw_item<'n>(&self, node: Node<'n, 'input>) -> Result<RawItem<'n, 'input>> {
        let resource_type = match item_text(node, "ResourceType") {
            Some(t) => {
                Some(self.number::<u32>(node, &format!("{} ResourceType", node.tag_name().name()), &t)?)
            }
            None => None,
        };
        Ok(RawItem {
            node,
            element: node.tag_name().name(),
            resource_type,
        })
    }

    /// `Item 5 (Network adapter 1)`, for messages.
    fn item_label(&self, item: &RawItem<'_, '_>) -> String {
        let id = item_text(item.node, "InstanceID").unwrap_or_else(|| "?".into());
        match item_text(item.node, "ElementName") {
            Some(name) => format!("{} {id} ({name})", item.element),
            None => format!("{} {id}", item.element),
        }
    }

    fn controller(&self, item: &RawItem<'_, '_>) -> Result<Option<Controller>> {
        let raw_subtype = item_text(item.node, "ResourceSubType");
        let subtype = raw_subtype.as_deref().unwrap_or("").to_ascii_lowercase();
        let (kind, model) = match item.resource_type {
            Some(5) => (ControllerKind::Ide, non_empty(subtype)),
            Some(6) => {
                let model = match subtype.as_str() {
                    "virtualscsi" | "pvscsi" => "pvscsi".to_owned(),
                    other => other.to_owned(),
                };
                (ControllerKind::Scsi, non_empty(model))
            }
            Some(20) if subtype.contains("nvme") => (ControllerKind::Nvme, Some("nvme".to_owned())),
            Some(20) if subtype.contains("ahci") || subtype.contains("sata") => {
                (ControllerKind::Sata, Some("ahci".to_owned()))
            }
            Some(7 | 8 | 20) => (ControllerKind::Other, non_empty(subtype)),
            _ => return Ok(None),
        };
        let Some(instance_id) = item_text(item.node, "InstanceID") else {
            return Err(Error::InvalidValue {
                what: format!("{} controller InstanceID", item.element),
                value: String::new(),
                line: self.line(item.node),
                reason: "a controller needs an InstanceID for disks to refer to",
            });
        };
        let bus = match item_text(item.node, "Address") {
            Some(a) if !a.is_empty() => {
                Some(self.number(item.node, &format!("{} Address", self.item_label(item)), &a)?)
            }
            _ => None,
        };
        Ok(Some(Controller {
            kind,
            model,
            bus,
            instance_id,
        }))
    }

    fn attachment(
        &self,
        item: &RawItem<'_, '_>,
        controllers: &HashMap<String, Controller>,
    ) -> Result<(Option<Controller>, Option<u32>)> {
        let controller = match item_text(item.node, "Parent") {
            Some(parent) => {
                Some(
                    controllers
                        .get(&parent)
                        .cloned()
                        .ok_or_else(|| Error::UnknownReference {
                            what: format!("{} Parent", self.item_label(item)),
                            reference: parent.clone(),
                            line: self.line(item.node),
                        })?,
                )
            }
            None => None,
        };
        let unit = match item_text(item.node, "AddressOnParent") {
            Some(u) if !u.is_empty() => Some(self.number(
                item.node,
                &format!("{} AddressOnParent", self.item_label(item)),
                &u,
            )?),
            _ => None,
        };
        Ok((controller, unit))
    }

    fn host_resource(&self, item: &RawItem<'_, '_>) -> Result<Option<HostResource>> {
        let Some(text) = item_text(item.node, "HostResource").filter(|t| !t.is_empty()) else {
            return Ok(None);
        };
        let path = text.strip_prefix("ovf:").unwrap_or(&text).trim_start_matches('/');
        if let Some(id) = path.strip_prefix("disk/") {
            return Ok(Some(HostResource::Disk(id.to_owned())));
        }
        if let Some(id) = path.strip_prefix("file/") {
            return Ok(Some(HostResource::File(id.to_owned())));
        }
        Err(Error::InvalidValue {
            what: format!("{} HostResource", self.item_label(item)),
            value: text,
            line: self.line(item.node),
            reason: "expected ovf:/disk/<id> or ovf:/file/<id>",
        })
    }

    fn lookup_file(
        &self,
        item: &RawItem<'_, '_>,
        id: &str,
        files: &[FileReference],
    ) -> Result<FileReference> {
        files
            .iter()
            .find(|f| f.id == id)
            .cloned()
            .ok_or_else(|| Error::UnknownReference {
                what: format!("{} HostResource", self.item_label(item)),
                reference: id.into(),
                line: self.line(item.node),
            })
    }

    fn cpus(&self, item: &RawItem<'_, '_>) -> Result<u32> {
        let what = format!("{} VirtualQuantity", self.item_label(item));
        let text = item_text(item.node, "VirtualQuantity").unwrap_or_default();
        let cpus: u32 = self.number(item.node, &what, &text)?;
        if cpus == 0 || cpus > MAX_CPUS {
            return Err(Error::InvalidValue {
                what,
                value: text,
                line: self.line(item.node),
                reason: "CPU count must be between 1 and 4096",
            });
        }
        Ok(cpus)
    }

    fn cores_per_socket(&self, item: &RawItem<'_, '_>) -> Result<Option<u32>> {
        let Some(node) = item
            .node
            .children()
            .find(|n| n.is_element() && n.tag_name().name() == "CoresPerSocket")
        else {
            return Ok(None);
        };
        let text = node.text().unwrap_or("").trim().to_owned();
        let what = format!("{} vmw:CoresPerSocket", self.item_label(item));
        let cores: u32 = self.number(node, &what, &text)?;
        if cores == 0 || cores > MAX_CPUS {
            return Err(Error::InvalidValue {
                what,
                value: text,
                line: self.line(node),
                reason: "cores per socket must be between 1 and 4096",
            });
        }
        Ok(Some(cores))
    }

    fn memory_mib(&self, item: &RawItem<'_, '_>) -> Result<u64> {
        let label = self.item_label(item);
        let text = item_text(item.node, "VirtualQuantity").unwrap_or_default();
        let quantity: u64 = self.number(item.node, &format!("{label} VirtualQuantity"), &text)?;
        // VMware and VirtualBox always state the unit; MiB is what both use when they do.
        let units_text = item_text(item.node, "AllocationUnits").unwrap_or_else(|| "byte * 2^20".into());
        let multiplier = parse_units(&units_text).ok_or_else(|| Error::InvalidValue {
            what: format!("{label} AllocationUnits"),
            value: units_text.clone(),
            line: self.line(item.node),
            reason: "unknown unit (expected e.g. `byte * 2^20`, `MegaBytes`)",
        })?;
        let mib = quantity
            .checked_mul(multiplier)
            .map(|bytes| bytes.div_ceil(1 << 20))
            .filter(|&m| m > 0 && m <= MAX_MEMORY_MIB)
            .ok_or_else(|| Error::InvalidValue {
                what: format!("{label} VirtualQuantity"),
                value: format!("{text} × {units_text}"),
                line: self.line(item.node),
                reason: "memory must be between 1 byte and 64 TiB",
            })?;
        Ok(mib)
    }

    fn nic(&self, item: &RawItem<'_, '_>) -> Result<Nic> {
        let subtype = item_text(item.node, "ResourceSubType").unwrap_or_default();
        let model = match subtype.to_ascii_lowercase().as_str() {
            "e1000" => NicModel::E1000,
            "e1000e" => NicModel::E1000e,
            "vmxnet3" => NicModel::Vmxnet3,
            "virtio" | "virtio-net" | "virtionet" => NicModel::Virtio,
            "pcnet32" | "pcnet" => NicModel::Pcnet32,
            _ => NicModel::Other(subtype.clone()),
        };
        let mac = match item_text(item.node, "Address").filter(|a| !a.is_empty()) {
            Some(raw) => Some(normalize_mac(&raw).ok_or_else(|| Error::InvalidValue {
                what: format!("{} Address", self.item_label(item)),
                value: raw.clone(),
                line: self.line(item.node),
                reason: "not a MAC address",
            })?),
            None => None,
        };
        Ok(Nic {
            name: item_text(item.node, "ElementName"),
            network: item_text(item.node, "Connection").filter(|c| !c.is_empty()),
            model,
            mac,
        })
    }

    /// `vmw:Config` / `vmw:ExtraConfig` keys that change the boot environment.
    fn vmware_config(&self, hardware: Node<'_, '_>, description: &mut VmDescription) {
        for node in hardware.children().filter(|n| {
            n.is_element()
                && n.tag_name().namespace() == Some(VMW_NS)
                && matches!(n.tag_name().name(), "Config" | "ExtraConfig")
        }) {
            let (Some(key), Some(value)) = (attr_ns(node, VMW_NS, "key"), attr_ns(node, VMW_NS, "value"))
            else {
                continue;
            };
            let value = value.trim();
            match key {
                "firmware" if value.eq_ignore_ascii_case("efi") => description.firmware = Firmware::Efi,
                "firmware" if value.eq_ignore_ascii_case("bios") => description.firmware = Firmware::Bios,
                "uefi.secureBoot.enabled" | "bootOptions.efiSecureBootEnabled" => {
                    description.secure_boot = value.eq_ignore_ascii_case("true");
                }
                "vtpm.present" if value.eq_ignore_ascii_case("true") => description.tpm = true,
                _ => {}
            }
        }
    }

    /// VirtualBox embeds its own machine config (`vbox:Machine`): `<Firmware type="EFI…"/>` (under
    /// `Hardware`, or `Platform` in 7.1+) means UEFI, a `TrustedPlatformModule` other than `None` a
    /// TPM, and the enabled network `Adapter`s, in slot order, carry the MACs the `EthernetPortItem`s
    /// (one per enabled adapter, same order) lack.
    fn virtualbox_machine(&self, system: Node<'_, '_>, description: &mut VmDescription) {
        let Some(machine) = system.children().find(|n| {
            n.is_element() && n.tag_name().name() == "Machine" && n.tag_name().namespace() == Some(VBOX_NS)
        }) else {
            return;
        };
        let firmware = machine
            .descendants()
            .find(|n| n.is_element() && n.tag_name().name() == "Firmware" && n.attribute("type").is_some());
        if let Some(kind) = firmware.and_then(|n| n.attribute("type"))
            && kind.to_ascii_uppercase().starts_with("EFI")
        {
            description.firmware = Firmware::Efi;
        }
        let tpm = machine
            .descendants()
            .find(|n| n.is_element() && n.tag_name().name() == "TrustedPlatformModule");
        if let Some(kind) = tpm.and_then(|n| n.attribute("type"))
            && !kind.eq_ignore_ascii_case("none")
        {
            description.tpm = true;
        }
        let mut adapters: Vec<(u32, Option<String>)> = machine
            .descendants()
            .filter(|n| {
                n.is_element()
                    && n.tag_name().name() == "Adapter"
                    && n.parent_element()
                        .is_some_and(|p| p.tag_name().name() == "Network")
                    && n.attribute("enabled")
                        .is_some_and(|e| e.eq_ignore_ascii_case("true"))
            })
            .map(|n| {
                let slot = n
                    .attribute("slot")
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(u32::MAX);
                (slot, n.attribute("MACAddress").and_then(normalize_mac))
            })
            .collect();
        adapters.sort_by_key(|(slot, _)| *slot);
        if adapters.len() == description.nics.len() && description.nics.iter().all(|n| n.mac.is_none()) {
            for (nic, (_, mac)) in description.nics.iter_mut().zip(adapters) {
                nic.mac = mac;
            }
        }
    }

    fn required_attr(&self, node: Node<'_, '_>, name: &'static str, element: &'static str) -> Result<String> {
        ovf_attr(node, name)
            .map(str::to_owned)
            .ok_or_else(|| Error::InvalidValue {
                what: format!("{element} ovf:{name}"),
                value: String::new(),
                line: self.line(node),
                reason: "required attribute is missing",
            })
    }

    fn optional_u64_attr(&self, node: Node<'_, '_>, name: &str, what: &str) -> Result<Option<u64>> {
        match ovf_attr(node, name) {
            Some(v) => Ok(Some(self.number(node, what, v)?)),
            None => Ok(None),
        }
    }

    fn number<T: std::str::FromStr>(&self, node: Node<'_, '_>, what: &str, text: &str) -> Result<T> {
        text.trim().parse().map_err(|_| Error::InvalidValue {
            what: what.into(),
            value: text.into(),
            line: self.line(node),
            reason: "not a non-negative integer in range",
        })
    }
}

enum HostResource {
    Disk(String),
    File(String),
}

fn child<'a, 'input>(node: Node<'a, 'input>, local: &str) -> Option<Node<'a, 'input>> {
    node.children()
        .find(|n| n.is_element() && n.tag_name().name() == local)
}

fn children<'a, 'input: 'a>(
    node: Node<'a, 'input>,
    local: &'a str,
) -> impl Iterator<Item = Node<'a, 'input>> + 'a {
    node.children()
        .filter(move |n| n.is_element() && n.tag_name().name() == local)
}

/// Trimmed text of an item's child (`rasd:X`, `sasd:X`, `epasd:X` alike).
fn item_text(item: Node<'_, '_>, local: &str) -> Option<String> {
    child(item, local).map(|n| n.text().unwrap_or("").trim().to_owned())
}

/// An `ovf:` attribute (either envelope version), or the unprefixed one some producers write.
fn ovf_attr<'a>(node: Node<'a, '_>, local: &str) -> Option<&'a str> {
    let mut fallback = None;
    for a in node.attributes() {
        if a.name() != local {
            continue;
        }
        match a.namespace() {
            Some(OVF1_NS | OVF2_NS) => return Some(a.value()),
            None => fallback = Some(a.value()),
            Some(_) => {}
        }
    }
    fallback
}

fn attr_ns<'a>(node: Node<'a, '_>, namespace: &str, local: &str) -> Option<&'a str> {
    node.attribute((namespace, local))
        .or_else(|| node.attribute(local))
}

fn non_empty(s: String) -> Option<String> {
    if s.is_empty() { None } else { Some(s) }
}

/// Bytes per unit for OVF/CIM allocation units: `byte`, `byte * 2^N`, `byte * K`, `KiloBytes`,
/// `MegaBytes`, `GigaBytes`, `TeraBytes` (binary, as VMware and VirtualBox mean them).
pub fn parse_units(text: &str) -> Option<u64> {
    let norm: String = text
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase();
    let named = match norm.as_str() {
        "" | "byte" | "bytes" => Some(1),
        "kilobyte" | "kilobytes" | "kb" | "kib" => Some(1 << 10),
        "megabyte" | "megabytes" | "mb" | "mib" => Some(1 << 20),
        "gigabyte" | "gigabytes" | "gb" | "gib" => Some(1 << 30),
        "terabyte" | "terabytes" | "tb" | "tib" => Some(1 << 40),
        _ => None,
    };
    if named.is_some() {
        return named;
    }
    let factor = norm
        .strip_prefix("bytes*")
        .or_else(|| norm.strip_prefix("byte*"))?;
    if let Some(exp) = factor.strip_prefix("2^") {
        let exp: u32 = exp.parse().ok()?;
        return 1u64.checked_shl(exp).filter(|_| exp < 64);
    }
    factor.parse().ok().filter(|&k: &u64| k > 0)
}

/// `00:50:56:AA:bb:cc`, `00-50-56-aa-bb-cc` or `005056aabbcc` → `00:50:56:aa:bb:cc`.
fn normalize_mac(raw: &str) -> Option<String> {
    let hex: String = raw.chars().filter(|c| !matches!(c, ':' | '-')).collect();
    if hex.len() != 12 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let lower = hex.to_ascii_lowercase();
    let parts: Vec<&str> = (0..6).map(|i| &lower[i * 2..i * 2 + 2]).collect();
    Some(parts.join(":"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse_units("byte * 2^20"), Some(1 << 20));
        assert_eq!(parse_units("byte*2^30"), Some(1 << 30));
        assert_eq!(parse_units("MegaBytes"), Some(1 << 20));
        assert_eq!(parse_units("GigaBytes"), Some(1 << 30));
        assert_eq!(parse_units("byte"), Some(1));
        assert_eq!(parse_units("byte * 1024"), Some(1024));
        assert_eq!(parse_units("byte * 2^64"), None);
        assert_eq!(parse_units("furlongs"), None);
        assert_eq!(parse_units("byte * 0"), None);
    }

    #[test]
    fn macs() {
        assert_eq!(
            normalize_mac("00:50:56:AA:bb:cc").as_deref(),
            Some("00:50:56:aa:bb:cc")
        );
        assert_eq!(
            normalize_mac("080027123456").as_deref(),
            Some("08:00:27:12:34:56")
        );
        assert_eq!(normalize_mac("00:50:56:aa:bb"), None);
        assert_eq!(normalize_mac("zz:50:56:aa:bb:cc"), None);
    }
}
