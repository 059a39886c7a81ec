//! The outcomes of [`apply`](super::apply) other than success: [`SetupError`] (fatal, one
//! variant per action kind, naming the action, its path and the failing step) and
//! [`SetupWarning`] (best-effort actions that did not happen).
//!
//! Owns: the wording of setup failures. It must never hold a free-form `String` reason: every
//! error carries the path and the OS error it came from.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// The primitive of a multi-step action that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// `mkdir -p` of the path itself.
    Mkdir,
    /// `mkdir -p` of the parent directory.
    CreateParent,
    /// The atomic write (staging file, fsync, rename).
    Write,
    /// `mknod` (after removing a non-directory already there).
    Mknod,
    /// `lchown` to the given owner.
    Chown {
        /// The owner.
        uid: u32,
        /// The group.
        gid: u32,
    },
    /// `chmod` to the given mode.
    Chmod {
        /// The permission bits.
        mode: u32,
    },
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Mkdir => f.write_str("mkdir -p"),
            Step::CreateParent => f.write_str("creating the parent directory"),
            Step::Write => f.write_str("atomic write"),
            Step::Mknod => f.write_str("mknod"),
            Step::Chown { uid, gid } => write!(f, "chown {uid}:{gid}"),
            Step::Chmod { mode } => write!(f, "chmod {mode:04o}"),
        }
    }
}

/// A setup action that failed; the remaining actions were not run.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each variant's #[error] message documents it
pub enum SetupError {
    #[error("creating directory {path}: {step}: {source}")]
    CreateDir {
        path: PathBuf,
        step: Step,
        source: io::Error,
    },
    #[error("writing file {path}: {step}: {source}")]
    WriteFile {
        path: PathBuf,
        step: Step,
        source: io::Error,
    },
    #[error("creating device node {path} ({major}:{minor}): {step}: {source}")]
    CharDevice {
        path: PathBuf,
        major: u64,
        minor: u64,
        step: Step,
        source: io::Error,
    },
    #[error("changing the owner of {path} to {uid}:{gid}: {source}")]
    Chown {
        path: PathBuf,
        uid: u32,
        gid: u32,
        source: io::Error,
    },
    #[error("creating symlink {path} -> {target} inside rootfs {rootfs}: {source}")]
    RootfsSymlink {
        rootfs: PathBuf,
        path: PathBuf,
        target: PathBuf,
        source: io::Error,
    },
}

/// A best-effort action that did not happen; setup went on.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each variant's #[error] message documents it
pub enum SetupWarning {
    #[error("{path} was not mounted (or does not exist); nothing to unmount")]
    NotMounted { path: PathBuf },
    #[error("unmounting {path} failed (ignored): {source}")]
    UnmountFailed { path: PathBuf, source: io::Error },
}
