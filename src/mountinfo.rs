//! The outer container's mount table (`/proc/self/mountinfo`), parsed into plain structs.
//!
//! Owns: parsing the mountinfo format (octal escapes, optional fields, per-mount and
//! per-superblock options) and answering "which mount holds this path" and "which flags does
//! that mount lock". It never reads the file itself except in [`MountTable::read_self`], and
//! never mounts or unmounts anything.

use std::path::{Path, PathBuf};

/// One line of mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Field 5: where the mount is, in this mount namespace.
    pub mount_point: PathBuf,
    /// Field 4: the root of the mount within its filesystem.
    pub root: PathBuf,
    /// Filesystem type (after the ` - ` separator).
    pub fs_type: String,
    /// Mount source (after the filesystem type).
    pub source: String,
    /// Field 6: per-mount options (`rw`/`ro`, `nosuid`, `nodev`, `noexec`, atime flags).
    pub mount_options: Vec<String>,
    /// Per-superblock options (last field).
    pub super_options: Vec<String>,
}

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum MountInfoError {
    /// A line that does not have the mountinfo shape.
    #[error("mountinfo line {line}: {reason}: {text:?}")]
    Malformed {
        line: usize,
        reason: &'static str,
        text: String,
    },
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl MountEntry {
    /// True when the mount is read-only (`ro` in the per-mount options).
    pub fn is_read_only(&self) -> bool {
        unimplemented!()
    }

    /// Flags a bind of something under this mount must repeat, or the kernel refuses the
    /// remount inside a user namespace (EPERM): `nosuid`, `nodev`, `noexec`, and the atime flag
    /// when it is not the default `relatime` (`noatime`, `nodiratime`, `strictatime`).
    /// Read-only is reported by [`MountEntry::is_read_only`], not here.
    pub fn locked_flags(&self) -> Vec<&'static str> {
        unimplemented!()
    }
}

/// The whole table, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountTable {
    pub entries: Vec<MountEntry>,
}

impl MountTable {
    /// Parses mountinfo text.
    pub fn parse(_text: &str) -> Result<Self, MountInfoError> {
        unimplemented!()
    }

    /// Reads and parses `/proc/self/mountinfo`.
    pub fn read_self() -> Result<Self, MountInfoError> {
        unimplemented!()
    }

    /// The mount that holds `path`: the last entry (later mounts stack on top) whose mount point
    /// is `path` or a parent directory of it, compared component-wise (`/usr/local/nvidia`
    /// holds `/usr/local/nvidia/lib64/x` but not `/usr/local/nvidia2`).
    pub fn containing(&self, _path: &Path) -> Option<&MountEntry> {
        unimplemented!()
    }
}
