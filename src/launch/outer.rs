//! Checks and adjustments on the outer side around the start: that the runtime can reach the
//! rootfs, and the pod's CPU limit copied into the workspace's cgroup. Only the reachability
//! check is fatal (its failure would otherwise surface as a bare "permission denied").

use std::path::{Path, PathBuf};

use super::LaunchError;
use crate::progress::{self, warn_all, Kind};
use crate::supervise::cgroup;

/// Copies the pod's CPU limit into the workspace's cgroup (sysbox does not: its issue 582), so
/// tools inside see the limit. Only without `CODER_CPUS` (which sets the container's own). Never
/// fatal.
pub(super) fn mirror_cpu_quota(pid: u32) {
    let Some(inner) = cpu_cgroup_of(pid) else {
        warn_all([format!("the workspace's CPU cgroup was not found in /proc/{pid}/cgroup; the pod's CPU limit is not copied")]);
        return;
    };
    match cgroup::copy_cpu_quota(&cgroup::RealCgroupSys, &inner) {
        Ok(Some(quota)) => progress::emit(
            Kind::Info,
            &format!(
                "Copied the pod's CPU limit ({} us per {} us) into the workspace",
                quota.quota_us, quota.period_us
            ),
        ),
        Ok(None) => {}
        Err(warning) => warn_all([warning]),
    }
}

/// The cgroup of `pid` holding the CPU controller: the unified one (`0::/path`) or the v1 line
/// whose controllers include `cpu`.
fn cpu_cgroup_of(pid: u32) -> Option<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    cpu_cgroup_in(&text)
}

fn cpu_cgroup_in(proc_cgroup: &str) -> Option<PathBuf> {
    let mut unified = None;
    for line in proc_cgroup.lines() {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        if controllers.split(',').any(|c| c == "cpu") {
            return Some(PathBuf::from(path));
        }
        if controllers.is_empty() {
            unified = Some(PathBuf::from(path));
        }
    }
    unified
}

/// Every directory above the rootfs must be searchable by the workspace's root (the shifted
/// uid, which the runtime is once inside the user namespace), or creating the container fails
/// with a bare "permission denied".
pub(super) fn check_searchable(rootfs: &Path) -> Result<(), LaunchError> {
    use std::os::unix::fs::MetadataExt;
    for dir in rootfs.ancestors().skip(1) {
        let Ok(meta) = std::fs::metadata(dir) else {
            continue;
        };
        let mode = meta.mode() & 0o7777;
        let shifted = crate::image::ID_SHIFT;
        let searchable = mode & 0o001 != 0
            || (meta.uid() == shifted && mode & 0o100 != 0)
            || (meta.gid() == shifted && mode & 0o010 != 0);
        if !searchable {
            return Err(LaunchError::Unreachable {
                path: dir.to_owned(),
                mode,
                uid: meta.uid(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_private_directory_above_the_rootfs_is_named() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let private = dir.path().join("private");
        let rootfs = private.join("state/container/merged");
        std::fs::create_dir_all(&rootfs).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
        let error = check_searchable(&rootfs).unwrap_err().to_string();
        assert!(error.contains(&private.display().to_string()), "{error}");
        assert!(error.contains("mode 700"), "{error}");
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o711)).unwrap();
        check_searchable(&rootfs).unwrap();
    }

    #[test]
    fn the_cpu_cgroup_is_the_v1_cpu_line_or_the_unified_one() {
        let v1 = "12:memory:/a\n4:cpu,cpuacct:/workspace_cvm\n0::/init\n";
        assert_eq!(cpu_cgroup_in(v1), Some(PathBuf::from("/workspace_cvm")));
        let v2 = "0::/envbox/workspace_cvm\n";
        assert_eq!(
            cpu_cgroup_in(v2),
            Some(PathBuf::from("/envbox/workspace_cvm"))
        );
        assert_eq!(cpu_cgroup_in("garbage"), None);
    }
}
