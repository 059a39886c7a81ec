//! The cgroup planners and [`prepare`] through [`RecordingCgroupSys`]
//! (no root, no cgroup v2 host needed).

use std::path::{Path, PathBuf};

use nix::errno::Errno;

use super::*;

/// This development machine: v1 controllers on a tmpfs, cgroup2 at `unified/` (hybrid).
pub(super) const HYBRID_MOUNTINFO: &str = "\
22 1 0:20 / / rw,relatime - ext4 /dev/vda rw
31 22 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

/// A pod on a cgroup v2 node: private cgroup namespace, read-only mount.
pub(super) const POD_MOUNTINFO_RO: &str = "\
22 1 0:20 / / rw,relatime - overlay overlay rw
31 22 0:28 / /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime - cgroup2 cgroup rw,nsdelegate
";

/// A pod on a cgroup v2 node: host cgroup namespace, read-write mount.
pub(super) const HOST_NS_MOUNTINFO: &str = "\
22 1 0:20 / / rw,relatime - overlay overlay rw
31 22 0:28 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup rw
";

const ROOT: &str = "/sys/fs/cgroup";

fn p(path: &str) -> PathBuf {
    PathBuf::from(path)
}

fn table(text: &str) -> MountTable {
    MountTable::parse(text).unwrap()
}

pub(super) fn write(path: &str, contents: &str) -> CgroupCall {
    CgroupCall::Write {
        path: p(path),
        contents: contents.into(),
    }
}

#[test]
fn hierarchy_is_unified_only_when_the_root_itself_is_cgroup2() {
    let root = Path::new(ROOT);
    assert_eq!(hierarchy(&table(HYBRID_MOUNTINFO), root), Hierarchy::Legacy);
    assert_eq!(
        hierarchy(&table(POD_MOUNTINFO_RO), root),
        Hierarchy::Unified {
            read_only: true,
            locked_flags: vec!["nosuid".into(), "nodev".into(), "noexec".into()],
        }
    );
    // A cgroup2 mount stacked over the tmpfs counts; a tmpfs over the cgroup2 hides it.
    let stacked =
        format!("{HYBRID_MOUNTINFO}50 31 0:40 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n");
    assert!(matches!(
        hierarchy(&table(&stacked), root),
        Hierarchy::Unified {
            read_only: false,
            ..
        }
    ));
    let hidden = format!("{HOST_NS_MOUNTINFO}50 31 0:40 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n");
    assert_eq!(hierarchy(&table(&hidden), root), Hierarchy::Legacy);
    assert_eq!(hierarchy(&table(""), root), Hierarchy::Legacy);
}

#[test]
fn unified_path_is_the_0_line() {
    assert_eq!(unified_path("0::/\n"), Some("/"));
    assert_eq!(
        unified_path("9:name=systemd:/\n1:cpu:/x\n0::/kubepods/pod1/ctr\n"),
        Some("/kubepods/pod1/ctr")
    );
    assert_eq!(unified_path("1:cpu:/\n"), None);
}

#[test]
fn mount_plan_gives_envbox_its_own_tree() {
    let root = Path::new(ROOT);
    let rw = Hierarchy::Unified {
        read_only: false,
        locked_flags: vec![],
    };
    let ro = Hierarchy::Unified {
        read_only: true,
        locked_flags: vec!["nosuid".into()],
    };
    assert!(plan_mount(root, &Hierarchy::Legacy, "/kubepods/x").is_empty());
    assert!(plan_mount(root, &rw, "/").is_empty());
    assert!(
        plan_mount(root, &rw, "/init").is_empty(),
        "a previous run's init"
    );
    assert_eq!(
        plan_mount(root, &ro, "/"),
        [Step::RemountReadWrite {
            path: p(ROOT),
            flags: vec!["nosuid".into()]
        }]
    );
    let expected = [
        Step::UnshareCgroupNamespace,
        Step::Unmount { path: p(ROOT) },
        Step::MountCgroup2 { path: p(ROOT) },
    ];
    assert_eq!(plan_mount(root, &rw, "/kubepods/pod1/ctr"), expected);
    assert_eq!(
        plan_mount(root, &ro, "/kubepods/pod1/ctr"),
        expected,
        "a fresh mount is rw"
    );
}

#[test]
fn delegation_moves_every_process_then_enables_missing_controllers() {
    let facts = TreeFacts {
        controllers: vec!["cpuset".into(), "cpu".into(), "memory".into()],
        subtree_control: vec!["cpu".into()],
        procs: vec![1, 42],
        own_pid: 1,
    };
    let procs = p("/sys/fs/cgroup/init/cgroup.procs");
    let subtree = p("/sys/fs/cgroup/cgroup.subtree_control");
    assert_eq!(
        plan_delegation(Path::new(ROOT), &facts),
        [
            Step::CreateGroup {
                path: p("/sys/fs/cgroup/init")
            },
            Step::MoveProcess {
                pid: 1,
                procs: procs.clone(),
                required: true
            },
            Step::MoveProcess {
                pid: 42,
                procs,
                required: false
            },
            Step::EnableController {
                file: subtree.clone(),
                controller: "cpuset".into()
            },
            Step::EnableController {
                file: subtree,
                controller: "memory".into()
            },
        ]
    );
    let done = TreeFacts {
        subtree_control: facts.controllers.clone(),
        procs: vec![],
        ..facts
    };
    assert!(plan_delegation(Path::new(ROOT), &done).is_empty());
}

fn pod_sys(mountinfo: &str, own: &str) -> RecordingCgroupSys {
    RecordingCgroupSys::new(1)
        .file(MOUNTINFO, mountinfo)
        .file(SELF_CGROUP, &format!("0::{own}\n"))
        .file("/sys/fs/cgroup/cgroup.controllers", "cpu io memory pids\n")
        .file("/sys/fs/cgroup/cgroup.subtree_control", "\n")
        .file("/sys/fs/cgroup/cgroup.procs", "1\n35\n36\n")
}

#[test]
fn prepare_in_a_read_only_pod_remounts_moves_and_enables() {
    let sys = pod_sys(POD_MOUNTINFO_RO, "/")
        .fail_write("/sys/fs/cgroup/init/cgroup.procs", "35", Errno::ESRCH)
        .fail_write("/sys/fs/cgroup/init/cgroup.procs", "36", Errno::EPERM)
        .fail_write(
            "/sys/fs/cgroup/cgroup.subtree_control",
            "+io",
            Errno::EINVAL,
        );
    let report = prepare(&sys).unwrap();
    let procs = "/sys/fs/cgroup/init/cgroup.procs";
    let subtree = "/sys/fs/cgroup/cgroup.subtree_control";
    assert_eq!(
        sys.calls(),
        [
            CgroupCall::RemountReadWrite {
                path: p(ROOT),
                flags: vec!["nosuid".into(), "nodev".into(), "noexec".into()]
            },
            CgroupCall::Mkdir {
                path: p("/sys/fs/cgroup/init")
            },
            write(procs, "1"),
            write(procs, "35"),
            write(procs, "36"),
            write(subtree, "+cpu"),
            write(subtree, "+io"),
            write(subtree, "+memory"),
            write(subtree, "+pids"),
        ]
    );
    // 35 exited meanwhile: not worth a warning; 36 and io are.
    let warnings: Vec<String> = report.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings[0].contains("process 36"), "{}", warnings[0]);
    assert!(warnings[1].contains("controller io"), "{}", warnings[1]);
    assert_eq!(report.applied.len(), 6, "{:?}", report.applied);
}

#[test]
fn prepare_in_the_host_namespace_makes_its_own_and_mounts_it() {
    let sys = pod_sys(HOST_NS_MOUNTINFO, "/kubepods/burstable/pod1/ctr");
    prepare(&sys).unwrap();
    let calls = sys.calls();
    assert_eq!(
        calls[..3],
        [
            CgroupCall::UnshareCgroupNamespace,
            CgroupCall::Unmount { path: p(ROOT) },
            CgroupCall::MountCgroup2 { path: p(ROOT) },
        ]
    );
    assert_eq!(
        calls[3],
        CgroupCall::Mkdir {
            path: p("/sys/fs/cgroup/init")
        }
    );
}

#[test]
fn prepare_fails_when_envbox_itself_cannot_move_or_unshare() {
    let sys = pod_sys(POD_MOUNTINFO_RO, "/").fail_write(
        "/sys/fs/cgroup/init/cgroup.procs",
        "1",
        Errno::EBUSY,
    );
    let err = prepare(&sys).unwrap_err().to_string();
    assert!(
        err.contains("moving process 1 into /sys/fs/cgroup/init/cgroup.procs"),
        "{err}"
    );
    assert!(err.contains("privileged"), "{err}");
    assert!(
        !sys.calls()
            .iter()
            .any(|c| matches!(c, CgroupCall::Write { contents, .. } if contents.starts_with('+'))),
        "no controller after the failure"
    );
    let sys = pod_sys(HOST_NS_MOUNTINFO, "/kubepods/x").fail_unshare(Errno::EPERM);
    let err = prepare(&sys).unwrap_err().to_string();
    assert!(err.contains("unshare(CLONE_NEWCGROUP)"), "{err}");
    assert_eq!(sys.calls(), [CgroupCall::UnshareCgroupNamespace]);
}

#[test]
fn prepare_changes_nothing_on_a_v1_or_hybrid_host() {
    let sys = RecordingCgroupSys::new(1).file(MOUNTINFO, HYBRID_MOUNTINFO);
    let report = prepare(&sys).unwrap();
    assert_eq!(report.hierarchy, Hierarchy::Legacy);
    assert!(sys.calls().is_empty());
    assert!(report.applied.is_empty());
}
