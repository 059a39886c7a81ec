//! Following a blob while it is being written: reading a download as it arrives.
//!
//! Owns: [`Follower`], a buffered reader of a [`super::BlobWriter`]'s staging file that returns
//! only bytes already written, waits for more, and reaches its end only once the blob is
//! committed, that is, verified against its digest and size, and [`Growing`], the blobs this
//! process is writing. What the writer tells its followers, and the digest check a follower
//! takes for it, go through [`Handover`] (module `handover`). A follower of a blob that is
//! abandoned (a failed transfer, one that started over, a mismatch) fails its next read. So
//! whatever is built from a follower's bytes is built from verified bytes if and only if it read
//! to the end. The first follower, when it comes before the first byte, hashes the bytes it reads
//! for the writer (beside its reader's own hashing, see [`Follower::hash_beside`]) and hands the
//! digest over once every byte is written; one that goes before that hands over its hash so far.
//! It never writes, and never decides what to follow.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::handover::{Handover, Next};
use crate::digest::{Digest, Hasher};

/// Read size of the staging file.
const BUFFER: usize = 1 << 20;

/// The digest check a follower took (see the module doc).
#[derive(Debug)]
struct Checking {
    hasher: Hasher,
    /// The buffer's bytes below this are hashed.
    hashed: usize,
}

/// A buffered reader of a blob being written (see the module doc). Obtained from
/// [`super::BlobStore::follow`].
#[derive(Debug)]
pub(crate) struct Follower {
    file: File,
    handover: Arc<Handover>,
    /// Bytes read from the staging file.
    pos: u64,
    buf: Box<[u8]>,
    /// The buffer's unread bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    /// Present while this follower checks the digest and has not handed over.
    checking: Option<Checking>,
}

impl Follower {
    pub(super) fn new(file: File, handover: Arc<Handover>) -> Follower {
        let checking = handover.claim().then(|| Checking {
            hasher: Hasher::new(),
            hashed: 0,
        });
        Follower {
            file,
            handover,
            pos: 0,
            buf: vec![0; BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
            checking,
        }
    }

    /// Whether this follower checks the blob's digest for its writer.
    #[cfg(test)]
    pub(crate) fn checks(&self) -> bool {
        self.checking.is_some()
    }

    /// Hashes `data` (the reader's own stream) into `hasher`; a checking follower hashes the
    /// bytes it has buffered and not yet hashed beside it, two streams in one pass
    /// ([`Hasher::update_beside`]), as far as `data` goes.
    pub(crate) fn hash_beside(&mut self, hasher: &mut Hasher, data: &[u8]) {
        match &mut self.checking {
            Some(check) => {
                let take = (self.end - check.hashed).min(data.len());
                let mine = &self.buf[check.hashed..check.hashed + take];
                check.hasher.update_beside(mine, hasher, data);
                check.hashed += take;
            }
            None => hasher.update(data),
        }
    }

    /// Hashes what of the buffer the check has not hashed yet (before it is refilled).
    fn hash_buffer(&mut self) {
        if let Some(check) = &mut self.checking {
            check.hasher.update(&self.buf[check.hashed..self.end]);
            check.hashed = self.end;
        }
    }

    /// Waits until bytes past `pos` are in the staging file, and says how many; `0` at the
    /// end, once the blob is committed. Hands the digest over when every byte is written
    /// (called once the buffer is hashed: every byte read is in the check's hash).
    fn available(&mut self) -> io::Result<u64> {
        loop {
            match self.handover.wait(self.pos, self.checking.is_some()) {
                Ok(Next::Bytes(n)) => return Ok(n),
                Ok(Next::End) => return Ok(0),
                Ok(Next::HandOver) => {
                    if let Some(check) = self.checking.take() {
                        self.handover.hand_over_digest(check.hasher.finish());
                    }
                }
                Err(abandoned) => return Err(io::Error::other(abandoned)),
            }
        }
    }
}

impl BufRead for Follower {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.start == self.end {
            self.hash_buffer();
            let available = self.available()?;
            let want = self
                .buf
                .len()
                .min(usize::try_from(available).unwrap_or(usize::MAX));
            let n = if want == 0 {
                0
            } else {
                match self.file.read(&mut self.buf[..want])? {
                    // The writer said these bytes are in the file: a shorter file is not the
                    // blob.
                    0 => {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the blob being followed is shorter than its writer wrote",
                        ))
                    }
                    n => n,
                }
            };
            self.pos += n as u64;
            (self.start, self.end) = (0, n);
            if let Some(check) = &mut self.checking {
                check.hashed = 0;
            }
        }
        Ok(&self.buf[self.start..self.end])
    }

    fn consume(&mut self, amount: usize) {
        self.start = (self.start + amount).min(self.end);
    }
}

impl Read for Follower {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        let n = {
            let buffered = self.fill_buf()?;
            let n = buffered.len().min(out.len());
            out[..n].copy_from_slice(&buffered[..n]);
            n
        };
        self.consume(n);
        Ok(n)
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        // Gone before the end: the writer finishes the hash from where this one got.
        self.hash_buffer();
        if let Some(check) = self.checking.take() {
            self.handover.hand_over_partial(check.hasher);
        }
    }
}

/// The blobs this process is writing, by digest, for [`super::BlobStore::follow`]. Cheap to
/// clone (shared by every clone of a store).
#[derive(Debug, Clone, Default)]
pub(super) struct Growing(Arc<Mutex<Writers>>);

/// Each blob being written: its writer's hand-over and staging file.
type Writers = HashMap<Digest, (Arc<Handover>, PathBuf)>;

impl Growing {
    fn lock(&self) -> std::sync::MutexGuard<'_, Writers> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A writer of `digest` into `staging` starts: followers find it from now on (the latest
    /// writer of a digest, when two write it at once).
    pub(super) fn register(&self, digest: &Digest, staging: &Path) -> Arc<Handover> {
        let handover = Handover::new();
        self.lock()
            .insert(digest.clone(), (handover.clone(), staging.to_owned()));
        handover
    }

    /// The writer whose hand-over is `handover` is done (its entry only: another writer of the
    /// same digest may have registered since).
    pub(super) fn unregister(&self, digest: &Digest, handover: &Arc<Handover>) {
        let mut map = self.lock();
        if map
            .get(digest)
            .is_some_and(|(g, _)| Arc::ptr_eq(g, handover))
        {
            map.remove(digest);
        }
    }

    /// A follower of the blob being written with `digest`, if one is.
    pub(super) fn follow(&self, digest: &Digest) -> Option<Follower> {
        let (handover, staging) = self.lock().get(digest).cloned()?;
        // Gone already (committed and renamed, or removed): nothing to follow.
        let file = File::open(staging).ok()?;
        Some(Follower::new(file, handover))
    }
}
