//! Staging files: where blobs and pins are written before they are renamed into place.
//!
//! A staging file is named `<prefix>.<pid>.<token>-<counter>.partial`: the prefix is the blob's
//! hex (or `ref` for a pin), the pid is the writing process, the token is random per process
//! and the counter is per process, so names never collide, even between two processes that
//! share a volume with the same pid in different pid namespaces. When the store is opened, a
//! staging file is stale, and removed, when its name does not parse, when its pid names no
//! live process, or when it carries this process's pid with another token (a previous
//! incarnation with the same pid: envbox is pid 1 after every container restart). Files of
//! other live processes are left alone.

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

/// Creates a new, empty staging file (mode 0644) in `dir` whose name starts with `prefix`.
pub(super) fn create(dir: &Path, prefix: &str) -> Result<(File, PathBuf), CacheError> {
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!(
            "{prefix}.{}.{}-{n}{SUFFIX}",
            std::process::id(),
            token()
        ));
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
pub(super) fn sweep(dir: &Path) -> Result<(), CacheError> {
    for entry in fs::read_dir(dir).map_err(io_err("listing staging directory", dir))? {
        let entry = entry.map_err(io_err("listing staging directory", dir))?;
        let stale = entry.file_name().to_str().is_none_or(is_stale);
        if stale {
            let path = entry.path();
            match fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove stale staging file");
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// Whether a staging file name belongs to no live writer.
fn is_stale(name: &str) -> bool {
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
