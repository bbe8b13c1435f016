//! `lab/up` is idempotent and `lab/down` leaves nothing behind. This test starts a lab of its own so
//! it never disturbs a shared one.

// Test helpers outside #[test] functions fail loudly on purpose.
#![allow(clippy::expect_used, clippy::panic)]

use std::{fs, path::Path};

use test_support::{Lab, run_lab_up};

/// Pids of every process whose command line mentions `needle` (daemons are started with paths
/// inside the lab's state directory, so this finds them and anything they spawned).
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let me = std::process::id();
    fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .map(|cmdline| String::from_utf8_lossy(&cmdline).contains(needle))
                .unwrap_or(false)
        })
        .collect()
}

fn daemon_pids(state: &Path) -> Vec<String> {
    ["etcd", "kube-apiserver", "vcsim"]
        .iter()
        .map(|name| fs::read_to_string(state.join("pids").join(format!("{name}.pid"))).expect("pid file"))
        .collect()
}

#[test]
fn up_twice_is_harmless_and_down_leaves_no_process() {
    let lab = Lab::start_private().expect("lab starts");
    let state = lab.state_dir().expect("state dir").to_owned();
    let needle = state.to_str().expect("utf-8 path").to_owned();
    let pids_before = daemon_pids(&state);
    assert!(
        processes_mentioning(&needle).len() >= 3,
        "etcd, kube-apiserver and vcsim run from the state dir"
    );

    let env_again = run_lab_up(&state, None).expect("second lab/up succeeds");
    assert_eq!(env_again, lab.env_file, "the second up reports the same lab");
    assert_eq!(
        daemon_pids(&state),
        pids_before,
        "the second up started nothing new"
    );

    drop(lab);
    let left = processes_mentioning(&needle);
    assert!(left.is_empty(), "processes left after lab/down: {left:?}");
    assert!(!state.exists(), "lab/down removes the state dir");
}
