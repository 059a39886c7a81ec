//! The commands: each turns parsed arguments into calls of the pipeline stages.
//!
//! Owns: wiring and top-level context (which command, which file) on errors. No stage logic
//! lives here.

mod cache;
mod docker;
mod prepare;
mod pull;
mod spec;

use crate::cli::{Cli, Command};
use crate::config::names;

/// The outer `CODER_AGENT_SUBSYSTEM` (env only, as in the Go envbox).
fn outer_subsystem() -> Option<String> {
    std::env::var(names::AGENT_SUBSYSTEM.env).ok()
}

/// A multi-threaded runtime for the commands that do network I/O.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Runs the command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Docker(args) => docker::run(&args),
        Command::Spec(args) => spec::run(&args),
        Command::Pull(args) => pull::run(&args),
        Command::Prepare(args) => prepare::run(&args),
        Command::Cache(command) => cache::run(&command),
    }
}
