//! A whole image pull: manifest (or index and the platform's manifest), config, layers.
//!
//! Owns: the order of a pull and what is fetched at all. Blobs already in the store are never
//! fetched again; a reference pinned by digest whose manifests are in the store needs no
//! network at all; a tag is resolved online (tags move) and pinned. Every manifest is checked
//! against the digest it was asked for; nested indexes are followed as `crate::image::walk`
//! asks. The config comes first; layers download in parallel,
//! bounded, and each is handed to the caller's [`LayerFeed`] as soon as it is verified in the
//! store, so the caller can unpack it while the others download. It never unpacks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures_util::{stream, StreamExt};
use tokio::sync::Semaphore;

use super::client::Client;
use super::fetch::{fetch_blob, BlobRequest};
use super::progress::{Progress, Reporter};
use super::{LayerFeed, RegistryConfig, RegistryError};
use crate::cache::BlobStore;
use crate::digest::Digest;
use crate::image::describe::{self, PulledImage, PulledLayer};
use crate::image::manifest::{self, ImageManifest, Manifest};
use crate::image::walk::{Next, Walk};
use crate::image::{ImageDocument, ImageError, ImageRef};

fn digest_of(text: &str, reference: &ImageRef) -> Result<Digest, RegistryError> {
    Ok(describe::digest_of(text, &reference.to_string())?)
}

fn store_error(
    reference: &ImageRef,
    digest: &Digest,
    source: crate::cache::CacheError,
) -> RegistryError {
    RegistryError::Store {
        reference: reference.to_string(),
        digest: digest.to_string(),
        source,
    }
}

/// Opens the client on first use only: a warm cache needs no network.
struct LazyClient<'a> {
    config: &'a RegistryConfig,
    reference: &'a ImageRef,
    client: Option<Arc<Client>>,
    /// Never opens one: what is not in the store is not found.
    offline: bool,
}

impl LazyClient<'_> {
    async fn get(&mut self) -> Result<Arc<Client>, RegistryError> {
        if let Some(s) = &self.client {
            return Ok(s.clone());
        }
        if self.offline {
            return Err(RegistryError::NotFound {
                reference: self.reference.to_string(),
                detail: "a manifest of it is not in the cache".into(),
            });
        }
        let s = Arc::new(Client::open(self.config, self.reference).await?);
        self.client = Some(s.clone());
        Ok(s)
    }
}

/// A manifest by digest: from the store, or fetched, verified and stored.
async fn manifest_by_digest(
    lazy: &mut LazyClient<'_>,
    store: &BlobStore,
    reference: &ImageRef,
    digest: &Digest,
) -> Result<Vec<u8>, RegistryError> {
    if store.size_of(digest).is_some() {
        return store
            .read(digest)
            .map_err(|e| store_error(reference, digest, e));
    }
    let client = lazy.get().await?;
    let bytes = client.manifest(lazy.config, &reference.at(digest)).await?;
    store
        .put(digest, &bytes)
        .map_err(|e| store_error(reference, digest, e))?;
    Ok(bytes)
}

/// Attempts at resolving a tag online when a pinned digest could stand in for it.
const ATTEMPTS_WITH_PIN: u32 = 3;

/// True for failures that mean "the registry cannot be reached", not "it said no" (a scheme
/// that does not match the registry's is one: it is reached the way it was last time).
fn unreachable(error: &RegistryError) -> bool {
    matches!(
        error,
        RegistryError::Transfer { .. }
            | RegistryError::Protocol { .. }
            | RegistryError::NotHttps { .. }
            | RegistryError::NotPlainHttp { .. }
    )
}

/// Resolves the reference to its top-level manifest digest and bytes. A tag is resolved
/// online; when the registry cannot be reached and the tag's last resolution is pinned with
/// its manifest cached, that pin is used (an offline start after `envbox prepare`).
async fn top_manifest(
    lazy: &mut LazyClient<'_>,
    store: &BlobStore,
    reference: &ImageRef,
    warnings: &mut Vec<String>,
) -> Result<(Digest, Vec<u8>), RegistryError> {
    if let Some(digest) = reference.digest() {
        let bytes = manifest_by_digest(lazy, store, reference, &digest).await?;
        return Ok((digest, bytes));
    }
    let pin = store
        .pinned(&reference.normalized())
        .ok()
        .flatten()
        .filter(|d| store.size_of(d).is_some());
    let Some(pinned) = pin else {
        return resolve_tag(lazy, store, reference).await;
    };
    let mut quick = lazy.config.clone();
    quick.max_attempts = quick.max_attempts.min(ATTEMPTS_WITH_PIN);
    let mut quick_lazy = LazyClient {
        config: &quick,
        reference,
        client: lazy.client.clone(),
        offline: false,
    };
    match resolve_tag(&mut quick_lazy, store, reference).await {
        Ok(found) => {
            lazy.client = quick_lazy.client;
            Ok(found)
        }
        Err(error) if unreachable(&error) => {
            warnings.push(format!(
                "could not reach the registry for {reference} ({error}); using the cached {pinned} it last resolved to"
            ));
            let bytes = store
                .read(&pinned)
                .map_err(|e| store_error(reference, &pinned, e))?;
            Ok((pinned, bytes))
        }
        Err(error) => Err(error),
    }
}

/// Fetches the manifest a tag points at now, stores and pins it.
async fn resolve_tag(
    lazy: &mut LazyClient<'_>,
    store: &BlobStore,
    reference: &ImageRef,
) -> Result<(Digest, Vec<u8>), RegistryError> {
    let client = lazy.get().await?;
    let bytes = client.manifest(lazy.config, reference).await?;
    let digest = Digest::of(&bytes);
    store
        .put(&digest, &bytes)
        .map_err(|e| store_error(reference, &digest, e))?;
    store
        .pin(&reference.normalized(), &digest)
        .map_err(|e| store_error(reference, &digest, e))?;
    Ok((digest, bytes))
}

/// The manifests a reference resolved to.
struct Resolved {
    /// What the reference names (an index, or the manifest itself).
    top: Digest,
    /// The image manifest for this platform.
    manifest_digest: Digest,
    image: ImageManifest,
    /// The nested indexes walked through to it.
    nested: Vec<Digest>,
}

/// The image manifest for this platform, and its digest.
async fn image_manifest(
    lazy: &mut LazyClient<'_>,
    store: &BlobStore,
    reference: &ImageRef,
    warnings: &mut Vec<String>,
) -> Result<Resolved, RegistryError> {
    let (top, bytes) = top_manifest(lazy, store, reference, warnings).await?;
    let name = reference.to_string();
    let index = match manifest::parse(&bytes, None, &name)? {
        Manifest::Image(image) => {
            return Ok(Resolved {
                manifest_digest: top.clone(),
                top,
                image: *image,
                nested: Vec::new(),
            })
        }
        Manifest::Index(index) => index,
    };
    let mut walk = Walk::new(index, &lazy.config.platform, &name);
    let mut nested_digests = Vec::new();
    loop {
        match walk.next()? {
            Next::Index(nested) => {
                let bytes = manifest_by_digest(lazy, store, reference, &nested.digest).await?;
                walk.index(&nested, &bytes)?;
                nested_digests.push(nested.digest);
            }
            Next::Manifest(entry) => {
                let bytes = manifest_by_digest(lazy, store, reference, &entry.digest).await?;
                let image = describe::entry_manifest(&bytes, &entry, &name)?;
                return Ok(Resolved {
                    top,
                    manifest_digest: entry.digest,
                    image,
                    nested: nested_digests,
                });
            }
        }
    }
}

/// Downloads every blob, a bounded number at once, calling `stored` for each as soon as it is
/// committed to the store. After a failure (here, or `feed.stop()` by the consumer) no new
/// transfer starts, but those in flight finish (their blobs are valid and stay cached for the
/// next try) before the first error is returned: nothing is left writing behind the caller's
/// back. Transfers skipped because the consumer stopped make it [`RegistryError::Stopped`].
#[allow(clippy::too_many_arguments)]
async fn transfer_all(
    client: &Client,
    config: &RegistryConfig,
    store: &BlobStore,
    blobs: &[BlobRequest],
    progress: &Progress,
    feed: &LayerFeed,
    started: &(dyn Fn(&BlobRequest) + Sync),
    stored: &(dyn Fn(&BlobRequest) + Sync),
    reference: &str,
) -> Result<(), RegistryError> {
    let skipped = AtomicBool::new(false);
    // A transfer slot is held while bytes come in, not while a verified blob waits for the
    // follower that checks its digest (see `crate::cache`) to read its last bytes.
    let slots = Semaphore::new(config.max_concurrent_downloads.max(1));
    let mut transfers = stream::iter(blobs)
        .map(|request| {
            let (skipped, slots) = (&skipped, &slots);
            async move {
                let slot = slots
                    .acquire()
                    .await
                    .expect("the semaphore is never closed");
                if feed.stopped() {
                    skipped.store(true, Ordering::Relaxed);
                    return Ok(());
                }
                fetch_blob(client, config, store, request, progress, started, slot).await?;
                stored(request);
                Ok(())
            }
        })
        .buffer_unordered(blobs.len().max(1));
    let mut first_error = None;
    while let Some(result) = transfers.next().await {
        if let Err(error) = result {
            feed.stop();
            first_error.get_or_insert(error);
        }
    }
    match first_error {
        Some(error) => Err(error),
        None if skipped.load(Ordering::Relaxed) => Err(RegistryError::Stopped {
            reference: reference.to_owned(),
        }),
        None => Ok(()),
    }
}

/// Pulls `reference` into `store`.
pub async fn pull(
    config: &RegistryConfig,
    store: &BlobStore,
    reference: &ImageRef,
) -> Result<PulledImage, RegistryError> {
    pull_feeding(config, store, reference, &LayerFeed::default()).await
}

/// Pulls `reference` into `store`, handing each layer to `feed` as soon as its blob is
/// verified in the store: the config comes first (its diff IDs name the layers), layers
/// already cached are handed over at once, the others as their transfers complete.
pub async fn pull_feeding(
    config: &RegistryConfig,
    store: &BlobStore,
    reference: &ImageRef,
    feed: &LayerFeed,
) -> Result<PulledImage, RegistryError> {
    let mut lazy = LazyClient {
        config,
        reference,
        client: None,
        offline: false,
    };
    let mut warnings = Vec::new();
    let Resolved {
        top: digest,
        manifest_digest,
        image,
        ..
    } = image_manifest(&mut lazy, store, reference, &mut warnings).await?;
    let name = reference.to_string();
    let count = image.layers.len();
    let requests: Vec<BlobRequest> = describe::blobs_of(&image, &name)?
        .into_iter()
        .enumerate()
        .map(|(i, (digest, size))| BlobRequest {
            digest,
            size,
            what: match i {
                0 => "the image config".into(),
                i => format!("layer {i} of {count}"),
            },
            urls: match i {
                0 => vec![],
                i => image.layers[i - 1].urls.clone().unwrap_or_default(),
            },
        })
        .collect();
    // Each missing blob once, even when the image lists it twice.
    let mut missing: Vec<BlobRequest> = Vec::new();
    for request in &requests {
        if store.size_of(&request.digest) != Some(request.size)
            && !missing.iter().any(|m| m.digest == request.digest)
        {
            missing.push(request.clone());
        }
    }
    let transfer = match missing.is_empty() {
        true => None,
        false => {
            let client = lazy.get().await?;
            let progress = Progress::new(missing.iter().map(|r| (r.digest.clone(), r.size)));
            let reporter =
                Reporter::start(progress.clone(), name.clone(), config.progress_interval);
            Some((client, progress, reporter))
        }
    };
    let (config_blob, layer_blobs): (Vec<BlobRequest>, Vec<BlobRequest>) = missing
        .iter()
        .cloned()
        .partition(|r| r.digest == requests[0].digest);
    if let (Some((client, progress, _)), false) = (&transfer, config_blob.is_empty()) {
        let none = |_: &BlobRequest| {};
        transfer_all(
            client,
            config,
            store,
            &config_blob,
            progress,
            feed,
            &none,
            &none,
            &name,
        )
        .await?;
    }
    let config_digest = describe::config_digest(&image, &name)?;
    let config_bytes = store
        .read(&config_digest)
        .map_err(|e| store_error(reference, &config_digest, e))?;
    let mut pulled = describe::describe(
        &config_bytes,
        &config.platform,
        &name,
        digest,
        manifest_digest,
        &image,
    )?;
    feed.planned(&pulled.layers, layer_blobs.iter().map(|r| r.size).sum());
    for (i, layer) in pulled.layers.iter().enumerate() {
        if !layer_blobs.iter().any(|r| r.digest == layer.digest) {
            feed.ready(i, layer);
        }
    }
    if let Some((client, progress, _)) = &transfer {
        let layers = &pulled.layers;
        // Every layer index the blob is (an image may list a blob twice).
        let report = |request: &BlobRequest, to: fn(&LayerFeed, usize, &PulledLayer)| {
            for (i, layer) in layers.iter().enumerate() {
                if layer.digest == request.digest {
                    to(feed, i, layer);
                }
            }
        };
        let started = |request: &BlobRequest| report(request, LayerFeed::downloading);
        let stored = |request: &BlobRequest| report(request, LayerFeed::ready);
        transfer_all(
            client,
            config,
            store,
            &layer_blobs,
            progress,
            feed,
            &started,
            &stored,
            &name,
        )
        .await?;
    }
    drop(transfer);
    pulled.blobs_downloaded = missing.len();
    pulled.warnings = warnings;
    Ok(pulled)
}

/// Every blob of `reference` that is in the store, found without the network (pinned digest,
/// stored manifests; a manifest missing from the store is [`RegistryError::NotFound`]): the
/// top manifest, the platform's manifest, the config and the layers.
pub async fn cached_blobs(
    config: &RegistryConfig,
    store: &BlobStore,
    reference: &ImageRef,
) -> Result<CachedImage, RegistryError> {
    let top = match reference.digest() {
        Some(d) => d,
        None => store
            .pinned(&reference.normalized())
            .map_err(|e| store_error(reference, &Digest::of(b""), e))?
            .ok_or_else(|| RegistryError::NotFound {
                reference: reference.to_string(),
                detail: "it is not in the cache (pull it first)".into(),
            })?,
    };
    let pinned = reference.at(&top);
    let mut offline = LazyClient {
        config,
        reference: &pinned,
        client: None,
        offline: true,
    };
    let Resolved {
        top,
        manifest_digest,
        image,
        nested,
    } = image_manifest(&mut offline, store, &pinned, &mut Vec::new()).await?;
    let mut blobs = vec![top];
    blobs.extend(nested);
    blobs.push(manifest_digest);
    blobs.push(digest_of(&image.config.digest, reference)?);
    for layer in &image.layers {
        blobs.push(digest_of(&layer.digest, reference)?);
    }
    blobs.retain(|d| store.size_of(d).is_some());
    let config_digest = digest_of(&image.config.digest, reference)?;
    let diff_ids = match store.read(&config_digest) {
        Ok(bytes) => ImageDocument::from_json(&bytes, &format!("image config {config_digest}"))
            .map_err(|e| ImageError::Manifest {
                reference: reference.to_string(),
                detail: e.to_string(),
            })?
            .rootfs
            .diff_ids
            .iter()
            .map(|id| digest_of(id, reference))
            .collect::<Result<Vec<_>, _>>()?,
        Err(_) => Vec::new(),
    };
    Ok(CachedImage { blobs, diff_ids })
}

/// What of an image is in the cache: its blobs, and the diff IDs of its layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedImage {
    /// Every blob of the image: manifests, config and layers.
    pub blobs: Vec<Digest>,
    /// The diff IDs of its layers, bottom first.
    pub diff_ids: Vec<Digest>,
}
