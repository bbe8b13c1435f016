//! Inventory lookups on a [`Client`]: datacenters by name (a standalone ESXi's is `ha-datacenter`),
//! VMs by name with an optional folder path under `<dc>/vm`, all networks of a datacenter, and the
//! [`VmDescription`] of a VM. Container views are always destroyed, also when a lookup fails.

use serde::{Deserialize, Serialize};

use crate::{
    client::{self, Client},
    proto::{
        MoRef, envelope,
        envelope::{ObjectSpec, PropertySpec},
        response::{self, ObjectContent},
        vm::{self, NETWORK_PROPERTIES, NetworkInventory, VM_PROPERTIES, VmDescription},
    },
};

/// Upper bound on property-collector pages read for one query. At [`envelope::PAGE_SIZE`] objects
/// a page that is 2.5 million objects, beyond any real vCenter (10k hosts / 50k VMs); it only
/// stops a server that keeps handing out tokens forever.
const MAX_PAGES: usize = 5_000;

/// How many names an error lists when telling the user what exists instead.
const MAX_NAMES_IN_ERROR: usize = 20;

/// Why a lookup failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A SOAP call failed.
    #[error("{step}")]
    Call {
        /// What we were doing.
        step: &'static str,
        /// The call's error.
        #[source]
        source: client::Error,
    },
    /// No datacenter has that name.
    #[error("datacenter '{name}' not found (datacenters: {available})")]
    DatacenterNotFound {
        /// The name asked for.
        name: String,
        /// Names that exist, comma-separated (cut at a few).
        available: String,
    },
    /// The folder path does not exist under `<dc>/vm`.
    #[error("folder '{folder}' not found under {datacenter}/vm")]
    FolderNotFound {
        /// The datacenter.
        datacenter: String,
        /// The folder path as given.
        folder: String,
    },
    /// No VM has that name (in that folder).
    #[error("VM '{name}' not found in {datacenter}/vm{}", folder.as_deref().map(|f| format!("/{f}")).unwrap_or_default())]
    VmNotFound {
        /// The datacenter.
        datacenter: String,
        /// The folder, if one was given.
        folder: Option<String>,
        /// The VM name.
        name: String,
    },
    /// Several VMs share the name and no folder was given.
    #[error("{count} VMs are named '{name}' in {datacenter}; give the folder to choose one")]
    VmAmbiguous {
        /// The datacenter.
        datacenter: String,
        /// The VM name.
        name: String,
        /// How many.
        count: usize,
    },
    /// The object found is not a VM.
    #[error("{path} is a {kind}, not a VirtualMachine")]
    NotAVm {
        /// The inventory path.
        path: String,
        /// What it is.
        kind: String,
    },
    /// The property collector kept paging past [`MAX_PAGES`].
    #[error("property collector returned more than {MAX_PAGES} pages while {step}")]
    TooManyPages {
        /// What we were doing.
        step: &'static str,
    },
    /// The VM's properties did not make a description.
    #[error("cannot describe the VM")]
    Describe(#[source] vm::Error),
    /// The VM vanished between lookup and read.
    #[error("VM {vm} returned no properties")]
    VmGone {
        /// The VM.
        vm: MoRef,
    },
}

/// A datacenter and its top folders.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Datacenter {
    /// The object.
    pub moref: MoRef,
    /// Its name.
    pub name: String,
    /// Root of its VM folder tree.
    pub vm_folder: MoRef,
    /// Root of its network folder tree.
    pub network_folder: MoRef,
}

fn call_err(step: &'static str) -> impl FnOnce(client::Error) -> Error {
    move |source| Error::Call { step, source }
}

impl Client {
    /// Reads properties of everything `objects` selects, following continuation tokens.
    ///
    /// # Errors
    /// [`Error::Call`] or [`Error::TooManyPages`].
    pub async fn retrieve(
        &self,
        step: &'static str,
        props: &[PropertySpec],
        objects: &[ObjectSpec],
    ) -> Result<Vec<ObjectContent>, Error> {
        let pc = &self.service().property_collector;
        let request = envelope::retrieve_properties_ex(pc, props, objects);
        let body = self.call(&request).await.map_err(call_err(step))?;
        let mut page = response::retrieve_result(request.method, &body).map_err(|e| Error::Call {
            step,
            source: e.into(),
        })?;
        let mut all = std::mem::take(&mut page.objects);
        let mut pages = 1usize;
        while let Some(token) = page.token.take() {
            pages += 1;
            if pages > MAX_PAGES {
                let _ = self
                    .call(&envelope::cancel_retrieve_properties_ex(pc, &token))
                    .await;
                return Err(Error::TooManyPages { step });
            }
            let request = envelope::continue_retrieve_properties_ex(pc, &token);
            let body = self.call(&request).await.map_err(call_err(step))?;
            page = response::retrieve_result(request.method, &body).map_err(|e| Error::Call {
                step,
                source: e.into(),
            })?;
            all.append(&mut page.objects);
        }
        Ok(all)
    }

    /// Reads `props` of every object of `types` below `container` through a container view, and
    /// destroys the view whatever happens.
    ///
    /// # Errors
    /// [`Error::Call`] or [`Error::TooManyPages`].
    pub async fn retrieve_in_container(
        &self,
        step: &'static str,
        container: &MoRef,
        types: &[&str],
        props: &[PropertySpec],
    ) -> Result<Vec<ObjectContent>, Error> {
        let request = envelope::create_container_view(&self.service().view_manager, container, types, true);
        let body = self.call(&request).await.map_err(call_err(step))?;
        let view = response::moref(request.method, &body).map_err(|e| Error::Call {
            step,
            source: e.into(),
        })?;
        let result = self
            .retrieve(step, props, &[ObjectSpec::View(view.clone())])
            .await;
        if let Err(e) = self.call(&envelope::destroy_view(&view)).await {
            tracing::warn!(view = %view, error = %e, "DestroyView failed; the view ends with the session");
        }
        result
    }

    /// All datacenters.
    ///
    /// # Errors
    /// [`Error::Call`].
    pub async fn datacenters(&self) -> Result<Vec<Datacenter>, Error> {
        let root = self.service().root_folder.clone();
        let spec = PropertySpec::new("Datacenter", &["name", "vmFolder", "networkFolder"]);
        let objects = self
            .retrieve_in_container("listing datacenters", &root, &["Datacenter"], &[spec])
            .await?;
        Ok(objects
            .iter()
            .filter_map(|o| {
                Some(Datacenter {
                    moref: o.obj.clone(),
                    name: o.text("name")?.to_owned(),
                    vm_folder: MoRef::from_element(o.prop("vmFolder")?),
                    network_folder: MoRef::from_element(o.prop("networkFolder")?),
                })
            })
            .collect())
    }

    /// The datacenter named `name` (standalone ESXi: `ha-datacenter`).
    ///
    /// # Errors
    /// [`Error::DatacenterNotFound`] listing what exists, or [`Error::Call`].
    pub async fn datacenter(&self, name: &str) -> Result<Datacenter, Error> {
        let all = self.datacenters().await?;
        if let Some(dc) = all.iter().find(|d| d.name == name) {
            return Ok(dc.clone());
        }
        let mut names: Vec<&str> = all
            .iter()
            .map(|d| d.name.as_str())
            .take(MAX_NAMES_IN_ERROR)
            .collect();
        if names.is_empty() {
            names.push("none");
        }
        Err(Error::DatacenterNotFound {
            name: name.to_owned(),
            available: names.join(", "),
        })
    }

    /// The VM named `name` in `dc`, under `folder` (a `/`-separated path below `<dc>/vm`) when given.
    ///
    /// # Errors
    /// [`Error::FolderNotFound`], [`Error::VmNotFound`], [`Error::VmAmbiguous`], [`Error::NotAVm`],
    /// or [`Error::Call`].
    pub async fn find_vm(&self, dc: &Datacenter, folder: Option<&str>, name: &str) -> Result<MoRef, Error> {
        let folder = folder.map(|f| f.trim_matches('/')).filter(|f| !f.is_empty());
        let Some(folder) = folder else {
            return self.find_vm_anywhere(dc, name).await;
        };
        // Walk down from the datacenter's VM folder one name at a time (FindChild), which also works
        // for datacenters nested in folders, where `<dc>/vm/...` inventory paths do not.
        let mut parent = dc.vm_folder.clone();
        for segment in folder.split('/').filter(|s| !s.is_empty()) {
            match self.find_child(&parent, segment).await? {
                Some(child) if child.kind == "Folder" => parent = child,
                _ => {
                    return Err(Error::FolderNotFound {
                        datacenter: dc.name.clone(),
                        folder: folder.to_owned(),
                    });
                }
            }
        }
        match self.find_child(&parent, name).await? {
            Some(moref) if moref.kind == "VirtualMachine" => Ok(moref),
            Some(moref) => Err(Error::NotAVm {
                path: format!("{}/vm/{folder}/{name}", dc.name),
                kind: moref.kind,
            }),
            None => Err(Error::VmNotFound {
                datacenter: dc.name.clone(),
                folder: Some(folder.to_owned()),
                name: name.to_owned(),
            }),
        }
    }

    /// Every VM below the datacenter's VM folder (or below `folder` in it, recursively), with its
    /// name, sorted by name: the scope of `vm-import vsphere assess`.
    ///
    /// # Errors
    /// [`Error::FolderNotFound`] or [`Error::Call`].
    pub async fn list_vms(
        &self,
        dc: &Datacenter,
        folder: Option<&str>,
    ) -> Result<Vec<(MoRef, String)>, Error> {
        let mut parent = dc.vm_folder.clone();
        if let Some(folder) = folder.map(|f| f.trim_matches('/')).filter(|f| !f.is_empty()) {
            for segment in folder.split('/').filter(|s| !s.is_empty()) {
                match self.find_child(&parent, segment).await? {
                    Some(child) if child.kind == "Folder" => parent = child,
                    _ => {
                        return Err(Error::FolderNotFound {
                            datacenter: dc.name.clone(),
                            folder: folder.to_owned(),
                        });
                    }
                }
            }
        }
        let spec = PropertySpec::new("VirtualMachine", &["name"]);
        let objects = self
            .retrieve_in_container("listing VMs", &parent, &["VirtualMachine"], &[spec])
            .await?;
        let mut vms: Vec<(MoRef, String)> = objects
            .into_iter()
            .filter_map(|o| {
                let name = o.text("name")?.to_owned();
                Some((o.obj, name))
            })
            .collect();
        vms.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.value.cmp(&b.0.value)));
        Ok(vms)
    }

    async fn find_child(&self, parent: &MoRef, name: &str) -> Result<Option<MoRef>, Error> {
        let request = envelope::find_child(&self.service().search_index, parent, name);
        let body = self
            .call(&request)
            .await
            .map_err(call_err("searching the inventory"))?;
        response::optional_moref(request.method, &body).map_err(|e| Error::Call {
            step: "searching the inventory",
            source: e.into(),
        })
    }

    /// `FindByInventoryPath`: the object at a `/`-separated path from the root folder (build it
    /// with [`envelope::inventory_path`]), `None` when nothing is there.
    ///
    /// # Errors
    /// [`Error::Call`].
    pub async fn find_by_inventory_path(&self, path: &str) -> Result<Option<MoRef>, Error> {
        let request = envelope::find_by_inventory_path(&self.service().search_index, path);
        let body = self
            .call(&request)
            .await
            .map_err(call_err("searching the inventory"))?;
        response::optional_moref(request.method, &body).map_err(|e| Error::Call {
            step: "searching the inventory",
            source: e.into(),
        })
    }

    async fn find_vm_anywhere(&self, dc: &Datacenter, name: &str) -> Result<MoRef, Error> {
        let spec = PropertySpec::new("VirtualMachine", &["name"]);
        let objects = self
            .retrieve_in_container("listing VMs", &dc.vm_folder, &["VirtualMachine"], &[spec])
            .await?;
        let mut matches = objects.into_iter().filter(|o| o.text("name") == Some(name));
        match (matches.next(), matches.next()) {
            (Some(vm), None) => Ok(vm.obj),
            (Some(_), Some(_)) => Err(Error::VmAmbiguous {
                datacenter: dc.name.clone(),
                name: name.to_owned(),
                count: 2 + matches.count(),
            }),
            (None, _) => Err(Error::VmNotFound {
                datacenter: dc.name.clone(),
                folder: None,
                name: name.to_owned(),
            }),
        }
    }

    /// Every network of `dc`: standard port groups, distributed port groups (with switch), opaque.
    ///
    /// # Errors
    /// [`Error::Call`].
    pub async fn networks(&self, dc: &Datacenter) -> Result<NetworkInventory, Error> {
        let specs: Vec<PropertySpec> = NETWORK_PROPERTIES
            .iter()
            .map(|(kind, paths)| PropertySpec::new(kind, paths))
            .collect();
        let objects = self
            .retrieve_in_container(
                "listing networks",
                &dc.network_folder,
                &["Network", "DistributedVirtualSwitch"],
                &specs,
            )
            .await?;
        Ok(NetworkInventory::from_objects(&objects))
    }

    /// Reads and describes one VM, resolving its NICs against `networks`.
    ///
    /// # Errors
    /// [`Error::VmGone`], [`Error::Describe`], or [`Error::Call`].
    pub async fn describe_vm(&self, vm: &MoRef, networks: &NetworkInventory) -> Result<VmDescription, Error> {
        let spec = PropertySpec::new("VirtualMachine", VM_PROPERTIES);
        let objects = self
            .retrieve("reading the VM", &[spec], &[ObjectSpec::Object(vm.clone())])
            .await?;
        let object = objects
            .into_iter()
            .find(|o| &o.obj == vm)
            .ok_or_else(|| Error::VmGone { vm: vm.clone() })?;
        let mut description = VmDescription::from_object(&object, networks).map_err(Error::Describe)?;
        if let Some(host) = &description.host {
            let spec = PropertySpec::new("HostSystem", &["name"]);
            let hosts = self
                .retrieve(
                    "reading the VM's host",
                    &[spec],
                    &[ObjectSpec::Object(host.clone())],
                )
                .await?;
            description.host_name = hosts
                .iter()
                .find(|o| &o.obj == host)
                .and_then(|o| o.text("name"))
                .map(str::to_owned);
        }
        Ok(description)
    }

    /// Looks up datacenter, VM and networks, and describes the VM: what `vm-import vsphere inspect` prints.
    ///
    /// # Errors
    /// Any lookup [`Error`].
    pub async fn inspect(
        &self,
        datacenter: &str,
        folder: Option<&str>,
        name: &str,
    ) -> Result<VmDescription, Error> {
        let dc = self.datacenter(datacenter).await?;
        let vm = self.find_vm(&dc, folder, name).await?;
        let networks = self.networks(&dc).await?;
        self.describe_vm(&vm, &networks).await
    }
}
