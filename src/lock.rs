//! Locks shared by every envbox process using one volume.
//!
//! Owns: `<state_dir>/locks/<name>`, empty files locked with `flock(2)`: exclusively by the one
//! process fetching a blob (`blob-<hex>`) or unpacking a layer (`layer-<dir name>`), shared by
//! every process preparing an image and exclusively by one removing what no image kept needs
//! (`store`, see `crate::prune`). The kernel releases a lock when its holder closes the file,
//! also when the process dies (kill -9, OOM kill), so a crash never leaves a volume locked;
//! flock works across pid namespaces (a restarted pod beside the old one) as long as both see the
//! same filesystem. A process that has to wait says what it waits for in the progress log, at
//! once and again every [`REMIND`]. Lock files are never removed while anyone may hold them:
//! only under the exclusive `store` lock, when no other process holds any (`crate::prune`).
//! It decides nothing about what is locked: callers re-check, once they hold a lock, whether
//! the work is still to do.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::progress::{self, Kind};
use crate::volume::VolumeLayout;

/// How often a waiter looks again.
const POLL: Duration = Duration::from_millis(20);

/// How often a waiter says again that it still waits.
const REMIND: Duration = Duration::from_secs(30);

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
#[error("volume lock {path}: {action}: {source}")]
pub struct LockError {
    action: &'static str,
    path: PathBuf,
    #[source]
    source: io::Error,
}

/// One non-blocking `flock(2)` of `file` in `mode`: whether it was taken (also for lock files
/// kept elsewhere, such as the node cache's leases).
pub(crate) fn try_flock(file: &File, mode: Mode) -> io::Result<bool> {
    let operation = match mode {
        Mode::Shared => libc::LOCK_SH,
        Mode::Exclusive => libc::LOCK_EX,
    } | libc::LOCK_NB;
    loop {
        // SAFETY: flock on a descriptor this function borrows for the call.
        if unsafe { libc::flock(file.as_raw_fd(), operation) } == 0 {
            return Ok(true);
        }
        let error = io::Error::last_os_error();
        match error.raw_os_error() {
            Some(libc::EWOULDBLOCK) => return Ok(false),
            Some(libc::EINTR) => continue,
            _ => return Err(error),
        }
    }
}

/// The lock files of one volume. Cheap to clone.
#[derive(Debug, Clone)]
pub struct VolumeLocks {
    dir: PathBuf,
}

/// A lock held; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct Held {
    _file: File,
}

/// How a lock is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Shared,
    Exclusive,
}

impl VolumeLocks {
    /// The locks under `state_dir` (their directory is created when needed).
    pub fn new(state_dir: &Path) -> VolumeLocks {
        VolumeLocks {
            dir: VolumeLayout::new(state_dir).locks(),
        }
    }

    /// The lock `name` taken in `mode`, waiting as long as another process holds it in a
    /// conflicting mode; `waiting_for` completes "waiting for another envbox process using
    /// <store dir>: it is ..." in the progress line a wait writes. Returns whether it had to
    /// wait.
    pub fn take(
        &self,
        name: &str,
        mode: Mode,
        waiting_for: &str,
    ) -> Result<(Held, bool), LockError> {
        let file = self.open(name)?;
        let mut waited = None::<Instant>;
        let mut said = Instant::now();
        loop {
            if self.try_flock(&file, name, mode)? {
                return Ok((Held { _file: file }, waited.is_some()));
            }
            let now = Instant::now();
            let first = waited.is_none();
            let since = *waited.get_or_insert(now);
            if first || now.duration_since(said) >= REMIND {
                said = now;
                // The store's directory: the volume's state dir, or the node cache.
                let store = self.dir.parent().unwrap_or(&self.dir).display();
                let line = match first {
                    true => format!("Waiting for another envbox process using {store}: it is {waiting_for}"),
                    false => format!(
                        "Still waiting ({} s) for another envbox process using {store}: it is {waiting_for}",
                        now.duration_since(since).as_secs()
                    ),
                };
                progress::emit(Kind::Info, &line);
            }
            std::thread::sleep(POLL);
        }
    }

    /// The lock `name` in `mode` if no other process holds it in a conflicting mode now.
    #[cfg(test)]
    pub fn try_take(&self, name: &str, mode: Mode) -> Result<Option<Held>, LockError> {
        let file = self.open(name)?;
        Ok(self
            .try_flock(&file, name, mode)?
            .then_some(Held { _file: file }))
    }

    /// Whether another process holds the lock `name` (in any mode) now. A lock that cannot be
    /// checked counts as held: the caller then leaves alone what it guards.
    pub fn is_held(&self, name: &str) -> bool {
        let path = self.dir.join(name);
        let file = match File::open(&path) {
            Ok(file) => file,
            // Never taken since the last cleanup: nobody holds it.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return false,
            Err(_) => return true,
        };
        !matches!(self.try_flock(&file, name, Mode::Exclusive), Ok(true))
    }

    /// Removes every lock file but `keep`. Only for a caller holding `keep` exclusively, which
    /// every other holder of a lock holds shared first (see the module doc).
    pub fn remove_all_but(&self, keep: &str) -> Result<usize, LockError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(self.error("listing", &self.dir, e)),
        };
        let mut removed = 0;
        for entry in entries {
            let entry = entry.map_err(|e| self.error("listing", &self.dir, e))?;
            if entry.file_name() == keep {
                continue;
            }
            match fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(self.error("removing", &entry.path(), e)),
            }
        }
        Ok(removed)
    }

    fn open(&self, name: &str) -> Result<File, LockError> {
        let path = self.dir.join(name);
        let open = || {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o644)
                .open(&path)
        };
        match open() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(&self.dir)
                    .map_err(|e| self.error("creating the directory", &self.dir, e))?;
                open()
            }
            other => other,
        }
        .map_err(|e| self.error("opening", &path, e))
    }

    /// One non-blocking `flock`: whether it was taken.
    fn try_flock(&self, file: &File, name: &str, mode: Mode) -> Result<bool, LockError> {
        try_flock(file, mode).map_err(|error| self.error("locking", &self.dir.join(name), error))
    }

    fn error(&self, action: &'static str, path: &Path, source: io::Error) -> LockError {
        LockError {
            action,
            path: path.to_owned(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_excludes_everyone_shared_only_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let locks = VolumeLocks::new(dir.path());
        let (held, waited) = locks.take("x", Mode::Exclusive, "testing").unwrap();
        assert!(!waited);
        // flock locks belong to open files: a second open is another holder, as another
        // process would be.
        assert!(locks.try_take("x", Mode::Exclusive).unwrap().is_none());
        assert!(locks.try_take("x", Mode::Shared).unwrap().is_none());
        drop(held);
        let a = locks.try_take("x", Mode::Shared).unwrap().expect("free");
        let b = locks
            .try_take("x", Mode::Shared)
            .unwrap()
            .expect("shared twice");
        assert!(locks.try_take("x", Mode::Exclusive).unwrap().is_none());
        drop((a, b));
        assert!(locks.try_take("x", Mode::Exclusive).unwrap().is_some());
    }

    #[test]
    fn a_waiter_gets_the_lock_once_its_holder_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let locks = VolumeLocks::new(dir.path());
        let (held, _) = locks.take("y", Mode::Exclusive, "testing").unwrap();
        let other = locks.clone();
        let waiter = std::thread::spawn(move || other.take("y", Mode::Exclusive, "testing"));
        std::thread::sleep(Duration::from_millis(100));
        assert!(!waiter.is_finished());
        drop(held);
        let (_held, waited) = waiter.join().unwrap().unwrap();
        assert!(waited);
    }

    #[test]
    fn lock_files_other_than_the_one_held_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let locks = VolumeLocks::new(dir.path());
        drop(locks.try_take("blob-a", Mode::Exclusive).unwrap());
        let _store = locks.try_take("store", Mode::Exclusive).unwrap().unwrap();
        assert_eq!(locks.remove_all_but("store").unwrap(), 1);
        let left: Vec<_> = fs::read_dir(dir.path().join("locks")).unwrap().collect();
        assert_eq!(left.len(), 1);
    }
}
