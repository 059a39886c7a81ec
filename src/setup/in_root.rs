//! Symlink creation inside a rootfs, the one write that happens *in* an image's tree.
//!
//! Owns: walking a path inside the rootfs component by component with `openat2(RESOLVE_IN_ROOT)`
//! (so an image's absolute symlinks and `..` resolve as they would in the container), creating
//! missing directories (also behind a dangling in-root symlink, at its in-root target), then
//! `symlinkat` and `fchownat(AT_SYMLINK_NOFOLLOW)` relative to the parent's descriptor. It must
//! never resolve a rootfs path with a plain path syscall, which could land outside the rootfs.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path};

use nix::errno::Errno;
use nix::fcntl::{openat, readlinkat, AtFlags, OFlag};
use nix::sys::stat::{fchmod, fstatat, mkdirat, FileStat, Mode, SFlag};
use nix::unistd::{fchown, fchownat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};

use crate::rootfs::inroot::InRoot;

/// Symlinks followed while creating parents before giving up with `ELOOP` (the kernel's limit).
const MAX_SYMLINKS: u32 = 40;
/// Mode of the parent directories created.
const DIR_MODE: u32 = 0o755;

/// Owner of what is created.
#[derive(Debug, Clone, Copy)]
pub(super) struct Owner {
    pub(super) uid: u32,
    pub(super) gid: u32,
}

/// Creates `path -> target` inside `rootfs`; see [`Sys::symlink_in_root`](super::Sys).
pub(super) fn symlink(rootfs: &Path, path: &Path, target: &Path, owner: Owner) -> io::Result<()> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "the link path has no file name",
        )
    })?;
    let parent_path = path.parent().unwrap_or(Path::new("/"));
    let root = InRoot::open(rootfs)?;
    let mut budget = MAX_SYMLINKS;
    let parent = ensure_dir(&root, parent_path, owner, &mut budget)?;
    remove_non_directory(&parent, name)?;
    symlinkat(target, parent.as_fd(), name)?;
    chown_at(&parent, name, owner)
}

/// `mkdir -p` of `dir` inside the root; returns the directory's descriptor.
fn ensure_dir(root: &InRoot, dir: &Path, owner: Owner, budget: &mut u32) -> io::Result<OwnedFd> {
    let mut walked = Path::new("/").to_path_buf();
    let mut current = root.open_dir(&walked)?;
    for component in dir.components() {
        let name = match component {
            Component::Normal(name) => name,
            Component::ParentDir => OsStr::new(".."),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => continue,
        };
        let next = walked.join(name);
        current = match root.open_dir(&next) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(Errno::ENOENT as i32) => {
                create_component(root, &current, &walked, name, owner, budget)?
            }
            Err(e) => return Err(e),
        };
        walked = next;
    }
    Ok(current)
}

/// Makes `parent_path/name` an existing directory: `mkdir` when nothing is there, or creates
/// the in-root target of a dangling symlink.
fn create_component(
    root: &InRoot,
    parent: &OwnedFd,
    parent_path: &Path,
    name: &OsStr,
    owner: Owner,
    budget: &mut u32,
) -> io::Result<OwnedFd> {
    match lstat_at(parent, name) {
        Err(e) if e.raw_os_error() == Some(Errno::ENOENT as i32) => make_dir(parent, name, owner),
        Ok(st) if is_symlink(&st) => {
            *budget = budget.checked_sub(1).ok_or(Errno::ELOOP)?;
            let target = readlinkat(parent.as_fd(), name)?;
            // An absolute target replaces `parent_path`: in-root, that is the rootfs' own root.
            ensure_dir(root, &parent_path.join(target), owner, budget)?;
            root.open_dir(&parent_path.join(name))
        }
        Ok(_) => Err(Errno::ENOTDIR.into()),
        Err(e) => Err(e),
    }
}

/// `mkdirat`, then owner and mode set through a descriptor of the new directory itself.
fn make_dir(parent: &OwnedFd, name: &OsStr, owner: Owner) -> io::Result<OwnedFd> {
    mkdirat(parent.as_fd(), name, Mode::from_bits_truncate(DIR_MODE))?;
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let dir = openat(parent.as_fd(), name, flags, Mode::empty())?;
    fchown(
        dir.as_fd(),
        Some(Uid::from_raw(owner.uid)),
        Some(Gid::from_raw(owner.gid)),
    )?;
    fchmod(dir.as_fd(), Mode::from_bits_truncate(DIR_MODE))?;
    Ok(dir)
}

/// Unlinks `name` in `parent` unless it is a directory (an error) or absent.
fn remove_non_directory(parent: &OwnedFd, name: &OsStr) -> io::Result<()> {
    match lstat_at(parent, name) {
        Ok(st) if file_type(&st) == SFlag::S_IFDIR => Err(Errno::EISDIR.into()),
        Ok(_) => Ok(unlinkat(parent.as_fd(), name, UnlinkatFlags::NoRemoveDir)?),
        Err(e) if e.raw_os_error() == Some(Errno::ENOENT as i32) => Ok(()),
        Err(e) => Err(e),
    }
}

fn chown_at(parent: &OwnedFd, name: &OsStr, owner: Owner) -> io::Result<()> {
    let (uid, gid) = (Uid::from_raw(owner.uid), Gid::from_raw(owner.gid));
    Ok(fchownat(
        parent.as_fd(),
        name,
        Some(uid),
        Some(gid),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )?)
}

fn lstat_at(parent: &OwnedFd, name: &OsStr) -> io::Result<FileStat> {
    Ok(fstatat(parent.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW)?)
}

fn file_type(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

fn is_symlink(st: &FileStat) -> bool {
    file_type(st) == SFlag::S_IFLNK
}
