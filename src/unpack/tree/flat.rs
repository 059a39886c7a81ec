//! The flattened-copy writer: layer after layer onto one merged tree, whiteouts applied to it
//! instead of written as overlayfs ones, nothing overlay-specific created.
//!
//! Owns: what `.wh.<name>` and `.wh..wh..opq` do when layers are applied in order onto one
//! directory, a lower layer's file where a layer needs a parent directory (replaced by it, as
//! containerd applies a layer), and a hard link to what the tree does not have (an error). A whiteout removes `<name>` (a file, symlink or whole tree, never followed) as
//! lower layers left it; an opaque marker removes every entry of its directory that lower
//! layers left. Both spare what the current layer itself wrote, whatever the order of the
//! marker and those entries: the writer tracks every entry the layer creates (and every
//! parent directory it creates) by (directory inode, name), so an entry is recognised however
//! the layer's path reached it through symlinks. Clearing a directory walks it: an entry the
//! layer wrote stays (a directory of it is cleared in turn, since the lower one it merged with
//! is hidden), any other directory is cleared and removed only if nothing of the layer is left
//! in it (the layer wrote there through an alias), anything else is removed. Parents are
//! resolved in-root like every entry's; the final name is never followed; a whiteout whose
//! parent does not exist creates nothing. Never sets an xattr or creates a device.
//!
//! Directory mtimes: a lower directory the layer changes without listing it (writing or
//! deleting in it, making it opaque) keeps its mtime, as `umoci raw unpack` keeps it; a
//! listed one gets the layer's.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::stat::{fstat, futimens, FileStat};
use nix::sys::time::TimeSpec;
use nix::unistd::{unlinkat, UnlinkatFlags};

use super::at::{children, classify, open_dir_nofollow, remove_tree, Existing};
use super::{FlatTree, Mode, Tree};
use crate::digest::Digest;
use crate::unpack::header::{join, Entry};
use crate::unpack::UnpackError;

/// A directory entry by its directory's inode and its name: names the same entry whatever
/// symlinks the layer's path for it went through (directories have no hard links).
type EntryKey = (u64, OsString);

/// The state of the flattened-copy writer.
#[derive(Default)]
pub(in crate::unpack) struct FlatCopy {
    /// The entries the current layer created or wrote (parents it created too).
    written: RefCell<HashSet<EntryKey>>,
    /// Directories the current layer changes, by inode, with the path it reached them by and
    /// their mtime before the change (restored by [`FlatTree::restore_touched_dirs`] unless
    /// the layer lists them).
    touched_dirs: RefCell<HashMap<u64, (PathBuf, TimeSpec)>>,
}

impl Mode for FlatCopy {
    const TRACKS_DIRS: bool = true;

    /// Notes the directory's mtime the first time the layer comes to it.
    fn track_dir(tree: &Tree<'_, Self>, st: &FileStat, parts: &[OsString]) -> u64 {
        tree.mode
            .touched_dirs
            .borrow_mut()
            .entry(st.st_ino)
            .or_insert_with(|| (join(parts), TimeSpec::new(st.st_mtime, st.st_mtime_nsec)));
        st.st_ino
    }

    fn opaque(tree: &mut Tree<'_, Self>, entry: &Entry) -> Result<(), UnpackError> {
        tree.parent = None;
        tree.flatten_opaque(entry)
    }

    fn whiteout(
        tree: &mut Tree<'_, Self>,
        parent_parts: &[OsString],
        name: &OsStr,
        entry: &Entry,
    ) -> Result<(), UnpackError> {
        tree.parent = None;
        tree.flatten_whiteout(parent_parts, name, entry)
    }

    fn wrote(tree: &Tree<'_, Self>, dir_ino: u64, name: &OsStr) {
        tree.record_written(dir_ino, name);
    }

    /// Unless the current layer wrote it.
    fn replaces_lower_file(
        tree: &Tree<'_, Self>,
        dir: BorrowedFd<'_>,
        parts: &[OsString],
        name: &OsStr,
        path: &Path,
    ) -> Result<bool, UnpackError> {
        Ok(!tree.is_written(tree.dir_ino(dir, parts, path)?, name))
    }

    /// Created by this layer: an opaque marker of an ancestor keeps it.
    fn created_parent(
        tree: &Tree<'_, Self>,
        dir_ino: u64,
        _: BorrowedFd<'_>,
        parts: &[OsString],
        _: &Path,
    ) -> Result<(), UnpackError> {
        tree.record_written(dir_ino, parts.last().expect("a created parent has a name"));
        Ok(())
    }

    fn listed_dir(
        _: &mut Tree<'_, Self>,
        _: BorrowedFd<'_>,
        _: &Entry,
        _: bool,
    ) -> Result<(), UnpackError> {
        Ok(())
    }

    /// Every layer below is in the tree: the target is nowhere.
    fn link_target_missing(
        _: &mut Tree<'_, Self>,
        _: BorrowedFd<'_>,
        _: &OsStr,
        _: &Entry,
        _: &[OsString],
        missing: UnpackError,
    ) -> Result<(), UnpackError> {
        Err(missing)
    }

    /// Default ACLs wait for the last layer ([`Tree::set_default_acls`]).
    fn finish_layer(tree: &mut Tree<'_, Self>) -> Result<(), UnpackError> {
        tree.restore_touched_dirs()
    }
}

impl<'a> FlatTree<'a> {
    /// Starts the next layer: it names errors, and what it writes is tracked afresh (an opaque
    /// marker or whiteout only removes what lower layers wrote).
    pub(in crate::unpack) fn begin_layer(&mut self, layer: &'a Digest) {
        self.layer = layer;
        self.mode.written.get_mut().clear();
        self.parent = None;
    }

    /// Notes that the current layer wrote `name` in the directory with inode `dir_ino`.
    fn record_written(&self, dir_ino: u64, name: &OsStr) {
        self.mode
            .written
            .borrow_mut()
            .insert((dir_ino, name.to_owned()));
    }

    fn is_written(&self, dir_ino: u64, name: &OsStr) -> bool {
        // A lookup by a borrowed name needs an owned key: the set is small and hashing cheap.
        self.mode
            .written
            .borrow()
            .contains(&(dir_ino, OsString::from(name)))
    }

    /// `.wh.<name>` under `parent_parts`: removes `<name>` unless this layer wrote it (then a
    /// directory of it loses only its lower contents).
    fn flatten_whiteout(
        &mut self,
        parent_parts: &[OsString],
        name: &OsStr,
        entry: &Entry,
    ) -> Result<(), UnpackError> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY;
        let parent = match self.root.open_at(&join(parent_parts), flags) {
            Ok(fd) => fd,
            // Nothing below a missing parent (or a file) to remove.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
                return Ok(())
            }
            Err(e) => return Err(self.err("opening parent of", &entry.path)(e)),
        };
        let parent = parent.as_fd();
        let existing = classify(parent, name).map_err(self.err("inspecting", &entry.path))?;
        if matches!(existing, Existing::Nothing) {
            return Ok(());
        }
        self.removed.set(true);
        let ino = self.dir_ino(parent, parent_parts, &entry.path)?;
        let result = if self.is_written(ino, name) {
            match existing {
                Existing::Dir => open_dir_nofollow(parent, name)
                    .and_then(|fd| self.clear_lower(fd.as_fd()).map(|_| ())),
                _ => Ok(()),
            }
        } else {
            match existing {
                Existing::Dir => remove_tree(parent, name),
                _ => unlinkat(parent, name, UnlinkatFlags::NoRemoveDir).map_err(io::Error::from),
            }
        };
        result.map_err(self.err("applying whiteout", &entry.path))
    }

    /// `.wh..wh..opq` in the directory `entry.parts` (created if missing): removes what lower
    /// layers left in it.
    fn flatten_opaque(&mut self, entry: &Entry) -> Result<(), UnpackError> {
        let dir = self.ensure_dir(&entry.parts, &entry.path)?;
        self.dir_ino(dir.as_fd(), &entry.parts, &entry.path)?;
        self.removed.set(true);
        self.clear_lower(dir.as_fd())
            .map(|_| ())
            .map_err(self.err("applying opaque marker", &entry.path))
    }

    /// Gives the directories the current layer changed without listing them (it wrote or
    /// deleted in them, or made them opaque) back the mtime they had before the layer: a layer
    /// says what a directory's mtime is only by listing it. One that is no longer the same
    /// directory (replaced, or now reached otherwise) is left alone.
    fn restore_touched_dirs(&mut self) -> Result<(), UnpackError> {
        let listed: HashSet<&PathBuf> = self.dir_times.iter().map(|(path, _)| path).collect();
        for (ino, (path, mtime)) in self.mode.touched_dirs.take() {
            if listed.contains(&path) {
                continue;
            }
            // Followed in-root like the layer's path was (it may end in a symlink to the
            // directory); the inode check below makes sure it is the same directory.
            let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY;
            if let Some(fd) = self.reopen_dir(&path, ino, flags)? {
                futimens(&fd, &TimeSpec::UTIME_OMIT, &mtime)
                    .map_err(io::Error::from)
                    .map_err(self.err("restoring mtime of", &path))?;
            }
        }
        Ok(())
    }

    /// Removes from the directory `dir` (open for reading) everything the current layer did not
    /// write; returns whether anything is left.
    fn clear_lower(&self, dir: BorrowedFd<'_>) -> io::Result<bool> {
        let ino = fstat(dir)?.st_ino;
        let mut left = false;
        for (child, is_dir) in children(dir)? {
            let written = self.is_written(ino, &child);
            if is_dir {
                let fd = open_dir_nofollow(dir, &child)?;
                let kept = self.clear_lower(fd.as_fd())?;
                drop(fd);
                if written || kept {
                    left = true;
                } else {
                    unlinkat(dir, child.as_os_str(), UnlinkatFlags::RemoveDir)?;
                }
            } else if written {
                left = true;
            } else {
                unlinkat(dir, child.as_os_str(), UnlinkatFlags::NoRemoveDir)?;
            }
        }
        Ok(left)
    }
}
