//! `envbox docker`: the pod's entrypoint.
//!
//! Today it validates the settings, pulls the image, unpacks its layers into the cache on the
//! volume, assembles the rootfs (overlay, or a flattened copy) and generates the runtime spec,
//! then stops: launching through containerd (issue 5) is not built yet, and it says so rather
//! than pretending.

use super::{outer_subsystem, prepare_image, warn_all};
use crate::cli::DockerArgs;
use crate::config::{Purpose, Settings};
use crate::overlay;
use crate::pipeline;
use crate::progress::{self, Kind};
use crate::source::ImageSource;
use crate::unpack::Limits;

pub fn run(args: &DockerArgs) -> anyhow::Result<()> {
    let settings = Settings::from_raw(
        &args.settings,
        outer_subsystem().as_deref(),
        Purpose::Docker,
    )?;
    let image = settings.image.clone().unwrap_or_default();
    progress::emit(Kind::Info, &format!("Preparing image {image}..."));
    let source = ImageSource::parse(&image)?;
    let prepared = prepare_image(&settings, &source)?;
    progress::emit(
        Kind::Info,
        &format!(
            "Image {source} ({}) ready: {} layer(s), {} unpacked now",
            prepared.pulled.manifest_digest,
            prepared.layer_dirs.len(),
            prepared.layers_unpacked
        ),
    );
    let rootfs = overlay::assemble(
        &settings.state_dir,
        &prepared.sources,
        &prepared.layer_dirs,
        overlay::Mode::Auto,
        &Limits::default(),
    )?;
    warn_all(&rootfs.warnings);
    let plan = pipeline::plan_container(&settings, &rootfs.path, &prepared.config);
    overlay::release(&rootfs)?;
    let plan = plan?;
    warn_all(&plan.warnings);
    progress::emit(
        Kind::Info,
        &format!(
            "Runtime spec ready ({} mounts, {} setup actions)",
            plan.spec.mounts().as_ref().map_or(0, Vec::len),
            plan.actions.len()
        ),
    );
    anyhow::bail!("starting the workspace is not implemented yet: this build of envbox prepares the image and its runtime spec (envbox docker, envbox prepare, envbox spec) but does not launch it")
}
