//! Small filesystem operations at a directory descriptor, shared by the writers and `settle`.
//!
//! Owns: telling what is at a name ([`classify`]), listing and removing a directory tree, and
//! opening a child directory, all relative to a descriptor and never following the final
//! name. It never resolves a path of more than one component.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fstatat, Mode, SFlag};
use nix::unistd::{unlinkat, Gid, Uid, UnlinkatFlags};

use crate::unpack::ID_SHIFT;

/// What is at a name before an entry is written there.
pub(super) enum Existing {
    Nothing,
    Dir,
    Whiteout,
    Symlink,
    Other,
}

pub(super) fn classify(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Existing> {
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

pub(super) fn shifted(uid: u32, gid: u32) -> (Option<Uid>, Option<Gid>) {
    (
        Some(Uid::from_raw(uid + ID_SHIFT)),
        Some(Gid::from_raw(gid + ID_SHIFT)),
    )
}

/// Opens the directory `name` under `parent` for reading, never following a symlink.
pub(super) fn open_dir_nofollow(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    Ok(openat(
        parent,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?)
}

/// The entries of the directory `fd` (opened for reading): name and whether it is a directory.
pub(in crate::unpack) fn children(fd: BorrowedFd<'_>) -> io::Result<Vec<(OsString, bool)>> {
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
pub(in crate::unpack) fn remove_tree(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
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
