//! The host primitives setup is made of ([`Sys`]) and their real implementation ([`RealSys`]).
//!
//! Owns: the syscalls behind each primitive: `mkdir -p`, `lchown`, `chmod`, the atomic write
//! (staging file in the same directory, fsync, rename), `mknod` of character devices, lazy
//! unmount, and symlink creation inside a rootfs. Each primitive does exactly one thing and
//! must never decide policy (owners, modes, ordering): that is [`apply`](super::apply)'s job.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{lchown, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};

use super::in_root;
use crate::mountinfo::{locked_ms_flags, MountTable};

/// One method per host primitive. Paths are absolute in the outer container, except `path`
/// of [`Sys::symlink_in_root`], which is inside `rootfs`.
pub trait Sys {
    /// `mkdir -p path` (existing directories are fine).
    fn mkdir_all(&self, path: &Path) -> io::Result<()>;
    /// Changes the owner of `path`; a final symlink is not followed (`lchown`).
    fn chown(&self, path: &Path, uid: u32, gid: u32) -> io::Result<()>;
    /// Sets the mode of `path` (permission bits plus setuid/setgid/sticky).
    fn chmod(&self, path: &Path, mode: u32) -> io::Result<()>;
    /// Writes `contents` to `<name>.tmp-<pid>` next to `path`, fsyncs it, and renames it over
    /// `path`. The parent directory must exist.
    fn write_file_atomic(&self, path: &Path, contents: &[u8]) -> io::Result<()>;
    /// Creates the character device `major:minor` at `path`, first removing a non-directory
    /// already there.
    fn mknod_char(&self, path: &Path, major: u64, minor: u64, mode: u32) -> io::Result<()>;
    /// Lazily unmounts `path` (`MNT_DETACH`). `EINVAL` means it was not a mount point.
    fn umount(&self, path: &Path) -> io::Result<()>;
    /// Remounts the mount point `path` read-only or read-write, keeping the flags its mount
    /// locks (`nosuid`, `nodev`, `noexec`, atime). `EINVAL` when `path` is not a mount point.
    fn remount(&self, path: &Path, read_only: bool) -> io::Result<()>;
    /// Creates the symlink `path -> target` inside `rootfs`, every component resolved in-root;
    /// missing parents are created `0755`; the parents it creates and the link are owned by
    /// `uid:gid`; a non-directory at `path` is replaced, a directory is an error.
    fn symlink_in_root(
        &self,
        rootfs: &Path,
        path: &Path,
        target: &Path,
        uid: u32,
        gid: u32,
    ) -> io::Result<()>;
}

/// The real primitives: syscalls on this machine.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealSys;

impl Sys for RealSys {
    fn mkdir_all(&self, path: &Path) -> io::Result<()> {
        fs::create_dir_all(path)
    }

    fn chown(&self, path: &Path, uid: u32, gid: u32) -> io::Result<()> {
        lchown(path, Some(uid), Some(gid))
    }

    fn chmod(&self, path: &Path, mode: u32) -> io::Result<()> {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
    }

    fn write_file_atomic(&self, path: &Path, contents: &[u8]) -> io::Result<()> {
        let staging = staging_path(path)?;
        let result = write_and_rename(&staging, path, contents);
        if result.is_err() {
            // Best effort: the error that matters is the write's.
            let _ = fs::remove_file(&staging);
        }
        result
    }

    fn mknod_char(&self, path: &Path, major: u64, minor: u64, mode: u32) -> io::Result<()> {
        remove_non_directory(path)?;
        let perm = Mode::from_bits_truncate(mode & 0o7777);
        Ok(mknod(path, SFlag::S_IFCHR, perm, makedev(major, minor))?)
    }

    fn umount(&self, path: &Path) -> io::Result<()> {
        Ok(umount2(path, MntFlags::MNT_DETACH)?)
    }

    fn remount(&self, path: &Path, read_only: bool) -> io::Result<()> {
        let table = MountTable::read_self().map_err(io::Error::other)?;
        let entry = table
            .entries
            .iter()
            .rev()
            .find(|e| e.mount_point == path)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        let mut flags =
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | locked_ms_flags(&entry.locked_flags());
        if read_only {
            flags |= MsFlags::MS_RDONLY;
        }
        Ok(mount(
            None::<&str>,
            path,
            None::<&str>,
            flags,
            None::<&str>,
        )?)
    }

    fn symlink_in_root(
        &self,
        rootfs: &Path,
        path: &Path,
        target: &Path,
        uid: u32,
        gid: u32,
    ) -> io::Result<()> {
        in_root::symlink(rootfs, path, target, in_root::Owner { uid, gid })
    }
}

/// `<dir>/<name>.tmp-<pid>`.
fn staging_path(path: &Path) -> io::Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path has no file name"))?;
    let mut staging: OsString = name.to_owned();
    staging.push(format!(".tmp-{}", std::process::id()));
    Ok(path.with_file_name(staging))
}

fn write_and_rename(staging: &Path, path: &Path, contents: &[u8]) -> io::Result<()> {
    remove_if_present(staging)?;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(staging)?;
    file.write_all(contents)?;
    file.sync_all()?;
    drop(file);
    fs::rename(staging, path)?;
    sync_parent(path)
}

/// Makes the rename durable.
fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => File::open(parent)?.sync_all(),
        _ => Ok(()),
    }
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Removes what is at `path` unless it is a directory (an error) or nothing.
fn remove_non_directory(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => Err(Errno::EISDIR.into()),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}
