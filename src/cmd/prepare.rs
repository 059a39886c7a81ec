//! `envbox prepare`: fill the cache on the volume (pull + unpack) so a later `envbox docker`
//! needs no network; with `--output DIR`, also write an OCI runtime bundle.

use anyhow::Context;

use super::{outer_subsystem, prepare_image, warn_all};
use crate::bundle;
use crate::cli::PrepareArgs;
use crate::config::{names, Purpose, Settings};
use crate::progress::{self, Kind};
use crate::unpack::Limits;

pub fn run(args: &PrepareArgs) -> anyhow::Result<()> {
    // A bundle needs the workspace user (its spec reads /etc/passwd); filling the cache does not.
    let purpose = if args.output.is_some() {
        Purpose::Docker
    } else {
        Purpose::Pull
    };
    let settings = Settings::from_raw(&args.settings, outer_subsystem().as_deref(), purpose)?;
    let image = settings
        .image
        .clone()
        .with_context(|| format!("{} is required", names::IMAGE))?;
    let started = std::time::Instant::now();
    let (reference, prepared) = prepare_image(&settings, &image)?;
    progress::emit(
        Kind::Info,
        &format!(
            "prepared {reference} ({}) in {:.2} s: {} blob(s) downloaded, {} of {} layer(s) unpacked",
            prepared.pulled.manifest_digest,
            started.elapsed().as_secs_f64(),
            prepared.pulled.blobs_downloaded,
            prepared.layers_unpacked,
            prepared.layer_dirs.len()
        ),
    );
    if let Some(output) = &args.output {
        let report = bundle::write(output, &settings, &prepared, &Limits::default())
            .with_context(|| format!("writing the bundle {}", output.display()))?;
        warn_all(&report.warnings);
        progress::emit(
            Kind::Info,
            &format!("bundle written: {}", report.config.display()),
        );
    }
    println!(
        "{}@{}",
        reference.normalized_repository(),
        prepared.pulled.digest
    );
    Ok(())
}
