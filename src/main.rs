//! The `envbox` binary: parse the command line, run the command, report a fatal error.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

use envbox::cli::{Cli, Command};
use envbox::progress::{self, Kind};

/// Kubernetes shows this file's content as the pod's termination message.
const TERMINATION_LOG: &str = "/dev/termination-log";

/// `envbox docker --debug` / `CODER_DEBUG` (the Go envbox's): read before the log starts.
fn debug_requested(cli: &Cli) -> anyhow::Result<bool> {
    match &cli.command {
        Command::Docker(args) => Ok(envbox::config::debug_requested(&args.settings())?),
        _ => Ok(false),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let is_entrypoint = matches!(cli.command, Command::Docker(_));
    let result = debug_requested(&cli)
        .and_then(|debug| Ok(envbox::logging::init(debug)?))
        .and_then(|()| envbox::cmd::run(cli));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let message = progress::render_error(&error);
            if is_entrypoint {
                progress::emit(Kind::Error, &message);
                if let Ok(mut log) = std::fs::OpenOptions::new()
                    .write(true)
                    .open(TERMINATION_LOG)
                {
                    let _ = log.write_all(message.as_bytes());
                }
            } else {
                eprintln!("envbox: error: {message}");
            }
            ExitCode::FAILURE
        }
    }
}
