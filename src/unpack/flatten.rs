//! Flattening: an image's ordered layers applied onto one fresh directory, for `envbox prepare
//! --output` (a runtime bundle's `rootfs/`) and where overlayfs cannot be used.
//!
//! Owns: the target's staging directory (`.<target name>.<staging name>` beside the target, see
//! `crate::cache::staging`; stale ones of dead processes are swept first), applying every
//! layer in order through the same stream reader and entry writer core as [`LayerStore::stage`]
//! (same in-root resolution, ownership shift, budgets per layer and diff-ID check per layer),
//! with the flattened-copy writer (`tree::FlatTree`, where whiteouts act on the tree), and the
//! final rename. It must never replace
//! an existing target, never leave a partial tree at the target's name, and never create an
//! overlayfs whiteout device or `trusted.overlay.*` xattr.
//!
//! Durability is the caller's choice ([`Durability`]): a bundle handed to someone else gets one
//! `syncfs` before the rename and an fsync of the target's parent after it (no fsync per file;
//! a flattened tree has no unsynced marker, unlike a layer directory); the per-start copy where
//! overlayfs cannot be used waits for no disk at all, since every start clears it and flattens
//! afresh (the wait was the length of the image's write-back: ~0.9 s for 590 MB here).
//!
//! [`LayerStore::stage`]: super::LayerStore::stage

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};

use super::stream::{apply_stream, open_blob};
use super::tree::{self, FlatCopy, FlatTree};
use super::{remove_any, store_err, LayerSource, Limits, UnpackError};
use crate::cache::staging;

/// What a flatten did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlattenReport {
    /// Layers applied.
    pub layers: usize,
    /// Tar entries read, all layers together.
    pub entries: u64,
    /// Uncompressed stream bytes read, all layers together.
    pub bytes: u64,
    /// Things skipped that the caller may want to log, each prefixed with its layer's index.
    pub warnings: Vec<String>,
}

/// Whether a flattened tree must be on disk before it takes the target's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// `syncfs` before the rename, fsync of the parent after it: a tree that outlives this
    /// process and may be used after a machine crash (a runtime bundle).
    Synced,
    /// Nothing waits for the disk: a scratch tree that the next user clears and makes again
    /// (the rootfs of one start), so a crash can tear it harmlessly.
    Scratch,
}

/// Applies the layers, in order, onto a fresh directory `target` (must not exist; created
/// owned 100000:100000 0755), staging next to it and renaming at the end, on disk first when
/// `durability` says so. On any error the staging directory is removed and `target` does not
/// exist.
pub fn flatten(
    layers: &[LayerSource],
    target: &Path,
    limits: &Limits,
    durability: Durability,
) -> Result<FlattenReport, UnpackError> {
    match fs::symlink_metadata(target) {
        Ok(_) => {
            return Err(UnpackError::TargetExists {
                path: target.to_owned(),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(store_err("inspecting flatten target", target)(e)),
    }
    let (parent, name) = match (target.parent(), target.file_name()) {
        (Some(parent), Some(name)) => (parent, name.to_string_lossy()),
        _ => {
            return Err(store_err("flattening into", target)(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the target needs a parent directory and a final name",
            )))
        }
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    // The staging prefix may not contain dots (see `staging::is_stale`).
    let hidden = format!(".{}.", name.replace('.', "_"));
    sweep(parent, &hidden);
    let staging_path = parent.join(format!("{hidden}{}", staging::fresh_name("flatten")));

    let result = flatten_staged(layers, limits, &staging_path, target, durability);
    if result.is_err() {
        if let Err(e) = remove_any(&staging_path) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %staging_path.display(), error = %e, "cannot remove flatten staging directory");
            }
        }
    }
    result
}

fn flatten_staged(
    layers: &[LayerSource],
    limits: &Limits,
    staging_path: &Path,
    target: &Path,
    durability: Durability,
) -> Result<FlattenReport, UnpackError> {
    tree::create_root(staging_path)
        .map_err(store_err("creating staging directory", staging_path))?;
    let mut report = FlattenReport::default();
    if let Some(first) = layers.first() {
        let mut tree = FlatTree::open(&first.digest, staging_path, FlatCopy::default())
            .map_err(store_err("opening staging directory", staging_path))?;
        for (index, layer) in layers.iter().enumerate() {
            tree.begin_layer(&layer.digest);
            let one = apply_stream(layer, open_blob(layer)?, limits, &mut tree)?;
            report.layers += 1;
            report.entries += one.entries;
            report.bytes += one.bytes;
            report.warnings.extend(
                one.warnings
                    .into_iter()
                    .map(|w| format!("layer {index}: {w}")),
            );
        }
        tree.set_default_acls()?;
    }

    if durability == Durability::Synced {
        let dir = File::open(staging_path)
            .map_err(store_err("opening staging directory", staging_path))?;
        nix::unistd::syncfs(&dir)
            .map_err(io::Error::from)
            .map_err(store_err("syncing filesystem of", staging_path))?;
    }
    renameat2(
        AT_FDCWD,
        staging_path,
        AT_FDCWD,
        target,
        RenameFlags::RENAME_NOREPLACE,
    )
    .map_err(|e| match e {
        nix::errno::Errno::EEXIST => UnpackError::TargetExists {
            path: target.to_owned(),
        },
        e => store_err("renaming staging directory to", target)(e.into()),
    })?;
    if durability == Durability::Synced {
        let parent = target
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(store_err("syncing directory", parent))?;
    }
    Ok(report)
}

/// Removes the stale staging directories of earlier flattens into the same target (their
/// writer is gone). Failures are logged: they must not stop this flatten.
fn sweep(parent: &Path, hidden: &str) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    let stale: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix(hidden))
                .is_some_and(|rest| {
                    // Only names this function makes: `flatten.<pid>.<token>-<n>.partial`.
                    rest.starts_with("flatten.")
                        && rest.ends_with(".partial")
                        && staging::is_stale(rest)
                })
        })
        .map(|e| e.path())
        .collect();
    for path in stale {
        if let Err(e) = remove_any(&path) {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove stale flatten staging directory");
        }
    }
}
