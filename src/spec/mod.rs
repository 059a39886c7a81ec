//! The OCI runtime spec of the inner container, and the host setup it implies.
//!
//! Owns: [`build`], a pure function from settings, rootfs facts, the image config and host
//! facts to a [`ContainerPlan`]: the spec handed to the runtime plus the explicit list of
//! [`setup::Action`]s that must happen first (device nodes, generated `/etc` files, ownership).
//! It never touches the system: no mknod, no chown, no mount. Every spec it returns has passed
//! [`invariants::check`] (user namespace, deny-all devices, masked paths, no writable host
//! `/proc` or `/sys`, a seccomp profile that denies by default): a bug here can fail a start,
//! never produce a privileged container.

mod devices;
mod env;
mod etc_files;
pub(crate) mod invariants;
mod linux;
mod mounts;
pub(crate) use mounts::STATE_MOUNTS;
mod process;
pub mod render;
pub(crate) mod seccomp;

pub(crate) use process::user_gids;

use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

use crate::config::Settings;
use crate::host::HostFacts;
use crate::image::ImageConfig;
use crate::rootfs::RootfsFacts;
use crate::setup;

use crate::image::{ID_RANGE, ID_SHIFT};
/// The OCI runtime-spec version we write.
pub(crate) const OCI_VERSION: &str = "1.0.2";
/// Annotation carrying the signal that stops the inner init (`SIGRTMIN+3` for systemd).
pub(crate) const STOP_SIGNAL_ANNOTATION: &str = "io.coder.envbox.stop-signal";

/// Everything the spec depends on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SpecInput<'a> {
    pub settings: &'a Settings,
    /// Absolute path of the root filesystem, as the runtime will see it.
    pub rootfs_path: &'a Path,
    pub rootfs: &'a RootfsFacts,
    pub image: &'a ImageConfig,
    pub host: &'a HostFacts,
}

/// The spec and what must be done on the host before the runtime is called. `Debug` renders
/// the spec with secrets redacted.
#[derive(Clone)]
pub struct ContainerPlan {
    /// The OCI runtime spec.
    pub spec: Spec,
    /// In order: unmounts, directories, files, device nodes, ownership, rootfs symlinks.
    pub actions: Vec<setup::Action>,
    /// Things skipped or defaulted, for the log.
    pub warnings: Vec<String>,
}

impl std::fmt::Debug for ContainerPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerPlan")
            .field(
                "spec",
                &render::to_value(&self.spec, render::Secrets::Redact),
            )
            .field("actions", &self.actions)
            .field("warnings", &self.warnings)
            .finish()
    }
}

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each variant's #[error] message documents it
pub enum SpecError {
    #[error("user {name:?} has uid {uid} and gid {gid} in the image, but only ids below {ID_RANGE} can be mapped into the workspace")]
    UserOutsideIdRange { name: String, uid: u32, gid: u32 },
    #[error("CODER_ADD_GPU is true but no GPU inventory was gathered")]
    GpuInventoryMissing,
    #[error("rootfs path {0} is not absolute")]
    RootfsNotAbsolute(PathBuf),
    #[error("assembling the runtime spec: {0}")]
    Assemble(#[from] oci_spec::OciSpecError),
    #[error("refusing to produce a spec that breaks the security model: {0}")]
    Invariant(#[from] invariants::Violation),
}

/// Device nodes envbox makes live under the outer `/dev`: the one filesystem of a container
/// that is sure to allow device nodes (the run dir or the volume may be mounted `nodev`).
pub(crate) const DEVICE_DIR: &str = "/dev/envbox";

/// Where per-start files live.
#[derive(Debug, Clone)]
pub(crate) struct RunDirLayout {
    /// Generated `/etc` files, under the run dir.
    pub etc: PathBuf,
    /// Device nodes, under [`DEVICE_DIR`].
    pub dev: PathBuf,
}

impl RunDirLayout {
    fn new(run_dir: &Path) -> Self {
        RunDirLayout {
            etc: crate::run_dir::RunLayout::new(run_dir).etc(),
            dev: PathBuf::from(DEVICE_DIR),
        }
    }
}

/// Actions run in this order: nothing is created before stale GPU mounts are gone, and rootfs
/// symlinks come last. Within a kind, plan order is kept (the sort is stable).
fn action_rank(action: &setup::Action) -> u8 {
    use setup::Action::*;
    match action {
        UnmountBestEffort { .. } => 0,
        CreateDir { .. } => 1,
        WriteFile { .. } => 2,
        CharDevice { .. } => 3,
        Chown { .. } => 4,
        RootfsSymlink { .. } => 5,
    }
}

/// Builds the spec and its setup actions. Pure.
pub(crate) fn build(input: &SpecInput<'_>) -> Result<ContainerPlan, SpecError> {
    let SpecInput {
        settings,
        rootfs_path,
        rootfs,
        image,
        host,
    } = *input;
    if !rootfs_path.is_absolute() {
        return Err(SpecError::RootfsNotAbsolute(rootfs_path.to_owned()));
    }
    if rootfs.user.uid >= ID_RANGE || rootfs.user.gid >= ID_RANGE {
        return Err(SpecError::UserOutsideIdRange {
            name: rootfs.user.name.clone(),
            uid: rootfs.user.uid,
            gid: rootfs.user.gid,
        });
    }
    let layout = RunDirLayout::new(&settings.run_dir);
    let mut warnings = rootfs.warnings.clone();
    warnings.extend(user_gids(rootfs).1);

    let gpu = devices::gpu_plan(settings, rootfs, host)?;
    if let Some(plan) = &gpu {
        warnings.extend(plan.warnings.iter().cloned());
    }
    let devices = devices::plan(settings, &layout, host, gpu.as_ref());
    warnings.extend(devices.warnings.iter().cloned());
    let etc = etc_files::plan(settings, host, &layout);
    warnings.extend(etc.warnings.iter().cloned());
    let mounts = mounts::plan(
        settings,
        rootfs_path,
        rootfs,
        host,
        &etc,
        &devices,
        gpu.as_ref(),
    );
    warnings.extend(mounts.warnings.iter().cloned());

    let env = env::compose(
        settings,
        image,
        &host.environ,
        gpu.as_ref().map(|g| &g.env[..]),
    );
    warnings.extend(env.warnings);
    let process = process::build(settings, rootfs, image, env.vars, host)?;
    let seccomp = seccomp::profile(
        &host.arch,
        process::bounding_names(&process).iter().map(String::as_str),
    )?;
    let linux = linux::build(settings, &devices, seccomp)?;

    let stop_signal = if rootfs.has_init {
        "SIGRTMIN+3".to_owned()
    } else {
        image
            .stop_signal
            .clone()
            .unwrap_or_else(|| "SIGTERM".to_owned())
    };
    let spec = oci_spec::runtime::SpecBuilder::default()
        .version(OCI_VERSION)
        .root(
            oci_spec::runtime::RootBuilder::default()
                .path(rootfs_path)
                .readonly(false)
                .build()?,
        )
        .hostname(settings.hostname.clone())
        .mounts(mounts.spec_mounts)
        .process(process)
        .linux(linux)
        .annotations(
            [(STOP_SIGNAL_ANNOTATION.to_owned(), stop_signal)]
                .into_iter()
                .collect::<std::collections::HashMap<_, _>>(),
        )
        .build()?;
    invariants::check(&spec)?;

    let mut actions: Vec<setup::Action> = devices
        .actions
        .into_iter()
        .chain(etc.actions)
        .chain(mounts.actions)
        .collect();
    actions.sort_by_key(action_rank);
    Ok(ContainerPlan {
        spec,
        actions,
        warnings,
    })
}

#[cfg(test)]
mod golden;
#[cfg(test)]
mod tests;
