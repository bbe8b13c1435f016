//! Finding a server (by id, or by an exact and unique name) and describing it: flavor, disks in
//! boot order (attached volumes, and the root disk of an image-backed server), firmware from the
//! image properties, NICs merged by MAC with their Neutron ports; and stopping it (`os-stop`, then
//! waiting for `SHUTOFF`).

use std::time::{Duration, Instant};

use reqwest::Method;

use crate::{
    client::{self, Client, Service},
    proto::{
        block_storage::{GIB, VolumeResponse},
        compute::{
            self, AttachmentList, FlavorField, FlavorResponse, LookupError, ServerList, ServerResponse,
            VolumeAttachment,
        },
        description::{Disk, DiskSource, FlavorInfo, NicInfo, ServerDescription},
        image::{Firmware, Image},
        network::PortList,
    },
};

/// Why a server could not be found or described.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No server has this id or exact name in the project.
    #[error("server '{server}' not found in project {project}")]
    NotFound {
        /// As asked.
        server: String,
        /// The project searched.
        project: String,
    },
    /// Several servers have this name.
    #[error(transparent)]
    Ambiguous(LookupError),
    /// A call failed; `step` says which.
    #[error("{step} of server '{server}'")]
    Call {
        /// What was being read.
        step: &'static str,
        /// The server.
        server: String,
        /// Why.
        #[source]
        source: client::Error,
    },
}

/// Why a server could not be stopped.
#[derive(Debug, thiserror::Error)]
pub enum StopError {
    /// `os-stop` or a status read failed.
    #[error("{step} of server {server}")]
    Call {
        /// What was being done.
        step: &'static str,
        /// The server.
        server: String,
        /// Why.
        #[source]
        source: client::Error,
    },
    /// The server did not reach `SHUTOFF` in time.
    #[error("server {server} is still {status} {waited:?} after os-stop")]
    Timeout {
        /// The server.
        server: String,
        /// Its last status.
        status: String,
        /// How long we waited.
        waited: Duration,
    },
    /// The server went to `ERROR`.
    #[error("server {server} went to status ERROR while stopping")]
    Failed {
        /// The server.
        server: String,
    },
}

impl Client {
    /// Checks that the session works (what a source's `clusterReady` needs): lists at most one
    /// server, as upstream's Verify lists all.
    ///
    /// # Errors
    /// [`client::Error`].
    pub async fn verify(&self) -> Result<(), client::Error> {
        let _: ServerList = self.get_json(Service::Compute, "/servers?limit=1").await?;
        Ok(())
    }

    /// The id of the server `name_or_id` designates: a UUID that exists is taken as an id (as
    /// upstream does), anything else must be the exact name of exactly one server.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::Ambiguous`], [`Error::Call`].
    pub async fn find_server(&self, name_or_id: &str) -> Result<String, Error> {
        let call = |step| {
            move |source| Error::Call {
                step,
                server: name_or_id.to_owned(),
                source,
            }
        };
        if compute::is_uuid(name_or_id) {
            match self
                .get_json::<ServerResponse>(Service::Compute, &format!("/servers/{name_or_id}"))
                .await
            {
                Ok(found) => return Ok(found.server.id),
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(call("reading")(e)),
            }
        }
        // The name filter is a regular expression: anchor and escape it, then compare exactly.
        let pattern = format!("^{}$", regex_escape(name_or_id));
        let path = format!("/servers?name={}", percent_encode(&pattern));
        let list: ServerList = self
            .get_json(Service::Compute, &path)
            .await
            .map_err(call("listing"))?;
        match compute::exact_unique(&list.servers, name_or_id) {
            Ok(server) => Ok(server.id.clone()),
            Err(LookupError::NotFound { .. }) => Err(Error::NotFound {
                server: name_or_id.to_owned(),
                project: self.project_id().to_owned(),
            }),
            Err(e) => Err(Error::Ambiguous(e)),
        }
    }

    /// Describes the server `name_or_id`.
    ///
    /// # Errors
    /// [`Error`].
    pub async fn inspect(&self, name_or_id: &str) -> Result<ServerDescription, Error> {
        let id = self.find_server(name_or_id).await?;
        let call = |step| {
            let server = id.clone();
            move |source| Error::Call { step, server, source }
        };
        let server = self
            .get_json::<ServerResponse>(Service::Compute, &format!("/servers/{id}"))
            .await
            .map_err(call("reading"))?
            .server;
        let flavor = match &server.flavor {
            FlavorField::Embedded(f) => FlavorInfo {
                name: f.original_name.clone(),
                vcpus: f.vcpus,
                ram_mib: f.ram,
                disk_gib: f.disk,
                extra_specs: f.extra_specs.clone(),
            },
            FlavorField::Reference { id: flavor_id } => {
                let f = self
                    .get_json::<FlavorResponse>(Service::Compute, &format!("/flavors/{flavor_id}"))
                    .await
                    .map_err(call("reading the flavor"))?
                    .flavor;
                FlavorInfo {
                    name: f.name,
                    vcpus: f.vcpus,
                    ram_mib: f.ram,
                    disk_gib: f.disk,
                    extra_specs: f.extra_specs,
                }
            }
        };
        let attachments: AttachmentList = self
            .get_json(Service::Compute, &format!("/servers/{id}/os-volume_attachments"))
            .await
            .map_err(call("listing the volume attachments"))?;
        let mut volumes = Vec::new();
        for attachment in attachments.attachments {
            let volume = self
                .get_json::<VolumeResponse>(
                    Service::BlockStorage,
                    &format!("/volumes/{}", attachment.volume_id),
                )
                .await
                .map_err(call("reading an attached volume"))?
                .volume;
            volumes.push((attachment, volume));
        }
        let ordered = compute::boot_order(
            volumes
                .iter()
                .map(|(a, v)| (a.clone(), v.bootable))
                .collect::<Vec<(VolumeAttachment, bool)>>(),
        );
        let mut disks = Vec::new();
        // An image-backed server's root disk lives on the compute host: it comes first.
        if let Some(base) = &server.image {
            disks.push(Disk {
                device: None,
                capacity_bytes: flavor.disk_gib * GIB,
                bootable: true,
                source: DiskSource::ServerImage {
                    base_image_id: Some(base.clone()),
                },
            });
        }
        let mut image_properties = Default::default();
        for (attachment, _) in &ordered {
            let Some((_, volume)) = volumes.iter().find(|(a, _)| a.volume_id == attachment.volume_id) else {
                continue;
            };
            if server.image.is_none() && disks.is_empty() && volume.bootable {
                image_properties = volume.volume_image_metadata.clone();
            }
            disks.push(Disk {
                device: attachment.device.clone(),
                capacity_bytes: volume.size * GIB,
                bootable: volume.bootable,
                source: DiskSource::Volume {
                    volume_id: volume.id.clone(),
                    name: volume.name.clone(),
                    size_gib: volume.size,
                },
            });
        }
        if let Some(base) = &server.image {
            // The base image may be gone (deleted after boot): then there are no properties to read.
            match self
                .get_json::<Image>(Service::Image, &format!("/v2/images/{base}"))
                .await
            {
                Ok(image) => image_properties = image.properties(),
                Err(e) if e.is_not_found() => {
                    tracing::warn!(server = %id, image = %base, "the server's base image is gone");
                }
                Err(e) => return Err(call("reading the base image")(e)),
            }
        }
        let mut nics = Vec::new();
        let ports = if self.has_network() {
            self.get_json::<PortList>(Service::Network, &format!("/v2.0/ports?device_id={id}"))
                .await
                .map_err(call("listing the ports"))?
                .ports
        } else {
            Vec::new()
        };
        for nic in compute::merge_nics(&server.addresses) {
            let port = ports
                .iter()
                .find(|p| nic.mac.as_deref() == Some(p.mac_address.to_ascii_lowercase().as_str()));
            nics.push(NicInfo {
                network_id: port.map(|p| p.network_id.clone()),
                port_id: port.map(|p| p.id.clone()),
                nic,
            });
        }
        Ok(ServerDescription {
            id: server.id,
            name: server.name,
            status: server.status,
            project_id: server.tenant_id,
            description: server.description,
            flavor,
            firmware: Firmware::from_properties(&image_properties),
            image_properties,
            disks,
            nics,
            microversion: self.microversion().to_string(),
        })
    }

    /// Stops the server (`os-stop`; Nova asks the guest and forces it after its `shutdown_timeout`)
    /// and waits for `SHUTOFF`. A server already `SHUTOFF` is left alone.
    ///
    /// # Errors
    /// [`StopError`].
    pub async fn stop(&self, server_id: &str, timeout: Duration, poll: Duration) -> Result<(), StopError> {
        let call = |step| {
            move |source| StopError::Call {
                step,
                server: server_id.to_owned(),
                source,
            }
        };
        let status = |s: ServerResponse| (s.server.status, s.server.task_state);
        let path = format!("/servers/{server_id}");
        let (current, _) = status(
            self.get_json(Service::Compute, &path)
                .await
                .map_err(call("reading"))?,
        );
        if current == "SHUTOFF" {
            return Ok(());
        }
        self.call(
            Service::Compute,
            Method::POST,
            &format!("/servers/{server_id}/action"),
            Some(&serde_json::json!({ "os-stop": null })),
        )
        .await
        .map_err(call("os-stop"))?;
        let started = Instant::now();
        loop {
            let (current, task) = status(
                self.get_json(Service::Compute, &path)
                    .await
                    .map_err(call("reading"))?,
            );
            match current.as_str() {
                "SHUTOFF" if task.is_none() => return Ok(()),
                "ERROR" => {
                    return Err(StopError::Failed {
                        server: server_id.to_owned(),
                    });
                }
                _ => {}
            }
            if started.elapsed() >= timeout {
                return Err(StopError::Timeout {
                    server: server_id.to_owned(),
                    status: current,
                    waited: started.elapsed(),
                });
            }
            tokio::time::sleep(poll).await;
        }
    }
}

impl Client {
    /// The server's status (`ACTIVE`, `SHUTOFF`, ...) and task state (`powering-off`, ...), for a
    /// caller that polls on its own schedule.
    ///
    /// # Errors
    /// [`client::Error`].
    pub async fn server_status(&self, server_id: &str) -> Result<(String, Option<String>), client::Error> {
        let found: ServerResponse = self
            .get_json(Service::Compute, &format!("/servers/{server_id}"))
            .await?;
        Ok((found.server.status, found.server.task_state))
    }

    /// Asks Nova to stop the server (`os-stop`) and returns at once; [`Client::server_status`]
    /// tells when it is `SHUTOFF`. A server already `SHUTOFF`, or one Nova refuses to stop because
    /// it is already changing state (409), is left alone.
    ///
    /// # Errors
    /// [`StopError::Call`].
    pub async fn request_stop(&self, server_id: &str) -> Result<(), StopError> {
        let call = |step| {
            move |source| StopError::Call {
                step,
                server: server_id.to_owned(),
                source,
            }
        };
        let (status, _) = self.server_status(server_id).await.map_err(call("reading"))?;
        if status == "SHUTOFF" {
            return Ok(());
        }
        match self
            .call(
                Service::Compute,
                Method::POST,
                &format!("/servers/{server_id}/action"),
                Some(&serde_json::json!({ "os-stop": null })),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.status() == Some(reqwest::StatusCode::CONFLICT) => Ok(()),
            Err(e) => Err(call("os-stop")(e)),
        }
    }

    /// Names of the networks the project sees (Neutron), or `None` when the catalog has no network
    /// service.
    ///
    /// # Errors
    /// [`client::Error`].
    pub async fn network_names(&self) -> Result<Option<Vec<String>>, client::Error> {
        if !self.has_network() {
            return Ok(None);
        }
        let list: crate::proto::network::NetworkList =
            self.get_json(Service::Network, "/v2.0/networks").await?;
        Ok(Some(list.networks.into_iter().map(|n| n.name).collect()))
    }
}

/// Escapes regular-expression syntax so a name is matched literally by Nova's filter.
fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Percent-encodes a query value (everything but unreserved characters).
pub(crate) fn percent_encode(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_anchored_literal_patterns() {
        assert_eq!(regex_escape("web.01(a)"), r"web\.01\(a\)");
        assert_eq!(percent_encode("^a b$"), "%5Ea%20b%24");
    }
}
