//! Export straight from a standalone ESXi: a second simulator in ESX mode (`vcsim-lab -esx`,
//! datacenter `ha-datacenter`, `apiType` `HostAgent`) whose leases give device URLs with `*` as the
//! host, as a real ESXi does. The client must put the host it connected to in their place and still
//! deliver byte-identical images.

mod lab;

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use vsphere::{
    Client, Config, Password, TlsMode,
    convert::ImageFormat,
    export::{ExportOptions, NfcTls},
    proto::vm::NicNetwork,
};

use lab::{Control, ca_pem, lab, make_vmdk, sha256_file, unique};

/// A `vcsim-lab -esx -nfc-star-host` of this test's own, serving the lab's certificate (so the lab CA
/// verifies it) and accepting the lab's credentials; stopped on drop.
struct EsxSimulator {
    child: Child,
    /// The simulator's TMPDIR (its datastore) and ready file.
    _dir: tempfile::TempDir,
    url: String,
    control: String,
    datacenter: String,
}

impl EsxSimulator {
    // A fixture: failing loudly when the peer cannot start is the point.
    #[allow(clippy::expect_used, clippy::panic)]
    fn start() -> Self {
        let lab = lab();
        // The shared lab may have been started from older sources: make sure this checkout's simulator
        // is built (a cached build returns at once).
        lab::run(Command::new(test_support::lab_script("build")).arg("vcsim"));
        let which = Command::new("bash")
            .args(["-c", r#". "$1" && lab_bin vcsim-lab"#, "bash"])
            .arg(test_support::lab_script("lib.sh"))
            .output()
            .expect("bash");
        assert!(
            which.status.success(),
            "lab_bin: {}",
            String::from_utf8_lossy(&which.stderr)
        );
        let binary = PathBuf::from(String::from_utf8_lossy(&which.stdout).trim());
        let pki = lab
            .state_dir()
            .expect("the lab has a state directory")
            .join("pki");

        let dir = tempfile::tempdir().expect("temp dir");
        let ready = dir.path().join("ready.json");
        let log = std::fs::File::create(dir.path().join("vcsim-esx.log")).expect("log file");
        let child = Command::new(&binary)
            .args(["-esx", "-nfc-star-host", "-listen", "127.0.0.1:0"])
            .arg("-tlscert")
            .arg(pki.join("vcsim.crt"))
            .arg("-tlskey")
            .arg(pki.join("vcsim.key"))
            .args([
                "-username",
                &lab.vsphere_username,
                "-password",
                &lab.vsphere_password,
            ])
            .arg("-ready-file")
            .arg(&ready)
            .env("TMPDIR", dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
        let mut sim = EsxSimulator {
            child,
            _dir: dir,
            url: String::new(),
            control: String::new(),
            datacenter: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        let info: Value = loop {
            if let Ok(text) = std::fs::read_to_string(&ready) {
                break serde_json::from_str(&text).expect("ready file is JSON");
            }
            if let Ok(Some(status)) = sim.child.try_wait() {
                panic!("vcsim-lab -esx exited with {status} before it was ready");
            }
            assert!(Instant::now() < deadline, "vcsim-lab -esx not ready within 60 s");
            std::thread::sleep(Duration::from_millis(50));
        };
        let field = |k: &str| info[k].as_str().expect("ready file field").to_owned();
        (sim.url, sim.control, sim.datacenter) = (field("url"), field("control"), field("datacenter"));
        sim
    }
}

impl Drop for EsxSimulator {
    fn drop(&mut self) {
        // SIGTERM lets it remove its datastore; SIGKILL only if it does not stop in time.
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn export_from_a_standalone_esxi_with_star_hosts_is_byte_identical() {
    let esx = EsxSimulator::start();
    assert_eq!(esx.datacenter, "ha-datacenter");
    let control = Control::at(&esx.control);
    let dir = tempfile::tempdir().unwrap();
    let sizes = [12u64 << 20, 5 << 20];
    let disks: Vec<_> = sizes
        .iter()
        .enumerate()
        .map(|(i, s)| make_vmdk(dir.path(), &format!("esx{i}"), *s, i as u64 + 41))
        .collect();
    let name = unique("esx");
    control
        .create_vm(json!({"name": name, "cpus": 2, "memoryMB": 2048,
            "disks": [{"bus": "pvscsi", "path": disks[0].0}, {"bus": "sata", "path": disks[1].0}],
            "nics": [{"type": "vmxnet3", "network": "VM Network", "mac": "00:50:56:aa:cc:01"}]}))
        .await;

    let lab = lab();
    let config = Config::new(
        esx.url.clone(),
        lab.vsphere_username.clone(),
        Password::new(&lab.vsphere_password),
    )
    .with_tls(TlsMode::CaBundle(ca_pem()));
    let c = Client::connect(config).await.unwrap();
    assert_eq!(c.service().api_type, "HostAgent");

    let vm = c.inspect("ha-datacenter", None, &name).await.unwrap();
    assert_eq!(vm.name, name);
    assert_eq!((vm.num_cpu, vm.memory_mb), (2, 2048));
    let capacities: Vec<_> = vm.disks.iter().map(|d| d.capacity_bytes).collect();
    assert_eq!(capacities, sizes);
    assert_eq!(vm.nics.len(), 1);
    assert!(
        matches!(&vm.nics[0].network, NicNetwork::Standard { name, .. } if name == "VM Network"),
        "{:?}",
        vm.nics[0]
    );

    let out = dir.path().join("out");
    let result = c
        .export_to_dir(&vm, &out, (ImageFormat::Raw, None), &ExportOptions::default())
        .await
        .unwrap();
    for (image, (_, raw)) in result.images.iter().zip(&disks) {
        assert_eq!(
            sha256_file(&image.path),
            sha256_file(raw),
            "{} differs from its source",
            image.path.display()
        );
    }
    // `*` became the SDK's own host and port, so the session's TLS policy checked the disk URLs.
    for disk in &result.export.disks {
        assert_eq!(disk.tls, NfcTls::Session, "{disk:?}");
        assert_eq!(disk.attempts, 1, "{disk:?}");
    }

    // The ESXi served both disks, once each, and the lease was completed.
    let records = control.leases_of(&name).await;
    assert_eq!(records.len(), 1, "{records:?}");
    let record = &records[0];
    assert_eq!(record["completed"], true, "{record:?}");
    assert_eq!(record["aborted"], false, "{record:?}");
    let served: Vec<u64> = record["bytesServed"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(served.len(), 2, "{record:?}");
    assert!(served.iter().all(|&b| b > 0), "{record:?}");
    c.logout().await.unwrap();
}
