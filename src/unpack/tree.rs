//! Writing decoded entries into a layer's staging directory, contained in it.
//!
//! Owns: every filesystem change inside the staging directory. Each entry's parent is resolved
//! in-root (`openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` through
//! [`InRoot`](crate::rootfs::inroot::InRoot)), missing parents are created one component at a
//! time with `mkdirat`, and the final component is created, replaced or changed only with
//! `*at` calls relative to the parent's descriptor that never follow it (`O_NOFOLLOW`,
//! `AT_SYMLINK_NOFOLLOW`, `O_EXCL`, `linkat` without `AT_SYMLINK_FOLLOW`). It must never use a
//! plain path outside the staging directory, never follow a symlink planted by the layer out of
//! it, and never set an xattr the layer chose outside `security.capability`, `user.*` and the
//! POSIX ACLs (`system.posix_acl_*`, ids shifted in `header`).
//!
//! Rules: ownership is the header's + [`ID_SHIFT`]; the mode (setuid/setgid/sticky included) is
//! applied after `fchown` (which clears them), file capabilities after both; mtimes last, and
//! directories' mtimes only in [`Tree::finish`], after all their contents. The writing thread
//! creates as the shifted root ([`AsShiftedRoot`]), so an inode of `0:0` (most of them) is
//! born with its owner and needs no `fchown` unless its directory is setgid; a file whose mode
//! survives creation ([`exact_at_creation`]) is created with it and needs no `fchmod`. An access
//! ACL is set after the mode (whose permission bits it then decides, as the kernel keeps them
//! one); a directory's default ACL only once nothing more is created in the tree
//! ([`Tree::set_default_acls`]), so that no entry inherits an ACL its own entry does not list.
//!
//! A duplicate path replaces a non-directory; a directory over a directory merges (the later
//! metadata wins, its `user.*`, capability and ACL xattrs replacing the earlier ones); a
//! non-directory over a directory removes that tree. A parent reached through a symlink (the
//! layer's own) is resolved in-root and what is missing below its target is created there, as
//! containerd does.
//!
//! Two writers share this core, one per [`Mode`]: [`LayerTree`] writes one layer into its own
//! directory, recording for `settle` what needs the lower layers ([`LayerTree::into_pending`],
//! module `layer`); [`FlatTree`] applies layer after layer onto one merged tree, where
//! whiteouts act at once (module `flat`). The core resolves parents, writes every entry kind
//! (module `entries`) and sets directories' mtimes and default ACLs (module `default_acls`); it
//! asks the mode only where the two differ.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::ffi::{CStr, OsStr, OsString};
use std::fs::File;
use std::io::{self, BufRead};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, readlinkat, OFlag};
use nix::sys::stat::{fchmod, fstat, futimens, mkdirat, FileStat, Mode as Perms};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, unlinkat, Gid, Uid, UnlinkatFlags};

use super::creds::AsShiftedRoot;
use super::header::{join, Entry, Kind};
use super::settle::{symlink_path, MAX_SYMLINKS};
use super::{UnpackError, ID_SHIFT};
use crate::digest::Digest;
use crate::rootfs::inroot::InRoot;

mod at;
mod default_acls;
mod entries;
mod flat;
mod layer;
mod xattrs;

pub(super) use at::{children, remove_tree};
use at::{classify, shifted, Existing};
pub(super) use flat::FlatCopy;
pub(super) use layer::LayerDir;
pub(super) use xattrs::{copy_layer_xattrs, drop_acls, get_xattr, set_xattr};

const OPAQUE_XATTR: &CStr = c"trusted.overlay.opaque";
const DEFAULT_ACL_XATTR: &CStr = c"system.posix_acl_default";

/// Why applying an entry failed: reading the layer stream, or anything else.
pub(super) enum Failure {
    Read(io::Error),
    Unpack(UnpackError),
}

impl Failure {
    /// The module error; `read` maps a stream read failure (it knows about the byte budget).
    pub(super) fn into_unpack_error(
        self,
        read: impl FnOnce(io::Error) -> UnpackError,
    ) -> UnpackError {
        match self {
            Failure::Read(e) => read(e),
            Failure::Unpack(e) => e,
        }
    }
}

impl From<UnpackError> for Failure {
    fn from(e: UnpackError) -> Self {
        Failure::Unpack(e)
    }
}

/// Creates the layer's top directory (owned 100000:100000, mode 0755, no ACL).
pub(super) fn create_root(path: &Path) -> io::Result<()> {
    std::fs::create_dir(path)?;
    let dir = File::open(path)?;
    drop_acls(dir.as_fd())?;
    fchown(
        &dir,
        Some(Uid::from_raw(ID_SHIFT)),
        Some(Gid::from_raw(ID_SHIFT)),
    )?;
    fchmod(&dir, Perms::from_bits_truncate(0o755))?;
    Ok(())
}

/// Where the two writers differ: what whiteouts and opaque markers do, what is tracked about
/// the directories a layer changes, and what is left for later. Each hook takes the whole
/// tree, core and mode state.
pub(super) trait Mode: Sized {
    /// Whether the directories a layer changes are tracked by inode ([`Mode::track_dir`]).
    const TRACKS_DIRS: bool;

    /// Notes the directory `st` (components `parts`) that the current layer is about to
    /// change; returns its inode, or 0 when nothing is tracked.
    fn track_dir(tree: &Tree<'_, Self>, st: &FileStat, parts: &[OsString]) -> u64;

    /// The opaque marker `entry` (`.wh..wh..opq`) of the directory `entry.parts`.
    fn opaque(tree: &mut Tree<'_, Self>, entry: &Entry) -> Result<(), UnpackError>;

    /// The whiteout `entry` of `name` under `parent_parts`.
    fn whiteout(
        tree: &mut Tree<'_, Self>,
        parent_parts: &[OsString],
        name: &OsStr,
        entry: &Entry,
    ) -> Result<(), UnpackError>;

    /// The current layer wrote `name` in the directory with inode `dir_ino` (0: untracked).
    fn wrote(tree: &Tree<'_, Self>, dir_ino: u64, name: &OsStr);

    /// A non-directory stands where a parent of an entry must be, at `name` in `dir`
    /// (components `parts`): whether it is a lower layer's, to be replaced by a directory
    /// (else it is this layer's own, and the entry fails).
    fn replaces_lower_file(
        tree: &Tree<'_, Self>,
        dir: BorrowedFd<'_>,
        parts: &[OsString],
        name: &OsStr,
        path: &Path,
    ) -> Result<bool, UnpackError>;

    /// The parent directory `fd` (components `parts`) was created because an entry needed it,
    /// in the directory with inode `dir_ino` ([`Mode::track_dir`]).
    fn created_parent(
        tree: &Tree<'_, Self>,
        dir_ino: u64,
        fd: BorrowedFd<'_>,
        parts: &[OsString],
        path: &Path,
    ) -> Result<(), UnpackError>;

    /// The layer listed the directory `fd` (`entry`), its metadata set; `over_whiteout`: it
    /// replaced a whiteout.
    fn listed_dir(
        tree: &mut Tree<'_, Self>,
        fd: BorrowedFd<'_>,
        entry: &Entry,
        over_whiteout: bool,
    ) -> Result<(), UnpackError>;

    /// The hard link `entry` at `name` in `parent` names `target`, which the tree does not
    /// have; `missing` is the error should the mode have no way to make it later.
    fn link_target_missing(
        tree: &mut Tree<'_, Self>,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        entry: &Entry,
        target: &[OsString],
        missing: UnpackError,
    ) -> Result<(), UnpackError>;

    /// The layer's entries are all written, before directories get their mtimes.
    fn finish_layer(tree: &mut Tree<'_, Self>) -> Result<(), UnpackError>;
}

/// The writer of one layer into its own directory (see module `layer`).
pub(super) type LayerTree<'a> = Tree<'a, LayerDir>;
/// The writer of layer after layer onto one flattened tree (see module `flat`).
pub(super) type FlatTree<'a> = Tree<'a, FlatCopy>;

/// The staging directory being written, by one of the two writers ([`LayerTree`],
/// [`FlatTree`]): the core they share, and the state of the `mode`.
pub(super) struct Tree<'a, M> {
    layer: &'a Digest,
    root: InRoot,
    /// Held while the tree is written (the `Tree` stays on its thread).
    creds: AsShiftedRoot,
    /// Directories whose mtime is set at the end, in stream order (a later record wins).
    dir_times: Vec<(PathBuf, TimeSpec)>,
    /// The last entry's parent, reused by the next entry in the same directory.
    parent: Option<Parent>,
    /// Set by every removal; a removal drops the cached parent.
    removed: Cell<bool>,
    /// Default ACLs of listed directories, by inode, with the path the layer listed them at:
    /// set only once nothing more is created in the tree (see [`Tree::set_default_acls`]).
    default_acls: RefCell<HashMap<u64, (PathBuf, Vec<u8>)>>,
    mode: M,
}

/// A directory entries are written in.
struct Parent {
    /// Its components from the root.
    parts: Vec<OsString>,
    fd: OwnedFd,
    /// Its inode (when the mode tracks directories, else 0).
    ino: u64,
    /// Whether what is created in it is born `100000:100000`: the thread creates as the
    /// shifted root and the directory is not setgid (whose group new inodes would take).
    born_root: bool,
}

impl<'a, M: Mode> Tree<'a, M> {
    /// The writer of the staging directory `root`, starting with `layer`.
    pub(super) fn open(layer: &'a Digest, root: &Path, mode: M) -> io::Result<Self> {
        Ok(Tree {
            layer,
            root: InRoot::open(root)?,
            creds: AsShiftedRoot::enter(),
            dir_times: Vec::new(),
            parent: None,
            removed: Cell::new(false),
            default_acls: RefCell::new(HashMap::new()),
            mode,
        })
    }

    /// The inode of the directory `fd` (components `parts`) that the current layer is about
    /// to change, when the mode tracks directories (0 otherwise). See [`Mode::track_dir`].
    fn dir_ino(
        &self,
        fd: BorrowedFd<'_>,
        parts: &[OsString],
        path: &Path,
    ) -> Result<u64, UnpackError> {
        if !M::TRACKS_DIRS {
            return Ok(0);
        }
        let st = self.stat_dir(fd, path)?;
        Ok(M::track_dir(self, &st, parts))
    }

    pub(super) fn stat_dir(
        &self,
        fd: BorrowedFd<'_>,
        path: &Path,
    ) -> Result<FileStat, UnpackError> {
        fstat(fd)
            .map_err(io::Error::from)
            .map_err(self.err("inspecting parent of", path))
    }

    pub(super) fn err(
        &self,
        action: &'static str,
        path: &Path,
    ) -> impl FnOnce(io::Error) -> UnpackError + '_ {
        let path = path.to_owned();
        move |source| UnpackError::Entry {
            layer: self.layer.clone(),
            path,
            action,
            source,
        }
    }

    /// Writes one entry; `data` is the entry's contents (a file's).
    pub(super) fn apply(
        &mut self,
        entry: &Entry,
        data: &mut impl BufRead,
        warnings: &mut Vec<String>,
    ) -> Result<(), Failure> {
        let Some((name, parent_parts)) = entry.parts.split_last() else {
            // The root: its ownership and mode are fixed; an opaque marker there applies.
            if entry.kind == Kind::Opaque {
                M::opaque(self, entry)?;
            }
            return Ok(());
        };
        match &entry.kind {
            Kind::Skip | Kind::Device => Ok(()),
            Kind::Opaque => Ok(M::opaque(self, entry)?),
            Kind::Whiteout => Ok(M::whiteout(self, parent_parts, name, entry)?),
            kind => {
                // Consecutive entries mostly share a parent: reuse its descriptor while nothing
                // was removed (only a removal can change what a resolved path names).
                let cached = self
                    .parent
                    .take()
                    .filter(|cached| cached.parts.as_slice() == parent_parts);
                let dir = match cached {
                    Some(cached) => cached,
                    None => self.open_parent(parent_parts, &entry.path)?,
                };
                let (parent, born_root) = (dir.fd.as_fd(), dir.born_root);
                let result = match kind {
                    Kind::File => self.file(parent, name, entry, data, born_root),
                    Kind::Dir => Ok(self.dir(parent, name, entry, born_root)?),
                    Kind::Symlink(target) => {
                        Ok(self.symlink(parent, name, target, entry, warnings, born_root)?)
                    }
                    Kind::Hardlink(target) => Ok(self.hardlink(parent, name, target, entry)?),
                    Kind::Fifo => Ok(self.fifo(parent, name, entry)?),
                    Kind::Skip | Kind::Device | Kind::Opaque | Kind::Whiteout => Ok(()),
                };
                if result.is_ok() {
                    M::wrote(self, dir.ino, name);
                }
                if !self.removed.replace(false) {
                    self.parent = Some(dir);
                }
                result
            }
        }
    }

    /// Finishes the layer ([`Mode::finish_layer`]), then sets the directories' mtimes, after
    /// all their contents were written.
    pub(super) fn finish(&mut self) -> Result<(), UnpackError> {
        M::finish_layer(self)?;
        for (path, mtime) in std::mem::take(&mut self.dir_times) {
            let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW;
            match self.root.open_at(&path, flags) {
                Ok(fd) => futimens(&fd, &mtime, &mtime)
                    .map_err(io::Error::from)
                    .map_err(self.err("setting mtime of", &path))?,
                // Replaced later in the stream by something that is not a directory.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP)
                    ) => {}
                Err(e) => return Err(self.err("opening", &path)(e)),
            }
        }
        Ok(())
    }

    /// The directory `parts` (created if missing, see [`Tree::ensure_dir`]) as a parent.
    fn open_parent(&self, parts: &[OsString], path: &Path) -> Result<Parent, UnpackError> {
        let fd = self.ensure_dir(parts, path)?;
        // One fstat for both: the inode flatten mode tracks, the setgid bit.
        let st = match M::TRACKS_DIRS || self.creds.active() {
            true => Some(self.stat_dir(fd.as_fd(), path)?),
            false => None,
        };
        let ino = match (M::TRACKS_DIRS, &st) {
            (true, Some(st)) => M::track_dir(self, st, parts),
            _ => 0,
        };
        let born_root = self.creds.active() && st.is_some_and(|st| st.st_mode & libc::S_ISGID == 0);
        Ok(Parent {
            parts: parts.to_vec(),
            fd,
            ino,
            born_root,
        })
    }

    /// Opens the directory `parts` (in-root), creating missing components (0755, 100000:100000).
    /// A symlink on the way (this layer's, or in flatten mode a lower layer's) is followed
    /// in-root (`..` stops at the root), and what is missing below its target is created
    /// there, as containerd resolves a parent.
    pub(super) fn ensure_dir(
        &self,
        parts: &[OsString],
        path: &Path,
    ) -> Result<OwnedFd, UnpackError> {
        let rel = join(parts);
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY;
        match self.root.open_at(&rel, flags) {
            Ok(fd) => return Ok(fd),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {}
            Err(e) => return Err(self.err("opening parent of", path)(e)),
        }
        // Slow path: one component at a time from the top, symlinks followed by hand.
        let open_root = || {
            self.root
                .open_at(Path::new("."), flags)
                .map_err(self.err("opening root for", path))
        };
        let mut dir = open_root()?;
        let mut todo: VecDeque<OsString> = parts.iter().cloned().collect();
        let mut cur: Vec<OsString> = Vec::new();
        let mut links = 0;
        while let Some(part) = todo.pop_front() {
            match classify(dir.as_fd(), &part).map_err(self.err("inspecting parent of", path))? {
                Existing::Nothing => {}
                Existing::Dir => {
                    dir = self.open_child_dir(dir.as_fd(), &part, path)?;
                    cur.push(part);
                    continue;
                }
                Existing::Symlink => {
                    links += 1;
                    let target = readlinkat(dir.as_fd(), part.as_os_str())
                        .map_err(io::Error::from)
                        .map_err(self.err("reading symlink in parent of", path))?;
                    if links > MAX_SYMLINKS {
                        return Err(self.err("resolving parent of", path)(Errno::ELOOP.into()));
                    }
                    let mut resolved: VecDeque<OsString> = symlink_path(&cur, &target).into();
                    resolved.extend(todo.drain(..));
                    todo = resolved;
                    cur.clear();
                    dir = open_root()?;
                    continue;
                }
                // A lower layer's file (flatten mode): replaced by a directory, as containerd
                // applies a layer (see `settle` for the overlay mode).
                Existing::Whiteout | Existing::Other
                    if M::replaces_lower_file(self, dir.as_fd(), &cur, &part, path)? =>
                {
                    self.removed.set(true);
                    unlinkat(dir.as_fd(), part.as_os_str(), UnlinkatFlags::NoRemoveDir)
                        .map_err(io::Error::from)
                        .map_err(self.err("replacing a lower file in parent of", path))?;
                }
                // This layer's own file (a layer's device nodes and whiteouts are never
                // created here).
                Existing::Whiteout | Existing::Other => {
                    cur.push(part);
                    return Err(UnpackError::ParentNotDir {
                        layer: self.layer.clone(),
                        path: path.to_owned(),
                        parent: join(&cur),
                    });
                }
            }
            let dir_ino = self.dir_ino(dir.as_fd(), &cur, path)?;
            mkdirat(
                dir.as_fd(),
                part.as_os_str(),
                Perms::from_bits_truncate(0o700),
            )
            .map_err(io::Error::from)
            .map_err(self.err("creating parent of", path))?;
            let fd = self.open_child_dir(dir.as_fd(), &part, path)?;
            cur.push(part);
            M::created_parent(self, dir_ino, fd.as_fd(), &cur, path)?;
            self.forget_default_acl(fd.as_fd(), path)?;
            let (uid, gid) = shifted(0, 0);
            fchown(&fd, uid, gid)
                .and_then(|()| fchmod(&fd, Perms::from_bits_truncate(0o755)))
                .map_err(io::Error::from)
                .map_err(self.err("setting up parent of", path))?;
            dir = fd;
        }
        Ok(dir)
    }

    pub(super) fn open_child_dir(
        &self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        path: &Path,
    ) -> Result<OwnedFd, UnpackError> {
        openat(
            parent,
            name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Perms::empty(),
        )
        .map_err(io::Error::from)
        .map_err(self.err("opening", path))
    }

    /// Makes room for a non-directory at `name`: removes whatever this layer put there.
    pub(super) fn clear(
        &self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        path: &Path,
    ) -> Result<(), UnpackError> {
        let existing = classify(parent, name).map_err(self.err("inspecting", path))?;
        if !matches!(existing, Existing::Nothing) {
            self.removed.set(true);
        }
        let result = match existing {
            Existing::Nothing => Ok(()),
            Existing::Dir => remove_tree(parent, name),
            Existing::Whiteout | Existing::Symlink | Existing::Other => {
                unlinkat(parent, name, UnlinkatFlags::NoRemoveDir).map_err(io::Error::from)
            }
        };
        result.map_err(self.err("replacing", path))
    }

    /// Runs `create` (an `O_EXCL`-style creation at `name`); if the name exists, clears it and
    /// runs it once more.
    pub(super) fn create_replacing<T>(
        &self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        path: &Path,
        action: &'static str,
        mut create: impl FnMut() -> nix::Result<T>,
    ) -> Result<T, UnpackError> {
        match create() {
            Ok(t) => Ok(t),
            Err(Errno::EEXIST) => {
                self.clear(parent, name, path)?;
                create()
                    .map_err(io::Error::from)
                    .map_err(self.err(action, path))
            }
            Err(e) => Err(self.err(action, path)(e.into())),
        }
    }
}
