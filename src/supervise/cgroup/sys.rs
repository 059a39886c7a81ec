//! The host primitives cgroup preparation is made of ([`CgroupSys`]) and the real ones
//! ([`RealCgroupSys`]).
//!
//! Owns: the syscalls behind each primitive (read, single-write, mkdir, `unshare`, unmount,
//! cgroup2 mount and read-write remount). Each does exactly one thing and never decides what
//! to do: that is [`prepare`](super::prepare)'s and the planners' job.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::mountinfo::locked_ms_flags;

/// One method per primitive.
pub(crate) trait CgroupSys {
    /// Reads a whole (small) file.
    fn read(&self, path: &Path) -> io::Result<String>;
    /// Writes `contents` to an existing file in one `write(2)` (cgroup files take one value per
    /// write), without truncating or creating.
    fn write(&self, path: &Path, contents: &str) -> io::Result<()>;
    /// Creates one directory; an existing one is fine.
    fn mkdir(&self, path: &Path) -> io::Result<()>;
    /// `unshare(CLONE_NEWCGROUP)` for the calling thread: its current cgroup becomes the root
    /// of its view, and of the view of every process it forks afterwards.
    fn unshare_cgroup_namespace(&self) -> io::Result<()>;
    /// Lazily unmounts `path` (`MNT_DETACH`).
    fn unmount(&self, path: &Path) -> io::Result<()>;
    /// Mounts a fresh cgroup2 filesystem on `path` (`nosuid,nodev,noexec,relatime`): it shows
    /// the caller's cgroup namespace root.
    fn mount_cgroup2(&self, path: &Path) -> io::Result<()>;
    /// Remounts the mount at `path` read-write, keeping the per-mount `flags` named
    /// (`nosuid`, `nodev`, `noexec`, `noatime`, `nodiratime`, `strictatime`).
    fn remount_read_write(&self, path: &Path, flags: &[String]) -> io::Result<()>;
    /// envbox's process id.
    fn own_pid(&self) -> u32;
}

/// The real primitives. [`CgroupSys::unshare_cgroup_namespace`] affects the calling thread
/// only: call [`prepare`](super::prepare) on the thread that forks the daemons.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct RealCgroupSys;

impl CgroupSys for RealCgroupSys {
    fn read(&self, path: &Path) -> io::Result<String> {
        fs::read_to_string(path)
    }

    fn write(&self, path: &Path, contents: &str) -> io::Result<()> {
        let mut file = OpenOptions::new().write(true).open(path)?;
        let written = file.write(contents.as_bytes())?;
        if written != contents.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "short write to a cgroup file",
            ));
        }
        Ok(())
    }

    fn mkdir(&self, path: &Path) -> io::Result<()> {
        match fs::create_dir(path) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            other => other,
        }
    }

    fn unshare_cgroup_namespace(&self) -> io::Result<()> {
        // SAFETY: unshare takes no pointers.
        Errno::result(unsafe { libc::unshare(libc::CLONE_NEWCGROUP) })?;
        Ok(())
    }

    fn unmount(&self, path: &Path) -> io::Result<()> {
        Ok(umount2(path, MntFlags::MNT_DETACH)?)
    }

    fn mount_cgroup2(&self, path: &Path) -> io::Result<()> {
        let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        Ok(mount(
            Some("cgroup2"),
            path,
            Some("cgroup2"),
            flags | MsFlags::MS_RELATIME,
            None::<&str>,
        )?)
    }

    fn remount_read_write(&self, path: &Path, flags: &[String]) -> io::Result<()> {
        let bits = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | locked_ms_flags(flags);
        Ok(mount(None::<&str>, path, None::<&str>, bits, None::<&str>)?)
    }

    fn own_pid(&self) -> u32 {
        std::process::id()
    }
}
