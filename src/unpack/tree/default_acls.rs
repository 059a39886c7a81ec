//! Directories' default ACLs, set only once nothing more is created in the tree.
//!
//! Owns: noting the default ACL a directory entry lists (by inode, with the path it was listed
//! at), forgetting one whose inode went, and setting them all at the end
//! ([`Tree::set_default_acls`]). It never sets any other xattr.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::fcntl::OFlag;
use nix::sys::stat::fstat;

use super::{set_xattr, Mode, Tree, DEFAULT_ACL_XATTR};
use crate::unpack::acl;
use crate::unpack::header::Entry;
use crate::unpack::UnpackError;

impl<M: Mode> Tree<'_, M> {
    /// Sets the default ACLs of the directories listed with one, once no more inodes are
    /// created in the tree: an inode created in a directory with a default ACL would inherit it
    /// (and get its mode masked by it instead of the umask), where it must get exactly the ACLs
    /// and mode its own entry lists. A directory is found again by the path it was listed at
    /// and must still be the inode listed there (one removed since, or replaced, is skipped).
    pub(in crate::unpack) fn set_default_acls(&mut self) -> Result<(), UnpackError> {
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
    pub(super) fn note_default_acl(
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
    pub(super) fn forget_default_acl(
        &self,
        fd: BorrowedFd<'_>,
        path: &Path,
    ) -> Result<(), UnpackError> {
        if self.default_acls.borrow().is_empty() {
            return Ok(());
        }
        let ino = self.stat_dir(fd, path)?.st_ino;
        self.default_acls.borrow_mut().remove(&ino);
        Ok(())
    }
}
