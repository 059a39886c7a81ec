//! The node cache (`ENVBOX_NODE_CACHE`): verified blobs and unpacked layers shared by the
//! workspaces of a node, so a new workspace of an image the node holds starts without pulling.
//!
//! Owns: the choice of the node cache's directory (a hostPath) over the volume, and what makes
//! sharing it safe beyond what the stores do for any volume. The directory is laid out like the
//! content half of a state dir (`blobs/`, `staging/`, `layers/chain/`, `locks/`, see
//! `crate::volume::VolumeLayout`) and the blob and layer stores work on it as on a volume:
//! their flock locks hold across the pods' pid namespaces (one download and one unpack per
//! layer on the node), a layer is complete only with its completion marker (`crate::unpack`),
//! and a workspace's overlay reads its layers through a read-only bind (`crate::overlay`).
//! Added here: `leases/` (module `lease`: which layers and blobs each running workspace uses)
//! and the cleanup rule (module `clean`). The pod's volume keeps its pins and its overlay's
//! upper dir. A node cache that cannot be used (missing, not a directory, not writable) is
//! said in the progress log and the volume is used instead; it is never created here (an
//! absent hostPath would put it on the pod's own, short-lived filesystem). It never decides
//! what to fetch.

mod clean;
mod lease;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{names, Settings};

pub(crate) use clean::Cleaned;
pub(crate) use lease::{Lease, Uses};

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each variant's #[error] message documents it
pub enum NodeCacheError {
    #[error("node cache {path}: {action}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("node cache: {0}")]
    Lock(#[from] crate::lock::LockError),
    #[error("node cache: {0}")]
    Blobs(#[from] crate::cache::CacheError),
    #[error("node cache: {0}")]
    Layers(#[from] crate::unpack::UnpackError),
    #[error("node cache {path}: the lease {lease} of a running workspace cannot be read ({problem}); nothing was removed")]
    BadLease {
        path: PathBuf,
        lease: String,
        problem: String,
    },
}

fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> NodeCacheError + 'a {
    move |source| NodeCacheError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// A usable node cache and its cleanup settings.
#[derive(Debug, Clone)]
pub struct NodeCache {
    dir: PathBuf,
    /// `ENVBOX_NODE_CACHE_TTL`.
    ttl: Duration,
    /// `ENVBOX_NODE_CACHE_SIZE`.
    budget: u64,
}

impl NodeCache {
    /// The node cache the settings name: `None` when none is set; `Err` with a warning for
    /// the progress log when the one set cannot be used (the volume is used instead).
    pub fn from_settings(settings: &Settings) -> Result<Option<NodeCache>, String> {
        let Some(dir) = &settings.node_cache else {
            return Ok(None);
        };
        NodeCache::open(dir, settings.node_cache_ttl, settings.node_cache_size)
            .map(Some)
            .map_err(|problem| {
                format!(
                    "warning: {} {}: {problem}; the image is kept on the volume instead (mount the node's shared directory there, see deploy/kubernetes, or unset {})",
                    names::NODE_CACHE,
                    dir.display(),
                    names::NODE_CACHE.env
                )
            })
    }

    /// The node cache in `dir`, which must be a writable directory.
    pub(crate) fn open(dir: &Path, ttl: Duration, budget: u64) -> Result<NodeCache, String> {
        let meta = std::fs::metadata(dir).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => "does not exist".to_owned(),
            _ => format!("cannot be read: {e}"),
        })?;
        if !meta.is_dir() {
            return Err("is not a directory".to_owned());
        }
        // Writable: what a read-only hostPath or filesystem refuses.
        let probe = dir.join(format!(".envbox-probe.{}", std::process::id()));
        std::fs::write(&probe, b"")
            .and_then(|()| std::fs::remove_file(&probe))
            .map_err(|e| format!("cannot be written: {e}"))?;
        Ok(NodeCache {
            dir: dir.to_owned(),
            ttl,
            budget,
        })
    }

    /// Its directory: what the blob and layer stores are opened on.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `ENVBOX_NODE_CACHE_TTL`.
    pub(crate) fn ttl(&self) -> Duration {
        self.ttl
    }

    /// `ENVBOX_NODE_CACHE_SIZE`.
    pub(crate) fn budget(&self) -> u64 {
        self.budget
    }

    fn leases(&self) -> PathBuf {
        self.dir.join("leases")
    }
}
