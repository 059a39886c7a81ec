//! The part of a start that needs the prepared image but not containerd.
//!
//! Owns: [`lay`]: the rootfs assembled over the cached layers, the runtime spec built from it and
//! its host setup applied (mount ownership, device nodes, generated files), the network planned
//! and what a previous run left of it released (cached attachment, bridge). Blocking: the
//! launcher runs it on a blocking thread, while containerd starts when no earlier container can
//! still be using the rootfs ([`earlier_container_may_run`]), else once that container is removed.
//! It never talks to containerd and never attaches the network.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use oci_spec::runtime::Spec;

use super::{outer, stage, LaunchError, CONTAINER_ID};
use crate::bootstrap;
use crate::config::Settings;
use crate::network::{self, Network, NetworkPlan};
use crate::overlay::{self, Rootfs};
use crate::plan;
use crate::prepare::PreparedImage;
use crate::progress::{self, warn_all, Kind};
use crate::rootfs::PasswdEntry;
use crate::runtime;
use crate::setup::{self, RealSys};
use crate::spec::STOP_SIGNAL_ANNOTATION;
use crate::unpack::Limits;

/// What [`lay`] made ready for the container.
pub(super) struct Groundwork {
    pub rootfs: Rootfs,
    pub plan: WorkspacePlan,
}

/// The container to create on the rootfs, and its network.
pub(super) struct WorkspacePlan {
    pub spec: Spec,
    /// The workspace user, from the image's passwd.
    pub user: PasswdEntry,
    /// The user's groups for the processes run as them ([`crate::spec::user_gids`]).
    pub user_gids: Vec<u32>,
    /// The inner init is the image's `/sbin/init` (the stop waits for it), not `sleep infinity`.
    pub image_init: bool,
    /// The signal that asks the init to stop.
    pub init_signal: i32,
    pub network: Arc<Network>,
}

/// Whether a container of an earlier run may still be running on the rootfs: its OCI runtime
/// state exists (runc and sysbox-runc keep it until the container is deleted; a kill -9 of
/// envbox leaves the container running under its shim). Then the rootfs is reassembled only
/// after containerd has removed that container.
pub(super) fn earlier_container_may_run(settings: &Settings) -> bool {
    runtime::state_dir(&super::runtime_root(settings), CONTAINER_ID).exists()
}

/// Assembles the rootfs, builds the spec and applies its host setup, plans the network and
/// releases a previous run's lease and bridge. On failure nothing stays mounted.
pub(super) fn lay(
    settings: &Settings,
    prepared: &PreparedImage,
    begun: Instant,
) -> Result<Groundwork, LaunchError> {
    let rootfs = overlay::assemble(
        &settings.state_dir,
        &prepared.sources,
        &prepared.layer_dirs,
        overlay::Mode::Auto,
        &Limits::default(),
    )?;
    warn_all(&rootfs.warnings);
    stage(begun, "root filesystem assembled");
    match plan_on(settings, prepared, &rootfs.path, begun) {
        Ok(plan) => Ok(Groundwork { rootfs, plan }),
        Err(error) => {
            if let Err(e) = overlay::release(&rootfs) {
                warn_all([format!(
                    "releasing the root filesystem after a failed start: {e}"
                )]);
            }
            Err(error)
        }
    }
}

/// The spec built on the assembled `rootfs` and its host setup applied, then the network.
fn plan_on(
    settings: &Settings,
    prepared: &PreparedImage,
    rootfs: &Path,
    begun: Instant,
) -> Result<WorkspacePlan, LaunchError> {
    outer::check_searchable(rootfs)?;
    let planned = plan::with_facts(settings, rootfs, &prepared.config)?;
    warn_all(&planned.plan.warnings);
    warn_all(&setup::apply(&planned.plan.actions, &RealSys)?);
    stage(begun, "runtime spec built and host set up");
    let spec = planned.plan.spec;
    let init_signal = spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(STOP_SIGNAL_ANNOTATION))
        .map_or(Ok(libc::SIGTERM), |s| bootstrap::parse_signal(s))?;

    let link_mtu = network::read_link_mtu(&settings.ethlink);
    let plan = NetworkPlan::new(settings, CONTAINER_ID, &link_mtu)?;
    warn_all(&plan.warnings);
    let network = Network::new(plan);
    if let Some(stale) = network.cleanup_stale()? {
        progress::emit(
            Kind::Info,
            &format!(
                "Released the network lease a previous run of {} left",
                stale.container_id
            ),
        );
    }
    // envbox is the bridge's only user: one left by a killed run (perhaps with another
    // subnet) is removed, and the bridge plugin makes it afresh.
    network.remove_bridge()?;
    stage(begun, "previous network state released");
    let (user_gids, _) = crate::spec::user_gids(&planned.facts);
    Ok(WorkspacePlan {
        spec,
        user_gids,
        user: planned.facts.user,
        image_init: planned.facts.has_init,
        init_signal,
        network: Arc::new(network),
    })
}
