//! Getting an image ready on the volume: verified blobs, then unpacked layer directories.
//!
//! Owns: the order fetch (registry pull or local import, `crate::source`) -> unpack, and
//! unpacking an image's layers in parallel (one thread per
//! core, each layer into its own directory keyed by diff ID, reused when already complete).
//! Both `envbox docker` and `envbox prepare` call [`prepare`]. It never mounts and never writes
//! outside the state directory.

use std::path::PathBuf;
use std::sync::Mutex;

use crate::cache::BlobStore;
use crate::image::ImageConfig;
use crate::registry::{ImageRef, PulledImage, RegistryConfig};
use crate::source::{self, Fetched, ImageSource, SourceError};
use crate::unpack::{LayerSource, LayerStore, Limits, UnpackError, UnpackReport};

/// An image whose layers are all unpacked.
#[derive(Debug, Clone)]
pub struct PreparedImage {
    pub pulled: PulledImage,
    /// The references the image is known by in the store (see [`Fetched::names`]).
    pub names: Vec<ImageRef>,
    /// The layers' sources, bottom first (blob path, compression, digests).
    pub sources: Vec<LayerSource>,
    /// The unpacked layer directories, bottom first.
    pub layer_dirs: Vec<PathBuf>,
    /// The image's run configuration (Env, WorkingDir, ...).
    pub config: ImageConfig,
    /// Layers unpacked now (the rest were reused).
    pub layers_unpacked: usize,
    pub warnings: Vec<String>,
}

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error(transparent)]
    Fetch(#[from] SourceError),
    #[error(transparent)]
    Unpack(#[from] UnpackError),
}

/// The layers of a pulled image as unpack sources.
pub fn layer_sources(blobs: &BlobStore, pulled: &PulledImage) -> Vec<LayerSource> {
    pulled
        .layers
        .iter()
        .map(|layer| LayerSource {
            blob: blobs.path(&layer.digest),
            compression: layer.compression,
            digest: layer.digest.clone(),
            diff_id: layer.diff_id.clone(),
        })
        .collect()
}

/// Unpacks every source not yet complete, up to one thread per core. The first error wins;
/// layers already finished stay (they are complete and verified).
pub fn unpack_all(
    layers: &LayerStore,
    sources: &[LayerSource],
    limits: &Limits,
) -> Result<Vec<UnpackReport>, UnpackError> {
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(sources.len().max(1));
    let next = Mutex::new(0usize);
    let results: Mutex<Vec<Option<Result<UnpackReport, UnpackError>>>> =
        Mutex::new((0..sources.len()).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let index = {
                    let mut n = next.lock().unwrap_or_else(|p| p.into_inner());
                    let i = *n;
                    *n += 1;
                    i
                };
                let Some(source) = sources.get(index) else {
                    break;
                };
                let result = layers.unpack(source, limits);
                let failed = result.is_err();
                results.lock().unwrap_or_else(|p| p.into_inner())[index] = Some(result);
                if failed {
                    // Let the other threads stop taking new layers.
                    *next.lock().unwrap_or_else(|p| p.into_inner()) = sources.len();
                }
            });
        }
    });
    let results = results.into_inner().unwrap_or_else(|p| p.into_inner());
    let mut reports = Vec::with_capacity(results.len());
    for result in results.into_iter().flatten() {
        reports.push(result?);
    }
    Ok(reports)
}

/// Fetches `source` (blobs already cached are not fetched again) and unpacks its layers.
pub async fn prepare(
    config: &RegistryConfig,
    blobs: &BlobStore,
    layers: &LayerStore,
    source: &ImageSource,
    limits: &Limits,
) -> Result<PreparedImage, PrepareError> {
    let Fetched {
        image: pulled,
        names,
    } = source::fetch(source, config, blobs).await?;
    let sources = layer_sources(blobs, &pulled);
    let (store, work, lim) = (layers.clone(), sources.clone(), *limits);
    let reports = tokio::task::spawn_blocking(move || unpack_all(&store, &work, &lim))
        .await
        .unwrap_or_else(|join| std::panic::resume_unwind(join.into_panic()))?;
    Ok(PreparedImage {
        layer_dirs: sources.iter().map(|s| layers.path(&s.diff_id)).collect(),
        config: pulled.config.config.clone().unwrap_or_default(),
        layers_unpacked: reports.iter().filter(|r| !r.reused).count(),
        warnings: pulled
            .warnings
            .iter()
            .cloned()
            .chain(reports.into_iter().flat_map(|r| r.warnings))
            .collect(),
        sources,
        pulled,
        names,
    })
}
