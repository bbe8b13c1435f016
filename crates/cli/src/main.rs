//! `vm-import`: one binary for the controller, the local disk tools and the source tools.
//!
//! Parsing lives in [`cli`]; each subcommand's behaviour lives in its own crate or module
//! (`convert` and `inspect` in [`disk`]).
//!
//! Exit codes: 0 success; 1 bad or unsupported input, or a failed conversion (the message names
//! the file and the byte offset or element); 2 usage errors; 3 `vsphere assess` found a Critical
//! concern. A panic (101) is a bug.

mod assess;
mod cli;
mod controller_cmd;
mod disk;
mod input;
mod openstack_cmd;
mod progress;
mod tls_args;
mod vsphere_cmd;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

/// Exit code for bad input or a failed operation.
const EXIT_FAILURE: u8 = 1;
/// Exit code for usage errors (clap uses the same).
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Convert(args) => disk::convert(args),
        Command::Inspect(args) => disk::inspect(args),
        Command::Controller(args) => controller_cmd::run(args),
        Command::Vsphere(command) => vsphere_cmd::run(command),
        Command::Openstack(command) => openstack_cmd::run(command),
        Command::Crds => print_crds(),
        Command::Completion { shell } => {
            print_completion(shell);
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<assess::CriticalFound>().is_some() => {
            eprintln!("vm-import: {e}");
            ExitCode::from(assess::EXIT_CRITICAL)
        }
        Err(e) if e.downcast_ref::<disk::UsageError>().is_some() => {
            eprintln!("vm-import: usage error: {e}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(e) => {
            eprintln!("vm-import: error: {e:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// `vm-import completion SHELL`: the completion script clap derives from the grammar in [`cli`].
fn print_completion(shell: clap_complete::Shell) {
    use clap::CommandFactory;
    let mut command = Cli::command();
    clap_complete::generate(shell, &mut command, "vm-import", &mut std::io::stdout());
}

/// `vm-import crds`: the migration.harvesterhci.io CRDs, exactly as checked into `deploy/crds`.
fn print_crds() -> anyhow::Result<()> {
    use std::io::Write;
    std::io::stdout().lock().write_all(api::crds_yaml().as_bytes())?;
    Ok(())
}
