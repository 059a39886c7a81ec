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
use crate::image::ImageRef;
use crate::prepare::PreparedImage;
use crate::registry::RegistryConfig;
use crate::source::ImageSource;
use crate::unpack::{LayerStore, Limits};

/// The outer `CODER_AGENT_SUBSYSTEM` (env only, as in the Go envbox).
fn outer_subsystem() -> Option<String> {
    std::env::var(names::AGENT_SUBSYSTEM.env).ok()
}

use crate::progress::warn_all;

/// The image cache on the volume of some settings, with the registry configuration to fill it.
#[derive(Clone)]
struct ImageCache {
    config: RegistryConfig,
    blobs: BlobStore,
    layers: LayerStore,
    /// `ENVBOX_KEEP_IMAGES`.
    keep_images: usize,
}

impl ImageCache {
    /// Opens the cache under `settings.state_dir`; registry warnings logged.
    fn open(settings: &Settings) -> anyhow::Result<ImageCache> {
        let (config, warnings) = RegistryConfig::from_settings(settings)?;
        warn_all(warnings);
        Ok(ImageCache {
            config,
            blobs: BlobStore::open(&settings.state_dir)?,
            layers: LayerStore::open(&settings.state_dir)?,
            keep_images: settings.keep_images,
        })
    }

    /// `source` fetched and unpacked into the cache, warnings logged; no cleanup runs while
    /// the result (or a clone) lives (see [`PreparedImage::hold`]).
    async fn prepare(&self, source: &ImageSource) -> anyhow::Result<PreparedImage> {
        crate::memory::keep_freed_memory();
        let hold = self.hold().await?;
        let mut prepared = crate::prepare::prepare(
            &self.config,
            &self.blobs,
            &self.layers,
            source,
            &Limits::default(),
        )
        .await?;
        self.used(&prepared.names, &prepared.pulled.digest)?;
        prepared.hold = Some(std::sync::Arc::new(hold));
        warn_all(&prepared.warnings);
        Ok(prepared)
    }

    /// `source`'s blobs fetched into the cache (no unpack).
    async fn fetch(&self, source: &ImageSource) -> anyhow::Result<crate::source::Fetched> {
        let _hold = self.hold().await?;
        let fetched = crate::source::fetch(
            source,
            &self.config,
            &self.blobs,
            &crate::registry::LayerFeed::default(),
        )
        .await?;
        self.used(&fetched.names, &fetched.image.digest)?;
        Ok(fetched)
    }

    /// The shared hold on the store a preparing process keeps (see `crate::prune`).
    async fn hold(&self) -> anyhow::Result<crate::lock::Held> {
        let blobs = self.blobs.clone();
        Ok(tokio::task::spawn_blocking(move || crate::prune::hold_for_preparing(&blobs)).await??)
    }

    /// Records the use of the image `digest` known by `names` (what the cleanup rule orders
    /// images by).
    fn used(&self, names: &[ImageRef], digest: &Digest) -> anyhow::Result<()> {
        for name in names {
            self.blobs.used(&name.normalized(), digest)?;
        }
        Ok(())
    }

    /// Removes what the cleanup rule does not keep (see `crate::prune`); `current`: what the
    /// current image keeps, else the most recently used image is current.
    async fn prune(
        &self,
        current: Option<crate::prune::Kept>,
    ) -> Result<crate::prune::Pruned, crate::prune::PruneError> {
        crate::prune::prune(
            &self.config,
            &self.blobs,
            &self.layers,
            current,
            self.keep_images,
        )
        .await
    }
}

/// `bytes` in MB, for messages.
fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

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
