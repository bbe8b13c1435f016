//! What the controller is told at start: where images live, where it listens, how much runs at once.
//! The binary fills [`Settings`] from its flags and environment (names kept from upstream where
//! upstream had them: `SVC_ADDRESS`, port 8080, `/tmp/vm-import-controller`).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

/// Upstream's image directory (served on port 8080, on the chart's `/tmp` volume).
pub const DEFAULT_IMAGE_DIR: &str = "/tmp/vm-import-controller";

/// Default [`Settings::image_dir_reserve`]: 1 GiB.
pub const DEFAULT_IMAGE_DIR_RESERVE: u64 = 1 << 30;
/// Name of the coordination Lease the replicas compete for.
pub const LEADER_LEASE_NAME: &str = "vm-import-controller";

/// Controller settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Images are written and served from here.
    pub image_dir: PathBuf,
    /// Image server address (upstream: `:8080`).
    pub listen: SocketAddr,
    /// Metrics and health address.
    pub metrics_listen: SocketAddr,
    /// Host (and optional port) put in image URLs; `None`: upstream's service DNS name.
    pub service_address: Option<String>,
    /// Imports exporting at once, over all sources.
    pub max_concurrent_imports: usize,
    /// Imports exporting at once from one ESXi host.
    pub max_imports_per_host: usize,
    /// Namespace of the leader-election Lease; `None` disables leader election.
    pub leader_election_namespace: Option<String>,
    /// Identity in the Lease and in Events (the pod name).
    pub identity: String,
    /// How often a `clusterReady` source is checked again.
    pub source_recheck: Duration,
    /// Progress is written to `status.diskImportStatus` at least this often while bytes flow.
    pub progress_interval: Duration,
    /// Apply the CRDs at start, as upstream does.
    pub install_crds: bool,
    /// Watch only this namespace (default: all, as upstream).
    pub namespace: Option<String>,
    /// ESXi ports preflight probes on the host serving a VM's disks (default 443 and 902; empty: none).
    pub esxi_probe_ports: Vec<u16>,
    /// Bytes of the image directory's file system preflight keeps free: an import that would eat
    /// into them is `ScratchSpaceLow` (default 1 GiB, for logs and other imports' last bytes).
    pub image_dir_reserve: u64,
    /// The format images are served in: qcow2 (default: what crosses the cluster network and what
    /// Harvester hashes is in proportion to the data) or raw (upstream's, the whole virtual size).
    pub served_format: diskconv::ImageFormat,
    /// Bytes per second one import reads from its source when its `spec.maxBytesPerSecond` sets
    /// no cap (`None`: no cap).
    pub import_bytes_per_second: Option<u64>,
    /// Bytes per second all imports from one source read together when the source's
    /// `spec.maxBytesPerSecond` sets no cap (`None`: no cap).
    pub source_bytes_per_second: Option<u64>,
    /// Decoder (inflate) threads per disk at most (default: the CPUs).
    pub conversion_threads: usize,
}

impl Settings {
    /// Defaults for everything but the identity.
    pub fn new(identity: impl Into<String>) -> Self {
        Self {
            image_dir: PathBuf::from(DEFAULT_IMAGE_DIR),
            listen: SocketAddr::from(([0, 0, 0, 0], plan::image::IMAGE_SERVER_PORT)),
            metrics_listen: SocketAddr::from(([0, 0, 0, 0], 9090)),
            service_address: None,
            max_concurrent_imports: 4,
            max_imports_per_host: 2,
            leader_election_namespace: None,
            identity: identity.into(),
            source_recheck: Duration::from_secs(300),
            progress_interval: Duration::from_secs(5),
            install_crds: true,
            namespace: None,
            esxi_probe_ports: crate::preflight::ESXI_PORTS.to_vec(),
            image_dir_reserve: DEFAULT_IMAGE_DIR_RESERVE,
            served_format: diskconv::ImageFormat::Qcow2,
            import_bytes_per_second: None,
            source_bytes_per_second: None,
            conversion_threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
        }
    }
}
