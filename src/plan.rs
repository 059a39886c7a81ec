//! From settings and an unpacked image to the container plan (runtime spec + host setup).
//!
//! Owns: the one function both `envbox spec` and `envbox docker` call to get the runtime spec,
//! so what `spec` prints is exactly what `docker` runs. It reads (rootfs facts, host facts) and
//! then calls the pure generator; it never performs the plan's actions.

use std::path::{Path, PathBuf};

use crate::config::Settings;
use crate::host::{self, HostError};
use crate::image::ImageConfig;
use crate::rootfs::{self, RootfsError, RootfsFacts};
use crate::spec::{self, ContainerPlan, SpecError, SpecInput};

/// Errors of this module, each naming the stage.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each variant's #[error] message documents it
pub enum PlanError {
    #[error("reading the image's root filesystem {path}: {source}")]
    Rootfs { path: PathBuf, source: RootfsError },
    #[error("reading this container's state: {0}")]
    Host(#[from] HostError),
    #[error("generating the runtime spec: {0}")]
    Spec(#[from] SpecError),
}

/// A plan with the rootfs facts it was built from (the inner user, whether the image has an
/// init), which the launcher needs too.
#[derive(Debug)]
pub(crate) struct Planned {
    pub plan: ContainerPlan,
    pub facts: RootfsFacts,
}

/// Reads what the spec depends on and builds the plan.
pub fn for_rootfs(
    settings: &Settings,
    rootfs_path: &Path,
    image: &ImageConfig,
) -> Result<ContainerPlan, PlanError> {
    Ok(with_facts(settings, rootfs_path, image)?.plan)
}

/// [`plan_container`], also returning the rootfs facts.
pub(crate) fn with_facts(
    settings: &Settings,
    rootfs_path: &Path,
    image: &ImageConfig,
) -> Result<Planned, PlanError> {
    let facts = rootfs::read_facts(rootfs_path, &settings.username).map_err(|source| {
        PlanError::Rootfs {
            path: rootfs_path.to_owned(),
            source,
        }
    })?;
    let host = host::gather(settings)?;
    let plan = spec::build(&SpecInput {
        settings,
        rootfs_path,
        rootfs: &facts,
        image,
        host: &host,
    })?;
    Ok(Planned { plan, facts })
}
