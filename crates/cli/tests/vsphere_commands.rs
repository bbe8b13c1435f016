//! `vm-import vsphere …` and `vm-import crds` as a user runs them: real binary, real lab simulator.

// Test helpers outside #[test] functions fail loudly on purpose.
#![allow(clippy::expect_used, clippy::panic)]

use std::process::{Command, Output};

use test_support::Lab;

/// Runs `vm-import vsphere inspect` for `vm` against the lab, with `password` in the environment.
fn inspect(lab: &Lab, password: &str, vm: &str) -> Output {
    let ca_cert = lab.vsphere_ca_cert.to_str().expect("utf-8 path");
    Command::new(env!("CARGO_BIN_EXE_vm-import"))
        .args([
            "vsphere",
            "inspect",
            "--endpoint",
            &lab.vsphere_url,
            "--dc",
            &lab.vsphere_dc,
        ])
        .args(["--vm", vm, "--ca-cert", ca_cert])
        .env("VSPHERE_USERNAME", &lab.vsphere_username)
        .env("VSPHERE_PASSWORD", password)
        .output()
        .expect("run vm-import")
}

#[test]
fn inspect_describes_a_vm_over_verified_tls() {
    let lab = Lab::get();
    let out = inspect(lab, &lab.vsphere_password, "DC0_H0_VM0");
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let vm: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(vm["name"], "DC0_H0_VM0");
    assert!(vm["disks"].as_array().is_some_and(|d| !d.is_empty()), "{vm}");
}

#[test]
fn wrong_password_fails_without_revealing_it() {
    let lab = Lab::get();
    let wrong = "Wr0ng-Passw0rd-Sentinel";
    let out = inspect(lab, wrong, "DC0_H0_VM0");
    assert_eq!(
        out.status.code(),
        Some(1),
        "a failed login is a failure, not a usage error"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stderr.contains("InvalidLogin") || stderr.to_lowercase().contains("login"),
        "{stderr}"
    );
    assert!(
        !stderr.contains(wrong) && !stdout.contains(wrong),
        "password leaked: {stderr}"
    );
}

#[test]
fn unknown_vm_is_named_in_the_error() {
    let lab = Lab::get();
    let out = inspect(lab, &lab.vsphere_password, "no-such-vm-42");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-vm-42"));
}

#[test]
fn crds_command_prints_the_checked_in_crds() {
    let out = Command::new(env!("CARGO_BIN_EXE_vm-import"))
        .arg("crds")
        .output()
        .expect("run vm-import crds");
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).expect("utf-8");
    for kind in [
        "VmwareSource",
        "OpenstackSource",
        "OvaSource",
        "VirtualMachineImport",
    ] {
        assert!(printed.contains(&format!("kind: {kind}")), "{kind} missing");
    }
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/crds");
    for entry in std::fs::read_dir(deploy).expect("deploy/crds") {
        let text = std::fs::read_to_string(entry.expect("entry").path()).expect("read crd");
        let name_line = text
            .lines()
            .find(|l| l.trim_start().starts_with("name: ") && l.contains(".migration.harvesterhci.io"))
            .expect("CRD name line");
        assert!(printed.contains(name_line.trim()), "{name_line} not printed");
    }
}

#[test]
fn govc_environment_variables_are_fallbacks_and_the_password_in_govc_url_stays_secret() {
    let lab = Lab::get();
    let mut url = url::Url::parse(&lab.vsphere_url).expect("lab URL");
    url.set_username(&lab.vsphere_username).expect("user in URL");
    url.set_password(Some(&lab.vsphere_password))
        .expect("password in URL");
    // govc users often leave out /sdk.
    url.set_path("");
    let out = Command::new(env!("CARGO_BIN_EXE_vm-import"))
        .args(["vsphere", "inspect", "--vm", "DC0_H0_VM0"])
        .env_remove("VSPHERE_URL")
        .env_remove("VSPHERE_DC")
        .env_remove("VSPHERE_USERNAME")
        .env_remove("VSPHERE_PASSWORD")
        .env("GOVC_URL", url.as_str())
        .env("GOVC_DATACENTER", &lab.vsphere_dc)
        .env("GOVC_INSECURE", "1")
        .output()
        .expect("run vm-import");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stderr: {stderr}");
    assert!(
        stderr.contains("TLS verification is off"),
        "GOVC_INSECURE is said: {stderr}"
    );
    assert!(
        !stderr.contains(url.as_str()) && !stderr.contains(&format!(":{}@", lab.vsphere_password)),
        "the URL with its password is never printed: {stderr}"
    );
    let vm: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(vm["name"], "DC0_H0_VM0");

    // Without any of them, the error says what to set.
    let out = Command::new(env!("CARGO_BIN_EXE_vm-import"))
        .args(["vsphere", "inspect", "--vm", "DC0_H0_VM0"])
        .env_remove("VSPHERE_URL")
        .env_remove("GOVC_URL")
        .output()
        .expect("run vm-import");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("GOVC_URL") && stderr.contains("--endpoint"),
        "{stderr}"
    );
}

#[test]
fn an_endpoint_without_a_scheme_says_what_to_write() {
    let out = Command::new(env!("CARGO_BIN_EXE_vm-import"))
        .args([
            "vsphere",
            "inspect",
            "--endpoint",
            "vcenter.example",
            "--dc",
            "DC0",
            "--vm",
            "x",
        ])
        .env("VSPHERE_USERNAME", "u")
        .env("VSPHERE_PASSWORD", "p")
        .output()
        .expect("run vm-import");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("write https://vcenter.example/sdk"), "{stderr}");
}
