//! [`BlobWriter`]: one blob being streamed into a staging file.
//!
//! Bytes go through a large buffer into the staging file and into a running sha256 and byte count,
//! so the hot path costs one `write` syscall per buffer-full and no copies beyond the buffer. When
//! a follower took the digest check before the first byte (`super::handover`: an unpack hashes the
//! compressed bytes it reads beside the uncompressed ones, nearly for free), the writer does not
//! hash: its commit waits for the follower's digest, or hashes the rest of the staging file itself
//! should the follower have gone. `commit` checks size then digest, then either marks the blob
//! unsynced (see `super::unsynced`) or fsyncs it, renames it into `blobs/sha256/` and, when it was
//! fsync'd, fsyncs the directory; every other ending (a mismatch, an error, a drop) removes the
//! staging file. A writer whose write failed or overflowed is poisoned: it can only fail from then
//! on, since its file and its hash may no longer agree. Followers learn how far the staging file
//! goes after each write, and how the writer ended, through `super::handover`.

use std::fs::{self, File, Permissions};
use std::io::{self, BufWriter, IoSlice, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use super::follow::Growing;
use super::handover::Handover;
use super::unsynced::Unsynced;
use super::{io_err, sync_dir, CacheError};
use crate::digest::{Digest, Hasher};

/// Size of the write buffer: large writes bypass it, small ones are batched.
const BUFFER: usize = 512 * 1024;

/// Why a writer is poisoned.
#[derive(Debug, Clone, Copy)]
enum Poison {
    /// Writes totalling this many bytes went past the expected size.
    Overflow(u64),
    /// A write to the staging file failed.
    Io(io::ErrorKind),
}

/// Who hashes a writer's bytes.
#[derive(Debug)]
enum Hashing {
    /// Decided at the first byte (a follower may take the check until then).
    Undecided,
    /// The writer, into this.
    Writer(Hasher),
    /// The follower that took the check.
    Follower,
}

/// A blob being written. Dropping it without `commit` removes the staging file.
#[derive(Debug)]
pub(crate) struct BlobWriter {
    /// `None` only while dropping.
    out: Option<BufWriter<File>>,
    hashing: Hashing,
    written: u64,
    digest: Digest,
    expected_size: u64,
    staging: PathBuf,
    blob_dir: PathBuf,
    /// Where the commit marks the blob unsynced; `None`: it fsyncs instead.
    unsynced: Option<Unsynced>,
    /// This writer's hand-over to followers; taken when it commits or goes.
    followed: Option<(Growing, Arc<Handover>)>,
    poison: Option<Poison>,
    /// The staging file no longer exists (renamed into place or removed by `commit`).
    settled: bool,
}

impl BlobWriter {
    pub(super) fn new(
        file: File,
        staging: PathBuf,
        blob_dir: PathBuf,
        digest: Digest,
        expected_size: u64,
    ) -> BlobWriter {
        BlobWriter {
            out: Some(BufWriter::with_capacity(BUFFER, file)),
            hashing: Hashing::Writer(Hasher::new()),
            written: 0,
            digest,
            expected_size,
            staging,
            blob_dir,
            unsynced: None,
            followed: None,
            poison: None,
            settled: false,
        }
    }

    /// The commit marks the blob unsynced in `unsynced` instead of fsyncing it.
    pub(super) fn marking(mut self, unsynced: Unsynced) -> BlobWriter {
        self.unsynced = Some(unsynced);
        self
    }

    /// Followers of the blob learn this writer's progress through `handover`.
    pub(super) fn followed(mut self, growing: Growing, handover: Arc<Handover>) -> BlobWriter {
        self.followed = Some((growing, handover));
        self.hashing = Hashing::Undecided;
        self
    }

    /// The hasher of the writer's bytes; `None` when a follower hashes them.
    fn hasher(&mut self) -> Option<&mut Hasher> {
        if let Hashing::Undecided = self.hashing {
            let writer_hashes = match &self.followed {
                Some((_, handover)) => handover.writer_hashes(),
                None => true,
            };
            self.hashing = match writer_hashes {
                true => Hashing::Writer(Hasher::new()),
                false => Hashing::Follower,
            };
        }
        match &mut self.hashing {
            Hashing::Writer(hasher) => Some(hasher),
            _ => None,
        }
    }

    /// The digest of every byte written: the writer's own, or the checking follower's (once
    /// it has read them all), or the follower's hash so far completed from the staging file.
    fn digest(&mut self) -> Result<Digest, CacheError> {
        if let Some(hasher) = self.hasher() {
            return Ok(std::mem::take(hasher).finish());
        }
        let (_, handover) = self
            .followed
            .as_ref()
            .expect("only a followed writer leaves the hashing to a follower");
        handover.written(self.written);
        match handover.await_check() {
            Ok(digest) => Ok(digest),
            Err(so_far) => self.hash_staging(so_far),
        }
    }

    /// Completes `hasher` (which hashed the staging file's first `hasher.bytes()` bytes) from
    /// the staging file.
    fn hash_staging(&self, mut hasher: Hasher) -> Result<Digest, CacheError> {
        let mut file = File::open(&self.staging)
            .and_then(|mut file| file.seek(SeekFrom::Start(hasher.bytes())).map(|_| file))
            .map_err(io_err("reading staging file", &self.staging))?;
        let mut buf = vec![0; BUFFER];
        loop {
            match file.read(&mut buf) {
                Ok(0) => return Ok(hasher.finish()),
                Ok(n) => hasher.update(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err("reading staging file", &self.staging)(e)),
            }
        }
    }

    /// Tells followers how far the staging file goes.
    fn advanced(&self) {
        if let (Some((_, handover)), Some(out)) = (&self.followed, &self.out) {
            handover.advance(self.written - out.buffer().len() as u64);
        }
    }

    /// Followers learn how the blob ended: committed (`true`) or abandoned.
    fn settle_followers(&mut self, committed: bool) {
        if let Some((growing, handover)) = self.followed.take() {
            match committed {
                true => handover.commit(self.written),
                false => handover.abandon(),
            }
            growing.unregister(&self.digest, &handover);
        }
    }

    /// The staging file being written.
    pub(super) fn staging(&self) -> &std::path::Path {
        &self.staging
    }

    /// Bytes written so far (where a resumed download continues from).
    pub(crate) fn written(&self) -> u64 {
        self.written
    }

    /// Appends bytes, hashing and counting them. Fails with [`CacheError::SizeMismatch`] as soon
    /// as the total would exceed the expected size (those bytes are not written).
    pub(crate) fn write(&mut self, bytes: &[u8]) -> Result<(), CacheError> {
        let total = self.admit(bytes.len() as u64)?;
        let Some(out) = self.out.as_mut() else {
            return Err(self.poisoned_error(io::ErrorKind::Other));
        };
        if let Err(e) = out.write_all(bytes) {
            self.poison = Some(Poison::Io(e.kind()));
            return Err(io_err("writing staging file", &self.staging)(e));
        }
        if let Some(hasher) = self.hasher() {
            hasher.update(bytes);
        }
        self.written = total;
        self.advanced();
        Ok(())
    }

    /// [`Self::write`] of several buffers at once (chunks as they came off the network),
    /// straight from them into the file with vectored writes: no copy into the write buffer.
    pub(crate) fn write_chunks<B: AsRef<[u8]>>(&mut self, chunks: &[B]) -> Result<(), CacheError> {
        let len = chunks.iter().map(|c| c.as_ref().len() as u64).sum();
        let total = self.admit(len)?;
        let Some(out) = self.out.as_mut() else {
            return Err(self.poisoned_error(io::ErrorKind::Other));
        };
        let written = out.flush().and_then(|()| {
            let mut slices: Vec<IoSlice<'_>> =
                chunks.iter().map(|c| IoSlice::new(c.as_ref())).collect();
            write_all_vectored(out.get_mut(), &mut slices)
        });
        if let Err(e) = written {
            self.poison = Some(Poison::Io(e.kind()));
            return Err(io_err("writing staging file", &self.staging)(e));
        }
        if let Some(hasher) = self.hasher() {
            for chunk in chunks {
                hasher.update(chunk.as_ref());
            }
        }
        self.written = total;
        self.advanced();
        Ok(())
    }

    /// The total after `len` more bytes, if the writer may take them: not poisoned, and not
    /// past the expected size (which poisons it).
    fn admit(&mut self, len: u64) -> Result<u64, CacheError> {
        if let Some(Poison::Overflow(total)) = self.poison {
            self.poison = Some(Poison::Overflow(total.saturating_add(len)));
        }
        self.check_poison()?;
        let total = self.written.saturating_add(len);
        if total > self.expected_size {
            self.poison = Some(Poison::Overflow(total));
            self.check_poison()?;
        }
        Ok(total)
    }

    /// Verifies digest and size, then marks unsynced or fsyncs, and renames into place.
    ///
    /// If the blob is already in the store (another writer won), the staging file is removed
    /// and the blob's path returned. On any error nothing is stored and the staging file is gone.
    pub(crate) fn commit(mut self) -> Result<PathBuf, CacheError> {
        // On error, `self` drops at the end of this call and removes the staging file.
        self.check_poison()?;
        let Some(out) = self.out.as_mut() else {
            return Err(self.poisoned_error(io::ErrorKind::Other));
        };
        out.flush()
            .map_err(io_err("writing staging file", &self.staging))?;
        if self.written != self.expected_size {
            return Err(CacheError::SizeMismatch {
                digest: self.digest.clone(),
                expected: self.expected_size,
                actual: self.written,
            });
        }
        let actual = self.digest()?;
        if actual != self.digest {
            return Err(CacheError::DigestMismatch {
                expected: self.digest.clone(),
                actual,
            });
        }
        let Some(out) = self.out.as_ref() else {
            return Err(self.poisoned_error(io::ErrorKind::Other));
        };
        let file = out.get_ref();
        file.set_permissions(Permissions::from_mode(0o644))
            .map_err(io_err("setting the mode of staging file", &self.staging))?;
        let dest = self.blob_dir.join(self.digest.hex());
        if fs::symlink_metadata(&dest).is_ok() {
            // Another writer won; its blob is just as verified as ours.
            self.settled = true;
            fs::remove_file(&self.staging)
                .map_err(io_err("removing staging file", &self.staging))?;
            self.settle_followers(true);
            return Ok(dest);
        }
        // The marker is on disk before the rename can be; unmarked (asked for, or no boot ID
        // to mark with), the data is.
        let marked = match &self.unsynced {
            Some(unsynced) => unsynced
                .mark(self.digest.hex())
                .map_err(io_err("marking unsynced in", unsynced.dir()))?,
            None => false,
        };
        if !marked {
            file.sync_all()
                .map_err(io_err("syncing staging file", &self.staging))?;
        }
        fs::rename(&self.staging, &dest).map_err(io_err("renaming into the store", &dest))?;
        self.settled = true;
        if !marked {
            sync_dir(&self.blob_dir)?;
        }
        self.settle_followers(true);
        Ok(dest)
    }

    fn check_poison(&self) -> Result<(), CacheError> {
        match self.poison {
            None => Ok(()),
            Some(Poison::Overflow(actual)) => Err(CacheError::SizeMismatch {
                digest: self.digest.clone(),
                expected: self.expected_size,
                actual,
            }),
            Some(Poison::Io(kind)) => Err(self.poisoned_error(kind)),
        }
    }

    fn poisoned_error(&self, kind: io::ErrorKind) -> CacheError {
        CacheError::Io {
            action: "writing staging file",
            path: self.staging.clone(),
            source: io::Error::new(kind, "an earlier write to this staging file failed"),
        }
    }
}

/// Writes every byte of `slices` (`Write::write_all_vectored` is not stable yet).
fn write_all_vectored(file: &mut File, mut slices: &mut [IoSlice<'_>]) -> io::Result<()> {
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        match file.write_vectored(slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        // Nothing left to follow once committed; abandoned otherwise.
        self.settle_followers(false);
        if let Some(out) = self.out.take() {
            // Discard what is still buffered rather than flushing it into a doomed file.
            let (file, _unflushed) = out.into_parts();
            drop(file);
        }
        if !self.settled {
            if let Err(e) = fs::remove_file(&self.staging) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(path = %self.staging.display(), error = %e, "cannot remove staging file");
                }
            }
        }
    }
}
