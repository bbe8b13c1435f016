//! `vm-import convert` and `vm-import inspect`: resolve the arguments into inputs, outputs and
//! options, run the disk pipeline, and report (JSON report file, stderr summary, inspect JSON).

use std::{
    fs,
    io::{self, Read, Write},
    path::{Path, PathBuf},
    thread,
};

use anyhow::Context;
use diskconv::{
    InputFormat, Options, Output, Report, StreamWriter, archive, inspect,
    source::Family,
    staged::{Replace, StagedFile},
};
use serde::Serialize;

use crate::{
    cli::{ConvertArgs, DeclaredFormat, HttpArgs, InspectArgs, OutputFormat},
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
        checksum,
        require_manifest,
        sync,
        force,
        input_format,
        http,
        input,
        output,
    } = args;
    let input = Input::parse(&input);
    if output == "-" && output_format == OutputFormat::Qcow2 {
        return Err(UsageError("-O qcow2 cannot write to stdout (`-`); give an output file".into()).into());
    }
    let replace = if force {
        Replace::Existing
    } else {
        Replace::Nothing
    };
    let threads = threads.map_or_else(
        || thread::available_parallelism().map_or(2, |n| n.get()),
        usize::from,
    );
    let opts = Options {
        threads,
        progress: progress::reporter(progress_mode, 0, &input.display()),
        sync,
        expected_size: None,
        declared_format: None,
        checksum: checksum.get(),
    };
    let name = input.display();
    remove_unfinished_outputs_on_signals();
    let opened = open_input(&input, &http, input_format)?;
    let disks = if opened.format() == InputFormat::Ova {
        if output == "-" {
            return Err(UsageError("an OVA converts into a directory, not to stdout".into()).into());
        }
        convert_ova(
            opened,
            &name,
            Path::new(&output),
            (output_format.into(), replace),
            &opts,
            require_manifest,
        )?
    } else if output == "-" {
        let out = Output::RawStream(StreamWriter(Box::new(io::BufWriter::with_capacity(
            1 << 20,
            io::stdout(),
        ))));
        let report = convert_opened(opened, out, &opts).with_context(|| name.clone())?;
        vec![DiskReport {
            input: name,
            output: "<stdout>".into(),
            report,
        }]
    } else {
        let target = PathBuf::from(&output);
        if target.is_dir() {
            anyhow::bail!(
                "{}: is a directory (a directory output is only for an OVA input)",
                target.display()
            );
        }
        if let Opened::File(path, _) = &opened {
            diskconv::staged::refuse_same_file(path, &target)?;
        }
        // Written beside the target and renamed into place only when whole.
        let staged = StagedFile::create(&target, replace)?;
        let format: diskconv::ImageFormat = output_format.into();
        let report =
            convert_opened(opened, format.output(staged.temp()), &opts).with_context(|| name.clone())?;
        staged.commit()?;
        vec![DiskReport {
            input: name,
            output: target.display().to_string(),
            report,
        }]
    };
    summarise(&disks);
    if let Some(path) = report_path.as_ref() {
        write_report(path, &disks)?;
    }
    Ok(())
}

fn convert_opened(opened: Opened, output: Output, opts: &Options) -> Result<Report, diskconv::Error> {
    match opened {
        Opened::File(path, _) => diskconv::convert_path(&path, output, opts),
        Opened::Stream(reader, _) => diskconv::convert_reader(reader, output, opts),
    }
}

/// On SIGINT or SIGTERM, removes the outputs still being written (they are staged files that
/// would otherwise stay behind), then exits as a process killed by that signal would report.
fn remove_unfinished_outputs_on_signals() {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) else {
        return;
    };
    let spawned = thread::Builder::new().name("signals".into()).spawn(move || {
        if let Some(signal) = signals.forever().next() {
            diskconv::staged::remove_all_uncommitted();
            eprintln!("\nvm-import: interrupted; unfinished outputs removed");
            std::process::exit(128 + signal);
        }
    });
    if spawned.is_err() {
        eprintln!("vm-import: warning: cannot watch for signals; an interrupted run may leave a .part file");
    }
}

/// An input, opened far enough to know its format.
enum Opened {
    /// A file: random access allowed.
    File(PathBuf, InputFormat),
    /// A pipe or HTTP body, with the sniffed head put back in front.
    Stream(Box<dyn Read + Send>, InputFormat),
}

impl Opened {
    fn format(&self) -> InputFormat {
        match self {
            Opened::File(_, f) | Opened::Stream(_, f) => *f,
        }
    }
}

/// Opens the input and checks its first bytes against the format the user (`-f`) or its name
/// (`.vmdk`, `.qcow2`, `.ova`) declares.
fn open_input(input: &Input, http: &HttpArgs, declared: Option<DeclaredFormat>) -> anyhow::Result<Opened> {
    let name = input.display();
    let declared = declared.map(Family::from).or_else(|| Family::of_name(&name));
    let check = |format: InputFormat| match declared {
        Some(family) => family.check(format).with_context(|| name.clone()),
        None => Ok(()),
    };
    let mut reader: Box<dyn Read + Send> = match input {
        Input::File(path) => {
            if path.is_dir() {
                anyhow::bail!("{name}: is a directory, not a disk image or OVA");
            }
            let format = diskconv::source::detect_path(path).with_context(|| name.clone())?;
            check(format)?;
            return Ok(Opened::File(path.clone(), format));
        }
        Input::Stdin => Box::new(io::stdin()),
        Input::Url(url) => input::open_url(url, http)?,
    };
    let mut head = Vec::with_capacity(diskconv::source::SNIFF_LEN);
    (&mut reader)
        .take(diskconv::source::SNIFF_LEN as u64)
        .read_to_end(&mut head)
        .with_context(|| format!("{name}: cannot read"))?;
    let format = diskconv::detect(&head);
    check(format)?;
    Ok(Opened::Stream(
        Box::new(io::Cursor::new(head).chain(reader)),
        format,
    ))
}

fn convert_ova(
    opened: Opened,
    name: &str,
    dir: &Path,
    output: (diskconv::ImageFormat, Replace),
    opts: &Options,
    require_manifest: bool,
) -> anyhow::Result<Vec<DiskReport>> {
    if dir.exists() && !dir.is_dir() {
        anyhow::bail!(
            "{}: exists and is not a directory (an OVA converts into a directory)",
            dir.display()
        );
    }
    fs::create_dir_all(dir).with_context(|| format!("cannot create directory {}", dir.display()))?;
    let result = match opened {
        Opened::File(path, _) => archive::convert_ova_file(&path, dir, output, opts, require_manifest),
        Opened::Stream(reader, _) => archive::convert_ova(reader, dir, output, opts, require_manifest),
    }
    .with_context(|| name.to_owned())?;
    let vm_json = dir.join("vm.json");
    let mut json = serde_json::to_vec_pretty(&result.vm)?;
    json.push(b'\n');
    fs::write(&vm_json, json).with_context(|| format!("cannot write {}", vm_json.display()))?;
    match &result.manifest {
        archive::ManifestCheck::Missing => {
            eprintln!(
                "vm-import: warning: {name}: the OVA has no manifest (.mf); member digests were not checked"
            );
        }
        archive::ManifestCheck::Partial { unverified, .. } => eprintln!(
            "vm-import: warning: {name}: the manifest comes after {}; their digests were not checked",
            unverified.join(", ")
        ),
        archive::ManifestCheck::Verified { .. } => {}
    }
    Ok(result
        .disks
        .into_iter()
        .filter_map(|d| {
            let output = d.output?.display().to_string();
            Some(DiskReport {
                input: format!("{name}:{}", d.member),
                output,
                report: d.report?,
            })
        })
        .collect())
}

fn summarise(disks: &[DiskReport]) {
    let mut err = io::stderr().lock();
    for (i, d) in disks.iter().enumerate() {
        let r = &d.report;
        let _ = writeln!(
            err,
            "disk {i}: {} ({}) -> {}: virtual {} bytes, read {} bytes, wrote {} bytes{}, {:.2} s",
            d.input,
            r.format,
            d.output,
            r.virtual_size,
            r.bytes_read,
            r.bytes_written,
            checksum_note(r),
            r.seconds
        );
    }
}

/// `, sha512 <hex>` when the conversion computed a digest, else nothing.
pub(crate) fn checksum_note(report: &diskconv::Report) -> String {
    report
        .checksum
        .as_ref()
        .map(|digest| format!(", {digest}"))
        .unwrap_or_default()
}

fn write_report(path: &Path, disks: &[DiskReport]) -> anyhow::Result<()> {
    let mut json = serde_json::to_vec_pretty(&ReportFile { disks })?;
    json.push(b'\n');
    fs::write(path, json).with_context(|| format!("cannot write report {}", path.display()))
}

pub(crate) fn inspect(args: InspectArgs) -> anyhow::Result<()> {
    let InspectArgs {
        input_format,
        http,
        input,
    } = args;
    let input = Input::parse(&input);
    let name = input.display();
    let opened = open_input(&input, &http, input_format)?;
    let json = match opened {
        Opened::File(path, InputFormat::Ova) => {
            let file = fs::File::open(&path).with_context(|| format!("cannot open {name}"))?;
            serde_json::to_value(archive::inspect_ova(file, false).with_context(|| name.clone())?)?
        }
        Opened::Stream(reader, InputFormat::Ova) => {
            serde_json::to_value(archive::inspect_ova(reader, false).with_context(|| name.clone())?)?
        }
        Opened::File(path, _) => {
            serde_json::to_value(inspect::inspect_path(&path).with_context(|| name.clone())?)?
        }
        Opened::Stream(reader, _) => {
            serde_json::to_value(inspect::inspect_reader(reader).with_context(|| name.clone())?)?
        }
    };
    let mut out = io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, &json)?;
    writeln!(out)?;
    Ok(())
}
