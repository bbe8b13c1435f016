//! The boot fixture against real QEMU: the disk boots and prints its marker from a file, after a round
//! trip through a streamOptimized VMDK and our converter (raw and qcow2 out), and over HTTP through
//! QEMU's curl driver; a wrong marker is a timeout, and no emulator outlives a call.

// Test helpers outside #[test] functions fail loudly on purpose.
#![allow(clippy::expect_used, clippy::panic)]

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    net::{TcpListener, TcpStream},
    process::Command,
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use test_support::boot::{
    BootDiskError, BootError, MAX_MARKER_LEN, bios_boot_disk, boot_and_read_serial, write_bios_boot_disk,
};

const DISK_BYTES: u64 = 8 << 20;
/// Generous for TCG on two busy cores: a boot takes about a second when the machine is idle.
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

/// Boots and reports how long it took to see the marker (a measurement, not an assertion).
fn boot(drive: &str, format: &str, marker: &str) -> String {
    let started = Instant::now();
    let serial = boot_and_read_serial(drive, format, marker, BOOT_TIMEOUT)
        .unwrap_or_else(|err| panic!("booting {drive} ({format}): {err}"));
    eprintln!(
        "boot of {drive} ({format}) showed its marker after {:?}",
        started.elapsed()
    );
    serial
}

/// Pids of QEMU processes whose command line mentions `needle`.
fn qemus_mentioning(needle: &str) -> Vec<u32> {
    fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .map(|cmdline| {
                    let cmdline = String::from_utf8_lossy(&cmdline);
                    cmdline.contains("qemu-system") && cmdline.contains(needle)
                })
                .unwrap_or(false)
        })
        .collect()
}

fn qemu_img(args: &[&str]) {
    let output = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img (qemu-utils) must be installed");
    assert!(
        output.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_disk_has_the_boot_program_the_marker_and_data_to_the_last_sector() {
    let disk = bios_boot_disk("VMI-LAYOUT", DISK_BYTES).expect("disk");
    assert_eq!(disk.len() as u64, DISK_BYTES);
    assert_eq!(&disk[510..512], &[0x55, 0xAA]);
    let sector0 = &disk[..512];
    assert!(sector0.windows(13).any(|w| w == b"VMI-LAYOUT\r\n\0"));
    assert!(
        disk[DISK_BYTES as usize - 512..].iter().any(|&b| b != 0),
        "last sector carries data"
    );
    let nonzero = disk.iter().filter(|&&b| b != 0).count();
    assert!(nonzero > 128 * 1024, "only {nonzero} non-zero bytes");
    assert_eq!(
        bios_boot_disk("VMI-LAYOUT", DISK_BYTES).expect("disk"),
        disk,
        "deterministic"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("disk.raw");
    write_bios_boot_disk(&path, "VMI-LAYOUT", DISK_BYTES).expect("write");
    assert_eq!(
        fs::read(&path).expect("read"),
        disk,
        "the sparse file holds the same disk"
    );

    // A tiny disk still gets its MBR and a data sector.
    let tiny = bios_boot_disk("M", 1024).expect("tiny");
    assert_eq!(&tiny[510..512], &[0x55, 0xAA]);
    assert!(tiny[512..].iter().any(|&b| b != 0));
}

#[test]
fn bad_markers_and_sizes_are_refused() {
    for marker in ["", "tab\there", "caf\u{e9}", &"x".repeat(MAX_MARKER_LEN + 1)] {
        assert!(
            matches!(
                bios_boot_disk(marker, DISK_BYTES),
                Err(BootDiskError::InvalidMarker { .. })
            ),
            "marker {marker:?}"
        );
    }
    assert!(bios_boot_disk(&"x".repeat(MAX_MARKER_LEN), 512).is_ok());
    for size in [0, 511, 513, DISK_BYTES + 1, 2 << 30] {
        assert!(
            matches!(bios_boot_disk("M", size), Err(BootDiskError::InvalidSize { .. })),
            "size {size}"
        );
    }
}

#[test]
fn the_raw_disk_boots_and_prints_its_marker() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("raw-boot.raw");
    write_bios_boot_disk(&path, "VMI-BOOT-RAW-7f3a", DISK_BYTES).expect("write");
    let drive = path.to_str().expect("utf-8 path");

    let serial = boot(drive, "raw", "VMI-BOOT-RAW-7f3a");
    assert!(
        // The reader stops at the marker, so the line's end may not have arrived (or only its \r).
        serial
            .lines()
            .any(|line| line.trim_end_matches('\r') == "VMI-BOOT-RAW-7f3a"),
        "{serial:?}"
    );
    assert_eq!(
        qemus_mentioning(drive),
        Vec::<u32>::new(),
        "QEMU is gone once the marker is seen"
    );
    assert_eq!(
        fs::read(&path).expect("read"),
        bios_boot_disk("VMI-BOOT-RAW-7f3a", DISK_BYTES).expect("disk"),
        "snapshot=on: the guest never writes the image"
    );
}

#[test]
fn a_disk_through_stream_optimized_vmdk_and_our_converter_still_boots() {
    let dir = tempfile::tempdir().expect("tempdir");
    let raw = dir.path().join("source.raw");
    let vmdk = dir.path().join("exported.vmdk");
    write_bios_boot_disk(&raw, "VMI-BOOT-VMDK-51c2", DISK_BYTES).expect("write");
    qemu_img(
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "-o",
            "subformat=streamOptimized",
        ]
        .iter()
        .copied()
        .chain([raw.to_str().expect("utf-8"), vmdk.to_str().expect("utf-8")])
        .collect::<Vec<_>>(),
    );

    let back = dir.path().join("migrated.raw");
    diskconv::convert_path(
        &vmdk,
        diskconv::Output::RawFile(back.clone()),
        &diskconv::Options::default(),
    )
    .expect("convert streamOptimized to raw");
    assert_eq!(
        fs::read(&back).expect("read"),
        fs::read(&raw).expect("read"),
        "byte-identical round trip"
    );
    boot(back.to_str().expect("utf-8"), "raw", "VMI-BOOT-VMDK-51c2");

    let qcow2 = dir.path().join("migrated.qcow2");
    diskconv::convert_path(
        &vmdk,
        diskconv::Output::Qcow2File(qcow2.clone()),
        &diskconv::Options::default(),
    )
    .expect("convert streamOptimized to qcow2");
    boot(qcow2.to_str().expect("utf-8"), "qcow2", "VMI-BOOT-VMDK-51c2");
}

#[test]
fn a_disk_printing_another_marker_is_a_timeout_with_the_serial_output() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("other-marker.raw");
    write_bios_boot_disk(&path, "VMI-SOMETHING-ELSE", DISK_BYTES).expect("write");
    let drive = path.to_str().expect("utf-8 path");

    let started = Instant::now();
    let err = boot_and_read_serial(drive, "raw", "VMI-EXPECTED", Duration::from_secs(8))
        .expect_err("the marker never appears");
    let waited = started.elapsed();
    let BootError::Timeout { serial, .. } = &err else {
        panic!("expected a timeout, got {err}")
    };
    // On an idle machine the other disk has booted long before the timeout, so the serial output
    // shows what it printed instead (under heavy load it may still be empty).
    eprintln!("timed out after {waited:?} with serial output {serial:?}");
    assert!(
        serial.is_empty() || serial.contains("VMI-SOMETHING-ELSE"),
        "{serial:?}"
    );
    assert!(
        waited < Duration::from_secs(20),
        "the timeout is honoured: {waited:?}"
    );
    assert_eq!(
        qemus_mentioning(drive),
        Vec::<u32>::new(),
        "QEMU is killed on timeout"
    );
}

#[test]
fn a_drive_qemu_cannot_open_is_reported_with_its_stderr() {
    let err = boot_and_read_serial("/nonexistent/vmi-boot.raw", "raw", "M", BOOT_TIMEOUT)
        .expect_err("no such drive");
    let BootError::QemuExited { stderr, .. } = &err else {
        panic!("expected QemuExited, got {err}")
    };
    assert!(stderr.contains("/nonexistent/vmi-boot.raw"), "{stderr}");
}

#[test]
fn the_disk_boots_over_http_through_qemus_curl_driver() {
    let disk = bios_boot_disk("VMI-BOOT-HTTP-0d9e", DISK_BYTES).expect("disk");
    let server = RangeServer::start(disk);
    let url = format!("{}/images/disk.img", server.base);

    let serial = boot(&url, "raw", "VMI-BOOT-HTTP-0d9e");
    assert!(serial.contains("VMI-BOOT-HTTP-0d9e"));
    let requests = server.requests.lock().expect("lock").clone();
    assert!(requests.iter().any(|r| r.starts_with("HEAD ")), "{requests:?}");
    assert!(
        requests
            .iter()
            .any(|r| r.starts_with("GET ") && r.contains("bytes=")),
        "{requests:?}"
    );
    assert_eq!(qemus_mentioning(&url), Vec::<u32>::new());
}

/// An HTTP/1.1 server for one image, as much as QEMU's curl driver needs: `HEAD` with the size and
/// `Accept-Ranges: bytes`, `GET` with a single `Range` (206) or without (200), keep-alive.
struct RangeServer {
    base: String,
    /// `"METHOD path range"` of every request, in order.
    requests: Arc<Mutex<Vec<String>>>,
}

impl RangeServer {
    fn start(body: Vec<u8>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let body = Arc::new(body);
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&requests);
        // Serves until the test process exits.
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let body = Arc::clone(&body);
                let log = Arc::clone(&log);
                thread::spawn(move || serve_connection(stream, &body, &log));
            }
        });
        RangeServer { base, requests }
    }
}

fn serve_connection(stream: TcpStream, body: &[u8], log: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut out = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut range = None;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("range")
            {
                range = Some(value.trim().to_owned());
            }
        }
        let mut parts = request_line.split_whitespace();
        let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        log.lock()
            .expect("lock")
            .push(format!("{method} {path} {}", range.as_deref().unwrap_or("")));

        let total = body.len() as u64;
        let response = if path != "/images/disk.img" {
            Response::status("404 Not Found")
        } else if method != "GET" && method != "HEAD" {
            Response::status("405 Method Not Allowed")
        } else {
            match range.as_deref().map(|r| parse_range(r, total)) {
                None => Response {
                    status: "200 OK",
                    extra: String::new(),
                    part: 0..total,
                },
                Some(Some((first, last))) => Response {
                    status: "206 Partial Content",
                    extra: format!("Content-Range: bytes {first}-{last}/{total}\r\n"),
                    part: first..last + 1,
                },
                Some(None) => Response {
                    status: "416 Range Not Satisfiable",
                    extra: format!("Content-Range: bytes */{total}\r\n"),
                    part: 0..0,
                },
            }
        };
        let head = format!(
            "HTTP/1.1 {}\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\nContent-Type: application/octet-stream\r\n{}\r\n",
            response.status,
            response.part.end - response.part.start,
            response.extra
        );
        let sent = out.write_all(head.as_bytes()).and_then(|()| {
            if method == "GET" && response.status != "404 Not Found" {
                out.write_all(&body[response.part.start as usize..response.part.end as usize])
            } else {
                Ok(())
            }
        });
        if sent.is_err() {
            return;
        }
    }
}

struct Response {
    status: &'static str,
    extra: String,
    part: std::ops::Range<u64>,
}

impl Response {
    fn status(status: &'static str) -> Self {
        Response {
            status,
            extra: String::new(),
            part: 0..0,
        }
    }
}

/// `bytes=FIRST-LAST`, `bytes=FIRST-` or `bytes=-SUFFIX` within `total`; `None` if unsatisfiable.
fn parse_range(spec: &str, total: u64) -> Option<(u64, u64)> {
    let (first, last) = spec.strip_prefix("bytes=")?.split_once('-')?;
    let (first, last) = match (first.parse::<u64>().ok(), last.parse::<u64>().ok()) {
        (Some(first), Some(last)) => (first, last.min(total.checked_sub(1)?)),
        (Some(first), None) if last.is_empty() => (first, total.checked_sub(1)?),
        (None, Some(suffix)) if first.is_empty() => (total.saturating_sub(suffix), total.checked_sub(1)?),
        _ => return None,
    };
    (first <= last).then_some((first, last))
}

#[test]
fn the_test_server_parses_ranges_like_rfc_9110() {
    assert_eq!(parse_range("bytes=0-511", 1000), Some((0, 511)));
    assert_eq!(parse_range("bytes=900-2000", 1000), Some((900, 999)));
    assert_eq!(parse_range("bytes=990-", 1000), Some((990, 999)));
    assert_eq!(parse_range("bytes=-10", 1000), Some((990, 999)));
    assert_eq!(parse_range("bytes=1000-1001", 1000), None);
    assert_eq!(parse_range("items=0-1", 1000), None);
}

/// Set in the copy of this test binary that runs without QEMU on its PATH.
const NO_QEMU_CHILD: &str = "VMI_BOOT_TEST_WITHOUT_QEMU";

#[test]
fn without_qemu_on_path_the_error_names_the_binary_and_the_package() {
    if std::env::var_os(NO_QEMU_CHILD).is_some() {
        let err = boot_and_read_serial("/dev/null", "raw", "M", BOOT_TIMEOUT).expect_err("no qemu on PATH");
        assert!(matches!(err, BootError::QemuMissing { .. }), "{err}");
        let message = err.to_string();
        assert!(
            message.contains("qemu-system-x86_64") && message.contains("qemu-system-x86 "),
            "{message}"
        );
        return;
    }
    // Changing PATH in this process would race the other tests, so a copy of this binary runs only
    // this test with an empty PATH.
    let output = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "without_qemu_on_path_the_error_names_the_binary_and_the_package",
            "--nocapture",
        ])
        .env(NO_QEMU_CHILD, "1")
        .env("PATH", "")
        .output()
        .expect("run the test binary");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("1 passed"), "the child ran the test: {stdout}");
}
