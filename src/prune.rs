//! What stays in the image cache on the volume, and removing the rest.
//!
//! Owns: the cleanup rule. Kept: the current image and the `keep_images` (`ENVBOX_KEEP_IMAGES`)
//! most recently used other images, by their pins' last use (`crate::cache`'s pins), each with
//! every blob of it in the store (manifests, config, layers, found offline) and its layer
//! directories (named by the layer store, `LayerStore::image_layer_dirs`); and every layer directory
//! a mounted overlay rootfs uses (`crate::overlay::layers_in_use`, read from its lower links: a
//! workspace whose envbox died still has its layers). Removed: every other blob, layer
//! directory and pin, and the lock files (`crate::lock`). Without a current image, the most
//! recently used one is current.
//!
//! Who waits for whom: a cleanup holds the volume's `store` lock exclusively, every process
//! preparing an image holds it shared until that image is in use (its overlay mounted, or the
//! command done), so a cleanup never removes what another process is fetching, unpacking or
//! about to mount, and waits for it with a progress line. A workspace in another mount namespace
//! (another pod sharing the volume) is not seen; its image is kept only by the rule (the
//! Kubernetes manifests never run two pods on one volume: `Recreate`). It never fetches.
//!
//! With a node cache ([`Content::Elsewhere`]) the rule applies to the pins only: the blobs and
//! layers the volume holds are from before the node cache, used by no image, and go.

use std::collections::BTreeSet;
use std::path::PathBuf;

use crate::cache::{BlobStore, CacheError};
use crate::digest::Digest;
use crate::image::ImageRef;
use crate::lock::{Held, LockError, Mode};
use crate::overlay::OverlayError;
use crate::prepare::PreparedImage;
use crate::registry::{self, RegistryConfig, RegistryError};
use crate::unpack::{LayerStore, UnpackError};

/// The lock a cleanup holds exclusively and preparers hold shared.
pub const STORE_LOCK: &str = "store";

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    #[error("cleaning up the image cache: {0}")]
    Cache(#[from] CacheError),
    #[error("cleaning up the image cache: {0}")]
    Layers(#[from] UnpackError),
    #[error("cleaning up the image cache: {0}")]
    Lock(#[from] LockError),
    #[error("cleaning up the image cache: finding the layers a mounted workspace uses: {0}")]
    Mounted(#[from] OverlayError),
    #[error("cleaning up the image cache: what image {reference} uses: {source}")]
    Image {
        reference: String,
        source: RegistryError,
    },
}

/// What of one image is kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Kept {
    /// The image's top manifest digest (what its pins name).
    pub images: BTreeSet<Digest>,
    pub blobs: BTreeSet<Digest>,
    pub layer_dirs: BTreeSet<PathBuf>,
}

impl Kept {
    /// What an image just prepared keeps: its manifests, config and layer blobs, and its layer
    /// directories.
    pub fn of_prepared(prepared: &PreparedImage) -> Kept {
        let pulled = &prepared.pulled;
        let blobs = [
            &pulled.digest,
            &pulled.manifest_digest,
            &pulled.config_digest,
        ]
        .into_iter()
        .cloned()
        .chain(pulled.layers.iter().map(|l| l.digest.clone()))
        .collect();
        Kept {
            images: BTreeSet::from([pulled.digest.clone()]),
            blobs,
            layer_dirs: prepared.layer_dirs.iter().cloned().collect(),
        }
    }

    fn add(&mut self, other: Kept) {
        self.images.extend(other.images);
        self.blobs.extend(other.blobs);
        self.layer_dirs.extend(other.layer_dirs);
    }
}

/// What a cleanup did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    /// The images kept, by the reference of a pin (or digest), current first.
    pub kept: Vec<String>,
    pub blobs_removed: usize,
    pub bytes_freed: u64,
    pub layers_removed: usize,
    pub pins_removed: usize,
}

/// The shared hold on the store of a process preparing an image (see the module doc): waits
/// while a cleanup runs.
pub fn hold_for_preparing(blobs: &BlobStore) -> Result<Held, LockError> {
    let (held, _) = blobs.locks().take(
        STORE_LOCK,
        Mode::Shared,
        "removing images from the cache; preparing the image waits until it is done",
    )?;
    Ok(held)
}

/// What `reference` at `digest` has in the store, found offline; `None` when its manifests are
/// not there (nothing of it to keep).
pub async fn of_image(
    config: &RegistryConfig,
    blobs: &BlobStore,
    layers: &LayerStore,
    reference: &ImageRef,
    digest: &Digest,
) -> Result<Option<Kept>, PruneError> {
    match registry::cached_blobs(config, blobs, &reference.at(digest)).await {
        Ok(cached) => Ok(Some(Kept {
            images: BTreeSet::from([digest.clone()]),
            blobs: cached.blobs.into_iter().collect(),
            layer_dirs: layers
                .image_layer_dirs(&cached.diff_ids)
                .into_iter()
                .collect(),
        })),
        Err(RegistryError::NotFound { .. }) => Ok(None),
        Err(source) => Err(PruneError::Image {
            reference: reference.to_string(),
            source,
        }),
    }
}

/// Where the kept images' blobs and layers are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    /// In the stores the rule is applied to.
    Here,
    /// Elsewhere (a node cache, whose own rule keeps them): the rule keeps the images' pins,
    /// and removes every blob and layer of these stores but those a mounted overlay uses.
    Elsewhere,
}

/// Removes what the rule does not keep (module doc). `current`: what the current image keeps
/// (its top manifest digest among `images`); `None`: the most recently used image is current.
/// Waits for every process preparing an image on the volume first.
pub async fn prune(
    config: &RegistryConfig,
    blobs: &BlobStore,
    layers: &LayerStore,
    current: Option<Kept>,
    keep_images: usize,
    content: Content,
) -> Result<Pruned, PruneError> {
    let locks = blobs.locks().clone();
    let _held = tokio::task::spawn_blocking(move || {
        locks.take(
            STORE_LOCK,
            Mode::Exclusive,
            "preparing an image; the cleanup of the image cache waits until it is done",
        )
    })
    .await
    .unwrap_or_else(|join| std::panic::resume_unwind(join.into_panic()))?;

    let pins = blobs.pins()?;
    let mut kept = Kept::default();
    let mut names = Vec::new();
    let mut wanted = keep_images;
    if let Some(mut current) = current {
        names.extend(current.images.iter().map(|d| name_of(&pins, d)));
        if content == Content::Elsewhere {
            current.blobs.clear();
            current.layer_dirs.clear();
        }
        kept.add(current);
    } else {
        // The most recently used is the current one.
        wanted += 1;
    }
    for (reference, digest) in &pins {
        if wanted == 0 {
            break;
        }
        if kept.images.contains(digest) {
            continue;
        }
        // A pin whose reference does not parse names nothing that can be started.
        let Ok(parsed) = ImageRef::parse(reference) else {
            continue;
        };
        kept.images.insert(digest.clone());
        names.push(reference.clone());
        wanted -= 1;
        if content == Content::Elsewhere {
            continue;
        }
        if let Some(image) = of_image(config, blobs, layers, &parsed, digest).await? {
            kept.add(image);
        }
    }
    let state_dir = blobs.root().to_owned();
    kept.layer_dirs
        .extend(crate::overlay::layers_in_use(&state_dir)?);

    let mut pruned = Pruned {
        kept: names,
        ..Pruned::default()
    };
    for blob in blobs.list()? {
        if !kept.blobs.contains(&blob.digest) {
            blobs.remove(&blob.digest)?;
            pruned.blobs_removed += 1;
            pruned.bytes_freed += blob.size;
        }
    }
    // By name: a mounted overlay's links may spell the state dir another way.
    let kept_dirs: BTreeSet<std::ffi::OsString> = kept
        .layer_dirs
        .iter()
        .filter_map(|dir| dir.file_name().map(ToOwned::to_owned))
        .collect();
    // The earlier layout's layer directories (keyed by diff ID) are used by no image.
    pruned.layers_removed += layers.remove_legacy()?;
    for layer in layers.list()? {
        let dir = layers.path(&layer);
        if !dir.file_name().is_some_and(|name| kept_dirs.contains(name)) {
            layers.remove(&layer)?;
            pruned.layers_removed += 1;
        }
    }
    for (reference, digest) in &pins {
        if !kept.images.contains(digest) {
            blobs.unpin(reference)?;
            pruned.pins_removed += 1;
        }
    }
    // No other process holds any lock now (module doc of `crate::lock`).
    blobs.locks().remove_all_but(STORE_LOCK)?;
    Ok(pruned)
}

/// The first pin's reference naming `digest`, else the digest.
fn name_of(pins: &[(String, Digest)], digest: &Digest) -> String {
    pins.iter()
        .find(|(_, d)| d == digest)
        .map_or_else(|| digest.to_string(), |(r, _)| r.clone())
}
