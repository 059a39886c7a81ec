//! The outer CPU limit, copied into the inner container's cgroup (sysbox does not propagate it:
//! sysbox issue 582). Every failure is a [`QuotaWarning`]: a missing limit never stops a
//! workspace.
//!
//! Owns: finding envbox's own CPU cgroup (cgroup2 at `/sys/fs/cgroup`, else the v1 `cpu`
//! controller's mount), the effective limit (the strictest `cpu.max` or
//! `cpu.cfs_quota_us`/`cpu.cfs_period_us` from envbox's group up to the top of the mount),
//! and writing it in the same format to the given inner group. It never creates groups.

use std::io;
use std::path::{Path, PathBuf};

use crate::mountinfo::{MountEntry, MountInfoError, MountTable};

use super::{unified_path, CgroupSys, CGROUP_ROOT, MOUNTINFO, SELF_CGROUP};

/// A CPU bandwidth limit: `quota_us` of CPU time per `period_us`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CpuQuota {
    pub quota_us: u64,
    pub period_us: u64,
}

impl CpuQuota {
    /// `cpu.max` text: `max 100000` is no limit (`None`). `None` outside for text that is
    /// neither.
    pub(crate) fn parse_cpu_max(text: &str) -> Option<Option<CpuQuota>> {
        let mut fields = text.split_whitespace();
        let quota = fields.next()?;
        let period = fields.next().map_or(Some(100_000), |p| p.parse().ok())?;
        if fields.next().is_some() {
            return None;
        }
        if quota == "max" {
            return Some(None);
        }
        Some(Some(CpuQuota {
            quota_us: quota.parse().ok()?,
            period_us: period,
        }))
    }

    /// cgroup v1 `cpu.cfs_quota_us` and `cpu.cfs_period_us`: a quota of `-1` is no limit.
    pub(crate) fn parse_cfs(quota: &str, period: &str) -> Option<Option<CpuQuota>> {
        let quota: i64 = quota.trim().parse().ok()?;
        let period: u64 = period.trim().parse().ok()?;
        if quota < 0 {
            return Some(None);
        }
        Some(Some(CpuQuota {
            quota_us: quota as u64,
            period_us: period,
        }))
    }

    /// True when this limit allows less CPU than `other`.
    pub(crate) fn is_stricter_than(&self, other: &CpuQuota) -> bool {
        u128::from(self.quota_us) * u128::from(other.period_us)
            < u128::from(other.quota_us) * u128::from(self.period_us)
    }
}

/// The CPU limit could not be read or copied; the container runs without it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum QuotaWarning {
    #[error("CPU limit not copied: {0}")]
    MountInfo(#[from] MountInfoError),
    #[error("CPU limit not copied: reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("CPU limit not copied: no cpu cgroup controller is mounted (and {CGROUP_ROOT} is not cgroup2)")]
    NoCpuController,
    #[error("CPU limit not copied: {path} does not name envbox's cpu cgroup")]
    NoOwnGroup { path: PathBuf },
    #[error("CPU limit not copied: {path} holds {text:?}, not a CPU limit")]
    Unparsable { path: PathBuf, text: String },
    #[error("CPU limit not copied: writing {contents:?} to {path}: {source}")]
    Write {
        path: PathBuf,
        contents: String,
        source: io::Error,
    },
}

/// Where the CPU limits live.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CpuGroups {
    /// cgroup2: `cpu.max`.
    Unified { mount_point: PathBuf, own: PathBuf },
    /// cgroup v1 `cpu` controller: `cpu.cfs_quota_us` and `cpu.cfs_period_us`.
    Legacy { mount_point: PathBuf, own: PathBuf },
}

impl CpuGroups {
    fn mount_point(&self) -> &Path {
        match self {
            CpuGroups::Unified { mount_point, .. } | CpuGroups::Legacy { mount_point, .. } => {
                mount_point
            }
        }
    }
}

/// envbox's own group directory under `entry`, given its cgroup path `own`.
fn group_dir(entry: &MountEntry, own: &str) -> PathBuf {
    match Path::new(own).strip_prefix(&entry.root) {
        Ok(relative) => entry.mount_point.join(relative),
        Err(_) => entry.mount_point.clone(),
    }
}

fn locate(mounts: &MountTable, self_cgroup: &str) -> Result<CpuGroups, QuotaWarning> {
    let root = Path::new(CGROUP_ROOT);
    let top = mounts.entries.iter().rev().find(|e| e.mount_point == root);
    if let Some(entry) = top.filter(|e| e.fs_type == "cgroup2") {
        let own = unified_path(self_cgroup).ok_or(QuotaWarning::NoOwnGroup {
            path: SELF_CGROUP.into(),
        })?;
        return Ok(CpuGroups::Unified {
            mount_point: entry.mount_point.clone(),
            own: group_dir(entry, own),
        });
    }
    let entry = mounts
        .entries
        .iter()
        .rev()
        .find(|e| e.fs_type == "cgroup" && e.super_options.iter().any(|o| o == "cpu"))
        .ok_or(QuotaWarning::NoCpuController)?;
    // `N:cpu,cpuacct:/path`
    let own = self_cgroup
        .lines()
        .filter_map(|line| {
            let mut fields = line.splitn(3, ':');
            fields.next()?;
            fields.next().zip(fields.next())
        })
        .find(|(controllers, _)| controllers.split(',').any(|c| c == "cpu"))
        .map(|(_, path)| path.trim_end())
        .ok_or(QuotaWarning::NoOwnGroup {
            path: SELF_CGROUP.into(),
        })?;
    Ok(CpuGroups::Legacy {
        mount_point: entry.mount_point.clone(),
        own: group_dir(entry, own),
    })
}

fn read(sys: &dyn CgroupSys, path: PathBuf) -> Result<Option<String>, QuotaWarning> {
    match sys.read(&path) {
        Ok(text) => Ok(Some(text)),
        // The top of a hierarchy (the real root group) has no limit files.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(QuotaWarning::Read { path, source }),
    }
}

/// The limit set on one group directory, if any.
fn group_limit(
    sys: &dyn CgroupSys,
    groups: &CpuGroups,
    dir: &Path,
) -> Result<Option<CpuQuota>, QuotaWarning> {
    let unparsable = |path: PathBuf, text: String| QuotaWarning::Unparsable { path, text };
    match groups {
        CpuGroups::Unified { .. } => {
            let path = dir.join("cpu.max");
            let Some(text) = read(sys, path.clone())? else {
                return Ok(None);
            };
            CpuQuota::parse_cpu_max(&text).ok_or_else(|| unparsable(path, text))
        }
        CpuGroups::Legacy { .. } => {
            let quota_path = dir.join("cpu.cfs_quota_us");
            let (Some(quota), Some(period)) = (
                read(sys, quota_path.clone())?,
                read(sys, dir.join("cpu.cfs_period_us"))?,
            ) else {
                return Ok(None);
            };
            CpuQuota::parse_cfs(&quota, &period).ok_or_else(|| {
                unparsable(quota_path, format!("{} / {}", quota.trim(), period.trim()))
            })
        }
    }
}

fn find_groups(sys: &dyn CgroupSys) -> Result<CpuGroups, QuotaWarning> {
    let read_file = |path: &str| {
        sys.read(Path::new(path))
            .map_err(|source| QuotaWarning::Read {
                path: path.into(),
                source,
            })
    };
    let mounts = MountTable::parse(&read_file(MOUNTINFO)?)?;
    locate(&mounts, &read_file(SELF_CGROUP)?)
}

/// The strictest CPU limit on envbox's group and its parents up to the top of the mount;
/// `None` when there is none.
#[cfg(test)]
pub(crate) fn effective_quota(sys: &dyn CgroupSys) -> Result<Option<CpuQuota>, QuotaWarning> {
    strictest_limit(sys, &find_groups(sys)?)
}

fn strictest_limit(
    sys: &dyn CgroupSys,
    groups: &CpuGroups,
) -> Result<Option<CpuQuota>, QuotaWarning> {
    let own = match groups {
        CpuGroups::Unified { own, .. } | CpuGroups::Legacy { own, .. } => own.clone(),
    };
    let mut strictest: Option<CpuQuota> = None;
    for dir in own
        .ancestors()
        .take_while(|d| d.starts_with(groups.mount_point()))
    {
        if let Some(limit) = group_limit(sys, groups, dir)? {
            if strictest.is_none_or(|s| limit.is_stricter_than(&s)) {
                strictest = Some(limit);
            }
        }
    }
    Ok(strictest)
}

/// Copies the effective outer CPU limit into the inner group `inner`, a cgroup path as in the
/// OCI spec's `cgroupsPath` (`/envbox/workspace_cvm`: from the top of the mounted
/// hierarchy). Returns the limit written, `None` when the outer one is unlimited (nothing is
/// written then).
pub(crate) fn copy_cpu_quota(
    sys: &dyn CgroupSys,
    inner: &Path,
) -> Result<Option<CpuQuota>, QuotaWarning> {
    let groups = find_groups(sys)?;
    let Some(limit) = strictest_limit(sys, &groups)? else {
        return Ok(None);
    };
    let relative = inner.strip_prefix("/").unwrap_or(inner);
    let dir = groups.mount_point().join(relative);
    let writes = match groups {
        CpuGroups::Unified { .. } => vec![(
            dir.join("cpu.max"),
            format!("{} {}", limit.quota_us, limit.period_us),
        )],
        // The period first: the kernel checks the quota against the period in place.
        CpuGroups::Legacy { .. } => vec![
            (dir.join("cpu.cfs_period_us"), limit.period_us.to_string()),
            (dir.join("cpu.cfs_quota_us"), limit.quota_us.to_string()),
        ],
    };
    for (path, contents) in writes {
        sys.write(&path, &contents)
            .map_err(|source| QuotaWarning::Write {
                path,
                contents,
                source,
            })?;
    }
    Ok(Some(limit))
}
