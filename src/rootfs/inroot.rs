//! In-root path resolution: opens files and directories of an unpacked rootfs with
//! `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`, so absolute symlinks and `..` planted by
//! an image resolve inside the rootfs exactly as they would for a process chrooted into it.
//!
//! Owns: the one place that turns a path inside a rootfs into a file descriptor. It must never
//! resolve a path with plain `open`/`stat` (which would follow an image's symlinks onto the
//! outer container), and it never writes: callers that create things (`setup`) do so relative
//! to the directory descriptors it hands out.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{open, openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstat, FileStat, Mode, SFlag};

/// Files larger than this are refused: the files we read are a few KiB.
const MAX_READ_BYTES: u64 = 16 * 1024 * 1024;

/// A directory used as the root for resolving every path opened through it.
#[derive(Debug)]
pub(crate) struct InRoot {
    dir: OwnedFd,
}

impl InRoot {
    /// Opens `root` (an ordinary path of the outer container) as the resolution root.
    pub(crate) fn open(root: &Path) -> io::Result<Self> {
        let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let dir = open(root, flags, Mode::empty())?;
        Ok(Self { dir })
    }

    /// Opens `rel` (absolute or relative, both taken from the root) with `flags`, resolved
    /// in-root. A final symlink is followed (in-root) unless `flags` has `O_NOFOLLOW`.
    pub(crate) fn open_at(&self, rel: &Path, flags: OFlag) -> io::Result<OwnedFd> {
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        Ok(openat2(self.dir.as_fd(), rel, how)?)
    }

    /// Opens the directory `rel` as an `O_PATH` descriptor, usable as the `dirfd` of `*at` calls.
    pub(crate) fn open_dir(&self, rel: &Path) -> io::Result<OwnedFd> {
        self.open_at(rel, OFlag::O_PATH | OFlag::O_DIRECTORY)
    }

    /// `stat` of `rel`, following symlinks in-root.
    pub(crate) fn stat(&self, rel: &Path) -> io::Result<FileStat> {
        let fd = self.open_at(rel, OFlag::O_PATH)?;
        Ok(fstat(fd)?)
    }

    /// The path inside the root that `rel` names once every symlink is followed in-root
    /// (`/sbin/init` -> `/usr/lib/systemd/systemd` on a merged-/usr image).
    pub(crate) fn resolve(&self, rel: &Path) -> io::Result<PathBuf> {
        let fd = self.open_at(rel, OFlag::O_PATH)?;
        // The kernel's name of each descriptor, in envbox's mount namespace.
        let name = |fd: &OwnedFd| std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        let (root, target) = (name(&self.dir)?, name(&fd)?);
        let inside = target.strip_prefix(&root).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not under {}", target.display(), root.display()),
            )
        })?;
        Ok(Path::new("/").join(inside))
    }

    /// Reads the regular file `rel` as text (invalid UTF-8 is replaced, not an error).
    /// A FIFO, device or directory is refused rather than read.
    pub(crate) fn read_to_string(&self, rel: &Path) -> io::Result<String> {
        // O_NONBLOCK: opening a planted FIFO must not hang; it has no effect on regular files.
        let fd = self.open_at(rel, OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY)?;
        ensure_regular(&fstat(&fd)?)?;
        let mut bytes = Vec::new();
        File::from(fd)
            .take(MAX_READ_BYTES + 1)
            .read_to_end(&mut bytes)?;
        if bytes.len() as u64 > MAX_READ_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("larger than {MAX_READ_BYTES} bytes"),
            ));
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

/// Whether `st` describes a regular file.
pub(crate) fn is_regular(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFREG
}

fn ensure_regular(st: &FileStat) -> io::Result<()> {
    if is_regular(st) {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a regular file",
        ))
    }
}
