//! The Rust half of `scripts/bench-import`: the baseline the controller is measured against.
//!
//! `lab-bench serve VM` takes an `ExportVm` lease on the lab's simulated vCenter (`VSPHERE_*` from
//! the lab's env file) and downloads every disk of VM at once, counting bytes and keeping none,
//! which is the fastest the simulator can hand the bytes over on this machine. It prints one JSON
//! line: `{"bytes": N, "seconds": S}`.

// A benchmark driver: it reports on stdout by design.
#![allow(clippy::print_stdout)]

use std::{collections::BTreeMap, error::Error, time::Instant};

use bytes::Bytes;
use diskconv::stream::{SinkError, StreamMeta, StreamSink};
use vsphere::{Client, Config, Password, TlsMode, export::ExportOptions};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

const USAGE: &str = "usage: lab-bench serve VM";

/// Counts what arrives and drops it.
#[derive(Default)]
struct Discard {
    bytes: u64,
}

impl StreamSink for Discard {
    async fn begin(&mut self, _meta: &StreamMeta) -> std::result::Result<(), SinkError> {
        self.bytes = 0;
        Ok(())
    }

    async fn write(&mut self, chunk: Bytes) -> std::result::Result<(), SinkError> {
        self.bytes += chunk.len() as u64;
        Ok(())
    }

    async fn finish(&mut self) -> std::result::Result<(), SinkError> {
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["serve", vm] => serve(vm).await,
        _ => Err(USAGE.into()),
    }
}

fn env(key: &str) -> Result<String> {
    std::env::var(key).map_err(|_| format!("{key} is not set: source the lab's env file").into())
}

async fn serve(vm_name: &str) -> Result<()> {
    let ca = std::fs::read(env("VSPHERE_CA_CERT")?)?;
    let config = Config::new(
        env("VSPHERE_URL")?,
        env("VSPHERE_USERNAME")?,
        Password::new(env("VSPHERE_PASSWORD")?),
    )
    .with_tls(TlsMode::CaBundle(ca));
    let client = Client::connect(config).await?;
    let vm = client.inspect(&env("VSPHERE_DC")?, None, vm_name).await?;
    let sinks: BTreeMap<i32, Discard> = vm.disks.iter().map(|d| (d.key, Discard::default())).collect();
    let started = Instant::now();
    let exported = client.export_vm(&vm, sinks, &ExportOptions::default()).await?;
    let seconds = started.elapsed().as_secs_f64();
    client.logout().await?;
    let bytes: u64 = exported.sinks.values().map(|s| s.bytes).sum();
    println!("{}", serde_json::json!({"bytes": bytes, "seconds": seconds}));
    Ok(())
}
