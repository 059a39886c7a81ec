//! The unpack-while-downloading flow: download N layers, unpack each as it arrives, publish
//! them bottom first.
//!
//! Owns: the concurrency between a fetch and the unpacking of its layers, that is the fetch's
//! reports turned into [`Arrival`]s ([`start`]), the dispatcher that turns them into unpacks
//! ([`unpack_as_fed`]), at most one per [`Slots`] slot (one per core), and the publishing
//! thread. It builds on two promises kept elsewhere: a layer followed as it downloads
//! (`crate::cache::Follower`) is read to its end only once its blob's writer verified the
//! digest, told through the writer's hand-over (module `cache::handover`), so a layer staged
//! from its download is staged from verified bytes; and a layer's unpack decodes on a thread of
//! its own beside the one writing its tree (`crate::unpack`, modules `stream` and `decode`).
//!
//! A layer is keyed by its chain ID, so an arrival waits until the diff IDs of the layers below
//! it are known (they are named by their own arrivals, which come as soon as the config is
//! read). A layer whose transfer starts is staged at once from its download as it arrives
//! ([`Arrival::Downloading`]). Every staging, from a download or from a blob already verified
//! ([`Arrival::Ready`]: cached blobs, local imports, or a download-time unpack that failed),
//! takes a [`Slot`]. A download-time unpack that fails for any reason (the transfer started
//! over or failed, or the content is bad) is not an error: the layer is unpacked again from the
//! verified blob, which then reports the real error if there is one. Staged layers are
//! published in order by one thread of their own (`publish_in_order`: settled against the
//! layers below, which are published by then, see `crate::unpack`), without holding a slot.
//! After a failure, or `feed.stop()` by the fetch, nothing new starts, what runs finishes, and
//! the layers above a failed one are not published. It never fetches and never decides what a
//! layer directory holds (`crate::unpack` does).
//!
//! ```text
//!  fetch (per blob)        dispatcher            unpack (one per Slot)         publisher
//!  transfer starts --Downloading(i, follower)-->
//!                          chain of i known,
//!                          take a Slot --spawn--> stage_following(follower)
//!  BlobWriter.write --hand-over: n bytes -------> follower reads, decode thread
//!                                                 inflates, tree writes
//!  all written <-------hand-over: digest -------- (the follower that checks)
//!  digest matches, commit --hand-over: verified -> read to the end
//!                  --Ready(i)--> noted            --Done(i, staged)-----------> publish i once
//!                                                                               0..=i-1 are
//!  or abandon ---------hand-over: abandoned -----> fails --Missed(i)-->
//!                          Missed + Ready:
//!                          take a Slot --spawn--> stage(blob) --Done(i)------->
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Mutex;
use std::time::Instant;

use crate::cache::{BlobStore, Follower};
use crate::digest::Digest;
use crate::registry::LayerFeed;
use crate::unpack::{chain_ids, LayerSource, LayerStore, Limits, Stage, UnpackError, UnpackReport};
use slots::{Slot, Slots};

mod slots;

/// What the unpacker is told about layer `index`.
enum Arrival {
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

/// The unpacking side of a fetch, running (see [`start`]).
pub(super) struct Flow {
    unpacker: Option<tokio::task::JoinHandle<Unpacked>>,
    /// Kept while no unpacker takes them: the feed's reports then go nowhere.
    _arrivals: Option<Receiver<Arrival>>,
}

/// Starts unpacking the layers a fetch into `blobs` reports, into `layers`, on a blocking
/// thread, unless `unpack_layers` is false (the feed then only reports). Returns the feed to
/// hand the fetch, and the running unpacker: [`Flow::finish`] once the fetch ended.
pub(super) fn start(
    blobs: &BlobStore,
    layers: &LayerStore,
    limits: &Limits,
    begun: Instant,
    unpack_layers: bool,
) -> (LayerFeed, Flow) {
    let (send, arrivals) = mpsc::channel();
    // The unpacker takes arrivals until the last sender is gone; never an error to send.
    let feed = {
        let (blobs, send) = (blobs.clone(), send.clone());
        LayerFeed::new(move |index, layer| {
            tracing::debug!(
                layer = index,
                ms = begun.elapsed().as_millis() as u64,
                "prepare: layer blob verified"
            );
            let _ = send.send(Arrival::Ready(index, super::layer_source(&blobs, layer)));
        })
    };
    if !unpack_layers {
        let flow = Flow {
            unpacker: None,
            _arrivals: Some(arrivals),
        };
        return (feed, flow);
    }
    let feed = feed.with_downloading({
        let blobs = blobs.clone();
        move |index, layer| {
            if let Some(follower) = blobs.follow(&layer.digest) {
                let _ = send.send(Arrival::Downloading {
                    index,
                    source: super::layer_source(&blobs, layer),
                    follower,
                    missed: send.clone(),
                });
            }
        }
    });
    // Only the stop flag: the sender lives in `feed`, which must go when the fetch ends.
    let (store, limits, stop) = (layers.clone(), *limits, feed.stop_handle());
    let unpacker =
        tokio::task::spawn_blocking(move || unpack_as_fed(&store, arrivals, &limits, &stop, begun));
    let flow = Flow {
        unpacker: Some(unpacker),
        _arrivals: None,
    };
    (feed, flow)
}

impl Flow {
    /// Once the fetch ended: drops its `feed` (and with it the last sender, so the unpacker
    /// finishes what arrived) and waits for the unpacker.
    pub(super) async fn finish(self, feed: LayerFeed) -> Unpacked {
        drop(feed);
        match self.unpacker {
            Some(unpacker) => unpacker
                .await
                .unwrap_or_else(|join| std::panic::resume_unwind(join.into_panic())),
            None => Unpacked {
                results: Vec::new(),
                failed_first: false,
            },
        }
    }
}

/// Unpacks every layer of an image (`sources`, bottom first) not yet complete, up to one
/// thread per core, each published once the layers below it are. The first error wins;
/// layers already finished stay (they are complete and verified).
pub fn unpack_all(
    layers: &LayerStore,
    sources: &[LayerSource],
    limits: &Limits,
) -> Result<Vec<UnpackReport>, UnpackError> {
    let (send, arrivals) = mpsc::channel();
    for (index, source) in sources.iter().enumerate() {
        let _ = send.send(Arrival::Ready(index, source.clone()));
    }
    drop(send);
    let unpacked = unpack_as_fed(
        layers,
        arrivals,
        limits,
        &LayerFeed::default(),
        Instant::now(),
    );
    let mut reports = vec![None; sources.len()];
    for (index, result) in unpacked.results {
        reports[index] = Some(result?);
    }
    Ok(reports.into_iter().flatten().collect())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// The state the unpacking threads share with the dispatcher.
struct Shared<'a> {
    layers: &'a LayerStore,
    limits: &'a Limits,
    feed: &'a LayerFeed,
    begun: Instant,
    slots: Slots,
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
            "prepare: layer {what}"
        );
    }

    fn record(&self, index: usize, result: Result<UnpackReport, UnpackError>) {
        if result.is_err() && self.feed.stop() {
            *lock(&self.stopped_first) = true;
        }
        lock(&self.results).push((index, result));
    }
}

/// A layer staged (or found complete), for the publishing thread.
struct Done {
    index: usize,
    chain: Digest,
    stage: Stage,
}

/// Publishes staged layers in index order, each once every layer below it is complete, until
/// every sender of `done` is gone. A layer above one that failed (or never came) is dropped
/// unpublished (its staging directory goes with it).
fn publish_in_order(shared: &Shared<'_>, done: Receiver<Done>) {
    let mut waiting: BTreeMap<usize, Done> = BTreeMap::new();
    let mut below: Vec<PathBuf> = Vec::new();
    for arrived in done {
        waiting.insert(arrived.index, arrived);
        while let Some(next) = waiting.remove(&below.len()) {
            let at = Instant::now();
            let index = next.index;
            let path = shared.layers.path(&next.chain);
            let result = match next.stage {
                Stage::Complete => Ok(UnpackReport {
                    reused: true,
                    ..UnpackReport::default()
                }),
                Stage::Staged(staged) => shared.layers.publish(staged, &below),
            };
            match &result {
                Ok(report) if !report.reused => {
                    shared.debug(index, at, report, "settled and published")
                }
                _ => {}
            }
            let failed = result.is_err();
            shared.record(index, result);
            if failed {
                return;
            }
            below.push(path);
        }
    }
}

/// The chain IDs known so far: those of the layers whose diff ID, and every one below, is.
#[derive(Default)]
struct Chains {
    diff_ids: Vec<Option<Digest>>,
    chains: Vec<Digest>,
}

impl Chains {
    /// Notes layer `index`'s diff ID.
    fn learn(&mut self, index: usize, diff_id: &Digest) {
        if self.diff_ids.len() <= index {
            self.diff_ids.resize(index + 1, None);
        }
        self.diff_ids[index].get_or_insert_with(|| diff_id.clone());
        let known: Vec<Digest> = self.diff_ids.iter().map_while(Clone::clone).collect();
        if known.len() > self.chains.len() {
            self.chains = chain_ids(&known);
        }
    }

    fn of(&self, index: usize) -> Option<&Digest> {
        self.chains.get(index)
    }
}

fn index_of(arrival: &Arrival) -> (usize, &LayerSource) {
    match arrival {
        Arrival::Downloading { index, source, .. } => (*index, source),
        Arrival::Ready(index, source) | Arrival::Missed(index, source) => (*index, source),
    }
}

/// Unpacks layers as they are reported, until every sender of `arrivals` is gone (the
/// fetch's, and those of download-time unpacks still running). See the module doc.
fn unpack_as_fed(
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
        slots: Slots::per_core(),
        results: Mutex::new(Vec::new()),
        stopped_first: Mutex::new(false),
    };
    std::thread::scope(|scope| {
        let shared = &shared;
        let (done, staged) = mpsc::channel::<Done>();
        scope.spawn(move || publish_in_order(shared, staged));
        let mut chains = Chains::default();
        // Arrivals whose chain ID is not known yet, by index.
        let mut early: BTreeMap<usize, Vec<Arrival>> = BTreeMap::new();
        // Layers started (each index is staged once).
        let mut started: HashSet<usize> = HashSet::new();
        // Layers being unpacked from their download: whether their blob is ready since.
        let mut following: HashMap<usize, bool> = HashMap::new();
        let from_blob =
            |index: usize, source: LayerSource, chain: Digest, started: &mut HashSet<usize>| {
                if !started.insert(index) {
                    return;
                }
                let slot: Slot<'_> = shared.slots.take();
                let done = done.clone();
                scope.spawn(move || {
                    let _slot = slot;
                    let at = Instant::now();
                    match shared.layers.stage(&source, &chain, shared.limits) {
                        Ok(stage) => {
                            if let Stage::Staged(_) = stage {
                                shared.debug(
                                    index,
                                    at,
                                    &UnpackReport::default(),
                                    "staged from its blob",
                                );
                            }
                            let _ = done.send(Done {
                                index,
                                chain,
                                stage,
                            });
                        }
                        Err(error) => shared.record(index, Err(error)),
                    }
                });
            };
        let handle = |arrival: Arrival,
                      chain: Digest,
                      started: &mut HashSet<usize>,
                      following: &mut HashMap<usize, bool>| {
            match arrival {
                Arrival::Downloading {
                    index,
                    source,
                    follower,
                    missed,
                } => {
                    // Complete already: its `Ready` reports it.
                    if started.contains(&index) || layers.is_complete(&chain) {
                        return;
                    }
                    started.insert(index);
                    following.insert(index, false);
                    let slot: Slot<'_> = shared.slots.take();
                    let done = done.clone();
                    scope.spawn(move || {
                        let _slot = slot;
                        let at = Instant::now();
                        match shared.layers.stage_following(&source, &chain, follower, shared.limits) {
                            Ok(stage) => {
                                shared.debug(index, at, &UnpackReport::default(), "staged as it downloaded");
                                let _ = done.send(Done { index, chain, stage });
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
                    None => from_blob(index, source, chain, started),
                },
                Arrival::Missed(index, source) => {
                    started.remove(&index);
                    if following.remove(&index) == Some(true) {
                        from_blob(index, source, chain, started);
                    }
                    // Otherwise its `Ready` is still to come, and unpacks it.
                }
            }
        };
        for arrival in arrivals {
            if feed.stopped() {
                continue;
            }
            let (index, source) = index_of(&arrival);
            chains.learn(index, &source.diff_id);
            early.entry(index).or_default().push(arrival);
            // Everything whose chain is known now, lowest first.
            while let Some(entry) = early.first_entry() {
                let Some(chain) = chains.of(*entry.key()).cloned() else {
                    break;
                };
                for arrival in entry.remove() {
                    handle(arrival, chain.clone(), &mut started, &mut following);
                }
            }
        }
        drop(done);
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

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::image::Compression;

    /// A layer tar of `(path, contents, hard link target)` entries, and its source.
    fn layer(dir: &std::path::Path, entries: &[(&str, &[u8], Option<&str>)]) -> LayerSource {
        let mut tar = tar::Builder::new(Vec::new());
        for (path, data, link) in entries {
            let mut h = tar::Header::new_ustar();
            h.set_mode(0o644);
            h.set_mtime(1_600_000_000);
            match link {
                Some(target) => {
                    h.set_entry_type(tar::EntryType::Link);
                    h.set_size(0);
                    tar.append_link(&mut h, path, target).expect("link");
                }
                None => {
                    h.set_size(data.len() as u64);
                    tar.append_data(&mut h, path, *data).expect("file");
                }
            }
        }
        let tar = tar.into_inner().expect("tar");
        let diff_id = Digest::of(&tar);
        let blob = dir.join(diff_id.hex());
        std::fs::File::create(&blob)
            .and_then(|mut f| f.write_all(&tar))
            .expect("blob");
        LayerSource {
            blob,
            compression: Compression::None,
            digest: diff_id.clone(),
            diff_id,
        }
    }

    /// Layers reported top first still publish bottom first: the upper one, which links to a
    /// file of the lower one, is settled against it.
    #[test]
    fn layers_arriving_out_of_order_are_published_onto_the_layers_below() {
        assert!(nix::unistd::Uid::effective().is_root(), "needs root");
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LayerStore::open(dir.path()).expect("store");
        let lower = layer(dir.path(), &[("f", b"lower", None)]);
        let upper = layer(dir.path(), &[("h", b"", Some("f"))]);
        let (send, arrivals) = mpsc::channel();
        send.send(Arrival::Ready(1, upper.clone())).expect("send");
        send.send(Arrival::Ready(0, lower.clone())).expect("send");
        drop(send);
        let unpacked = unpack_as_fed(
            &store,
            arrivals,
            &Limits::default(),
            &LayerFeed::default(),
            Instant::now(),
        );
        assert_eq!(unpacked.results.len(), 2);
        for (index, result) in unpacked.results {
            result.unwrap_or_else(|e| panic!("layer {index}: {e}"));
        }
        let dirs = store.image_layer_dirs(&[lower.diff_id, upper.diff_id]);
        let top = &dirs[1];
        assert_eq!(std::fs::read(top.join("h")).expect("linked"), b"lower");
        let ino = |p: &str| std::fs::metadata(top.join(p)).expect("stat").ino();
        assert_eq!(ino("h"), ino("f"), "linked to the copy up");
    }
}
