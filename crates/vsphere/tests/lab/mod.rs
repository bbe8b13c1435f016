//! Shared helpers for the tests against the lab's vCenter simulator: a `vsphere::Config` for the
//! lab, the `/lab` control API (create VMs, read lease records, inject cuts), and real VMDKs made
//! by `qemu-img` from random raw images.

// Test helpers: a failed step must fail the test loudly, so unwrap/expect/panic are the point here.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use test_support::Lab;
use vsphere::{Client, Config, Password, TlsMode};

pub(crate) fn lab() -> &'static Lab {
    Lab::get()
}

pub(crate) fn ca_pem() -> Vec<u8> {
    let path = &lab().vsphere_ca_cert;
    std::fs::read(path).unwrap_or_else(|e| panic!("reading lab CA {}: {e}", path.display()))
}

pub(crate) fn config_with_password(password: &str) -> Config {
    let lab = lab();
    Config::new(
        lab.vsphere_url.clone(),
        lab.vsphere_username.clone(),
        Password::new(password),
    )
    .with_tls(TlsMode::CaBundle(ca_pem()))
}

pub(crate) fn config() -> Config {
    config_with_password(&lab().vsphere_password)
}

pub(crate) async fn client() -> Client {
    Client::connect(config())
        .await
        .expect("login to the lab simulator")
}

/// A name unique in this lab across test binaries and runs.
pub(crate) fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{}-{:x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        nanos
    )
}

pub(crate) struct Control {
    http: reqwest::Client,
    base: String,
}

impl Control {
    pub(crate) fn new() -> Self {
        Self::at(&lab().vcsim_control_url)
    }

    /// The control API of another simulator serving the lab's certificate and credentials.
    pub(crate) fn at(control_url: &str) -> Self {
        let tls = vsphere::tls::client_config(&TlsMode::CaBundle(ca_pem())).unwrap();
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .build()
            .unwrap();
        Self {
            http,
            base: control_url.trim_end_matches('/').to_owned(),
        }
    }

    fn url(&self, path: &str) -> String {
        // VCSIM_CONTROL_URL ends in /lab; paths here are given relative to it.
        format!("{}/{}", self.base, path.trim_start_matches('/'))
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Value {
        let lab = lab();
        let resp = req
            .basic_auth(&lab.vsphere_username, Some(&lab.vsphere_password))
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert!(status.is_success(), "control API answered {status}: {text}");
        if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        }
    }

    pub(crate) async fn create_vm(&self, spec: Value) -> Value {
        self.send(self.http.post(self.url("vms")).json_body(&spec)).await
    }

    /// `POST /lab/networks`: a standard, distributed or opaque network.
    pub(crate) async fn create_network(&self, spec: Value) -> Value {
        self.send(self.http.post(self.url("networks")).json_body(&spec))
            .await
    }

    pub(crate) async fn leases(&self) -> Vec<Value> {
        match self.send(self.http.get(self.url("leases"))).await {
            Value::Array(v) => v,
            other => panic!("leases is not an array: {other}"),
        }
    }

    /// Lease records of one VM (by name), oldest first.
    pub(crate) async fn leases_of(&self, vm: &str) -> Vec<Value> {
        self.leases()
            .await
            .into_iter()
            .filter(|l| l["vm"]["name"] == vm)
            .collect()
    }

    pub(crate) async fn add_fault(&self, cut_after_bytes: u64, times: u32, vm: &str) {
        self.send(self.http.post(self.url("faults")).json_body(&json!({
            "cutAfterBytes": cut_after_bytes, "times": times, "vm": vm
        })))
        .await;
    }

    /// Makes the next `times` downloads of `vm` end normally after `cut_after_bytes` bytes, as if
    /// the body were whole.
    #[allow(dead_code)]
    pub(crate) async fn add_clean_cut(&self, cut_after_bytes: u64, times: u32, vm: &str) {
        self.send(self.http.post(self.url("faults")).json_body(&json!({
            "cutAfterBytes": cut_after_bytes, "times": times, "vm": vm, "cleanEnd": true
        })))
        .await;
    }

    /// Paces `vm`'s disk downloads to `bytes_per_second`, or lifts the pace with `None`; applies to
    /// downloads in flight too.
    pub(crate) async fn throttle(&self, vm: &str, bytes_per_second: Option<u64>) {
        let url = self.url(&format!("throttles/{vm}"));
        match bytes_per_second {
            Some(rate) => {
                self.send(self.http.put(url).json_body(&json!({"bytesPerSecond": rate})))
                    .await
            }
            None => self.send(self.http.delete(url)).await,
        };
    }

    /// Renames an ESXi host of the simulator's inventory (e.g. to an address probes can reach).
    pub(crate) async fn rename_host(&self, host: &str, new_name: &str) {
        self.send(
            self.http
                .put(self.url(&format!("hosts/{host}")))
                .json_body(&json!({"name": new_name})),
        )
        .await;
    }
}

trait JsonBody {
    fn json_body(self, v: &Value) -> Self;
}

impl JsonBody for reqwest::RequestBuilder {
    fn json_body(self, v: &Value) -> Self {
        self.header("Content-Type", "application/json")
            .body(v.to_string())
    }
}

pub(crate) fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?} (is qemu-utils installed?): {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A streamOptimized VMDK of `size` bytes made by qemu-img from a raw image holding random data in
/// a few places (and holes elsewhere). Returns the VMDK path and the raw source path.
pub(crate) fn make_vmdk(dir: &Path, name: &str, size: u64, seed: u64) -> (PathBuf, PathBuf) {
    let raw = dir.join(format!("{name}.raw"));
    let vmdk = dir.join(format!("{name}.vmdk"));
    // Written 1 MiB at a time so a big test disk does not inflate the test's own peak RSS.
    let mib = 1usize << 20;
    let mut file = std::io::BufWriter::new(std::fs::File::create(&raw).unwrap());
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut chunk = vec![0u8; mib];
    let mut left = size;
    let mut i = 0usize;
    // Random 1 MiB runs with every third MiB left zero: both compressed grains and absent ones.
    while left > 0 {
        let n = usize::try_from(left.min(mib as u64)).unwrap();
        for b in chunk[..n].iter_mut() {
            if i % 3 == 1 {
                *b = 0;
            } else {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *b = state as u8;
            }
        }
        std::io::Write::write_all(&mut file, &chunk[..n]).unwrap();
        left -= n as u64;
        i += 1;
    }
    std::io::Write::flush(&mut file).unwrap();
    drop(file);
    run(Command::new("qemu-img")
        .args([
            "convert",
            "-q",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "-o",
            "subformat=streamOptimized",
        ])
        .arg(&raw)
        .arg(&vmdk));
    (vmdk, raw)
}

pub(crate) fn sha256_file(path: &Path) -> String {
    let mut hasher = Sha256::new();
    std::io::copy(&mut std::fs::File::open(path).unwrap(), &mut hasher).unwrap();
    hex::encode(hasher.finalize())
}

/// SHA-512 of a file: what a served raw image's `spec.checksum` must be when the file is the
/// source disk's content.
#[allow(dead_code)] // Used by the controller's tests, which share this module.
pub(crate) fn sha512_file(path: &Path) -> String {
    let mut hasher = sha2::Sha512::new();
    std::io::copy(&mut std::fs::File::open(path).unwrap(), &mut hasher).unwrap();
    hex::encode(hasher.finalize())
}
