//! cgroup v2 preparation before the daemons start, and the CPU quota copy after the container
//! started.
//!
//! Owns: deciding, from the mount table and `/proc/self/cgroup`, whether `/sys/fs/cgroup` is a
//! cgroup2 mount ([`hierarchy`]); on cgroup2 only, giving envbox a cgroup tree of its own
//! ([`plan_mount`]: a new cgroup namespace and a fresh cgroup2 mount when envbox is not at the
//! root of its view, a read-write remount when the mount is read-only), then moving every
//! process into an `init` child and enabling every available controller in `subtree_control`
//! ([`plan_delegation`]; the kernel refuses controllers for children while the group itself
//! holds processes). [`prepare`] reads the facts and carries the plans out through
//! [`CgroupSys`]; [`quota`] copies the outer CPU limit into the container's cgroup (sysbox does
//! not: sysbox issue 582). On cgroup v1 or hybrid hosts it changes nothing. It never picks the
//! container's cgroup path: the launcher passes it.

mod quota;
#[cfg(test)]
mod quota_tests;
#[cfg(test)]
mod recording;
mod sys;
#[cfg(test)]
mod tests;

use std::io;
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use crate::mountinfo::{MountInfoError, MountTable};

pub(crate) use quota::copy_cpu_quota;
#[cfg(test)]
pub(crate) use quota::{effective_quota, CpuQuota, QuotaWarning};
#[cfg(test)]
pub(crate) use recording::{CgroupCall, RecordingCgroupSys};
pub(crate) use sys::{CgroupSys, RealCgroupSys};

/// Where the cgroup hierarchy is mounted.
pub(crate) const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The child group every process is moved into.
pub(crate) const INIT_GROUP: &str = "init";
const MOUNTINFO: &str = "/proc/self/mountinfo";
const SELF_CGROUP: &str = "/proc/self/cgroup";

/// What `/sys/fs/cgroup` is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Hierarchy {
    /// A cgroup2 mount (pure cgroup v2).
    Unified {
        read_only: bool,
        /// The per-mount flags a remount must keep.
        locked_flags: Vec<String>,
    },
    /// Anything else: cgroup v1, or hybrid (v1 controllers, v2 at `unified/`).
    Legacy,
}

/// What `mounts` says about the mount at exactly `root` (the last one stacked there).
pub(crate) fn hierarchy(mounts: &MountTable, root: &Path) -> Hierarchy {
    match mounts.entries.iter().rev().find(|e| e.mount_point == root) {
        Some(entry) if entry.fs_type == "cgroup2" => Hierarchy::Unified {
            read_only: entry.is_read_only(),
            locked_flags: entry
                .locked_flags()
                .into_iter()
                .map(str::to_owned)
                .collect(),
        },
        _ => Hierarchy::Legacy,
    }
}

/// The cgroup v2 path (`0::<path>` line) in `/proc/self/cgroup` text.
pub(crate) fn unified_path(proc_self_cgroup: &str) -> Option<&str> {
    proc_self_cgroup
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(str::trim_end)
}

/// One change to the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    UnshareCgroupNamespace,
    Unmount {
        path: PathBuf,
    },
    MountCgroup2 {
        path: PathBuf,
    },
    RemountReadWrite {
        path: PathBuf,
        flags: Vec<String>,
    },
    CreateGroup {
        path: PathBuf,
    },
    /// Write `pid` to `procs`; `required` for envbox itself (the others may have exited).
    MoveProcess {
        pid: u32,
        procs: PathBuf,
        required: bool,
    },
    /// Write `+controller` to `file` (one controller per write: one refused one must not
    /// take the others down with it).
    EnableController {
        file: PathBuf,
        controller: String,
    },
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::UnshareCgroupNamespace => f.write_str("unshare(CLONE_NEWCGROUP)"),
            Step::Unmount { path } => write!(f, "unmounting {}", path.display()),
            Step::MountCgroup2 { path } => write!(f, "mounting cgroup2 on {}", path.display()),
            Step::RemountReadWrite { path, .. } => {
                write!(f, "remounting {} read-write", path.display())
            }
            Step::CreateGroup { path } => write!(f, "creating cgroup {}", path.display()),
            Step::MoveProcess { pid, procs, .. } => {
                write!(f, "moving process {pid} into {}", procs.display())
            }
            Step::EnableController { file, controller } => {
                write!(f, "writing +{controller} to {}", file.display())
            }
        }
    }
}

/// Makes `root` show a tree envbox owns. `own` is envbox's cgroup path: at the root of its
/// view (`/`), or in `/init` of a previous run, the mount already shows envbox's tree;
/// anywhere else (host cgroup namespace) envbox needs a namespace rooted at its group and a
/// cgroup2 mount made inside it. Nothing on [`Hierarchy::Legacy`].
pub(crate) fn plan_mount(root: &Path, hierarchy: &Hierarchy, own: &str) -> Vec<Step> {
    let Hierarchy::Unified {
        read_only,
        locked_flags,
    } = hierarchy
    else {
        return Vec::new();
    };
    let own_tree = own == "/" || own == format!("/{INIT_GROUP}");
    if !own_tree {
        return vec![
            Step::UnshareCgroupNamespace,
            Step::Unmount { path: root.into() },
            Step::MountCgroup2 { path: root.into() },
        ];
    }
    if *read_only {
        return vec![Step::RemountReadWrite {
            path: root.into(),
            flags: locked_flags.clone(),
        }];
    }
    Vec::new()
}

/// The root group's state, read after [`plan_mount`]'s steps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TreeFacts {
    /// `cgroup.controllers`: what may be enabled.
    pub controllers: Vec<String>,
    /// `cgroup.subtree_control`: what is enabled.
    pub subtree_control: Vec<String>,
    /// `cgroup.procs`: processes in the root group itself.
    pub procs: Vec<u32>,
    pub own_pid: u32,
}

/// Moves every process of the root group into `init`, then enables every controller not yet
/// enabled.
pub(crate) fn plan_delegation(root: &Path, facts: &TreeFacts) -> Vec<Step> {
    let mut steps = Vec::new();
    if !facts.procs.is_empty() {
        let init = root.join(INIT_GROUP);
        steps.push(Step::CreateGroup { path: init.clone() });
        steps.extend(facts.procs.iter().map(|&pid| Step::MoveProcess {
            pid,
            procs: init.join("cgroup.procs"),
            required: pid == facts.own_pid,
        }));
    }
    steps.extend(
        facts
            .controllers
            .iter()
            .filter(|c| !facts.subtree_control.contains(c))
            .map(|controller| Step::EnableController {
                file: root.join("cgroup.subtree_control"),
                controller: controller.clone(),
            }),
    );
    steps
}

/// A preparation that could not be done; the daemons must not start.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error(transparent)]
    MountInfo(#[from] MountInfoError),
    #[error("{path} has no cgroup v2 line (0::) although {CGROUP_ROOT} is cgroup2")]
    NoUnifiedPath { path: PathBuf },
    #[error("{path}: {text:?} is not a process id")]
    BadPid { path: PathBuf, text: String },
    #[error("{step} failed (the pod must be privileged to manage its cgroups): {source}")]
    Step { step: Step, source: io::Error },
}

/// A best-effort step that did not happen; preparation went on.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CgroupWarning {
    #[error("process {pid} could not be moved into {procs}: {source}")]
    ProcessNotMoved {
        pid: u32,
        procs: PathBuf,
        source: io::Error,
    },
    #[error("controller {controller} could not be enabled in {file}: {source}")]
    ControllerNotEnabled {
        controller: String,
        file: PathBuf,
        source: io::Error,
    },
}

/// What [`prepare`] found and did.
#[derive(Debug)]
pub(crate) struct CgroupReport {
    pub hierarchy: Hierarchy,
    /// The steps carried out (a failed best-effort step is in `warnings` instead).
    pub applied: Vec<Step>,
    pub warnings: Vec<CgroupWarning>,
}

/// Reads the facts and carries out both plans on `/sys/fs/cgroup`. On cgroup v1 or hybrid it
/// only reads the mount table. With [`RealCgroupSys`], call it on the thread that forks the
/// daemons (the namespace is per thread).
pub(crate) fn prepare(sys: &dyn CgroupSys) -> Result<CgroupReport, CgroupError> {
    let root = Path::new(CGROUP_ROOT);
    let mounts = MountTable::parse(&read(sys, Path::new(MOUNTINFO))?)?;
    let hierarchy = hierarchy(&mounts, root);
    let mut report = CgroupReport {
        hierarchy,
        applied: Vec::new(),
        warnings: Vec::new(),
    };
    if report.hierarchy == Hierarchy::Legacy {
        return Ok(report);
    }
    let self_cgroup = read(sys, Path::new(SELF_CGROUP))?;
    let own = unified_path(&self_cgroup).ok_or_else(|| CgroupError::NoUnifiedPath {
        path: SELF_CGROUP.into(),
    })?;
    for step in plan_mount(root, &report.hierarchy, own) {
        apply(sys, step, &mut report)?;
    }
    let facts = TreeFacts {
        controllers: words(&read(sys, &root.join("cgroup.controllers"))?),
        subtree_control: words(&read(sys, &root.join("cgroup.subtree_control"))?),
        procs: pids(sys, &root.join("cgroup.procs"))?,
        own_pid: sys.own_pid(),
    };
    for step in plan_delegation(root, &facts) {
        apply(sys, step, &mut report)?;
    }
    Ok(report)
}

fn apply(sys: &dyn CgroupSys, step: Step, report: &mut CgroupReport) -> Result<(), CgroupError> {
    let result = match &step {
        Step::UnshareCgroupNamespace => sys.unshare_cgroup_namespace(),
        Step::Unmount { path } => sys.unmount(path),
        Step::MountCgroup2 { path } => sys.mount_cgroup2(path),
        Step::RemountReadWrite { path, flags } => sys.remount_read_write(path, flags),
        Step::CreateGroup { path } => sys.mkdir(path),
        Step::MoveProcess { pid, procs, .. } => sys.write(procs, &pid.to_string()),
        Step::EnableController { file, controller } => sys.write(file, &format!("+{controller}")),
    };
    let Err(source) = result else {
        report.applied.push(step);
        return Ok(());
    };
    match step {
        Step::MoveProcess {
            required: false,
            pid,
            procs,
        } => {
            // ESRCH: it exited meanwhile, nothing left to move.
            if source.raw_os_error() != Some(Errno::ESRCH as i32) {
                report
                    .warnings
                    .push(CgroupWarning::ProcessNotMoved { pid, procs, source });
            }
            Ok(())
        }
        Step::EnableController { file, controller } => {
            report.warnings.push(CgroupWarning::ControllerNotEnabled {
                controller,
                file,
                source,
            });
            Ok(())
        }
        step => Err(CgroupError::Step { step, source }),
    }
}

fn read(sys: &dyn CgroupSys, path: &Path) -> Result<String, CgroupError> {
    sys.read(path).map_err(|source| CgroupError::Read {
        path: path.into(),
        source,
    })
}

fn words(text: &str) -> Vec<String> {
    text.split_whitespace().map(str::to_owned).collect()
}

fn pids(sys: &dyn CgroupSys, path: &Path) -> Result<Vec<u32>, CgroupError> {
    read(sys, path)?
        .split_whitespace()
        .map(|text| {
            text.parse().map_err(|_| CgroupError::BadPid {
                path: path.into(),
                text: text.to_owned(),
            })
        })
        .collect()
}
