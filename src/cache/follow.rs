//! Following a blob while it is being written: reading a download as it arrives.
//!
//! Owns: the shared progress of a [`super::BlobWriter`] (bytes in its staging file, then
//! committed or abandoned) and [`Follower`], a reader of that staging file that returns only
//! bytes already written, waits for more, and reaches its end only once the blob is committed,
//! that is, verified against its digest and size. A follower of a blob that is abandoned (a
//! failed transfer, one that started over, a mismatch) fails its next read. So whatever is
//! built from a follower's bytes is built from verified bytes if and only if it read to the
//! end. It never writes, and never decides what to follow.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use crate::digest::Digest;

/// Where a blob being written stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// This many bytes are in the staging file.
    Writing(u64),
    /// Verified and in the store: this many bytes, all of them.
    Committed(u64),
    /// The writer went without committing.
    Abandoned,
}

/// The progress of one writer, shared with its followers.
#[derive(Debug)]
pub(super) struct Growth {
    state: Mutex<State>,
    changed: Condvar,
}

impl Growth {
    pub(super) fn new() -> Arc<Growth> {
        Arc::new(Growth {
            state: Mutex::new(State::Writing(0)),
            changed: Condvar::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, next: impl FnOnce(State) -> State) {
        let mut state = self.lock();
        *state = next(*state);
        self.changed.notify_all();
    }

    /// `len` bytes are in the staging file.
    pub(super) fn advance(&self, len: u64) {
        self.set(|s| match s {
            State::Writing(_) => State::Writing(len),
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
}

/// A reader of a blob being written (see the module doc). Obtained from
/// [`super::BlobStore::follow`].
#[derive(Debug)]
pub struct Follower {
    file: File,
    growth: Arc<Growth>,
    pos: u64,
}

impl Follower {
    pub(super) fn new(file: File, growth: Arc<Growth>) -> Follower {
        Follower {
            file,
            growth,
            pos: 0,
        }
    }
}

impl Read for Follower {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        let available = {
            let mut state = self.growth.lock();
            loop {
                match *state {
                    State::Writing(len) | State::Committed(len) if len > self.pos => {
                        break len - self.pos
                    }
                    State::Committed(_) => return Ok(0),
                    State::Abandoned => {
                        return Err(io::Error::other(
                            "the download of this blob was abandoned before it was verified",
                        ))
                    }
                    State::Writing(_) => {
                        state = self
                            .growth
                            .changed
                            .wait(state)
                            .unwrap_or_else(|p| p.into_inner());
                    }
                }
            }
        };
        let want = out
            .len()
            .min(usize::try_from(available).unwrap_or(usize::MAX));
        let n = self.file.read(&mut out[..want])?;
        if n == 0 {
            // The writer said these bytes are in the file: a shorter file is not the blob.
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the blob being followed is shorter than its writer wrote",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// The blobs this process is writing, by digest, for [`super::BlobStore::follow`]. Cheap to
/// clone (shared by every clone of a store).
#[derive(Debug, Clone, Default)]
pub(super) struct Growing(Arc<Mutex<Writers>>);

/// Each blob being written: its writer's progress and staging file.
type Writers = HashMap<Digest, (Arc<Growth>, PathBuf)>;

impl Growing {
    fn lock(&self) -> std::sync::MutexGuard<'_, Writers> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A writer of `digest` into `staging` starts: followers find it from now on (the latest
    /// writer of a digest, when two write it at once).
    pub(super) fn register(&self, digest: &Digest, staging: &Path) -> Arc<Growth> {
        let growth = Growth::new();
        self.lock()
            .insert(digest.clone(), (growth.clone(), staging.to_owned()));
        growth
    }

    /// The writer whose progress is `growth` is done (its entry only: another writer of the
    /// same digest may have registered since).
    pub(super) fn unregister(&self, digest: &Digest, growth: &Arc<Growth>) {
        let mut map = self.lock();
        if map.get(digest).is_some_and(|(g, _)| Arc::ptr_eq(g, growth)) {
            map.remove(digest);
        }
    }

    /// A follower of the blob being written with `digest`, if one is.
    pub(super) fn follow(&self, digest: &Digest) -> Option<Follower> {
        let (growth, staging) = self.lock().get(digest).cloned()?;
        // Gone already (committed and renamed, or removed): nothing to follow.
        let file = File::open(staging).ok()?;
        Some(Follower::new(file, growth))
    }
}
