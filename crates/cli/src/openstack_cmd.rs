//! `vm-import openstack inspect|export`: the OpenStack source tools, independent of Kubernetes.
//!
//! Credentials come from the `OS_*` variables of an openrc file or from a clouds.yaml entry
//! (`--cloud`), never from argv (argv is world-readable in `ps`). TLS is verified (pinned to
//! `--fingerprint`, or against `--ca-cert`, `OS_CACERT` or the entry's `cacert`, else the system
//! roots) unless `--insecure` is given, and an insecure connection is said so on stderr and in the
//! export report.

use std::{
    io::Write,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use openstack::{
    Client, Config,
    export::{ExportOptions, Hooks, Progress, Step, TempObjects},
    proto::clouds,
};

use crate::{
    cli::{ChecksumArg, OutputFormat},
    tls_args::{TlsArgs, warn_if_insecure},
};

#[derive(Debug, Subcommand)]
pub(crate) enum OpenstackCommand {
    /// Describe a server as JSON: flavor, firmware from image properties, disks in boot order with
    /// where each comes from (volume or the image-backed root disk), NICs with MACs and networks.
    Inspect(InspectArgs),
    /// Export every disk of a server into DIR as sparse raw or qcow2 images (volumes through a
    /// snapshot, a volume and a raw Glance image; an image-backed root disk through a server image),
    /// plus server.json and report.json. Every temporary cloud object is deleted afterwards.
    Export(ExportArgs),
}

/// Which cloud and server.
#[derive(Debug, Args)]
pub(crate) struct SourceArgs {
    /// The server's name (exact and unique in the project) or id.
    #[arg(long)]
    server: String,
    /// Take the settings from this clouds.yaml entry instead of the OS_* variables.
    #[arg(long, env = "OS_CLOUD")]
    cloud: Option<String>,
    /// The clouds.yaml to read (default: OS_CLIENT_CONFIG_FILE, ./clouds.yaml,
    /// ~/.config/openstack/clouds.yaml, /etc/openstack/clouds.yaml).
    #[arg(long, value_name = "FILE")]
    clouds_yaml: Option<PathBuf>,
    /// Region of the endpoints (overrides OS_REGION_NAME / region_name).
    #[arg(long)]
    region: Option<String>,
    #[command(flatten)]
    tls: TlsArgs,
}

#[derive(Debug, Args)]
pub(crate) struct InspectArgs {
    #[command(flatten)]
    source: SourceArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ExportArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// Directory receiving `disk-<N>.img` (raw) or `disk-<N>.qcow2`, `server.json` and `report.json`.
    #[arg(long)]
    out: PathBuf,
    /// Output image format.
    #[arg(short = 'O', long = "format", value_enum, default_value_t = OutputFormat::Raw)]
    format: OutputFormat,
    #[command(flatten)]
    checksum: ChecksumArg,
    /// Stop the server first (os-stop: Nova asks the guest, then forces) and wait for SHUTOFF.
    #[arg(long)]
    stop: bool,
    /// Seconds to wait for SHUTOFF with --stop.
    #[arg(long, default_value_t = 600)]
    stop_timeout: u64,
    /// Export a server that is not SHUTOFF (its disks are copied while in use).
    #[arg(long, conflicts_with = "stop")]
    allow_running: bool,
    /// Prefix of the temporary snapshots, volumes and images (default: vm-import-<server>-<time>).
    #[arg(long)]
    name_prefix: Option<String>,
    /// Seconds between status reads of temporary objects.
    #[arg(long, default_value_t = 2)]
    poll_seconds: u64,
}

pub(crate) fn run(command: OpenstackCommand) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    runtime.block_on(async {
        match command {
            OpenstackCommand::Inspect(args) => inspect(args).await,
            OpenstackCommand::Export(args) => export(args).await,
        }
    })
}

fn default_clouds_yaml() -> Option<PathBuf> {
    let mut candidates = vec![PathBuf::from("clouds.yaml")];
    if let Some(file) = std::env::var_os("OS_CLIENT_CONFIG_FILE") {
        candidates.insert(0, file.into());
    }
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(Path::new(&home).join(".config/openstack/clouds.yaml"));
    }
    candidates.push("/etc/openstack/clouds.yaml".into());
    candidates.into_iter().find(|p| p.is_file())
}

/// The cloud settings from clouds.yaml (`--cloud`) or the environment, with the flags applied.
fn config(source: &SourceArgs) -> anyhow::Result<Config> {
    let env = |k: &str| std::env::var(k).ok();
    let mut cloud = match &source.cloud {
        Some(name) => {
            let path = source
                .clouds_yaml
                .clone()
                .or_else(default_clouds_yaml)
                .context("--cloud is given but no clouds.yaml was found (pass --clouds-yaml)")?;
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("failed to read {}", path.display()))?;
            clouds::from_clouds_yaml(&text, name, env("OS_PASSWORD"))
                .with_context(|| format!("in {}", path.display()))?
        }
        None => clouds::from_env(env).context("no cloud settings: source an openrc file or pass --cloud")?,
    };
    if let Some(region) = &source.region {
        cloud.region = Some(region.clone());
    }
    // A flag is explicit: it wins over the cloud's CA file and its `verify: false` (OS_INSECURE).
    if let Some(mode) = source.tls.chosen()? {
        return Ok(Config::from_cloud(cloud, None).with_tls(mode));
    }
    let ca_pem = match (&cloud.ca_file, cloud.insecure) {
        (Some(path), false) => {
            Some(std::fs::read(path).with_context(|| format!("failed to read the CA bundle {path}"))?)
        }
        _ => None,
    };
    let config = Config::from_cloud(cloud, ca_pem);
    warn_if_insecure(&config.tls);
    Ok(config)
}

async fn connect(source: &SourceArgs) -> anyhow::Result<Client> {
    let config = config(source)?;
    let url = config.auth_url.clone();
    Client::connect(config)
        .await
        .with_context(|| format!("failed to log in to {url}"))
}

async fn inspect(args: InspectArgs) -> anyhow::Result<()> {
    let client = connect(&args.source).await?;
    let described = client.inspect(&args.source.server).await;
    let _ = client.logout().await;
    let server = described.with_context(|| format!("failed to describe server {:?}", args.source.server))?;
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, &server)?;
    writeln!(out)?;
    Ok(())
}

async fn export(args: ExportArgs) -> anyhow::Result<()> {
    let client = connect(&args.source).await?;
    let result = export_with(&client, &args).await;
    let _ = client.logout().await;
    result
}

/// Prints a line per step change and per 10% of a download, on stderr.
fn progress_hooks() -> Hooks {
    let last = Mutex::new((usize::MAX, None::<Step>, 0u64));
    let temp_last = Mutex::new(TempObjects::default());
    Hooks {
        progress: Some(Arc::new(move |p: &Progress| {
            let Ok(mut last) = last.lock() else { return };
            let tenth = p
                .bytes_total
                .filter(|t| *t > 0)
                .map_or(0, |t| p.bytes_done * 10 / t);
            if (last.0, last.1, last.2) == (p.disk, Some(p.step), tenth) {
                return;
            }
            *last = (p.disk, Some(p.step), tenth);
            let line = serde_json::json!({"event": "progress", "disk": p.disk, "step": p.step,
                "bytesDone": p.bytes_done, "bytesTotal": p.bytes_total});
            let _ = writeln!(std::io::stderr().lock(), "{line}");
        })),
        temp_objects: Some(Arc::new(move |t: &TempObjects| {
            let Ok(mut last) = temp_last.lock() else { return };
            if *last != *t {
                *last = t.clone();
                let line = serde_json::json!({"event": "temporaryObjects", "objects": t});
                let _ = writeln!(std::io::stderr().lock(), "{line}");
            }
        })),
    }
}

async fn export_with(client: &Client, args: &ExportArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let name = &args.source.server;
    let server = client
        .inspect(name)
        .await
        .with_context(|| format!("failed to describe server {name:?}"))?;
    if args.stop {
        client
            .stop(
                &server.id,
                Duration::from_secs(args.stop_timeout),
                Duration::from_secs(args.poll_seconds.max(1)),
            )
            .await
            .with_context(|| format!("failed to stop server {:?}", server.name))?;
    } else if server.status != "SHUTOFF" && !args.allow_running {
        bail!(
            "server {:?} is {}: pass --stop to stop it first, or --allow-running to copy disks in use",
            server.name,
            server.status
        );
    }
    std::fs::create_dir_all(&args.out).with_context(|| format!("failed to create {}", args.out.display()))?;
    write_json(&args.out.join("server.json"), &server)?;
    let prefix = args.name_prefix.clone().unwrap_or_else(|| {
        let seconds = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        format!("vm-import-{}-{seconds}", server.id.get(..8).unwrap_or(&server.id))
    });
    let options = ExportOptions {
        name_prefix: prefix,
        poll_interval: Duration::from_secs(args.poll_seconds.max(1)),
        allow_running: args.allow_running,
        ..ExportOptions::default()
    };
    let format = (args.format.into(), args.checksum.get());
    let exported = client
        .export_to_dir(&server, &args.out, format, &options, &progress_hooks())
        .await
        .with_context(|| format!("failed to export server {:?}", server.name))?;
    let report = serde_json::json!({
        "server": server.name,
        "serverId": server.id,
        "tlsInsecure": client.tls_insecure(),
        "logins": client.logins(),
        "seconds": started.elapsed().as_secs_f64(),
        "export": exported.export,
        "images": exported.images,
    });
    write_json(&args.out.join("report.json"), &report)?;
    for image in &exported.images {
        eprintln!(
            "{}: {} bytes virtual, {} bytes written{}",
            image.path.display(),
            image.conversion.virtual_size,
            image.conversion.bytes_written,
            crate::disk::checksum_note(&image.conversion)
        );
    }
    if !exported.export.left_behind.is_empty() {
        bail!(
            "the disks were exported, but temporary objects could not be deleted: {:?} ({})",
            exported.export.left_behind,
            exported.export.cleanup_errors.join("; ")
        );
    }
    Ok(())
}

fn write_json(path: &Path, value: &impl serde::Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text + "\n").with_context(|| format!("failed to write {}", path.display()))
}
