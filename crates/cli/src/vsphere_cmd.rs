//! `vm-import vsphere inspect|export` (and the connection flags `assess` shares): the vSphere source tools, independent of Kubernetes.
//!
//! Credentials come from `VSPHERE_USERNAME`/`VSPHERE_PASSWORD` or a credentials file, never from
//! argv (argv is world-readable in `ps`). TLS is verified unless `--insecure` is given, and an
//! insecure connection is said so on stderr and in the export report.

use std::{
    io::Write,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use vsphere::{Client, Config, Password, TlsMode, export::ExportOptions, power::PowerOffMode};

use crate::{
    cli::{ChecksumArg, OutputFormat},
    tls_args::TlsArgs,
};

#[derive(Debug, Subcommand)]
pub(crate) enum VsphereCommand {
    /// Describe a VM as JSON: hardware, firmware, disks with controllers, NICs with networks.
    Inspect(InspectArgs),
    /// Export every disk of a VM into DIR as sparse raw or qcow2 images, streamed and decoded on the
    /// fly through an ExportVm lease (no VMDK is stored), plus vm.json and report.json.
    Export(ExportArgs),
    /// Preflight every VM in scope: concerns, disks, sizes and a transfer estimate. Exits 3 when any
    /// concern is Critical.
    Assess(crate::assess::AssessArgs),
}

/// Where the VM is and how to reach and trust vCenter.
#[derive(Debug, Args)]
pub(crate) struct SourceArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// Folder path under `<dc>/vm`, e.g. `prod/web`; without it the VM name must be unique in the datacenter.
    #[arg(long)]
    folder: Option<String>,
    /// The VM's name.
    #[arg(long)]
    vm: String,
}

/// How to reach and trust vCenter, and which datacenter.
#[derive(Debug, Args)]
pub(crate) struct ConnArgs {
    /// vCenter or ESXi SDK endpoint, e.g. https://vcenter.example/sdk.
    #[arg(long, env = "VSPHERE_URL")]
    pub(crate) endpoint: String,
    /// Datacenter name (a standalone ESXi host's is `ha-datacenter`).
    #[arg(long, env = "VSPHERE_DC")]
    pub(crate) dc: String,
    /// File with `username=…` and `password=…` lines; otherwise VSPHERE_USERNAME and VSPHERE_PASSWORD.
    #[arg(long)]
    credentials_file: Option<PathBuf>,
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
    /// Directory receiving `disk-<N>.img` (raw) or `disk-<N>.qcow2`, `vm.json` and `report.json`.
    #[arg(long)]
    out: PathBuf,
    /// Output image format.
    #[arg(short = 'O', long = "format", value_enum, default_value_t = OutputFormat::Raw)]
    format: OutputFormat,
    #[command(flatten)]
    checksum: ChecksumArg,
    /// How to power the VM off first: ask the guest (then force after the timeout), pull the plug,
    /// or never (a VM that is on is then an error).
    #[arg(long, value_enum, default_value_t = PowerOff::Never)]
    power_off: PowerOff,
    /// Seconds the guest gets to shut down with `--power-off graceful`.
    #[arg(long, default_value_t = 60)]
    shutdown_timeout: u64,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum PowerOff {
    Graceful,
    Force,
    Never,
}

pub(crate) fn run(command: VsphereCommand) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    runtime.block_on(async {
        match command {
            VsphereCommand::Inspect(args) => inspect(args).await,
            VsphereCommand::Export(args) => export(args).await,
            VsphereCommand::Assess(args) => crate::assess::run(args).await,
        }
    })
}

async fn connect(source: &SourceArgs) -> anyhow::Result<Client> {
    connect_to(&source.conn).await
}

/// Logs in to the endpoint with the credentials and trust the flags say.
pub(crate) async fn connect_to(source: &ConnArgs) -> anyhow::Result<Client> {
    let (username, password) = credentials(source.credentials_file.as_deref())?;
    let tls = source.tls.chosen()?.unwrap_or(TlsMode::SystemRoots);
    let config = Config::new(source.endpoint.clone(), username, password).with_tls(tls);
    Client::connect(config)
        .await
        .with_context(|| format!("failed to log in to {}", source.endpoint))
}

/// Username and password from the credentials file, else from the environment.
fn credentials(file: Option<&Path>) -> anyhow::Result<(String, Password)> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("failed to read credentials file {}", path.display()))?;
        let value = |key: &str| {
            text.lines()
                .filter_map(|line| line.split_once('='))
                .find(|(k, _)| k.trim() == key)
                .map(|(_, v)| v.trim().to_owned())
        };
        let (Some(username), Some(password)) = (value("username"), value("password")) else {
            bail!(
                "credentials file {} needs `username=` and `password=` lines",
                path.display()
            );
        };
        return Ok((username, Password::new(password)));
    }
    let username = std::env::var("VSPHERE_USERNAME")
        .context("no credentials: set VSPHERE_USERNAME and VSPHERE_PASSWORD, or pass --credentials-file")?;
    let password = std::env::var("VSPHERE_PASSWORD")
        .context("no credentials: VSPHERE_PASSWORD is not set (or pass --credentials-file)")?;
    Ok((username, Password::new(password)))
}

async fn inspect(args: InspectArgs) -> anyhow::Result<()> {
    let source = &args.source;
    let client = connect(source).await?;
    let described = client
        .inspect(&source.conn.dc, source.folder.as_deref(), &source.vm)
        .await;
    let logged_out = client.logout().await;
    let vm = described.with_context(|| format!("failed to describe VM {:?}", source.vm))?;
    logged_out.context("failed to log out")?;
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, &vm)?;
    writeln!(out)?;
    Ok(())
}

async fn export(args: ExportArgs) -> anyhow::Result<()> {
    let source = &args.source;
    let client = connect(source).await?;
    let result = export_with(&client, &args).await;
    let logged_out = client.logout().await;
    result?;
    logged_out.context("failed to log out")
}

async fn export_with(client: &Client, args: &ExportArgs) -> anyhow::Result<()> {
    let source = &args.source;
    let vm = client
        .inspect(&source.conn.dc, source.folder.as_deref(), &source.vm)
        .await
        .with_context(|| format!("failed to describe VM {:?}", source.vm))?;
    let mode = match args.power_off {
        PowerOff::Graceful => PowerOffMode::Graceful {
            timeout: Duration::from_secs(args.shutdown_timeout),
        },
        PowerOff::Force => PowerOffMode::Force,
        PowerOff::Never => PowerOffMode::Never,
    };
    let power = client
        .ensure_powered_off(&vm.moref, mode)
        .await
        .with_context(|| format!("VM {:?} cannot be exported while it runs", vm.name))?;
    let format = (args.format.into(), args.checksum.get());
    std::fs::create_dir_all(&args.out).with_context(|| format!("failed to create {}", args.out.display()))?;
    write_json(&args.out.join("vm.json"), &vm)?;
    let exported = client
        .export_to_dir(&vm, &args.out, format, &ExportOptions::default())
        .await?;
    let report = serde_json::json!({
        "vm": vm.name,
        "tlsInsecure": client.tls_insecure(),
        "powerOff": power,
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
    Ok(())
}

fn write_json(path: &Path, value: &impl serde::Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text + "\n").with_context(|| format!("failed to write {}", path.display()))
}
