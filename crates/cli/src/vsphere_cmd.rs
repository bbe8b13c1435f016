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

/// How to reach and trust vCenter, and which datacenter. Admins coming from govc may keep their
/// `GOVC_URL`, `GOVC_USERNAME`, `GOVC_PASSWORD`, `GOVC_INSECURE` and `GOVC_DATACENTER`: each is the
/// fallback of the flag or variable named here.
#[derive(Debug, Args)]
pub(crate) struct ConnArgs {
    /// vCenter or ESXi SDK endpoint, e.g. https://vcenter.example/sdk [env: VSPHERE_URL, else
    /// GOVC_URL, where a bare host means https://HOST/sdk].
    #[arg(long, env = "VSPHERE_URL", value_name = "URL")]
    endpoint: Option<String>,
    /// Datacenter name (a standalone ESXi host's is `ha-datacenter`) [env: VSPHERE_DC, else
    /// GOVC_DATACENTER].
    #[arg(long, env = "VSPHERE_DC", value_name = "NAME")]
    dc: Option<String>,
    /// File with `username=…` and `password=…` lines; otherwise VSPHERE_USERNAME and
    /// VSPHERE_PASSWORD, else GOVC_USERNAME and GOVC_PASSWORD (or the user and password in GOVC_URL).
    #[arg(long, value_name = "FILE")]
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

impl ConnArgs {
    /// The SDK endpoint: `--endpoint` or `VSPHERE_URL`, else govc's `GOVC_URL`.
    pub(crate) fn endpoint(&self) -> anyhow::Result<String> {
        match (&self.endpoint, govc_url()) {
            (Some(endpoint), _) if !endpoint.contains("://") => bail!(
                "--endpoint {endpoint:?} has no scheme: write https://{}/sdk",
                endpoint.trim_end_matches('/')
            ),
            (Some(endpoint), _) => Ok(endpoint.clone()),
            (None, Some(govc)) => Ok(govc.endpoint),
            (None, None) => {
                bail!("no vCenter endpoint: pass --endpoint https://HOST/sdk, or set VSPHERE_URL or GOVC_URL")
            }
        }
    }

    /// The datacenter: `--dc` or `VSPHERE_DC`, else govc's `GOVC_DATACENTER`.
    pub(crate) fn dc(&self) -> anyhow::Result<String> {
        self.dc
            .clone()
            .or_else(|| std::env::var("GOVC_DATACENTER").ok().filter(|v| !v.is_empty()))
            .context("no datacenter: pass --dc NAME, or set VSPHERE_DC or GOVC_DATACENTER")
    }
}

/// `GOVC_URL` as govc reads it: `https://[user:password@]host[/sdk]`, or a bare host.
#[derive(Debug, PartialEq, Eq)]
struct GovcUrl {
    /// The SDK endpoint, without the user and password.
    endpoint: String,
    username: Option<String>,
    password: Option<String>,
}

fn govc_url() -> Option<GovcUrl> {
    std::env::var("GOVC_URL")
        .ok()
        .filter(|v| !v.is_empty())
        .map(|v| parse_govc_url(&v))
}

/// Reads a `GOVC_URL` value: a bare host (or host:port) means `https://HOST/sdk`, a URL without a
/// path gets `/sdk`, and a user and password in it are taken out (they never reach a log line).
fn parse_govc_url(value: &str) -> GovcUrl {
    let with_scheme = if value.contains("://") {
        value.to_owned()
    } else {
        format!("https://{value}")
    };
    let Ok(mut url) = url::Url::parse(&with_scheme) else {
        // Left as given: logging in names it and says why it is not a URL.
        return GovcUrl {
            endpoint: value.to_owned(),
            username: None,
            password: None,
        };
    };
    let decode = |s: &str| {
        url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map_or_else(|| s.to_owned(), |(_, v)| v.into_owned())
    };
    let username = Some(url.username()).filter(|u| !u.is_empty()).map(decode);
    let password = url.password().map(decode);
    let _ = url.set_username("");
    let _ = url.set_password(None);
    if url.path().is_empty() || url.path() == "/" {
        url.set_path("/sdk");
    }
    GovcUrl {
        endpoint: url.to_string(),
        username,
        password,
    }
}

/// Logs in to the endpoint with the credentials and trust the flags say (`GOVC_INSECURE=1` or
/// `true` asks for no verification when no flag chose a policy).
pub(crate) async fn connect_to(source: &ConnArgs) -> anyhow::Result<Client> {
    let endpoint = source.endpoint()?;
    let (username, password) = credentials(source.credentials_file.as_deref())?;
    let govc_insecure = std::env::var("GOVC_INSECURE").is_ok_and(|v| matches!(v.as_str(), "1" | "true"));
    let tls = match source.tls.chosen()? {
        Some(tls) => tls,
        None if govc_insecure => {
            crate::tls_args::warn_if_insecure(&TlsMode::Insecure);
            TlsMode::Insecure
        }
        None => TlsMode::SystemRoots,
    };
    let config = Config::new(endpoint.clone(), username, password).with_tls(tls);
    Client::connect(config)
        .await
        .with_context(|| format!("failed to log in to {endpoint}"))
}

/// Username and password from the credentials file, else from the environment (vm-import's
/// variables, else govc's).
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
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let govc = govc_url();
    let username = var("VSPHERE_USERNAME")
        .or_else(|| var("GOVC_USERNAME"))
        .or_else(|| govc.as_ref().and_then(|g| g.username.clone()))
        .context("no credentials: set VSPHERE_USERNAME and VSPHERE_PASSWORD (or govc's GOVC_USERNAME and GOVC_PASSWORD), or pass --credentials-file")?;
    let password = var("VSPHERE_PASSWORD")
        .or_else(|| var("GOVC_PASSWORD"))
        .or_else(|| govc.and_then(|g| g.password))
        .context(
            "no credentials: VSPHERE_PASSWORD (or GOVC_PASSWORD) is not set, or pass --credentials-file",
        )?;
    Ok((username, Password::new(password)))
}

async fn inspect(args: InspectArgs) -> anyhow::Result<()> {
    let source = &args.source;
    let client = connect(source).await?;
    let described = client
        .inspect(&source.conn.dc()?, source.folder.as_deref(), &source.vm)
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
        .inspect(&source.conn.dc()?, source.folder.as_deref(), &source.vm)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn govc_urls_read_as_govc_reads_them_and_lose_their_secrets() {
        let bare = parse_govc_url("vcenter.example");
        assert_eq!(bare.endpoint, "https://vcenter.example/sdk");
        assert_eq!((bare.username, bare.password), (None, None));
        let full = parse_govc_url("https://admin%40vsphere.local:p%3Ass@vc.example:8443/sdk");
        assert_eq!(full.endpoint, "https://vc.example:8443/sdk");
        assert_eq!(full.username.as_deref(), Some("admin@vsphere.local"));
        assert_eq!(full.password.as_deref(), Some("p:ss"));
        assert_eq!(
            parse_govc_url("https://vc.example").endpoint,
            "https://vc.example/sdk"
        );
        assert_eq!(
            parse_govc_url("http://[::1]:9/custom").endpoint,
            "http://[::1]:9/custom"
        );
    }
}
