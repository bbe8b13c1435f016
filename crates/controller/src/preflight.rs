//! Gathering the migration-risk facts ([`plan::risks::RiskFacts`]) every import shares (the VM's
//! details are its source's, [`crate::vmware::vm_risk`]): the VMs already in the target namespace, free space in the image directory, and TCP probes from this
//! process to vCenter and to the ESXi host serving the disks. Every probe runs at once under one short
//! deadline, so a reconcile spends at most [`PROBE_TIMEOUT`] here. Used by the import reconciler and by
//! `vm-import vsphere assess`.

use std::{path::Path, time::Duration};

use futures::future::join_all;
use kube::Client;
use plan::risks::{Probe, ProbeOutcome, ProbeRole, Scratch, TargetVm};
use tokio::net::{TcpStream, lookup_host};

use crate::kinds;

/// How long each TCP connect (and name lookup) may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// ESXi ports the disks are read through: HTTPS (NFC lease URLs) and NFC.
pub const ESXI_PORTS: &[u16] = &[443, 902];

/// Free space in `dir` for this process, less `reserved_bytes` kept free; `None` when it cannot be
/// measured (the directory does not exist yet: the import creates it).
pub fn scratch(dir: &Path, reserved_bytes: u64) -> Option<Scratch> {
    let stat = rustix::fs::statvfs(dir).ok()?;
    Some(Scratch {
        dir: dir.display().to_string(),
        free_bytes: stat.f_bavail.saturating_mul(stat.f_frsize),
        reserved_bytes,
    })
}

/// The KubeVirt VirtualMachines of `namespace` with the MACs their template gives.
///
/// # Errors
/// The list call's.
pub async fn namespace_vms(kube: &Client, namespace: &str) -> Result<Vec<TargetVm>, kube::Error> {
    let list = kinds::namespaced(kube, namespace, &kinds::virtual_machine_resource())
        .list(&Default::default())
        .await?;
    Ok(list
        .items
        .iter()
        .map(|vm| TargetVm {
            name: vm.metadata.name.clone().unwrap_or_default(),
            macs: vm
                .data
                .pointer("/spec/template/spec/domain/devices/interfaces")
                .and_then(serde_json::Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|i| i.get("macAddress").and_then(serde_json::Value::as_str))
                .map(str::to_owned)
                .collect(),
        })
        .collect())
}

/// The probe targets of a VM: the SDK endpoint's host and port, and `esxi_ports` on its ESXi host.
pub fn targets(endpoint: &str, host_name: Option<&str>, esxi_ports: &[u16]) -> Vec<(ProbeRole, String, u16)> {
    let mut out = Vec::new();
    if let Ok(url) = reqwest::Url::parse(endpoint)
        && let Some(host) = url.host_str()
    {
        out.push((
            ProbeRole::Vcenter,
            host.trim_matches(['[', ']']).to_owned(),
            url.port_or_known_default().unwrap_or(443),
        ));
    }
    if let Some(host) = host_name.filter(|h| !h.is_empty()) {
        for &port in esxi_ports {
            out.push((ProbeRole::Esxi, host.to_owned(), port));
        }
    }
    out
}

/// TCP-connects to every target at once, each bounded by `timeout`.
pub async fn probe_all(targets: Vec<(ProbeRole, String, u16)>, timeout: Duration) -> Vec<Probe> {
    join_all(targets.into_iter().map(|(role, host, port)| async move {
        let outcome = probe(&host, port, timeout).await;
        Probe {
            role,
            host,
            port,
            outcome,
        }
    }))
    .await
}

async fn probe(host: &str, port: u16, timeout: Duration) -> ProbeOutcome {
    let addrs = match tokio::time::timeout(timeout, lookup_host((host, port))).await {
        Ok(Ok(addrs)) => addrs.collect::<Vec<_>>(),
        Ok(Err(e)) => return ProbeOutcome::Unresolved(e.to_string()),
        Err(_) => return ProbeOutcome::Unresolved(format!("lookup timed out after {timeout:?}")),
    };
    let Some(addr) = addrs.first().copied() else {
        return ProbeOutcome::Unresolved("no address".into());
    };
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(_)) => ProbeOutcome::Open,
        Ok(Err(e)) => ProbeOutcome::Failed(format!("{addr}: {e}")),
        Err(_) => ProbeOutcome::Failed(format!("{addr}: no answer within {timeout:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_name_vcenter_and_each_esxi_port() {
        let t = targets("https://vc.example:8989/sdk", Some("esx1"), ESXI_PORTS);
        assert_eq!(
            t,
            vec![
                (ProbeRole::Vcenter, "vc.example".into(), 8989),
                (ProbeRole::Esxi, "esx1".into(), 443),
                (ProbeRole::Esxi, "esx1".into(), 902),
            ]
        );
        assert_eq!(targets("https://vc/sdk", None, ESXI_PORTS).len(), 1);
    }

    #[tokio::test]
    async fn a_port_nobody_listens_on_fails_and_a_listener_is_open() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listener.local_addr().unwrap().port();
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let probes = probe_all(
            vec![
                (ProbeRole::Esxi, "127.0.0.1".into(), open),
                (ProbeRole::Esxi, "127.0.0.1".into(), closed),
                (ProbeRole::Esxi, "no-such-host.invalid".into(), 902),
            ],
            PROBE_TIMEOUT,
        )
        .await;
        assert_eq!(probes[0].outcome, ProbeOutcome::Open);
        assert!(
            matches!(&probes[1].outcome, ProbeOutcome::Failed(_)),
            "{:?}",
            probes[1]
        );
        assert!(
            matches!(&probes[2].outcome, ProbeOutcome::Unresolved(_)),
            "{:?}",
            probes[2]
        );
    }
}
