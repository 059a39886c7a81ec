//! The layer-directory writer: one layer into its own staging directory, for overlayfs.
//!
//! Owns: what a layer leaves to `settle` because it needs the lower layers
//! ([`LayerTree::into_pending`]): whiteouts (`.wh.<name>`; settled into a 0:0 character device
//! owned 100000:100000 where the layers below have `<name>`, or an opaque directory where this
//! layer has one), the directories created because an entry needed them that the layer does
//! not list, and hard links to what this layer does not have. `.wh..wh..opq` sets
//! `trusted.overlay.opaque=y` on its directory, created if missing, whatever the order; so does
//! a directory over a whiteout of the same layer. It never looks at a lower layer.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use nix::fcntl::OFlag;
use nix::sys::stat::FileStat;

use super::{set_xattr, LayerTree, Mode, Tree, OPAQUE_XATTR};
use crate::unpack::header::Entry;
use crate::unpack::settle::{Link, Pending};
use crate::unpack::UnpackError;

/// The state of the layer-directory writer.
#[derive(Default)]
pub(in crate::unpack) struct LayerDir {
    /// Directories created because an entry needed them, that the layer has not listed (yet).
    /// By inode, with the path the directory was created at.
    implicit: RefCell<HashMap<u64, Vec<OsString>>>,
    /// Whiteouts and hard links left to settle (see [`LayerTree::into_pending`]).
    pending: Pending,
}

impl Mode for LayerDir {
    const TRACKS_DIRS: bool = false;

    fn track_dir(_: &Tree<'_, Self>, _: &FileStat, _: &[OsString]) -> u64 {
        0
    }

    fn opaque(tree: &mut Tree<'_, Self>, entry: &Entry) -> Result<(), UnpackError> {
        let dir = if entry.parts.is_empty() {
            let fd = tree
                .root
                .open_at(Path::new("."), OFlag::O_RDONLY | OFlag::O_DIRECTORY);
            fd.map_err(tree.err("opening", &entry.path))?
        } else {
            tree.parent = None;
            tree.ensure_dir(&entry.parts, &entry.path)?
        };
        set_xattr(dir.as_fd(), OPAQUE_XATTR, b"y").map_err(tree.err("marking opaque", &entry.path))
    }

    fn whiteout(
        tree: &mut Tree<'_, Self>,
        _: &[OsString],
        _: &OsStr,
        entry: &Entry,
    ) -> Result<(), UnpackError> {
        // Settled once the lower layers are in: it is written only where they have
        // something, or makes this layer's own directory there opaque.
        tree.mode.pending.whiteouts.push(entry.parts.clone());
        Ok(())
    }

    fn wrote(_: &Tree<'_, Self>, _: u64, _: &OsStr) {}

    /// Never: a lower layer's file is not here (`settle` replaces it).
    fn replaces_lower_file(
        _: &Tree<'_, Self>,
        _: BorrowedFd<'_>,
        _: &[OsString],
        _: &OsStr,
        _: &Path,
    ) -> Result<bool, UnpackError> {
        Ok(false)
    }

    fn created_parent(
        tree: &Tree<'_, Self>,
        _: u64,
        fd: BorrowedFd<'_>,
        parts: &[OsString],
        path: &Path,
    ) -> Result<(), UnpackError> {
        let ino = tree.stat_dir(fd, path)?.st_ino;
        tree.mode.implicit.borrow_mut().insert(ino, parts.to_vec());
        Ok(())
    }

    fn listed_dir(
        tree: &mut Tree<'_, Self>,
        fd: BorrowedFd<'_>,
        entry: &Entry,
        over_whiteout: bool,
    ) -> Result<(), UnpackError> {
        if over_whiteout {
            set_xattr(fd, OPAQUE_XATTR, b"y").map_err(tree.err("marking opaque", &entry.path))?;
        }
        if !tree.mode.implicit.get_mut().is_empty() {
            // Listed by the layer, wherever the layer's symlinks put it.
            let ino = tree.stat_dir(fd, &entry.path)?.st_ino;
            tree.mode.implicit.get_mut().remove(&ino);
        }
        Ok(())
    }

    /// A lower layer's, perhaps: settled once they are in (copied up, then linked).
    fn link_target_missing(
        tree: &mut Tree<'_, Self>,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        entry: &Entry,
        target: &[OsString],
        _: UnpackError,
    ) -> Result<(), UnpackError> {
        tree.clear(parent, name, &entry.path)?;
        tree.mode.pending.links.push(Link {
            path: entry.path.clone(),
            parts: entry.parts.clone(),
            target: target.to_vec(),
        });
        Ok(())
    }

    fn finish_layer(tree: &mut Tree<'_, Self>) -> Result<(), UnpackError> {
        tree.set_default_acls()
    }
}

impl LayerTree<'_> {
    /// What needs the lower layers' view (module `settle`): the directories the layer needed
    /// (for an entry below them or an opaque marker) but does not list, which exist in the
    /// staging directory as 0755 root; its whiteouts; its hard links to what it does not have.
    pub(in crate::unpack) fn into_pending(self) -> Pending {
        let mut pending = self.mode.pending;
        pending.implicit = self
            .mode
            .implicit
            .into_inner()
            .into_iter()
            .map(|(ino, path)| (path, ino))
            .collect();
        pending
    }
}
