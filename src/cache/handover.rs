//! The hand-over between a blob's writer and its followers.
//!
//! Owns: [`Handover`], what a [`super::BlobWriter`] tells the [`super::Follower`]s of its blob
//! (bytes in the staging file, then every byte written, then verified or abandoned), and the
//! digest check a follower may take for the writer (it hashes what it reads, and hands the
//! digest over once every byte is written). The store's promise that every blob in it is
//! verified rests here: a follower reaches its end ([`Next::End`]) only once the writer said
//! verified ([`Handover::commit`]), which it says only after comparing the digest; an abandoned
//! writer (a failed transfer, one that started over, a size or digest mismatch) makes every
//! follower's next wait fail. It never touches a file and never decides what a digest is: the
//! writer compares, the follower hashes.
//!
//! ```text
//!   writer                         Handover                        follower
//!   advance(n) ------------------> Writing(n) ---- wait(pos) ----> Bytes(n - pos)
//!   written(n) ------------------> Written(n) ---- wait(pos) ----> HandOver (if it checks)
//!   await_check() <--------------- Done(digest) <- hand_over_digest(d)
//!   commit(n) | abandon() -------> Committed | Abandoned -------> End | Err(Abandoned)
//! ```

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::digest::{Digest, Hasher};

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

/// What a follower waiting past a position learns (see [`Handover::wait`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Next {
    /// This many bytes past the position are in the staging file.
    Bytes(u64),
    /// Every byte is written and the asking follower holds the digest check: it hands the
    /// digest over now ([`Handover::hand_over_digest`]) and waits again.
    HandOver,
    /// The blob is verified and the follower has every byte: the end.
    End,
}

/// The writer went without committing: whatever its followers read is not a verified blob.
#[derive(Debug, thiserror::Error)]
#[error("the download of this blob was abandoned before it was verified")]
pub(super) struct Abandoned;

/// The progress of one writer, shared with its followers (see the module doc).
#[derive(Debug)]
pub(super) struct Handover {
    shared: Mutex<Shared>,
    changed: Condvar,
}

impl Handover {
    pub(super) fn new() -> Arc<Handover> {
        Arc::new(Handover {
            shared: Mutex::new(Shared {
                state: State::Writing(0),
                check: Check::Open,
            }),
            changed: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait_changed<'a>(&self, shared: MutexGuard<'a, Shared>) -> MutexGuard<'a, Shared> {
        self.changed.wait(shared).unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, next: impl FnOnce(State) -> State) {
        let mut shared = self.lock();
        shared.state = next(shared.state);
        self.changed.notify_all();
    }

    /// Writer: `len` bytes are in the staging file.
    pub(super) fn advance(&self, len: u64) {
        self.set(|s| match s {
            State::Writing(_) => State::Writing(len),
            done => done,
        });
    }

    /// Writer: every byte is in the staging file, `len` of them.
    pub(super) fn written(&self, len: u64) {
        self.set(|s| match s {
            State::Writing(_) => State::Written(len),
            done => done,
        });
    }

    /// Writer: the blob is verified and stored; its staging file held `len` bytes.
    pub(super) fn commit(&self, len: u64) {
        self.set(|_| State::Committed(len));
    }

    /// Writer: it goes without committing (nothing changes after a commit).
    pub(super) fn abandon(&self) {
        self.set(|s| match s {
            State::Committed(len) => State::Committed(len),
            _ => State::Abandoned,
        });
    }

    /// Writer, before its first byte: whether it hashes (`true`), or a follower does. A
    /// follower that went already handed back its (empty) hash: the writer's again.
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

    /// Writer whose follower checks, once every byte is written ([`Self::written`]): waits for
    /// the follower to hand over. `Ok`: its digest of every byte; `Err`: it went early, with
    /// its hash of the bytes up to where it got.
    pub(super) fn await_check(&self) -> Result<Digest, Hasher> {
        let mut shared = self.lock();
        while matches!(shared.check, Check::Follower) {
            shared = self.wait_changed(shared);
        }
        match std::mem::replace(&mut shared.check, Check::Writer) {
            Check::Done(digest) => Ok(digest),
            Check::Partial(hasher) => Err(hasher),
            // No follower had the check: nothing of it was hashed.
            Check::Open | Check::Writer | Check::Follower => Err(Hasher::new()),
        }
    }

    /// Follower, when it starts: it takes the digest check if no one has it and no byte is
    /// written yet.
    pub(super) fn claim(&self) -> bool {
        let mut shared = self.lock();
        let open = matches!(shared.check, Check::Open) && shared.state == State::Writing(0);
        if open {
            shared.check = Check::Follower;
        }
        open
    }

    /// Follower: waits until bytes past `pos` are in the staging file, the blob is verified
    /// (once the follower has every byte), or the follower that `checks` must hand over.
    pub(super) fn wait(&self, pos: u64, checks: bool) -> Result<Next, Abandoned> {
        let mut shared = self.lock();
        loop {
            match shared.state {
                State::Writing(len) | State::Written(len) | State::Committed(len) if len > pos => {
                    return Ok(Next::Bytes(len - pos))
                }
                State::Committed(_) => return Ok(Next::End),
                State::Abandoned => return Err(Abandoned),
                State::Written(_) if checks => return Ok(Next::HandOver),
                State::Writing(_) | State::Written(_) => shared = self.wait_changed(shared),
            }
        }
    }

    /// Checking follower, at [`Next::HandOver`]: its digest of every byte.
    pub(super) fn hand_over_digest(&self, digest: Digest) {
        self.hand_over(Check::Done(digest));
    }

    /// Checking follower that goes before the end: its hash of the bytes up to where it got
    /// (the writer hashes the rest).
    pub(super) fn hand_over_partial(&self, hasher: Hasher) {
        self.hand_over(Check::Partial(hasher));
    }

    fn hand_over(&self, check: Check) {
        let mut shared = self.lock();
        if matches!(shared.check, Check::Follower) {
            shared.check = check;
            self.changed.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    const WAIT: Duration = Duration::from_secs(5);
    const STILL: Duration = Duration::from_millis(200);

    /// A follower on a thread of its own, as the unpack runs it: reads whatever is there,
    /// hands its digest of `content` over when asked, and reports each step.
    fn follower(
        handover: &Arc<Handover>,
        content: &'static [u8],
    ) -> mpsc::Receiver<Result<Next, Abandoned>> {
        let mut checks = handover.claim();
        let handover = handover.clone();
        let (send, got) = mpsc::channel();
        std::thread::spawn(move || {
            let mut pos = 0;
            loop {
                let next = handover.wait(pos, checks);
                match &next {
                    Ok(Next::Bytes(n)) => pos += n,
                    Ok(Next::HandOver) => {
                        checks = false;
                        handover.hand_over_digest(Digest::of(content));
                    }
                    Ok(Next::End) | Err(Abandoned) => {}
                }
                let end = !matches!(&next, Ok(Next::Bytes(_) | Next::HandOver));
                if send.send(next).is_err() || end {
                    break;
                }
            }
        });
        got
    }

    fn next(got: &mpsc::Receiver<Result<Next, Abandoned>>) -> Result<Next, Abandoned> {
        got.recv_timeout(WAIT).expect("the follower reports")
    }

    /// However far the bytes went, the follower ends only once the writer says verified.
    #[test]
    fn the_follower_never_ends_before_the_writer_verified() {
        let handover = Handover::new();
        assert!(
            handover.writer_hashes(),
            "no follower yet: the writer hashes"
        );
        let got = follower(&handover, b"");
        handover.advance(4);
        assert_eq!(next(&got).unwrap(), Next::Bytes(4));
        assert!(got.recv_timeout(STILL).is_err(), "waits for more");
        handover.advance(10);
        assert_eq!(next(&got).unwrap(), Next::Bytes(6));
        handover.written(10);
        assert!(
            got.recv_timeout(STILL).is_err(),
            "every byte written is not verified: no end"
        );
        handover.commit(10);
        assert_eq!(next(&got).unwrap(), Next::End);
    }

    /// An abandoned writer fails the follower, mid-way or with every byte read.
    #[test]
    fn an_abandoned_writer_makes_the_follower_fail() {
        for written in [false, true] {
            let handover = Handover::new();
            let got = follower(&handover, b"");
            handover.advance(3);
            assert_eq!(next(&got).unwrap(), Next::Bytes(3));
            if written {
                handover.written(3);
            }
            handover.abandon();
            assert!(next(&got).is_err(), "abandoned (written: {written})");
        }
        // Dropping a writer abandons it: after its commit, that changes nothing.
        let handover = Handover::new();
        handover.advance(3);
        handover.commit(3);
        handover.abandon();
        assert_eq!(handover.wait(3, false).unwrap(), Next::End);
        // Bytes left unread change nothing: an abandoned blob is never read further.
        let handover = Handover::new();
        handover.advance(8);
        handover.abandon();
        assert!(handover.wait(0, false).is_err());
    }

    /// The checking follower hands over its digest; the writer finds it does not match and
    /// abandons: the follower that hashed every byte still fails.
    #[test]
    fn a_digest_mismatch_makes_the_follower_fail() {
        let handover = Handover::new();
        let got = follower(&handover, b"tampered");
        assert!(!handover.writer_hashes(), "the follower took the check");
        handover.advance(8);
        assert_eq!(next(&got).unwrap(), Next::Bytes(8));
        handover.written(8);
        assert_eq!(next(&got).unwrap(), Next::HandOver);
        let digest = handover.await_check().expect("the follower's digest");
        assert_eq!(digest, Digest::of(b"tampered"));
        assert_ne!(digest, Digest::of(b"expected"), "so the writer abandons");
        handover.abandon();
        assert!(next(&got).is_err());
    }

    /// The digest check goes to the first follower there before the first byte, to one only;
    /// one that goes early leaves its hash so far to the writer.
    #[test]
    fn one_follower_checks_and_hands_over_what_it_has() {
        let handover = Handover::new();
        assert!(handover.claim(), "the first follower checks");
        assert!(!handover.claim(), "one check per blob");
        assert!(!handover.writer_hashes());
        handover.advance(5);
        let mut hasher = Hasher::new();
        hasher.update(b"first");
        handover.hand_over_partial(hasher);
        handover.written(9);
        let so_far = handover.await_check().expect_err("it went early");
        assert_eq!(so_far.bytes(), 5);

        let late = Handover::new();
        late.advance(1);
        assert!(!late.claim(), "after the first byte the writer hashes");
        assert!(late.writer_hashes());
        assert!(late.await_check().is_err(), "no follower hashed anything");
    }
}
