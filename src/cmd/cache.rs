//! `envbox cache ls` and `envbox cache prune`.

use std::collections::BTreeSet;

use super::{outer_subsystem, runtime};
use crate::cache::BlobStore;
use crate::cli::{CacheCommand, LsArgs, PruneArgs};
use crate::config::{names, Purpose, RawSettings, Settings};
use crate::digest::Digest;
use crate::registry::{self, RegistryConfig};
use crate::source::ImageSource;
use crate::unpack::LayerStore;

fn open(raw: &RawSettings) -> anyhow::Result<(Settings, BlobStore)> {
    let settings = Settings::from_raw(raw, outer_subsystem().as_deref(), Purpose::Pull)?;
    let store = BlobStore::open(&settings.state_dir)?;
    Ok((settings, store))
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

pub fn run(command: &CacheCommand) -> anyhow::Result<()> {
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
    let (settings, store) = open(&args.settings())?;
    let text = settings.image.clone().ok_or_else(|| {
        anyhow::anyhow!(
            "{} is required: prune keeps the blobs of that image",
            names::IMAGE
        )
    })?;
    let reference = match ImageSource::parse(&text)? {
        ImageSource::Registry(reference) => reference,
        ImageSource::Local(_) => anyhow::bail!(
            "cache prune keeps the blobs of an image reference; {text} is a local image: name the reference it was recorded as (envbox cache ls lists them)"
        ),
    };
    let (config, _) = RegistryConfig::from_settings(&settings)?;
    let cached = runtime()?.block_on(registry::cached_blobs(&config, &store, &reference))?;
    let keep: BTreeSet<Digest> = cached.blobs.into_iter().collect();
    let keep_layers: BTreeSet<Digest> = cached.diff_ids.into_iter().collect();
    let mut freed = 0;
    let mut removed = 0;
    for blob in store.list()? {
        if !keep.contains(&blob.digest) {
            store.remove(&blob.digest)?;
            freed += blob.size;
            removed += 1;
        }
    }
    let layers = LayerStore::open(&settings.state_dir)?;
    let mut layers_removed = 0;
    for diff_id in layers.list()? {
        if !keep_layers.contains(&diff_id) {
            layers.remove(&diff_id)?;
            layers_removed += 1;
        }
    }
    println!(
        "removed {removed} blob(s) ({}) and {layers_removed} unpacked layer(s); kept {} blob(s) and {} layer(s) of {reference}",
        mb(freed),
        keep.len(),
        keep_layers.len()
    );
    Ok(())
}
