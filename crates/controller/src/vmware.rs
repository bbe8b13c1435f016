//! The VMware side of the controller: a vSphere session from a `VmwareSource` and its Secret (TLS
//! verified against `caCert`, pinned to `certificateFingerprint`, or the system roots, unless the
//! source opts out) and the VM description translated into `plan`'s
//! source-neutral model.

use error_text::chain;
use std::error::Error as _;

use api::{VmwareSource, names::vmware as vmware_secret};
use kube::ResourceExt;
use plan::{ControllerKind, Firmware, SourceDisk, SourceNic, SourceVm};
use vsphere::{
    Client, Config, Password,
    proto::vm::{BusFamily, NicNetwork, VmDescription},
};

use crate::secret::{SecretError, SourceSecret, TrustKeys};

/// Why the controller could not get a working session (or datacenter) for a `VmwareSource`.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The credentials Secret is missing, unreadable or lacks a key.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// The server's certificate did not verify.
    #[error(
        "TLS verification of {endpoint} failed ({detail}); put the vCenter CA certificate (PEM) under the \
         secret's 'caCert' key or the SHA-256 fingerprint of vCenter's certificate under \
         'certificateFingerprint', or set spec.insecureSkipVerify: true to skip verification"
    )]
    TlsVerification {
        /// The endpoint.
        endpoint: String,
        /// The TLS error.
        detail: String,
    },
    /// The user name or password is wrong.
    #[error("vCenter {endpoint} rejected the credentials of user '{username}'")]
    InvalidCredentials {
        /// The endpoint.
        endpoint: String,
        /// The user.
        username: String,
    },
    /// Any other session failure (unreachable host, bad URL, faults).
    #[error("cannot log in to {endpoint}: {detail}")]
    Session {
        /// The endpoint.
        endpoint: String,
        /// The error chain.
        detail: String,
    },
    /// Login worked but the datacenter is not there.
    #[error("{0}")]
    Datacenter(String),
}

impl ConnectError {
    /// Low-cardinality reason for conditions, Events and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Secret(error) => error.reason(),
            Self::TlsVerification { .. } => "TLSVerificationFailed",
            Self::InvalidCredentials { .. } => "InvalidCredentials",
            Self::Session { .. } => "EndpointUnreachable",
            Self::Datacenter(_) => "DatacenterNotFound",
        }
    }
}

/// Whether an error chain reads like a certificate rejection (rustls says so only in text).
pub(crate) fn looks_like_certificate_failure(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    lower.contains("certificate") || lower.contains("unknownissuer") || lower.contains("fingerprint")
}

/// The trust keys of a `VmwareSource`'s Secret.
const TRUST_KEYS: TrustKeys = TrustKeys {
    ca_cert: vmware_secret::CA_CERT,
    fingerprint: vmware_secret::CERT_FINGERPRINT,
};

/// Logs in to the source's vCenter (or ESXi).
///
/// # Errors
/// [`ConnectError`], each naming what to fix.
pub async fn connect(kube: &kube::Client, source: &VmwareSource) -> Result<Client, ConnectError> {
    let secret = SourceSecret::read(kube, &source.spec.credentials, source.namespace()).await?;
    let username = secret.required_text(vmware_secret::USERNAME)?;
    let password = Password::new(secret.required_text(vmware_secret::PASSWORD)?);
    let insecure = source.spec.insecure_skip_verify == Some(true);
    let tls = secret.tls(TRUST_KEYS, insecure)?;
    let endpoint = source.spec.endpoint_address.clone();
    let config = Config::new(endpoint.clone(), username.clone(), password).with_tls(tls);
    Client::connect(config).await.map_err(|error| {
        if error.is_invalid_login() {
            return ConnectError::InvalidCredentials {
                endpoint: endpoint.clone(),
                username: username.clone(),
            };
        }
        let detail = chain(&error);
        let tls_failure = matches!(error, vsphere::client::Error::Tls { .. })
            || (error.source().is_some() && looks_like_certificate_failure(&detail));
        if tls_failure && !insecure {
            ConnectError::TlsVerification {
                endpoint: endpoint.clone(),
                detail,
            }
        } else {
            ConnectError::Session {
                endpoint: endpoint.clone(),
                detail,
            }
        }
    })
}

/// Logs in and checks that the source's datacenter exists.
///
/// # Errors
/// [`ConnectError`].
pub async fn verify(kube: &kube::Client, source: &VmwareSource) -> Result<Client, ConnectError> {
    let client = connect(kube, source).await?;
    if let Err(error) = client.datacenter(datacenter_name(&source.spec.datacenter)).await {
        let _ = client.logout().await;
        return Err(ConnectError::Datacenter(chain(&error)));
    }
    Ok(client)
}

/// The datacenter name as the inventory knows it (upstream accepts `DC0` and `/DC0`).
pub fn datacenter_name(spec_value: &str) -> &str {
    spec_value.trim_start_matches('/')
}

/// The neutral controller kind of a vSphere controller.
pub fn controller_kind(family: BusFamily, class: &str) -> ControllerKind {
    match family {
        BusFamily::Scsi if class.to_ascii_lowercase().contains("paravirtual") => {
            ControllerKind::ParaVirtualScsi
        }
        BusFamily::Scsi => ControllerKind::Scsi,
        BusFamily::Sata => ControllerKind::Sata,
        BusFamily::Ide => ControllerKind::Ide,
        BusFamily::Nvme => ControllerKind::Nvme,
        BusFamily::Usb => ControllerKind::Usb,
        BusFamily::Other => ControllerKind::Unknown,
    }
}

fn nic_model(device_type: &str) -> Option<api::NicModel> {
    match device_type {
        "VirtualVmxnet" | "VirtualVmxnet2" | "VirtualVmxnet3" => Some(api::NicModel::Virtio),
        "VirtualE1000e" => Some(api::NicModel::E1000e),
        "VirtualE1000" => Some(api::NicModel::E1000),
        "VirtualPCNet32" => Some(api::NicModel::Pcnet),
        _ => None,
    }
}

/// The VM in `plan`'s terms.
pub fn source_vm(vm: &VmDescription) -> SourceVm {
    SourceVm {
        name: vm.name.clone(),
        cpus: vm.num_cpu,
        cores_per_socket: vm.num_cores_per_socket,
        memory_mib: vm.memory_mb,
        firmware: match vm.firmware {
            vsphere::proto::vm::Firmware::Efi => Firmware::Efi,
            vsphere::proto::vm::Firmware::Bios => Firmware::Bios,
        },
        secure_boot: vm.secure_boot,
        tpm: vm.vtpm,
        disks: vm
            .disks
            .iter()
            .map(|d| SourceDisk {
                controller: controller_kind(d.controller.family, &d.controller.class),
                bus: u32::try_from(d.controller.bus).unwrap_or_default(),
                unit: u32::try_from(d.unit).unwrap_or_default(),
                capacity_bytes: d.capacity_bytes,
                boot_order: None,
            })
            .collect(),
        nics: vm
            .nics
            .iter()
            .map(|n| SourceNic {
                model: nic_model(&n.device_type),
                mac: n.mac_address.clone(),
                network: n.network.name().unwrap_or_default().to_owned(),
                switch: match &n.network {
                    NicNetwork::Distributed { switch_name, .. } => switch_name.clone(),
                    _ => None,
                },
            })
            .collect(),
        description: vm.annotation.clone().filter(|a| !a.is_empty()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvscsi_is_told_apart_from_other_scsi() {
        assert_eq!(
            controller_kind(BusFamily::Scsi, "ParaVirtualSCSIController"),
            ControllerKind::ParaVirtualScsi
        );
        assert_eq!(
            controller_kind(BusFamily::Scsi, "VirtualLsiLogicController"),
            ControllerKind::Scsi
        );
        assert_eq!(
            controller_kind(BusFamily::Nvme, "VirtualNVMEController"),
            ControllerKind::Nvme
        );
    }

    #[test]
    fn nic_models_follow_upstream_table() {
        assert_eq!(nic_model("VirtualVmxnet3"), Some(api::NicModel::Virtio));
        assert_eq!(nic_model("VirtualE1000e"), Some(api::NicModel::E1000e));
        assert_eq!(nic_model("VirtualSriovEthernetCard"), None);
    }

    #[test]
    fn chain_joins_sources_without_repeating_them() {
        let inner = std::io::Error::other("connection refused");
        let outer = ConnectError::Secret(SecretError::Unreadable {
            namespace: "ns".into(),
            name: "s".into(),
            source: kube::Error::Service(Box::new(inner)),
        });
        let text = chain(&outer);
        assert!(text.starts_with("reading secret ns/s: "), "{text}");
        assert!(text.contains("connection refused"), "{text}");
    }
}
