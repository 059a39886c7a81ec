//! `envbox docker`: the pod's entrypoint.
//!
//! Today it validates the settings, pulls the image and unpacks its layers into the cache on
//! the volume, then stops: assembling the rootfs (overlay) and launching (issue 5) are not
//! built yet, and it says so rather than pretending.

use super::{outer_subsystem, runtime};
use crate::cache::BlobStore;
use crate::cli::DockerArgs;
use crate::config::{Purpose, Settings};
use crate::prepare;
use crate::progress::{self, Kind};
use crate::registry::{ImageRef, RegistryConfig};
use crate::unpack::{LayerStore, Limits};

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
    progress::emit(Kind::Info, &format!("Preparing image {reference}..."));
    let blobs = BlobStore::open(&settings.state_dir)?;
    let layers = LayerStore::open(&settings.state_dir)?;
    let prepared = runtime()?.block_on(prepare::prepare(
        &config,
        &blobs,
        &layers,
        &reference,
        &Limits::default(),
    ))?;
    for warning in &prepared.warnings {
        progress::emit(Kind::Info, &format!("warning: {warning}"));
    }
    progress::emit(
        Kind::Info,
        &format!(
            "Image {reference} ({}) ready: {} layer(s), {} unpacked now",
            prepared.pulled.manifest_digest,
            prepared.layer_dirs.len(),
            prepared.layers_unpacked
        ),
    );
    anyhow::bail!("starting the workspace is not implemented yet: this build of envbox prepares the image (envbox docker, envbox prepare) and prints the runtime spec (envbox spec)")
}
