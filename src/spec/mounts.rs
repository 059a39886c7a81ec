//! The inner container's mount list, and the ownership of the sources envbox binds in.
//!
//! Owns: mount order (kernel filesystems; the generated `/etc` files; the inner Docker and
//! containers state on the persistent volume; `CODER_MOUNTS`; devices; GPU binds), bind options
//! that repeat the flags the source's mount locks (`nosuid`, `nodev`, `noexec`, atime, `ro`:
//! without them the runtime's remount fails with EPERM inside a user namespace), and who owns
//! each bind source (`/root` and `/home/<name>` belong to the workspace user, the rest to the
//! container's root). It never binds a host `/proc` or `/sys` path writable.

use std::path::{Path, PathBuf};

use oci_spec::runtime::Mount;

use super::devices::DevicePlan;
use super::etc_files::EtcFiles;
use super::ID_SHIFT;
use crate::config::Settings;
use crate::gpu::GpuPlan;
use crate::host::HostFacts;
use crate::rootfs::RootfsFacts;
use crate::setup::Action;

/// The inner dockerd and podman keep their state on the persistent volume (Go envbox contract).
pub(crate) const STATE_MOUNTS: [(&str, &str); 2] = [
    ("/var/lib/coder/docker", "/var/lib/docker"),
    ("/var/lib/coder/containers", "/var/lib/containers"),
];

pub(crate) struct MountPlan {
    pub spec_mounts: Vec<Mount>,
    pub actions: Vec<Action>,
    pub warnings: Vec<String>,
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn kernel_mount(destination: &str, typ: &str, source: &str, options: &[&str]) -> Mount {
    let mut mount = Mount::default();
    mount.set_destination(PathBuf::from(destination));
    mount.set_typ(Some(typ.to_owned()));
    mount.set_source(Some(PathBuf::from(source)));
    mount.set_options(Some(strings(options)));
    mount
}

fn bind(source: &Path, destination: &Path, options: Vec<String>) -> Mount {
    let mut mount = Mount::default();
    mount.set_destination(destination.to_owned());
    mount.set_typ(Some("bind".to_owned()));
    mount.set_source(Some(source.to_owned()));
    mount.set_options(Some(options));
    mount
}

/// The kernel filesystems every container gets (Docker's defaults for an unprivileged
/// container; sysbox-runc replaces `/proc`, `/sys` and `/dev` with its own).
fn kernel_mounts() -> Vec<Mount> {
    vec![
        kernel_mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        kernel_mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        kernel_mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        kernel_mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=67108864"],
        ),
        kernel_mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        kernel_mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        ),
        kernel_mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", "ro"],
        ),
    ]
}

/// Options for a bind of `source`: `rbind`, `rprivate`, `ro` when asked or when the source's
/// mount is read-only, and the flags that mount locks.
pub(crate) fn bind_options(host: &HostFacts, source: &Path, read_only: bool) -> Vec<String> {
    let holder = host.mounts.containing(source);
    let mut options = strings(&["rbind", "rprivate"]);
    if read_only || holder.is_some_and(|m| m.is_read_only()) {
        options.push("ro".to_owned());
    }
    if let Some(holder) = holder {
        options.extend(holder.locked_flags().into_iter().map(str::to_owned));
    }
    options
}

/// Owner of a bind source: the workspace user for a source `/root` or `/home/<name>` (the Go
/// envbox's rule) and for any source mounted at the user's home directory, else root.
pub(crate) fn source_owner(source: &Path, destination: &Path, rootfs: &RootfsFacts) -> (u32, u32) {
    let is_home = source == Path::new("/root")
        || (source.starts_with("/home") && source.components().count() == 3)
        || destination == rootfs.user.home;
    if is_home {
        (ID_SHIFT + rootfs.user.uid, ID_SHIFT + rootfs.user.gid)
    } else {
        (ID_SHIFT, ID_SHIFT)
    }
}

pub(crate) fn plan(
    settings: &Settings,
    rootfs_path: &Path,
    rootfs: &RootfsFacts,
    host: &HostFacts,
    etc: &EtcFiles,
    devices: &DevicePlan,
    gpu: Option<&GpuPlan>,
) -> MountPlan {
    let mut spec_mounts = kernel_mounts();
    let mut actions = Vec::new();
    let mut warnings = Vec::new();
    for (source, destination) in &etc.binds {
        spec_mounts.push(bind(source, destination, bind_options(host, source, false)));
    }
    for (source, destination) in STATE_MOUNTS {
        let source = Path::new(source);
        actions.push(Action::CreateDir {
            path: source.to_owned(),
            mode: 0o755,
            uid: ID_SHIFT,
            gid: ID_SHIFT,
        });
        spec_mounts.push(bind(
            source,
            Path::new(destination),
            bind_options(host, source, false),
        ));
    }
    for mount in &settings.mounts {
        let options = bind_options(host, &mount.source, mount.read_only);
        if !mount.read_only && options.iter().any(|o| o == "ro") {
            warnings.push(format!(
                "{} is on a read-only mount in this container: it is mounted read-only at {}",
                mount.source.display(),
                mount.destination.display()
            ));
        }
        let (uid, gid) = source_owner(&mount.source, &mount.destination, rootfs);
        actions.push(Action::Chown {
            path: mount.source.clone(),
            uid,
            gid,
        });
        spec_mounts.push(bind(&mount.source, &mount.destination, options));
    }
    for device in &devices.binds {
        spec_mounts.push(bind(
            &device.source,
            &device.destination,
            device.options.clone(),
        ));
    }
    if let Some(gpu) = gpu {
        for m in &gpu.mounts {
            spec_mounts.push(bind(&m.source, &m.destination, m.options.clone()));
        }
        actions.extend(gpu.symlinks.iter().map(|link| Action::RootfsSymlink {
            rootfs: rootfs_path.to_owned(),
            path: link.path.clone(),
            target: link.target.clone(),
            uid: ID_SHIFT,
            gid: ID_SHIFT,
        }));
    }
    MountPlan {
        spec_mounts,
        actions,
        warnings,
    }
}
