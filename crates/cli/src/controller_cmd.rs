//! `vm-import controller`: flags and environment into [`controller::Settings`], logging set up the
//! way upstream's users expect (`DEBUG=true` turns on debug logs), then the controller runs until
//! SIGTERM.

use std::time::Duration;

use anyhow::Context as _;

use crate::cli::{ControllerArgs, LogFormat};

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    // Upstream's switch; RUST_LOG, when set, is more specific and wins.
    let debug = matches!(std::env::var("DEBUG").as_deref(), Ok("true" | "TRUE"));
    let default = if debug {
        "debug,hyper=info,rustls=info,tower=info"
    } else {
        "info"
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn settings(args: ControllerArgs) -> controller::Settings {
    let identity = args
        .identity
        .filter(|i| !i.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("vm-import-{}", std::process::id()));
    let mut settings = controller::Settings::new(identity);
    settings.image_dir = args.image_dir;
    settings.listen = args.listen;
    settings.metrics_listen = args.metrics_listen;
    settings.service_address = args.service_address.filter(|s| !s.is_empty());
    settings.max_concurrent_imports = usize::from(args.max_concurrent_imports);
    settings.max_imports_per_host = usize::from(args.max_imports_per_host);
    settings.leader_election_namespace = if args.no_leader_election {
        None
    } else {
        args.leader_election_namespace.filter(|n| !n.is_empty())
    };
    settings.source_recheck = Duration::from_secs(args.source_recheck_seconds.max(10));
    settings.progress_interval = Duration::from_secs(args.progress_seconds);
    settings.install_crds = !args.no_install_crds;
    settings.namespace = args.namespace.filter(|n| !n.is_empty());
    settings.esxi_probe_ports = args.esxi_probe_ports;
    settings.image_dir_reserve = args.image_dir_reserve;
    settings.served_format = args.served_format.into();
    settings.import_bytes_per_second = Some(args.import_bytes_per_second).filter(|&b| b > 0);
    settings.source_bytes_per_second = Some(args.source_bytes_per_second).filter(|&b| b > 0);
    if let Some(threads) = args.conversion_threads {
        settings.conversion_threads = usize::from(threads);
    }
    settings
}

pub(crate) fn run(args: ControllerArgs) -> anyhow::Result<()> {
    init_logging(args.log_format);
    let settings = settings(args);
    if settings.leader_election_namespace.is_none() {
        tracing::warn!("leader election is off: run exactly one replica");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(controller::run(settings));
    // Conversions run on blocking threads; a stopping controller does not wait for them (a
    // disk cut short is exported again by the next leader).
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result?;
    Ok(())
}
