//! `vm-import convert` and `vm-import inspect`: resolve the arguments into inputs, outputs and
//! options, run the disk pipeline, and report (JSON report file, stderr summary, inspect JSON).

use std::{
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
    thread,
};

use anyhow::Context;
use diskconv::{Options, Output, Report, StreamWriter, inspect};
use serde::Serialize;

use crate::{
    cli::{ConvertArgs, InspectArgs, OutputFormat},
    input::{self, Input},
    progress,
};

/// A usage error found after parsing (exit code 2, like clap's own).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct UsageError(pub(crate) String);

/// One converted disk, as written to `--report`.
#[derive(Debug, Serialize)]
struct DiskReport {
    input: String,
    output: String,
    #[serde(flatten)]
    report: Report,
}

#[derive(Debug, Serialize)]
struct ReportFile<'a> {
    disks: &'a [DiskReport],
}

pub(crate) fn convert(args: ConvertArgs) -> anyhow::Result<()> {
    let ConvertArgs {
        output_format,
        threads,
        progress: progress_mode,
        report: report_path,
        require_manifest,
        sync,
        http,
        input,
        output,
    } = args;
    let _ = require_manifest;
    let input = Input::parse(&input);
    if output == "-" && output_format == OutputFormat::Qcow2 {
        return Err(UsageError("-O qcow2 cannot write to stdout (`-`); give an output file".into()).into());
    }
    let threads = threads.map_or_else(
        || thread::available_parallelism().map_or(2, |n| n.get()),
        usize::from,
    );
    let opts = Options {
        threads,
        progress: progress::reporter(progress_mode, 0, &input.display()),
        sync,
    };
    let out = OutputTarget::parse(&output, output_format);
    let result = run_convert(&input, &http, out.open()?, &opts);
    let report = match result {
        Ok(report) => report,
        Err(e) => {
            out.remove_partial();
            return Err(e);
        }
    };
    let disks = vec![DiskReport {
        input: input.display(),
        output: out.display(),
        report,
    }];
    summarise(&disks);
    if let Some(path) = report_path.as_ref() {
        write_report(path, &disks)?;
    }
    Ok(())
}

fn run_convert(
    input: &Input,
    http: &crate::cli::HttpArgs,
    output: Output,
    opts: &Options,
) -> anyhow::Result<Report> {
    let name = input.display();
    let report = match input {
        Input::File(path) => {
            if path.is_dir() {
                anyhow::bail!("{name}: is a directory, not a disk image");
            }
            diskconv::convert_path(path, output, opts)
        }
        Input::Stdin => diskconv::convert_reader(io::stdin().lock(), output, opts),
        Input::Url(url) => diskconv::convert_reader(input::open_url(url, http)?, output, opts),
    };
    report.with_context(|| name.clone())
}

enum OutputTarget {
    Stdout,
    File { path: PathBuf, format: OutputFormat },
}

impl OutputTarget {
    fn parse(arg: &str, format: OutputFormat) -> Self {
        if arg == "-" {
            Self::Stdout
        } else {
            Self::File {
                path: PathBuf::from(arg),
                format,
            }
        }
    }

    fn display(&self) -> String {
        match self {
            Self::Stdout => "<stdout>".into(),
            Self::File { path, .. } => path.display().to_string(),
        }
    }

    fn open(&self) -> anyhow::Result<Output> {
        Ok(match self {
            Self::Stdout => Output::RawStream(StreamWriter(Box::new(io::BufWriter::with_capacity(
                1 << 20,
                io::stdout(),
            )))),
            Self::File { path, .. } if path.is_dir() => {
                anyhow::bail!(
                    "{}: is a directory (a directory output is only for an OVA input)",
                    path.display()
                )
            }
            Self::File {
                path,
                format: OutputFormat::Raw,
            } => Output::RawFile(path.clone()),
            Self::File {
                path,
                format: OutputFormat::Qcow2,
            } => Output::Qcow2File(path.clone()),
        })
    }

    /// A failed conversion must not leave a plausible-looking image behind.
    fn remove_partial(&self) {
        if let Self::File { path, .. } = self {
            let _ = fs::remove_file(path);
        }
    }
}

fn summarise(disks: &[DiskReport]) {
    let mut err = io::stderr().lock();
    for (i, d) in disks.iter().enumerate() {
        let r = &d.report;
        let _ = writeln!(
            err,
            "disk {i}: {} ({}) -> {}: virtual {} bytes, read {} bytes, wrote {} bytes, sha256 {}, {:.2} s",
            d.input, r.format, d.output, r.virtual_size, r.bytes_read, r.bytes_written, r.sha256, r.seconds
        );
    }
}

fn write_report(path: &Path, disks: &[DiskReport]) -> anyhow::Result<()> {
    let mut json = serde_json::to_vec_pretty(&ReportFile { disks })?;
    json.push(b'\n');
    fs::write(path, json).with_context(|| format!("cannot write report {}", path.display()))
}

pub(crate) fn inspect(args: InspectArgs) -> anyhow::Result<()> {
    let InspectArgs { http, input } = args;
    let input = Input::parse(&input);
    let name = input.display();
    let info = match &input {
        Input::File(path) => inspect::inspect_path(path),
        Input::Stdin => inspect::inspect_reader(io::stdin().lock()),
        Input::Url(url) => inspect::inspect_reader(input::open_url(url, &http)?),
    }
    .with_context(|| name.clone())?;
    let mut out = io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, &info)?;
    writeln!(out)?;
    Ok(())
}
