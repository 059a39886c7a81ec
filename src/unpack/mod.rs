//! The layer store: verified layer blobs unpacked, once each, into uid-shifted directories.
//!
//! Owns: `<state_dir>/layers/<diff-id hex>` (a complete layer, only ever created by renaming a
//! finished staging directory) and `<state_dir>/layers/.staging/` (layers being unpacked, named
//! and swept by the blob store's staging rule, see `crate::cache::staging`). A layer directory
//! holds the layer's tree with every uid/gid shifted by [`ID_SHIFT`] and OCI whiteouts turned
//! into overlayfs ones, ready to be a read-only `lowerdir` (a layer that needed directories it
//! does not list is marked so, see [`implicit_dir`]). It must never create, change or
//! follow anything outside the staging directory it is writing (every path of a layer is
//! resolved in-root, see [`tree`]), never unpack a layer another process of the volume is
//! unpacking (it waits on the layer's lock, `crate::lock`, and then finds it complete), never
//! keep a directory whose uncompressed content does not hash to the layer's diff ID, and never
//! fetch, verify compressed blobs or mount anything: the
//! caller hands it a blob already verified against the manifest.
//!
//! Durability: no fsync per file (it would dominate the unpack time), and no sync before a
//! layer is published either: the layer is marked unsynced first (`crate::cache::unsynced`: a
//! marker naming the boot, made durable before the rename), so a layer a power loss may have
//! torn is recognised after the restart and unpacked again from its blob (itself fetched again
//! if it had not reached the disk either, see `crate::cache`). [`LayerStore::sync`] makes the
//! layers of this boot durable with one `syncfs` (`envbox prepare` before it exits, `envbox
//! docker` once the workspace is up). A kill -9 needs no sync at all: it leaves only a
//! staging directory, which the next [`LayerStore::open`] removes.
//!
//! [`flatten()`] applies an image's layers, in order, onto one merged directory with the same
//! reader and writer (module `flatten`; whiteouts then act on the tree, see `tree::merge`).

mod acl;
mod archive;
mod creds;
mod decode;
mod flatten;
mod gzip;
mod header;
mod stream;
mod tree;

pub use flatten::{flatten, Durability, FlattenReport};

#[cfg(test)]
mod flatten_tests;
#[cfg(test)]
mod tests;

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};

use crate::cache::unsynced::{self, Unsynced};
use crate::cache::{staging, Follower};
use crate::digest::Digest;
use crate::image::Compression;
use crate::lock::{Mode, VolumeLocks};

/// What every uid and gid of a layer is shifted by: the inner container's user namespace maps
/// its 0..65536 onto 100000..165536 (the spec's mapping), so sysbox-runc finds nothing to shift.
pub use crate::image::ID_SHIFT;

/// A uid or gid at or above this in a layer is refused: it has no place in the mapping.
pub const ID_RANGE: u64 = crate::image::ID_RANGE as u64;

/// Errors of this module. `layer` is the compressed (manifest) digest of the layer; `path` is
/// the entry's name as written in the layer's tar stream.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("layer store: {action} {path}: {source}")]
    Store {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("layer {layer}: opening blob {path}: {source}")]
    Blob {
        layer: Digest,
        path: PathBuf,
        source: io::Error,
    },
    #[error("layer {layer}: reading the stream after entry {after:?}: {source}")]
    Stream {
        layer: Digest,
        after: PathBuf,
        source: io::Error,
    },
    #[error("layer {layer}: {action} {path:?}: {source}")]
    Entry {
        layer: Digest,
        path: PathBuf,
        action: &'static str,
        source: io::Error,
    },
    #[error("layer {layer}: {path:?}: {which} {value} is not below {ID_RANGE}")]
    IdOutOfRange {
        layer: Digest,
        path: PathBuf,
        which: &'static str,
        value: u64,
    },
    #[error("layer {layer}: {path:?}: xattr {name}: {reason}")]
    BadAcl {
        layer: Digest,
        path: PathBuf,
        name: &'static str,
        reason: String,
    },
    #[error("layer {layer}: {path:?}: unsupported tar entry type {kind:?}")]
    UnsupportedType {
        layer: Digest,
        path: PathBuf,
        kind: char,
    },
    #[error("layer {layer}: {path:?}: {reason}")]
    BadEntry {
        layer: Digest,
        path: PathBuf,
        reason: &'static str,
    },
    #[error("layer {layer}: {path:?}: parent {parent:?} exists and is not a directory")]
    ParentNotDir {
        layer: Digest,
        path: PathBuf,
        parent: PathBuf,
    },
    #[error("layer {layer}: {path:?}: hard link target {target:?} {reason}")]
    HardlinkTarget {
        layer: Digest,
        path: PathBuf,
        target: PathBuf,
        reason: &'static str,
    },
    #[error("layer {layer}: uncompressed stream exceeds the budget of {limit} bytes (at entry {path:?}); nothing was kept")]
    TooLarge {
        layer: Digest,
        path: PathBuf,
        limit: u64,
    },
    #[error("layer {layer}: more than {limit} entries (at entry {path:?}); nothing was kept")]
    TooManyEntries {
        layer: Digest,
        path: PathBuf,
        limit: u64,
    },
    #[error(transparent)]
    Lock(crate::lock::LockError),
    #[error("flatten: target {path} already exists")]
    TargetExists { path: PathBuf },
    #[error("layer {layer}: uncompressed content has diff ID {actual}, the image config says {expected}; nothing was kept")]
    DiffIdMismatch {
        layer: Digest,
        expected: Digest,
        actual: Digest,
    },
}

fn store_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> UnpackError + 'a {
    move |source| UnpackError::Store {
        action,
        path: path.to_owned(),
        source,
    }
}

/// A verified layer blob and what its uncompressed content must hash to.
#[derive(Debug, Clone)]
pub struct LayerSource {
    /// The compressed blob file, already verified against `digest`.
    pub blob: PathBuf,
    pub compression: Compression,
    /// The blob's (compressed) digest, as in the manifest; named in errors.
    pub digest: Digest,
    /// The sha256 of the uncompressed tar stream, as in the image config's `rootfs.diff_ids`.
    pub diff_id: Digest,
}

/// Budgets against decompression bombs. Exceeding one fails the unpack; nothing is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Uncompressed tar stream bytes (headers and padding included). Default 64 GiB.
    pub max_uncompressed_bytes: u64,
    /// Tar entries (a PAX or GNU long-name header and its entry count once). Default 10 million.
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_uncompressed_bytes: 64 << 30,
            max_entries: 10_000_000,
        }
    }
}

/// What an unpack did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnpackReport {
    /// Tar entries read (0 when the layer was already complete).
    pub entries: u64,
    /// Uncompressed stream bytes read (0 when the layer was already complete).
    pub bytes: u64,
    /// The layer was complete already (nothing was read), or another process completed it first.
    pub reused: bool,
    /// Things skipped that the caller may want to log: device nodes, dropped xattrs.
    pub warnings: Vec<String>,
    /// Directories the layer needed but does not list (see [`implicit_dir`]); empty when the
    /// layer was reused.
    pub implicit_dirs: Vec<PathBuf>,
}

/// The xattr on a layer directory's top that names the first of its implicit directories.
const IMPLICIT_XATTR: &std::ffi::CStr = c"trusted.envbox.implicit-dir";

/// The first directory that the complete layer directory `layer_dir` holds only because an
/// entry needed it (the layer does not list it: writes into a lower layer's directory, or
/// through a lower layer's symlink). Such a layer is not a faithful overlay `lowerdir` above
/// other layers: that directory's owner, mode and mtime (or the symlink) of the layers below
/// would be hidden. `None` for a self-contained layer, as image builders write them.
pub fn implicit_dir(layer_dir: &Path) -> Option<PathBuf> {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let path = std::ffi::CString::new(layer_dir.as_os_str().as_bytes()).ok()?;
    let mut value = vec![0u8; 4096];
    // SAFETY: both strings are NUL-terminated; value is a writable buffer of its length.
    let n = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            IMPLICIT_XATTR.as_ptr(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    };
    let n = usize::try_from(n).ok()?;
    value.truncate(n);
    Some(PathBuf::from(std::ffi::OsString::from_vec(value)))
}

/// Marks the staging directory `dir` with its first implicit directory.
fn mark_implicit(dir: &File, first: &Path) -> io::Result<()> {
    use std::os::fd::AsFd;
    use std::os::unix::ffi::OsStrExt;
    tree::set_xattr(dir.as_fd(), IMPLICIT_XATTR, first.as_os_str().as_bytes())
}

/// The layer store. Cheap to clone; layers may be unpacked from several threads at once (each
/// unpack writes its own staging directory).
#[derive(Debug, Clone)]
pub struct LayerStore {
    root: PathBuf,
    unsynced: Unsynced,
    locks: VolumeLocks,
}

impl LayerStore {
    /// Opens (creating if needed) `<state_dir>/layers`, removing stale staging directories and
    /// the layers a machine restart may have torn (published unsynced in an earlier boot).
    pub fn open(state_dir: &Path) -> Result<Self, UnpackError> {
        Self::open_in_boot(state_dir, unsynced::current_boot())
    }

    /// [`Self::open`] as if the kernel's boot ID were `boot` (tests play restarts with it).
    pub(crate) fn open_in_boot(
        state_dir: &Path,
        boot: Option<String>,
    ) -> Result<Self, UnpackError> {
        let root = crate::volume::VolumeLayout::new(state_dir).layers();
        let staging_dir = root.join(".staging");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&staging_dir)
            .map_err(store_err("creating layer store directory", &staging_dir))?;
        let unsynced =
            Unsynced::open(&root, boot).map_err(store_err("creating directory in", &root))?;
        let store = LayerStore {
            root,
            unsynced,
            locks: VolumeLocks::new(state_dir),
        };
        store.drop_torn_layers()?;
        let stale = staging::stale_entries(&staging_dir)
            .map_err(store_err("listing staging directory", &staging_dir))?;
        for path in stale {
            // A stale entry that cannot be removed is logged and left: it must not stop the
            // store from opening, and nothing ever takes a staging directory as complete.
            if let Err(e) = remove_any(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove stale layer staging directory");
            }
        }
        Ok(store)
    }

    /// Moves every layer published unsynced in an earlier boot into staging (gone at once,
    /// atomically), then removes it and its marker: a later unpack redoes it from its blob.
    fn drop_torn_layers(&self) -> Result<(), UnpackError> {
        let dir = self.unsynced.dir();
        let torn = self
            .unsynced
            .of_earlier_boots()
            .map_err(store_err("listing", dir))?;
        for (layer, marker) in torn {
            let path = self.root.join(&layer);
            if path.exists() {
                tracing::warn!(layer = %path.display(), "this layer was unpacked before the machine restarted and may not have reached the disk: unpacking it again");
                let aside = self.staging_dir().join(staging::fresh_name(&layer));
                fs::rename(&path, &aside)
                    .map_err(store_err("moving aside the possibly torn layer", &path))?;
                if let Err(e) = remove_any(&aside) {
                    tracing::warn!(path = %aside.display(), error = %e, "cannot remove a possibly torn layer moved aside");
                }
            }
            self.unsynced
                .forget(&marker)
                .map_err(store_err("removing", &marker))?;
        }
        Ok(())
    }

    /// Makes every layer this boot published durable (one `syncfs` of the store's
    /// filesystem) and forgets that they were not. Returns how many layers that covered.
    pub fn sync(&self) -> Result<usize, UnpackError> {
        self.unsynced
            .sync(&self.root)
            .map_err(store_err("syncing unpacked layers in", &self.root))
    }

    fn staging_dir(&self) -> PathBuf {
        self.root.join(".staging")
    }

    /// Where the layer with this diff ID lives (whether or not it is complete).
    pub fn path(&self, diff_id: &Digest) -> PathBuf {
        self.root.join(diff_id.hex())
    }

    /// Whether the layer is complete: its directory exists (it is only created by a rename).
    /// Every complete layer directory (name = diff ID hex), sorted.
    pub fn list(&self) -> Result<Vec<Digest>, UnpackError> {
        let entries =
            fs::read_dir(&self.root).map_err(store_err("listing layer store", &self.root))?;
        let mut layers: Vec<Digest> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                Digest::parse(&format!("sha256:{}", e.file_name().to_string_lossy())).ok()
            })
            .collect();
        layers.sort();
        Ok(layers)
    }

    /// The layer directories of an image whose layers have these diff IDs (bottom first),
    /// complete or not: the one place that names them from an image (what a cleanup keeps).
    pub fn image_dirs(&self, diff_ids: &[Digest]) -> Vec<PathBuf> {
        diff_ids.iter().map(|id| self.path(id)).collect()
    }

    /// Removes a layer directory (absent is fine): moved into staging first (gone at once,
    /// atomically: a removal cut short leaves a stale staging entry, never a partial layer),
    /// then removed. It must not be in use by a mounted rootfs.
    pub fn remove(&self, diff_id: &Digest) -> Result<(), UnpackError> {
        let path = self.path(diff_id);
        let aside = self.staging_dir().join(staging::fresh_name(diff_id.hex()));
        match fs::rename(&path, &aside) {
            Ok(()) => remove_any(&aside).map_err(store_err("removing layer", &aside))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(store_err("moving aside layer", &path)(e)),
        }
        self.unsynced
            .forget_entry(diff_id.hex())
            .map_err(store_err("removing the unsynced marker of", &path))
    }

    pub fn is_complete(&self, diff_id: &Digest) -> bool {
        fs::symlink_metadata(self.path(diff_id)).is_ok_and(|m| m.is_dir())
    }

    /// Unpacks the layer into its directory, unless it is complete already. On any error the
    /// staging directory is removed and no layer directory exists.
    pub fn unpack(
        &self,
        source: &LayerSource,
        limits: &Limits,
    ) -> Result<UnpackReport, UnpackError> {
        self.unpack_input(source, None, limits)
    }

    /// [`Self::unpack`] from `input`, the blob's bytes as they download, instead of the blob
    /// file: a follower of the blob's writer (`crate::cache::Follower`), which ends only once
    /// the blob is verified against the manifest and fails if its transfer is abandoned. The
    /// layer is published only once the input has ended and the diff ID matched, so both
    /// digests are checked before it is complete, as for [`Self::unpack`]. A follower that
    /// checks its blob's digest hashes it beside the diff ID, in one pass.
    pub fn unpack_following(
        &self,
        source: &LayerSource,
        input: Follower,
        limits: &Limits,
    ) -> Result<UnpackReport, UnpackError> {
        self.unpack_input(source, Some(Box::new(input)), limits)
    }

    fn unpack_input(
        &self,
        source: &LayerSource,
        input: Option<stream::Input>,
        limits: &Limits,
    ) -> Result<UnpackReport, UnpackError> {
        let reused = || UnpackReport {
            reused: true,
            ..UnpackReport::default()
        };
        if self.is_complete(&source.diff_id) {
            return Ok(reused());
        }
        // One process of the volume unpacks it; the others wait, then find it complete.
        let target = self.path(&source.diff_id);
        let name = target.file_name().unwrap_or_default().to_string_lossy();
        let (_held, waited) = self
            .locks
            .take(
                &format!("layer-{name}"),
                Mode::Exclusive,
                &format!("unpacking layer {}", source.digest),
            )
            .map_err(UnpackError::Lock)?;
        if waited && self.is_complete(&source.diff_id) {
            return Ok(reused());
        }
        let staging = self
            .staging_dir()
            .join(staging::fresh_name(source.diff_id.hex()));
        let result = self.unpack_staged(source, input, limits, &staging);
        if result.is_err() || staging.exists() {
            if let Err(e) = remove_any(&staging) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(path = %staging.display(), error = %e, "cannot remove layer staging directory");
                }
            }
        }
        result
    }

    fn unpack_staged(
        &self,
        source: &LayerSource,
        input: Option<stream::Input>,
        limits: &Limits,
        staging: &Path,
    ) -> Result<UnpackReport, UnpackError> {
        tree::create_root(staging).map_err(store_err("creating staging directory", staging))?;
        let input = match input {
            Some(input) => input,
            None => stream::open_blob(source)?,
        };
        let mut report = stream::unpack_stream(source, input, limits, staging)?;

        let dir = File::open(staging).map_err(store_err("opening staging directory", staging))?;
        if let Some(first) = report.implicit_dirs.first() {
            mark_implicit(&dir, first)
                .map_err(store_err("marking implicit directories of", staging))?;
        }
        // Durability (module doc): the marker is on disk before the rename can be; without a
        // boot ID to mark with, the files are synced before the rename instead.
        let marked = self
            .unsynced
            .mark(source.diff_id.hex())
            .map_err(store_err("marking unsynced in", self.unsynced.dir()))?;
        if !marked {
            nix::unistd::syncfs(&dir)
                .map_err(io::Error::from)
                .map_err(store_err("syncing filesystem of", staging))?;
        }
        drop(dir);

        let target = self.path(&source.diff_id);
        match renameat2(
            AT_FDCWD,
            staging,
            AT_FDCWD,
            &target,
            RenameFlags::RENAME_NOREPLACE,
        ) {
            Ok(()) => {}
            // Another unpack of the same layer finished first: its directory is as good.
            Err(Errno::EEXIST | Errno::ENOTEMPTY) => {
                report.reused = true;
                return Ok(report);
            }
            Err(e) => {
                return Err(store_err("renaming staging directory to", &target)(
                    e.into(),
                ))
            }
        }
        if !marked {
            File::open(&self.root)
                .and_then(|d| d.sync_all())
                .map_err(store_err("syncing directory", &self.root))?;
        }
        Ok(report)
    }
}

/// Removes a staging entry: a directory tree (never following a symlink inside it) or a file.
fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path)?.is_dir() {
        true => fs::remove_dir_all(path),
        false => fs::remove_file(path),
    }
}
