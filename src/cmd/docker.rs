//! `envbox docker`: the pod's entrypoint.
//!
//! Today it validates the settings and stops: pulling (issue 3), unpacking (issue 4) and
//! launching (issue 5) are not built yet, and it says so rather than pretending.

use super::outer_subsystem;
use crate::cli::DockerArgs;
use crate::config::{Purpose, Settings};
use crate::progress::{self, Kind};

pub fn run(args: &DockerArgs) -> anyhow::Result<()> {
    let settings = Settings::from_raw(
        &args.settings,
        outer_subsystem().as_deref(),
        Purpose::Docker,
    )?;
    progress::emit(
        Kind::Info,
        &format!(
            "settings valid: image {}, user {}, runtime {}",
            settings.image.as_deref().unwrap_or_default(),
            settings.username,
            settings.runtime.binary()
        ),
    );
    anyhow::bail!("starting the workspace is not implemented yet: this build of envbox can validate settings (envbox docker) and print the runtime spec (envbox spec)")
}
