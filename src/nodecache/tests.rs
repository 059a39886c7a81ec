//! Leases and the cleanup on a real directory (the cross-process cases are in
//! `tests/nodecache.rs`).

use std::fs;
use std::time::{Duration, SystemTime};

use super::*;
use crate::cache::BlobStore;
use crate::digest::Digest;
use crate::unpack::complete::Completion;
use crate::unpack::LayerStore;

struct Node {
    _tmp: tempfile::TempDir,
    cache: NodeCache,
    blobs: BlobStore,
    layers: LayerStore,
}

fn node(ttl: Duration, budget: u64) -> Node {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    fs::create_dir(&dir).unwrap();
    let state = tmp.path().join("state");
    Node {
        cache: NodeCache::open(&dir, ttl, budget).unwrap(),
        blobs: BlobStore::open_split(&state, &dir).unwrap(),
        layers: LayerStore::open(&dir).unwrap(),
        _tmp: tmp,
    }
}

impl Node {
    /// A blob `n` of `bytes` bytes, last used `age` ago.
    fn blob(&self, n: u8, bytes: usize, age: Duration) -> Digest {
        let data = vec![n; bytes];
        let digest = Digest::of(&data);
        self.blobs.put(&digest, &data).unwrap();
        set_age(&self.blobs.path(&digest), age);
        digest
    }

    /// A complete layer `n` of `bytes` bytes (as its marker says), last used `age` ago.
    fn layer(&self, n: u8, bytes: u64, age: Duration) -> Digest {
        let chain = Digest::of(&[b'L', n]);
        fs::create_dir(self.layers.path(&chain)).unwrap();
        let markers = self.layers.markers();
        markers
            .write(&Completion::new(
                chain.clone(),
                chain.clone(),
                chain.clone(),
                bytes,
            ))
            .unwrap();
        set_age(&markers.path(&chain), age);
        assert!(self.layers.is_complete(&chain));
        chain
    }
}

fn set_age(path: &std::path::Path, age: Duration) {
    let file = fs::File::options().write(true).open(path).unwrap();
    file.set_modified(SystemTime::now() - age).unwrap();
}

const DAY: Duration = Duration::from_secs(86_400);

#[test]
fn a_missing_or_unwritable_node_cache_is_refused_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing");
    assert_eq!(
        NodeCache::open(&missing, DAY, 1).unwrap_err(),
        "does not exist"
    );
    assert!(
        !missing.exists(),
        "never created: an absent hostPath stays visible"
    );
    let file = tmp.path().join("file");
    fs::write(&file, b"").unwrap();
    assert_eq!(
        NodeCache::open(&file, DAY, 1).unwrap_err(),
        "is not a directory"
    );
}

#[test]
fn a_live_lease_keeps_what_it_names_and_a_dead_one_does_not() {
    let n = node(Duration::ZERO, 0);
    let used_layer = n.layer(1, 100, 30 * DAY);
    let used_blob = n.blob(1, 10, 30 * DAY);
    let other_layer = n.layer(2, 100, Duration::ZERO);
    let other_blob = n.blob(2, 10, Duration::ZERO);
    let uses = Uses {
        layers: vec![used_layer.clone()],
        blobs: vec![used_blob.clone()],
    };
    let lease = n
        .cache
        .lease("pod-a", uses.clone(), &n.blobs, &n.layers)
        .unwrap();
    // Taking it renewed the times of what it names.
    let marker_age = fs::metadata(n.layers.markers().path(&used_layer))
        .unwrap()
        .modified()
        .unwrap()
        .elapsed()
        .unwrap_or_default();
    assert!(marker_age < DAY, "{marker_age:?}");

    let live = n.cache.live_leases().unwrap();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].1, uses);

    // TTL 0, budget 0: everything no live lease names goes.
    let cleaned = n.cache.clean(&n.blobs, &n.layers, false).unwrap();
    assert_eq!((cleaned.layers_removed, cleaned.blobs_removed), (1, 1));
    assert_eq!(cleaned.live_leases, 1);
    assert!(n.layers.is_complete(&used_layer));
    assert!(n.blobs.size_of(&used_blob).is_some());
    assert!(!n.layers.path(&other_layer).exists());
    assert!(n.blobs.size_of(&other_blob).is_none());
    let locks: Vec<_> = fs::read_dir(n.cache.dir().join("locks"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(locks, ["store"], "lock files go with the cleanup");

    // A clean stop removes the lease; a dead holder's lease (no lock) is dropped.
    let path = lease.path().to_owned();
    drop(lease);
    assert!(!path.exists());
    fs::write(&path, br#"{"holder":"gone","layers":[],"blobs":[]}"#).unwrap();
    assert!(n.cache.live_leases().unwrap().is_empty());
    assert!(!path.exists(), "a dead lease is removed");
    let cleaned = n.cache.clean(&n.blobs, &n.layers, false).unwrap();
    assert_eq!((cleaned.layers_removed, cleaned.blobs_removed), (1, 1));
}

#[test]
fn unleased_layers_go_by_ttl_then_budget_and_leftovers_of_a_kill_go() {
    let n = node(7 * DAY, 250);
    let old = n.layer(1, 100, 8 * DAY);
    let a = n.layer(2, 100, 3 * DAY);
    let b = n.layer(3, 100, 2 * DAY);
    let c = n.layer(4, 100, DAY);
    // A directory without its marker, and a marker without its directory.
    let unmarked = Digest::of(b"unmarked");
    fs::create_dir(n.layers.path(&unmarked)).unwrap();
    let orphan = Digest::of(b"orphan");
    n.layers
        .markers()
        .write(&Completion::new(
            orphan.clone(),
            orphan.clone(),
            orphan.clone(),
            1,
        ))
        .unwrap();

    let cleaned = n.cache.clean(&n.blobs, &n.layers, false).unwrap();
    // old: past the TTL; a: over the budget (300 > 250); b and c fit.
    assert_eq!(cleaned.layers_removed, 2);
    assert_eq!(cleaned.bytes_freed, 200);
    for (chain, kept) in [(&old, false), (&a, false), (&b, true), (&c, true)] {
        assert_eq!(n.layers.is_complete(chain), kept, "{chain}");
    }
    assert!(!n.layers.path(&unmarked).exists());
    assert!(!n.layers.markers().path(&orphan).exists());

    // Full: everything unused goes, whatever the TTL and budget.
    let cleaned = n.cache.clean(&n.blobs, &n.layers, true).unwrap();
    assert_eq!(cleaned.layers_removed, 2);
}

#[test]
fn a_live_lease_that_cannot_be_read_stops_the_cleanup() {
    let n = node(Duration::ZERO, 0);
    let layer = n.layer(1, 1, DAY);
    let lease = n
        .cache
        .lease("pod", Uses::default(), &n.blobs, &n.layers)
        .unwrap();
    fs::write(lease.path(), b"not json").unwrap();
    let err = n.cache.clean(&n.blobs, &n.layers, false).unwrap_err();
    assert!(matches!(err, NodeCacheError::BadLease { .. }), "{err}");
    assert!(n.layers.is_complete(&layer), "nothing was removed");
}
