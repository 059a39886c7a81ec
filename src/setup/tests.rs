//! [`apply`] through [`RecordingSys`]: order of primitives, warnings versus errors (no root).

use std::path::PathBuf;

use nix::errno::Errno;

use super::*;

fn p(path: &str) -> PathBuf {
    PathBuf::from(path)
}

fn sample_actions() -> Vec<Action> {
    vec![
        Action::CreateDir {
            path: p("/run/envbox/dev"),
            mode: 0o755,
            uid: 100000,
            gid: 100000,
        },
        Action::CharDevice {
            path: p("/run/envbox/dev/fuse"),
            major: 10,
            minor: 229,
            mode: 0o666,
            uid: 100000,
            gid: 100000,
        },
        Action::UnmountBestEffort {
            path: p("/proc/driver/nvidia"),
        },
        Action::WriteFile {
            path: p("/run/envbox/etc/hosts"),
            contents: "127.0.0.1 localhost\n".into(),
            mode: 0o644,
            uid: 100000,
            gid: 100000,
        },
        Action::Chown {
            path: p("/var/lib/coder/docker"),
            uid: 100000,
            gid: 100000,
        },
        Action::RootfsSymlink {
            rootfs: p("/var/lib/envbox/rootfs"),
            path: p("/usr/lib64/libcuda.so"),
            target: p("libcuda.so.1"),
            uid: 100000,
            gid: 100000,
        },
    ]
}

#[test]
fn primitives_run_in_order_with_chmod_after_chown() {
    let sys = RecordingSys::new();
    let warnings = apply(&sample_actions(), &sys).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let (uid, gid) = (100000, 100000);
    assert_eq!(
        sys.calls(),
        vec![
            Call::MkdirAll {
                path: p("/run/envbox/dev")
            },
            Call::Chown {
                path: p("/run/envbox/dev"),
                uid,
                gid
            },
            Call::Chmod {
                path: p("/run/envbox/dev"),
                mode: 0o755
            },
            Call::MkdirAll {
                path: p("/run/envbox/dev")
            },
            Call::MknodChar {
                path: p("/run/envbox/dev/fuse"),
                major: 10,
                minor: 229,
                mode: 0o666
            },
            Call::Chown {
                path: p("/run/envbox/dev/fuse"),
                uid,
                gid
            },
            Call::Chmod {
                path: p("/run/envbox/dev/fuse"),
                mode: 0o666
            },
            Call::Umount {
                path: p("/proc/driver/nvidia")
            },
            Call::MkdirAll {
                path: p("/run/envbox/etc")
            },
            Call::WriteFileAtomic {
                path: p("/run/envbox/etc/hosts"),
                contents: b"127.0.0.1 localhost\n".to_vec(),
            },
            Call::Chown {
                path: p("/run/envbox/etc/hosts"),
                uid,
                gid
            },
            Call::Chmod {
                path: p("/run/envbox/etc/hosts"),
                mode: 0o644
            },
            Call::Chown {
                path: p("/var/lib/coder/docker"),
                uid,
                gid
            },
            Call::SymlinkInRoot {
                rootfs: p("/var/lib/envbox/rootfs"),
                path: p("/usr/lib64/libcuda.so"),
                target: p("libcuda.so.1"),
                uid,
                gid,
            },
        ]
    );
}

#[test]
fn setgid_mode_is_set_after_chown() {
    let sys = RecordingSys::new();
    let action = Action::CreateDir {
        path: p("/home/coder"),
        mode: 0o2755,
        uid: 101000,
        gid: 101000,
    };
    apply(&[action], &sys).unwrap();
    let ops: Vec<Op> = sys.calls().iter().map(Call::op).collect();
    assert_eq!(ops, [Op::MkdirAll, Op::Chown, Op::Chmod]);
    assert_eq!(
        sys.calls()[2],
        Call::Chmod {
            path: p("/home/coder"),
            mode: 0o2755
        }
    );
}

#[test]
fn unmount_failures_are_warnings_and_setup_goes_on() {
    let sys = RecordingSys::new()
        .fail_path("/proc/driver/nvidia", Errno::EINVAL)
        .fail_path("/proc/driver/nvidia-uvm", Errno::EBUSY);
    let actions = [
        Action::UnmountBestEffort {
            path: p("/proc/driver/nvidia"),
        },
        Action::UnmountBestEffort {
            path: p("/proc/driver/nvidia-uvm"),
        },
        Action::Chown {
            path: p("/x"),
            uid: 1,
            gid: 1,
        },
    ];
    let warnings = apply(&actions, &sys).unwrap();
    assert!(
        matches!(&warnings[0], SetupWarning::NotMounted { path } if path == &p("/proc/driver/nvidia"))
    );
    assert!(matches!(
        &warnings[1],
        SetupWarning::UnmountFailed { source, .. } if source.raw_os_error() == Some(Errno::EBUSY as i32)
    ));
    assert_eq!(warnings.len(), 2);
    assert_eq!(
        sys.calls().last().map(Call::op),
        Some(Op::Chown),
        "setup went on"
    );
}

#[test]
fn mknod_failure_is_a_typed_error_and_stops_setup() {
    let sys = RecordingSys::new().fail_path("/run/envbox/dev/fuse", Errno::EPERM);
    let err = apply(&sample_actions(), &sys).unwrap_err();
    assert!(matches!(
        err,
        SetupError::CharDevice {
            major: 10,
            minor: 229,
            step: Step::Mknod,
            ..
        }
    ));
    let message = err.to_string();
    assert!(
        message.starts_with("creating device node /run/envbox/dev/fuse (10:229): mknod: "),
        "{message}"
    );
    assert!(message.contains("Operation not permitted"), "{message}");
    assert_eq!(
        sys.calls().last().map(Call::op),
        Some(Op::MknodChar),
        "nothing after the failure"
    );
}

#[test]
fn failing_step_is_named() {
    let sys = RecordingSys::new().fail_op(Op::Chmod, "/run/envbox/etc/hosts", Errno::EROFS);
    let err = apply(&sample_actions(), &sys).unwrap_err();
    assert!(matches!(
        err,
        SetupError::WriteFile {
            step: Step::Chmod { mode: 0o644 },
            ..
        }
    ));
    assert!(err
        .to_string()
        .starts_with("writing file /run/envbox/etc/hosts: chmod 0644: "));

    let sys = RecordingSys::new().fail_op(Op::Chown, "/run/envbox/dev", Errno::EPERM);
    let err = apply(&sample_actions(), &sys).unwrap_err();
    assert!(err
        .to_string()
        .starts_with("creating directory /run/envbox/dev: chown 100000:100000: "));
}

#[test]
fn every_other_action_kind_fails_with_its_own_variant() {
    let sys = RecordingSys::new().fail_path("/run/envbox/etc", Errno::EACCES);
    let err = apply(&sample_actions(), &sys).unwrap_err();
    assert!(
        matches!(
            err,
            SetupError::WriteFile {
                step: Step::CreateParent,
                ..
            }
        ),
        "{err}"
    );

    let sys = RecordingSys::new().fail_path("/var/lib/coder/docker", Errno::EPERM);
    let err = apply(&sample_actions(), &sys).unwrap_err();
    assert!(
        matches!(err, SetupError::Chown { uid: 100000, .. }),
        "{err}"
    );

    let sys = RecordingSys::new().fail_path("/usr/lib64/libcuda.so", Errno::EISDIR);
    let err = apply(&sample_actions(), &sys).unwrap_err();
    assert!(matches!(err, SetupError::RootfsSymlink { .. }), "{err}");
    assert!(err.to_string().starts_with(
        "creating symlink /usr/lib64/libcuda.so -> libcuda.so.1 inside rootfs /var/lib/envbox/rootfs: "
    ));
}

#[test]
fn a_read_only_mount_source_is_remounted_rw_for_the_chown_and_ro_again() {
    let source = p("/mnt/readonly-volume");
    let sys = RecordingSys::new().fail_op_once(Op::Chown, &source, Errno::EROFS);
    let actions = [Action::Chown {
        path: source.clone(),
        uid: 101000,
        gid: 101000,
    }];
    apply(&actions, &sys).unwrap();
    let chown = Call::Chown {
        path: source.clone(),
        uid: 101000,
        gid: 101000,
    };
    assert_eq!(
        sys.calls(),
        vec![
            chown.clone(),
            Call::Remount {
                path: source.clone(),
                read_only: false
            },
            chown,
            Call::Remount {
                path: source,
                read_only: true
            },
        ]
    );
}

#[test]
fn a_read_only_source_that_is_not_a_mount_point_reports_the_chown_error() {
    let source = p("/ro/inside/a/mount");
    let sys = RecordingSys::new()
        .fail_op(Op::Chown, &source, Errno::EROFS)
        .fail_op(Op::Remount, &source, Errno::EINVAL);
    let actions = [Action::Chown {
        path: source.clone(),
        uid: 100000,
        gid: 100000,
    }];
    let error = apply(&actions, &sys).unwrap_err().to_string();
    assert!(error.contains("/ro/inside/a/mount"), "{error}");
    assert!(error.contains("Read-only file system"), "{error}");
    assert_eq!(sys.calls().len(), 2, "no chown retried: {:?}", sys.calls());
}
