//! The state dir on the persistent volume (`ENVBOX_STATE_DIR`): where each store keeps its
//! files.
//!
//! Owns: the top-level names under the state dir. Each store owns what is inside its own
//! directory (`cache`: blobs, staging, refs; `unpack`: layers; `overlay`: the container's
//! rootfs; `lock`: the lock files). It holds no logic and touches no file.

use std::path::{Path, PathBuf};

/// Paths under one state dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeLayout {
    root: PathBuf,
}

impl VolumeLayout {
    pub fn new(root: &Path) -> VolumeLayout {
        VolumeLayout {
            root: root.to_owned(),
        }
    }

    /// The state dir itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Verified blobs, by algorithm and digest (`blobs/sha256/<hex>`).
    pub fn blobs(&self) -> PathBuf {
        self.root.join("blobs")
    }

    /// Blobs being written.
    pub fn blob_staging(&self) -> PathBuf {
        self.root.join("staging")
    }

    /// Pins: which manifest a reference was pulled as.
    pub fn refs(&self) -> PathBuf {
        self.root.join("refs")
    }

    /// Unpacked, uid-shifted layer directories.
    pub fn layers(&self) -> PathBuf {
        self.root.join("layers")
    }

    /// The workspace's rootfs: the overlay's upper and work dirs, its mount point, or a
    /// flattened copy.
    pub fn container(&self) -> PathBuf {
        self.root.join("container")
    }

    /// Locks shared by the envbox processes using the volume (see `crate::lock`).
    pub fn locks(&self) -> PathBuf {
        self.root.join("locks")
    }

    /// Where an earlier envbox kept containerd's metadata (the agent token with it).
    pub fn legacy_containerd(&self) -> PathBuf {
        self.root.join("containerd")
    }
}
