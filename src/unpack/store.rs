//! The layer store on the volume: one directory per layer chain, staged, settled, published.
//!
//! Owns: `<state_dir>/layers/chain/<chain ID hex>` (a layer applied onto the layers below it,
//! see [`chain_ids`]; only ever created by renaming a finished staging directory),
//! `<state_dir>/layers/chain/.staging/` (layers being unpacked, named and swept by the blob
//! store's staging rule, see `crate::cache::staging`) and `.unsynced/` beside them, and the
//! mapping from an image's diff IDs to its layer directories ([`LayerStore::image_layer_dirs`],
//! which pruning uses too). A layer is unpacked in two steps, so that layers unpack in
//! parallel and while they download: [`LayerStore::stage`] writes its tree into staging
//! without its lower layers, and [`LayerStore::publish`] settles, against the published
//! directories of the layers below it, what needed them (module `settle`) and renames it into
//! place, its completion marker written first (module `complete`): a directory without a marker
//! naming it is never taken as complete, and the next unpack of it replaces it. The directories
//! of the earlier layout (`<state_dir>/layers/<diff ID hex>`, unpacked
//! without their lower layers) are never used: [`LayerStore::remove_legacy`] removes them.
//!
//! Durability: no fsync per file, and no sync before a layer is published either: the layer
//! is marked unsynced first (`crate::cache::unsynced`: a marker naming the boot, made durable
//! before the rename), so a layer a power loss may have torn is recognised after the restart
//! and unpacked again from its blob. [`LayerStore::sync`] makes the layers of this boot
//! durable with one `syncfs`. A kill -9 leaves only a staging directory, which the next
//! [`LayerStore::open`] removes.
//!
//! [`chain_ids`]: super::chain_ids

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};

use super::complete::{Completion, Markers};
use super::settle::{self, Pending};
use super::stream::{self, Input};
use super::tree;
use super::{chain_ids, remove_any, store_err, LayerSource, Limits, UnpackError, UnpackReport};
use crate::cache::unsynced::{self, Unsynced};
use crate::cache::{staging, Follower};
use crate::digest::Digest;
use crate::lock::{Held, Mode, VolumeLocks};

/// The layer store. Cheap to clone; layers may be staged from several threads at once (each
/// writes its own staging directory).
#[derive(Debug, Clone)]
pub struct LayerStore {
    /// `<state_dir>/layers/chain`.
    root: PathBuf,
    /// `<state_dir>/layers`, where the earlier layout's directories are.
    legacy: PathBuf,
    unsynced: Unsynced,
    markers: Markers,
    locks: VolumeLocks,
}

/// A layer unpacked into staging, not yet settled against its lower layers nor published.
/// Dropped unpublished, its staging directory goes.
#[derive(Debug)]
pub struct Staged {
    chain: Digest,
    /// The layer's compressed digest.
    layer: Digest,
    diff_id: Digest,
    staging: PathBuf,
    pending: Pending,
    report: UnpackReport,
    /// The layer's volume lock (`crate::lock`), held from staging to publishing: one process
    /// of the volume unpacks a layer, the others wait, then find it complete.
    _lock: Held,
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let Err(e) = remove_any(&self.staging) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %self.staging.display(), error = %e, "cannot remove layer staging directory");
            }
        }
    }
}

/// What [`LayerStore::stage`] did.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per layer, moved once: boxing buys nothing
pub enum Stage {
    /// The layer's directory is complete already: nothing was read.
    Complete,
    /// The layer was read into a staging directory, to be published.
    Staged(Staged),
}

impl LayerStore {
    /// Opens (creating if needed) the store in `state_dir`, removing stale staging directories
    /// and the layers a machine restart may have torn (published unsynced in an earlier boot).
    pub fn open(state_dir: &Path) -> Result<Self, UnpackError> {
        Self::open_in_boot(state_dir, unsynced::current_boot())
    }

    /// [`Self::open`] as if the kernel's boot ID were `boot` (tests play restarts with it).
    pub(crate) fn open_in_boot(
        state_dir: &Path,
        boot: Option<String>,
    ) -> Result<Self, UnpackError> {
        let legacy = crate::volume::VolumeLayout::new(state_dir).layers();
        let root = legacy.join("chain");
        let staging_dir = root.join(".staging");
        let markers = Markers::new(&root);
        for dir in [&staging_dir, markers.dir()] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(store_err("creating layer store directory", dir))?;
        }
        let unsynced =
            Unsynced::open(&root, boot).map_err(store_err("creating directory in", &root))?;
        let store = LayerStore {
            root,
            legacy,
            unsynced,
            markers,
            locks: VolumeLocks::new(state_dir),
        };
        store.drop_torn_layers()?;
        let stale = staging::stale_entries(&staging_dir, &|hex| {
            store.locks.is_held(&format!("layer-{hex}"))
        })
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
            if let Ok(chain) = Digest::parse(&format!("sha256:{layer}")) {
                self.markers
                    .remove(&chain)
                    .map_err(store_err("removing the completion marker of", &path))?;
            }
            self.unsynced
                .forget(&marker)
                .map_err(store_err("removing", &marker))?;
        }
        Ok(())
    }

    /// Makes every layer this boot published durable (one `syncfs` of the store's
    /// filesystem) and forgets that they were not. Returns how many layers that covered.
    pub(crate) fn sync(&self) -> Result<usize, UnpackError> {
        self.unsynced
            .sync(&self.root)
            .map_err(store_err("syncing unpacked layers in", &self.root))
    }

    fn staging_dir(&self) -> PathBuf {
        self.root.join(".staging")
    }

    /// Where the layer with this chain ID lives (whether or not it is complete).
    pub(crate) fn path(&self, chain: &Digest) -> PathBuf {
        self.root.join(chain.hex())
    }

    /// The layer directories of an image whose layers have these diff IDs (bottom first), in
    /// that order: what `overlay` mounts, and what pruning keeps.
    pub fn image_layer_dirs(&self, diff_ids: &[Digest]) -> Vec<PathBuf> {
        chain_ids(diff_ids).iter().map(|c| self.path(c)).collect()
    }

    /// Every complete layer directory, by chain ID, sorted.
    pub(crate) fn list(&self) -> Result<Vec<Digest>, UnpackError> {
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

    /// Removes a layer directory and its completion marker (absent is fine): moved into
    /// staging first (gone at once, atomically: a removal cut short leaves a stale staging
    /// entry, never a partial layer), then removed. It must not be in use by a mounted rootfs.
    pub(crate) fn remove(&self, chain: &Digest) -> Result<(), UnpackError> {
        let path = self.path(chain);
        self.move_aside(chain)?;
        self.markers
            .remove(chain)
            .map_err(store_err("removing the completion marker of", &path))?;
        self.unsynced
            .forget_entry(chain.hex())
            .map_err(store_err("removing the unsynced marker of", &path))
    }

    /// The completion markers (module `complete`), for the node cache's cleanup.
    pub(crate) fn markers(&self) -> &Markers {
        &self.markers
    }

    /// Moves the directory of `chain` into staging and removes it there (absent is fine).
    fn move_aside(&self, chain: &Digest) -> Result<(), UnpackError> {
        let path = self.path(chain);
        let aside = self.staging_dir().join(staging::fresh_name(chain.hex()));
        match fs::rename(&path, &aside) {
            Ok(()) => remove_any(&aside).map_err(store_err("removing layer", &aside)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(store_err("moving aside layer", &path)(e)),
        }
    }

    /// Removes what the earlier layout left in `<state_dir>/layers` (directories named by a
    /// diff ID, each unpacked without its lower layers, their staging and unsynced markers):
    /// no image uses them. Returns how many layer directories that was.
    pub(crate) fn remove_legacy(&self) -> Result<usize, UnpackError> {
        let entries =
            fs::read_dir(&self.legacy).map_err(store_err("listing layer store", &self.legacy))?;
        let mut removed = 0;
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let layer = Digest::parse(&format!("sha256:{name}")).is_ok();
            if !(layer || name == ".staging" || name == ".unsynced") {
                continue;
            }
            let path = entry.path();
            remove_any(&path).map_err(store_err("removing the earlier layout's", &path))?;
            removed += usize::from(layer);
        }
        Ok(removed)
    }

    /// Whether the layer is complete: its directory exists (it is only created by a rename)
    /// and its completion marker names it (module doc).
    pub(crate) fn is_complete(&self, chain: &Digest) -> bool {
        fs::symlink_metadata(self.path(chain)).is_ok_and(|m| m.is_dir())
            && self.markers.read(chain).is_some()
    }

    /// Unpacks the layer `source`, whose chain ID is `chain`, into staging, unless its
    /// directory is complete already. On any error nothing is left.
    pub fn stage(
        &self,
        source: &LayerSource,
        chain: &Digest,
        limits: &Limits,
    ) -> Result<Stage, UnpackError> {
        self.stage_input(source, chain, None, limits)
    }

    /// [`Self::stage`] from `input`, the blob's bytes as they download, instead of the blob
    /// file: a follower of the blob's writer (`crate::cache::Follower`), which ends only once
    /// the blob is verified against the manifest and fails if its transfer is abandoned. Both
    /// digests are checked before the layer is staged; a follower that checks its blob's
    /// digest hashes it beside the diff ID, in one pass.
    pub(crate) fn stage_following(
        &self,
        source: &LayerSource,
        chain: &Digest,
        input: Follower,
        limits: &Limits,
    ) -> Result<Stage, UnpackError> {
        self.stage_input(source, chain, Some(Box::new(input)), limits)
    }

    fn stage_input(
        &self,
        source: &LayerSource,
        chain: &Digest,
        input: Option<Input>,
        limits: &Limits,
    ) -> Result<Stage, UnpackError> {
        if self.is_complete(chain) {
            return Ok(Stage::Complete);
        }
        // One process of the volume unpacks it; the others wait, then find it complete.
        let (lock, waited) = self
            .locks
            .take(
                &format!("layer-{}", chain.hex()),
                Mode::Exclusive,
                &format!("unpacking layer {}", source.digest),
            )
            .map_err(UnpackError::Lock)?;
        if waited && self.is_complete(chain) {
            return Ok(Stage::Complete);
        }
        // A directory without its marker: put there by something else, or published by a
        // process killed before it wrote the marker. Never used; unpacked again.
        if fs::symlink_metadata(self.path(chain)).is_ok() {
            tracing::warn!(layer = %self.path(chain).display(), "this layer directory has no completion marker: unpacking it again");
            self.move_aside(chain)?;
        }
        let staging = self.staging_dir().join(staging::fresh_name(chain.hex()));
        tree::create_root(&staging).map_err(store_err("creating staging directory", &staging))?;
        // From here on the staging directory goes with `staged`, whatever happens.
        let mut staged = Staged {
            chain: chain.clone(),
            layer: source.digest.clone(),
            diff_id: source.diff_id.clone(),
            staging,
            pending: Pending::default(),
            report: UnpackReport::default(),
            _lock: lock,
        };
        let input = match input {
            Some(input) => input,
            None => stream::open_blob(source)?,
        };
        let (report, pending) = stream::unpack_stream(source, input, limits, &staged.staging)?;
        staged.report = report;
        staged.pending = pending;
        Ok(Stage::Staged(staged))
    }

    /// Settles `staged` against its lower layers (`lowers`: the published directories of the
    /// layers below it, bottom first) and publishes it. On any error nothing is left.
    pub fn publish(
        &self,
        mut staged: Staged,
        lowers: &[PathBuf],
    ) -> Result<UnpackReport, UnpackError> {
        let pending = std::mem::take(&mut staged.pending);
        settle::settle(&staged.layer, &staged.staging, lowers, pending)?;
        let mut report = std::mem::take(&mut staged.report);
        let staging = &staged.staging;

        // Durability (module doc): the marker is on disk before the rename can be; without a
        // boot ID to mark with, the files are synced before the rename instead.
        let marked = self
            .unsynced
            .mark(staged.chain.hex())
            .map_err(store_err("marking unsynced in", self.unsynced.dir()))?;
        let completion = Completion::new(
            staged.chain.clone(),
            staged.diff_id.clone(),
            staged.layer.clone(),
            report.bytes,
        );
        self.markers.write(&completion).map_err(store_err(
            "writing the completion marker in",
            self.markers.dir(),
        ))?;
        if !marked {
            let dir =
                File::open(staging).map_err(store_err("opening staging directory", staging))?;
            nix::unistd::syncfs(&dir)
                .map_err(io::Error::from)
                .map_err(store_err("syncing filesystem of", staging))?;
        }
        let target = self.path(&staged.chain);
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
