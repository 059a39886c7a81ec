//! Settling a staged layer against its lower layers, before it is published.
//!
//! Owns: the few changes to a layer's staging directory that need the merged view of the
//! layers below it (module `lower`). A layer is unpacked without that view (in parallel with
//! its lower layers, while it downloads); the entries that need it are recorded ([`Pending`])
//! and settled here once the lower layers are published, as containerd applies a layer onto the
//! view of its parents:
//! - a whiteout is written only where the lower view has something (a whiteout of a name this
//!   layer has itself makes a directory of it opaque, and is otherwise a no-op; one under a
//!   missing path or under a non-directory changes nothing);
//! - a directory the layer needed but does not list ("implicit") takes owner, mode, mtime and
//!   xattrs from the lower view's directory there; where the lower view has a symlink there,
//!   what the layer wrote below it moves below the symlink's target (resolved in-root through
//!   this layer and the lower view) and the symlink shows through; where the lower view has
//!   nothing, or a non-directory (which the directory then replaces, as containerd does), it
//!   stays 0755 root. Below a lower layer's symlink this is umoci's result and containerd's
//!   wherever it applies a layer onto the merged view of its parents: the native snapshotter,
//!   and the overlayfs one inside a user namespace (`core/diff/apply/apply_linux.go`: `apply`
//!   mounts the snapshot and `archive.Apply`s onto it, whose `fs.RootPath` follows the lower
//!   symlink). containerd's overlayfs snapshotter outside a user namespace applies onto the
//!   upper directory alone, so `mkparent` (`pkg/archive/tar.go`) makes a 0755 directory at
//!   the symlink's name that hides it. containerd thus disagrees with itself here; envbox
//!   keeps the merged-view result, which is also what its flattened copy (`flatten`, applied
//!   onto one tree) gives, so both views of an image agree;
//! - a hard link to a file only the lower view has copies that file up (content, owner, mode,
//!   xattrs, mtime) into this layer at its path, and links to the copy.
//!
//! Every path is resolved in-root, one component at a time, following symlinks of this layer
//! and of the lower view by hand (`..` stops at the root; at most [`MAX_SYMLINKS`]); every
//! change is made with `*at` calls relative to a directory of the staging directory opened
//! without following symlinks. A directory this step changes keeps the mtime it had (or
//! gets the lower view's, for an implicit one). It never changes a lower layer.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, readlinkat, renameat, AtFlags, OFlag};
use nix::sys::stat::{
    fchmod, fstat, fstatat, futimens, mkdirat, mknodat, utimensat, Mode, SFlag, UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};

use super::header::{join, normalise};
use super::lower::{is_opaque, Found, LowerView};
use super::tree::{copy_layer_xattrs, drop_acls, remove_tree, set_xattr};
use super::{UnpackError, ID_SHIFT};
use crate::digest::Digest;

/// Symlinks followed resolving one path, as the kernel's limit.
pub(super) const MAX_SYMLINKS: usize = 40;

const OPAQUE_XATTR: &std::ffi::CStr = c"trusted.overlay.opaque";

/// A hard link whose target this layer did not have when the link was read.
#[derive(Debug, Clone)]
pub(super) struct Link {
    /// The entry's name in the stream (for errors).
    pub path: PathBuf,
    pub parts: Vec<OsString>,
    pub target: Vec<OsString>,
}

/// What a staged layer leaves to be settled against its lower layers.
#[derive(Debug, Default)]
pub(super) struct Pending {
    /// Directories created because an entry needed them and not listed by the layer, by their
    /// path in the staging directory.
    pub implicit: BTreeMap<Vec<OsString>, u64>,
    /// Whiteouts, by the path they hide (as the layer names it), in stream order.
    pub whiteouts: Vec<Vec<OsString>>,
    /// Hard links to what the layer does not have, in stream order.
    pub links: Vec<Link>,
}

impl Pending {
    pub(super) fn is_empty(&self) -> bool {
        self.implicit.is_empty() && self.whiteouts.is_empty() && self.links.is_empty()
    }
}

/// Settles `pending` in the staging directory `staging` of layer `layer` (its compressed
/// digest, for errors) against the published layer directories `lowers` (bottom first).
pub(super) fn settle(
    layer: &Digest,
    staging: &Path,
    lowers: &[PathBuf],
    pending: Pending,
) -> Result<(), UnpackError> {
    if pending.is_empty() {
        return Ok(());
    }
    let store = |action| {
        move |source| UnpackError::Store {
            action,
            path: staging.to_owned(),
            source,
        }
    };
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let root = nix::fcntl::open(staging, flags, Mode::empty())
        .map_err(io::Error::from)
        .map_err(store("opening staging directory"))?;
    let lower = LowerView::open(lowers).map_err(store("opening the lower layers of"))?;
    let mut settler = Settler {
        layer,
        root,
        lower,
        implicit: pending.implicit,
        times: HashMap::new(),
        deleted: HashSet::new(),
        linked_before_rewrite: HashMap::new(),
        made_by_links: HashSet::new(),
    };
    let whiteouts = settler.own_whiteouts(pending.whiteouts)?;
    while let Some((dir, ino)) = settler.implicit.pop_first() {
        settler.implicit_dir(dir, ino)?;
    }
    for hidden in whiteouts {
        settler.whiteout(&hidden)?;
    }
    for link in &pending.links {
        settler.link(link)?;
    }
    settler.restore_times()
}

/// What a path names where this layer and its lower view meet.
enum Seen {
    Dir,
    Symlink(OsString),
    /// A non-directory of this layer's own.
    Here,
    /// A non-directory of the lower view.
    Below,
    Missing,
}

struct Settler<'a> {
    layer: &'a Digest,
    root: OwnedFd,
    lower: LowerView,
    /// Implicit directories not settled yet, with their inode.
    implicit: BTreeMap<Vec<OsString>, u64>,
    /// Directories changed, by inode: their path and the mtime they get in the end.
    times: HashMap<u64, (Vec<OsString>, TimeSpec)>,
    /// This layer's directories that it also whites out: new, nothing of the lower ones.
    deleted: HashSet<Vec<OsString>>,
    /// Lower files this layer wrote again after linking to them: where the first link's copy
    /// of the lower file is, by the target's path.
    linked_before_rewrite: HashMap<Vec<OsString>, Vec<OsString>>,
    /// What settling the links made (links, and lower files copied up for them), as opposed
    /// to what the layer's stream wrote.
    made_by_links: HashSet<Vec<OsString>>,
}

fn is_gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP)
    )
}

fn kind_of(mode: u32) -> SFlag {
    SFlag::from_bits_truncate(mode & SFlag::S_IFMT.bits())
}

impl Settler<'_> {
    fn err<'p>(
        &self,
        action: &'static str,
        path: &'p [OsString],
    ) -> impl FnOnce(io::Error) -> UnpackError + 'p {
        let layer = self.layer.clone();
        move |source| UnpackError::Entry {
            layer,
            path: join(path),
            action,
            source,
        }
    }

    /// The directory at `parts` of the staging directory, no symlink followed.
    fn open_dir(&self, parts: &[OsString]) -> io::Result<OwnedFd> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let mut fd = self.root.try_clone()?;
        for part in parts {
            fd = openat(fd.as_fd(), part.as_os_str(), flags, Mode::empty())?;
        }
        Ok(fd)
    }

    /// What this layer has at `parts`: its parent (opened) and its stat.
    fn here(&self, parts: &[OsString]) -> io::Result<Option<(OwnedFd, nix::sys::stat::FileStat)>> {
        let Some((name, parent)) = parts.split_last() else {
            return Ok(None);
        };
        let parent = match self.open_dir(parent) {
            Ok(fd) => fd,
            Err(e) if is_gone(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        match fstatat(
            parent.as_fd(),
            name.as_os_str(),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(st) => Ok(Some((parent, st))),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether this layer hides the lower view at `parts`: it deleted what is there (a
    /// whiteout of its own directory there), or an ancestor is an opaque directory of this
    /// layer. (An opaque directory itself is the lower one, its lower entries hidden.)
    fn hidden(&self, parts: &[OsString]) -> io::Result<bool> {
        if self.deleted.contains(parts) {
            return Ok(true);
        }
        let Some((_, ancestors)) = parts.split_last() else {
            return Ok(false);
        };
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let mut fd = self.root.try_clone()?;
        for part in ancestors {
            fd = match openat(fd.as_fd(), part.as_os_str(), flags, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => return Ok(false),
                Err(e) => return Err(e.into()),
            };
            if is_opaque(fd.as_fd())? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// What the lower view shows at `parts`, unless this layer hides it.
    fn below(&self, parts: &[OsString]) -> io::Result<Option<Found>> {
        if self.hidden(parts)? {
            return Ok(None);
        }
        self.lower.lookup(parts)
    }

    /// What `parts` names in this layer over its lower view.
    fn seen(&self, parts: &[OsString]) -> io::Result<Seen> {
        let implicit = match self.here(parts)? {
            Some((parent, st)) => match kind_of(st.st_mode) {
                SFlag::S_IFDIR if !self.implicit.contains_key(parts) => return Ok(Seen::Dir),
                SFlag::S_IFDIR => true,
                SFlag::S_IFLNK => {
                    let name = parts.last().expect("a path with a parent");
                    return Ok(Seen::Symlink(readlinkat(parent.as_fd(), name.as_os_str())?));
                }
                // A whiteout written by this step.
                SFlag::S_IFCHR if st.st_rdev == 0 => return Ok(Seen::Missing),
                _ => return Ok(Seen::Here),
            },
            None => false,
        };
        // Nothing here, or a directory this layer does not list: the lower view decides.
        Ok(match self.below(parts)? {
            Some(found) => match found.kind() {
                SFlag::S_IFDIR => Seen::Dir,
                SFlag::S_IFLNK => Seen::Symlink(found.link_target()?),
                _ if implicit => Seen::Dir,
                _ => Seen::Below,
            },
            None if implicit => Seen::Dir,
            None => Seen::Missing,
        })
    }

    /// The directory that `parts` names in this layer over its lower view, as a path of the
    /// staging directory: symlinks followed in-root. With `create`, what is missing in the
    /// staging directory is created (see [`Settler::make_dir`]) and a lower non-directory on
    /// the way is replaced by a directory; without, `None` when it is not a directory.
    fn resolve(
        &mut self,
        parts: &[OsString],
        create: bool,
    ) -> Result<Option<Vec<OsString>>, UnpackError> {
        let mut todo: VecDeque<OsString> = parts.iter().cloned().collect();
        let mut cur: Vec<OsString> = Vec::new();
        let mut links = 0;
        while let Some(part) = todo.pop_front() {
            let mut next = cur.clone();
            next.push(part);
            match self.seen(&next).map_err(self.err("resolving", parts))? {
                Seen::Dir => {}
                Seen::Symlink(target) => {
                    links += 1;
                    if links > MAX_SYMLINKS {
                        return Err(self.err("resolving", parts)(Errno::ELOOP.into()));
                    }
                    let mut resolved: VecDeque<OsString> = symlink_path(&cur, &target).into();
                    resolved.extend(todo.drain(..));
                    todo = resolved;
                    cur.clear();
                    continue;
                }
                Seen::Missing | Seen::Below if create => {}
                Seen::Here | Seen::Missing | Seen::Below => return Ok(None),
            }
            if create {
                self.make_dir(&next)?;
            }
            cur = next;
        }
        Ok(Some(cur))
    }

    /// Notes the mtime of the directory `fd` at `parts` before this step changes it.
    fn touch(&mut self, fd: BorrowedFd<'_>, parts: &[OsString]) -> Result<(), UnpackError> {
        let st = fstat(fd)
            .map_err(io::Error::from)
            .map_err(self.err("inspecting", parts))?;
        self.times
            .entry(st.st_ino)
            .or_insert_with(|| (parts.to_vec(), TimeSpec::new(st.st_mtime, st.st_mtime_nsec)));
        Ok(())
    }

    /// Gives the owner, mode, xattrs and (in the end) mtime of the lower directory `found`
    /// to this layer's directory `fd` at `parts`.
    fn copy_dir_info(
        &mut self,
        fd: BorrowedFd<'_>,
        found: &Found,
        parts: &[OsString],
    ) -> Result<(), UnpackError> {
        let st = &found.stat;
        let from = found.open().map_err(self.err("opening below", parts))?;
        fchown(
            fd,
            Some(Uid::from_raw(st.st_uid)),
            Some(Gid::from_raw(st.st_gid)),
        )
        .and_then(|()| fchmod(fd, Mode::from_bits_truncate(st.st_mode & 0o7777)))
        .map_err(io::Error::from)
        .and_then(|()| copy_layer_xattrs(from.as_fd(), fd))
        .map_err(self.err("copying the lower directory's metadata to", parts))?;
        let ino = fstat(fd)
            .map_err(io::Error::from)
            .map_err(self.err("inspecting", parts))?
            .st_ino;
        let mtime = TimeSpec::new(st.st_mtime, st.st_mtime_nsec);
        self.times.insert(ino, (parts.to_vec(), mtime));
        Ok(())
    }

    /// Makes `parts` a directory of the staging directory (its parent is one), unless it is:
    /// with the lower view's directory's metadata there, else 0755 root.
    fn make_dir(&mut self, parts: &[OsString]) -> Result<(), UnpackError> {
        let (name, parent_parts) = parts.split_last().expect("never the root");
        let parent = self
            .open_dir(parent_parts)
            .map_err(self.err("opening parent of", parts))?;
        match fstatat(
            parent.as_fd(),
            name.as_os_str(),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(st) if kind_of(st.st_mode) == SFlag::S_IFDIR => return Ok(()),
            // A whiteout of this step or a lower file's name: the directory replaces it.
            Ok(_) => {
                self.touch(parent.as_fd(), parent_parts)?;
                unlinkat(parent.as_fd(), name.as_os_str(), UnlinkatFlags::NoRemoveDir)
                    .map_err(io::Error::from)
                    .map_err(self.err("replacing", parts))?;
            }
            Err(Errno::ENOENT) => self.touch(parent.as_fd(), parent_parts)?,
            Err(e) => return Err(self.err("inspecting", parts)(e.into())),
        }
        mkdirat(
            parent.as_fd(),
            name.as_os_str(),
            Mode::from_bits_truncate(0o700),
        )
        .map_err(io::Error::from)
        .map_err(self.err("creating directory", parts))?;
        let fd = self.open_dir(parts).map_err(self.err("opening", parts))?;
        match self
            .below(parts)
            .map_err(self.err("looking below", parts))?
        {
            Some(found) if found.kind() == SFlag::S_IFDIR => {
                self.copy_dir_info(fd.as_fd(), &found, parts)
            }
            _ => {
                let root = Some(Uid::from_raw(ID_SHIFT));
                fchown(&fd, root, Some(Gid::from_raw(ID_SHIFT)))
                    .and_then(|()| fchmod(&fd, Mode::from_bits_truncate(0o755)))
                    .map_err(io::Error::from)
                    .and_then(|()| drop_acls(fd.as_fd()))
                    .map_err(self.err("setting up directory", parts))
            }
        }
    }

    /// Whiteouts of names this layer has itself: a directory becomes opaque (its lower
    /// counterpart is deleted), anything else stays. Returns the others.
    fn own_whiteouts(
        &mut self,
        whiteouts: Vec<Vec<OsString>>,
    ) -> Result<Vec<Vec<OsString>>, UnpackError> {
        let mut rest = Vec::new();
        for hidden in whiteouts {
            match self
                .here(&hidden)
                .map_err(self.err("inspecting", &hidden))?
            {
                Some((_, st)) => {
                    if kind_of(st.st_mode) == SFlag::S_IFDIR {
                        self.open_dir(&hidden)
                            .and_then(|fd| set_xattr(fd.as_fd(), OPAQUE_XATTR, b"y"))
                            .map_err(self.err("marking opaque", &hidden))?;
                        self.deleted.insert(hidden);
                    }
                }
                None => rest.push(hidden),
            }
        }
        Ok(rest)
    }

    /// A whiteout of `hidden` where this layer has nothing: written where the lower view has
    /// something (its parent made a directory of this layer first).
    fn whiteout(&mut self, hidden: &[OsString]) -> Result<(), UnpackError> {
        let (name, parent) = hidden.split_last().expect("a whiteout names something");
        let Some(mut at) = self.resolve(parent, false)? else {
            return Ok(());
        };
        at.push(name.clone());
        if let Some((_, st)) = self.here(&at).map_err(self.err("inspecting", hidden))? {
            // This layer's own entry, reached through a symlink.
            if kind_of(st.st_mode) == SFlag::S_IFDIR {
                let fd = self.open_dir(&at).map_err(self.err("opening", hidden))?;
                set_xattr(fd.as_fd(), OPAQUE_XATTR, b"y")
                    .map_err(self.err("marking opaque", hidden))?;
            }
            return Ok(());
        }
        if self
            .below(&at)
            .map_err(self.err("looking below", hidden))?
            .is_none()
        {
            return Ok(());
        }
        let dir = self
            .resolve(parent, true)?
            .expect("a directory of the lower view");
        let fd = self
            .open_dir(&dir)
            .map_err(self.err("opening parent of", hidden))?;
        self.touch(fd.as_fd(), &dir)?;
        mknodat(
            fd.as_fd(),
            name.as_os_str(),
            SFlag::S_IFCHR,
            Mode::empty(),
            0,
        )
        .and_then(|()| {
            let (uid, gid) = (Uid::from_raw(ID_SHIFT), Gid::from_raw(ID_SHIFT));
            let nofollow = AtFlags::AT_SYMLINK_NOFOLLOW;
            fchownat(fd.as_fd(), name.as_os_str(), Some(uid), Some(gid), nofollow)
        })
        .map_err(io::Error::from)
        .map_err(self.err("creating whiteout", hidden))
    }

    /// Settles the implicit directory at `dir` (a path of the staging directory).
    fn implicit_dir(&mut self, dir: Vec<OsString>, ino: u64) -> Result<(), UnpackError> {
        let fd = match self.open_dir(&dir) {
            Ok(fd) => fd,
            // Replaced later in the stream.
            Err(e) if is_gone(&e) => return Ok(()),
            Err(e) => return Err(self.err("opening", &dir)(e)),
        };
        let st = fstat(fd.as_fd())
            .map_err(io::Error::from)
            .map_err(self.err("inspecting", &dir))?;
        if st.st_ino != ino {
            // Removed later in the stream, and something else made there.
            return Ok(());
        }
        let Some(found) = self.below(&dir).map_err(self.err("looking below", &dir))? else {
            return Ok(());
        };
        match found.kind() {
            SFlag::S_IFDIR => self.copy_dir_info(fd.as_fd(), &found, &dir),
            SFlag::S_IFLNK => {
                drop(fd);
                let target = found
                    .link_target()
                    .map_err(self.err("reading the lower symlink at", &dir))?;
                self.move_below_symlink(dir, &target)
            }
            // A lower non-directory: the directory replaces it, as created.
            _ => Ok(()),
        }
    }

    /// The implicit directory `dir` stands where the lower view has a symlink to `target`:
    /// what it holds moves below the symlink's target, and it goes (the symlink shows).
    fn move_below_symlink(
        &mut self,
        dir: Vec<OsString>,
        target: &OsStr,
    ) -> Result<(), UnpackError> {
        let (name, parent) = dir.split_last().expect("never the root");
        let target = symlink_path(parent, target);
        // Hidden from resolution meanwhile: the lower symlink is followed, not the directory.
        let Some(dest) = self.resolve(&target, true)? else {
            return Err(UnpackError::ParentNotDir {
                layer: self.layer.clone(),
                path: join(&dir),
                parent: join(&target),
            });
        };
        if dest.starts_with(&dir) {
            // A symlink into itself: the directory stays as it is.
            return Ok(());
        }
        self.merge_into(&dir, &dest)?;
        let parent_fd = self
            .open_dir(parent)
            .map_err(self.err("opening parent of", &dir))?;
        self.touch(parent_fd.as_fd(), parent)?;
        unlinkat(
            parent_fd.as_fd(),
            name.as_os_str(),
            UnlinkatFlags::RemoveDir,
        )
        .map_err(io::Error::from)
        .map_err(self.err("removing the moved directory", &dir))
    }

    /// Moves every entry of the staging directory `from` into `to` (both directories). An
    /// entry `to` has already stays (merged, for two directories); implicit directories moved
    /// are settled at their new place.
    fn merge_into(&mut self, from: &[OsString], to: &[OsString]) -> Result<(), UnpackError> {
        let from_fd = self.open_dir(from).map_err(self.err("opening", from))?;
        let to_fd = self.open_dir(to).map_err(self.err("opening", to))?;
        self.touch(from_fd.as_fd(), from)?;
        self.touch(to_fd.as_fd(), to)?;
        let children = super::tree::children(from_fd.as_fd()).map_err(self.err("listing", from))?;
        for (child, is_dir) in children {
            let (mut src, mut dst) = (from.to_vec(), to.to_vec());
            src.push(child.clone());
            dst.push(child.clone());
            let existing = fstatat(
                to_fd.as_fd(),
                child.as_os_str(),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            );
            match existing {
                Err(Errno::ENOENT) => {
                    renameat(
                        from_fd.as_fd(),
                        child.as_os_str(),
                        to_fd.as_fd(),
                        child.as_os_str(),
                    )
                    .map_err(io::Error::from)
                    .map_err(self.err("moving below the symlink's target", &src))?;
                    self.rekey(&src, &dst);
                }
                Ok(st) if is_dir && kind_of(st.st_mode) == SFlag::S_IFDIR => {
                    self.merge_into(&src, &dst)?;
                    self.rekey(&src, &[]);
                    unlinkat(from_fd.as_fd(), child.as_os_str(), UnlinkatFlags::RemoveDir)
                        .map_err(io::Error::from)
                        .map_err(self.err("removing the merged directory", &src))?;
                }
                Ok(_) => {
                    self.rekey(&src, &[]);
                    let removed = match is_dir {
                        true => remove_tree(from_fd.as_fd(), &child),
                        false => unlinkat(
                            from_fd.as_fd(),
                            child.as_os_str(),
                            UnlinkatFlags::NoRemoveDir,
                        )
                        .map_err(io::Error::from),
                    };
                    removed.map_err(self.err("dropping what the target has already", &src))?;
                }
                Err(e) => return Err(self.err("inspecting", &dst)(e.into())),
            }
        }
        Ok(())
    }

    /// Implicit directories at or below `from` now live at or below `to` (none when `to` is
    /// empty: they are gone).
    fn rekey(&mut self, from: &[OsString], to: &[OsString]) {
        let moved: Vec<Vec<OsString>> = self
            .implicit
            .range(from.to_vec()..)
            .take_while(|(p, _)| p.starts_with(from))
            .map(|(p, _)| p.clone())
            .collect();
        for old in moved {
            let ino = self.implicit.remove(&old).expect("listed just now");
            if !to.is_empty() {
                let mut new = to.to_vec();
                new.extend_from_slice(&old[from.len()..]);
                self.implicit.insert(new, ino);
            }
        }
    }

    /// A hard link whose target the layer did not have when it was read.
    fn link(&mut self, link: &Link) -> Result<(), UnpackError> {
        let refuse = |reason| UnpackError::HardlinkTarget {
            layer: self.layer.clone(),
            path: link.path.clone(),
            target: join(&link.target),
            reason,
        };
        let (name, parent) = link.parts.split_last().expect("a link has a name");
        let (target_name, target_parent) = match link.target.split_last() {
            Some(split) => split,
            None => return Err(refuse("is the layer root")),
        };
        let Some(dir) = self.resolve(parent, true)? else {
            return Err(UnpackError::ParentNotDir {
                layer: self.layer.clone(),
                path: link.path.clone(),
                parent: join(parent),
            });
        };
        let mut at = dir.clone();
        at.push(name.clone());
        if self
            .here(&at)
            .map_err(self.err("inspecting", &link.parts))?
            .is_some()
        {
            // Written again later in the stream: the later entry stands.
            return Ok(());
        }
        let missing = "does not exist in this layer or the layers below";
        let Some(mut target) = self.resolve(target_parent, false)? else {
            return Err(refuse(missing));
        };
        target.push(target_name.clone());
        let here = self
            .here(&target)
            .map_err(self.err("inspecting", &link.target))?
            .is_some();
        // Here but not made by settling: the target was not in this layer when the link was
        // read (else it would not be pending), the layer wrote it later. The link is to the
        // lower file, as containerd applies it (the lower file copied up by the link, then
        // replaced by the later entry); to the later file only where no lower layer has one.
        let rewritten = here && !self.made_by_links.contains(&target);
        if !here || rewritten {
            let found = self
                .below(&target)
                .map_err(self.err("looking below", &link.target))?;
            match found {
                None if rewritten => {}
                None => return Err(refuse(missing)),
                Some(found) => {
                    if !matches!(
                        found.kind(),
                        SFlag::S_IFREG | SFlag::S_IFLNK | SFlag::S_IFIFO
                    ) {
                        return Err(refuse("is not a regular file, symlink or FIFO"));
                    }
                    if rewritten {
                        match self.linked_before_rewrite.get(&target).cloned() {
                            Some(first) => self.hard_link(&first, &at, link)?,
                            None => {
                                self.copy_up(&found, &at)?;
                                self.linked_before_rewrite.insert(target, at.clone());
                            }
                        }
                        self.made_by_links.insert(at);
                        return Ok(());
                    }
                    self.resolve(target_parent, true)?;
                    self.copy_up(&found, &target)?;
                    self.made_by_links.insert(target.clone());
                }
            }
        }
        self.hard_link(&target, &at, link)?;
        self.made_by_links.insert(at);
        Ok(())
    }

    /// Links `at` (whose parent is a directory of the staging directory) to this layer's
    /// `target`, which must be a regular file, symlink or FIFO.
    fn hard_link(
        &mut self,
        target: &[OsString],
        at: &[OsString],
        link: &Link,
    ) -> Result<(), UnpackError> {
        let (target_name, target_dir) = target.split_last().expect("a target has a name");
        let (name, dir) = at.split_last().expect("a link has a name");
        let from = self
            .open_dir(target_dir)
            .map_err(self.err("opening parent of", &link.target))?;
        let to = self
            .open_dir(dir)
            .map_err(self.err("opening parent of", &link.parts))?;
        let st = fstatat(
            from.as_fd(),
            target_name.as_os_str(),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(io::Error::from)
        .map_err(self.err("inspecting", &link.target))?;
        if !matches!(
            kind_of(st.st_mode),
            SFlag::S_IFREG | SFlag::S_IFLNK | SFlag::S_IFIFO
        ) {
            return Err(UnpackError::HardlinkTarget {
                layer: self.layer.clone(),
                path: link.path.clone(),
                target: join(&link.target),
                reason: "is not a regular file, symlink or FIFO",
            });
        }
        self.touch(to.as_fd(), dir)?;
        linkat(
            from.as_fd(),
            target_name.as_os_str(),
            to.as_fd(),
            name.as_os_str(),
            AtFlags::empty(),
        )
        .map_err(io::Error::from)
        .map_err(self.err("creating hard link", &link.parts))
    }

    /// Copies the lower view's `found` (a regular file, symlink or FIFO) up into this layer at
    /// `at` (whose parent is a directory of the staging directory): content, owner, mode,
    /// xattrs, mtime.
    fn copy_up(&mut self, found: &Found, at: &[OsString]) -> Result<(), UnpackError> {
        let (name, parent_parts) = at.split_last().expect("never the root");
        let parent = self
            .open_dir(parent_parts)
            .map_err(self.err("opening parent of", at))?;
        self.touch(parent.as_fd(), parent_parts)?;
        let st = &found.stat;
        let (uid, gid) = (
            Some(Uid::from_raw(st.st_uid)),
            Some(Gid::from_raw(st.st_gid)),
        );
        let mtime = TimeSpec::new(st.st_mtime, st.st_mtime_nsec);
        let name = name.as_os_str();
        let fail = self.err("copying up from the layers below", at);
        let result: io::Result<()> = (|| {
            if found.kind() == SFlag::S_IFLNK {
                symlinkat(found.link_target()?.as_os_str(), parent.as_fd(), name)?;
                fchownat(parent.as_fd(), name, uid, gid, AtFlags::AT_SYMLINK_NOFOLLOW)?;
                let nofollow = UtimensatFlags::NoFollowSymlink;
                utimensat(parent.as_fd(), name, &mtime, &mtime, nofollow)?;
                return Ok(());
            }
            let from = found.open()?;
            let fd = if found.kind() == SFlag::S_IFIFO {
                mknodat(
                    parent.as_fd(),
                    name,
                    SFlag::S_IFIFO,
                    Mode::from_bits_truncate(0o600),
                    0,
                )?;
                let flags =
                    OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
                openat(parent.as_fd(), name, flags, Mode::empty())?
            } else {
                let flags = OFlag::O_WRONLY
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC;
                let fd = openat(parent.as_fd(), name, flags, Mode::from_bits_truncate(0o600))?;
                let mut out = std::fs::File::from(fd);
                io::copy(&mut std::fs::File::from(from.try_clone()?), &mut out)?;
                OwnedFd::from(out)
            };
            fchown(&fd, uid, gid)?;
            fchmod(&fd, Mode::from_bits_truncate(st.st_mode & 0o7777))?;
            copy_layer_xattrs(from.as_fd(), fd.as_fd())?;
            futimens(&fd, &mtime, &mtime)?;
            Ok(())
        })();
        result.map_err(fail)
    }

    /// Gives every directory this step changed the mtime it had (or, for an implicit one, the
    /// lower view's); one no longer there (moved, removed) is left alone.
    fn restore_times(&mut self) -> Result<(), UnpackError> {
        for (ino, (parts, mtime)) in std::mem::take(&mut self.times) {
            let fd = match self.open_dir(&parts) {
                Ok(fd) => fd,
                Err(e) if is_gone(&e) => continue,
                Err(e) => return Err(self.err("opening", &parts)(e)),
            };
            let st = fstat(fd.as_fd())
                .map_err(io::Error::from)
                .map_err(self.err("inspecting", &parts))?;
            if st.st_ino == ino {
                futimens(&fd, &TimeSpec::UTIME_OMIT, &mtime)
                    .map_err(io::Error::from)
                    .map_err(self.err("restoring mtime of", &parts))?;
            }
        }
        Ok(())
    }
}

/// The path a symlink in the directory `dir` to `target` names, in-root (`..` stops at the
/// root; an absolute target starts from it).
pub(super) fn symlink_path(dir: &[OsString], target: &OsStr) -> Vec<OsString> {
    let mut path = match target.as_bytes().first() {
        Some(b'/') => Vec::new(),
        _ => join(dir).into_os_string().into_vec(),
    };
    path.push(b'/');
    path.extend_from_slice(target.as_bytes());
    normalise(&path)
}
