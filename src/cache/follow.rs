//! Following a blob while it is being written: reading a download as it arrives.
//!
//! Owns: the shared progress of a [`super::BlobWriter`] (bytes in its staging file, then all
//! written, then committed or abandoned) and [`Follower`], a buffered reader of that staging file
//! that returns only bytes already written, waits for more, and reaches its end only once the
//! blob is committed, that is, verified against its digest and size. A follower of a blob that
//! is abandoned (a failed transfer, one that started over, a mismatch) fails its next read. So
//! whatever is built from a follower's bytes is built from verified bytes if and only if it read
//! to the end. The first follower, when it comes before the first byte, also checks the digest
//! for the writer: it hashes the bytes it reads (beside its reader's own hashing, see
//! [`Follower::hash_beside`]) and hands the digest over once every byte is written; the writer
//! compares it and commits. A follower that goes before that hands over its hash so far, and the
//! writer hashes the rest from the staging file. It never writes, and never decides what to
//! follow.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use crate::digest::{Digest, Hasher};

/// Read size of the staging file.
const BUFFER: usize = 1 << 20;

/// Where a blob being written stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// This many bytes are in the staging file.
    Writing(u64),
    /// Every byte is in the staging file, this many; the digest is being checked.
    Written(u64),
    /// Verified and in the store: this many bytes, all of them.
    Committed(u64),
    /// The writer went without committing.
    Abandoned,
}

/// Who hashes the blob for its digest check.
#[derive(Debug)]
enum Check {
    /// Not decided: no byte is written yet.
    Open,
    /// The writer, as it writes.
    Writer,
    /// A follower, as it reads.
    Follower,
    /// The follower's digest of every byte written.
    Done(Digest),
    /// The follower went before the end: its hash of the bytes up to where it got.
    Partial(Hasher),
}

#[derive(Debug)]
struct Shared {
    state: State,
    check: Check,
}

/// The progress of one writer, shared with its followers.
#[derive(Debug)]
pub(super) struct WriteProgress {
    shared: Mutex<Shared>,
    changed: Condvar,
}

impl WriteProgress {
    pub(super) fn new() -> Arc<WriteProgress> {
        Arc::new(WriteProgress {
            shared: Mutex::new(Shared {
                state: State::Writing(0),
                check: Check::Open,
            }),
            changed: Condvar::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait<'a>(
        &self,
        shared: std::sync::MutexGuard<'a, Shared>,
    ) -> std::sync::MutexGuard<'a, Shared> {
        self.changed.wait(shared).unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, next: impl FnOnce(State) -> State) {
        let mut shared = self.lock();
        shared.state = next(shared.state);
        self.changed.notify_all();
    }

    /// `len` bytes are in the staging file.
    pub(super) fn advance(&self, len: u64) {
        self.set(|s| match s {
            State::Writing(_) => State::Writing(len),
            done => done,
        });
    }

    /// Every byte is in the staging file, `len` of them.
    pub(super) fn written(&self, len: u64) {
        self.set(|s| match s {
            State::Writing(_) => State::Written(len),
            done => done,
        });
    }

    /// The blob is verified and stored; its staging file held `len` bytes.
    pub(super) fn commit(&self, len: u64) {
        self.set(|_| State::Committed(len));
    }

    /// The writer goes without committing (nothing changes after a commit).
    pub(super) fn abandon(&self) {
        self.set(|s| match s {
            State::Committed(len) => State::Committed(len),
            _ => State::Abandoned,
        });
    }

    /// Called by the writer before its first byte: whether it hashes (`true`), or a follower
    /// does. A follower that went already handed back its (empty) hash: the writer's again.
    pub(super) fn writer_hashes(&self) -> bool {
        let mut shared = self.lock();
        match shared.check {
            Check::Follower => false,
            _ => {
                shared.check = Check::Writer;
                true
            }
        }
    }

    /// A new follower takes the digest check if no one has it and no byte is written yet.
    fn claim(&self) -> bool {
        let mut shared = self.lock();
        let open = matches!(shared.check, Check::Open) && shared.state == State::Writing(0);
        if open {
            shared.check = Check::Follower;
        }
        open
    }

    /// The checking follower hands over: the digest of every byte, or its hash so far.
    fn hand_over(&self, check: Check) {
        let mut shared = self.lock();
        if matches!(shared.check, Check::Follower) {
            shared.check = check;
            self.changed.notify_all();
        }
    }

    /// Called by a writer whose follower checks, once every byte is written ([`Self::written`]):
    /// waits for the follower to hand over. `Ok`: its digest of every byte; `Err`: it went
    /// early, with its hash of the bytes up to where it got.
    pub(super) fn await_check(&self) -> Result<Digest, Hasher> {
        let mut shared = self.lock();
        while matches!(shared.check, Check::Follower) {
            shared = self.wait(shared);
        }
        match std::mem::replace(&mut shared.check, Check::Writer) {
            Check::Done(digest) => Ok(digest),
            Check::Partial(hasher) => Err(hasher),
            // No follower had the check: nothing of it was hashed.
            Check::Open | Check::Writer | Check::Follower => Err(Hasher::new()),
        }
    }
}

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
    progress: Arc<WriteProgress>,
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
    pub(super) fn new(file: File, progress: Arc<WriteProgress>) -> Follower {
        let checking = progress.claim().then(|| Checking {
            hasher: Hasher::new(),
            hashed: 0,
        });
        Follower {
            file,
            progress,
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
        let mut shared = self.progress.lock();
        loop {
            match shared.state {
                State::Writing(len) | State::Written(len) | State::Committed(len)
                    if len > self.pos =>
                {
                    return Ok(len - self.pos)
                }
                State::Committed(_) => return Ok(0),
                State::Abandoned => {
                    return Err(io::Error::other(
                        "the download of this blob was abandoned before it was verified",
                    ))
                }
                State::Written(_) if self.checking.is_some() => {
                    drop(shared);
                    if let Some(check) = self.checking.take() {
                        self.progress.hand_over(Check::Done(check.hasher.finish()));
                    }
                    shared = self.progress.lock();
                }
                State::Writing(_) | State::Written(_) => shared = self.progress.wait(shared),
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
            self.progress.hand_over(Check::Partial(check.hasher));
        }
    }
}

/// The blobs this process is writing, by digest, for [`super::BlobStore::follow`]. Cheap to
/// clone (shared by every clone of a store).
#[derive(Debug, Clone, Default)]
pub(super) struct Growing(Arc<Mutex<Writers>>);

/// Each blob being written: its writer's progress and staging file.
type Writers = HashMap<Digest, (Arc<WriteProgress>, PathBuf)>;

impl Growing {
    fn lock(&self) -> std::sync::MutexGuard<'_, Writers> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A writer of `digest` into `staging` starts: followers find it from now on (the latest
    /// writer of a digest, when two write it at once).
    pub(super) fn register(&self, digest: &Digest, staging: &Path) -> Arc<WriteProgress> {
        let progress = WriteProgress::new();
        self.lock()
            .insert(digest.clone(), (progress.clone(), staging.to_owned()));
        progress
    }

    /// The writer whose progress is `progress` is done (its entry only: another writer of the
    /// same digest may have registered since).
    pub(super) fn unregister(&self, digest: &Digest, progress: &Arc<WriteProgress>) {
        let mut map = self.lock();
        if map
            .get(digest)
            .is_some_and(|(g, _)| Arc::ptr_eq(g, progress))
        {
            map.remove(digest);
        }
    }

    /// A follower of the blob being written with `digest`, if one is.
    pub(super) fn follow(&self, digest: &Digest) -> Option<Follower> {
        let (progress, staging) = self.lock().get(digest).cloned()?;
        // Gone already (committed and renamed, or removed): nothing to follow.
        let file = File::open(staging).ok()?;
        Some(Follower::new(file, progress))
    }
}
