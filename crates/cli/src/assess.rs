//! `vm-import vsphere assess`: the controller's preflight rules run over every VM in a datacenter (or
//! folder, or the named VMs) before anything is planned, with disk counts, provisioned and allocated
//! bytes and a transfer-time estimate. Output is sorted by VM name, so JSON is stable between runs.
//! Target-cluster facts (StorageClass, NADs, namespace VMs, scratch space) are not known here and are
//! not checked; reachability is probed from where the command runs.

use std::{collections::BTreeMap, io::Write, path::PathBuf};

use anyhow::Context;
use api::{Concern, NetworkMapping, Severity, VirtualMachineImportSpec};
use clap::{Args, ValueEnum};
use controller::preflight as probes;
use plan::{
    preflight::{PreflightFacts, check},
    risks::{Probe, ProbeRole, RiskFacts},
};
use serde::Serialize;
use vsphere::proto::vm::{PowerState, VmDescription};

use crate::vsphere_cmd::{ConnArgs, connect_to};

/// Exit code when any VM has a Critical concern.
pub(crate) const EXIT_CRITICAL: u8 = 3;

/// The assessment found Critical concerns (the report was printed).
#[derive(Debug, thiserror::Error)]
#[error("{vms} of {total} VMs have Critical concerns")]
pub(crate) struct CriticalFound {
    vms: usize,
    total: usize,
}

/// A bandwidth given as bits per second with an optional k/M/G suffix (`1G`, `500M`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bandwidth(u64);

fn parse_bandwidth(text: &str) -> Result<Bandwidth, String> {
    let t = text.trim().trim_end_matches("bit/s").trim_end_matches("bps");
    let (digits, scale) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 1_000),
        Some('m' | 'M') => (&t[..t.len() - 1], 1_000_000),
        Some('g' | 'G') => (&t[..t.len() - 1], 1_000_000_000),
        _ => (t, 1),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a bandwidth like 1G or 500M (bits per second)"))?;
    match n.checked_mul(scale) {
        Some(0) | None => Err(format!("{text:?} must be a positive bandwidth")),
        Some(bits) => Ok(Bandwidth(bits)),
    }
}

/// Output format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Format {
    Table,
    Json,
    Csv,
}

#[derive(Debug, Args)]
pub(crate) struct AssessArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// Only VMs below this folder of `<dc>/vm` (recursively).
    #[arg(long)]
    folder: Option<String>,
    /// Only these VMs (repeatable); a name not found is reported as a Critical concern.
    #[arg(long = "vm")]
    vms: Vec<String>,
    /// JSON file with the network mapping to check, as `spec.networkMapping`:
    /// `[{"sourceNetwork": "VM Network", "destinationNetwork": "default/vlan1"}]`.
    #[arg(long)]
    mapping: Option<PathBuf>,
    /// Bandwidth for the transfer estimate, bits per second (`1G`, `500M`).
    #[arg(long, default_value = "1G", value_parser = parse_bandwidth)]
    bandwidth: Bandwidth,
    /// ESXi ports to probe on each VM's host, comma-separated (empty: none).
    #[arg(long, value_delimiter = ',', default_value = "443,902")]
    esxi_port: Vec<u16>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

/// One VM's line in the report.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Assessed {
    name: String,
    moref: String,
    host: Option<String>,
    power_state: Option<PowerState>,
    disks: usize,
    provisioned_bytes: u64,
    allocated_bytes: u64,
    transfer_seconds: u64,
    critical: bool,
    concerns: Vec<Concern>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    datacenter: String,
    bandwidth_bits_per_second: u64,
    vms: Vec<Assessed>,
}

pub(crate) async fn run(args: AssessArgs) -> anyhow::Result<()> {
    let mapping: Vec<NetworkMapping> = match &args.mapping {
        Some(path) => {
            let text = std::fs::read(path)
                .with_context(|| format!("failed to read --mapping {}", path.display()))?;
            serde_json::from_slice(&text)
                .with_context(|| format!("--mapping {} is not a JSON networkMapping list", path.display()))?
        }
        None => Vec::new(),
    };
    let (endpoint, datacenter) = (args.conn.endpoint()?, args.conn.dc()?);
    let client = connect_to(&args.conn).await?;
    let described = describe_all(&client, &args, &datacenter).await;
    let logged_out = client.logout().await;
    let (described, missing, networks) = described?;
    logged_out.context("failed to log out")?;

    // Probe each distinct (host, port) once, all at once.
    let mut targets = Vec::new();
    for vm in &described {
        for t in probes::targets(&endpoint, vm.host_name.as_deref(), &args.esxi_port) {
            if !targets.contains(&t) {
                targets.push(t);
            }
        }
    }
    let probed = probes::probe_all(targets, probes::PROBE_TIMEOUT).await;
    let probe_for = |host: Option<&str>| -> Vec<Probe> {
        probed
            .iter()
            .filter(|p| p.role == ProbeRole::Vcenter || Some(p.host.as_str()) == host)
            .cloned()
            .collect()
    };

    let mut rows = Vec::new();
    for vm in &described {
        let spec = VirtualMachineImportSpec {
            virtual_machine_name: vm.name.clone(),
            folder: args.folder.clone().unwrap_or_default(),
            mapping: mapping.clone(),
            ..VirtualMachineImportSpec::default()
        };
        let risk = controller::vmware::vm_risk(vm);
        let facts = PreflightFacts {
            storage_class_exists: true,
            missing_nads: Vec::new(),
            source_networks: Some(networks.clone()),
            vm: Some(controller::vmware::source_vm(vm)),
            source_error: None,
            power_off_supported: true,
            powered_off: vm.power_state == PowerState::PoweredOff,
            tools_running: vm.tools_running(),
            risks: RiskFacts {
                target_name: plan::names::sanitize_vm_name(&vm.name).name,
                probes: probe_for(vm.host_name.as_deref()),
                vm: Some(risk.clone()),
                ..RiskFacts::default()
            },
        };
        let concerns = check(&spec, &facts);
        let allocated = risk.bytes_to_write();
        rows.push(Assessed {
            name: vm.name.clone(),
            moref: vm.moref.value.clone(),
            host: vm.host_name.clone(),
            power_state: Some(vm.power_state),
            disks: vm.disks.len(),
            provisioned_bytes: vm.disks.iter().map(|d| d.capacity_bytes).sum(),
            allocated_bytes: allocated,
            transfer_seconds: u64::try_from(
                (u128::from(allocated) * 8).div_ceil(u128::from(args.bandwidth.0)),
            )
            .unwrap_or(u64::MAX),
            critical: plan::preflight::is_blocking(&concerns),
            concerns,
        });
    }
    for name in missing {
        rows.push(Assessed {
            concerns: vec![Concern {
                id: "VirtualMachineNotFound".into(),
                severity: Severity::Critical,
                message: format!("VM {name:?} was not found in datacenter {datacenter:?}"),
                remedy: "check the name and --folder".into(),
            }],
            name,
            moref: String::new(),
            host: None,
            power_state: None,
            disks: 0,
            provisioned_bytes: 0,
            allocated_bytes: 0,
            transfer_seconds: 0,
            critical: true,
        });
    }
    rows.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.moref.cmp(&b.moref)));
    let report = Report {
        datacenter: datacenter.clone(),
        bandwidth_bits_per_second: args.bandwidth.0,
        vms: rows,
    };
    print(&report, args.format)?;
    let critical = report.vms.iter().filter(|v| v.critical).count();
    if critical > 0 {
        return Err(CriticalFound {
            vms: critical,
            total: report.vms.len(),
        }
        .into());
    }
    Ok(())
}

/// Describes every VM in scope; also returns the requested names not found and the network names.
async fn describe_all(
    client: &vsphere::Client,
    args: &AssessArgs,
    datacenter: &str,
) -> anyhow::Result<(Vec<VmDescription>, Vec<String>, Vec<String>)> {
    let dc = client
        .datacenter(datacenter)
        .await
        .with_context(|| format!("failed to find datacenter {datacenter:?}"))?;
    let networks = client.networks(&dc).await.context("failed to list networks")?;
    let listed = client
        .list_vms(&dc, args.folder.as_deref())
        .await
        .context("failed to list VMs")?;
    let mut by_name: BTreeMap<&str, Vec<&vsphere::proto::MoRef>> = BTreeMap::new();
    for (moref, name) in &listed {
        by_name.entry(name.as_str()).or_default().push(moref);
    }
    let mut missing = Vec::new();
    let selected: Vec<&vsphere::proto::MoRef> = if args.vms.is_empty() {
        listed.iter().map(|(m, _)| m).collect()
    } else {
        let mut out = Vec::new();
        for name in &args.vms {
            match by_name.get(name.as_str()) {
                Some(morefs) => out.extend(morefs.iter().copied()),
                None => missing.push(name.clone()),
            }
        }
        out
    };
    let mut described = Vec::with_capacity(selected.len());
    for moref in selected {
        described.push(
            client
                .describe_vm(moref, &networks)
                .await
                .with_context(|| format!("failed to describe VM {moref}"))?,
        );
    }
    let names = networks.networks.into_iter().map(|n| n.name).collect();
    Ok((described, missing, names))
}

fn print(report: &Report, format: Format) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match format {
        Format::Json => {
            serde_json::to_writer_pretty(&mut out, report)?;
            writeln!(out)?;
        }
        Format::Csv => {
            writeln!(
                out,
                "name,moref,host,disks,provisioned_bytes,allocated_bytes,transfer_seconds,critical,concerns"
            )?;
            for v in &report.vms {
                let ids: Vec<String> = v
                    .concerns
                    .iter()
                    .map(|c| format!("{}:{:?}", c.id, c.severity))
                    .collect();
                writeln!(
                    out,
                    "{},{},{},{},{},{},{},{},{}",
                    csv(&v.name),
                    v.moref,
                    csv(v.host.as_deref().unwrap_or_default()),
                    v.disks,
                    v.provisioned_bytes,
                    v.allocated_bytes,
                    v.transfer_seconds,
                    v.critical,
                    csv(&ids.join(";"))
                )?;
            }
        }
        Format::Table => {
            writeln!(
                out,
                "{:<24} {:>5} {:>14} {:>14} {:>9}  CONCERNS",
                "VM", "DISKS", "PROVISIONED", "ALLOCATED", "ETA(s)"
            )?;
            for v in &report.vms {
                writeln!(
                    out,
                    "{:<24} {:>5} {:>14} {:>14} {:>9}  {}",
                    v.name,
                    v.disks,
                    v.provisioned_bytes,
                    v.allocated_bytes,
                    v.transfer_seconds,
                    v.concerns
                        .iter()
                        .map(|c| format!("{}({:?})", c.id, c.severity))
                        .collect::<Vec<_>>()
                        .join(" ")
                )?;
            }
        }
    }
    Ok(())
}

fn csv(field: &str) -> String {
    if field.contains([',', '"', '\n']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bandwidths_parse_with_suffixes() {
        assert_eq!(parse_bandwidth("1G").map(|b| b.0), Ok(1_000_000_000));
        assert_eq!(parse_bandwidth("500M").map(|b| b.0), Ok(500_000_000));
        assert_eq!(parse_bandwidth("8000").map(|b| b.0), Ok(8000));
        assert!(parse_bandwidth("0").is_err());
        assert!(parse_bandwidth("fast").is_err());
    }

    #[test]
    fn csv_quotes_only_when_needed() {
        assert_eq!(csv("a"), "a");
        assert_eq!(csv("a,b"), "\"a,b\"");
    }
}
