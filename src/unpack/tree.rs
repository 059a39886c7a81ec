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
//! containerd does. What needs the lower layers is recorded for `settle` instead
//! ([`Tree::into_pending`]): whiteouts (`.wh.<name>`; settled into a 0:0 character device
//! owned 100000:100000 where the layers below have `<name>`, or an opaque directory where this
//! layer has one), the directories created because an entry needed them, and hard links to
//! what this layer does not have. `.wh..wh..opq` sets `trusted.overlay.opaque=y` on its
//! directory, created if missing, whatever the order.
//!
//! In [`Whiteouts::Flatten`] mode the same writer applies layer after layer onto one merged
//! tree and whiteouts act on it instead (see [`merge`]): nothing overlay-specific is created,
//! and a lower directory the layer changes without listing it keeps its mtime.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::{CStr, OsStr, OsString};
use std::fs::File;
use std::io::{self, BufRead, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::AtFlags;
use nix::fcntl::{openat, readlinkat, OFlag};
use nix::sys::stat::{
    fchmod, fstat, fstatat, futimens, mkdirat, mknodat, utimensat, FileStat, Mode, SFlag,
    UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};

use super::acl;
use super::creds::{exact_at_creation, AsShiftedRoot};
use super::header::{join, Entry, Kind};
use super::settle::{symlink_path, Link, Pending, MAX_SYMLINKS};
use super::{UnpackError, ID_SHIFT};
use crate::digest::Digest;
use crate::rootfs::inroot::InRoot;

mod merge;
mod xattrs;

use xattrs::drop_layer_xattrs;
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
    fchmod(&dir, Mode::from_bits_truncate(0o755))?;
    Ok(())
}

/// How whiteouts are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Whiteouts {
    /// One layer per directory: overlayfs whiteout devices and opaque xattrs.
    Overlay,
    /// Layers applied in order onto one tree: whiteouts remove what lower layers wrote.
    Flatten,
}

/// A directory entry by its directory's inode and its name: names the same entry whatever
/// symlinks the layer's path for it went through (directories have no hard links).
type EntryKey = (u64, OsString);

/// The staging directory being written.
pub(super) struct Tree<'a> {
    layer: &'a Digest,
    root: InRoot,
    /// Held while the tree is written (the `Tree` stays on its thread).
    creds: AsShiftedRoot,
    whiteouts: Whiteouts,
    /// Flatten mode: the entries the current layer created or wrote (parents it created too).
    written: RefCell<HashSet<EntryKey>>,
    /// Directories whose mtime is set at the end, in stream order (a later record wins).
    dir_times: Vec<(PathBuf, TimeSpec)>,
    /// Flatten mode: directories the current layer changes, by inode, with the path it reached
    /// them by and their mtime before the change (restored in [`Tree::finish`] unless the
    /// layer lists them).
    touched_dirs: RefCell<HashMap<u64, (PathBuf, TimeSpec)>>,
    /// The last entry's parent, reused by the next entry in the same directory.
    parent: Option<Parent>,
    /// Set by every removal; a removal drops the cached parent.
    removed: Cell<bool>,
    /// Overlay mode: directories created because an entry needed them, that the layer has
    /// not listed (yet).
    /// By inode, with the path the directory was created at.
    implicit: RefCell<HashMap<u64, Vec<OsString>>>,
    /// Overlay mode: whiteouts and hard links left to settle (see [`Tree::into_pending`]).
    pending: Pending,
    /// Default ACLs of listed directories, by inode, with the path the layer listed them at:
    /// set only once nothing more is created in the tree (see [`Tree::set_default_acls`]).
    default_acls: RefCell<HashMap<u64, (PathBuf, Vec<u8>)>>,
}

/// A directory entries are written in.
struct Parent {
    /// Its components from the root.
    parts: Vec<OsString>,
    fd: OwnedFd,
    /// Its inode (flatten mode only, else 0).
    ino: u64,
    /// Whether what is created in it is born `100000:100000`: the thread creates as the
    /// shifted root and the directory is not setgid (whose group new inodes would take).
    born_root: bool,
}

/// What an inode got right when it was created.
#[derive(Debug, Clone, Copy)]
struct Born {
    /// Owned by the entry's owner, shifted.
    owner: bool,
    /// Has the entry's mode.
    mode: bool,
}

impl Born {
    const NOTHING: Born = Born {
        owner: false,
        mode: false,
    };
}

/// What is at a name before an entry is written there.
enum Existing {
    Nothing,
    Dir,
    Whiteout,
    Symlink,
    Other,
}

fn classify(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Existing> {
    match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(
            match SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) {
                SFlag::S_IFDIR => Existing::Dir,
                // The layer's own device nodes are never created: a character device is a whiteout.
                SFlag::S_IFCHR => Existing::Whiteout,
                SFlag::S_IFLNK => Existing::Symlink,
                _ => Existing::Other,
            },
        ),
        Err(Errno::ENOENT) => Ok(Existing::Nothing),
        Err(e) => Err(e.into()),
    }
}

fn shifted(uid: u32, gid: u32) -> (Option<Uid>, Option<Gid>) {
    (
        Some(Uid::from_raw(uid + ID_SHIFT)),
        Some(Gid::from_raw(gid + ID_SHIFT)),
    )
}

/// Opens the directory `name` under `parent` for reading, never following a symlink.
fn open_dir_nofollow(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    Ok(openat(
        parent,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?)
}

/// The entries of the directory `fd` (opened for reading): name and whether it is a directory.
pub(super) fn children(fd: BorrowedFd<'_>) -> io::Result<Vec<(OsString, bool)>> {
    let mut children = Vec::new();
    let mut dir = nix::dir::Dir::from_fd(fd.try_clone_to_owned()?)?;
    for item in dir.iter() {
        let item = item?;
        let child = OsStr::from_bytes(item.file_name().to_bytes());
        if child == "." || child == ".." {
            continue;
        }
        let is_dir = match item.file_type() {
            Some(t) => t == nix::dir::Type::Directory,
            None => matches!(classify(fd, child)?, Existing::Dir),
        };
        children.push((child.to_owned(), is_dir));
    }
    Ok(children)
}

/// Removes the directory `name` under `parent` and everything in it, never following a symlink.
pub(super) fn remove_tree(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let fd = open_dir_nofollow(parent, name)?;
    for (child, is_dir) in children(fd.as_fd())? {
        if is_dir {
            remove_tree(fd.as_fd(), &child)?;
        } else {
            unlinkat(fd.as_fd(), child.as_os_str(), UnlinkatFlags::NoRemoveDir)?;
        }
    }
    unlinkat(parent, name, UnlinkatFlags::RemoveDir)?;
    Ok(())
}

impl<'a> Tree<'a> {
    pub(super) fn open(layer: &'a Digest, root: &Path, whiteouts: Whiteouts) -> io::Result<Self> {
        Ok(Tree {
            layer,
            root: InRoot::open(root)?,
            creds: AsShiftedRoot::enter(),
            whiteouts,
            written: RefCell::new(HashSet::new()),
            dir_times: Vec::new(),
            touched_dirs: RefCell::new(HashMap::new()),
            parent: None,
            removed: Cell::new(false),
            implicit: RefCell::new(HashMap::new()),
            pending: Pending::default(),
            default_acls: RefCell::new(HashMap::new()),
        })
    }

    /// Starts the next layer (flatten mode): it names errors, and what it writes is tracked
    /// afresh (an opaque marker or whiteout only removes what lower layers wrote).
    pub(super) fn begin_layer(&mut self, layer: &'a Digest) {
        self.layer = layer;
        self.written.get_mut().clear();
        self.parent = None;
    }

    fn flatten(&self) -> bool {
        self.whiteouts == Whiteouts::Flatten
    }

    /// The inode of the directory `fd` (components `parts`) that the current layer is about
    /// to change, in flatten mode (0 otherwise: nothing is tracked). Notes its mtime the first
    /// time the layer comes to it: see `merge::restore_touched_dirs`.
    fn dir_ino(
        &self,
        fd: BorrowedFd<'_>,
        parts: &[OsString],
        path: &Path,
    ) -> Result<u64, UnpackError> {
        if !self.flatten() {
            return Ok(0);
        }
        let st = self.stat_dir(fd, path)?;
        Ok(self.track_dir(&st, parts))
    }

    /// [`Tree::dir_ino`] of a directory already stat'ed.
    fn track_dir(&self, st: &FileStat, parts: &[OsString]) -> u64 {
        if !self.flatten() {
            return 0;
        }
        self.touched_dirs
            .borrow_mut()
            .entry(st.st_ino)
            .or_insert_with(|| (join(parts), TimeSpec::new(st.st_mtime, st.st_mtime_nsec)));
        st.st_ino
    }

    fn stat_dir(&self, fd: BorrowedFd<'_>, path: &Path) -> Result<FileStat, UnpackError> {
        fstat(fd)
            .map_err(io::Error::from)
            .map_err(self.err("inspecting parent of", path))
    }

    fn err(&self, action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> UnpackError + '_ {
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
            if entry.kind == Kind::Opaque && self.flatten() {
                self.parent = None;
                return Ok(self.flatten_opaque(entry)?);
            }
            if entry.kind == Kind::Opaque {
                let fd = self
                    .root
                    .open_at(Path::new("."), OFlag::O_RDONLY | OFlag::O_DIRECTORY);
                let fd = fd.map_err(self.err("opening", &entry.path))?;
                set_xattr(fd.as_fd(), OPAQUE_XATTR, b"y")
                    .map_err(self.err("marking opaque", &entry.path))?;
            }
            return Ok(());
        };
        match &entry.kind {
            Kind::Skip | Kind::Device => Ok(()),
            Kind::Opaque if self.flatten() => {
                self.parent = None;
                Ok(self.flatten_opaque(entry)?)
            }
            Kind::Whiteout if self.flatten() => {
                self.parent = None;
                Ok(self.flatten_whiteout(parent_parts, name, entry)?)
            }
            Kind::Whiteout => {
                // Settled once the lower layers are in: it is written only where they have
                // something, or makes this layer's own directory there opaque.
                self.pending.whiteouts.push(entry.parts.clone());
                Ok(())
            }
            Kind::Opaque => {
                self.parent = None;
                let dir = self.ensure_dir(&entry.parts, &entry.path)?;
                set_xattr(dir.as_fd(), OPAQUE_XATTR, b"y")
                    .map_err(self.err("marking opaque", &entry.path))?;
                Ok(())
            }
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
                if self.flatten() && result.is_ok() {
                    self.record_written(dir.ino, name);
                }
                if !self.removed.replace(false) {
                    self.parent = Some(dir);
                }
                result
            }
        }
    }

    /// Overlay mode: what needs the lower layers' view (module `settle`): the directories the
    /// layer needed (for an entry below them or an opaque marker) but does not list, which
    /// exist in the staging directory as 0755 root; its whiteouts; its hard links to what it
    /// does not have.
    pub(super) fn into_pending(self) -> Pending {
        let mut pending = self.pending;
        pending.implicit = self
            .implicit
            .into_inner()
            .into_iter()
            .map(|(ino, path)| (path, ino))
            .collect();
        pending
    }

    /// Sets the directories' mtimes, after all their contents were written (in flatten mode,
    /// first giving back their mtime to the lower directories the layer changed), and in
    /// overlay mode their default ACLs (flatten mode: [`Tree::set_default_acls`] once all
    /// layers are written).
    pub(super) fn finish(&mut self) -> Result<(), UnpackError> {
        if self.flatten() {
            self.restore_touched_dirs()?;
        } else {
            self.set_default_acls()?;
        }
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

    /// Sets the default ACLs of the directories listed with one, once no more inodes are
    /// created in the tree: an inode created in a directory with a default ACL would inherit it
    /// (and get its mode masked by it instead of the umask), where it must get exactly the ACLs
    /// and mode its own entry lists. A directory is found again by the path it was listed at
    /// and must still be the inode listed there (one removed since, or replaced, is skipped).
    pub(super) fn set_default_acls(&mut self) -> Result<(), UnpackError> {
        for (ino, (path, value)) in std::mem::take(self.default_acls.get_mut()) {
            let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW;
            let Some(fd) = self.reopen_dir(&path, ino, flags)? else {
                continue;
            };
            set_xattr(fd.as_fd(), DEFAULT_ACL_XATTR, &value)
                .map_err(self.err("setting the default ACL of", &path))?;
        }
        Ok(())
    }

    /// The directory noted at `path` with inode number `ino`, opened again with `flags`; None
    /// when it is gone or is no longer that directory (removed, replaced, reached otherwise).
    pub(super) fn reopen_dir(
        &self,
        path: &Path,
        ino: u64,
        flags: OFlag,
    ) -> Result<Option<OwnedFd>, UnpackError> {
        let fd = match self.root.open_at(path, flags) {
            Ok(fd) => fd,
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP)
                ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(self.err("opening", path)(e)),
        };
        let st = fstat(fd.as_fd())
            .map_err(io::Error::from)
            .map_err(self.err("inspecting", path))?;
        Ok((st.st_ino == ino).then_some(fd))
    }

    /// Notes the default ACL of the directory `fd` listed by `entry` at `path`, or forgets the
    /// one noted for its inode number (a directory listed again without one, or a record of an
    /// earlier inode of that number, gone).
    fn note_default_acl(
        &self,
        fd: BorrowedFd<'_>,
        entry: &Entry,
        path: &Path,
    ) -> Result<(), UnpackError> {
        let value = entry
            .xattrs
            .iter()
            .find(|(name, _)| name.as_bytes() == acl::DEFAULT)
            .map(|(_, value)| value);
        if value.is_none() && self.default_acls.borrow().is_empty() {
            return Ok(());
        }
        let ino = self.stat_dir(fd, &entry.path)?.st_ino;
        let mut acls = self.default_acls.borrow_mut();
        match value {
            Some(value) => acls.insert(ino, (path.to_owned(), value.clone())),
            None => acls.remove(&ino),
        };
        Ok(())
    }

    /// Forgets a default ACL noted for an inode of the number of `fd`, a directory just
    /// created implicitly (the inode noted is gone).
    fn forget_default_acl(&self, fd: BorrowedFd<'_>, path: &Path) -> Result<(), UnpackError> {
        if self.default_acls.borrow().is_empty() {
            return Ok(());
        }
        let ino = self.stat_dir(fd, path)?.st_ino;
        self.default_acls.borrow_mut().remove(&ino);
        Ok(())
    }

    /// The directory `parts` (created if missing, see [`Tree::ensure_dir`]) as a parent.
    fn open_parent(&self, parts: &[OsString], path: &Path) -> Result<Parent, UnpackError> {
        let fd = self.ensure_dir(parts, path)?;
        // One fstat for both: the inode flatten mode tracks, the setgid bit.
        let st = match self.flatten() || self.creds.active() {
            true => Some(self.stat_dir(fd.as_fd(), path)?),
            false => None,
        };
        let ino = st.as_ref().map_or(0, |st| self.track_dir(st, parts));
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
    fn ensure_dir(&self, parts: &[OsString], path: &Path) -> Result<OwnedFd, UnpackError> {
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
                // A lower layer's file in flatten mode: replaced by a directory, as containerd
                // applies a layer (see `settle` for the overlay mode).
                Existing::Whiteout | Existing::Other
                    if self.flatten()
                        && !self.is_written(self.dir_ino(dir.as_fd(), &cur, path)?, &part) =>
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
                Mode::from_bits_truncate(0o700),
            )
            .map_err(io::Error::from)
            .map_err(self.err("creating parent of", path))?;
            let fd = self.open_child_dir(dir.as_fd(), &part, path)?;
            cur.push(part);
            if self.flatten() {
                // Created by this layer: an opaque marker of an ancestor keeps it.
                self.record_written(dir_ino, cur.last().expect("just pushed"));
            } else {
                let ino = self.stat_dir(fd.as_fd(), path)?.st_ino;
                self.implicit.borrow_mut().insert(ino, cur.clone());
            }
            self.forget_default_acl(fd.as_fd(), path)?;
            let (uid, gid) = shifted(0, 0);
            fchown(&fd, uid, gid)
                .and_then(|()| fchmod(&fd, Mode::from_bits_truncate(0o755)))
                .map_err(io::Error::from)
                .map_err(self.err("setting up parent of", path))?;
            dir = fd;
        }
        Ok(dir)
    }

    fn open_child_dir(
        &self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        path: &Path,
    ) -> Result<OwnedFd, UnpackError> {
        openat(
            parent,
            name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(io::Error::from)
        .map_err(self.err("opening", path))
    }

    /// Makes room for a non-directory at `name`: removes whatever this layer put there.
    fn clear(&self, parent: BorrowedFd<'_>, name: &OsStr, path: &Path) -> Result<(), UnpackError> {
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
    fn create_replacing<T>(
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

    /// ownership and mode (unless the inode was born with them), xattrs, then (for
    /// non-directories) times, on an open descriptor.
    fn finish_fd(
        &self,
        fd: BorrowedFd<'_>,
        entry: &Entry,
        born: Born,
        times: bool,
    ) -> Result<(), UnpackError> {
        if !born.owner {
            let (uid, gid) = shifted(entry.uid, entry.gid);
            fchown(fd, uid, gid)
                .map_err(io::Error::from)
                .map_err(self.err("changing owner of", &entry.path))?;
        }
        if !born.mode {
            fchmod(fd, Mode::from_bits_truncate(entry.mode))
                .map_err(io::Error::from)
                .map_err(self.err("changing mode of", &entry.path))?;
        }
        for (name, value) in &entry.xattrs {
            // A directory's default ACL waits for [`Tree::set_default_acls`].
            if name.as_bytes() == acl::DEFAULT {
                continue;
            }
            set_xattr(fd, name, value).map_err(self.err("setting an xattr of", &entry.path))?;
        }
        if times {
            futimens(fd, &entry.mtime, &entry.mtime)
                .map_err(io::Error::from)
                .map_err(self.err("setting mtime of", &entry.path))?;
        }
        Ok(())
    }

    fn file(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        entry: &Entry,
        data: &mut impl BufRead,
        born_root: bool,
    ) -> Result<(), Failure> {
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let born = Born {
            owner: born_root && entry.is_root_owned(),
            mode: exact_at_creation(entry.mode),
        };
        let mode = if born.mode { entry.mode } else { 0o600 };
        let fd = self.create_replacing(parent, name, &entry.path, "creating", || {
            openat(parent, name, flags, Mode::from_bits_truncate(mode))
        })?;
        let mut file = File::from(fd);
        // Straight from the decoded stream's buffer into the file.
        loop {
            let buf = match data.fill_buf() {
                Ok([]) => break,
                Ok(buf) => buf,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Failure::Read(e)),
            };
            let n = buf.len();
            file.write_all(buf)
                .map_err(self.err("writing", &entry.path))?;
            data.consume(n);
        }
        self.finish_fd(file.as_fd(), entry, born, true)?;
        Ok(())
    }

    fn dir(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        entry: &Entry,
        born_root: bool,
    ) -> Result<(), UnpackError> {
        let mode = Mode::from_bits_truncate(0o700);
        // (opaque, merged): over a whiteout / over an existing directory.
        let (opaque, merged) = match mkdirat(parent, name, mode) {
            Ok(()) => (false, false),
            Err(Errno::EEXIST) => {
                match classify(parent, name).map_err(self.err("inspecting", &entry.path))? {
                    Existing::Dir => (false, true),
                    existing => {
                        self.clear(parent, name, &entry.path)?;
                        mkdirat(parent, name, mode)
                            .map_err(io::Error::from)
                            .map_err(self.err("creating directory", &entry.path))?;
                        (matches!(existing, Existing::Whiteout), false)
                    }
                }
            }
            Err(e) => return Err(self.err("creating directory", &entry.path)(e.into())),
        };
        let fd = self.open_child_dir(parent, name, &entry.path)?;
        if merged {
            // The later entry's xattrs replace the earlier ones, as its mode and owner do.
            drop_layer_xattrs(fd.as_fd(), entry)
                .map_err(self.err("removing replaced xattrs of", &entry.path))?;
        }
        // Made 0700 (private until its metadata is set): the mode is always applied.
        let born = Born {
            owner: born_root && !merged && entry.is_root_owned(),
            mode: false,
        };
        self.finish_fd(fd.as_fd(), entry, born, false)?;
        if opaque && !self.flatten() {
            set_xattr(fd.as_fd(), OPAQUE_XATTR, b"y")
                .map_err(self.err("marking opaque", &entry.path))?;
        }
        let path = join(&entry.parts);
        // Also forgets a record of an earlier inode of the same number, if the directory is new.
        self.note_default_acl(fd.as_fd(), entry, &path)?;
        if !self.flatten() && !self.implicit.get_mut().is_empty() {
            // Listed by the layer, wherever the layer's symlinks put it.
            let ino = self.stat_dir(fd.as_fd(), &entry.path)?.st_ino;
            self.implicit.get_mut().remove(&ino);
        }
        self.dir_times.push((path, entry.mtime));
        Ok(())
    }

    fn symlink(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        target: &OsStr,
        entry: &Entry,
        warnings: &mut Vec<String>,
        born_root: bool,
    ) -> Result<(), UnpackError> {
        self.create_replacing(parent, name, &entry.path, "creating symlink", || {
            symlinkat(target, parent, name)
        })?;
        if !(born_root && entry.is_root_owned()) {
            let (uid, gid) = shifted(entry.uid, entry.gid);
            fchownat(parent, name, uid, gid, AtFlags::AT_SYMLINK_NOFOLLOW)
                .map_err(io::Error::from)
                .map_err(self.err("changing owner of", &entry.path))?;
        }
        utimensat(
            parent,
            name,
            &entry.mtime,
            &entry.mtime,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(io::Error::from)
        .map_err(self.err("setting mtime of", &entry.path))?;
        for (xattr, _) in &entry.xattrs {
            warnings.push(format!(
                "{:?}: xattr {} on a symlink not set",
                entry.path,
                xattr.to_string_lossy()
            ));
        }
        Ok(())
    }

    fn hardlink(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        target: &[OsString],
        entry: &Entry,
    ) -> Result<(), UnpackError> {
        let target_path = join(target);
        let missing = "does not exist in the tree";
        let refuse = |reason| UnpackError::HardlinkTarget {
            layer: self.layer.clone(),
            path: entry.path.clone(),
            target: target_path.clone(),
            reason,
        };
        let Some((target_name, target_parent)) = target.split_last() else {
            return Err(refuse("is the layer root"));
        };
        if target == entry.parts.as_slice() {
            // A link to itself (GNU tar writes these): nothing to do.
            return Ok(());
        }
        let flags = OFlag::O_PATH | OFlag::O_DIRECTORY;
        let found = self
            .root
            .open_at(&join(target_parent), flags)
            .ok()
            .and_then(|dir| {
                let nofollow = AtFlags::AT_SYMLINK_NOFOLLOW;
                let st = fstatat(dir.as_fd(), target_name.as_os_str(), nofollow).ok()?;
                Some((dir, st))
            });
        let (target_dir, st) = match found {
            Some(found) => found,
            // A lower layer's, perhaps: settled once they are in (copied up, then linked).
            None if !self.flatten() => {
                self.clear(parent, name, &entry.path)?;
                self.pending.links.push(Link {
                    path: entry.path.clone(),
                    parts: entry.parts.clone(),
                    target: target.to_vec(),
                });
                return Ok(());
            }
            None => return Err(refuse(missing)),
        };
        match SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) {
            // linkat without AT_SYMLINK_FOLLOW links a symlink itself, never what it points to.
            SFlag::S_IFREG | SFlag::S_IFLNK | SFlag::S_IFIFO => {}
            _ => return Err(refuse("is not a regular file, symlink or FIFO")),
        }
        self.create_replacing(parent, name, &entry.path, "creating hard link", || {
            linkat(
                target_dir.as_fd(),
                target_name.as_os_str(),
                parent,
                name,
                AtFlags::empty(),
            )
        })
    }

    fn fifo(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        entry: &Entry,
    ) -> Result<(), UnpackError> {
        self.create_replacing(parent, name, &entry.path, "creating FIFO", || {
            mknodat(
                parent,
                name,
                SFlag::S_IFIFO,
                Mode::from_bits_truncate(0o600),
                0,
            )
        })?;
        // O_NONBLOCK: opening a FIFO for reading must not wait for a writer.
        let flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = openat(parent, name, flags, Mode::empty())
            .map_err(io::Error::from)
            .map_err(self.err("opening", &entry.path))?;
        self.finish_fd(fd.as_fd(), entry, Born::NOTHING, true)
    }
}
