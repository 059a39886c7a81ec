//! `envbox cache ls` and `envbox cache prune` (the cleanup rule of `crate::prune`, with the
//! `--image` given as the current image).

use super::{mb, outer_subsystem, runtime, ImageCache};
use crate::cache::BlobStore;
use crate::cli::{CacheCommand, LsArgs, PruneArgs};
use crate::config::{names, Purpose, RawSettings, Settings};
use crate::prune;
use crate::source::ImageSource;

fn open(raw: &RawSettings) -> anyhow::Result<(Settings, BlobStore)> {
    let settings = Settings::from_raw(raw, outer_subsystem().as_deref(), Purpose::Pull)?;
    let store = BlobStore::open(&settings.state_dir)?;
    Ok((settings, store))
}

pub(crate) fn run(command: &CacheCommand) -> anyhow::Result<()> {
    match command {
        CacheCommand::Ls(args) => ls(args),
        CacheCommand::Prune(args) => prune(args),
    }
}

fn ls(args: &LsArgs) -> anyhow::Result<()> {
    let (settings, store) = open(&args.settings())?;
    let blobs = store.list()?;
    for (reference, digest) in store.pins()? {
        println!("pin  {reference} -> {digest}");
    }
    for blob in &blobs {
        println!("blob {} {:>12}", blob.digest, blob.size);
    }
    let total: u64 = blobs.iter().map(|b| b.size).sum();
    println!(
        "{} blob(s), {} in {}",
        blobs.len(),
        mb(total),
        settings.state_dir.display()
    );
    Ok(())
}

fn prune(args: &PruneArgs) -> anyhow::Result<()> {
    let settings = Settings::from_raw(
        &args.settings(),
        outer_subsystem().as_deref(),
        Purpose::Pull,
    )?;
    let cache = ImageCache::open(&settings)?;
    let runtime = runtime()?;
    let current = match &settings.image {
        None => None,
        Some(text) => {
            let reference = match ImageSource::parse(text)? {
                ImageSource::Registry(reference) => reference,
                ImageSource::Local(_) => anyhow::bail!(
                    "cache prune keeps the blobs of an image reference; {text} is a local image: name the reference it was recorded as (envbox cache ls lists them)"
                ),
            };
            let digest = match reference.digest() {
                Some(digest) => Some(digest),
                None => cache.blobs.pinned(&reference.normalized())?,
            };
            let kept = match &digest {
                Some(digest) => runtime.block_on(prune::of_image(
                    &cache.config,
                    &cache.blobs,
                    &cache.layers,
                    &reference,
                    digest,
                ))?,
                None => None,
            };
            // With a node cache the volume has the pin only: that is what the rule keeps there.
            let kept = match (kept, &digest, &cache.node) {
                (None, Some(digest), Some(_)) => Some(prune::Kept {
                    images: [digest.clone()].into(),
                    ..prune::Kept::default()
                }),
                (kept, _, _) => kept,
            };
            let Some(kept) = kept else {
                anyhow::bail!(
                    "{} {reference} is not in the cache (envbox cache ls lists what is): pull it first, or leave {} unset to keep the most recently used image",
                    names::IMAGE,
                    names::IMAGE
                );
            };
            Some(kept)
        }
    };
    let cleaned_up = runtime.block_on(cache.clean_up(current, false))?;
    println!("{}", cleaned_up.summary(cache.keep_images));
    Ok(())
}
