//! The image cache as the commands fill it.
//!
//! Owns: what every command that fills the cache does around the fetch and unpack: the shared
//! hold on the volume's store while an image is prepared (`crate::prune`), recording the use of
//! the image (its pins), and a full volume (`crate::room::is_full`): the cleanup rule applied
//! with that image as the current one, one more try, then `crate::room::VolumeFull`. The rule
//! itself lives in `crate::prune`, the fetch and unpack in `crate::prepare`. With a node cache
//! (`crate::nodecache`) the blobs and layers are there, and its rule applies to them; the
//! volume's rule still applies to the pins, and to the blobs and layers the volume holds from
//! before the node cache (none of which the node cache uses).

use crate::cache::BlobStore;
use crate::config::{names, Settings};
use crate::digest::Digest;
use crate::image::ImageRef;
use crate::nodecache::NodeCache;
use crate::prepare::PreparedImage;
use crate::progress::{self, mb, warn_all, Kind};
use crate::registry::RegistryConfig;
use crate::room::Need;
use crate::source::ImageSource;
use crate::unpack::{LayerStore, Limits};

/// The image cache on the volume of some settings, with the registry configuration to fill it.
#[derive(Clone)]
pub(super) struct ImageCache {
    pub(super) config: RegistryConfig,
    pub(super) blobs: BlobStore,
    pub(super) layers: LayerStore,
    /// `ENVBOX_KEEP_IMAGES`.
    pub(super) keep_images: usize,
    /// The node cache the blobs and layers are in, when one is used.
    pub(super) node: Option<NodeCache>,
    /// With a node cache: the volume's own stores (its pins, and what it holds from before).
    volume: Option<(BlobStore, LayerStore)>,
}

/// What a cleanup did, by the rule of where the image cache is.
pub(super) enum CleanedUp {
    /// The volume's rule (`crate::prune`).
    Volume(crate::prune::Pruned),
    /// The node cache's rule (`crate::nodecache`), and the volume's on what it still holds.
    Node(crate::nodecache::Cleaned, crate::prune::Pruned),
}

impl CleanedUp {
    /// Whether anything was removed.
    pub(super) fn removed_any(&self) -> bool {
        match self {
            CleanedUp::Volume(p) => p.blobs_removed + p.layers_removed > 0,
            CleanedUp::Node(c, p) => {
                c.blobs_removed + c.layers_removed + p.blobs_removed + p.layers_removed > 0
            }
        }
    }

    /// One line saying what was removed and what kept.
    pub(super) fn summary(&self, keep_images: usize) -> String {
        match self {
            CleanedUp::Volume(p) => format!(
                "removed {} blob(s) ({}) and {} unpacked layer(s); kept {} image(s): {} (the current one and the {keep_images} most recently used before it, {})",
                p.blobs_removed,
                mb(p.bytes_freed),
                p.layers_removed,
                p.kept.len(),
                p.kept.join(", "),
                names::KEEP_IMAGES.env,
            ),
            CleanedUp::Node(c, p) => {
                let mut line = format!(
                    "removed {} blob(s) and {} unpacked layer(s) ({}) from the node cache that no running workspace of the node uses ({} running; see {} and {})",
                    c.blobs_removed,
                    c.layers_removed,
                    mb(c.bytes_freed),
                    c.live_leases,
                    names::NODE_CACHE_TTL.env,
                    names::NODE_CACHE_SIZE.env,
                );
                if p.blobs_removed + p.layers_removed > 0 {
                    line += &format!(
                        "; and from the volume, what it held from before the node cache: {} blob(s) ({}) and {} unpacked layer(s)",
                        p.blobs_removed,
                        mb(p.bytes_freed),
                        p.layers_removed
                    );
                }
                line
            }
        }
    }
}

impl ImageCache {
    /// Opens the cache under `settings.state_dir`; registry warnings logged.
    pub(super) fn open(settings: &Settings) -> anyhow::Result<ImageCache> {
        let (config, warnings) = RegistryConfig::from_settings(settings)?;
        warn_all(warnings);
        let node = NodeCache::from_settings(settings).unwrap_or_else(|warning| {
            progress::emit(Kind::Info, &warning);
            None
        });
        if let Some(node) = &node {
            progress::emit(
                Kind::Info,
                &format!(
                    "Using the node cache {} ({}): blobs and layers shared by the workspaces of this node",
                    node.dir().display(),
                    names::NODE_CACHE.env
                ),
            );
        }
        let on_volume = || -> anyhow::Result<(BlobStore, LayerStore)> {
            Ok((
                BlobStore::open(&settings.state_dir)?,
                LayerStore::open(&settings.state_dir)?,
            ))
        };
        let ((blobs, layers), volume) = match &node {
            Some(node) => (
                (
                    BlobStore::open_split(&settings.state_dir, node.dir())?,
                    LayerStore::open(node.dir())?,
                ),
                Some(on_volume()?),
            ),
            None => (on_volume()?, None),
        };
        Ok(ImageCache {
            config,
            blobs,
            layers,
            keep_images: settings.keep_images,
            node,
            volume,
        })
    }

    /// `source` fetched and unpacked into the cache, warnings logged; no cleanup runs while
    /// the result (or a clone) lives (see [`PreparedImage::hold`]). A full volume is cleaned up
    /// and the prepare tried once more (see [`Self::with_room`]).
    pub(super) async fn prepare(&self, source: &ImageSource) -> anyhow::Result<PreparedImage> {
        crate::memory::keep_freed_memory();
        let (mut prepared, hold) = self
            .with_room(source, || async {
                let hold = self.hold().await.map_err(Failed::Other)?;
                let prepared = crate::prepare::prepare(
                    &self.config,
                    &self.blobs,
                    &self.layers,
                    source,
                    &Limits::default(),
                )
                .await;
                match prepared {
                    Ok(prepared) => Ok((prepared, hold)),
                    Err(crate::prepare::PrepareError::Full { need, source }) => {
                        Err(Failed::Full(need, anyhow::Error::new(*source)))
                    }
                    Err(e) => Err(Failed::Other(e.into())),
                }
            })
            .await?;
        self.used(&prepared.names, &prepared.pulled.digest)?;
        prepared.hold = Some(std::sync::Arc::new(hold));
        warn_all(&prepared.warnings);
        Ok(prepared)
    }

    /// `source`'s blobs fetched into the cache (no unpack); a full volume as in
    /// [`Self::prepare`].
    pub(super) async fn fetch(
        &self,
        source: &ImageSource,
    ) -> anyhow::Result<crate::source::Fetched> {
        let fetched = self
            .with_room(source, || async {
                let _hold = self.hold().await.map_err(Failed::Other)?;
                let need = std::sync::Arc::new(std::sync::Mutex::new(None));
                let feed = {
                    let (need, state_dir) = (need.clone(), self.blobs.root().to_owned());
                    crate::registry::LayerFeed::default().with_planned(move |_, download| {
                        let estimate = Need {
                            download,
                            unpack: 0,
                        };
                        if let Some(line) = crate::room::will_not_fit(&state_dir, &estimate) {
                            progress::emit(Kind::Info, &line);
                        }
                        *need.lock().unwrap_or_else(|p| p.into_inner()) = Some(estimate);
                    })
                };
                crate::source::fetch(source, &self.config, &self.blobs, &feed)
                    .await
                    .map_err(|e| match crate::room::is_full(&e) {
                        true => {
                            Failed::Full(*need.lock().unwrap_or_else(|p| p.into_inner()), e.into())
                        }
                        false => Failed::Other(e.into()),
                    })
            })
            .await?;
        self.used(&fetched.names, &fetched.image.digest)?;
        Ok(fetched)
    }

    /// Runs `attempt`; when the volume was full, removes what the cleanup rule does not keep
    /// (the image of `source` being the current one) and runs it once more; full again, that
    /// is a [`crate::room::VolumeFull`] error.
    async fn with_room<T, F, Fut>(&self, source: &ImageSource, attempt: F) -> anyhow::Result<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, Failed>>,
    {
        let mut cleaned = false;
        loop {
            match attempt().await {
                Ok(done) => return Ok(done),
                Err(Failed::Other(error)) => return Err(error),
                Err(Failed::Full(need, error)) if cleaned => {
                    return Err(crate::room::VolumeFull::new(
                        self.blobs.root(),
                        need,
                        self.keep_images,
                        error,
                    )
                    .into())
                }
                Err(Failed::Full(_, error)) => {
                    let what = match self.node {
                        Some(_) => "what no running workspace of the node uses".to_owned(),
                        None => format!(
                            "the images other than this one and the {} most recently used ({})",
                            self.keep_images,
                            names::KEEP_IMAGES.env
                        ),
                    };
                    progress::emit(
                        Kind::Info,
                        &format!(
                            "{} is full ({}): removing {what}, then trying again",
                            crate::room::volume_name(self.blobs.root()),
                            progress::render_error(&error),
                        ),
                    );
                    let current = self.current(source).await?;
                    let cleaned_up = self.clean_up(current, true).await?;
                    let summary = cleaned_up.summary(self.keep_images);
                    let mut summary = summary.chars();
                    let first = summary.next().map(|c| c.to_ascii_uppercase());
                    progress::emit(
                        Kind::Info,
                        &first.into_iter().chain(summary).collect::<String>(),
                    );
                    cleaned = true;
                }
            }
        }
    }

    /// What the image of `source` keeps, when its manifests are in the store (a registry
    /// reference by digest, or a pinned tag).
    async fn current(&self, source: &ImageSource) -> anyhow::Result<Option<crate::prune::Kept>> {
        let ImageSource::Registry(reference) = source else {
            return Ok(None);
        };
        let digest = match reference.digest() {
            Some(digest) => Some(digest),
            None => self.blobs.pinned(&reference.normalized())?,
        };
        Ok(match digest {
            Some(digest) => {
                crate::prune::of_image(&self.config, &self.blobs, &self.layers, reference, &digest)
                    .await?
            }
            None => None,
        })
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

    /// Removes what the cleanup rule does not keep: the volume's (see `crate::prune`;
    /// `current`: what the current image keeps, else the most recently used image is current),
    /// or the node cache's (see `crate::nodecache`; `full`: everything no running workspace
    /// uses).
    pub(super) async fn clean_up(
        &self,
        current: Option<crate::prune::Kept>,
        full: bool,
    ) -> anyhow::Result<CleanedUp> {
        let Some(node) = &self.node else {
            let pruned = crate::prune::prune(
                &self.config,
                &self.blobs,
                &self.layers,
                current,
                self.keep_images,
                crate::prune::Content::Here,
            )
            .await?;
            return Ok(CleanedUp::Volume(pruned));
        };
        let (node, blobs, layers) = (node.clone(), self.blobs.clone(), self.layers.clone());
        let cleaned =
            tokio::task::spawn_blocking(move || node.clean(&blobs, &layers, full)).await??;
        let pruned = match &self.volume {
            // Its pins by the volume's rule; its blobs and layers are the node cache's now.
            Some((blobs, layers)) => {
                let elsewhere = crate::prune::Content::Elsewhere;
                crate::prune::prune(
                    &self.config,
                    blobs,
                    layers,
                    current,
                    self.keep_images,
                    elsewhere,
                )
                .await?
            }
            None => crate::prune::Pruned::default(),
        };
        Ok(CleanedUp::Node(cleaned, pruned))
    }
}

/// Why an attempt at filling the cache failed.
enum Failed {
    /// The volume was full; what the image still needed, when known.
    Full(Option<Need>, anyhow::Error),
    Other(anyhow::Error),
}
