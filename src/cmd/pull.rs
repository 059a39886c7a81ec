//! `envbox pull [IMAGE]`: fill the cache on the volume (from a registry, or imported from a
//! local layout or archive); print `reference@digest`.

use anyhow::Context;

use super::{outer_subsystem, printable, runtime, warn_all, ImageCache};
use crate::cli::PullArgs;
use crate::config::{names, Purpose, Settings};
use crate::progress::{self, Kind};
use crate::source::ImageSource;

pub(crate) fn run(args: &PullArgs) -> anyhow::Result<()> {
    let settings = Settings::from_raw(
        &args.settings(),
        outer_subsystem().as_deref(),
        Purpose::Pull,
    )?;
    let text = args
        .reference
        .clone()
        .or_else(|| settings.image.clone())
        .with_context(|| format!("no image: give one, or set {}", names::IMAGE))?;
    let source = ImageSource::parse(&text)?;
    let cache = ImageCache::open(&settings)?;
    let started = std::time::Instant::now();
    let fetched = runtime()?.block_on(cache.fetch(&source))?;
    // The cache a pull fills is meant to outlive the machine: on disk before the exit.
    cache.blobs.sync()?;
    let image = &fetched.image;
    warn_all(&image.warnings);
    progress::emit(
        Kind::Info,
        &format!(
            "pulled {source} ({}) in {:.1} s: {} blob(s) {}, {} layer(s)",
            image.manifest_digest,
            started.elapsed().as_secs_f64(),
            image.blobs_downloaded,
            match source {
                ImageSource::Registry(_) => "downloaded",
                ImageSource::Local(_) => "imported",
            },
            image.layers.len()
        ),
    );
    println!("{}", printable(&source, &fetched.names, &image.digest));
    Ok(())
}
