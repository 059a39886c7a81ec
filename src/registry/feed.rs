//! [`LayerFeed`]: layers handed on as soon as their blobs are verified in the store.
//!
//! Owns: the small contract between a fetch (registry pull or local import) and whoever consumes
//! its layers while it is still running (`crate::prepare` unpacks them): `ready` is called once
//! per layer index, only after that layer's blob is committed to the store (verified against
//! the manifest's digest and size) and the image config (its diff IDs) is known;
//! `downloading`, when a fetch reports it, before that, as soon as the layer's transfer has
//! its writer in the store (the blob can be followed as it arrives, `BlobStore::follow`; a
//! transfer that starts over says nothing more, and `ready` still follows its success);
//! `planned`, when a registry pull reports it, once before the first layer transfer: every layer
//! of the image and how many bytes of blobs are still to download; `stop` asks the fetch to
//! start no new transfer (those in flight finish). It never fetches, stores
//! or unpacks anything itself.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::image::PulledLayer;

type Report = dyn Fn(usize, &PulledLayer) + Send + Sync;
type Plan = dyn Fn(&[PulledLayer], u64) + Send + Sync;

/// Where a fetch reports each verified layer (and each layer it starts downloading), and the
/// shared stop flag. Cheap to clone; the default feed reports nowhere.
#[derive(Clone, Default)]
pub struct LayerFeed {
    ready: Option<Arc<Report>>,
    downloading: Option<Arc<Report>>,
    planned: Option<Arc<Plan>>,
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for LayerFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerFeed")
            .field("stopped", &self.stopped())
            .finish_non_exhaustive()
    }
}

impl LayerFeed {
    /// A feed that calls `ready(index, layer)` for each layer as it lands in the store.
    pub(crate) fn new(ready: impl Fn(usize, &PulledLayer) + Send + Sync + 'static) -> LayerFeed {
        LayerFeed {
            ready: Some(Arc::new(ready)),
            downloading: None,
            planned: None,
            stop: Arc::default(),
        }
    }

    /// Also calls `downloading(index, layer)` when the transfer of a layer's blob starts.
    pub(crate) fn with_downloading(
        mut self,
        downloading: impl Fn(usize, &PulledLayer) + Send + Sync + 'static,
    ) -> LayerFeed {
        self.downloading = Some(Arc::new(downloading));
        self
    }

    /// Also calls `planned(layers, download)` before the first layer transfer: every layer of
    /// the image, and the bytes of the blobs still to download.
    pub(crate) fn with_planned(
        mut self,
        planned: impl Fn(&[PulledLayer], u64) + Send + Sync + 'static,
    ) -> LayerFeed {
        self.planned = Some(Arc::new(planned));
        self
    }

    /// Reports what the fetch is about to do (see [`Self::with_planned`]).
    pub(crate) fn planned(&self, layers: &[PulledLayer], download: u64) {
        if let Some(planned) = &self.planned {
            planned(layers, download);
        }
    }

    /// The same stop flag without the reporting (a consumer holds this one, so that the
    /// reporting closure, and what it owns, goes away with the fetch).
    pub(crate) fn stop_handle(&self) -> LayerFeed {
        LayerFeed {
            ready: None,
            downloading: None,
            planned: None,
            stop: self.stop.clone(),
        }
    }

    /// Reports layer `index`, whose blob is now verified in the store.
    pub(crate) fn ready(&self, index: usize, layer: &PulledLayer) {
        if let Some(ready) = &self.ready {
            ready(index, layer);
        }
    }

    /// Reports layer `index`, whose blob is now being downloaded into the store.
    pub(crate) fn downloading(&self, index: usize, layer: &PulledLayer) {
        if let Some(downloading) = &self.downloading {
            downloading(index, layer);
        }
    }

    /// Asks the fetch and the consumer to start nothing new. True for the call that stopped it
    /// first (so a caller can tell whose failure came first).
    pub(crate) fn stop(&self) -> bool {
        !self.stop.swap(true, Ordering::SeqCst)
    }

    pub(crate) fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}
