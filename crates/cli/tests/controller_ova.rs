//! `OvaSource` end to end on the lab: the real `vm-import controller` process and kube-apiserver,
//! and an HTTP(S) server of the test's own serving OVAs the test assembles (qemu-img
//! streamOptimized disks, GNU tar, the ova crate's VMware and VirtualBox descriptors). The server
//! can ask for basic auth, serve TLS with the lab CA's certificate, honour or ignore Range
//! requests, cut a response part-way and throttle. The test plays Harvester as `controller.rs` does
//! and checks every served image byte for byte against the raw disk it was made from.

// Test helpers: a failed step must fail the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

#[path = "../../ova/tests/support/fixtures.rs"]
#[allow(dead_code, unreachable_pub)]
mod fixtures;

use std::{
    collections::{BTreeMap, HashMap},
    io::{BufRead, BufReader, Read, Seek, SeekFrom, Write},
    net::{TcpListener, TcpStream},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use api::{ImportPhase, OvaSource, VirtualMachineImport};
use kube::api::ApiResource;
use serde_json::{Value, json};

use support::{
    ControllerProcess, Scene, condition, files_in, harvester, lab,
    lab::{make_vmdk, run, sha512_file},
    merged, phase, vm_resource,
};

// ---- the test's HTTP(S) server --------------------------------------------------------------

/// How the server answers; changed between requests by the test.
#[derive(Clone, Debug, Default)]
struct Behaviour {
    /// The `Authorization` value required (401 otherwise).
    authorization: Option<String>,
    /// Honour `Range: bytes=N-` (and say so with `Accept-Ranges`).
    ranges: bool,
    /// Cut a response (close the connection) when it reaches this offset of the file...
    cut_at: Option<u64>,
    /// ...this many times.
    cuts: u32,
    /// Body bytes per second.
    throttle: Option<u64>,
}

/// One request as the server saw it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    range: Option<String>,
    status: u16,
}

#[derive(Default)]
struct ServerState {
    files: HashMap<String, PathBuf>,
    behaviour: Behaviour,
    seen: Vec<Seen>,
    cuts_done: u32,
}

struct OvaServer {
    base: String,
    state: Arc<Mutex<ServerState>>,
    stop: Arc<AtomicBool>,
    address: std::net::SocketAddr,
}

impl OvaServer {
    fn start(tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(ServerState::default()));
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let (state, tls) = (state.clone(), tls.clone());
                    std::thread::spawn(move || {
                        let _ = match tls {
                            Some(config) => {
                                let Ok(connection) = rustls::ServerConnection::new(config) else {
                                    return;
                                };
                                let mut tls = rustls::StreamOwned::new(connection, stream);
                                let result = handle(&mut tls, &state);
                                if result.is_ok() {
                                    tls.conn.send_close_notify();
                                    let _ = tls.flush();
                                }
                                result
                            }
                            None => handle(&mut &stream, &state),
                        };
                    });
                }
            });
        }
        Self {
            base: format!("127.0.0.1:{}", address.port()),
            state,
            stop,
            address,
        }
    }

    /// Serves `path` as `/<name>`; returns `host:port/<name>`.
    fn serve(&self, name: &str, path: &Path) -> String {
        self.state
            .lock()
            .unwrap()
            .files
            .insert(format!("/{name}"), path.to_owned());
        format!("{}/{name}", self.base)
    }

    fn set(&self, change: impl FnOnce(&mut Behaviour)) {
        change(&mut self.state.lock().unwrap().behaviour);
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    fn cuts_done(&self) -> u32 {
        self.state.lock().unwrap().cuts_done
    }
}

impl Drop for OvaServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.address);
    }
}

/// Answers one request (`Connection: close`).
fn handle<S: Read + Write>(stream: &mut S, state: &Mutex<ServerState>) -> std::io::Result<()> {
    let mut reader = BufReader::new(&mut *stream);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut headers = BTreeMap::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
        }
    }
    drop(reader);
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    let (file, behaviour) = {
        let state = state.lock().unwrap();
        (state.files.get(&path).cloned(), state.behaviour.clone())
    };
    let range = headers.get("range").cloned();
    let record = |status: u16| {
        state.lock().unwrap().seen.push(Seen {
            method: method.clone(),
            path: path.clone(),
            range: range.clone(),
            status,
        });
    };
    let Some(file) = file else {
        record(404);
        return stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    };
    if let Some(expected) = &behaviour.authorization
        && headers.get("authorization") != Some(expected)
    {
        record(401);
        return stream.write_all(
            b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"ova\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
    }
    let length = std::fs::metadata(&file)?.len();
    let etag = format!("\"{length}-{}\"", file.display().to_string().len());
    let start = match (&range, behaviour.ranges) {
        (Some(r), true) if headers.get("if-range").is_none_or(|v| *v == etag) => r
            .strip_prefix("bytes=")
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|n| n.parse::<u64>().ok())
            .filter(|n| *n < length),
        _ => None,
    };
    let mut head = match start {
        Some(n) => format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {n}-{}/{length}\r\nContent-Length: {}\r\n",
            length - 1,
            length - n
        ),
        None => format!("HTTP/1.1 200 OK\r\nContent-Length: {length}\r\n"),
    };
    if behaviour.ranges {
        head.push_str("Accept-Ranges: bytes\r\n");
    }
    head.push_str(&format!("ETag: {etag}\r\nConnection: close\r\n\r\n"));
    record(if start.is_some() { 206 } else { 200 });
    stream.write_all(head.as_bytes())?;
    if method == "HEAD" {
        return Ok(());
    }
    let mut source = std::fs::File::open(&file)?;
    let mut offset = start.unwrap_or(0);
    source.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![0u8; 64 << 10];
    while offset < length {
        let mut n = buf.len().min(usize::try_from(length - offset).unwrap());
        if let Some(cut) = behaviour.cut_at.filter(|c| *c > offset) {
            n = n.min(usize::try_from(cut - offset).unwrap());
        }
        if behaviour.cut_at == Some(offset) {
            let mut state = state.lock().unwrap();
            if state.behaviour.cuts > 0 {
                state.behaviour.cuts -= 1;
                state.cuts_done += 1;
                // No close_notify, no more bytes: the client sees a body shorter than promised.
                return Err(std::io::Error::other("cut"));
            }
        }
        if n == 0 {
            n = buf.len().min(usize::try_from(length - offset).unwrap());
        }
        source.read_exact(&mut buf[..n])?;
        stream.write_all(&buf[..n])?;
        offset += n as u64;
        if let Some(rate) = behaviour.throttle {
            std::thread::sleep(Duration::from_secs_f64(n as f64 / rate as f64));
        }
    }
    stream.flush()
}

/// The lab's serving certificate (for 127.0.0.1), signed by the lab CA.
fn lab_tls() -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let pki = lab::lab().vsphere_ca_cert.parent().unwrap().to_owned();
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&std::fs::read(pki.join("vcsim.crt")).unwrap())
            .map(Result::unwrap)
            .collect();
    let key = PrivateKeyDer::from_pem_slice(&std::fs::read(pki.join("vcsim.key")).unwrap()).unwrap();
    let config =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
    Arc::new(config)
}

fn basic(user: &str, password: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let input = format!("{user}:{password}").into_bytes();
    let mut out = String::from("Basic ");
    for chunk in input.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

// ---- OVAs ----------------------------------------------------------------------------------

/// An OVA on disk and the raw images its disks were made from, in OVF disk order.
struct Ova {
    path: PathBuf,
    raws: Vec<PathBuf>,
}

fn digest(tool: &str, path: &Path) -> String {
    let out = Command::new(tool).arg(path).output().unwrap();
    assert!(out.status.success(), "{tool} {}", path.display());
    String::from_utf8(out.stdout)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_owned()
}

fn tar(dir: &Path, ova: &Path, members: &[&str]) {
    run(Command::new("tar")
        .args(["--format=ustar", "-cf"])
        .arg(ova)
        .arg("-C")
        .arg(dir)
        .args(members));
}

/// vCenter-style `web-01.ova` (the ova crate's VMware fixture: EFI + secure boot + vTPM, 4 vCPUs
/// with 2 cores per socket, pvscsi and SATA disks, the second gzip-compressed, 2 NICs with MACs,
/// an ISO member), its capacities set to the real disks'. `corrupt_manifest` lists a wrong digest
/// for the second disk.
fn vmware_ova(dir: &Path, sizes: [u64; 2], seed: u64, corrupt_manifest: bool) -> Ova {
    vmware_ova_with(dir, sizes, seed, corrupt_manifest, [&[], &[]])
}

/// [`vmware_ova`] with each disk re-made by `qemu-img convert -f raw <args>` from its raw original
/// (empty args: the streamOptimized VMDK stays); the member names stay those of the fixture.
fn vmware_ova_with(
    dir: &Path,
    sizes: [u64; 2],
    seed: u64,
    corrupt_manifest: bool,
    layouts: [&[&str]; 2],
) -> Ova {
    let d = dir.join(format!("vmware-{seed}"));
    std::fs::create_dir_all(&d).unwrap();
    let (vmdk1, raw1) = make_vmdk(&d, "web-01-disk1", sizes[0], seed);
    let (vmdk2, raw2) = make_vmdk(&d, "web-01-disk2", sizes[1], seed + 1);
    for ((vmdk, raw), args) in [(&vmdk1, &raw1), (&vmdk2, &raw2)].into_iter().zip(layouts) {
        if !args.is_empty() {
            std::fs::remove_file(vmdk).unwrap();
            run(Command::new("qemu-img")
                .args(["convert", "-f", "raw"])
                .args(args)
                .arg(raw)
                .arg(vmdk));
        }
    }
    run(Command::new("gzip").arg("-n").arg(&vmdk2));
    assert!(vmdk1.ends_with("web-01-disk1.vmdk"));
    std::fs::write(d.join("tools.iso"), vec![7u8; 4096]).unwrap();
    let size = |name: &str| std::fs::metadata(d.join(name)).unwrap().len().to_string();
    let mut ovf = fixtures::vmware_ovf_with_capacities(sizes[0], sizes[1])
        .replace("{DISK1_SIZE}", &size("web-01-disk1.vmdk"))
        .replace("{DISK2_SIZE}", &size("web-01-disk2.vmdk.gz"))
        .replace("{ISO_SIZE}", &size("tools.iso"));
    // A disk re-made as qcow2 is declared as qcow2 (a member whose bytes contradict its OVF
    // format is refused).
    for (disk, args) in ["vmdisk1", "vmdisk2"].into_iter().zip(layouts) {
        if args.contains(&"qcow2") {
            let vmdk = format!(
                r#"ovf:diskId="{disk}" ovf:fileRef="file{}" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized""#,
                &disk[6..]
            );
            let qcow2 = vmdk.replace(
                "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized",
                "https://www.qemu.org/docs/master/interop/qcow2.html",
            );
            assert!(ovf.contains(&vmdk), "the fixture declares {disk} as a VMDK");
            ovf = ovf.replace(&vmdk, &qcow2);
        }
    }
    std::fs::write(d.join("web-01.ovf"), ovf).unwrap();
    let disk2 = if corrupt_manifest {
        "0".repeat(64)
    } else {
        digest("sha256sum", &d.join("web-01-disk2.vmdk.gz"))
    };
    let mf = format!(
        "SHA256(web-01.ovf)= {}\nSHA256(web-01-disk1.vmdk)= {}\nSHA256(web-01-disk2.vmdk.gz)= {disk2}\nSHA256(tools.iso)= {}\n",
        digest("sha256sum", &d.join("web-01.ovf")),
        digest("sha256sum", &d.join("web-01-disk1.vmdk")),
        digest("sha256sum", &d.join("tools.iso")),
    );
    std::fs::write(d.join("web-01.mf"), mf).unwrap();
    let path = dir.join(format!("web-01-{seed}.ova"));
    tar(
        &d,
        &path,
        &[
            "web-01.ovf",
            "web-01.mf",
            "web-01-disk1.vmdk",
            "web-01-disk2.vmdk.gz",
            "tools.iso",
        ],
    );
    Ova {
        path,
        raws: vec![raw1, raw2],
    }
}

/// VirtualBox "OVF 2.0" `debian12.ova` (the ova crate's fixture: `StorageItem` on AHCI,
/// `EthernetPortItem` NICs, EFI and MACs in `vbox:Machine`, a SHA1 manifest as VirtualBox writes
/// it), the disk's capacity set to the real one.
fn virtualbox_ova(dir: &Path, size: u64, seed: u64) -> Ova {
    let d = dir.join(format!("vbox-{seed}"));
    std::fs::create_dir_all(&d).unwrap();
    let (_, raw) = make_vmdk(&d, "debian12-disk001", size, seed);
    let ovf = fixtures::VIRTUALBOX_OVF.replace(
        r#"ovf:capacity="10737418240""#,
        &format!(r#"ovf:capacity="{size}""#),
    );
    std::fs::write(d.join("debian12.ovf"), ovf).unwrap();
    let mf = format!(
        "SHA1 (debian12.ovf) = {}\nSHA1 (debian12-disk001.vmdk) = {}\n",
        digest("sha1sum", &d.join("debian12.ovf")),
        digest("sha1sum", &d.join("debian12-disk001.vmdk")),
    );
    std::fs::write(d.join("debian12.mf"), mf).unwrap();
    let path = dir.join(format!("debian12-{seed}.ova"));
    tar(
        &d,
        &path,
        &["debian12.ovf", "debian12.mf", "debian12-disk001.vmdk"],
    );
    Ova {
        path,
        raws: vec![raw],
    }
}

/// Offset of `member`'s data in a ustar archive.
fn member_offset(ova: &Path, member: &str) -> u64 {
    let bytes = std::fs::read(ova).unwrap();
    let mut at = 0usize;
    while at + 512 <= bytes.len() {
        let header = &bytes[at..at + 512];
        let name_end = header[..100].iter().position(|b| *b == 0).unwrap_or(100);
        let name = std::str::from_utf8(&header[..name_end]).unwrap();
        let size_text = std::str::from_utf8(&header[124..136]).unwrap();
        let size =
            u64::from_str_radix(size_text.trim_matches(|c: char| c == '\0' || c == ' '), 8).unwrap_or(0);
        if name == member {
            return (at + 512) as u64;
        }
        at += 512 + usize::try_from(size.next_multiple_of(512)).unwrap();
    }
    panic!("{member} not in {}", ova.display());
}

// ---- the cluster side ------------------------------------------------------------------------

fn ova_resource() -> ApiResource {
    ApiResource::erase::<OvaSource>(&())
}

async fn ova_source(scene: &Scene, name: &str, url: &str, credentials: Option<&str>, extra: Value) {
    let mut spec = json!({"url": url, "httpTimeoutSeconds": 30});
    if let Some(secret) = credentials {
        spec["credentials"] = json!({"name": secret, "namespace": scene.namespace});
    }
    scene
        .create_source(&ova_resource(), name, merged(spec, extra))
        .await;
}

/// Waits for the source's `status.status` to be set, returns the status.
async fn source_checked(scene: &Scene, controller: &ControllerProcess, name: &str) -> Value {
    scene.source_checked(controller, &ova_resource(), name).await
}

/// The VMware OVA's first NIC to a NAD (the second uses the pod network).
fn web_mapping() -> Value {
    json!({"networkMapping": [{"sourceNetwork": "VM Network", "destinationNetwork": "vlan1"}]})
}

async fn finished(scene: &Scene, controller: &ControllerProcess, name: &str) -> VirtualMachineImport {
    scene
        .wait_finished(controller, name, Duration::from_secs(240))
        .await
}

/// Samples the allocated bytes under a directory until dropped: the peak of the whole directory
/// and the largest size each `.img` reached.
struct ScratchSampler {
    peak: Arc<Mutex<(u64, BTreeMap<String, u64>)>>,
    stop: Arc<AtomicBool>,
}

impl ScratchSampler {
    fn start(dir: PathBuf) -> Self {
        let peak = Arc::new(Mutex::new((0, BTreeMap::new())));
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (peak, stop) = (peak.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let mut total = 0;
                    let mut images = Vec::new();
                    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                        let Ok(meta) = entry.metadata() else { continue };
                        let allocated = meta.blocks() * 512;
                        total += allocated;
                        let name = entry.file_name().to_string_lossy().into_owned();
                        if name.ends_with(".img") {
                            images.push((name, allocated));
                        }
                    }
                    let mut peak = peak.lock().unwrap();
                    peak.0 = peak.0.max(total);
                    for (name, allocated) in images {
                        let seen = peak.1.entry(name).or_insert(0);
                        *seen = (*seen).max(allocated);
                    }
                    drop(peak);
                    std::thread::sleep(Duration::from_millis(10));
                }
            });
        }
        Self { peak, stop }
    }

    /// (peak bytes allocated in the directory, sum of the images' allocated bytes).
    fn result(&self) -> (u64, u64) {
        let peak = self.peak.lock().unwrap();
        (peak.0, peak.1.values().sum())
    }

    /// Names of every `.img` seen.
    fn images(&self) -> Vec<String> {
        self.peak.lock().unwrap().1.keys().cloned().collect()
    }
}

impl Drop for ScratchSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn assert_digests(import: &VirtualMachineImport, harvester: &harvester::StandIn, ova: &Ova) {
    let status = import.status.clone().unwrap();
    assert_eq!(status.disk_import_status.len(), ova.raws.len(), "{status:#?}");
    for (disk, raw) in status.disk_import_status.iter().zip(&ova.raws) {
        support::assert_served(harvester, disk, &sha512_file(raw));
    }
}

// ---- tests -----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vmware_and_virtualbox_ovas_import_to_running_with_identical_images() {
    let scene = Scene::new("ova-full").await;
    let vmware = vmware_ova(scene.dir.path(), [6 << 20, 3 << 20], 70, false);
    let vbox = virtualbox_ova(scene.dir.path(), 4 << 20, 80);
    // The VMware OVA over plain HTTP; the VirtualBox one over HTTPS with the lab CA and basic auth.
    let plain = OvaServer::start(None);
    plain.set(|b| b.ranges = true);
    let vmware_url = format!("http://{}", plain.serve("web-01.ova", &vmware.path));
    let tls = OvaServer::start(Some(lab_tls()));
    tls.set(|b| b.authorization = Some(basic("ova-user", "ova-pass:word")));
    let vbox_url = format!("https://{}", tls.serve("debian12.ova", &vbox.path));

    let image_dir = scene.dir.path().join("images");
    std::fs::create_dir_all(&image_dir).unwrap();
    let tmp = scene.dir.path().join("controller-tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let sampler = ScratchSampler::start(image_dir.clone());
    let controller = ControllerProcess::start_with_env(
        &scene.namespace,
        &image_dir,
        scene.dir.path().join("controller.log"),
        &[("TMPDIR", tmp.as_os_str())],
    );
    let harvester = scene.harvester(harvester::Options {
        qemu_img_first_into: Some(scene.dir.path().to_owned()),
        ..Default::default()
    });
    scene.nad("vlan1").await;
    ova_source(&scene, "vmware-ova", &vmware_url, None, json!({})).await;
    let ca = String::from_utf8(lab::ca_pem()).unwrap();
    scene
        .secret(
            "vbox-credentials",
            json!({"username": "ova-user", "password": "ova-pass:word", "ca.crt": ca}),
        )
        .await;
    ova_source(&scene, "vbox-ova", &vbox_url, Some("vbox-credentials"), json!({})).await;
    for name in ["vmware-ova", "vbox-ova"] {
        let status = source_checked(&scene, &controller, name).await;
        assert_eq!(status["status"], "clusterReady", "{name}: {status}");
        assert!(condition(&status, "InsecureSkipVerify").is_none(), "{status}");
    }

    let started = Instant::now();
    scene
        .import_from(
            "OvaSource",
            "web",
            "vmware-ova",
            "Web_01",
            json!({"networkMapping": [{"sourceNetwork": "VM Network", "destinationNetwork": "vlan1"}]}),
        )
        .await;
    scene
        .import_from(
            "OvaSource",
            "debian",
            "vbox-ova",
            "debian12",
            json!({"networkMapping": [{"sourceNetwork": "HostOnly", "destinationNetwork": "vlan1"}]}),
        )
        .await;
    let web = finished(&scene, &controller, "web").await;
    let debian = finished(&scene, &controller, "debian").await;
    eprintln!(
        "two OVAs (9 MiB + 4 MiB of disk) to virtualMachineRunning in {:?}",
        started.elapsed()
    );
    for import in [&web, &debian] {
        let status = import.status.clone().unwrap();
        assert_eq!(
            status.phase,
            ImportPhase::VirtualMachineRunning,
            "{status:#?}\n{}",
            controller.log_tail()
        );
    }
    assert_digests(&web, &harvester, &vmware);
    assert_digests(&debian, &harvester, &vbox);

    // The VMware VM: topology, memory, EFI + secure boot (+ SMM), vTPM, buses, NICs.
    let web_status = web.status.clone().unwrap();
    assert_eq!(web_status.imported_virtual_machine_name, "web-01");
    let buses: Vec<_> = web_status
        .disk_import_status
        .iter()
        .map(|d| d.bus_type.as_str().to_owned())
        .collect();
    assert_eq!(buses, ["sata", "sata"], "pvscsi and AHCI both become SATA");
    let vm = scene
        .dynamic(&vm_resource())
        .get(&web_status.imported_virtual_machine_name)
        .await
        .unwrap();
    let domain = &vm.data["spec"]["template"]["spec"]["domain"];
    assert_eq!(domain["cpu"], json!({"sockets": 2, "cores": 2, "threads": 1}));
    assert_eq!(domain["memory"]["guest"], "8192Mi");
    assert_eq!(domain["firmware"]["bootloader"]["efi"]["secureBoot"], true);
    assert_eq!(domain["features"]["smm"]["enabled"], true);
    assert!(domain["devices"]["tpm"].is_object(), "{domain}");
    let interfaces = domain["devices"]["interfaces"].as_array().unwrap();
    let nics: Vec<_> = interfaces
        .iter()
        .map(|i| (i["model"].clone(), i["macAddress"].clone()))
        .collect();
    assert_eq!(
        nics,
        [
            (json!("virtio"), json!("00:50:56:aa:bb:01")),
            (json!("e1000e"), json!("00:50:56:aa:bb:02"))
        ]
    );
    let networks = vm.data["spec"]["template"]["spec"]["networks"]
        .as_array()
        .unwrap();
    assert!(
        networks.iter().any(|n| n["multus"]["networkName"] == "vlan1"),
        "{networks:?}"
    );
    assert!(networks.iter().any(|n| n["pod"].is_object()), "{networks:?}");

    // The VirtualBox VM: NICs from EthernetPortItem (upstream drops them), EFI from vbox:Machine.
    let debian_status = debian.status.clone().unwrap();
    let vm = scene
        .dynamic(&vm_resource())
        .get(&debian_status.imported_virtual_machine_name)
        .await
        .unwrap();
    let domain = &vm.data["spec"]["template"]["spec"]["domain"];
    assert_eq!(domain["cpu"], json!({"sockets": 1, "cores": 2, "threads": 1}));
    assert_eq!(domain["memory"]["guest"], "2048Mi");
    assert!(domain["firmware"]["bootloader"]["efi"].is_object(), "{domain}");
    assert_eq!(debian_status.disk_import_status[0].bus_type.as_str(), "sata");
    let interfaces = domain["devices"]["interfaces"].as_array().unwrap();
    let nics: Vec<_> = interfaces
        .iter()
        .map(|i| (i["model"].clone(), i["macAddress"].clone()))
        .collect();
    assert_eq!(
        nics,
        [
            (json!("virtio"), json!("08:00:27:a1:b2:c3")),
            (json!("e1000"), json!("08:00:27:d4:e5:f6"))
        ]
    );

    // Scratch: never more than the images themselves, nothing anywhere else, nothing left.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !files_in(&image_dir).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(files_in(&image_dir).is_empty(), "{:?}", files_in(&image_dir));
    let (peak, images) = sampler.result();
    eprintln!("scratch: peak {peak} bytes allocated in the image directory; images {images} bytes allocated");
    assert!(images > 0, "the sampler saw no image");
    assert!(
        peak <= images,
        "scratch peak {peak} exceeds the images' allocated {images}"
    );
    assert!(files_in(&tmp).is_empty(), "temporary files: {:?}", files_in(&tmp));
    if let Ok(proc_status) = std::fs::read_to_string(format!("/proc/{}/status", controller.child.id())) {
        let peak_rss = proc_status
            .lines()
            .find(|l| l.starts_with("VmHWM"))
            .unwrap_or_default()
            .to_owned();
        eprintln!("controller peak RSS after two OVA imports: {peak_rss}");
    }
    // Every GET of the HTTPS OVA carried the credentials (the server would have said 401).
    assert!(tls.seen().iter().all(|s| s.status != 401), "{:?}", tls.seen());
    assert!(!controller.log_tail().contains("ova-pass"));
}

/// Disks inside the OVA in the layouts besides streamOptimized: the first a monolithicSparse VMDK,
/// the second a compressed qcow2 (gzip-compressed in the archive, as the fixture's `.vmdk.gz`),
/// both decoded forward-only while the archive streams over HTTP; images are byte-identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ova_with_sparse_vmdk_and_qcow2_disks_imports_identical() {
    let scene = Scene::new("ova-layouts").await;
    let ova = vmware_ova_with(
        scene.dir.path(),
        [5 << 20, 3 << 20],
        75,
        false,
        [
            &["-O", "vmdk", "-o", "subformat=monolithicSparse"],
            &["-O", "qcow2", "-c"],
        ],
    );
    let plain = OvaServer::start(None);
    let url = format!("http://{}", plain.serve("web-01.ova", &ova.path));
    let image_dir = scene.dir.path().join("images");
    std::fs::create_dir_all(&image_dir).unwrap();
    let controller = ControllerProcess::start(
        &scene.namespace,
        &image_dir,
        scene.dir.path().join("controller.log"),
    );
    let harvester = scene.harvester(harvester::Options::default());
    scene.nad("vlan1").await;
    ova_source(&scene, "layouts-ova", &url, None, json!({})).await;
    let status = source_checked(&scene, &controller, "layouts-ova").await;
    assert_eq!(status["status"], "clusterReady", "{status}");
    scene
        .import_from(
            "OvaSource",
            "layouts",
            "layouts-ova",
            "Web_01",
            json!({"networkMapping": [{"sourceNetwork": "VM Network", "destinationNetwork": "vlan1"}]}),
        )
        .await;
    let import = finished(&scene, &controller, "layouts").await;
    let status = import.status.clone().unwrap();
    assert_eq!(
        status.phase,
        ImportPhase::VirtualMachineRunning,
        "{status:#?}\n{}",
        controller.log_tail()
    );
    assert_digests(&import, &harvester, &ova);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_sources_and_bad_ovas_end_with_clear_reasons() {
    let scene = Scene::new("ova-bad").await;
    let good = vmware_ova(scene.dir.path(), [2 << 20, 1 << 20], 90, false);
    let mismatch = vmware_ova(scene.dir.path(), [2 << 20, 1 << 20], 92, true);
    // Truncated in the middle of the first disk.
    let truncated = scene.dir.path().join("truncated.ova");
    let cut = member_offset(&good.path, "web-01-disk1.vmdk") + 300_000;
    std::fs::write(
        &truncated,
        &std::fs::read(&good.path).unwrap()[..usize::try_from(cut).unwrap()],
    )
    .unwrap();
    // No manifest (upstream refuses these too: nothing to check the disks against).
    let no_manifest = scene.dir.path().join("no-manifest.ova");
    tar(
        &scene.dir.path().join("vmware-90"),
        &no_manifest,
        &[
            "web-01.ovf",
            "web-01-disk1.vmdk",
            "web-01-disk2.vmdk.gz",
            "tools.iso",
        ],
    );
    // A tar whose first member is not the descriptor.
    let not_ova = scene.dir.path().join("not-an-ova.ova");
    tar(
        &scene.dir.path().join("vmware-90"),
        &not_ova,
        &["web-01-disk1.vmdk", "web-01.ovf"],
    );

    let plain = OvaServer::start(None);
    let mismatch_url = format!("http://{}", plain.serve("mismatch.ova", &mismatch.path));
    let truncated_url = format!("http://{}", plain.serve("truncated.ova", &truncated));
    let not_ova_url = format!("http://{}", plain.serve("not-an-ova.ova", &not_ova));
    let no_manifest_url = format!("http://{}", plain.serve("no-manifest.ova", &no_manifest));
    let missing_url = format!("http://{}/missing.ova", plain.base);
    let auth = OvaServer::start(None);
    auth.set(|b| b.authorization = Some(basic("ova", "s3cret-pw")));
    let auth_url = format!("http://{}", auth.serve("web-01.ova", &good.path));
    let tls = OvaServer::start(Some(lab_tls()));
    let tls_url = format!("https://{}", tls.serve("web-01.ova", &good.path));

    let image_dir = scene.dir.path().join("images");
    std::fs::create_dir_all(&image_dir).unwrap();
    let sampler = ScratchSampler::start(image_dir.clone());
    let controller = ControllerProcess::start(
        &scene.namespace,
        &image_dir,
        scene.dir.path().join("controller.log"),
    );
    scene.nad("vlan1").await;
    let ca = String::from_utf8(lab::ca_pem()).unwrap();
    scene
        .secret("wrong", json!({"username": "ova", "password": "not-it"}))
        .await;
    scene
        .secret("right", json!({"username": "ova", "password": "s3cret-pw"}))
        .await;
    scene.secret("ca", json!({"ca.crt": ca})).await;
    // The test server serves the lab's vcsim certificate.
    let served = lab::lab().certificate_sha256("vcsim");
    let other = lab::lab().certificate_sha256("openstack");
    scene
        .secret("pin", json!({"certificateFingerprint": served}))
        .await;
    scene
        .secret("wrong-pin", json!({"certificateFingerprint": other}))
        .await;
    scene
        .secret("bad-pin", json!({"certificateFingerprint": "sha256:0123"}))
        .await;
    ova_source(&scene, "no-credentials", &auth_url, None, json!({})).await;
    ova_source(&scene, "wrong-credentials", &auth_url, Some("wrong"), json!({})).await;
    ova_source(&scene, "right-credentials", &auth_url, Some("right"), json!({})).await;
    ova_source(&scene, "tls-no-ca", &tls_url, None, json!({})).await;
    ova_source(&scene, "tls-ca", &tls_url, Some("ca"), json!({})).await;
    ova_source(&scene, "tls-pinned", &tls_url, Some("pin"), json!({})).await;
    ova_source(&scene, "tls-wrong-pin", &tls_url, Some("wrong-pin"), json!({})).await;
    ova_source(&scene, "tls-bad-pin", &tls_url, Some("bad-pin"), json!({})).await;
    ova_source(
        &scene,
        "tls-insecure",
        &tls_url,
        None,
        json!({"insecureSkipVerify": true}),
    )
    .await;
    ova_source(&scene, "ftp", "ftp://127.0.0.1/web-01.ova", None, json!({})).await;
    ova_source(&scene, "missing", &missing_url, None, json!({})).await;
    ova_source(&scene, "refused", "http://127.0.0.1:9/x.ova", None, json!({})).await;

    let expectations = [
        ("no-credentials", "Unauthorized", "spec.credentials"),
        ("wrong-credentials", "Unauthorized", "check the 'username'"),
        ("right-credentials", "", ""),
        ("tls-no-ca", "TLSVerificationFailed", "'ca.crt'"),
        ("tls-ca", "", ""),
        ("tls-pinned", "", ""),
        ("tls-wrong-pin", "TLSVerificationFailed", served.as_str()),
        ("tls-bad-pin", "SecretKeyInvalid", "'certificateFingerprint'"),
        ("tls-insecure", "", ""),
        ("ftp", "InvalidURL", "only http and https"),
        ("missing", "HTTPError", "404"),
        ("refused", "EndpointUnreachable", "127.0.0.1:9"),
    ];
    for (name, reason, text) in expectations {
        let status = source_checked(&scene, &controller, name).await;
        if reason.is_empty() {
            assert_eq!(status["status"], "clusterReady", "{name}: {status}");
            assert_eq!(condition(&status, "ClusterReady").unwrap()["status"], "True");
            continue;
        }
        assert_eq!(status["status"], "clusterNotReady", "{name}: {status}");
        let error = condition(&status, "ClusterError").unwrap();
        assert_eq!(error["status"], "True", "{name}: {status}");
        assert_eq!(error["reason"], reason, "{name}: {status}");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains(text), "{name}: {message}");
        assert!(
            !message.contains("s3cret") && !message.contains("not-it"),
            "{message}"
        );
    }
    let insecure = scene.status_of(&ova_resource(), "tls-insecure").await;
    assert_eq!(
        condition(&insecure, "InsecureSkipVerify").unwrap()["status"],
        "True",
        "{insecure}"
    );

    // Archives that do not check out: the import fails naming the member, no image is left.
    for (name, url) in [
        ("mismatch", &mismatch_url),
        ("truncated", &truncated_url),
        ("not-ova", &not_ova_url),
        ("no-manifest", &no_manifest_url),
    ] {
        ova_source(&scene, name, url, None, json!({})).await;
        let status = source_checked(&scene, &controller, name).await;
        assert_eq!(status["status"], "clusterReady", "{name}: {status}");
        scene
            .import_from("OvaSource", name, name, "web-01", web_mapping())
            .await;
    }
    // The good archive through the right credentials goes through.
    scene
        .import_from(
            "OvaSource",
            "authorized",
            "right-credentials",
            "web-01",
            web_mapping(),
        )
        .await;
    // A broken archive fails the import with the OVA source's reason, not a generic ExportFailed.
    let expected = [
        (
            "mismatch",
            ImportPhase::MigrationFailed,
            "InvalidOVA",
            "web-01-disk2.vmdk.gz",
        ),
        (
            "truncated",
            ImportPhase::MigrationFailed,
            "InvalidOVA",
            "web-01-disk1.vmdk",
        ),
        (
            "not-ova",
            ImportPhase::Invalid,
            "PreflightFailed",
            "\"web-01-disk1.vmdk\", not the .ovf",
        ),
        (
            "no-manifest",
            ImportPhase::MigrationFailed,
            "InvalidOVA",
            "\"web-01-disk1.vmdk\" has no digest in a manifest",
        ),
    ];
    for (name, want, reason, text) in expected {
        let import = finished(&scene, &controller, name).await;
        let status = import.status.unwrap();
        assert_eq!(status.phase, want, "{name}: {status:#?}");
        let failed =
            api::condition::find(&status.import_conditions, &api::ConditionType::ImportFailed).unwrap();
        assert_eq!(failed.reason, reason, "{name}: {failed:?}");
        assert!(failed.message.contains(text), "{name}: {}", failed.message);
        eprintln!("{name}: {}", failed.message);
    }
    let status = scene.get_import("mismatch").await.status.unwrap();
    let message = api::condition::find(&status.import_conditions, &api::ConditionType::ImportFailed)
        .unwrap()
        .message
        .clone();
    assert!(message.contains("manifest"), "{message}");
    // The disk that failed its digest never became servable; the one before it did.
    let seen = sampler.images();
    assert!(
        !seen
            .iter()
            .any(|f| f.starts_with("mismatch-") && f.contains("-disk-1-")),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|f| f.starts_with("mismatch-") && f.contains("-disk-0-")),
        "{seen:?}"
    );
    assert_eq!(status.disk_import_status[1].checksum, None, "{status:#?}");
    let authorized = scene
        .wait_import(&controller, "authorized", Duration::from_secs(120), |i| {
            i.status.as_ref().is_some_and(|s| {
                !s.disk_import_status.is_empty() && s.disk_import_status.iter().all(|d| d.is_exported())
            }) || matches!(phase(i), ImportPhase::MigrationFailed | ImportPhase::Invalid)
        })
        .await;
    let status = authorized.status.unwrap();
    for (disk, raw) in status.disk_import_status.iter().zip(&good.raws) {
        let served = image_dir.join(&disk.name);
        assert_eq!(disk.checksum, harvester::sha512_of(&served).ok(), "{status:#?}");
        assert_eq!(support::disk_sha512(&served), sha512_file(raw), "{status:#?}");
    }
    // Failed imports leave no image and no partial file.
    let deadline = Instant::now() + Duration::from_secs(20);
    let leftovers = |files: std::collections::BTreeSet<String>| {
        files
            .into_iter()
            .filter(|f| !f.starts_with("authorized-"))
            .collect::<Vec<_>>()
    };
    while !leftovers(files_in(&image_dir)).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(leftovers(files_in(&image_dir)), Vec::<String>::new());
    let log = std::fs::read_to_string(scene.dir.path().join("controller.log")).unwrap();
    assert!(!log.contains("s3cret-pw") && !log.contains("not-it"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cut_connections_resume_with_range_or_read_the_archive_again() {
    let scene = Scene::new("ova-cut").await;
    let ova = vmware_ova(scene.dir.path(), [8 << 20, 2 << 20], 100, false);
    let cut = member_offset(&ova.path, "web-01-disk1.vmdk") + (3 << 20);
    let ranged = OvaServer::start(None);
    ranged.set(|b| {
        b.ranges = true;
        b.cut_at = Some(cut);
        b.cuts = 2;
        b.throttle = Some(8 << 20);
    });
    let ranged_url = format!("http://{}", ranged.serve("web-01.ova", &ova.path));
    let whole = OvaServer::start(None);
    whole.set(|b| {
        b.cut_at = Some(cut);
        b.cuts = 1;
        b.throttle = Some(8 << 20);
    });
    let whole_url = format!("http://{}", whole.serve("web-01.ova", &ova.path));

    let image_dir = scene.dir.path().join("images");
    let controller = ControllerProcess::start(
        &scene.namespace,
        &image_dir,
        scene.dir.path().join("controller.log"),
    );
    scene.nad("vlan1").await;
    let harvester = scene.harvester(harvester::Options {
        qemu_img_first_into: Some(scene.dir.path().to_owned()),
        ..Default::default()
    });
    ova_source(&scene, "ranged", &ranged_url, None, json!({})).await;
    ova_source(&scene, "whole", &whole_url, None, json!({})).await;
    for name in ["ranged", "whole"] {
        source_checked(&scene, &controller, name).await;
        scene
            .import_from("OvaSource", name, name, "web-01", web_mapping())
            .await;
    }
    for (name, server) in [("ranged", &ranged), ("whole", &whole)] {
        let import = finished(&scene, &controller, name).await;
        let status = import.status.clone().unwrap();
        assert_eq!(
            status.phase,
            ImportPhase::VirtualMachineRunning,
            "{name}: {status:#?}\n{}",
            controller.log_tail()
        );
        assert_digests(&import, &harvester, &ova);
        let gets: Vec<Seen> = server.seen().into_iter().filter(|s| s.method == "GET").collect();
        assert!(gets.iter().all(|s| s.path == "/web-01.ova"), "{gets:?}");
        eprintln!("{name}: {} cuts, GETs {gets:?}", server.cuts_done());
        if name == "ranged" {
            assert_eq!(server.cuts_done(), 2, "{gets:?}");
            let resumed: Vec<_> = gets
                .iter()
                .filter(|s| s.range.as_deref() == Some(&format!("bytes={cut}-")))
                .collect();
            assert_eq!(resumed.len(), 2, "each cut resumed at the cut offset: {gets:?}");
            assert!(resumed.iter().all(|s| s.status == 206), "{gets:?}");
        } else {
            assert_eq!(server.cuts_done(), 1, "{gets:?}");
            // The cut hit the export (not a descriptor read), which read the archive again.
            let log = std::fs::read_to_string(&controller.log).unwrap();
            assert!(
                log.contains("OVA download broke; reading the archive again"),
                "{}",
                controller.log_tail()
            );
            assert!(
                gets.iter().all(|s| s.range.is_none() && s.status == 200),
                "{gets:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_controller_resumes_keeping_the_disk_it_finished() {
    let scene = Scene::new("ova-kill").await;
    let ova = vmware_ova(scene.dir.path(), [2 << 20, 24 << 20], 110, false);
    let server = OvaServer::start(None);
    // Slow enough that the big second disk is still streaming when the controller is killed.
    server.set(|b| b.throttle = Some(3 << 20));
    let url = format!("http://{}", server.serve("web-01.ova", &ova.path));
    let image_dir = scene.dir.path().join("images");
    let log = scene.dir.path().join("controller.log");
    let mut controller = ControllerProcess::start(&scene.namespace, &image_dir, log.clone());
    scene.nad("vlan1").await;
    ova_source(&scene, "ova", &url, None, json!({})).await;
    source_checked(&scene, &controller, "ova").await;
    scene
        .import_from("OvaSource", "kill", "ova", "web-01", web_mapping())
        .await;
    let import = scene
        .wait_import(&controller, "kill", Duration::from_secs(120), |i| {
            let disks = i.status.clone().unwrap_or_default().disk_import_status;
            disks.len() == 2
                && disks[0].is_exported()
                && !disks[1].is_exported()
                && disks[1].bytes_done.unwrap_or(0) > 0
        })
        .await;
    controller.kill();
    let first = image_dir.join(&import.status.unwrap().disk_import_status[0].name);
    let committed = std::fs::metadata(&first).unwrap();
    assert!(
        files_in(&image_dir).iter().any(|f| f.ends_with(".part")),
        "the second disk was mid-transfer: {:?}",
        files_in(&image_dir)
    );

    server.set(|b| b.throttle = None);
    let controller = ControllerProcess::start(&scene.namespace, &image_dir, log);
    let import = scene
        .wait_import(&controller, "kill", Duration::from_secs(120), |i| {
            let disks = i.status.clone().unwrap_or_default().disk_import_status;
            disks.iter().all(|d| d.is_exported())
                || matches!(phase(i), ImportPhase::MigrationFailed | ImportPhase::Invalid)
        })
        .await;
    assert!(
        !matches!(
            phase(&import),
            ImportPhase::MigrationFailed | ImportPhase::Invalid
        ),
        "{:#?}",
        import.status
    );
    // The finished disk was read past, not written again.
    let after = std::fs::metadata(&first).unwrap();
    assert_eq!(
        (after.ino(), after.mtime(), after.mtime_nsec()),
        (committed.ino(), committed.mtime(), committed.mtime_nsec()),
        "the committed image was rewritten"
    );
    assert!(
        files_in(&image_dir).iter().all(|f| !f.ends_with(".part")),
        "{:?}",
        files_in(&image_dir)
    );
    let harvester = scene.harvester(harvester::Options {
        qemu_img_first_into: Some(scene.dir.path().to_owned()),
        ..Default::default()
    });
    let import = finished(&scene, &controller, "kill").await;
    let status = import.status.clone().unwrap();
    assert_eq!(status.phase, ImportPhase::VirtualMachineRunning, "{status:#?}");
    assert_digests(&import, &harvester, &ova);
}
