//! Writing one entry of each kind at its parent's descriptor: files, directories, symlinks,
//! hard links, FIFOs, then their owner, mode, xattrs and mtime.
//!
//! Owns: the creation of the final component, exclusive or replacing what this layer put
//! there, and the metadata order of the module doc of `tree`. Where the two modes differ (a
//! directory over a whiteout, a hard link to what the tree does not have) it asks the
//! [`Mode`]. It never resolves a parent (the core does) and never follows the final name.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, BufRead, Write};
use std::os::fd::{AsFd, BorrowedFd};

use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fchmod, fstatat, futimens, mkdirat, mknodat, utimensat, Mode as Perms};
use nix::sys::stat::{SFlag, UtimensatFlags};
use nix::unistd::{fchown, fchownat, linkat, symlinkat};

use super::at::{classify, shifted, Existing};
use super::xattrs::{drop_layer_xattrs, set_xattr};
use super::{Failure, Mode, Tree};
use crate::unpack::acl;
use crate::unpack::creds::exact_at_creation;
use crate::unpack::header::{join, Entry};
use crate::unpack::UnpackError;

/// What an inode got right when it was created.
#[derive(Debug, Clone, Copy)]
pub(super) struct Born {
    /// Owned by the entry's owner, shifted.
    pub(super) owner: bool,
    /// Has the entry's mode.
    pub(super) mode: bool,
}

impl Born {
    const NOTHING: Born = Born {
        owner: false,
        mode: false,
    };
}

impl<M: Mode> Tree<'_, M> {
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
            fchmod(fd, Perms::from_bits_truncate(entry.mode))
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

    pub(super) fn file(
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
            openat(parent, name, flags, Perms::from_bits_truncate(mode))
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

    pub(super) fn dir(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        entry: &Entry,
        born_root: bool,
    ) -> Result<(), UnpackError> {
        let mode = Perms::from_bits_truncate(0o700);
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
        M::listed_dir(self, fd.as_fd(), entry, opaque)?;
        let path = join(&entry.parts);
        // Also forgets a record of an earlier inode of the same number, if the directory is new.
        self.note_default_acl(fd.as_fd(), entry, &path)?;
        self.dir_times.push((path, entry.mtime));
        Ok(())
    }

    pub(super) fn symlink(
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

    pub(super) fn hardlink(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        target: &[OsString],
        entry: &Entry,
    ) -> Result<(), UnpackError> {
        let target_path = join(target);
        let missing = "does not exist in the tree";
        // Not borrowing `self`, which a missing target is handed to.
        let layer = self.layer;
        let refuse = |reason| UnpackError::HardlinkTarget {
            layer: layer.clone(),
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
            None => {
                let missing = refuse(missing);
                return M::link_target_missing(self, parent, name, entry, target, missing);
            }
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

    pub(super) fn fifo(
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
                Perms::from_bits_truncate(0o600),
                0,
            )
        })?;
        // O_NONBLOCK: opening a FIFO for reading must not wait for a writer.
        let flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = openat(parent, name, flags, Perms::empty())
            .map_err(io::Error::from)
            .map_err(self.err("opening", &entry.path))?;
        self.finish_fd(fd.as_fd(), entry, Born::NOTHING, true)
    }
}
