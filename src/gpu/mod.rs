//! GPU passthrough: find what the NVIDIA runtime put into the outer container and plan how the
//! inner container gets it (behaviour doc §5).
//!
//! Owns: [`scan`], which only reads (device nodes under `/dev`, the host usr-lib tree, the
//! environment), and [`plan`], a pure function from that inventory and the mount table to binds,
//! device rules, symlinks to create in the rootfs, variables and `/proc` unmounts. It never
//! mounts, creates or changes anything: the setup stage does that from the plan.
//!
//! Submodules: `names` (the name patterns), `scan` (reading the outer container),
//! `inner` (where libraries go inside), `paths` (lexical paths), `plan` with `libs` (the pure
//! planning).

#[cfg(test)]
pub(crate) mod h100_fixture;
mod inner;
mod libs;
mod names;
mod paths;
mod plan;
mod scan;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use crate::mountinfo::MountTable;
use crate::rootfs::OsRelease;

/// A character device node found under `/dev`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceNode {
    /// Absolute path in the outer container, e.g. `/dev/nvidia0`, `/dev/nvidia-caps/nvidia-cap1`.
    pub path: PathBuf,
    pub major: u64,
    pub minor: u64,
    /// Permission bits (e.g. `0o666`).
    pub mode: u32,
}

/// What one entry of the host usr-lib tree is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LibEntryKind {
    File,
    Dir,
    /// A symlink and its target exactly as `readlink` returns it.
    Symlink(PathBuf),
}

/// One entry found under `CODER_USR_LIB_DIR` (any depth).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibEntry {
    /// Absolute path in the outer container (starts with the usr-lib dir).
    pub path: PathBuf,
    pub kind: LibEntryKind,
}

/// Everything GPU-related read from the outer container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GpuInventory {
    /// `/dev/nvidia*` and `/dev/nvidia-caps/*` character devices, sorted by path.
    pub devices: Vec<DeviceNode>,
    /// The `CODER_USR_LIB_DIR` that was scanned.
    pub usr_lib_dir: PathBuf,
    /// Every entry under it, sorted by path.
    pub usr_lib: Vec<LibEntry>,
    /// Outer variables whose name matches `(?i)nvidia`, in environment order.
    pub env: Vec<(String, String)>,
}

/// A device to give the inner container: bound from the same outer path, plus an allow rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuDevice {
    pub path: PathBuf,
    pub major: u64,
    pub minor: u64,
}

/// A bind mount into the inner container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuMount {
    pub source: PathBuf,
    pub destination: PathBuf,
    /// OCI mount options, e.g. `["rbind", "ro", "nosuid", "nodev"]`.
    pub options: Vec<String>,
}

/// A symlink to create inside the rootfs (path inside the container, target as written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuSymlink {
    pub path: PathBuf,
    pub target: PathBuf,
}

/// What the inner container gets. Every list is in a deterministic order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GpuPlan {
    pub devices: Vec<GpuDevice>,
    pub mounts: Vec<GpuMount>,
    pub symlinks: Vec<GpuSymlink>,
    pub env: Vec<(String, String)>,
    /// Mounts under `/proc` matching the GPU pattern, deepest first: unmounted before start.
    pub proc_unmounts: Vec<PathBuf>,
    /// Things skipped and why (e.g. a symlink chain leaving the usr-lib dir), for the log.
    pub warnings: Vec<String>,
}

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("CODER_USR_LIB_DIR {path}: {source}")]
    UsrLibDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading GPU devices under {path}: {source}")]
    Devices {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Reads the inventory: device nodes under `dev_dir` (normally `/dev`), the tree under
/// `usr_lib_dir`, and the GPU variables of `environ`.
pub fn scan(
    dev_dir: &Path,
    usr_lib_dir: &Path,
    environ: &[(String, String)],
) -> Result<GpuInventory, GpuError> {
    Ok(GpuInventory {
        devices: scan::devices(dev_dir)?,
        usr_lib_dir: usr_lib_dir.to_path_buf(),
        usr_lib: scan::usr_lib(usr_lib_dir)?,
        env: scan::env(environ),
    })
}

/// Where GPU libraries go inside, from the image's os-release and the architecture
/// (`x86_64` or `aarch64`), unless `CODER_INNER_USR_LIB_DIR` overrides it (handled by the
/// caller).
pub fn inner_lib_dir(os_release: Option<&OsRelease>, arch: &str) -> PathBuf {
    inner::lib_dir(os_release, arch)
}

/// Plans the inner container's GPU view. Pure.
pub fn plan(inventory: &GpuInventory, mounts: &MountTable, inner_lib_dir: &Path) -> GpuPlan {
    plan::plan(inventory, mounts, inner_lib_dir)
}
