//! Facts read from an unpacked image root filesystem: the workspace user's passwd entry,
//! whether the image boots with `/sbin/init`, and its os-release.
//!
//! Owns: reading files *inside* a rootfs safely. Every path is resolved within the rootfs
//! (`openat2` with `RESOLVE_IN_ROOT`), so an absolute symlink such as `/etc/passwd ->
//! /host/etc/passwd` planted by an image can never make envbox read a file of the outer
//! container. It never writes.

use std::path::{Path, PathBuf};

/// A user's `/etc/passwd` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    pub shell: String,
}

/// The parts of `/etc/os-release` (or `/usr/lib/os-release`) that matter to us.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OsRelease {
    /// `ID`, lower-case, quotes removed (`ubuntu`, `rhel`, ...).
    pub id: String,
    /// `ID_LIKE`, split on whitespace.
    pub id_like: Vec<String>,
}

/// What the spec generator needs from the rootfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootfsFacts {
    pub user: PasswdEntry,
    /// `/sbin/init` exists (after in-root symlink resolution) and is an executable regular file.
    pub has_init: bool,
    pub os_release: Option<OsRelease>,
}

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error(
        "user {username:?} (CODER_INNER_USERNAME) not found in the image's /etc/passwd ({rootfs})"
    )]
    UserNotFound { username: String, rootfs: PathBuf },
    #[error("the image has no /etc/passwd ({rootfs}): cannot look up user {username:?} (CODER_INNER_USERNAME)")]
    NoPasswd { username: String, rootfs: PathBuf },
    #[error("{path} in the image ({rootfs}), line {line}: {reason}")]
    Malformed {
        rootfs: PathBuf,
        path: &'static str,
        line: usize,
        reason: String,
    },
    #[error("reading {path} in rootfs {rootfs}: {source}")]
    Read {
        rootfs: PathBuf,
        path: String,
        source: std::io::Error,
    },
}

/// Reads the facts for `username` from the rootfs at `rootfs`.
pub fn read_facts(_rootfs: &Path, _username: &str) -> Result<RootfsFacts, RootfsError> {
    unimplemented!()
}
