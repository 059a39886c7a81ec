//! The commands: each turns parsed arguments into calls of the pipeline stages.
//!
//! Owns: wiring and top-level context (which command, which file) on errors. No stage logic
//! lives here.

mod cache;
mod docker;
mod prepare;
mod pull;
mod spec;

use crate::cache::BlobStore;
use crate::cli::{Cli, Command};
use crate::config::{names, Settings};
use crate::digest::Digest;
use crate::prepare::PreparedImage;
use crate::progress::{self, Kind};
use crate::registry::{ImageRef, RegistryConfig};
use crate::source::ImageSource;
use crate::unpack::{LayerStore, Limits};

/// The outer `CODER_AGENT_SUBSYSTEM` (env only, as in the Go envbox).
fn outer_subsystem() -> Option<String> {
    std::env::var(names::AGENT_SUBSYSTEM.env).ok()
}

/// Logs each warning as an info progress line.
fn warn_all<W: std::fmt::Display>(warnings: impl IntoIterator<Item = W>) {
    for warning in warnings {
        progress::emit(Kind::Info, &format!("warning: {warning}"));
    }
}

/// `source` fetched and unpacked into the cache on the volume of `settings`, warnings logged.
fn prepare_image(settings: &Settings, source: &ImageSource) -> anyhow::Result<PreparedImage> {
    let (config, warnings) = RegistryConfig::from_settings(settings)?;
    warn_all(warnings);
    let blobs = BlobStore::open(&settings.state_dir)?;
    let layers = LayerStore::open(&settings.state_dir)?;
    let prepared = runtime()?.block_on(crate::prepare::prepare(
        &config,
        &blobs,
        &layers,
        source,
        &Limits::default(),
    ))?;
    warn_all(&prepared.warnings);
    Ok(prepared)
}

/// What `pull` and `prepare` print for scripts: `repository@digest` of the first reference
/// the image is known by, else the `--image` text a later run must repeat.
fn printable(source: &ImageSource, names: &[ImageRef], digest: &Digest) -> String {
    match names.first() {
        Some(reference) => format!("{}@{digest}", reference.normalized_repository()),
        None => source.to_string(),
    }
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
