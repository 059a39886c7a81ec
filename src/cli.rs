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
    /// Pull an image into the cache on the volume (ahead of time, to warm it); prints its digest.
    Pull(PullArgs),
    /// Pull and unpack the image into the cache on the volume, so `envbox docker` starts without
    /// network; with --output, also write an OCI runtime bundle `runc run` can start.
    Prepare(PrepareArgs),
    /// Inspect or clean the image cache.
    #[command(subcommand)]
    Cache(CacheCommand),
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// The image [default: --image / CODER_INNER_IMAGE].
    #[arg(value_name = "IMAGE")]
    pub reference: Option<String>,

    #[command(flatten)]
    pub settings: RawSettings,
}

#[derive(Debug, Args)]
pub struct PrepareArgs {
    /// Also write an OCI runtime bundle (config.json + flattened rootfs/) into this directory
    /// (absent or empty), and apply the host setup its spec relies on.
    #[arg(long, value_name = "DIR")]
    pub output: Option<PathBuf>,

    #[command(flatten)]
    pub settings: RawSettings,
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// List cached blobs and which references they were pulled for.
    Ls(CacheArgs),
    /// Remove blobs not used by the current image (--image / CODER_INNER_IMAGE).
    Prune(CacheArgs),
}

#[derive(Debug, Args)]
pub struct CacheArgs {
    #[command(flatten)]
    pub settings: RawSettings,
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
