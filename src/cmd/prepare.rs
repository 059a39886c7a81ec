//! `envbox prepare`: fill the cache on the volume (fetch + unpack) so a later `envbox docker`
//! needs no network; with `--output DIR`, also write an OCI runtime bundle.

use anyhow::Context;

use super::{outer_subsystem, prepare_image, printable, warn_all};
use crate::bundle;
use crate::cli::PrepareArgs;
use crate::config::{names, Purpose, Settings};
use crate::image::ImageRef;
use crate::progress::{self, Kind};
use crate::source::ImageSource;
use crate::unpack::Limits;

pub(crate) fn run(args: &PrepareArgs) -> anyhow::Result<()> {
    // A bundle needs the workspace user (its spec reads /etc/passwd); filling the cache does not.
    let purpose = if args.output.is_some() {
        Purpose::Docker
    } else {
        Purpose::Pull
    };
    let settings = Settings::from_raw(&args.settings(), outer_subsystem().as_deref(), purpose)?;
    let image = settings
        .image
        .clone()
        .with_context(|| format!("{} is required", names::IMAGE))?;
    let pin_as = args.pin_as.as_deref().map(ImageRef::parse).transpose()?;
    let source = ImageSource::parse(&image)?.pinned_as(pin_as)?;
    let started = std::time::Instant::now();
    let prepared = prepare_image(&settings, &source, !args.no_sync)?;
    let local = matches!(source, ImageSource::Local(_));
    let copied = if local { "imported" } else { "downloaded" };
    progress::emit(
        Kind::Info,
        &format!(
            "prepared {source} ({}) in {:.2} s: {} blob(s) {copied}, {} of {} layer(s) unpacked",
            prepared.pulled.manifest_digest,
            started.elapsed().as_secs_f64(),
            prepared.pulled.blobs_downloaded,
            prepared.layers_unpacked,
            prepared.layer_dirs.len()
        ),
    );
    if local {
        for reference in &prepared.names {
            progress::emit(
                Kind::Info,
                &format!(
                    "recorded as {reference}: a later start by that reference needs no network"
                ),
            );
        }
    }
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
        "{}",
        printable(&source, &prepared.names, &prepared.pulled.digest)
    );
    Ok(())
}
