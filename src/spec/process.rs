//! The inner container's first process.
//!
//! Owns: what runs as PID 1 (`/sbin/init` when the image has it, exactly that path since
//! sysbox-runc starts systemd mode only then; otherwise `sleep infinity`: the image's CMD is not
//! run), its user (root, mapped to 100000 outside), working directory, capabilities and rlimits.
//! Root inside gets every capability, all confined to the container's user namespace: that is
//! what sysbox-runc grants anyway, and it makes the runc fallback behave the same (dockerd,
//! FUSE mounts and TUN setup inside need CAP_SYS_ADMIN and CAP_NET_ADMIN). `noNewPrivileges` is
//! false so `sudo` works in workspaces. The bootstrap script is not started here, but the
//! supplementary groups of every process run as the workspace user are chosen here
//! ([`user_gids`]); the init itself runs as root with none.

use std::collections::HashSet;
use std::path::PathBuf;

use oci_spec::runtime::{
    Capability, LinuxCapabilitiesBuilder, PosixRlimitBuilder, PosixRlimitType, Process,
    ProcessBuilder, UserBuilder,
};

use super::{SpecError, ID_RANGE};
use crate::config::Settings;
use crate::host::HostFacts;
use crate::image::ImageConfig;
use crate::rootfs::RootfsFacts;

/// Every capability up to CAP_CHECKPOINT_RESTORE (Linux 5.9).
pub(crate) const ALL_CAPABILITIES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

fn all_capabilities() -> HashSet<Capability> {
    ALL_CAPABILITIES
        .iter()
        .filter_map(|name| serde_json::from_value(serde_json::Value::from(*name)).ok())
        .collect()
}

/// The `CAP_*` names of a process's bounding set, sorted (what dockerd hands its seccomp
/// profile generator).
pub(crate) fn bounding_names(process: &Process) -> Vec<String> {
    let mut names: Vec<String> = process
        .capabilities()
        .as_ref()
        .and_then(|c| c.bounding().as_ref())
        .into_iter()
        .flatten()
        .filter_map(|cap| match serde_json::to_value(cap) {
            Ok(serde_json::Value::String(name)) => Some(name),
            _ => None,
        })
        .collect();
    names.sort();
    names
}

/// PID 1's arguments.
pub(crate) fn init_args(rootfs: &RootfsFacts) -> Vec<String> {
    if rootfs.has_init {
        vec!["/sbin/init".to_owned()]
    } else {
        vec!["sleep".to_owned(), "infinity".to_owned()]
    }
}

/// The supplementary groups (`process.user.additionalGids`) of a process run as the workspace
/// user, as `su` and `docker exec --user` set them: the primary gid first (as `initgroups` does;
/// leaving it out let programs that drop the primary group bypass its restrictions,
/// CVE-2023-25173), then the groups `/etc/group` lists the user in. A group whose gid is not
/// below [`ID_RANGE`] cannot exist in the user namespace (setting it fails the exec): it is left
/// out with a warning rather than refusing the workspace over a group it cannot use anyway.
pub(crate) fn user_gids(rootfs: &RootfsFacts) -> (Vec<u32>, Vec<String>) {
    let user = &rootfs.user;
    let mut gids = vec![user.gid];
    let mut warnings = Vec::new();
    for group in &rootfs.groups {
        if group.gid >= ID_RANGE {
            warnings.push(format!(
                "user {:?} is a member of group {:?} (gid {}) in the image's /etc/group, but only ids below {ID_RANGE} map into the workspace: the group is left out of the user's groups (renumber it in the image to keep it)",
                user.name, group.name, group.gid
            ));
        } else if !gids.contains(&group.gid) {
            gids.push(group.gid);
        }
    }
    (gids, warnings)
}

/// The workspace gets all of the outer hard `RLIMIT_NOFILE`, soft and hard (IDEs and file
/// watchers want many), since a user namespace can never raise it further; and its OOM score
/// ([`crate::oom`]).
pub(crate) fn build(
    settings: &Settings,
    rootfs: &RootfsFacts,
    image: &ImageConfig,
    env: Vec<String>,
    host: &HostFacts,
) -> Result<Process, SpecError> {
    let nofile = host.nofile_hard;
    let cwd = settings
        .work_dir
        .clone()
        .or_else(|| {
            image
                .working_dir
                .as_deref()
                .filter(|d| d.starts_with('/'))
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from("/"));
    let caps = all_capabilities();
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .inheritable(HashSet::new())
        .ambient(HashSet::new())
        .build()?;
    let nofile = PosixRlimitBuilder::default()
        .typ(PosixRlimitType::RlimitNofile)
        .hard(nofile)
        .soft(nofile)
        .build()?;
    Ok(ProcessBuilder::default()
        .terminal(false)
        .user(UserBuilder::default().uid(0u32).gid(0u32).build()?)
        .args(init_args(rootfs))
        .env(env)
        .cwd(cwd)
        .capabilities(capabilities)
        .rlimits(vec![nofile])
        .no_new_privileges(false)
        .oom_score_adj(host.oom_score_adj)
        .build()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rootfs::{GroupEntry, PasswdEntry};

    fn facts(groups: &[(&str, u32)]) -> RootfsFacts {
        RootfsFacts {
            user: PasswdEntry {
                name: "coder".into(),
                uid: 1000,
                gid: 1000,
                home: "/home/coder".into(),
                shell: "/bin/bash".into(),
            },
            groups: groups
                .iter()
                .map(|(name, gid)| GroupEntry {
                    name: (*name).into(),
                    gid: *gid,
                })
                .collect(),
            has_init: false,
            os_release: None,
            warnings: vec![],
        }
    }

    #[test]
    fn user_gids_are_the_primary_then_the_listed_groups() {
        let (gids, warnings) = user_gids(&facts(&[("sudo", 27), ("coder", 1000), ("docker", 102)]));
        assert_eq!(gids, [1000, 27, 102]);
        assert!(warnings.is_empty());
        assert_eq!(user_gids(&facts(&[])).0, [1000], "no /etc/group, no group");
    }

    #[test]
    fn unmappable_groups_are_left_out_with_a_warning() {
        let (gids, warnings) = user_gids(&facts(&[
            ("big", 65_536),
            ("docker", 102),
            ("huge", 4_000_000),
        ]));
        assert_eq!(gids, [1000, 102]);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings[0].contains("\"big\" (gid 65536)"),
            "{}",
            warnings[0]
        );
    }

    #[test]
    fn every_listed_capability_is_known_to_oci_spec() {
        assert_eq!(all_capabilities().len(), ALL_CAPABILITIES.len());
    }

    #[test]
    fn bounding_names_are_the_cap_names() {
        let process = ProcessBuilder::default()
            .capabilities(
                LinuxCapabilitiesBuilder::default()
                    .bounding(all_capabilities())
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let mut expected: Vec<String> = ALL_CAPABILITIES.iter().map(|c| c.to_string()).collect();
        expected.sort();
        assert_eq!(bounding_names(&process), expected);
    }
}
