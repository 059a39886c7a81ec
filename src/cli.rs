//! The command line: `envbox docker` (alias `run`), `envbox spec`.
//!
//! Owns: the shape of the commands and their flags. Settings shared by all commands come from
//! [`RawSettings`]; this module adds only per-command flags. It parses nothing beyond text.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::RawSettings;

#[derive(Debug, Parser)]
#[command(
    name = "envbox",
    version,
    about = "Runs one unprivileged system container (sysbox) as a Kubernetes pod's entrypoint, without dockerd",
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the workspace container (the pod's entrypoint; compatible with the Go envbox).
    #[command(visible_alias = "run")]
    Docker(DockerArgs),
    /// Print the OCI runtime spec `envbox docker` would hand to the runtime. No side effects.
    Spec(SpecArgs),
}

#[derive(Debug, Args)]
pub struct DockerArgs {
    #[command(flatten)]
    pub settings: RawSettings,
}

#[derive(Debug, Args)]
pub struct SpecArgs {
    /// The unpacked root filesystem of the image.
    #[arg(long, value_name = "DIR")]
    pub rootfs: PathBuf,

    /// The image configuration JSON (the blob the manifest's `config` points to).
    #[arg(long, value_name = "FILE")]
    pub image_config: Option<PathBuf>,

    /// Print secret values (the agent token) instead of `<redacted>`.
    #[arg(long)]
    pub show_secrets: bool,

    /// Also print, on stderr, the host setup actions the spec relies on.
    #[arg(long)]
    pub show_actions: bool,

    #[command(flatten)]
    pub settings: RawSettings,
}
