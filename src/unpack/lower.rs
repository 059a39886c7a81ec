//! The lower view of a layer: the merged tree of the layers below it, as overlayfs shows it.
//!
//! Owns: looking a path up in a stack of published layer directories (top first), honouring
//! their whiteouts (a 0:0 character device hides the name in the layers below it) and opaque
//! directories (`trusted.overlay.opaque=y`: nothing of the layers below shows in it). A path
//! with a component that is not a directory in the view finds nothing: symlinks are never
//! followed here (module `settle` resolves them, in-root, one component at a time). It only
//! ever reads the layer directories.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use nix::errno::Errno;
use nix::fcntl::{openat, readlinkat, AtFlags, OFlag};
use nix::sys::stat::{fstatat, FileStat, Mode, SFlag};

use super::tree::get_xattr;

const OPAQUE_XATTR: &std::ffi::CStr = c"trusted.overlay.opaque";

/// What a path names in the lower view.
pub(super) struct Found {
    /// The directory holding it, in the top-most layer that has it.
    pub parent: OwnedFd,
    pub name: OsString,
    pub stat: FileStat,
}

impl Found {
    pub(super) fn kind(&self) -> SFlag {
        SFlag::from_bits_truncate(self.stat.st_mode & SFlag::S_IFMT.bits())
    }

    /// The entry opened for reading (a directory, regular file or FIFO), never following it.
    pub(super) fn open(&self) -> io::Result<OwnedFd> {
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        Ok(openat(
            self.parent.as_fd(),
            self.name.as_os_str(),
            flags,
            Mode::empty(),
        )?)
    }

    /// A symlink's target.
    pub(super) fn link_target(&self) -> io::Result<OsString> {
        Ok(readlinkat(self.parent.as_fd(), self.name.as_os_str())?)
    }
}

/// The lower layers of one layer, opened.
pub(super) struct LowerView {
    /// Layer roots, top-most first.
    layers: Vec<OwnedFd>,
}

fn open_dir(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    Ok(openat(parent, name, flags, Mode::empty())?)
}

/// Whether the directory `fd` is an overlayfs opaque directory.
pub(super) fn is_opaque(fd: BorrowedFd<'_>) -> io::Result<bool> {
    Ok(get_xattr(fd, OPAQUE_XATTR)?.is_some_and(|v| v == b"y"))
}

impl LowerView {
    /// Opens the layer directories `lowers` (bottom first, as an image lists its layers).
    pub(super) fn open(lowers: &[PathBuf]) -> io::Result<LowerView> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let layers = lowers
            .iter()
            .rev()
            .map(|dir| Ok(nix::fcntl::open(dir, flags, Mode::empty())?))
            .collect::<io::Result<_>>()?;
        Ok(LowerView { layers })
    }

    /// What `parts` (a path from the root, never the root itself) names in the view, if
    /// anything.
    pub(super) fn lookup(&self, parts: &[std::ffi::OsString]) -> io::Result<Option<Found>> {
        // The directories merged at the current component, top-most first.
        let mut merged: Vec<OwnedFd> = self
            .layers
            .iter()
            .map(|fd| fd.try_clone())
            .collect::<io::Result<_>>()?;
        for (i, part) in parts.iter().enumerate() {
            let mut found: Option<Found> = None;
            let mut below = Vec::new();
            for dir in &merged {
                let stat =
                    match fstatat(dir.as_fd(), part.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                        Ok(stat) => stat,
                        Err(Errno::ENOENT) => continue,
                        Err(e) => return Err(e.into()),
                    };
                let kind = SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits());
                // A whiteout hides the name in the layers below; a non-directory hides them too
                // (below a directory it ends the merge).
                if kind == SFlag::S_IFCHR && stat.st_rdev == 0 {
                    break;
                }
                let is_dir = kind == SFlag::S_IFDIR;
                if found.is_none() {
                    found = Some(Found {
                        parent: dir.try_clone()?,
                        name: part.clone(),
                        stat,
                    });
                }
                if !is_dir || found.as_ref().is_some_and(|f| f.kind() != SFlag::S_IFDIR) {
                    break;
                }
                let fd = open_dir(dir.as_fd(), part)?;
                let opaque = is_opaque(fd.as_fd())?;
                below.push(fd);
                if opaque {
                    break;
                }
            }
            let last = i + 1 == parts.len();
            match found {
                Some(found) if last => return Ok(Some(found)),
                Some(found) if found.kind() == SFlag::S_IFDIR => merged = below,
                _ => return Ok(None),
            }
        }
        Ok(None)
    }
}
