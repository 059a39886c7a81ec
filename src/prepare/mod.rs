//! Getting an image ready on the volume: verified blobs, then unpacked layer directories.
//!
//! Owns: running a fetch (registry pull or local import, `crate::source`) and the unpacking of its
//! layers side by side: a layer starts unpacking as soon as its download starts (once the config
//! has named its diff ID), following the bytes as they arrive and published only once its blob is
//! verified, or as soon as its blob is verified in the store when it was there already; each layer
//! goes into its own directory keyed by chain ID (reused when already complete), published once
//! the layers below it are. Module `flow` owns that concurrency (which unpack runs when, on which
//! thread). The first failure wins: the other side starts nothing new, and what is in flight
//! (transfers, unpacks) finishes, so no staging file or directory is left being written and no
//! layer directory is ever half-complete (see `crate::unpack`). Both `envbox docker` and `envbox
//! prepare` call [`prepare`]. It never mounts and never writes outside the state directory.

mod flow;

use std::path::PathBuf;
use std::time::Instant;

use crate::cache::{BlobStore, CacheError};
use crate::image::ImageConfig;
use crate::image::{ImageRef, PulledImage, PulledLayer};
use crate::registry::RegistryConfig;
use crate::room::Need;
use crate::source::{self, Fetched, ImageSource, SourceError};
use crate::unpack::{LayerSource, LayerStore, Limits, UnpackError, UnpackReport};
pub use flow::unpack_all;

/// An image whose layers are all unpacked.
#[derive(Debug, Clone)]
pub struct PreparedImage {
    /// The image as fetched (manifest, config, layer blobs).
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
    /// The store the blobs are in: blobs downloaded now are not on disk yet, until
    /// [`PreparedImage::sync`] (crash-safe meanwhile, see `crate::cache`).
    pub blobs: BlobStore,
    /// The store the layers are in: layers unpacked now are not on disk yet either, until
    /// [`PreparedImage::sync`] (see `crate::unpack`).
    pub store: LayerStore,
    /// Non-fatal problems met, for the log.
    pub warnings: Vec<String>,
    /// The shared hold on the volume's store of the process that prepared it, when it took
    /// one (`crate::prune::hold_for_preparing`): no cleanup runs until every clone is gone.
    pub hold: Option<std::sync::Arc<crate::lock::Held>>,
}

/// What [`PreparedImage::sync`] made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Synced {
    pub blobs: usize,
    pub layers: usize,
}

impl PreparedImage {
    /// Makes the blobs and layers this boot wrote to the volume durable (both stores are on
    /// the state directory's filesystem: the first `syncfs` does the writing).
    pub(crate) fn sync(&self) -> Result<Synced, PrepareError> {
        Ok(Synced {
            blobs: self.blobs.sync()?,
            layers: self.store.sync()?,
        })
    }
}

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each variant's #[error] message documents it
pub enum PrepareError {
    #[error(transparent)]
    Fetch(#[from] SourceError),
    #[error(transparent)]
    Unpack(#[from] UnpackError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// The volume was full (told by the error's kind, `crate::room::is_full`); `need` is what
    /// the image still needed, when the fetch got as far as telling.
    #[error("{source}")]
    Full {
        need: Option<Need>,
        source: Box<PrepareError>,
    },
}

impl PrepareError {
    /// `self`, as [`PrepareError::Full`] when the volume was full.
    fn told_full(self, need: Option<Need>) -> PrepareError {
        match crate::room::is_full(&self) {
            true => PrepareError::Full {
                need,
                source: Box::new(self),
            },
            false => self,
        }
    }
}

/// A layer as an unpack source.
fn layer_source(blobs: &BlobStore, layer: &PulledLayer) -> LayerSource {
    LayerSource {
        blob: blobs.path(&layer.digest),
        compression: layer.compression,
        digest: layer.digest.clone(),
        diff_id: layer.diff_id.clone(),
    }
}

/// The layers of a pulled image as unpack sources.
pub(crate) fn layer_sources(blobs: &BlobStore, pulled: &PulledImage) -> Vec<LayerSource> {
    pulled
        .layers
        .iter()
        .map(|layer| layer_source(blobs, layer))
        .collect()
}

/// Fetches `source` (blobs already cached are not fetched again) and unpacks its layers, each
/// as soon as its blob is in the store. Before the layers of a registry pull download, says in
/// the progress log when what the image needs will not fit in the free space; a full volume is
/// [`PrepareError::Full`].
pub async fn prepare(
    config: &RegistryConfig,
    blobs: &BlobStore,
    layers: &LayerStore,
    source: &ImageSource,
    limits: &Limits,
) -> Result<PreparedImage, PrepareError> {
    let need = std::sync::Arc::new(std::sync::Mutex::new(None));
    let planned = {
        let (need, store, state_dir) = (need.clone(), layers.clone(), blobs.root().to_owned());
        move |image_layers: &[PulledLayer], download: u64| {
            let estimate = Need::of(image_layers, download, &store);
            if let Some(line) = crate::room::will_not_fit(&state_dir, &estimate) {
                crate::progress::emit(crate::progress::Kind::Info, &line);
            }
            *need.lock().unwrap_or_else(|p| p.into_inner()) = Some(estimate);
        }
    };
    prepare_planned(config, blobs, layers, source, limits, planned)
        .await
        .map_err(|e| e.told_full(*need.lock().unwrap_or_else(|p| p.into_inner())))
}

async fn prepare_planned(
    config: &RegistryConfig,
    blobs: &BlobStore,
    layers: &LayerStore,
    source: &ImageSource,
    limits: &Limits,
    planned: impl Fn(&[PulledLayer], u64) + Send + Sync + 'static,
) -> Result<PreparedImage, PrepareError> {
    let begun = Instant::now();
    // A volume on overlayfs gets no layer directories (see `overlay::on_overlayfs`): only the
    // blobs, from which each start flattens a copy.
    let unpack_layers = !crate::overlay::on_overlayfs(blobs.root());
    let (feed, flow) = flow::start(blobs, layers, limits, begun, unpack_layers);
    let feed = feed.with_planned(planned);
    let fetched = source::fetch(source, config, blobs, &feed).await;
    let unpacked = flow.finish(feed).await;
    let mut reports: Vec<Option<UnpackReport>> = Vec::new();
    let mut unpack_error = None;
    for (index, result) in unpacked.results {
        match result {
            Ok(report) => {
                if reports.len() <= index {
                    reports.resize(index + 1, None);
                }
                reports[index] = Some(report);
            }
            Err(error) => {
                unpack_error.get_or_insert(error);
            }
        }
    }
    let Fetched {
        image: pulled,
        names,
    } = match (fetched, unpack_error) {
        (_, Some(error)) if unpacked.failed_first => return Err(error.into()),
        (Err(error), _) => return Err(error.into()),
        (Ok(_), Some(error)) => return Err(error.into()),
        (Ok(fetched), None) => fetched,
    };
    let sources = layer_sources(blobs, &pulled);
    reports.resize(sources.len(), None);
    // Every layer was handed over by a fetch that succeeded; should one not have been, it is
    // unpacked now rather than left out.
    let left: Vec<(usize, LayerSource)> = reports
        .iter()
        .enumerate()
        .filter(|(_, r)| r.is_none())
        .map(|(i, _)| (i, sources[i].clone()))
        .collect();
    if unpack_layers && !left.is_empty() {
        // The whole image: a layer is published onto the layers below it (complete ones are
        // reused at once).
        let (store, limits, all) = (layers.clone(), *limits, sources.clone());
        let done = tokio::task::spawn_blocking(move || unpack_all(&store, &all, &limits))
            .await
            .unwrap_or_else(|join| std::panic::resume_unwind(join.into_panic()))?;
        for (index, _) in &left {
            reports[*index] = done.get(*index).cloned();
        }
    }
    let diff_ids: Vec<_> = sources.iter().map(|s| s.diff_id.clone()).collect();
    let mut warnings = pulled.warnings.clone();
    if !unpack_layers {
        warnings.push(format!(
            "{} is on overlayfs, which cannot hold the layers' whiteouts: the layers are not unpacked ahead, and each start makes a flattened copy of the image from its blobs (slower; a volume on another filesystem avoids it)",
            blobs.root().display()
        ));
    }
    Ok(PreparedImage {
        layer_dirs: match unpack_layers {
            true => layers.image_layer_dirs(&diff_ids),
            false => Vec::new(),
        },
        config: pulled.config.config.clone().unwrap_or_default(),
        layers_unpacked: reports.iter().flatten().filter(|r| !r.reused).count(),
        warnings: warnings
            .into_iter()
            .chain(reports.into_iter().flatten().flat_map(|r| r.warnings))
            .collect(),
        sources,
        pulled,
        names,
        blobs: blobs.clone(),
        store: layers.clone(),
        hold: None,
    })
}
