//! OCI runtime bundles: `config.json` plus a flattened `rootfs/` that plain `runc run` starts.
//!
//! Owns: writing a bundle for a prepared image (`envbox prepare --output DIR`): the layers
//! flattened into `DIR/rootfs` (staged and renamed by the unpack stage), the spec from the same
//! generator `envbox docker` uses, written atomically with mode 0600 (it holds the agent
//! token) by the setup stage together with the host setup that spec relies on. It refuses to write into a
//! directory that has content: a bundle is never half-overwritten.

use std::path::{Path, PathBuf};

use crate::config::Settings;
use crate::plan::{self, PlanError};
use crate::prepare::PreparedImage;
use crate::setup::{self, Action, RealSys, SetupError};
use crate::spec::render::{self, Secrets};
use crate::unpack::{self, Durability, Limits, UnpackError};

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("bundle directory {0} is not empty: refusing to overwrite it")]
    NotEmpty(PathBuf),
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("flattening the image into {path}: {source}")]
    Flatten { path: PathBuf, source: UnpackError },
    #[error(transparent)]
    Spec(#[from] PlanError),
    #[error("preparing the host for the bundle: {0}")]
    Setup(#[from] SetupError),
}

/// What was written.
#[derive(Debug, Clone)]
pub struct BundleReport {
    pub config: PathBuf,
    pub warnings: Vec<String>,
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> BundleError + 'a {
    move |source| BundleError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

fn ensure_empty_dir(dir: &Path) -> Result<(), BundleError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => match entries.next() {
            None => Ok(()),
            Some(_) => Err(BundleError::NotEmpty(dir.to_owned())),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(io("creating bundle directory", dir))
        }
        Err(e) => Err(io("reading bundle directory", dir)(e)),
    }
}

/// Writes the bundle for `image` into `dir` (absent or empty).
pub fn write(
    dir: &Path,
    settings: &Settings,
    image: &PreparedImage,
    limits: &Limits,
) -> Result<BundleReport, BundleError> {
    ensure_empty_dir(dir)?;
    let dir = std::fs::canonicalize(dir).map_err(io("resolving", dir))?;
    let rootfs = dir.join("rootfs");
    // Handed to someone else's runtime: on disk before it is there.
    let flattened =
        unpack::flatten(&image.sources, &rootfs, limits, Durability::Synced).map_err(|source| {
            BundleError::Flatten {
                path: rootfs.clone(),
                source,
            }
        })?;
    let plan = plan::for_rootfs(settings, &rootfs, &image.config)?;
    let config = dir.join("config.json");
    let write_config = Action::WriteFile {
        path: config.clone(),
        contents: render::to_json(&plan.spec, Secrets::Reveal),
        mode: 0o600,
        uid: 0,
        gid: 0,
    };
    let mut warnings = flattened.warnings;
    warnings.extend(plan.warnings);
    let actions: Vec<Action> = std::iter::once(write_config).chain(plan.actions).collect();
    warnings.extend(
        setup::apply(&actions, &RealSys)?
            .iter()
            .map(|w| w.to_string()),
    );
    Ok(BundleReport { config, warnings })
}
