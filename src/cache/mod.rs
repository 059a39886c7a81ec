//! The content-addressed blob store on the persistent volume.
//!
//! Owns: `<state_dir>/blobs/sha256/<hex>` files, written only through a staging file that is
//! hashed and counted as it is written, checked against the expected digest and size, fsync'd
//! and renamed into place (then the directory fsync'd): a blob in the store is always complete
//! and verified. Stale staging files from a crash are removed when the store is opened. Also the
//! small index of which reference resolved to which manifest digest. It never talks to the
//! network and never decides what to fetch.

use std::path::{Path, PathBuf};

use crate::digest::Digest;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("blob {expected}: content has digest {actual}, the registry's descriptor says {expected}; nothing was stored")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("blob {digest}: got {actual} bytes, the descriptor says {expected}; nothing was stored")]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A blob present in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    pub digest: Digest,
    pub size: u64,
}

/// The store. Cheap to clone; safe to use from several tasks (each writer has its own file).
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
}

/// A blob being written. Dropping it without `commit` removes the staging file.
#[derive(Debug)]
pub struct BlobWriter {
    _private: (),
}

impl BlobStore {
    /// Opens (creating if needed) the store under `state_dir`, removing stale staging files.
    pub fn open(_state_dir: &Path) -> Result<BlobStore, CacheError> {
        unimplemented!()
    }

    /// Where the blob lives (whether or not it is present).
    pub fn path(&self, _digest: &Digest) -> PathBuf {
        unimplemented!()
    }

    /// The blob's size when it is present.
    pub fn size_of(&self, _digest: &Digest) -> Option<u64> {
        unimplemented!()
    }

    /// Starts writing a blob expected to be `expected_size` bytes with `digest`.
    pub fn writer(&self, _digest: &Digest, _expected_size: u64) -> Result<BlobWriter, CacheError> {
        unimplemented!()
    }

    /// Stores a small blob (manifest, config) held in memory, verifying it.
    pub fn put(&self, _digest: &Digest, _bytes: &[u8]) -> Result<PathBuf, CacheError> {
        unimplemented!()
    }

    /// Reads a small blob (manifest, config) whole.
    pub fn read(&self, _digest: &Digest) -> Result<Vec<u8>, CacheError> {
        unimplemented!()
    }

    /// Every blob present, sorted by digest.
    pub fn list(&self) -> Result<Vec<BlobInfo>, CacheError> {
        unimplemented!()
    }

    /// Removes a blob (absent is fine).
    pub fn remove(&self, _digest: &Digest) -> Result<(), CacheError> {
        unimplemented!()
    }

    /// Records that `reference` (as normalised text) resolved to manifest `digest`.
    pub fn pin(&self, _reference: &str, _digest: &Digest) -> Result<(), CacheError> {
        unimplemented!()
    }

    /// The manifest digest `reference` last resolved to, if recorded.
    pub fn pinned(&self, _reference: &str) -> Result<Option<Digest>, CacheError> {
        unimplemented!()
    }
}

impl BlobWriter {
    /// Bytes written so far (where a resumed download continues from).
    pub fn written(&self) -> u64 {
        unimplemented!()
    }

    /// Appends bytes, hashing and counting them.
    pub fn write(&mut self, _bytes: &[u8]) -> Result<(), CacheError> {
        unimplemented!()
    }

    /// Verifies digest and size, then fsyncs and renames into place.
    pub fn commit(self) -> Result<PathBuf, CacheError> {
        unimplemented!()
    }
}
