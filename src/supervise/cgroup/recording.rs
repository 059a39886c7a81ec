//! [`RecordingCgroupSys`]: a [`CgroupSys`] over a fake file table that records every change
//! instead of making it, and fails chosen calls, so the planners and [`prepare`](super::prepare)
//! are tested without root or a cgroup v2 host.
//!
//! Owns: the fake files, the [`CgroupCall`] log and failure injection. It must never touch
//! the real filesystem. Compiled only in test builds.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use super::CgroupSys;

/// One recorded change, with its arguments (reads are not recorded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CgroupCall {
    Write { path: PathBuf, contents: String },
    Mkdir { path: PathBuf },
    UnshareCgroupNamespace,
    Unmount { path: PathBuf },
    MountCgroup2 { path: PathBuf },
    RemountReadWrite { path: PathBuf, flags: Vec<String> },
}

impl CgroupCall {
    fn path(&self) -> Option<&Path> {
        match self {
            CgroupCall::Write { path, .. }
            | CgroupCall::Mkdir { path }
            | CgroupCall::Unmount { path }
            | CgroupCall::MountCgroup2 { path }
            | CgroupCall::RemountReadWrite { path, .. } => Some(path),
            CgroupCall::UnshareCgroupNamespace => None,
        }
    }
}

/// Fake files, recorded changes, injected failures. Writes do not change the fake files.
#[derive(Debug)]
pub(crate) struct RecordingCgroupSys {
    files: BTreeMap<PathBuf, String>,
    pid: u32,
    calls: RefCell<Vec<CgroupCall>>,
    /// `(path, contents or any, errno)`; `None` path = the unshare.
    failures: Vec<(Option<PathBuf>, Option<String>, Errno)>,
}

impl RecordingCgroupSys {
    /// No files; envbox's pid is `pid`.
    pub(crate) fn new(pid: u32) -> Self {
        RecordingCgroupSys {
            files: BTreeMap::new(),
            pid,
            calls: RefCell::new(Vec::new()),
            failures: Vec::new(),
        }
    }

    /// A file `read` answers with `contents`.
    pub(crate) fn file(mut self, path: impl Into<PathBuf>, contents: &str) -> Self {
        self.files.insert(path.into(), contents.to_owned());
        self
    }

    /// Every change on `path` fails with `errno`.
    pub(crate) fn fail(mut self, path: impl Into<PathBuf>, errno: Errno) -> Self {
        self.failures.push((Some(path.into()), None, errno));
        self
    }

    /// Writing exactly `contents` to `path` fails with `errno`.
    pub(crate) fn fail_write(
        mut self,
        path: impl Into<PathBuf>,
        contents: &str,
        errno: Errno,
    ) -> Self {
        self.failures
            .push((Some(path.into()), Some(contents.to_owned()), errno));
        self
    }

    /// The unshare fails with `errno`.
    pub(crate) fn fail_unshare(mut self, errno: Errno) -> Self {
        self.failures.push((None, None, errno));
        self
    }

    /// The changes made so far, in order.
    pub(crate) fn calls(&self) -> Vec<CgroupCall> {
        self.calls.borrow().clone()
    }

    fn record(&self, call: CgroupCall) -> io::Result<()> {
        let contents = match &call {
            CgroupCall::Write { contents, .. } => Some(contents.as_str()),
            _ => None,
        };
        let failure = self.failures.iter().find(|(path, want, _)| {
            path.as_deref() == call.path()
                && want.as_deref().is_none_or(|want| Some(want) == contents)
        });
        let result = failure.map_or(Ok(()), |(_, _, errno)| Err((*errno).into()));
        self.calls.borrow_mut().push(call);
        result
    }
}

impl CgroupSys for RecordingCgroupSys {
    fn read(&self, path: &Path) -> io::Result<String> {
        self.files
            .get(path)
            .cloned()
            .ok_or_else(|| Errno::ENOENT.into())
    }

    fn write(&self, path: &Path, contents: &str) -> io::Result<()> {
        self.record(CgroupCall::Write {
            path: path.into(),
            contents: contents.into(),
        })
    }

    fn mkdir(&self, path: &Path) -> io::Result<()> {
        self.record(CgroupCall::Mkdir { path: path.into() })
    }

    fn unshare_cgroup_namespace(&self) -> io::Result<()> {
        self.record(CgroupCall::UnshareCgroupNamespace)
    }

    fn unmount(&self, path: &Path) -> io::Result<()> {
        self.record(CgroupCall::Unmount { path: path.into() })
    }

    fn mount_cgroup2(&self, path: &Path) -> io::Result<()> {
        self.record(CgroupCall::MountCgroup2 { path: path.into() })
    }

    fn remount_read_write(&self, path: &Path, flags: &[String]) -> io::Result<()> {
        self.record(CgroupCall::RemountReadWrite {
            path: path.into(),
            flags: flags.to_vec(),
        })
    }

    fn own_pid(&self) -> u32 {
        self.pid
    }
}
