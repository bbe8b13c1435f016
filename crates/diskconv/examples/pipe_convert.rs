//! Converts a disk image read from stdin (a pipe: no seeking) to a sparse raw file and prints the
//! report, for timing the forward-only decoders against `qemu-img convert` on the same image:
//!
//! ```text
//! cargo run --release -p vmi-diskconv --example pipe_convert -- out.raw < disk.qcow2
//! ```
#![allow(clippy::print_stdout)]

use std::path::PathBuf;

use vmi_diskconv::{Checksum, Options, Output};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args_os()
        .nth(1)
        .ok_or("usage: pipe_convert OUT.raw < IMAGE")?;
    let opts = Options {
        sync: false,
        expected_size: None,
        declared_format: None,
        checksum: Some(Checksum::Sha256),
        ..Options::default()
    };
    let report = vmi_diskconv::convert_reader(
        std::io::stdin().lock(),
        Output::RawFile(PathBuf::from(out)),
        &opts,
    )?;
    println!(
        "{} {} bytes in {:.3} s ({:.0} MiB/s of virtual disk), sha256 {}",
        report.format,
        report.virtual_size,
        report.seconds,
        report.virtual_size as f64 / report.seconds / f64::from(1 << 20),
        report.digest(Checksum::Sha256).unwrap_or_default()
    );
    Ok(())
}
