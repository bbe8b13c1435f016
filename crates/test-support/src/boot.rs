//! The boot fixture: a raw disk whose MBR is a tiny hand-assembled BIOS program that prints a marker
//! on the first serial port, and a runner that boots a disk image (a file or an `http://` URL) in
//! `qemu-system-x86_64` and waits for that marker on the serial console.
//!
//! Byte-identical outputs prove a conversion kept the bytes; booting proves the result is still a disk a
//! real hypervisor starts from: the firmware reads sector 0 through QEMU's own block drivers (raw, qcow2,
//! the curl driver for served images), so a wrong virtual size, a broken qcow2 table or a server that
//! mishandles `Range` shows up as a missing marker.

use std::{
    fs::File,
    io::Read,
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

/// The emulator [`boot_and_read_serial`] runs.
pub const QEMU_BINARY: &str = "qemu-system-x86_64";
/// The Debian package that provides [`QEMU_BINARY`] (with SeaBIOS); `scripts/install-deps` installs it.
pub const QEMU_PACKAGE: &str = "qemu-system-x86";
/// Longest marker [`bios_boot_disk`] accepts; with the program and the trailing `"\r\n\0"` it stays
/// well inside the 440 bytes of boot code an MBR has before its disk signature and partition table.
pub const MAX_MARKER_LEN: usize = 128;

const SECTOR: u64 = 512;
/// Largest disk built in memory; bigger disks belong in sparse files, not in a `Vec`.
const MAX_DISK_BYTES: u64 = 1 << 30;
/// Length of each block of deterministic data written after the MBR.
const DATA_BLOCK: u64 = 64 * 1024;

/// Where the BIOS loads sector 0.
const LOAD_ADDRESS: u16 = 0x7C00;
/// Where the message (marker, CR LF, NUL) starts in memory: right after the program.
const MESSAGE_ADDRESS: u16 = LOAD_ADDRESS + 0x53;

/// 16-bit real-mode boot program, hand-assembled; offsets are from the start of the sector.
///
/// Only relative jumps are used and data is addressed through DS = 0, so the program runs whether the
/// BIOS enters it as 0000:7C00 or 07C0:0000. The UART is set up the way Linux's early console does
/// it (115200 baud, 8N1, FIFO on, interrupts off) and written by polling, so no BIOS service is
/// needed after the jump to 7C00.
const PROGRAM: [u8; 0x53] = [
    0xFA, //                        00: cli
    0x31,
    0xC0, //                  01: xor  ax, ax
    0x8E,
    0xD8, //                  03: mov  ds, ax
    0x8E,
    0xD0, //                  05: mov  ss, ax
    0xBC,
    0x00,
    0x7C, //            07: mov  sp, 0x7c00        ; stack grows down below the program
    0xFC, //                        0A: cld                    ; lodsb walks forwards
    0xBA,
    0xF9,
    0x03, //            0B: mov  dx, 0x3f9         ; COM1 IER
    0x30,
    0xC0, //                  0E: xor  al, al
    0xEE, //                        10: out  dx, al            ; no UART interrupts
    0xBA,
    0xFB,
    0x03, //            11: mov  dx, 0x3fb         ; LCR
    0xB0,
    0x80, //                  14: mov  al, 0x80
    0xEE, //                        16: out  dx, al            ; DLAB = 1: 3f8/3f9 are the divisor
    0xBA,
    0xF8,
    0x03, //            17: mov  dx, 0x3f8         ; DLL
    0xB0,
    0x01, //                  1A: mov  al, 1
    0xEE, //                        1C: out  dx, al            ; divisor 1 = 115200 baud
    0xBA,
    0xF9,
    0x03, //            1D: mov  dx, 0x3f9         ; DLM
    0x30,
    0xC0, //                  20: xor  al, al
    0xEE, //                        22: out  dx, al
    0xBA,
    0xFB,
    0x03, //            23: mov  dx, 0x3fb         ; LCR
    0xB0,
    0x03, //                  26: mov  al, 3
    0xEE, //                        28: out  dx, al            ; 8N1, DLAB = 0
    0xBA,
    0xFA,
    0x03, //            29: mov  dx, 0x3fa         ; FCR
    0xB0,
    0xC7, //                  2C: mov  al, 0xc7
    0xEE, //                        2E: out  dx, al            ; FIFO on and cleared
    0xBA,
    0xFC,
    0x03, //            2F: mov  dx, 0x3fc         ; MCR
    0xB0,
    0x03, //                  32: mov  al, 3
    0xEE, //                        34: out  dx, al            ; DTR | RTS
    0xBE, //                        35: mov  si, MESSAGE_ADDRESS
    MESSAGE_ADDRESS as u8,
    (MESSAGE_ADDRESS >> 8) as u8,
    0xAC, //                        38: next: lodsb            ; al = [ds:si++]
    0x84,
    0xC0, //                  39: test al, al
    0x74,
    0x12, //                  3B: jz   done (4F)
    0x88,
    0xC4, //                  3D: mov  ah, al            ; keep the byte while al polls LSR
    0xBA,
    0xFD,
    0x03, //            3F: mov  dx, 0x3fd         ; LSR
    0xEC, //                        42: wait: in al, dx
    0xA8,
    0x20, //                  43: test al, 0x20          ; THR empty?
    0x74,
    0xFB, //                  45: jz   wait (42)
    0xBA,
    0xF8,
    0x03, //            47: mov  dx, 0x3f8         ; THR
    0x88,
    0xE0, //                  4A: mov  al, ah
    0xEE, //                        4C: out  dx, al
    0xEB,
    0xE9, //                  4D: jmp  next (38)
    0xFA, //                        4F: done: cli
    0xF4, //                        50: hlt                    ; only an NMI wakes it,
    0xEB,
    0xFC, //                  51: jmp  done (4F)         ; and then it halts again
];

// The program and the address it loads the message from must agree on where the message starts.
const _: () = assert!(PROGRAM.len() as u16 == MESSAGE_ADDRESS - LOAD_ADDRESS);

/// Why a boot disk could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BootDiskError {
    /// The marker is empty, too long or not printable ASCII (the program prints bytes as they are).
    #[error("boot marker {marker:?} must be 1..={MAX_MARKER_LEN} printable ASCII characters")]
    InvalidMarker { marker: String },
    /// The size is not a whole number of sectors or too large to build in memory.
    #[error("boot disk size {size_bytes} must be a multiple of 512 between 512 and {MAX_DISK_BYTES}")]
    InvalidSize { size_bytes: u64 },
    /// Writing the disk to a file failed.
    #[error("failed to write boot disk {path}")]
    Write {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A raw disk of `size_bytes` that boots on a PC BIOS and prints `marker` and `"\r\n"` on COM1, then
/// halts. Besides the MBR it carries deterministic pseudo-random blocks at each quarter of the disk
/// and in its last sector, so conversions have real data to carry and a truncated image is caught.
pub fn bios_boot_disk(marker: &str, size_bytes: u64) -> Result<Vec<u8>, BootDiskError> {
    let blocks = boot_disk_blocks(marker, size_bytes)?;
    let len = usize::try_from(size_bytes).map_err(|_| BootDiskError::InvalidSize { size_bytes })?;
    let mut disk = vec![0u8; len];
    for (offset, data) in blocks {
        // Offsets and lengths were checked against `size_bytes`, which fits in usize.
        let start = offset as usize;
        disk[start..start + data.len()].copy_from_slice(&data);
    }
    Ok(disk)
}

/// Writes [`bios_boot_disk`]'s disk to `path` as a sparse file: only the non-zero blocks are
/// written, so the zero runs in between are holes.
pub fn write_bios_boot_disk(path: &Path, marker: &str, size_bytes: u64) -> Result<(), BootDiskError> {
    let blocks = boot_disk_blocks(marker, size_bytes)?;
    let write = || -> std::io::Result<()> {
        let file = File::create(path)?;
        file.set_len(size_bytes)?;
        for (offset, data) in &blocks {
            std::os::unix::fs::FileExt::write_all_at(&file, data, *offset)?;
        }
        file.sync_all()
    };
    write().map_err(|source| BootDiskError::Write {
        path: path.to_owned(),
        source,
    })
}

/// The disk's non-zero blocks, ascending and non-overlapping: the MBR, then data blocks.
fn boot_disk_blocks(marker: &str, size_bytes: u64) -> Result<Vec<(u64, Vec<u8>)>, BootDiskError> {
    let printable = marker.bytes().all(|b| (0x20..=0x7E).contains(&b));
    if marker.is_empty() || marker.len() > MAX_MARKER_LEN || !printable {
        return Err(BootDiskError::InvalidMarker {
            marker: marker.to_owned(),
        });
    }
    if size_bytes < SECTOR || !size_bytes.is_multiple_of(SECTOR) || size_bytes > MAX_DISK_BYTES {
        return Err(BootDiskError::InvalidSize { size_bytes });
    }

    let mut mbr = vec![0u8; SECTOR as usize];
    mbr[..PROGRAM.len()].copy_from_slice(&PROGRAM);
    let message = [marker.as_bytes(), b"\r\n\0"].concat();
    mbr[PROGRAM.len()..PROGRAM.len() + message.len()].copy_from_slice(&message);
    mbr[510] = 0x55;
    mbr[511] = 0xAA;

    let mut blocks = vec![(0, mbr)];
    let mut next_free = SECTOR;
    let last_sector = size_bytes - SECTOR;
    for quarter in 1..4 {
        let offset = (size_bytes * quarter / 4 / SECTOR * SECTOR).max(next_free);
        let len = DATA_BLOCK.min(last_sector.saturating_sub(offset));
        if len > 0 {
            blocks.push((offset, pattern(offset, len)));
            next_free = offset + len;
        }
    }
    if last_sector >= next_free {
        blocks.push((last_sector, pattern(last_sector, SECTOR)));
    }
    Ok(blocks)
}

/// `len` bytes of xorshift64 output seeded by `offset`: the same disk every time, and no two blocks
/// alike, so a block landing at the wrong offset changes the image.
fn pattern(offset: u64, len: u64) -> Vec<u8> {
    let mut state = offset ^ 0x9E37_79B9_7F4A_7C15;
    let mut out = Vec::with_capacity(len as usize);
    while (out.len() as u64) < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len as usize);
    out
}

/// Why a boot did not show its marker.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The emulator is not installed.
    #[error("{binary} not found: install the Debian package {package} (scripts/install-deps does)")]
    QemuMissing {
        binary: &'static str,
        package: &'static str,
    },
    /// The emulator could not be started for another reason.
    #[error("failed to start {binary}")]
    SpawnQemu {
        binary: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The marker did not appear on the serial console in time.
    #[error(
        "marker {marker:?} not on the serial console within {timeout:?}\nserial output: {serial:?}\nqemu stderr: {stderr}"
    )]
    Timeout {
        marker: String,
        timeout: Duration,
        serial: String,
        stderr: String,
    },
    /// The emulator ended (or closed its serial output) before printing the marker, e.g. because it
    /// could not open the drive.
    #[error(
        "{binary} ended ({}) before printing {marker:?}\nserial output: {serial:?}\nqemu stderr: {stderr}",
        status.map_or_else(|| "exit status unknown".to_owned(), |s| s.to_string())
    )]
    QemuExited {
        binary: &'static str,
        marker: String,
        status: Option<ExitStatus>,
        serial: String,
        stderr: String,
    },
}

/// Boots `drive` (a path or an `http://` / `https://` URL, opened by QEMU's curl driver) as the
/// first IDE disk of a TCG-emulated PC with SeaBIOS, and returns the serial console's output as soon
/// as it contains `marker`. QEMU is killed before this returns, whatever the outcome.
///
/// The drive is opened with `snapshot=on`: guest writes go to a throw-away overlay, so neither a file
/// nor a served image is ever changed (IDE disks cannot be attached `readonly=on`).
pub fn boot_and_read_serial(
    drive: &str,
    format: &str,
    marker: &str,
    timeout: Duration,
) -> Result<String, BootError> {
    let deadline = Instant::now() + timeout;
    // QEMU's option syntax doubles commas inside a value.
    let drive_option = format!(
        "file={},format={},if=ide,snapshot=on",
        drive.replace(',', ",,"),
        format.replace(',', ",,")
    );
    let child = Command::new(QEMU_BINARY)
        .args([
            "-machine",
            "pc,accel=tcg",
            "-m",
            "64",
            "-nodefaults",
            "-display",
            "none",
        ])
        .args([
            "-no-reboot",
            "-boot",
            "c",
            "-serial",
            "stdio",
            "-drive",
            &drive_option,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => BootError::QemuMissing {
                binary: QEMU_BINARY,
                package: QEMU_PACKAGE,
            },
            _ => BootError::SpawnQemu {
                binary: QEMU_BINARY,
                source,
            },
        })?;
    let mut qemu = Qemu::watch(child);

    let mut serial = Vec::new();
    loop {
        if contains(&serial, marker.as_bytes()) {
            qemu.stop();
            return Ok(String::from_utf8_lossy(&serial).into_owned());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match qemu.serial.recv_timeout(left) {
            Ok(chunk) => serial.extend_from_slice(&chunk),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let (_, stderr) = qemu.stop();
                return Err(BootError::Timeout {
                    marker: marker.to_owned(),
                    timeout,
                    serial: String::from_utf8_lossy(&serial).into_owned(),
                    stderr,
                });
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let (status, stderr) = qemu.stop();
                return Err(BootError::QemuExited {
                    binary: QEMU_BINARY,
                    marker: marker.to_owned(),
                    status,
                    serial: String::from_utf8_lossy(&serial).into_owned(),
                    stderr,
                });
            }
        }
    }
}

/// A running QEMU with threads draining its stdout (the serial console, as chunks) and stderr. It
/// is killed and reaped on drop, so no error path or panic leaves an emulator behind.
struct Qemu {
    child: Child,
    serial: mpsc::Receiver<Vec<u8>>,
    stderr: Option<JoinHandle<Vec<u8>>>,
    status: Option<ExitStatus>,
}

impl Qemu {
    fn watch(mut child: Child) -> Self {
        let (tx, serial) = mpsc::channel();
        if let Some(mut stdout) = child.stdout.take() {
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                // A read error ends the console like EOF does: either way no marker is coming.
                while let Ok(n @ 1..) = stdout.read(&mut buf) {
                    if tx.send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            });
        }
        let stderr = child.stderr.take().map(|mut pipe| {
            thread::spawn(move || {
                let mut out = Vec::new();
                // Whatever was read before an error is still the best account of what happened.
                let _ = pipe.read_to_end(&mut out);
                out
            })
        });
        Qemu {
            child,
            serial,
            stderr,
            status: None,
        }
    }

    /// Kills and reaps QEMU (if it still runs) and returns its exit status and stderr.
    fn stop(&mut self) -> (Option<ExitStatus>, String) {
        if self.status.is_none() {
            // kill fails only when the process is already gone; wait reaps it either way.
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
        let stderr = self
            .stderr
            .take()
            .and_then(|handle| handle.join().ok())
            .unwrap_or_default();
        (self.status, String::from_utf8_lossy(&stderr).into_owned())
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        self.stop();
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|window| window == needle)
}
