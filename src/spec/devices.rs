//! Devices of the inner container: TUN, FUSE and GPUs.
//!
//! Owns: which device nodes are bound in, the cgroup allow rule for each (major:minor read at
//! run time for GPUs, since `nvidia-uvm`'s major is dynamic), and the nodes envbox creates
//! itself. Under a user namespace the runtime cannot mknod and ignores `linux.devices` owners,
//! so TUN and FUSE nodes are created under the run dir owned by the container's root (100000)
//! and bind-mounted (runtime-notes). GPU nodes are bound from `/dev` as they are. It never
//! creates anything: it returns actions.

use std::path::{Path, PathBuf};

use super::{mounts::bind_options, RunDirLayout, SpecError, ID_SHIFT};
use crate::config::Settings;
use crate::gpu::{self, GpuPlan};
use crate::host::HostFacts;
use crate::rootfs::RootfsFacts;
use crate::setup::Action;

/// `/dev/net/tun` and `/dev/fuse`: statically assigned misc devices (Linux devices.txt).
pub(crate) const TUN: (u64, u64) = (10, 200);
pub(crate) const FUSE: (u64, u64) = (10, 229);

/// A character device the container may use, and how it gets there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeviceBind {
    pub source: PathBuf,
    pub destination: PathBuf,
    pub major: u64,
    pub minor: u64,
    pub options: Vec<String>,
}

pub(crate) struct DevicePlan {
    pub binds: Vec<DeviceBind>,
    pub actions: Vec<Action>,
    pub warnings: Vec<String>,
}

/// The GPU plan, when GPUs are asked for.
pub(crate) fn gpu_plan(
    settings: &Settings,
    rootfs: &RootfsFacts,
    host: &HostFacts,
) -> Result<Option<GpuPlan>, SpecError> {
    if !settings.add_gpu {
        return Ok(None);
    }
    let inventory = host.gpu.as_ref().ok_or(SpecError::GpuInventoryMissing)?;
    let inner_lib_dir = settings
        .inner_usr_lib_dir
        .clone()
        .unwrap_or_else(|| gpu::inner_lib_dir(rootfs.os_release.as_ref(), &host.arch));
    Ok(Some(gpu::plan(inventory, &host.mounts, &inner_lib_dir)))
}

fn own_node(
    layout: &RunDirLayout,
    host: &HostFacts,
    inner: &str,
    (major, minor): (u64, u64),
) -> (DeviceBind, Action) {
    let relative = Path::new(inner)
        .strip_prefix("/dev")
        .unwrap_or(Path::new(inner));
    let source = layout.dev.join(relative);
    let action = Action::CharDevice {
        path: source.clone(),
        major,
        minor,
        mode: 0o666,
        uid: ID_SHIFT,
        gid: ID_SHIFT,
    };
    let bind = DeviceBind {
        options: bind_options(host, &source, false),
        source,
        destination: PathBuf::from(inner),
        major,
        minor,
    };
    (bind, action)
}

pub(crate) fn plan(
    settings: &Settings,
    layout: &RunDirLayout,
    host: &HostFacts,
    gpu: Option<&GpuPlan>,
) -> DevicePlan {
    let mut binds = Vec::new();
    let mut actions = Vec::new();
    let mut warnings = Vec::new();
    let wanted = [
        (settings.add_tun, "/dev/net/tun", TUN),
        (settings.add_fuse, "/dev/fuse", FUSE),
    ];
    for (_, inner, numbers) in wanted.into_iter().filter(|(on, _, _)| *on) {
        let (bind, action) = own_node(layout, host, inner, numbers);
        binds.push(bind);
        actions.push(action);
    }
    for device in gpu.map(|g| &g.devices[..]).unwrap_or_default() {
        binds.push(DeviceBind {
            options: bind_options(host, &device.path, false),
            source: device.path.clone(),
            destination: device.path.clone(),
            major: device.major,
            minor: device.minor,
        });
    }
    for bind in &binds {
        if bind.options.iter().any(|o| o == "nodev") {
            warnings.push(format!(
                "{} is on a nodev mount in this container: {} will not open inside the workspace",
                bind.source.display(),
                bind.destination.display()
            ));
        }
    }
    if let Some(gpu) = gpu {
        actions.extend(
            gpu.proc_unmounts
                .iter()
                .map(|path| Action::UnmountBestEffort { path: path.clone() }),
        );
    }
    DevicePlan {
        binds,
        actions,
        warnings,
    }
}
