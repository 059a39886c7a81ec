//! Staging files: where blobs and pins are written before they are renamed into place.
//!
//! A staging file is named `<prefix>.<pid>.<token>-<counter>.partial`: the prefix is the blob's
//! hex (or `ref` for a pin), the pid is the writing process, the token is random per process
//! and the counter is per process, so names never collide, even between two processes that
//! share a volume with the same pid in different pid namespaces. When the store is opened, a
//! staging file is stale, and removed, when its name does not parse, when its pid names no
//! live process, or when it carries this process's pid with another token (a previous
//! incarnation with the same pid: envbox is pid 1 after every container restart). Files of
//! other live processes are left alone, and so is every file whose blob or layer lock
//! (`crate::lock`) someone holds: a restarted pod's envbox, pid 1 like the old pod's that still
//! shuts down beside it on the same volume, must not take the old one's writes for its own
//! earlier incarnation's.

use std::collections::hash_map::RandomState;
use std::fs::{self, File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;

use super::{io_err, CacheError};

const SUFFIX: &str = ".partial";

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// This process's random token (16 hex digits).
fn token() -> &'static str {
    static TOKEN: OnceLock<String> = OnceLock::new();
    TOKEN.get_or_init(|| {
        // RandomState is seeded from the OS's randomness once per process.
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        format!("{:016x}", hasher.finish())
    })
}

/// A staging name starting with `prefix` that no other call of this process has returned and
/// that [`stale_entries`] of a later incarnation (or another process) recognises as ours.
pub(crate) fn fresh_name(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}.{}.{}-{n}{SUFFIX}", std::process::id(), token())
}

/// Creates a new, empty staging file (mode 0644) in `dir` whose name starts with `prefix`.
pub(super) fn create(dir: &Path, prefix: &str) -> Result<(File, PathBuf), CacheError> {
    loop {
        let path = dir.join(fresh_name(prefix));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&path)
        {
            Ok(file) => return Ok((file, path)),
            // Only a leftover of a process that had our pid and token could be there: next.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_err("creating staging file", &path)(e)),
        }
    }
}

/// Removes the stale staging files in `dir` (see the module doc). A stale file that cannot be
/// removed is logged and left: it must not stop the store from opening.
/// `held` says whether the lock of a staging name's prefix is held (see the module doc).
pub(super) fn sweep(dir: &Path, held: &dyn Fn(&str) -> bool) -> Result<(), CacheError> {
    for path in stale_entries(dir, held).map_err(io_err("listing staging directory", dir))? {
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove stale staging file");
            }
            _ => {}
        }
    }
    Ok(())
}

/// The entries of `dir` that are stale by the rule of the module doc (whatever their type: the
/// caller removes them as files or as trees). `held(prefix)` says whether another process
/// holds the lock of the blob or layer a staging name's prefix names.
pub(crate) fn stale_entries(dir: &Path, held: &dyn Fn(&str) -> bool) -> io::Result<Vec<PathBuf>> {
    let mut stale = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            stale.push(entry.path());
            continue;
        };
        if is_stale(name) && !name.split_once('.').is_some_and(|(prefix, _)| held(prefix)) {
            stale.push(entry.path());
        }
    }
    Ok(stale)
}

/// Whether a staging file name belongs to no live writer.
pub(crate) fn is_stale(name: &str) -> bool {
    let Some(stem) = name.strip_suffix(SUFFIX) else {
        return true;
    };
    let mut fields = stem.split('.');
    let (Some(_prefix), Some(pid), Some(tag), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return true;
    };
    // Canonical decimal only: no sign, no leading zeros.
    let Some(pid) = pid
        .parse::<i32>()
        .ok()
        .filter(|n| *n > 0 && n.to_string() == pid)
    else {
        return true;
    };
    let Some((file_token, _counter)) = tag.split_once('-') else {
        return true;
    };
    if u32::try_from(pid).ok() == Some(std::process::id()) {
        return file_token != token();
    }
    !alive(pid)
}

/// Whether `pid` names a live process (one we may not signal counts as alive).
fn alive(pid: i32) -> bool {
    !matches!(kill(Pid::from_raw(pid), None), Err(Errno::ESRCH))
}
