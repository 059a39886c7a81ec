//! The content-addressed blob store on the persistent volume.
//!
//! Owns: `<state_dir>/blobs/sha256/<hex>` files, written only through a staging file that is
//! hashed (by its writer, or by the follower that reads it as it arrives, see [`Follower`]) and
//! counted as it is written, checked against the expected digest and size and renamed into
//! place: a blob in the store is always complete and verified. Stale staging
//! files from a crash are removed when the store is opened. Also the small index of which
//! reference resolved to which manifest digest. It never talks to the network and never
//! decides what to fetch.
//!
//! Durability: a streamed blob (a layer or an image config, [`BlobStore::writer`]) is not fsync'd
//! before it is published: it is marked unsynced first ([`unsynced`]: a marker naming the boot,
//! made durable before the rename), so a blob a power loss may have torn is removed when the store
//! is next opened after the restart, and fetched again. Waiting for each layer's data to reach the
//! disk before unpacking it would hold up the unpack (and stall the unpacks already running, whose
//! files the fsync's journal commit takes along). [`BlobStore::sync`] makes the blobs of this boot
//! durable with one `syncfs` (`envbox pull` and `envbox prepare` before they exit, `envbox docker`
//! once the workspace is up). Blobs written whole ([`BlobStore::put`]: manifests, and what an
//! archive import builds in memory) and pins are fsync'd before they are renamed, so a pin never
//! outlives the manifest it names.
//!
//! Layout under the state directory: `blobs/sha256/<hex>` (complete blobs, mode 0644),
//! `blobs/.unsynced/` (markers, see [`unsynced`]), `staging/` (in-progress writes, see
//! [`staging`]) and `refs/` (pins, see [`pins`]). With a node cache (`crate::nodecache`) the
//! blobs, their staging files and their locks are under the node cache's directory instead,
//! laid out the same way; the pins stay on the volume.

mod follow;
mod handover;
mod pins;
pub(crate) mod staging;
pub(crate) mod unsynced;
mod writer;

#[cfg(test)]
mod tests;

use crate::lock::{Held, Mode, VolumeLocks};
use crate::volume::VolumeLayout;
use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::digest::Digest;
use follow::Growing;
use unsynced::Unsynced;

pub(crate) use follow::Follower;
pub(crate) use writer::BlobWriter;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each variant's #[error] message documents it
pub enum CacheError {
    #[error("blob {expected}: content has digest {actual}, its descriptor says {expected}; nothing was stored")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error(
        "blob {digest}: got {actual} bytes, the descriptor says {expected}; nothing was stored"
    )]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error(transparent)]
    Lock(#[from] crate::lock::LockError),
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Builds the `map_err` closure for an I/O failure of `action` on `path`.
fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CacheError + 'a {
    move |source| CacheError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// Fsyncs a directory so that renames into it survive a crash.
fn sync_dir(dir: &Path) -> Result<(), CacheError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing directory", dir))
}

/// A blob present in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BlobInfo {
    pub digest: Digest,
    pub size: u64,
}

/// The right to fetch one blob, see [`BlobStore::claim`].
#[derive(Debug)]
pub(crate) struct Claim {
    _held: Held,
    /// Another process held it first.
    pub waited: bool,
}

/// The store. Cheap to clone; safe to use from several tasks (each writer has its own file).
#[derive(Debug, Clone)]
pub struct BlobStore {
    /// Where the blobs, their staging files and locks are: the state dir, or a node cache.
    content: VolumeLayout,
    /// Where the pins are: the state dir.
    volume: VolumeLayout,
    locks: VolumeLocks,
    unsynced: Unsynced,
    growing: Growing,
}

impl BlobStore {
    /// Opens (creating if needed) the store under `state_dir`, removing stale staging files and
    /// the blobs a machine restart may have torn (published unsynced in an earlier boot).
    pub fn open(state_dir: &Path) -> Result<BlobStore, CacheError> {
        Self::open_in_boot(state_dir, unsynced::current_boot())
    }

    /// [`Self::open`] with the blobs under `content_dir` (a node cache), the pins under
    /// `state_dir`.
    pub(crate) fn open_split(
        state_dir: &Path,
        content_dir: &Path,
    ) -> Result<BlobStore, CacheError> {
        Self::open_parts(state_dir, content_dir, unsynced::current_boot())
    }

    /// [`Self::open`] as if the kernel's boot ID were `boot` (tests play restarts with it).
    pub(crate) fn open_in_boot(
        state_dir: &Path,
        boot: Option<String>,
    ) -> Result<BlobStore, CacheError> {
        Self::open_parts(state_dir, state_dir, boot)
    }

    fn open_parts(
        state_dir: &Path,
        content_dir: &Path,
        boot: Option<String>,
    ) -> Result<BlobStore, CacheError> {
        let volume = VolumeLayout::new(state_dir);
        let content = VolumeLayout::new(content_dir);
        let blobs = content.blobs();
        for dir in [
            &blobs.join("sha256"),
            &content.blob_staging(),
            &volume.blob_staging(),
            &volume.refs(),
        ] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(io_err("creating store directory", dir))?;
        }
        let unsynced =
            Unsynced::open(&blobs, boot).map_err(io_err("creating directory in", &blobs))?;
        let store = BlobStore {
            locks: VolumeLocks::new(content.root()),
            content,
            volume,
            unsynced,
            growing: Growing::default(),
        };
        store.drop_torn_blobs()?;
        let locks = store.locks.clone();
        staging::sweep(&store.staging_dir(), &|hex| {
            locks.is_held(&format!("blob-{hex}"))
        })?;
        if store.volume != store.content {
            // Only pins are written there (by this process, under no lock).
            staging::sweep(&store.pin_staging_dir(), &|_| false)?;
        }
        Ok(store)
    }

    /// Removes every blob published unsynced in an earlier boot, and its marker: the next pull
    /// that needs it fetches it again.
    fn drop_torn_blobs(&self) -> Result<(), CacheError> {
        let dir = self.unsynced.dir();
        let torn = self
            .unsynced
            .of_earlier_boots()
            .map_err(io_err("listing", dir))?;
        for (hex, marker) in torn {
            let path = self.blob_dir().join(&hex);
            match fs::remove_file(&path) {
                Ok(()) => {
                    tracing::warn!(blob = %path.display(), "this blob was downloaded before the machine restarted and may not have reached the disk: it is fetched again when needed")
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("removing the possibly torn blob", &path)(e)),
            }
            self.unsynced
                .forget(&marker)
                .map_err(io_err("removing", &marker))?;
        }
        Ok(())
    }

    /// Makes every blob this boot published unsynced durable (one `syncfs` of the store's
    /// filesystem) and forgets that they were not. Returns how many blobs that covered.
    pub(crate) fn sync(&self) -> Result<usize, CacheError> {
        let dir = self.blob_dir();
        self.unsynced
            .sync(&dir)
            .map_err(io_err("syncing the blobs in", &dir))
    }

    /// The directory the blobs live under: the state dir, or a node cache.
    pub(crate) fn root(&self) -> &Path {
        self.content.root()
    }

    fn blob_dir(&self) -> PathBuf {
        self.content.blobs().join("sha256")
    }

    fn staging_dir(&self) -> PathBuf {
        self.content.blob_staging()
    }

    /// Where pins are staged: beside them, on the volume.
    fn pin_staging_dir(&self) -> PathBuf {
        self.volume.blob_staging()
    }

    fn refs_dir(&self) -> PathBuf {
        self.volume.refs()
    }

    /// Where the blob lives (whether or not it is present).
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.blob_dir().join(digest.hex())
    }

    /// The blob's size when it is present.
    pub fn size_of(&self, digest: &Digest) -> Option<u64> {
        fs::metadata(self.path(digest))
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len())
    }

    /// Starts writing a blob expected to be `expected_size` bytes with `digest`; its commit
    /// publishes it unsynced (module doc). Until it is committed or dropped, [`Self::follow`]
    /// reads it as it grows.
    ///
    /// Allowed when the blob is already present: the existing blob is never touched before a
    /// verified commit. A write that would go past `expected_size` fails at once with
    /// [`CacheError::SizeMismatch`] (nothing past the expected size reaches the disk).
    pub(crate) fn writer(
        &self,
        digest: &Digest,
        expected_size: u64,
    ) -> Result<BlobWriter, CacheError> {
        let writer = self.fsyncing_writer(digest, expected_size)?;
        let progress = self.growing.register(digest, writer.staging());
        Ok(writer
            .marking(self.unsynced.clone())
            .followed(self.growing.clone(), progress))
    }

    /// A writer whose commit fsyncs the blob, which no one follows.
    fn fsyncing_writer(&self, digest: &Digest, size: u64) -> Result<BlobWriter, CacheError> {
        let (file, staging) = staging::create(&self.staging_dir(), digest.hex())?;
        Ok(BlobWriter::new(
            file,
            staging,
            self.blob_dir(),
            digest.clone(),
            size,
        ))
    }

    /// The right to fetch the blob `digest` (`what` it is, for the progress line of a wait):
    /// held by one process of the volume at a time (see `crate::lock`), until dropped. Blocks
    /// while another process holds it; then [`Claim::waited`] is true, and the blob is likely
    /// in the store already (the caller checks).
    pub(crate) fn claim(&self, digest: &Digest, what: &str) -> Result<Claim, CacheError> {
        let (held, waited) = self.locks.take(
            &format!("blob-{}", digest.hex()),
            Mode::Exclusive,
            &format!("downloading {what} ({digest})"),
        )?;
        Ok(Claim {
            _held: held,
            waited,
        })
    }

    /// Stores a small blob (a manifest) held in memory, verifying it; it is on disk when this
    /// returns.
    pub(crate) fn put(&self, digest: &Digest, bytes: &[u8]) -> Result<PathBuf, CacheError> {
        let mut writer = self.fsyncing_writer(digest, bytes.len() as u64)?;
        writer.write(bytes)?;
        writer.commit()
    }

    /// A reader of the blob `digest` while this process writes it (see [`Follower`]): it ends
    /// only once the blob is verified, and fails if the write is abandoned. `None` when no
    /// writer of it is running.
    pub(crate) fn follow(&self, digest: &Digest) -> Option<Follower> {
        self.growing.follow(digest)
    }

    /// Reads a small blob (manifest, config) whole, checking its digest again: a store may be
    /// shared (a node cache), and what is read whole costs little to hash. A blob that does
    /// not match is removed (the next pull fetches it again) and is an error.
    pub(crate) fn read(&self, digest: &Digest) -> Result<Vec<u8>, CacheError> {
        let path = self.path(digest);
        let bytes = fs::read(&path).map_err(io_err("reading blob", &path))?;
        let actual = Digest::of(&bytes);
        if &actual != digest {
            tracing::warn!(blob = %path.display(), %actual, "a blob in the store does not match its digest: removing it");
            self.remove(digest)?;
            return Err(CacheError::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// Every blob present, sorted by digest. Names that are not 64 lower-case hex are ignored.
    pub(crate) fn list(&self) -> Result<Vec<BlobInfo>, CacheError> {
        let dir = self.blob_dir();
        let mut blobs = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err("listing blobs in", &dir))? {
            let entry = entry.map_err(io_err("listing blobs in", &dir))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let Ok(digest) = Digest::parse(&format!("sha256:{name}")) else {
                continue;
            };
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                // Removed since the directory was read.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("reading metadata of", &entry.path())(e)),
            };
            if meta.is_file() {
                blobs.push(BlobInfo {
                    digest,
                    size: meta.len(),
                });
            }
        }
        blobs.sort_by(|a, b| a.digest.cmp(&b.digest));
        Ok(blobs)
    }

    /// Removes a blob (absent is fine), and its unsynced marker.
    pub(crate) fn remove(&self, digest: &Digest) -> Result<(), CacheError> {
        let path = self.path(digest);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(io_err("removing blob", &path)(e))
            }
            _ => {}
        }
        self.unsynced
            .forget_entry(digest.hex())
            .map_err(io_err("removing the unsynced marker of", &path))
    }

    /// Records that `reference` (as normalised text) resolved to manifest `digest`.
    pub(crate) fn pin(&self, reference: &str, digest: &Digest) -> Result<(), CacheError> {
        pins::pin(&self.refs_dir(), &self.pin_staging_dir(), reference, digest)
    }

    /// The manifest digest `reference` last resolved to, if recorded. A corrupt pin is removed
    /// and reads as absent.
    pub(crate) fn pinned(&self, reference: &str) -> Result<Option<Digest>, CacheError> {
        pins::pinned(&self.refs_dir(), reference)
    }

    /// Every pin as `(reference, manifest digest)`, the most recently used first (see
    /// [`Self::used`]); corrupt pins are skipped.
    pub(crate) fn pins(&self) -> Result<Vec<(String, Digest)>, CacheError> {
        pins::list(&self.refs_dir())
    }

    /// Records that `reference` (as normalised text) was used now as manifest `digest`, so it
    /// comes first in [`Self::pins`]: a pin naming `digest` already has its modification time
    /// set to now (no sync: the order of use is worth no wait on a start's path), any other is
    /// written ([`Self::pin`]).
    pub(crate) fn used(&self, reference: &str, digest: &Digest) -> Result<(), CacheError> {
        if self.pinned(reference)?.as_ref() == Some(digest) {
            let path = self.refs_dir().join(pins::file_name(reference));
            return fs::File::options()
                .write(true)
                .open(&path)
                .and_then(|file| file.set_modified(std::time::SystemTime::now()))
                .map_err(io_err("marking the use of pin", &path));
        }
        self.pin(reference, digest)
    }

    /// Removes the pin of `reference` (absent is fine).
    pub(crate) fn unpin(&self, reference: &str) -> Result<(), CacheError> {
        pins::unpin(&self.refs_dir(), reference)
    }

    /// The volume's locks (see `crate::lock`).
    pub(crate) fn locks(&self) -> &VolumeLocks {
        &self.locks
    }
}
