//! `envbox spec`: print the runtime spec `envbox docker` would use. No side effects.

use anyhow::Context;

use super::outer_subsystem;
use crate::cli::SpecArgs;
use crate::config::{Purpose, Settings};
use crate::image::ImageConfig;
use crate::plan;
use crate::spec::render::{self, Secrets};

pub(crate) fn run(args: &SpecArgs) -> anyhow::Result<()> {
    let settings = Settings::from_raw(
        &args.settings(),
        outer_subsystem().as_deref(),
        Purpose::Spec,
    )?;
    let rootfs = std::fs::canonicalize(&args.rootfs)
        .with_context(|| format!("--rootfs {}", args.rootfs.display()))?;
    let image = match &args.image_config {
        Some(path) => ImageConfig::read(path)?,
        None => ImageConfig::default(),
    };
    let plan = plan::for_rootfs(&settings, &rootfs, &image)?;
    for warning in &plan.warnings {
        eprintln!("warning: {warning}");
    }
    if args.show_actions {
        for action in &plan.actions {
            eprintln!("action: {action}");
        }
    }
    let secrets = if args.show_secrets {
        Secrets::Reveal
    } else {
        Secrets::Redact
    };
    print!("{}", render::to_json(&plan.spec, secrets));
    Ok(())
}
