//! Test support: the local lab (etcd + kube-apiserver with the real CRDs, the vCenter simulator, and
//! OpenStack: Keystone, Glance and the fakes) for integration tests.
//!
//! [`Lab::get`] gives every test in a test binary the same lab:
//! - when `VM_IMPORT_LAB_ENV` names a `lab.env` written by `lab/up`, the tests attach to that lab and
//!   leave it running (this is how `scripts/test` shares one lab across all test binaries);
//! - otherwise a private lab is started in a temporary state directory, owned by this process: the
//!   lab's watchdog takes it down when the test binary exits, however it exits.
//!
//! [`Lab::start_private`] starts a lab that is taken down when the returned value is dropped; tests of
//! the lab scripts themselves use it.
//!
//! [`openstack::OpenstackLab`] reads the lab's OpenStack part (Keystone, Glance, the fakes).
//!
//! [`boot`] builds a disk that boots on a PC BIOS and prints a marker, and boots disk images in
//! `qemu-system-x86_64` to check a migrated disk still boots.

pub mod boot;
pub mod disk;
pub mod openstack;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

/// Environment variable naming the `lab.env` of a running lab to attach to.
pub const LAB_ENV_VAR: &str = "VM_IMPORT_LAB_ENV";

/// What can go wrong while starting or attaching to the lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// `lab/up` could not be run at all.
    #[error("failed to run {script}")]
    RunScript {
        script: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `lab/up` ran and failed; its stderr says why.
    #[error("{script} failed with {status}:\n{stderr}")]
    ScriptFailed {
        script: PathBuf,
        status: std::process::ExitStatus,
        stderr: String,
    },
    /// The env file could not be read.
    #[error("failed to read lab env file {path}")]
    ReadEnvFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The env file lacks a variable the tests need.
    #[error("lab env file {path} does not set {key}")]
    MissingEnvKey { path: PathBuf, key: &'static str },
    /// The temporary state directory could not be created.
    #[error("failed to create a state directory under {parent}")]
    CreateStateDir {
        parent: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The kubeconfig the lab wrote could not be turned into a client.
    #[error("failed to build a Kubernetes client from {kubeconfig}")]
    KubeClient {
        kubeconfig: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A running lab: where to reach each peer and with which credentials.
#[derive(Debug)]
pub struct Lab {
    /// The `lab.env` file describing this lab (sourceable by a shell).
    pub env_file: PathBuf,
    /// Kubeconfig for the lab's kube-apiserver (token auth, lab CA).
    pub kubeconfig: PathBuf,
    /// The vCenter simulator's SOAP endpoint, `https://127.0.0.1:PORT/sdk`.
    pub vsphere_url: String,
    /// The one username the simulator accepts.
    pub vsphere_username: String,
    /// The one password the simulator accepts.
    pub vsphere_password: String,
    /// The simulator's datacenter.
    pub vsphere_dc: String,
    /// PEM of the lab CA, which signed the apiserver's and the simulator's certificates.
    pub vsphere_ca_cert: PathBuf,
    /// Base URL of the simulator's control API (`/vms`, `/leases`, `/faults`), basic auth with the lab credentials.
    pub vcsim_control_url: String,
    /// Directory backing the simulator's datastore `LocalDS_0`.
    pub vcsim_datastore_root: PathBuf,
    /// Set when this value owns the lab and must take it down on drop.
    owned_state: Option<PathBuf>,
}

impl Lab {
    /// The lab shared by every test in this process; see the crate docs for attach vs. private.
    ///
    /// # Panics
    /// When the lab cannot be started or attached to: an integration test cannot run without it, and
    /// the panic message carries `lab/up`'s own error.
    #[allow(clippy::panic)]
    pub fn get() -> &'static Lab {
        static LAB: OnceLock<Lab> = OnceLock::new();
        LAB.get_or_init(|| {
            let lab = match std::env::var_os(LAB_ENV_VAR) {
                Some(env_file) => Lab::attach(Path::new(&env_file)),
                None => Lab::start_owned_by_process(),
            };
            lab.unwrap_or_else(|err| panic!("the lab is needed for this test: {}", Report(&err)))
        })
    }

    /// The SHA-256 fingerprint of the lab's serving certificate `name` (`vcsim`, `openstack`), as a
    /// Secret's `certificateFingerprint` takes it.
    ///
    /// # Panics
    /// When the certificate is not in the lab's PKI directory (beside its CA).
    #[allow(clippy::panic)]
    pub fn certificate_sha256(&self, name: &str) -> String {
        let path = self.vsphere_ca_cert.with_file_name(format!("{name}.crt"));
        let pem = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("reading the lab certificate {}: {e}", path.display()));
        tls::fingerprint_sha256_of_pem(&pem)
            .unwrap_or_else(|e| panic!("the lab certificate {}: {e}", path.display()))
    }

    /// Attaches to the running lab described by `env_file`; dropping the value leaves the lab running.
    pub fn attach(env_file: &Path) -> Result<Lab, LabError> {
        let text = std::fs::read_to_string(env_file).map_err(|source| LabError::ReadEnvFile {
            path: env_file.to_owned(),
            source,
        })?;
        let vars = parse_env_file(&text);
        let get = |key: &'static str| {
            vars.get(key).cloned().ok_or_else(|| LabError::MissingEnvKey {
                path: env_file.to_owned(),
                key,
            })
        };
        Ok(Lab {
            env_file: env_file.to_owned(),
            kubeconfig: get("KUBECONFIG")?.into(),
            vsphere_url: get("VSPHERE_URL")?,
            vsphere_username: get("VSPHERE_USERNAME")?,
            vsphere_password: get("VSPHERE_PASSWORD")?,
            vsphere_dc: get("VSPHERE_DC")?,
            vsphere_ca_cert: get("VSPHERE_CA_CERT")?.into(),
            vcsim_control_url: get("VCSIM_CONTROL_URL")?,
            vcsim_datastore_root: get("VCSIM_DATASTORE_ROOT")?.into(),
            owned_state: None,
        })
    }

    /// Starts a lab of its own in a fresh state directory; it is taken down when the value is dropped.
    pub fn start_private() -> Result<Lab, LabError> {
        let state = new_state_dir()?;
        let env_file = run_lab_up(&state, None)?;
        let mut lab = Lab::attach(&env_file)?;
        lab.owned_state = Some(state);
        Ok(lab)
    }

    /// Starts a private lab whose watchdog stops it when this process exits (statics are never
    /// dropped, so `Drop` cannot be relied on for the shared lab).
    fn start_owned_by_process() -> Result<Lab, LabError> {
        let state = new_state_dir()?;
        let env_file = run_lab_up(&state, Some(std::process::id()))?;
        Lab::attach(&env_file)
    }

    /// The state directory of this lab (pids, logs, certificates).
    pub fn state_dir(&self) -> Option<&Path> {
        self.env_file.parent()
    }

    /// A Kubernetes client for the lab's apiserver.
    pub async fn kube_client(&self) -> Result<kube::Client, LabError> {
        let to_err = |source: Box<dyn std::error::Error + Send + Sync>| LabError::KubeClient {
            kubeconfig: self.kubeconfig.clone(),
            source,
        };
        let kubeconfig =
            kube::config::Kubeconfig::read_from(&self.kubeconfig).map_err(|e| to_err(e.into()))?;
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| to_err(e.into()))?;
        kube::Client::try_from(config).map_err(|e| to_err(e.into()))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(state) = &self.owned_state {
            // Best effort: a failure here leaves processes the watchdog-less lab cannot reap, so say so.
            let status = Command::new(lab_script("down"))
                .env("VM_IMPORT_LAB_STATE", state)
                .status();
            if !matches!(status, Ok(s) if s.success()) {
                eprintln!("lab/down failed for {}: {status:?}", state.display());
            }
        }
    }
}

/// The repository's `lab/<name>` script.
pub fn lab_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../lab").join(name)
}

fn new_state_dir() -> Result<PathBuf, LabError> {
    let parent = std::env::temp_dir();
    let dir = parent.join(format!(
        "vm-import-lab-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    ));
    std::fs::create_dir_all(&dir).map_err(|source| LabError::CreateStateDir { parent, source })?;
    Ok(dir)
}

/// Runs `lab/up` for `state` and returns the env file path it prints.
pub fn run_lab_up(state: &Path, owner_pid: Option<u32>) -> Result<PathBuf, LabError> {
    let script = lab_script("up");
    let mut cmd = Command::new(&script);
    cmd.env("VM_IMPORT_LAB_STATE", state);
    if let Some(pid) = owner_pid {
        cmd.arg("--owner-pid").arg(pid.to_string());
    }
    let output = cmd.output().map_err(|source| LabError::RunScript {
        script: script.clone(),
        source,
    })?;
    if !output.status.success() {
        return Err(LabError::ScriptFailed {
            script,
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    Ok(PathBuf::from(stdout.lines().last().unwrap_or_default().trim()))
}

/// Reads `export KEY='value'` lines, as `lab/up` writes them.
fn parse_env_file(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("export "))
        .filter_map(|assignment| assignment.split_once('='))
        .map(|(key, value)| (key.to_owned(), value.trim_matches('\'').to_owned()))
        .collect()
}

/// Formats an error with its whole source chain on one line.
struct Report<'a>(&'a dyn std::error::Error);

impl std::fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(err) = source {
            write!(f, ": {err}")?;
            source = err.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::parse_env_file;

    #[test]
    fn env_file_values_are_unquoted() {
        let vars = parse_env_file("# comment\nexport A='x y'\nexport B='https://h:1/sdk'\nC=ignored\n");
        assert_eq!(vars["A"], "x y");
        assert_eq!(vars["B"], "https://h:1/sdk");
        assert!(!vars.contains_key("C"));
    }
}
