//! `vm-import openstack …` as a user runs it: real binary, the lab's Keystone and Glance and the
//! Nova/Cinder/Neutron fakes, credentials from `OS_*` variables or a clouds.yaml entry.

// Test helpers outside #[test] functions fail loudly on purpose.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::process::{Command, Output};

use serde_json::{Value, json};
use test_support::{Lab, openstack::OpenstackLab};

fn lab() -> OpenstackLab {
    OpenstackLab::of(Lab::get()).expect("the lab has its OpenStack part")
}

/// Creates a server through the fakes' control API.
fn create_server(os: &OpenstackLab, spec: Value) -> Value {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let pem = std::fs::read(&os.ca_cert).unwrap();
        let tls = openstack::tls::client_config(&openstack::TlsMode::CaBundle(pem)).unwrap();
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .build()
            .unwrap();
        let response = http
            .post(format!("{}/servers", os.control_url))
            .basic_auth("admin", Some(&os.admin_password))
            .json(&spec)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        response.json().await.unwrap()
    })
}

/// Runs `vm-import openstack ARGS` with the lab's `OS_*` variables (password given separately).
fn run(os: &OpenstackLab, password: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vm-import"))
        .arg("openstack")
        .args(args)
        .env_remove("OS_CLOUD")
        .env("OS_AUTH_URL", &os.auth_url)
        .env("OS_USERNAME", &os.username)
        .env("OS_PASSWORD", password)
        .env("OS_PROJECT_NAME", &os.project)
        .env("OS_USER_DOMAIN_NAME", &os.user_domain)
        .env("OS_PROJECT_DOMAIN_NAME", &os.project_domain)
        .env("OS_REGION_NAME", &os.region)
        .env("OS_CACERT", &os.ca_cert)
        .output()
        .expect("run vm-import")
}

#[test]
fn inspect_and_export_a_server_from_os_variables() {
    let os = lab();
    let dir = tempfile::tempdir().unwrap();
    let disk = test_support::disk::seeded_raw_disk(dir.path(), "root.raw", 2, 3).unwrap();
    let name = format!("cli-export-{}", std::process::id());
    create_server(
        &os,
        json!({"name": name, "status": "ACTIVE", "volumes": [{"path": disk}]}),
    );

    let out = run(&os, &os.password, &["inspect", "--server", &name]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let server: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(server["name"], name.as_str());
    assert_eq!(server["disks"][0]["source"]["kind"], "volume");

    let target = dir.path().join("out");
    let target_str = target.to_str().unwrap();
    let out = run(
        &os,
        &os.password,
        &["export", "--server", &name, "--out", target_str],
    );
    assert_eq!(out.status.code(), Some(1), "a running server is refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--stop"));

    let out = run(
        &os,
        &os.password,
        &[
            "export",
            "--server",
            &name,
            "--out",
            target_str,
            "--stop",
            "--poll-seconds",
            "1",
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let compare = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(target.join("disk-0.img"))
        .arg(&disk)
        .output()
        .unwrap();
    assert!(
        compare.status.success(),
        "{}",
        String::from_utf8_lossy(&compare.stdout)
    );
    let report: Value = serde_json::from_slice(&std::fs::read(target.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["export"]["disks"][0]["verifiedWith"], "sha512");
    assert_eq!(report["tlsInsecure"], false);
    assert!(target.join("server.json").is_file());
}

#[test]
fn a_clouds_yaml_entry_works_and_a_wrong_password_is_not_echoed() {
    let os = lab();
    let dir = tempfile::tempdir().unwrap();
    let clouds = dir.path().join("clouds.yaml");
    // The password stays out of the file, as recommended: it comes from OS_PASSWORD.
    std::fs::write(
        &clouds,
        format!(
            "clouds:\n  lab:\n    auth:\n      auth_url: {}\n      username: {}\n      project_name: {}\n      \
             user_domain_name: {}\n      project_domain_name: {}\n    region_name: {}\n    cacert: {}\n",
            os.auth_url,
            os.username,
            os.project,
            os.user_domain,
            os.project_domain,
            os.region,
            os.ca_cert.display()
        ),
    )
    .unwrap();
    let name = format!("cli-clouds-{}", std::process::id());
    let disk = test_support::disk::seeded_raw_disk(dir.path(), "d.raw", 2, 5).unwrap();
    create_server(&os, json!({"name": name, "volumes": [{"path": disk}]}));
    let clouds_str = clouds.to_str().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vm-import"))
        .args([
            "openstack",
            "inspect",
            "--server",
            &name,
            "--cloud",
            "lab",
            "--clouds-yaml",
            clouds_str,
        ])
        .env_clear()
        .env("OS_PASSWORD", &os.password)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let wrong = "Wr0ng-Passw0rd-Sentinel";
    let out = run(&os, wrong, &["inspect", "--server", &name]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("rejected the credentials"), "{stderr}");
    assert!(!stderr.contains(wrong) && !String::from_utf8_lossy(&out.stdout).contains(wrong));

    // A pin replaces the CA (OS_CACERT stays set): the served certificate passes, another fails.
    let served = Lab::get().certificate_sha256("openstack");
    let out = run(
        &os,
        &os.password,
        &["inspect", "--server", &name, "--fingerprint", &served],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let other = Lab::get().certificate_sha256("vcsim");
    let out = run(
        &os,
        &os.password,
        &["inspect", "--server", &name, "--fingerprint", &other],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("does not match the pinned fingerprint") && stderr.contains(&served),
        "{stderr}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_vm-import"))
        .args(["openstack", "inspect", "--server", &name])
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("OS_AUTH_URL"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
