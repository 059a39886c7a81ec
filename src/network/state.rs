//! The CNI state envbox keeps under `<run dir>/cni`: the cached attachment and the lock.
//!
//! Owns: [`Record`] (what a DEL needs: the exact configs the ADD used, the namespace, and the
//! final ADD result once there is one), its atomic write (staging file + rename, through
//! `setup::Sys`), read and removal, and the `flock` that serialises CNI calls across threads
//! and processes. A record is written *before* the first ADD, so a crash at any point leaves
//! enough behind for `cleanup_stale` to release the lease. It never runs a plugin.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::sys::NetnsId;
use super::NetworkError;
use crate::setup::{RealSys, Sys};

/// The state format; a record of another version is refused, not guessed at.
pub(crate) const VERSION: u32 = 1;

/// One attachment, as cached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Record {
    pub version: u32,
    pub container_id: String,
    pub netns: PathBuf,
    /// The namespace `netns` named at ADD: a DEL only enters `netns` while it still names it
    /// (a `/proc/<pid>` path can be reused by another process).
    pub netns_id: NetnsId,
    pub ifname: String,
    pub cni_path: PathBuf,
    pub conflist: Value,
    pub runtime_config: Value,
    /// The final ADD result; `None` while the ADD is under way.
    pub result: Option<Value>,
}

impl Record {
    /// The network name of the main conflist.
    pub(crate) fn network_name(&self) -> &str {
        self.conflist["name"].as_str().unwrap_or_default()
    }
}

fn state_error<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> NetworkError + 'a {
    move |source| NetworkError::State {
        action,
        path: path.to_owned(),
        source,
    }
}

/// Holds the lock until dropped.
pub(crate) struct Lock {
    _file: Flock<File>,
}

/// Creates the state directory and takes the exclusive lock at `path` (waiting for it).
pub(crate) fn lock(path: &Path) -> Result<Lock, NetworkError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(state_error("creating", dir))?;
    }
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(state_error("opening the lock", path))?;
    let file = Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, errno)| state_error("locking", path)(errno.into()))?;
    Ok(Lock { _file: file })
}

/// The cached record, `None` when there is none.
pub(crate) fn read(path: &Path) -> Result<Option<Record>, NetworkError> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(state_error("reading", path)(e)),
    };
    let record: Record =
        serde_json::from_slice(&text).map_err(|source| NetworkError::CorruptState {
            path: path.to_owned(),
            source,
        })?;
    if record.version != VERSION {
        return Err(NetworkError::State {
            action: "reading",
            path: path.to_owned(),
            source: io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "state version {} (this envbox writes {VERSION})",
                    record.version
                ),
            ),
        });
    }
    Ok(Some(record))
}

/// Writes the record atomically.
pub(crate) fn write(path: &Path, record: &Record) -> Result<(), NetworkError> {
    let text = serde_json::to_vec_pretty(record).expect("a record serialises");
    RealSys
        .write_file_atomic(path, &text)
        .map_err(state_error("writing", path))
}

/// Removes the record (already gone is fine).
pub(crate) fn remove(path: &Path) -> Result<(), NetworkError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(state_error("removing", path)(e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record() -> Record {
        Record {
            version: VERSION,
            container_id: "ws".into(),
            netns: "/proc/1/ns/net".into(),
            netns_id: NetnsId { dev: 4, ino: 4026 },
            ifname: "eth0".into(),
            cni_path: "/usr/lib/cni".into(),
            conflist: json!({"name": "envbox", "plugins": []}),
            runtime_config: json!({}),
            result: None,
        }
    }

    #[test]
    fn a_record_round_trips_and_absence_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("envbox.json");
        assert_eq!(read(&path).unwrap(), None);
        let mut r = record();
        r.result = Some(json!({"ips": []}));
        write(&path, &r).unwrap();
        assert_eq!(read(&path).unwrap(), Some(r));
        remove(&path).unwrap();
        remove(&path).unwrap();
        assert_eq!(read(&path).unwrap(), None);
    }

    #[test]
    fn a_corrupt_or_foreign_record_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("envbox.json");
        std::fs::write(&path, "{").unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(
            err.contains("envbox.json") && err.contains("unreadable"),
            "{err}"
        );
        let mut r = record();
        r.version = 99;
        std::fs::write(&path, serde_json::to_vec(&r).unwrap()).unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("state version 99"), "{err}");
    }

    #[test]
    fn the_lock_is_exclusive_across_opens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/envbox.lock");
        let held = lock(&path).unwrap();
        let file = File::options().write(true).open(&path).unwrap();
        assert!(
            Flock::lock(file, FlockArg::LockExclusiveNonblock).is_err(),
            "a second lock must wait"
        );
        drop(held);
        let file = File::options().write(true).open(&path).unwrap();
        assert!(Flock::lock(file, FlockArg::LockExclusiveNonblock).is_ok());
    }
}
