//! The `envbox` binary: parse the command line, run the command, report a fatal error.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

use envbox::cli::{Cli, Command};
use envbox::progress::{self, Kind};

/// Kubernetes shows this file's content as the pod's termination message.
const TERMINATION_LOG: &str = "/dev/termination-log";

/// The error and its causes, each said once: many of our errors already name their cause in
/// their own message, so a cause whose text is already there is skipped.
fn render(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let part = cause.to_string();
        if !text.contains(&part) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&part);
        }
    }
    text
}

fn main() -> ExitCode {
    // While the process has one thread: it sets an environment variable.
    envbox::registry::pin_system_bundle();
    let cli = Cli::parse();
    let is_entrypoint = matches!(cli.command, Command::Docker(_));
    match envbox::cmd::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let message = render(&error);
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
