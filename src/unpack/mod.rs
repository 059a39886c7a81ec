//! The layer store: verified layer blobs unpacked, once each, into uid-shifted directories.
//!
//! Owns: turning an image's layers into directories that overlayfs stacks as `lowerdir`s
//! (module `store`: one directory per layer chain, see [`chain_ids`]). A layer directory holds
//! the layer applied onto the view of the layers below it, as containerd's snapshots do: every
//! uid/gid shifted by [`ID_SHIFT`], OCI whiteouts turned into overlayfs ones where the layers
//! below have something, the directories the layer needs but does not list given the lower
//! layers' owner, mode and xattrs, hard links to lower files copied up (module `settle`, over
//! module `lower`). It must never create, change or follow anything outside the staging
//! directory it is writing (every path of a layer is resolved in-root, see [`tree`]), never
//! change a published layer directory, never unpack a layer another process of the volume is
//! unpacking (it waits on the layer's lock, `crate::lock`, and then finds it complete), never keep a directory whose uncompressed content does
//! not hash to the layer's diff ID, and never fetch, verify compressed blobs or mount anything:
//! the caller hands it a blob already verified against the manifest.
//!
//! [`flatten()`] applies an image's layers, in order, onto one merged directory with the same
//! reader and writer (module `flatten`; whiteouts then act on the tree, see `tree::flat`).

mod acl;
pub(crate) mod archive;
pub(crate) mod complete;
mod creds;
mod decode;
mod flatten;
pub(crate) mod gzip;
pub(crate) mod header;
mod lower;
mod settle;
mod store;
mod stream;
mod tree;

pub use flatten::{flatten, Durability, FlattenReport};

#[cfg(test)]
mod flatten_tests;
#[cfg(test)]
mod settle_tests;
#[cfg(test)]
mod tests;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::digest::Digest;
use crate::image::Compression;

/// What every uid and gid of a layer is shifted by: the inner container's user namespace maps
/// its 0..65536 onto 100000..165536 (the spec's mapping), so sysbox-runc finds nothing to shift.
pub use crate::image::ID_SHIFT;

/// A uid or gid at or above this in a layer is refused: it has no place in the mapping.
pub(crate) const ID_RANGE: u64 = crate::image::ID_RANGE as u64;

/// Errors of this module. `layer` is the compressed (manifest) digest of the layer; `path` is
/// the entry's name as written in the layer's tar stream.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each variant's #[error] message documents it
pub enum UnpackError {
    #[error("layer store: {action} {path}: {source}")]
    Store {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("layer {layer}: opening blob {path}: {source}")]
    Blob {
        layer: Digest,
        path: PathBuf,
        source: io::Error,
    },
    #[error("layer {layer}: reading the stream after entry {after:?}: {source}")]
    Stream {
        layer: Digest,
        after: PathBuf,
        source: io::Error,
    },
    #[error("layer {layer}: {action} {path:?}: {source}")]
    Entry {
        layer: Digest,
        path: PathBuf,
        action: &'static str,
        source: io::Error,
    },
    #[error("layer {layer}: {path:?}: {which} {value} is not below {ID_RANGE}")]
    IdOutOfRange {
        layer: Digest,
        path: PathBuf,
        which: &'static str,
        value: u64,
    },
    #[error("layer {layer}: {path:?}: xattr {name}: {reason}")]
    BadAcl {
        layer: Digest,
        path: PathBuf,
        name: &'static str,
        reason: String,
    },
    #[error("layer {layer}: {path:?}: unsupported tar entry type {kind:?}")]
    UnsupportedType {
        layer: Digest,
        path: PathBuf,
        kind: char,
    },
    #[error("layer {layer}: {path:?}: {reason}")]
    BadEntry {
        layer: Digest,
        path: PathBuf,
        reason: &'static str,
    },
    #[error("layer {layer}: {path:?}: parent {parent:?} exists and is not a directory")]
    ParentNotDir {
        layer: Digest,
        path: PathBuf,
        parent: PathBuf,
    },
    #[error("layer {layer}: {path:?}: hard link target {target:?} {reason}")]
    HardlinkTarget {
        layer: Digest,
        path: PathBuf,
        target: PathBuf,
        reason: &'static str,
    },
    #[error("layer {layer}: uncompressed stream exceeds the budget of {limit} bytes (at entry {path:?}); nothing was kept")]
    TooLarge {
        layer: Digest,
        path: PathBuf,
        limit: u64,
    },
    #[error("layer {layer}: more than {limit} entries (at entry {path:?}); nothing was kept")]
    TooManyEntries {
        layer: Digest,
        path: PathBuf,
        limit: u64,
    },
    #[error(transparent)]
    Lock(crate::lock::LockError),
    #[error("flatten: target {path} already exists")]
    TargetExists { path: PathBuf },
    #[error("layer {layer}: uncompressed content has diff ID {actual}, the image config says {expected}; nothing was kept")]
    DiffIdMismatch {
        layer: Digest,
        expected: Digest,
        actual: Digest,
    },
}

fn store_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> UnpackError + 'a {
    move |source| UnpackError::Store {
        action,
        path: path.to_owned(),
        source,
    }
}

/// A verified layer blob and what its uncompressed content must hash to.
#[derive(Debug, Clone)]
pub struct LayerSource {
    /// The compressed blob file, already verified against `digest`.
    pub blob: PathBuf,
    /// How the blob is compressed.
    pub compression: Compression,
    /// The blob's (compressed) digest, as in the manifest; named in errors.
    pub digest: Digest,
    /// The sha256 of the uncompressed tar stream, as in the image config's `rootfs.diff_ids`.
    pub diff_id: Digest,
}

/// Budgets against decompression bombs. Exceeding one fails the unpack; nothing is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Uncompressed tar stream bytes (headers and padding included). Default 64 GiB.
    pub max_uncompressed_bytes: u64,
    /// Tar entries (a PAX or GNU long-name header and its entry count once). Default 10 million.
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_uncompressed_bytes: 64 << 30,
            max_entries: 10_000_000,
        }
    }
}

/// What an unpack did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnpackReport {
    /// Tar entries read (0 when the layer was already complete).
    pub entries: u64,
    /// Uncompressed stream bytes read (0 when the layer was already complete).
    pub bytes: u64,
    /// The layer was complete already (nothing was read), or another process completed it first.
    pub reused: bool,
    /// Things skipped that the caller may want to log: device nodes, dropped xattrs.
    pub warnings: Vec<String>,
}

/// The chain IDs of an image's layers, bottom first (diff IDs bottom first): the bottom
/// layer's is its diff ID, each other's the sha256 of `<chain ID below> <diff ID>`, as the
/// OCI image spec defines them and containerd keys its snapshots. A layer directory is the
/// layer applied onto the layers below it, so it is keyed by its chain ID.
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut chains: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let chain = match chains.last() {
            None => diff_id.clone(),
            Some(below) => Digest::of(format!("{below} {diff_id}").as_bytes()),
        };
        chains.push(chain);
    }
    chains
}

pub use store::{LayerStore, Stage, Staged};

/// Removes a staging entry: a directory tree (never following a symlink inside it) or a file.
fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path)?.is_dir() {
        true => fs::remove_dir_all(path),
        false => fs::remove_file(path),
    }
}
