//! Tests of the spec generator: behaviour per setting, and the invariants on every spec.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxDeviceType, LinuxNamespaceType, Mount, Spec};

use super::*;
use crate::config::{Purpose, RawSettings};
use crate::mountinfo::MountTable;
use crate::rootfs::{OsRelease, PasswdEntry};
use crate::spec::render::Secrets;

fn raw() -> RawSettings {
    RawSettings {
        username: Some("coder".into()),
        hostname: Some("dev-box".into()),
        run_dir: Some("/run/envbox".into()),
        ..Default::default()
    }
}

fn facts() -> RootfsFacts {
    RootfsFacts {
        user: PasswdEntry {
            name: "coder".into(),
            uid: 1000,
            gid: 1001,
            home: "/home/coder".into(),
            shell: "/bin/bash".into(),
        },
        groups: vec![],
        has_init: false,
        os_release: Some(OsRelease {
            id: "ubuntu".into(),
            id_like: vec!["debian".into()],
        }),
        warnings: vec![],
    }
}

fn host() -> HostFacts {
    HostFacts {
        environ: vec![],
        mounts: MountTable::default(),
        resolv_conf: Some("nameserver 10.96.0.10\n".into()),
        arch: "x86_64".into(),
        nofile_hard: 1_048_576,
        oom_score_adj: 968,
        gpu: None,
    }
}

fn plan_with(
    raw: &RawSettings,
    facts: &RootfsFacts,
    host: &HostFacts,
) -> Result<ContainerPlan, SpecError> {
    let settings = Settings::from_raw(raw, None, Purpose::Spec).unwrap();
    build(&SpecInput {
        settings: &settings,
        rootfs_path: Path::new("/var/lib/coder/envbox/rootfs"),
        rootfs: facts,
        image: &ImageConfig::default(),
        host,
    })
}

fn plan(raw: &RawSettings) -> ContainerPlan {
    plan_with(raw, &facts(), &host()).unwrap()
}

fn mount_at<'a>(spec: &'a Spec, destination: &str) -> &'a Mount {
    spec.mounts()
        .as_deref()
        .unwrap()
        .iter()
        .find(|m| m.destination() == Path::new(destination))
        .unwrap_or_else(|| panic!("no mount at {destination}"))
}

fn options(mount: &Mount) -> Vec<String> {
    mount.options().clone().unwrap_or_default()
}

fn allowed_devices(spec: &Spec) -> Vec<(i64, Option<i64>)> {
    let rules = spec
        .linux()
        .as_ref()
        .unwrap()
        .resources()
        .as_ref()
        .unwrap()
        .devices()
        .clone()
        .unwrap();
    rules
        .iter()
        .filter(|r| r.allow() && r.typ() == Some(LinuxDeviceType::C) && r.major().is_some())
        .map(|r| (r.major().unwrap(), r.minor()))
        .collect()
}

#[test]
fn plain_workspace() {
    let spec = plan(&raw()).spec;
    assert_eq!(spec.hostname().as_deref(), Some("dev-box"));
    let process = spec.process().as_ref().unwrap();
    assert_eq!(process.args().as_deref().unwrap(), ["sleep", "infinity"]);
    assert_eq!(process.cwd(), Path::new("/"));
    assert_eq!((process.user().uid(), process.user().gid()), (0, 0));
    assert_eq!(process.no_new_privileges(), Some(false));
    let root = spec.root().as_ref().unwrap();
    assert_eq!(root.path(), Path::new("/var/lib/coder/envbox/rootfs"));
    assert_eq!(
        spec.annotations().as_ref().unwrap()[STOP_SIGNAL_ANNOTATION],
        "SIGTERM"
    );
    let ns: Vec<_> = spec.linux().as_ref().unwrap().namespaces().clone().unwrap();
    assert_eq!(ns.len(), 7);
    assert!(ns.iter().any(|n| n.typ() == LinuxNamespaceType::User));
    invariants::check(&spec).unwrap();
}

#[test]
fn both_runtimes_get_dockers_profile_for_every_capability() {
    let expected = seccomp::profile("x86_64", process::ALL_CAPABILITIES.iter().copied()).unwrap();
    for runtime in ["sysbox-runc", "runc"] {
        let raw = RawSettings {
            runtime: Some(runtime.into()),
            ..raw()
        };
        let spec = plan(&raw).spec;
        let seccomp = spec.linux().as_ref().unwrap().seccomp().clone().unwrap();
        assert_eq!(seccomp, expected, "{runtime}");
    }
    let mut arm = host();
    arm.arch = "aarch64".into();
    let spec = plan_with(&raw(), &facts(), &arm).unwrap().spec;
    let seccomp = spec.linux().as_ref().unwrap().seccomp().clone().unwrap();
    assert_eq!(
        seccomp.architectures().as_deref(),
        Some(
            &[
                oci_spec::runtime::Arch::ScmpArchAarch64,
                oci_spec::runtime::Arch::ScmpArchArm
            ][..]
        )
    );
}

#[test]
fn systemd_images_boot_sbin_init_and_stop_with_sigrtmin_3() {
    let mut f = facts();
    f.has_init = true;
    let spec = plan_with(&raw(), &f, &host()).unwrap().spec;
    assert_eq!(
        spec.process().as_ref().unwrap().args().as_deref().unwrap(),
        ["/sbin/init"]
    );
    assert_eq!(
        spec.annotations().as_ref().unwrap()[STOP_SIGNAL_ANNOTATION],
        "SIGRTMIN+3"
    );
}

#[test]
fn etc_files_are_generated_and_bound() {
    let p = plan(&raw());
    for name in ["hosts", "hostname", "resolv.conf"] {
        let m = mount_at(&p.spec, &format!("/etc/{name}"));
        assert_eq!(
            m.source().as_deref(),
            Some(Path::new(&format!("/run/envbox/etc/{name}")))
        );
    }
    let hosts = p.actions.iter().find_map(|a| match a {
        setup::Action::WriteFile {
            path,
            contents,
            uid,
            ..
        } if path.ends_with("hosts") => Some((contents.clone(), *uid)),
        _ => None,
    });
    let (hosts, uid) = hosts.unwrap();
    assert!(
        hosts.contains("172.19.0.1\thost.docker.internal\n"),
        "{hosts}"
    );
    assert!(hosts.contains("172.19.0.2\tdev-box\n"), "{hosts}");
    assert_eq!(uid, ID_SHIFT, "inner root can edit its /etc/hosts");
}

#[test]
fn tun_and_fuse_are_own_nodes_bound_in_with_allow_rules() {
    let mut r = raw();
    r.add_tun = Some("true".into());
    r.add_fuse = Some("1".into());
    let p = plan(&r);
    let tun = mount_at(&p.spec, "/dev/net/tun");
    assert_eq!(
        tun.source().as_deref(),
        Some(Path::new("/dev/envbox/net/tun"))
    );
    let fuse = mount_at(&p.spec, "/dev/fuse");
    assert_eq!(
        fuse.source().as_deref(),
        Some(Path::new("/dev/envbox/fuse"))
    );
    let allowed = allowed_devices(&p.spec);
    assert!(
        allowed.contains(&(10, Some(200))) && allowed.contains(&(10, Some(229))),
        "{allowed:?}"
    );
    let nodes: Vec<_> = p
        .actions
        .iter()
        .filter_map(|a| match a {
            setup::Action::CharDevice {
                path,
                major,
                minor,
                uid,
                gid,
                mode,
            } => Some((path.clone(), *major, *minor, *uid, *gid, *mode)),
            _ => None,
        })
        .collect();
    assert_eq!(
        nodes,
        [
            (
                PathBuf::from("/dev/envbox/net/tun"),
                10,
                200,
                ID_SHIFT,
                ID_SHIFT,
                0o666
            ),
            (
                PathBuf::from("/dev/envbox/fuse"),
                10,
                229,
                ID_SHIFT,
                ID_SHIFT,
                0o666
            ),
        ]
    );
}

#[test]
fn without_tun_and_fuse_there_are_no_such_rules() {
    let allowed = allowed_devices(&plan(&raw()).spec);
    assert!(
        !allowed.iter().any(|(major, _)| *major == 10),
        "{allowed:?}"
    );
}

#[test]
fn mounts_keep_order_ro_and_ownership() {
    let mut r = raw();
    r.mounts = Some(
        "/home/coder:/home/coder,/srv/data:/data:ro,/root:/root,/pvc/homes/c:/home/coder/x,/pvc/h:/home/coder".into(),
    );
    let p = plan(&r);
    let destinations: Vec<_> = p
        .spec
        .mounts()
        .as_deref()
        .unwrap()
        .iter()
        .map(|m| m.destination().clone())
        .collect();
    let position = |d: &str| destinations.iter().position(|x| x == Path::new(d)).unwrap();
    assert!(position("/var/lib/docker") < position("/var/lib/containers"));
    assert!(position("/var/lib/containers") < position("/home/coder"));
    assert!(position("/home/coder") < position("/data"));
    assert!(options(mount_at(&p.spec, "/data")).contains(&"ro".to_owned()));
    assert!(!options(mount_at(&p.spec, "/home/coder")).contains(&"ro".to_owned()));
    let owners: Vec<_> = p
        .actions
        .iter()
        .filter_map(|a| match a {
            setup::Action::Chown { path, uid, gid } => Some((path.clone(), *uid, *gid)),
            _ => None,
        })
        .collect();
    assert_eq!(
        owners,
        [
            (PathBuf::from("/home/coder"), 101_000, 101_001),
            (PathBuf::from("/srv/data"), ID_SHIFT, ID_SHIFT),
            (PathBuf::from("/root"), 101_000, 101_001),
            (PathBuf::from("/pvc/homes/c"), ID_SHIFT, ID_SHIFT),
            // Mounted at the user's home: the user's, whatever the source path.
            (PathBuf::from("/pvc/h"), 101_000, 101_001),
        ]
    );
    let state_dirs: Vec<_> = p
        .actions
        .iter()
        .filter_map(|a| match a {
            setup::Action::CreateDir { path, uid, .. } => Some((path.clone(), *uid)),
            _ => None,
        })
        .collect();
    assert_eq!(
        state_dirs,
        [
            (PathBuf::from("/var/lib/coder/docker"), ID_SHIFT),
            (PathBuf::from("/var/lib/coder/containers"), ID_SHIFT)
        ]
    );
}

#[test]
fn binds_repeat_the_flags_their_source_mount_locks() {
    let mut h = host();
    h.mounts = MountTable::parse(
        "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n\
         40 27 254:16 / /srv ro,nosuid,nodev,noatime - squashfs /dev/vdb ro\n",
    )
    .unwrap();
    let mut r = raw();
    r.mounts = Some("/srv/data:/data".into());
    let p = plan_with(&r, &facts(), &h).unwrap();
    let opts = options(mount_at(&p.spec, "/data"));
    for flag in ["ro", "nosuid", "nodev", "noatime"] {
        assert!(
            opts.contains(&flag.to_owned()),
            "{flag} missing from {opts:?}"
        );
    }
    assert!(
        p.warnings.iter().any(|w| w.contains("read-only mount")),
        "{:?}",
        p.warnings
    );
}

#[test]
fn cpu_and_memory_limits() {
    let mut r = raw();
    r.cpus = Some("1500m".into());
    r.memory = Some("4Gi".into());
    let spec = plan(&r).spec;
    let resources = spec.linux().as_ref().unwrap().resources().clone().unwrap();
    let cpu = resources.cpu().clone().unwrap();
    assert_eq!((cpu.quota(), cpu.period()), (Some(150_000), Some(100_000)));
    assert_eq!(resources.memory().as_ref().unwrap().limit(), Some(4 << 30));
    let unlimited = plan(&raw()).spec;
    let resources = unlimited
        .linux()
        .as_ref()
        .unwrap()
        .resources()
        .clone()
        .unwrap();
    assert!(resources.cpu().is_none() && resources.memory().is_none());
}

#[test]
fn a_user_outside_the_mapped_range_is_a_clear_error() {
    let mut f = facts();
    f.user.uid = 70_000;
    let err = plan_with(&raw(), &f, &host()).unwrap_err().to_string();
    assert!(err.contains("70000") && err.contains("65536"), "{err}");
}

#[test]
fn work_dir_setting_wins_over_the_image() {
    let settings = Settings::from_raw(
        &RawSettings {
            work_dir: Some("/workspace".into()),
            ..raw()
        },
        None,
        Purpose::Spec,
    )
    .unwrap();
    let image = ImageConfig {
        working_dir: Some("/src".into()),
        ..Default::default()
    };
    let f = facts();
    let h = host();
    let with = |s: &Settings| {
        build(&SpecInput {
            settings: s,
            rootfs_path: Path::new("/r"),
            rootfs: &f,
            image: &image,
            host: &h,
        })
        .unwrap()
        .spec
        .process()
        .as_ref()
        .unwrap()
        .cwd()
        .clone()
    };
    assert_eq!(with(&settings), PathBuf::from("/workspace"));
    let default = Settings::from_raw(&raw(), None, Purpose::Spec).unwrap();
    assert_eq!(with(&default), PathBuf::from("/src"));
}

#[test]
fn rendering_is_deterministic_and_redacts_the_token() {
    let mut r = raw();
    r.agent_token = Some(crate::config::Secret::new("secret-token-value"));
    let a = plan(&r).spec;
    let b = plan(&r).spec;
    let redacted = render::to_json(&a, Secrets::Redact);
    assert_eq!(redacted, render::to_json(&b, Secrets::Redact));
    assert!(!redacted.contains("secret-token-value"));
    assert!(redacted.contains("CODER_AGENT_TOKEN=<redacted>"));
    assert!(render::to_json(&a, Secrets::Reveal).contains("CODER_AGENT_TOKEN=secret-token-value"));
}

#[test]
fn debug_renderings_never_show_secrets() {
    let mut r = raw();
    r.agent_token = Some(crate::config::Secret::new("secret-token-value"));
    let mut h = host();
    h.environ = vec![
        ("CODER_AGENT_TOKEN".into(), "secret-token-value".into()),
        (
            "CODER_IMAGE_PULL_SECRET".into(),
            "{\"auths\":{\"x\":{\"auth\":\"c2VjcmV0\"}}}".into(),
        ),
    ];
    let p = plan_with(&r, &facts(), &h).unwrap();
    for rendering in [format!("{p:?}"), format!("{h:?}"), format!("{r:?}")] {
        assert!(
            !rendering.contains("secret-token-value") && !rendering.contains("c2VjcmV0"),
            "{rendering}"
        );
    }
}

#[test]
fn actions_run_unmounts_first_and_rootfs_symlinks_last() {
    let mut r = raw();
    r.add_tun = Some("true".into());
    r.mounts = Some("/srv:/srv".into());
    let ranks: Vec<u8> = plan(&r).actions.iter().map(action_rank).collect();
    let mut sorted = ranks.clone();
    sorted.sort();
    assert_eq!(ranks, sorted);
}

mod invariant_violations {
    use super::*;
    use oci_spec::runtime::{
        LinuxDeviceCgroupBuilder, LinuxIdMappingBuilder, LinuxNamespaceBuilder,
    };

    fn base() -> Spec {
        plan(&raw()).spec
    }

    fn linux(spec: &mut Spec) -> &mut oci_spec::runtime::Linux {
        spec.linux_mut().as_mut().unwrap()
    }

    #[test]
    fn wrong_id_mapping() {
        let mut spec = base();
        let map = LinuxIdMappingBuilder::default()
            .container_id(0u32)
            .host_id(0u32)
            .size(65536u32)
            .build()
            .unwrap();
        linux(&mut spec).set_uid_mappings(Some(vec![map]));
        assert_eq!(
            invariants::check(&spec),
            Err(invariants::Violation::IdMapping { which: "uid" })
        );
        let mut spec = base();
        linux(&mut spec).set_gid_mappings(None);
        assert_eq!(
            invariants::check(&spec),
            Err(invariants::Violation::IdMapping { which: "gid" })
        );
    }

    #[test]
    fn namespace_joined_by_path_or_missing() {
        let mut spec = base();
        let mut ns = linux(&mut spec).namespaces().clone().unwrap();
        ns[4] = LinuxNamespaceBuilder::default()
            .typ(LinuxNamespaceType::Network)
            .path("/proc/1/ns/net")
            .build()
            .unwrap();
        linux(&mut spec).set_namespaces(Some(ns.clone()));
        assert!(matches!(
            invariants::check(&spec),
            Err(invariants::Violation::NamespacePath(_))
        ));
        ns.remove(4);
        linux(&mut spec).set_namespaces(Some(ns));
        assert!(matches!(
            invariants::check(&spec),
            Err(invariants::Violation::MissingNamespace(_))
        ));
    }

    #[test]
    fn devices_allowed_wholesale_or_not_denied_first() {
        let mut spec = base();
        let mut resources = linux(&mut spec).resources().clone().unwrap();
        let mut rules = resources.devices().clone().unwrap();
        rules.push(
            LinuxDeviceCgroupBuilder::default()
                .allow(true)
                .typ(LinuxDeviceType::A)
                .access("rwm")
                .build()
                .unwrap(),
        );
        resources.set_devices(Some(rules.clone()));
        linux(&mut spec).set_resources(Some(resources.clone()));
        assert_eq!(
            invariants::check(&spec),
            Err(invariants::Violation::AllDevicesAllowed)
        );
        rules.remove(0);
        rules.pop();
        resources.set_devices(Some(rules));
        linux(&mut spec).set_resources(Some(resources));
        assert_eq!(
            invariants::check(&spec),
            Err(invariants::Violation::DevicesNotDeniedFirst)
        );
    }

    #[test]
    fn masked_path_missing() {
        let mut spec = base();
        let mut masked = linux(&mut spec).masked_paths().clone().unwrap();
        masked.retain(|p| p != "/proc/kcore");
        linux(&mut spec).set_masked_paths(Some(masked));
        assert_eq!(
            invariants::check(&spec),
            Err(invariants::Violation::MissingMaskedPath("/proc/kcore"))
        );
    }

    #[test]
    fn writable_host_proc_bind() {
        let mut spec = base();
        let mut mounts = spec.mounts().clone().unwrap();
        let mut m = Mount::default();
        m.set_destination("/host/proc".into());
        m.set_typ(Some("bind".into()));
        m.set_source(Some("/proc".into()));
        m.set_options(Some(vec!["rbind".into()]));
        mounts.push(m.clone());
        spec.set_mounts(Some(mounts.clone()));
        assert!(matches!(
            invariants::check(&spec),
            Err(invariants::Violation::WritableKernelBind { .. })
        ));
        m.set_options(Some(vec!["rbind".into(), "ro".into()]));
        mounts.pop();
        mounts.push(m);
        spec.set_mounts(Some(mounts));
        assert_eq!(
            invariants::check(&spec),
            Ok(()),
            "a read-only bind is allowed"
        );
    }

    #[test]
    fn seccomp_missing_allowing_or_notifying() {
        use oci_spec::runtime::{LinuxSeccompAction, LinuxSyscallBuilder};
        let mut spec = base();
        linux(&mut spec).set_seccomp(None);
        assert_eq!(
            invariants::check(&spec),
            Err(invariants::Violation::NoSeccomp)
        );

        let mut spec = base();
        let mut seccomp = linux(&mut spec).seccomp().clone().unwrap();
        seccomp.set_default_action(LinuxSeccompAction::ScmpActAllow);
        linux(&mut spec).set_seccomp(Some(seccomp));
        assert_eq!(
            invariants::check(&spec),
            Err(invariants::Violation::SeccompDefaultAllows(
                "SCMP_ACT_ALLOW".into()
            ))
        );

        let mut spec = base();
        let mut seccomp = linux(&mut spec).seccomp().clone().unwrap();
        seccomp.set_listener_path(Some("/run/agent.sock".into()));
        linux(&mut spec).set_seccomp(Some(seccomp));
        assert_eq!(
            invariants::check(&spec),
            Err(invariants::Violation::SeccompNotify)
        );

        let mut spec = base();
        let mut seccomp = linux(&mut spec).seccomp().clone().unwrap();
        let mut rules = seccomp.syscalls().clone().unwrap();
        rules.push(
            LinuxSyscallBuilder::default()
                .names(vec!["mount".to_string()])
                .action(LinuxSeccompAction::ScmpActNotify)
                .build()
                .unwrap(),
        );
        seccomp.set_syscalls(Some(rules));
        linux(&mut spec).set_seccomp(Some(seccomp));
        assert_eq!(
            invariants::check(&spec),
            Err(invariants::Violation::SeccompNotify)
        );
    }
}

#[test]
fn rootfs_notes_and_unmappable_groups_are_plan_warnings_and_leave_the_init_alone() {
    let mut f = facts();
    f.groups = vec![
        crate::rootfs::GroupEntry {
            name: "docker".into(),
            gid: 102,
        },
        crate::rootfs::GroupEntry {
            name: "ldap".into(),
            gid: 200_000,
        },
    ];
    f.warnings = vec!["a note from /etc/group".into()];
    let plan = plan_with(&raw(), &f, &host()).unwrap();
    assert!(plan.warnings.iter().any(|w| w == "a note from /etc/group"));
    assert!(
        plan.warnings
            .iter()
            .any(|w| w.contains("\"ldap\" (gid 200000)")),
        "{:?}",
        plan.warnings
    );
    let user = plan.spec.process().as_ref().unwrap().user().clone();
    assert_eq!((user.uid(), user.gid()), (0, 0));
    assert_eq!(
        user.additional_gids(),
        &None,
        "the init runs as root, groupless"
    );
}
