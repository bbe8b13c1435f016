//! Command-line grammar of `vm-import`: only parsing and validation, no behaviour.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Moves virtual machines from VMware vSphere, OpenStack and OVA files into Harvester.
///
/// A drop-in replacement for Harvester's vm-import-controller add-on: same CRDs
/// (migration.harvesterhci.io/v1beta1), same created objects, faster and safer.
#[derive(Debug, Parser)]
#[command(name = "vm-import", version, propagate_version = true)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the Kubernetes controller and the image server (port 8080).
    ///
    /// Reconciles VmwareSource, OpenstackSource, OvaSource and VirtualMachineImport objects:
    /// checks sources, powers source VMs off, streams their disks into sparse images served to
    /// Harvester, and creates the VirtualMachineImage, PVC and KubeVirt VirtualMachine objects.
    Controller(ControllerArgs),
    /// Convert a disk image (VMDK of any subformat, qcow2, raw, or every disk of an OVA) to raw or
    /// qcow2, in one streaming pass, from a file, stdin or an http(s) URL.
    Convert(ConvertArgs),
    /// Describe a disk image or OVA as JSON: format, virtual size, allocation, and for an OVA the
    /// VM it describes and the manifest check.
    Inspect(InspectArgs),
    /// vSphere source tools: inspect a VM, export its disks without scratch files, assess an estate.
    #[command(subcommand)]
    Vsphere(crate::vsphere_cmd::VsphereCommand),
    /// OpenStack source tools: inspect a server, export its volumes and image-backed root disk.
    #[command(subcommand)]
    Openstack(crate::openstack_cmd::OpenstackCommand),
    /// Print the migration.harvesterhci.io CustomResourceDefinitions as YAML.
    Crds,
    /// Print a shell completion script, e.g. `vm-import completion bash > /etc/bash_completion.d/vm-import`.
    Completion {
        /// The shell.
        #[arg(value_enum, value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Args)]
pub(crate) struct ControllerArgs {
    /// Directory where converted images are written and served from.
    #[arg(
        long,
        env = "VM_IMPORT_IMAGE_DIR",
        default_value = "/tmp/vm-import-controller"
    )]
    pub(crate) image_dir: PathBuf,
    /// Address of the image server (Harvester's add-on uses port 8080).
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub(crate) listen: std::net::SocketAddr,
    /// Address of the metrics and health endpoints (/metrics, /healthz, /readyz).
    #[arg(long, default_value = "0.0.0.0:9090")]
    pub(crate) metrics_listen: std::net::SocketAddr,
    /// Host (optionally host:port) written into image URLs; default
    /// harvester-vm-import-controller.harvester-system.svc (upstream's SVC_ADDRESS).
    #[arg(long, env = "SVC_ADDRESS")]
    pub(crate) service_address: Option<String>,
    /// Imports exporting at once, over all sources.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub(crate) max_concurrent_imports: u16,
    /// Imports exporting at once from one ESXi host.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub(crate) max_imports_per_host: u16,
    /// Namespace of the leader-election Lease (default: the pod's namespace from POD_NAMESPACE).
    #[arg(long, env = "POD_NAMESPACE")]
    pub(crate) leader_election_namespace: Option<String>,
    /// Run without leader election (one replica only).
    #[arg(long)]
    pub(crate) no_leader_election: bool,
    /// Identity in the leader Lease and in Events (default: POD_NAME, else the host name).
    #[arg(long, env = "POD_NAME")]
    pub(crate) identity: Option<String>,
    /// Seconds between re-checks of a ready source.
    #[arg(long, default_value_t = 300)]
    pub(crate) source_recheck_seconds: u64,
    /// Seconds between progress updates in status while disks transfer.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=10))]
    pub(crate) progress_seconds: u64,
    /// Do not apply the CRDs at start (they are managed elsewhere).
    #[arg(long)]
    pub(crate) no_install_crds: bool,
    /// Watch only this namespace (default: all namespaces, as upstream).
    #[arg(long)]
    pub(crate) namespace: Option<String>,
    /// ESXi ports preflight TCP-probes on the host serving a VM's disks, comma-separated (empty: none).
    #[arg(
        long,
        env = "VM_IMPORT_ESXI_PROBE_PORTS",
        value_delimiter = ',',
        default_value = "443,902"
    )]
    pub(crate) esxi_probe_ports: Vec<u16>,
    /// Space preflight keeps free on the image directory's file system: an import that would need
    /// it is refused as ScratchSpaceLow. Bytes, or with a suffix: 512Mi, 1Gi, 2Ti.
    #[arg(
        long,
        env = "VM_IMPORT_IMAGE_DIR_RESERVE",
        default_value = "1Gi",
        value_parser = parse_size
    )]
    pub(crate) image_dir_reserve: u64,
    /// Format of the images served to Harvester: qcow2 moves and hashes only the allocated data;
    /// raw is upstream's (every byte of the virtual size).
    #[arg(long, env = "VM_IMPORT_SERVED_FORMAT", value_enum, default_value_t = OutputFormat::Qcow2)]
    pub(crate) served_format: OutputFormat,
    /// Bytes per second one import reads from its source at most, unless its
    /// spec.maxBytesPerSecond says otherwise (e.g. 100Mi; 0: no cap).
    #[arg(long, env = "VM_IMPORT_IMPORT_BYTES_PER_SECOND", default_value = "0", value_parser = parse_size, value_name = "BYTES")]
    pub(crate) import_bytes_per_second: u64,
    /// Bytes per second all imports from one source object read together at most, unless its
    /// spec.maxBytesPerSecond says otherwise (e.g. 1Gi; 0: no cap).
    #[arg(long, env = "VM_IMPORT_SOURCE_BYTES_PER_SECOND", default_value = "0", value_parser = parse_size, value_name = "BYTES")]
    pub(crate) source_bytes_per_second: u64,
    /// Decoder threads per disk at most (default: the CPUs), to leave the node's cores to its VMs.
    #[arg(long, env = "VM_IMPORT_CONVERSION_THREADS", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub(crate) conversion_threads: Option<u16>,
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub(crate) log_format: LogFormat,
}

/// How the controller logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Args)]
pub(crate) struct ConvertArgs {
    /// Output format.
    #[arg(short = 'O', long = "output-format", value_enum, default_value_t = OutputFormat::Raw)]
    pub(crate) output_format: OutputFormat,
    /// Inflate worker threads for compressed input (default: number of CPUs).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub(crate) threads: Option<u16>,
    /// Progress display: a bar on a terminal (auto), JSON lines on stderr (json), or none.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub(crate) progress: ProgressMode,
    /// Write a JSON report (per disk: virtual size, bytes read and written, checksum, seconds).
    #[arg(long, value_name = "FILE")]
    pub(crate) report: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) checksum: ChecksumArg,
    /// Flush the output to stable storage (fdatasync) before reporting success. Off by default,
    /// like qemu-img convert: the data is in the page cache and written back by the kernel.
    #[arg(long)]
    pub(crate) sync: bool,
    /// For an OVA: fail when the archive has no manifest (.mf) instead of warning.
    #[arg(long)]
    pub(crate) require_manifest: bool,
    /// Replace an existing output file. Without it, an existing output is refused: a swapped
    /// argument order must not destroy a disk. The input itself is never overwritten.
    #[arg(long)]
    pub(crate) force: bool,
    /// What the input must be; a file whose first bytes say otherwise is refused. Without it, a
    /// `.vmdk`, `.qcow2` or `.ova` name declares the format.
    #[arg(short = 'f', long = "input-format", value_enum, value_name = "FORMAT")]
    pub(crate) input_format: Option<DeclaredFormat>,
    #[command(flatten)]
    pub(crate) http: HttpArgs,
    /// Input: a file, `-` for stdin, or an http(s):// URL.
    pub(crate) input: String,
    /// Output: a file, `-` for raw on stdout, or a directory for an OVA (receiving `disk-<N>.img`
    /// or `disk-<N>.qcow2`, as the source tools' `export` names them).
    pub(crate) output: String,
}

/// Input formats a user can declare (`-f`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum DeclaredFormat {
    /// Any VMDK: streamOptimized, sparse, or a descriptor with extents.
    Vmdk,
    /// qcow2.
    Qcow2,
    /// Raw disk bytes.
    Raw,
    /// An OVA archive.
    Ova,
}

impl From<DeclaredFormat> for diskconv::source::Family {
    fn from(format: DeclaredFormat) -> Self {
        use diskconv::source::Family;
        match format {
            DeclaredFormat::Vmdk => Family::Vmdk,
            DeclaredFormat::Qcow2 => Family::Qcow2,
            DeclaredFormat::Raw => Family::Raw,
            DeclaredFormat::Ova => Family::Ova,
        }
    }
}

/// Output formats of `convert` and of the source tools' `export`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum OutputFormat {
    /// Sparse raw image (holes for zero runs).
    Raw,
    /// qcow2 v3 (zero clusters unallocated).
    Qcow2,
}

impl From<OutputFormat> for diskconv::ImageFormat {
    fn from(format: OutputFormat) -> Self {
        match format {
            OutputFormat::Raw => Self::Raw,
            OutputFormat::Qcow2 => Self::Qcow2,
        }
    }
}

/// The digest of each disk's content to compute (`convert`, `vsphere export`, `openstack export`).
#[derive(Debug, Clone, Copy, Args)]
pub(crate) struct ChecksumArg {
    /// Compute this digest of each disk's content (zeros included) while converting and report
    /// it. None by default: a digest costs a core at hash speed. `sha512` is what a Harvester
    /// `VirtualMachineImage`'s `spec.checksum` holds for a raw image.
    #[arg(long = "checksum", value_enum, value_name = "ALGORITHM")]
    pub(crate) algorithm: Option<ChecksumAlgorithm>,
}

impl ChecksumArg {
    /// The digest to ask diskconv for.
    pub(crate) fn get(self) -> Option<diskconv::Checksum> {
        self.algorithm.map(|a| match a {
            ChecksumAlgorithm::Sha256 => diskconv::Checksum::Sha256,
            ChecksumAlgorithm::Sha512 => diskconv::Checksum::Sha512,
        })
    }
}

/// Digest algorithms `--checksum` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ChecksumAlgorithm {
    /// SHA-256.
    Sha256,
    /// SHA-512.
    Sha512,
}

/// How `convert` reports progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ProgressMode {
    /// A progress bar when stderr is a terminal, nothing otherwise.
    Auto,
    /// One JSON object per line on stderr.
    Json,
    /// Nothing.
    None,
}

/// How to fetch an http(s):// input.
#[derive(Debug, Args)]
pub(crate) struct HttpArgs {
    /// PEM file with the CA certificate(s) to trust for an https:// input (instead of the
    /// built-in web roots).
    #[arg(long, value_name = "FILE")]
    pub(crate) ca_cert: Option<PathBuf>,
    /// Basic-auth user for an http(s):// input.
    #[arg(long = "http-username", env = "VM_IMPORT_HTTP_USERNAME", value_name = "USER")]
    pub(crate) username: Option<String>,
    /// File whose first line is the basic-auth password for an http(s):// input. The password may
    /// also come from the environment variable VM_IMPORT_HTTP_PASSWORD; there is no flag for the
    /// password itself, because a command line is visible to every user of the machine.
    #[arg(
        long = "http-password-file",
        env = "VM_IMPORT_HTTP_PASSWORD_FILE",
        value_name = "FILE"
    )]
    pub(crate) password_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct InspectArgs {
    /// What the input must be (see `convert --input-format`).
    #[arg(short = 'f', long = "input-format", value_enum, value_name = "FORMAT")]
    pub(crate) input_format: Option<DeclaredFormat>,
    #[command(flatten)]
    pub(crate) http: HttpArgs,
    /// Input: a file, `-` for stdin, or an http(s):// URL.
    pub(crate) input: String,
}

/// A byte count: digits, optionally followed by a binary suffix (Ki, Mi, Gi, Ti, Pi).
fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits_end = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, suffix) = text.split_at(digits_end);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a byte count such as 1073741824 or 1Gi"))?;
    let shift = match suffix {
        "" => 0,
        "Ki" => 10,
        "Mi" => 20,
        "Gi" => 30,
        "Ti" => 40,
        "Pi" => 50,
        _ => {
            return Err(format!(
                "{text:?}: unknown suffix {suffix:?} (use Ki, Mi, Gi, Ti or Pi)"
            ));
        }
    };
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::{Cli, parse_size};

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn sizes_parse_with_binary_suffixes_and_bad_ones_are_refused() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512Mi"), Ok(512 << 20));
        assert_eq!(parse_size("1Gi"), Ok(1 << 30));
        assert_eq!(parse_size("2Pi"), Ok(2 << 50));
        assert!(parse_size("1GB").unwrap_err().contains("suffix"));
        assert!(parse_size("Gi").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999Pi").unwrap_err().contains("too large"));
    }
}
