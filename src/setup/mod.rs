//! The host-side setup a container plan implies, and the only module that performs it.
//!
//! Owns: [`Action`], the explicit list of side effects the spec generator asks for (device
//! nodes, generated `/etc` files, mount-source ownership, `/proc` GPU unmounts, symlinks inside
//! the rootfs), and [`apply`], which carries them out through the [`Sys`] trait. The real
//! implementation makes the syscalls; the recording one lets tests check the order and
//! arguments without root. Nothing here decides *what* to do: that is `spec`'s job.

use std::path::PathBuf;

/// One side effect. Paths are absolute in the outer container unless said otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `mkdir -p`, then chown and chmod the last component.
    CreateDir {
        path: PathBuf,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    /// Write the whole file atomically (staging file + rename), owned and mode as given.
    WriteFile {
        path: PathBuf,
        contents: String,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    /// Create (or replace) a character device node, then chown and chmod it.
    CharDevice {
        path: PathBuf,
        major: u64,
        minor: u64,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    /// Change the owner of an existing path (not recursive, does not follow a final symlink).
    Chown { path: PathBuf, uid: u32, gid: u32 },
    /// Unmount if mounted; failure is a warning, never fatal.
    UnmountBestEffort { path: PathBuf },
    /// Create a symlink at `path` *inside* `rootfs` (resolved in-root, never escaping it),
    /// replacing a non-directory already there; owned by `uid:gid`.
    RootfsSymlink {
        rootfs: PathBuf,
        path: PathBuf,
        target: PathBuf,
        uid: u32,
        gid: u32,
    },
}
