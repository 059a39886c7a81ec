//! The node cache's cleanup rule.
//!
//! Owns: what leaves the node cache. Kept: every layer and blob a live lease names (module
//! `lease`), whatever its age or size. Of the rest, each with its last use (the modification
//! time of a layer's completion marker, of a blob's file: set when it was published and by
//! every renewal of a lease naming it): removed when unused for longer than the TTL
//! (`ENVBOX_NODE_CACHE_TTL`), then the least recently used first until what no lease names fits
//! the size budget (`ENVBOX_NODE_CACHE_SIZE`; a layer counts with its uncompressed size, as
//! its marker records it). Also removed: a layer directory without its completion marker and a
//! marker without its directory (what a kill left), dead leases, and the lock files. Whichever
//! envbox of the node runs next does it, holding the node cache's `store` lock exclusively: it
//! waits for every pod preparing an image, which holds it shared until its lease is taken
//! (`crate::prune`'s protocol, on the node cache's locks).

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use super::{NodeCache, NodeCacheError};
use crate::cache::BlobStore;
use crate::digest::Digest;
use crate::lock::Mode;
use crate::unpack::LayerStore;

/// What a cleanup did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Cleaned {
    pub layers_removed: usize,
    pub blobs_removed: usize,
    /// Bytes of the blobs removed plus the recorded sizes of the layers removed.
    pub bytes_freed: u64,
    /// Live leases found (workspaces of the node running now).
    pub live_leases: usize,
}

/// One removable thing.
#[derive(Debug)]
struct Item {
    kind: Kind,
    digest: Digest,
    bytes: u64,
    last_used: SystemTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Layer,
    Blob,
}

impl NodeCache {
    /// Applies the rule (module doc) with this cache's TTL and budget; `everything_unused`
    /// removes all that no live lease names (the node cache is full).
    pub(crate) fn clean(
        &self,
        blobs: &BlobStore,
        layers: &LayerStore,
        everything_unused: bool,
    ) -> Result<Cleaned, NodeCacheError> {
        let (_held, _) = blobs.locks().take(
            crate::prune::STORE_LOCK,
            Mode::Exclusive,
            "cleaning up the node cache; preparing the image waits until it is done",
        )?;
        let live = self.live_leases()?;
        let mut cleaned = Cleaned {
            live_leases: live.len(),
            ..Cleaned::default()
        };
        let leased_layers: BTreeSet<Digest> =
            live.iter().flat_map(|(_, u)| u.layers.clone()).collect();
        let leased_blobs: BTreeSet<Digest> =
            live.iter().flat_map(|(_, u)| u.blobs.clone()).collect();

        let mut items = Vec::new();
        let markers = layers.markers();
        let dirs: BTreeSet<Digest> = layers.list()?.into_iter().collect();
        let marked: BTreeSet<Digest> = markers
            .list()
            .map_err(super::io_err("listing", markers.dir()))?
            .into_iter()
            .collect();
        for chain in dirs.union(&marked) {
            if leased_layers.contains(chain) {
                continue;
            }
            // Complete: its directory and a marker naming it (`LayerStore::is_complete`).
            let record = markers.read(chain).filter(|_| dirs.contains(chain));
            let Some(record) = record else {
                // What a kill left, unless someone unpacks it now.
                if !blobs.locks().is_held(&format!("layer-{}", chain.hex())) {
                    layers.remove(chain)?;
                }
                continue;
            };
            let last_used = std::fs::metadata(markers.path(chain))
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            items.push(Item {
                kind: Kind::Layer,
                digest: chain.clone(),
                bytes: record.bytes,
                last_used,
            });
        }
        for blob in blobs.list()? {
            if leased_blobs.contains(&blob.digest) {
                continue;
            }
            let last_used = std::fs::metadata(blobs.path(&blob.digest))
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            items.push(Item {
                kind: Kind::Blob,
                digest: blob.digest,
                bytes: blob.size,
                last_used,
            });
        }

        let ttl = match everything_unused {
            true => Duration::ZERO,
            false => self.ttl(),
        };
        let doomed = doomed(items, SystemTime::now(), ttl, self.budget());
        for item in doomed {
            match item.kind {
                Kind::Layer => {
                    layers.remove(&item.digest)?;
                    cleaned.layers_removed += 1;
                }
                Kind::Blob => {
                    blobs.remove(&item.digest)?;
                    cleaned.blobs_removed += 1;
                }
            }
            cleaned.bytes_freed += item.bytes;
        }
        // No process of the node holds a blob or layer lock now (`crate::lock`).
        blobs.locks().remove_all_but(crate::prune::STORE_LOCK)?;
        Ok(cleaned)
    }
}

/// Of `items` (none named by a live lease), those the rule removes: unused for longer than
/// `ttl` at `now`, then the least recently used until the rest is at most `budget` bytes.
fn doomed(mut items: Vec<Item>, now: SystemTime, ttl: Duration, budget: u64) -> Vec<Item> {
    // Least recently used first.
    items.sort_by_key(|i| i.last_used);
    let mut kept_bytes: u64 = items.iter().map(|i| i.bytes).sum();
    let mut doomed = Vec::new();
    for item in items {
        let unused_for = now.duration_since(item.last_used).unwrap_or_default();
        if unused_for > ttl || kept_bytes > budget || ttl.is_zero() {
            kept_bytes -= item.bytes;
            doomed.push(item);
        }
    }
    doomed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(n: u8, bytes: u64, age_s: u64, now: SystemTime) -> Item {
        Item {
            kind: Kind::Layer,
            digest: Digest::of(&[n]),
            bytes,
            last_used: now - Duration::from_secs(age_s),
        }
    }

    fn names(items: &[Item]) -> Vec<Digest> {
        items.iter().map(|i| i.digest.clone()).collect()
    }

    #[test]
    fn the_rule_removes_what_outlived_the_ttl_then_the_least_recently_used_over_budget() {
        let now = SystemTime::now();
        let day = 86_400;
        let items = || {
            vec![
                item(1, 10, 9 * day, now), // past the TTL
                item(2, 10, 3 * day, now),
                item(3, 10, day, now),
                item(4, 10, 60, now),
            ]
        };
        let ttl = Duration::from_secs(7 * day);
        // Within budget: only what outlived the TTL.
        assert_eq!(
            names(&doomed(items(), now, ttl, 100)),
            vec![Digest::of(&[1])]
        );
        // Over budget after that: the least recently used until the rest fits.
        assert_eq!(
            names(&doomed(items(), now, ttl, 15)),
            vec![Digest::of(&[1]), Digest::of(&[2]), Digest::of(&[3])]
        );
        // A budget of 0 leaves nothing; a TTL of 0 too.
        assert_eq!(doomed(items(), now, ttl, 0).len(), 4);
        assert_eq!(doomed(items(), now, Duration::ZERO, 100).len(), 4);
        // Just under the TTL stays.
        assert!(doomed(vec![item(5, 1, 7 * day - 60, now)], now, ttl, 100).is_empty());
    }
}
