//! `envbox docker`: the pod's entrypoint.
//!
//! Today it validates the settings and pulls the image into the cache on the volume, then
//! stops: unpacking (issue 4) and launching (issue 5) are not built yet, and it says so rather
//! than pretending.

use super::{outer_subsystem, runtime};
use crate::cache::BlobStore;
use crate::cli::DockerArgs;
use crate::config::{Purpose, Settings};
use crate::progress::{self, Kind};
use crate::registry::{self, ImageRef, RegistryConfig};

pub fn run(args: &DockerArgs) -> anyhow::Result<()> {
    let settings = Settings::from_raw(
        &args.settings,
        outer_subsystem().as_deref(),
        Purpose::Docker,
    )?;
    let image = settings.image.clone().unwrap_or_default();
    let reference = ImageRef::parse(&image)?;
    let (config, warnings) = RegistryConfig::from_settings(&settings)?;
    for warning in warnings {
        progress::emit(Kind::Info, &format!("warning: {warning}"));
    }
    progress::emit(Kind::Info, &format!("Pulling image {reference}..."));
    let store = BlobStore::open(&settings.state_dir)?;
    let pulled = runtime()?.block_on(registry::pull(&config, &store, &reference))?;
    progress::emit(
        Kind::Info,
        &format!(
            "Pulled {reference} ({}), {} layer(s)",
            pulled.manifest_digest,
            pulled.layers.len()
        ),
    );
    anyhow::bail!("starting the workspace is not implemented yet: this build of envbox pulls the image (envbox docker, envbox pull) and prints the runtime spec (envbox spec)")
}
