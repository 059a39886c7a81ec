//! The CPU quota copy through [`RecordingCgroupSys`]: parsing, the strictest limit from
//! envbox's group up, v2 and v1 writes, warnings.

use std::path::Path;

use nix::errno::Errno;

use super::tests::{write, HOST_NS_MOUNTINFO, HYBRID_MOUNTINFO, POD_MOUNTINFO_RO};
use super::*;

#[test]
fn quota_texts_parse() {
    let q = |quota_us, period_us| {
        Some(Some(CpuQuota {
            quota_us,
            period_us,
        }))
    };
    assert_eq!(CpuQuota::parse_cpu_max("max 100000\n"), Some(None));
    assert_eq!(CpuQuota::parse_cpu_max("max"), Some(None));
    assert_eq!(
        CpuQuota::parse_cpu_max("150000 100000\n"),
        q(150_000, 100_000)
    );
    assert_eq!(CpuQuota::parse_cpu_max("abc 100000"), None);
    assert_eq!(CpuQuota::parse_cpu_max(""), None);
    assert_eq!(CpuQuota::parse_cfs("-1\n", "100000\n"), Some(None));
    assert_eq!(CpuQuota::parse_cfs("50000", "100000"), q(50_000, 100_000));
    assert_eq!(CpuQuota::parse_cfs("x", "100000"), None);
    let half = CpuQuota {
        quota_us: 50_000,
        period_us: 100_000,
    };
    let one = CpuQuota {
        quota_us: 20_000,
        period_us: 20_000,
    };
    assert!(half.is_stricter_than(&one));
    assert!(!one.is_stricter_than(&half));
    assert!(!one.is_stricter_than(&one));
}

#[test]
fn quota_is_the_strictest_from_envbox_s_group_up() {
    // Host namespace, not remounted: envbox's group is deep in the mount.
    let sys = RecordingCgroupSys::new(1)
        .file(MOUNTINFO, HOST_NS_MOUNTINFO)
        .file(SELF_CGROUP, "0::/kubepods/pod1/ctr\n")
        .file("/sys/fs/cgroup/kubepods/cpu.max", "max 100000\n")
        .file("/sys/fs/cgroup/kubepods/pod1/cpu.max", "300000 100000\n")
        .file(
            "/sys/fs/cgroup/kubepods/pod1/ctr/cpu.max",
            "150000 100000\n",
        );
    let limit = CpuQuota {
        quota_us: 150_000,
        period_us: 100_000,
    };
    assert_eq!(effective_quota(&sys).unwrap(), Some(limit));
    // After prepare: envbox in init/, the limit on the namespace root above it.
    let sys = RecordingCgroupSys::new(1)
        .file(MOUNTINFO, HOST_NS_MOUNTINFO)
        .file(SELF_CGROUP, "0::/init\n")
        .file("/sys/fs/cgroup/init/cpu.max", "max 100000\n")
        .file("/sys/fs/cgroup/cpu.max", "200000 100000\n");
    assert_eq!(
        copy_cpu_quota(&sys, Path::new("/envbox/workspace_cvm")).unwrap(),
        Some(CpuQuota {
            quota_us: 200_000,
            period_us: 100_000
        })
    );
    assert_eq!(
        sys.calls(),
        [write(
            "/sys/fs/cgroup/envbox/workspace_cvm/cpu.max",
            "200000 100000"
        )]
    );
}

#[test]
fn quota_on_cgroup_v1_writes_the_period_then_the_quota() {
    let mountinfo = HYBRID_MOUNTINFO.replace(
        "0:29 / /sys/fs/cgroup/cpu",
        "0:29 /docker/abc /sys/fs/cgroup/cpu",
    );
    let sys = RecordingCgroupSys::new(1)
        .file(MOUNTINFO, &mountinfo)
        .file(
            SELF_CGROUP,
            "4:memory:/docker/abc\n1:cpu:/docker/abc\n0::/\n",
        )
        .file("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "250000\n")
        .file("/sys/fs/cgroup/cpu/cpu.cfs_period_us", "100000\n");
    copy_cpu_quota(&sys, Path::new("/envbox/ws")).unwrap();
    assert_eq!(
        sys.calls(),
        [
            write("/sys/fs/cgroup/cpu/envbox/ws/cpu.cfs_period_us", "100000"),
            write("/sys/fs/cgroup/cpu/envbox/ws/cpu.cfs_quota_us", "250000"),
        ]
    );
}

#[test]
fn quota_problems_are_warnings_and_no_limit_writes_nothing() {
    let unlimited = RecordingCgroupSys::new(1)
        .file(MOUNTINFO, HYBRID_MOUNTINFO)
        .file(SELF_CGROUP, "1:cpu:/\n0::/\n")
        .file("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "-1\n")
        .file("/sys/fs/cgroup/cpu/cpu.cfs_period_us", "100000\n");
    assert_eq!(copy_cpu_quota(&unlimited, Path::new("/ws")).unwrap(), None);
    assert!(unlimited.calls().is_empty());

    let base = || {
        RecordingCgroupSys::new(1)
            .file(MOUNTINFO, POD_MOUNTINFO_RO)
            .file(SELF_CGROUP, "0::/\n")
    };
    let garbage = base().file("/sys/fs/cgroup/cpu.max", "lots\n");
    let err = copy_cpu_quota(&garbage, Path::new("/ws")).unwrap_err();
    assert!(
        matches!(err, QuotaWarning::Unparsable { ref path, .. } if path == Path::new("/sys/fs/cgroup/cpu.max")),
        "{err}"
    );

    let refused = base()
        .file("/sys/fs/cgroup/cpu.max", "100000 100000\n")
        .fail("/sys/fs/cgroup/ws/cpu.max", Errno::ENOENT);
    let err = copy_cpu_quota(&refused, Path::new("/ws"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("writing \"100000 100000\" to /sys/fs/cgroup/ws/cpu.max"),
        "{err}"
    );

    let no_cpu = RecordingCgroupSys::new(1)
        .file(MOUNTINFO, "22 1 0:20 / / rw - ext4 /dev/vda rw\n")
        .file(SELF_CGROUP, "0::/\n");
    assert!(matches!(
        copy_cpu_quota(&no_cpu, Path::new("/ws")),
        Err(QuotaWarning::NoCpuController)
    ));
}
