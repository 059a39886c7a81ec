//! `envbox docker`: the pod's entrypoint.
//!
//! Validates the settings, starts sending the progress log to Coder when the agent's URL and
//! token are set ([`crate::agentlog`]), then hands over to [`crate::launch`], giving it the
//! image preparation step (registry wiring lives here, at the top) and the cleanup of the image
//! cache once the workspace is up. With a node cache, the workspace's lease on what it uses
//! (`crate::nodecache`) is taken once the image is prepared and held until envbox exits. Errors end up in the progress log, `/dev/termination-log` and
//! the exit status (see `main.rs`).

use super::{outer_subsystem, runtime, ImageCache};
use crate::agentlog::{self, AgentLog};
use crate::cli::DockerArgs;
use crate::config::{Purpose, Settings};
use crate::launch;
use crate::prepare::PreparedImage;
use crate::progress::{self, Kind};
use crate::source::ImageSource;

pub(crate) fn run(args: &DockerArgs) -> anyhow::Result<()> {
    let settings = Settings::from_raw(
        &args.settings(),
        outer_subsystem().as_deref(),
        Purpose::Docker,
    )?;
    tracing::debug!(
        image = settings.image.as_deref().unwrap_or_default(),
        user = %settings.username,
        runtime = settings.runtime.binary(),
        state_dir = %settings.state_dir.display(),
        run_dir = %settings.run_dir.display(),
        cpus_milli = ?settings.cpus_milli,
        memory_bytes = ?settings.memory_bytes,
        stop_timeout = ?settings.stop_timeout,
        startup_logs_to_coder =
            settings.agent_url.is_some() && settings.agent_token.is_some() && !settings.no_startup_log,
        "envbox docker: settings read"
    );
    // Before any daemon starts: they inherit the supervisors' score.
    if let Err(e) = crate::oom::protect_supervisors() {
        progress::emit(
            Kind::Info,
            &format!(
                "warning: envbox and its daemons keep the pod's OOM score: {e}; the workspace \
                 is made the OOM killer's first choice instead"
            ),
        );
    }
    let image = settings.image.clone().unwrap_or_default();
    let source = ImageSource::parse(&image)?;
    let cache = ImageCache::open(&settings)?;
    let after_up: launch::AfterUpFn = {
        let cache = cache.clone();
        Box::new(move |prepared| clean_up(&cache, prepared))
    };
    // Held until envbox exits (dropped last), so the node's cleanup keeps what runs.
    let lease = LeaseSlot::default();
    let prepare: launch::PrepareFn = {
        let lease = lease.clone();
        Box::new(move || Box::pin(prepare(cache, source, lease)))
    };
    let coder = agentlog::Target::from_settings(&settings)?;
    let runtime = runtime()?;
    let result = runtime.block_on(async {
        let agent_log = coder.map(AgentLog::start);
        // Off the start's path: it walks the workspace's data directories.
        let state_dir = settings.state_dir.clone();
        tokio::task::spawn_blocking(move || {
            let data = crate::spec::STATE_MOUNTS;
            let nearly_full =
                crate::room::nearly_full(&state_dir, &data, crate::room::NEARLY_FULL_PERCENT);
            progress::warn_all(nearly_full);
        });
        let result = launch::run(&settings, prepare, after_up)
            .await
            .map_err(anyhow::Error::from);
        match &result {
            Ok(()) => progress::emit(Kind::Info, "Workspace stopped"),
            // main.rs writes the error line to stderr; the dashboard gets it from here.
            Err(e) => {
                if let Some(log) = &agent_log {
                    log.send(Kind::Error, &progress::render_error(e));
                }
            }
        }
        if let Some(log) = agent_log {
            log.close(AGENT_LOG_DEADLINE).await;
        }
        result
    });
    // Threads still blocked on a workspace process's output (its containerd died) must not
    // keep envbox from exiting.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    result
}

/// How long envbox waits, when it stops, for the last lines to reach the Coder dashboard.
const AGENT_LOG_DEADLINE: std::time::Duration = std::time::Duration::from_secs(3);

/// Where the workspace's lease on the node cache is kept while it runs.
type LeaseSlot = std::sync::Arc<std::sync::Mutex<Option<crate::nodecache::Lease>>>;

/// Pulls and unpacks the image, saying so in the progress log; with a node cache, takes the
/// workspace's lease on what it uses into `lease` while the image's hold on the store still
/// keeps a cleanup away.
async fn prepare(
    cache: ImageCache,
    source: ImageSource,
    lease: LeaseSlot,
) -> anyhow::Result<PreparedImage> {
    progress::emit(Kind::Info, &format!("Preparing image {source}..."));
    let prepared = cache.prepare(&source).await;
    // The workspace runs for hours: what the transfers freed goes back now.
    crate::memory::give_back();
    let prepared = prepared?;
    if let Some(node) = &cache.node {
        let diff_ids: Vec<_> = prepared.sources.iter().map(|s| s.diff_id.clone()).collect();
        let uses = crate::nodecache::Uses {
            layers: match prepared.layer_dirs.is_empty() {
                true => Vec::new(),
                false => crate::unpack::chain_ids(&diff_ids),
            },
            blobs: crate::prune::Kept::of_prepared(&prepared)
                .blobs
                .into_iter()
                .collect(),
        };
        let holder = nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "envbox".to_owned());
        let taken = node
            .lease(&holder, uses, &cache.blobs, &cache.layers)
            .map_err(|e| anyhow::anyhow!("{e} (without its lease, another workspace's cleanup could remove this one's layers)"))?;
        tracing::debug!(lease = %taken.path().display(), "node cache: lease taken");
        *lease.lock().unwrap_or_else(|p| p.into_inner()) = Some(taken);
    }
    let line = format!(
        "Image {source} ({}) ready: {} layer(s), {} unpacked now",
        prepared.pulled.manifest_digest,
        prepared.layer_dirs.len(),
        prepared.layers_unpacked
    );
    progress::emit(Kind::Info, &line);
    Ok(prepared)
}

/// The cleanup once the workspace is up (see `crate::prune`), on a blocking thread of the
/// runtime: the current image is the one prepared; a failure is a warning (the next start
/// tries again).
fn clean_up(cache: &ImageCache, prepared: PreparedImage) {
    let current = crate::prune::Kept::of_prepared(&prepared);
    // Its hold on the store goes with it: the cleanup waits for every hold.
    drop(prepared);
    let started = std::time::Instant::now();
    match tokio::runtime::Handle::current().block_on(cache.clean_up(Some(current), false)) {
        Ok(cleaned_up) if cleaned_up.removed_any() => progress::emit(
            Kind::Info,
            &format!(
                "Image cache cleaned up: {}",
                cleaned_up.summary(cache.keep_images)
            ),
        ),
        Ok(_) => tracing::debug!(elapsed = ?started.elapsed(), "image cache: nothing to clean up"),
        Err(e) => progress::warn_all([format!("{e} (the next start tries again)")]),
    }
}
