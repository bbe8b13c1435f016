//! `vm-import convert` / `inspect` from an https:// URL served by a real TLS server (Python's
//! `http.server` + `ssl`, certificate from a throwaway CA made with `openssl`), trusting the CA
//! through `--ca-cert` and authenticating with basic auth from `VM_IMPORT_HTTP_USERNAME` /
//! `VM_IMPORT_HTTP_PASSWORD`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    fs,
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
};

const SERVER: &str = r#"
import base64, http.server, ssl, sys
root, cert, key, user, password = sys.argv[1:6]
expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
class Handler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *a, **kw):
        super().__init__(*a, directory=root, **kw)
    def do_GET(self):
        if self.headers.get("Authorization") != expected:
            self.send_response(401); self.send_header("WWW-Authenticate", "Basic"); self.end_headers(); return
        super().do_GET()
    def log_message(self, *a):
        pass
server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
server.socket = ctx.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!(
            "cannot run {:?}: {e} (needs openssl, python3, qemu-utils)",
            cmd.get_program()
        )
    });
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn make_certs(d: &Path) {
    run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=test-ca",
        ])
        .arg("-keyout")
        .arg(d.join("ca.key"))
        .arg("-out")
        .arg(d.join("ca.pem")));
    run(Command::new("openssl")
        .args(["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost"])
        .arg("-keyout")
        .arg(d.join("srv.key"))
        .arg("-out")
        .arg(d.join("srv.csr")));
    fs::write(
        d.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "1", "-CAcreateserial"])
        .arg("-in")
        .arg(d.join("srv.csr"))
        .arg("-CA")
        .arg(d.join("ca.pem"))
        .arg("-CAkey")
        .arg(d.join("ca.key"))
        .arg("-extfile")
        .arg(d.join("ext.cnf"))
        .arg("-out")
        .arg(d.join("srv.pem")));
}

struct Server(Child, u16);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(d: &Path) -> Server {
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(SERVER)
        .arg(d)
        .arg(d.join("srv.pem"))
        .arg(d.join("srv.key"))
        .args(["alice", "s3cret"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("server did not start: {line:?}"));
    Server(child, port)
}

#[test]
fn converts_and_inspects_from_https_with_ca_and_basic_auth() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_certs(d);
    let mut raw = vec![0u8; 2 << 20];
    raw[1000..70_000]
        .iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b = (i % 199) as u8);
    fs::write(d.join("disk.raw"), &raw).unwrap();
    run(Command::new("qemu-img")
        .args([
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "-o",
            "subformat=streamOptimized",
        ])
        .arg(d.join("disk.raw"))
        .arg(d.join("disk.vmdk")));
    let server = serve(d);
    let url = format!("https://127.0.0.1:{}/disk.vmdk", server.1);
    let bin = env!("CARGO_BIN_EXE_vm-import");

    let out = d.join("out.raw");
    let ok = Command::new(bin)
        .args(["convert", "--progress", "none", "--ca-cert"])
        .arg(d.join("ca.pem"))
        .arg(&url)
        .arg(&out)
        .env("VM_IMPORT_HTTP_USERNAME", "alice")
        .env("VM_IMPORT_HTTP_PASSWORD", "s3cret")
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert_eq!(fs::read(&out).unwrap(), raw);

    let inspect = Command::new(bin)
        .args(["inspect", "--ca-cert"])
        .arg(d.join("ca.pem"))
        .arg(&url)
        .env("VM_IMPORT_HTTP_USERNAME", "alice")
        .env("VM_IMPORT_HTTP_PASSWORD", "s3cret")
        .output()
        .unwrap();
    assert!(
        inspect.status.success(),
        "{}",
        String::from_utf8_lossy(&inspect.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(json["virtual_size"], 2 << 20);

    let wrong_password = Command::new(bin)
        .args(["convert", "--progress", "none", "--ca-cert"])
        .arg(d.join("ca.pem"))
        .arg(&url)
        .arg(d.join("x.raw"))
        .env("VM_IMPORT_HTTP_USERNAME", "alice")
        .env("VM_IMPORT_HTTP_PASSWORD", "nope")
        .output()
        .unwrap();
    assert_eq!(wrong_password.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&wrong_password.stderr).contains("401"));

    let untrusted = Command::new(bin)
        .args(["convert", "--progress", "none"])
        .arg(&url)
        .arg(d.join("y.raw"))
        .env("VM_IMPORT_HTTP_USERNAME", "alice")
        .env("VM_IMPORT_HTTP_PASSWORD", "s3cret")
        .output()
        .unwrap();
    assert_eq!(
        untrusted.status.code(),
        Some(1),
        "a server outside the web roots must be refused without --ca-cert"
    );
}

#[test]
fn credentials_in_a_url_are_used_but_never_shown() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_certs(d);
    fs::write(d.join("disk.raw"), vec![3u8; 1 << 20]).unwrap();
    let server = serve(d);
    let url = format!("https://alice:s3cret@127.0.0.1:{}/disk.raw", server.1);
    let bin = env!("CARGO_BIN_EXE_vm-import");
    let report = d.join("report.json");
    let ok = Command::new(bin)
        .args(["convert", "--progress", "json", "--ca-cert"])
        .arg(d.join("ca.pem"))
        .arg("--report")
        .arg(&report)
        .arg(&url)
        .arg(d.join("out.raw"))
        .env_remove("VM_IMPORT_HTTP_USERNAME")
        .env_remove("VM_IMPORT_HTTP_PASSWORD")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&ok.stderr);
    assert!(ok.status.success(), "{stderr}");
    assert_eq!(fs::read(d.join("out.raw")).unwrap(), vec![3u8; 1 << 20]);
    let report = fs::read_to_string(&report).unwrap();
    for (what, text) in [("stderr", &*stderr), ("report", &*report)] {
        assert!(
            !text.contains("s3cret") && !text.contains("alice"),
            "{what}: {text}"
        );
    }
    assert!(
        report.contains(&format!("https://127.0.0.1:{}/disk.raw", server.1)),
        "{report}"
    );

    // An unreachable host: the error names the URL, without its credentials.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let failed = Command::new(bin)
        .args(["inspect", &format!("http://alice:s3cret@127.0.0.1:{port}/x.vmdk")])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert_eq!(failed.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("127.0.0.1:{port}/x.vmdk")), "{stderr}");
    assert!(!stderr.contains("s3cret"), "{stderr}");
}

#[test]
fn the_password_comes_from_a_file_and_no_flag_takes_it() {
    let bin = env!("CARGO_BIN_EXE_vm-import");
    let flag = Command::new(bin)
        .args(["inspect", "--http-password", "x", "http://127.0.0.1:1/x"])
        .output()
        .unwrap();
    assert_eq!(flag.status.code(), Some(2), "--http-password must not exist");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_certs(d);
    fs::write(d.join("disk.raw"), vec![4u8; 65536]).unwrap();
    fs::write(d.join("password"), "s3cret\n").unwrap();
    let server = serve(d);
    let ok = Command::new(bin)
        .args(["inspect", "--ca-cert"])
        .arg(d.join("ca.pem"))
        .args(["--http-username", "alice", "--http-password-file"])
        .arg(d.join("password"))
        .arg(format!("https://127.0.0.1:{}/disk.raw", server.1))
        .env_remove("VM_IMPORT_HTTP_PASSWORD")
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
}
