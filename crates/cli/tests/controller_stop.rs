//! `vm-import controller` stops on SIGTERM within its grace period whatever it is doing, also
//! while the API server cannot be reached (leader election and CRD installation then retry
//! forever). Kubernetes kills a pod that overstays its 30 s grace period with SIGKILL, losing
//! whatever cleanup it had left.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    net::{Shutdown, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A kubeconfig naming an API server where nothing listens.
fn unreachable_kubeconfig(dir: &Path) -> PathBuf {
    let path = dir.join("kubeconfig");
    let port = closed_port();
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: gone\n  cluster: {{server: \"https://127.0.0.1:{port}\", insecure-skip-tls-verify: true}}\n\
             users:\n- name: u\n  user: {{token: t}}\ncontexts:\n- name: c\n  context: {{cluster: gone, user: u}}\ncurrent-context: c\n"
        ),
    )
    .unwrap();
    path
}

/// A TCP proxy to `upstream` that can be cut: from then on nothing gets through, as when the
/// API server's node or network goes away.
struct Proxy {
    port: u16,
    cut: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let streams = Arc::new(Mutex::new(Vec::new()));
        let (cut2, streams2) = (cut.clone(), streams.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if cut2.load(Ordering::SeqCst) {
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let mut all = streams2.lock().unwrap();
                all.push(client.try_clone().unwrap());
                all.push(server.try_clone().unwrap());
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Self { port, cut, streams }
    }

    /// Drops every connection and lets no new one through.
    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for stream in self.streams.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

/// The port of the lab's kube-apiserver, from its kubeconfig.
fn lab_apiserver_port() -> u16 {
    let text = std::fs::read_to_string(&test_support::Lab::get().kubeconfig).unwrap();
    text.lines()
        .find_map(|l| l.trim().strip_prefix("server: https://127.0.0.1:"))
        .expect("lab kubeconfig names its server")
        .trim()
        .parse()
        .unwrap()
}

/// The lab's kubeconfig with its server's port `upstream` replaced by `port`.
fn kubeconfig_via(dir: &Path, upstream: u16, port: u16) -> PathBuf {
    let text = std::fs::read_to_string(&test_support::Lab::get().kubeconfig).unwrap();
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        text.replace(
            &format!("server: https://127.0.0.1:{upstream}"),
            &format!("server: https://127.0.0.1:{port}"),
        ),
    )
    .unwrap();
    path
}

fn controller(dir: &Path, kubeconfig: &Path, metrics_port: u16, leader_election: bool) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_vm-import"));
    command
        .arg("controller")
        .arg("--image-dir")
        .arg(dir.join("images"))
        .args(["--listen", &format!("127.0.0.1:{}", closed_port())])
        .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
        .args(["--namespace", "controller-stop-test"])
        .env("KUBECONFIG", kubeconfig)
        .env_remove("POD_NAMESPACE")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if leader_election {
        command.args(["--leader-election-namespace", "default"]);
    } else {
        command.arg("--no-leader-election");
    }
    command.spawn().unwrap()
}

fn ready(metrics_port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", metrics_port)) else {
        return false;
    };
    let mut text = String::new();
    stream.write_all(b"GET /readyz HTTP/1.0\r\n\r\n").is_ok()
        && stream.read_to_string(&mut text).is_ok()
        && text.lines().next().is_some_and(|l| l.contains(" 200 "))
}

/// Sends SIGTERM and waits; the status and the log once the process is gone.
fn stop(mut child: Child, what: &str) -> (std::process::ExitStatus, String) {
    assert!(
        child.try_wait().unwrap().is_none(),
        "{what}: the controller should still run"
    );
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let signalled = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if signalled.elapsed() > Duration::from_secs(25) {
            child.kill().unwrap();
            panic!("{what}: still running 25 s after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let log = std::io::read_to_string(child.stderr.take().unwrap()).unwrap();
    assert!(log.contains("stop signal received"), "{what}: {log}");
    (status, log)
}

#[test]
fn sigterm_stops_a_running_controller_whose_api_server_went_away() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = lab_apiserver_port();
    let proxy = Proxy::start(upstream);
    let kubeconfig = kubeconfig_via(dir.path(), upstream, proxy.port);
    let metrics_port = closed_port();
    let mut child = controller(dir.path(), &kubeconfig, metrics_port, true);
    let started = Instant::now();
    while !ready(metrics_port) {
        if started.elapsed() > Duration::from_secs(60) || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            let log = std::io::read_to_string(child.stderr.take().unwrap()).unwrap();
            panic!("the controller never became ready: {log}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    proxy.cut();
    // Long enough for watches and the leader lease renewal to be failing and retrying.
    std::thread::sleep(Duration::from_secs(3));
    let (status, log) = stop(child, "running, API server gone");
    assert!(status.code().is_some(), "{status:?}\n{log}");
}

#[test]
fn sigterm_stops_a_controller_waiting_for_an_unreachable_api_server() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = unreachable_kubeconfig(dir.path());
    // With leader election the controller retries acquiring the lease for ever.
    let child = controller(dir.path(), &kubeconfig, closed_port(), true);
    std::thread::sleep(Duration::from_secs(3));
    let (status, log) = stop(child, "waiting for leadership");
    assert!(status.code().is_some(), "{status:?}\n{log}");
}
