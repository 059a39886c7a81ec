//! The commands: each turns parsed arguments into calls of the pipeline stages.
//!
//! Owns: wiring and top-level context (which command, which file) on errors. No stage logic
//! lives here.

mod docker;
mod spec;

use crate::cli::{Cli, Command};
use crate::config::names;

/// The outer `CODER_AGENT_SUBSYSTEM` (env only, as in the Go envbox).
fn outer_subsystem() -> Option<String> {
    std::env::var(names::AGENT_SUBSYSTEM.env).ok()
}

/// Runs the command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Docker(args) => docker::run(&args),
        Command::Spec(args) => spec::run(&args),
    }
}
