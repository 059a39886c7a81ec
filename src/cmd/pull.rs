//! `envbox pull [IMAGE]`: fill the cache on the volume; print `reference@digest`.

use anyhow::Context;

use super::{outer_subsystem, runtime, warn_all};
use crate::cache::BlobStore;
use crate::cli::PullArgs;
use crate::config::{names, Purpose, Settings};
use crate::progress::{self, Kind};
use crate::registry::{self, ImageRef, RegistryConfig};

pub fn run(args: &PullArgs) -> anyhow::Result<()> {
    let settings = Settings::from_raw(&args.settings, outer_subsystem().as_deref(), Purpose::Pull)?;
    let text = args
        .reference
        .clone()
        .or_else(|| settings.image.clone())
        .with_context(|| format!("no image: give one, or set {}", names::IMAGE))?;
    let reference = ImageRef::parse(&text)?;
    let (config, warnings) = RegistryConfig::from_settings(&settings)?;
    warn_all(warnings);
    let store = BlobStore::open(&settings.state_dir)?;
    let started = std::time::Instant::now();
    let image = runtime()?.block_on(registry::pull(&config, &store, &reference))?;
    warn_all(&image.warnings);
    progress::emit(
        Kind::Info,
        &format!(
            "pulled {reference} ({}) in {:.1} s: {} blob(s) downloaded, {} layer(s)",
            image.manifest_digest,
            started.elapsed().as_secs_f64(),
            image.blobs_downloaded,
            image.layers.len()
        ),
    );
    println!("{}@{}", reference.normalized_repository(), image.digest);
    Ok(())
}
