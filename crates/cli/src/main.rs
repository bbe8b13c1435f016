//! `vm-import`: one binary for the controller, the local disk tools and the source tools.
//!
//! Parsing lives in [`cli`]; each subcommand's behaviour lives in its own crate. Commands whose
//! issue has not landed yet say so and exit 2, so scripts never mistake them for success.

mod cli;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

/// Exit code for a command that exists in the plan but is not implemented in this build.
const EXIT_NOT_IMPLEMENTED: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let name = match cli.command {
        Command::Controller(_) => "controller",
        Command::Convert(_) => "convert",
        Command::Inspect(_) => "inspect",
        Command::Vsphere(_) => "vsphere",
        Command::Openstack(_) => "openstack",
        Command::Crds => "crds",
    };
    eprintln!("vm-import {name}: not yet implemented in this build");
    ExitCode::from(EXIT_NOT_IMPLEMENTED)
}
