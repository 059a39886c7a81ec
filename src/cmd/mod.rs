//! The commands: each turns parsed arguments into calls of the pipeline stages.
//!
//! Owns: wiring and top-level context (which command, which file) on errors. No stage logic
//! lives here.

mod cache;
mod docker;
mod image_cache;
mod prepare;
mod pull;
mod spec;

use crate::cli::{Cli, Command};
use crate::config::{names, Settings};
use crate::digest::Digest;
use crate::image::ImageRef;
use crate::prepare::PreparedImage;
use crate::source::ImageSource;

/// The outer `CODER_AGENT_SUBSYSTEM` (env only, as in the Go envbox).
fn outer_subsystem() -> Option<String> {
    std::env::var(names::AGENT_SUBSYSTEM.env).ok()
}

use crate::progress::mb;
use crate::progress::warn_all;
use image_cache::ImageCache;

/// `source` fetched and unpacked into the cache on the volume of `settings`, warnings logged.
/// With `sync`, the blobs fetched and layers unpacked now are on disk when this returns: a
/// prepared volume may be moved to another machine, where an unsynced blob would have to be
/// fetched again and an unsynced layer unpacked again.
fn prepare_image(
    settings: &Settings,
    source: &ImageSource,
    sync: bool,
) -> anyhow::Result<PreparedImage> {
    let cache = ImageCache::open(settings)?;
    let prepared = runtime()?.block_on(cache.prepare(source))?;
    if sync {
        prepared.sync()?;
    }
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
