//! Which layer unpacks when, on which thread, while the fetch is still running.
//!
//! Owns: turning the fetch's reports into unpacks. A layer whose transfer starts is unpacked
//! at once from its download as it arrives ([`Arrival::Downloading`]: the bytes are followed
//! in the store, and the layer is published only once the blob is verified, see
//! `crate::cache::Follower`, which also checks the blob's digest for its writer). Every unpack,
//! from a download or from a blob already verified ([`Arrival::Ready`]: cached blobs, local
//! imports, or a download-time unpack that failed), takes one of at most one slot per core. A
//! download-time unpack that fails for any reason (the transfer started over or failed, or the
//! content is bad) is not an error: the layer is unpacked again from the verified blob, which
//! then reports the real error if there is one. A diff ID already started under another index
//! is reported as reused, not unpacked twice. After a failure, or `feed.stop()` by the fetch,
//! nothing new starts and what runs finishes. It never fetches and never decides what a layer
//! directory holds (`crate::unpack` does).

use std::collections::{HashMap, HashSet};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Condvar, Mutex};
use std::time::Instant;

use crate::cache::Follower;
use crate::digest::Digest;
use crate::registry::LayerFeed;
use crate::unpack::{LayerSource, LayerStore, Limits, UnpackError, UnpackReport};

/// What the unpacker is told about layer `index`.
pub(super) enum Arrival {
    /// Its blob is being downloaded: unpack it from `follower` as it arrives. `missed` takes
    /// the [`Arrival::Missed`] should that fail.
    Downloading {
        index: usize,
        source: LayerSource,
        follower: Follower,
        missed: Sender<Arrival>,
    },
    /// Its blob is verified in the store.
    Ready(usize, LayerSource),
    /// Its unpack from the download failed: unpack it from the verified blob once it is ready.
    Missed(usize, LayerSource),
}

/// What [`unpack_as_fed`] did.
pub(super) struct Unpacked {
    /// `(layer index, result)` for each layer taken, in completion order.
    pub results: Vec<(usize, Result<UnpackReport, UnpackError>)>,
    /// An unpack failure here stopped the feed before anything else did.
    pub failed_first: bool,
}

fn threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// One running unpack from a verified blob, counted while it lives (also when it panics, so
/// the dispatcher never waits for a slot that is not coming back).
struct Slot<'a> {
    running: &'a Mutex<usize>,
    finished: &'a Condvar,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        *lock(self.running) -= 1;
        self.finished.notify_one();
    }
}

/// The state the unpacking threads share with the dispatcher.
struct Shared<'a> {
    layers: &'a LayerStore,
    limits: &'a Limits,
    feed: &'a LayerFeed,
    begun: Instant,
    running: Mutex<usize>,
    finished: Condvar,
    results: Mutex<Vec<(usize, Result<UnpackReport, UnpackError>)>>,
    stopped_first: Mutex<bool>,
}

impl Shared<'_> {
    fn debug(&self, index: usize, started: Instant, report: &UnpackReport, what: &str) {
        let ms = |at: Instant| at.duration_since(self.begun).as_millis() as u64;
        tracing::debug!(
            layer = index,
            from_ms = ms(started),
            to_ms = ms(Instant::now()),
            entries = report.entries,
            "prepare: layer unpacked {what}"
        );
    }

    fn record(&self, index: usize, result: Result<UnpackReport, UnpackError>) {
        if result.is_err() && self.feed.stop() {
            *lock(&self.stopped_first) = true;
        }
        lock(&self.results).push((index, result));
    }
}

/// Unpacks layers as they are reported, until every sender of `arrivals` is gone (the
/// fetch's, and those of download-time unpacks still running). See the module doc.
pub(super) fn unpack_as_fed(
    layers: &LayerStore,
    arrivals: Receiver<Arrival>,
    limits: &Limits,
    feed: &LayerFeed,
    begun: Instant,
) -> Unpacked {
    let shared = Shared {
        layers,
        limits,
        feed,
        begun,
        running: Mutex::new(0),
        finished: Condvar::new(),
        results: Mutex::new(Vec::new()),
        stopped_first: Mutex::new(false),
    };
    let max = threads();
    std::thread::scope(|scope| {
        let shared = &shared;
        // Diff IDs started (a second index with one is reused, not unpacked again).
        let mut started: HashSet<Digest> = HashSet::new();
        // Layers being unpacked from their download: whether their blob is ready since.
        let mut following: HashMap<usize, bool> = HashMap::new();
        // Waits for a free slot and takes it.
        let slot = || {
            let mut count = lock(&shared.running);
            while *count >= max {
                count = shared
                    .finished
                    .wait(count)
                    .unwrap_or_else(|p| p.into_inner());
            }
            *count += 1;
            Slot {
                running: &shared.running,
                finished: &shared.finished,
            }
        };
        let from_blob = |index: usize, source: LayerSource, started: &mut HashSet<Digest>| {
            if !started.insert(source.diff_id.clone()) {
                let reused = UnpackReport {
                    reused: true,
                    ..UnpackReport::default()
                };
                lock(&shared.results).push((index, Ok(reused)));
                return;
            }
            let slot = slot();
            scope.spawn(move || {
                let _slot = slot;
                let at = Instant::now();
                let result = shared.layers.unpack(&source, shared.limits);
                if let Ok(report) = &result {
                    shared.debug(index, at, report, "from its blob");
                }
                shared.record(index, result);
            });
        };
        for arrival in arrivals {
            if feed.stopped() {
                continue;
            }
            match arrival {
                Arrival::Downloading {
                    index,
                    source,
                    follower,
                    missed,
                } => {
                    // Started already under another index: its `Ready` reports it reused.
                    if started.contains(&source.diff_id) || layers.is_complete(&source.diff_id) {
                        continue;
                    }
                    started.insert(source.diff_id.clone());
                    following.insert(index, false);
                    let slot = slot();
                    scope.spawn(move || {
                        let _slot = slot;
                        let at = Instant::now();
                        match shared.layers.unpack_following(&source, follower, shared.limits) {
                            Ok(report) => {
                                shared.debug(index, at, &report, "as it downloaded");
                                shared.record(index, Ok(report));
                            }
                            Err(error) => {
                                tracing::debug!(layer = index, %error, "prepare: unpacking a layer as it downloaded failed; it is unpacked from its verified blob");
                                let _ = missed.send(Arrival::Missed(index, source));
                            }
                        }
                    });
                }
                Arrival::Ready(index, source) => match following.get_mut(&index) {
                    // The download-time unpack reports it, or asks for it again.
                    Some(ready) => *ready = true,
                    None => from_blob(index, source, &mut started),
                },
                Arrival::Missed(index, source) => {
                    started.remove(&source.diff_id);
                    if following.remove(&index) == Some(true) {
                        from_blob(index, source, &mut started);
                    }
                    // Otherwise its `Ready` is still to come, and unpacks it.
                }
            }
        }
    });
    let failed_first = *lock(&shared.stopped_first);
    Unpacked {
        results: shared
            .results
            .into_inner()
            .unwrap_or_else(|p| p.into_inner()),
        failed_first,
    }
}
