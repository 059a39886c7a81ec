//! The host-side setup a container plan implies, and the only module that performs it.
//!
//! Owns: [`Action`], the explicit list of side effects the spec generator asks for (device
//! nodes, generated `/etc` files, mount-source ownership, `/proc` GPU unmounts, symlinks inside
//! the rootfs), and [`apply`], which carries them out through the [`Sys`] trait. The real
//! implementation makes the syscalls; the recording one lets tests check the order and
//! arguments without root. Nothing here decides *what* to do: that is `spec`'s job.

mod error;
mod in_root;
#[cfg(test)]
mod recording;
mod sys;

use std::io;
use std::path::{Path, PathBuf};

use nix::errno::Errno;

pub use error::{SetupError, SetupWarning, Step};
#[cfg(test)]
pub(crate) use recording::{Call, Op, RecordingSys};
pub use sys::{RealSys, Sys};

/// One side effect. Paths are absolute in the outer container unless said otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `mkdir -p`, then chown and chmod the last component.
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// Its owner.
        uid: u32,
        /// Its group.
        gid: u32,
    },
    /// Write the whole file atomically (staging file + rename), owned and mode as given.
    WriteFile {
        /// The file.
        path: PathBuf,
        /// Its whole content.
        contents: String,
        /// Its permission bits.
        mode: u32,
        /// Its owner.
        uid: u32,
        /// Its group.
        gid: u32,
    },
    /// Create (or replace) a character device node, then chown and chmod it.
    CharDevice {
        /// The node.
        path: PathBuf,
        /// The device's major number.
        major: u64,
        /// The device's minor number.
        minor: u64,
        /// Its permission bits.
        mode: u32,
        /// Its owner.
        uid: u32,
        /// Its group.
        gid: u32,
    },
    /// Change the owner of an existing path (not recursive, does not follow a final symlink).
    Chown {
        /// The path.
        path: PathBuf,
        /// The new owner.
        uid: u32,
        /// The new group.
        gid: u32,
    },
    /// Unmount if mounted; failure is a warning, never fatal.
    UnmountBestEffort {
        /// The mount point.
        path: PathBuf,
    },
    /// Create a symlink at `path` *inside* `rootfs` (resolved in-root, never escaping it),
    /// replacing a non-directory already there; owned by `uid:gid`.
    RootfsSymlink {
        /// The container's root filesystem.
        rootfs: PathBuf,
        /// The link, as seen inside `rootfs`.
        path: PathBuf,
        /// What it points to (not resolved).
        target: PathBuf,
        /// Its owner.
        uid: u32,
        /// Its group.
        gid: u32,
    },
}

/// Carries out `actions` in order through `sys`. Stops at the first failure, except that an
/// [`Action::UnmountBestEffort`] that fails only adds a warning. Modes are set after owners,
/// because `chown` clears the setuid/setgid bits.
pub fn apply(actions: &[Action], sys: &dyn Sys) -> Result<Vec<SetupWarning>, SetupError> {
    let mut warnings = Vec::new();
    for action in actions {
        warnings.extend(apply_one(action, sys)?);
    }
    Ok(warnings)
}

/// Changes the owner of a mount source. A read-only mount point (a Kubernetes `readOnly`
/// volume) is remounted read-write for the change and read-only again right after, so the
/// source stays read-only outside as well as inside (the Go envbox left it read-write).
fn chown_mount_source(sys: &dyn Sys, path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    match sys.chown(path, uid, gid) {
        Err(e) if e.raw_os_error() == Some(Errno::EROFS as i32) => {
            if sys.remount(path, false).is_err() {
                // Not a mount point of its own (inside a read-only mount): the chown's error
                // is the one that explains it.
                return Err(e);
            }
            let changed = sys.chown(path, uid, gid);
            let restored = sys.remount(path, true);
            changed.and(restored)
        }
        other => other,
    }
}

fn apply_one(action: &Action, sys: &dyn Sys) -> Result<Option<SetupWarning>, SetupError> {
    match action {
        Action::UnmountBestEffort { path } => return Ok(unmount(sys, path)),
        Action::CreateDir {
            path,
            mode,
            uid,
            gid,
        } => create_dir(sys, path, *mode, *uid, *gid).map_err(|(step, source)| {
            SetupError::CreateDir {
                path: path.clone(),
                step,
                source,
            }
        }),
        Action::WriteFile {
            path,
            contents,
            mode,
            uid,
            gid,
        } => write_file(sys, path, contents, *mode, *uid, *gid).map_err(|(step, source)| {
            SetupError::WriteFile {
                path: path.clone(),
                step,
                source,
            }
        }),
        Action::CharDevice {
            path,
            major,
            minor,
            mode,
            uid,
            gid,
        } => {
            char_device(sys, path, (*major, *minor), *mode, *uid, *gid).map_err(|(step, source)| {
                SetupError::CharDevice {
                    path: path.clone(),
                    major: *major,
                    minor: *minor,
                    step,
                    source,
                }
            })
        }
        Action::Chown { path, uid, gid } => {
            chown_mount_source(sys, path, *uid, *gid).map_err(|source| SetupError::Chown {
                path: path.clone(),
                uid: *uid,
                gid: *gid,
                source,
            })
        }
        Action::RootfsSymlink {
            rootfs,
            path,
            target,
            uid,
            gid,
        } => sys
            .symlink_in_root(rootfs, path, target, *uid, *gid)
            .map_err(|source| SetupError::RootfsSymlink {
                rootfs: rootfs.clone(),
                path: path.clone(),
                target: target.clone(),
                source,
            }),
    }?;
    Ok(None)
}

/// The step that failed and why.
type StepResult = Result<(), (Step, io::Error)>;

fn step(step: Step, result: io::Result<()>) -> StepResult {
    result.map_err(|source| (step, source))
}

/// Owner first, then mode: `chown` clears setuid/setgid.
fn own_and_mode(sys: &dyn Sys, path: &Path, mode: u32, uid: u32, gid: u32) -> StepResult {
    step(Step::Chown { uid, gid }, sys.chown(path, uid, gid))?;
    step(Step::Chmod { mode }, sys.chmod(path, mode))
}

fn create_dir(sys: &dyn Sys, path: &Path, mode: u32, uid: u32, gid: u32) -> StepResult {
    step(Step::Mkdir, sys.mkdir_all(path))?;
    own_and_mode(sys, path, mode, uid, gid)
}

/// Files and nodes go under the run dir, whose sub-directories may not exist yet.
fn create_parent(sys: &dyn Sys, path: &Path) -> StepResult {
    match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => step(Step::CreateParent, sys.mkdir_all(parent)),
        None => Ok(()),
    }
}

fn write_file(
    sys: &dyn Sys,
    path: &Path,
    contents: &str,
    mode: u32,
    uid: u32,
    gid: u32,
) -> StepResult {
    create_parent(sys, path)?;
    step(
        Step::Write,
        sys.write_file_atomic(path, contents.as_bytes()),
    )?;
    own_and_mode(sys, path, mode, uid, gid)
}

fn char_device(
    sys: &dyn Sys,
    path: &Path,
    (major, minor): (u64, u64),
    mode: u32,
    uid: u32,
    gid: u32,
) -> StepResult {
    create_parent(sys, path)?;
    step(Step::Mknod, sys.mknod_char(path, major, minor, mode))?;
    own_and_mode(sys, path, mode, uid, gid)
}

/// Never fails: not being mounted is the common case, anything else is worth a warning only.
fn unmount(sys: &dyn Sys, path: &Path) -> Option<SetupWarning> {
    let source = sys.umount(path).err()?;
    let not_mounted = matches!(
        source.raw_os_error().map(Errno::from_raw),
        Some(Errno::EINVAL | Errno::ENOENT)
    );
    Some(if not_mounted {
        SetupWarning::NotMounted { path: path.into() }
    } else {
        SetupWarning::UnmountFailed {
            path: path.into(),
            source,
        }
    })
}

impl std::fmt::Display for Action {
    /// One line, for logs and golden files: `mknod /dev/envbox/fuse c 10:229 0666 100000:100000`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::CreateDir {
                path,
                mode,
                uid,
                gid,
            } => {
                write!(f, "mkdir -p {} {mode:04o} {uid}:{gid}", path.display())
            }
            Action::WriteFile {
                path,
                contents,
                mode,
                uid,
                gid,
            } => write!(
                f,
                "write {} {mode:04o} {uid}:{gid} {contents:?}",
                path.display()
            ),
            Action::CharDevice {
                path,
                major,
                minor,
                mode,
                uid,
                gid,
            } => write!(
                f,
                "mknod {} c {major}:{minor} {mode:04o} {uid}:{gid}",
                path.display()
            ),
            Action::Chown { path, uid, gid } => write!(f, "chown {} {uid}:{gid}", path.display()),
            Action::UnmountBestEffort { path } => {
                write!(f, "umount {} (if mounted)", path.display())
            }
            Action::RootfsSymlink {
                rootfs,
                path,
                target,
                uid,
                gid,
            } => write!(
                f,
                "symlink {} -> {} {uid}:{gid} (in rootfs {})",
                path.display(),
                target.display(),
                rootfs.display()
            ),
        }
    }
}

#[cfg(test)]
mod real_tests;
#[cfg(test)]
mod tests;
