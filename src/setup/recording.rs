//! [`RecordingSys`]: a [`Sys`] that records every primitive call instead of making it, and can
//! be told to fail chosen calls, so tests check the order, the arguments and the error paths of
//! [`apply`](super::apply) without root.
//!
//! Owns: the [`Call`] log and failure injection. It must never touch the filesystem. Compiled
//! only in test builds.

use std::cell::RefCell;
use std::io;
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use super::Sys;

/// One recorded primitive call, with its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Call {
    MkdirAll {
        path: PathBuf,
    },
    Chown {
        path: PathBuf,
        uid: u32,
        gid: u32,
    },
    Chmod {
        path: PathBuf,
        mode: u32,
    },
    WriteFileAtomic {
        path: PathBuf,
        contents: Vec<u8>,
    },
    MknodChar {
        path: PathBuf,
        major: u64,
        minor: u64,
        mode: u32,
    },
    Umount {
        path: PathBuf,
    },
    Remount {
        path: PathBuf,
        read_only: bool,
    },
    SymlinkInRoot {
        rootfs: PathBuf,
        path: PathBuf,
        target: PathBuf,
        uid: u32,
        gid: u32,
    },
}

/// The kind of a [`Call`], to aim an injected failure at one primitive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    MkdirAll,
    Chown,
    Chmod,
    WriteFileAtomic,
    MknodChar,
    Umount,
    Remount,
    SymlinkInRoot,
}

impl Call {
    /// The primitive called.
    pub(crate) fn op(&self) -> Op {
        match self {
            Call::MkdirAll { .. } => Op::MkdirAll,
            Call::Chown { .. } => Op::Chown,
            Call::Chmod { .. } => Op::Chmod,
            Call::WriteFileAtomic { .. } => Op::WriteFileAtomic,
            Call::MknodChar { .. } => Op::MknodChar,
            Call::Umount { .. } => Op::Umount,
            Call::Remount { .. } => Op::Remount,
            Call::SymlinkInRoot { .. } => Op::SymlinkInRoot,
        }
    }

    /// The path operated on (for [`Call::SymlinkInRoot`], the path inside the rootfs).
    pub(crate) fn path(&self) -> &Path {
        match self {
            Call::MkdirAll { path }
            | Call::Chown { path, .. }
            | Call::Chmod { path, .. }
            | Call::WriteFileAtomic { path, .. }
            | Call::MknodChar { path, .. }
            | Call::Umount { path }
            | Call::Remount { path, .. }
            | Call::SymlinkInRoot { path, .. } => path,
        }
    }
}

#[derive(Debug)]
struct Failure {
    op: Option<Op>,
    path: PathBuf,
    errno: Errno,
    /// Fails only the first matching call.
    once: bool,
    used: std::cell::Cell<bool>,
}

impl Failure {
    fn matches(&self, call: &Call) -> bool {
        self.path == call.path()
            && self.op.is_none_or(|op| op == call.op())
            && !(self.once && self.used.get())
    }
}

/// Records calls; fails those matching an injected failure (the failed call is recorded too).
#[derive(Debug, Default)]
pub(crate) struct RecordingSys {
    calls: RefCell<Vec<Call>>,
    failures: Vec<Failure>,
}

impl RecordingSys {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Every primitive on `path` fails with `errno`.
    pub(crate) fn fail_path(mut self, path: impl Into<PathBuf>, errno: Errno) -> Self {
        self.failures.push(Failure {
            op: None,
            path: path.into(),
            errno,
            once: false,
            used: Default::default(),
        });
        self
    }

    /// The primitive `op` on `path` fails with `errno`.
    pub(crate) fn fail_op(mut self, op: Op, path: impl Into<PathBuf>, errno: Errno) -> Self {
        self.failures.push(Failure {
            op: Some(op),
            path: path.into(),
            errno,
            once: false,
            used: Default::default(),
        });
        self
    }

    /// Only the first call of `op` on `path` fails with `errno`; later ones succeed.
    pub(crate) fn fail_op_once(mut self, op: Op, path: impl Into<PathBuf>, errno: Errno) -> Self {
        self.failures.push(Failure {
            op: Some(op),
            path: path.into(),
            errno,
            once: true,
            used: Default::default(),
        });
        self
    }

    /// The calls made so far, in order.
    pub(crate) fn calls(&self) -> Vec<Call> {
        self.calls.borrow().clone()
    }

    fn record(&self, call: Call) -> io::Result<()> {
        let failure = self.failures.iter().find(|f| f.matches(&call));
        self.calls.borrow_mut().push(call);
        match failure {
            Some(f) => {
                f.used.set(true);
                Err(f.errno.into())
            }
            None => Ok(()),
        }
    }
}

impl Sys for RecordingSys {
    fn mkdir_all(&self, path: &Path) -> io::Result<()> {
        self.record(Call::MkdirAll { path: path.into() })
    }

    fn chown(&self, path: &Path, uid: u32, gid: u32) -> io::Result<()> {
        self.record(Call::Chown {
            path: path.into(),
            uid,
            gid,
        })
    }

    fn chmod(&self, path: &Path, mode: u32) -> io::Result<()> {
        self.record(Call::Chmod {
            path: path.into(),
            mode,
        })
    }

    fn write_file_atomic(&self, path: &Path, contents: &[u8]) -> io::Result<()> {
        self.record(Call::WriteFileAtomic {
            path: path.into(),
            contents: contents.to_vec(),
        })
    }

    fn mknod_char(&self, path: &Path, major: u64, minor: u64, mode: u32) -> io::Result<()> {
        self.record(Call::MknodChar {
            path: path.into(),
            major,
            minor,
            mode,
        })
    }

    fn umount(&self, path: &Path) -> io::Result<()> {
        self.record(Call::Umount { path: path.into() })
    }

    fn remount(&self, path: &Path, read_only: bool) -> io::Result<()> {
        self.record(Call::Remount {
            path: path.into(),
            read_only,
        })
    }

    fn symlink_in_root(
        &self,
        rootfs: &Path,
        path: &Path,
        target: &Path,
        uid: u32,
        gid: u32,
    ) -> io::Result<()> {
        self.record(Call::SymlinkInRoot {
            rootfs: rootfs.into(),
            path: path.into(),
            target: target.into(),
            uid,
            gid,
        })
    }
}
