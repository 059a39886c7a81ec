//! `make bench` (fourth part): warm start of `envbox docker` (issue 5), the image already in the
//! cache on the volume, beside the floor for the same work: a containerd plus `ctr run`.
//!
//! envbox ([`workspace`]): time from spawning the `envbox docker` cargo builds for benches
//! (release profile; runc runtime, default bridge CIDR) to the bootstrap script's marker file,
//! written into a host directory mounted at `/home/coder`; the arrival of its progress lines
//! shows where the time goes. Then SIGTERM and wait (untimed; exit 0 checked). Checked while it
//! runs, "no file of the image copied at start": the rootfs is the overlay of the cached layers
//! (`/proc/self/mountinfo`) and the state directory grows by no more than the fresh upper dir.
//!
//! Baseline ([`baseline`]): spawn containerd with envbox's own configuration (`render_config`,
//! the same trimmed plugin list, own root, state and socket), wait until its socket accepts,
//! then `ctr run -d` of the same image flattened by `envbox prepare --output` (uid-shifted
//! like envbox's cache) with the same marker command, timed to the marker. `ctr run --rootfs`
//! ignores `--uidmap` in containerd 1.6, so its spec is `ctr oci spec` plus a user namespace
//! mapped 0 -> 100000 (65536) like envbox's: both run user-namespaced on a shifted tree. The
//! plain baseline has no CNI network (ctr's empty netns), no host setup and no exec as the
//! user. More variants add envbox's steps: its seccomp profile (`Variant::Seccomp`), its CNI
//! network attached to the task (`Variant::Cni`), that plus the script in an exec beside a
//! sleeping init (`Variant::CniExec`), and that with the seccomp profile (`Variant::Full`):
//! against the last, the difference is envbox's own bookkeeping.
//!
//! Then [`cold`]: `envbox docker` on an empty volume against `envbox prepare` plus a warm start
//! (`ENVBOX_BENCH_COLD_RUNS`, 3, runs each; this build only), [`fallback`]: the same start
//! with the volume on overlayfs, where each start flattens a copy of the image (no overlay),
//! for this build and `ENVBOX_BENCH_BASELINE` (`ENVBOX_BENCH_NO_FALLBACK` skips it), and
//! [`nodecache`]: a new workspace with the node cache warm beside a warm and a cold start.
//! `ENVBOX_BENCH_STAGES`: envbox runs with `ENVBOX_LOG=debug` and its `start: <stage>` lines'
//! arrival is reported too.
//!
//! Each contender goes first in turn, `ENVBOX_BENCH_RUNS` (15) runs each, min and median, one
//! envbox at a time (they share the bridge `envbox0`). A start varies by a tenth from run to run
//! (the baseline's most: containerd and ctr), so a median of 7 moved the ratio by 0.15 between
//! benches; of 15 it holds. `ENVBOX_BENCH_MB` (64): data added to
//! the busybox image; `ENVBOX_BENCH_IMAGE=debian`: a Debian image whose layers `umoci repack`
//! committed (issue 21's; needs debootstrap and the Debian mirror once) instead of busybox;
//! `ENVBOX_BENCH_BASELINE=/path/to/envbox`: another build timed beside this one. Needs root and the launch test's tools, and `ctr`.

mod baseline;
mod cold;
mod fallback;
mod nodecache;
#[path = "../../tests/support/mod.rs"]
mod support;
mod workspace;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use baseline::{Baseline, Variant};
use support::host::launch_requirements_met;
use support::image::{big_image, busybox_image, write_layout};
use support::registry::Registry;
use workspace::{disk_usage, envbox_run, EnvboxRun, MILESTONES};

const ENVBOX: &str = env!("CARGO_BIN_EXE_envbox");
const POLL: Duration = Duration::from_millis(2);
const TIMEOUT: Duration = Duration::from_secs(120);
/// What both run once started: the marker, then stay up like an agent.
const MARKER_SCRIPT: &str = "echo ready > /home/coder/ready; exec sleep 3600";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn min_median(times: &[Duration]) -> (Duration, Duration) {
    let mut sorted = times.to_vec();
    sorted.sort();
    (sorted[0], sorted[sorted.len() / 2])
}

/// Polls until `path` exists; panics naming `what` (with `log`) if `alive` says it died.
fn wait_for_file(
    path: &Path,
    what: &str,
    mut alive: impl FnMut() -> bool,
    log: impl Fn() -> String,
) {
    let end = Instant::now() + TIMEOUT;
    while !path.exists() {
        assert!(
            alive(),
            "{what} exited before {}:\n{}",
            path.display(),
            log()
        );
        assert!(
            Instant::now() < end,
            "no {} after {TIMEOUT:?}:\n{}",
            path.display(),
            log()
        );
        std::thread::sleep(POLL);
    }
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Which image the bench starts (`ENVBOX_BENCH_IMAGE`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum BenchImage {
    /// busybox with a `coder` user, plus `ENVBOX_BENCH_MB` MiB of data in two layers (so a
    /// copy of the image at start would show in the state directory's growth).
    Busybox,
    /// A Debian minbase built as users build theirs: layers committed by `umoci repack` of a
    /// chroot after `apt-get install` steps (`support::debian::APT_STEPS`), which write into
    /// directories they do not list.
    Debian,
}

impl BenchImage {
    fn from_env() -> BenchImage {
        match std::env::var("ENVBOX_BENCH_IMAGE").as_deref() {
            Err(_) | Ok("busybox") => BenchImage::Busybox,
            Ok("debian") => BenchImage::Debian,
            Ok(other) => {
                eprintln!("ENVBOX_BENCH_IMAGE={other}: expected busybox or debian");
                std::process::exit(2);
            }
        }
    }
}

/// Writes the image into a registry; its reference there.
fn push_image(work: &Path, which: BenchImage, mb: u64) -> (Registry, String) {
    let layout = work.join("layout");
    match which {
        BenchImage::Busybox => {
            let mut image = busybox_image("amd64");
            if mb > 0 {
                image.layers.extend(big_image(mb, 2).layers);
            }
            write_layout(&layout, "warm", &[image]);
        }
        BenchImage::Debian => {
            let steps = support::debian::APT_STEPS;
            if !support::debian::layered_image_layout(&layout, "warm", &steps) {
                eprintln!("the Debian image needs debootstrap, umoci and the Debian mirror");
                std::process::exit(1);
            }
        }
    }
    let registry = Registry::http();
    registry.push(&layout, "warm", "bench/warm:1");
    let reference = format!("{}/bench/warm:1", registry.host);
    fs::remove_dir_all(&layout).expect("remove layout");
    (registry, reference)
}

fn main() {
    if !launch_requirements_met("the warm start benchmark")
        || Command::new("ctr").arg("--version").output().is_err()
    {
        eprintln!("the warm start benchmark needs root, containerd, ctr, runc, the CNI plugins, skopeo and docker-registry (see above)");
        std::process::exit(1);
    }
    let runs = env_usize("ENVBOX_BENCH_RUNS", 15);
    let mb = env_usize("ENVBOX_BENCH_MB", 64) as u64;
    // Another build of envbox to time beside this one, e.g. before a change.
    let other = std::env::var("ENVBOX_BENCH_BASELINE").ok();
    let work = tempfile::Builder::new()
        .prefix("envbox-warmbench-")
        .tempdir_in("/var/tmp")
        .expect("work dir");
    // The workspace's root (uid 100000 outside) must reach the rootfs under it.
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).expect("chmod work");
    let which = BenchImage::from_env();
    let (registry, reference) = push_image(work.path(), which, mb);
    let state = work.path().join("state");
    let home = work.path().join("home");
    fs::create_dir_all(&home).expect("home");
    let env: Vec<(String, String)> = [
        ("CODER_INNER_IMAGE", reference.clone()),
        ("ENVBOX_INSECURE_REGISTRIES", registry.host.clone()),
        ("CODER_INNER_USERNAME", "coder".to_owned()),
        ("CODER_BOOTSTRAP_SCRIPT", MARKER_SCRIPT.to_owned()),
        ("CODER_AGENT_TOKEN", "warmbench-token".to_owned()),
        ("ENVBOX_RUNTIME", "runc".to_owned()),
        ("ENVBOX_STATE_DIR", state.display().to_string()),
        (
            "ENVBOX_RUN_DIR",
            work.path().join("run").display().to_string(),
        ),
        ("ENVBOX_STOP_TIMEOUT", "20s".to_owned()),
        ("CODER_MOUNTS", format!("{}:/home/coder", home.display())),
    ]
    .into_iter()
    .chain(std::env::var_os("ENVBOX_BENCH_STAGES").map(|_| ("ENVBOX_LOG", "debug".to_owned())))
    .map(|(k, v)| (k.to_owned(), v))
    .collect();

    // Untimed: the cache filled, and the same image flattened (shifted) for the baseline.
    let bundle = work.path().join("bundle");
    run_ok(
        Command::new(ENVBOX)
            .args(["prepare", "--output"])
            .arg(&bundle)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().map(|(k, v)| (k, v))),
    );
    let rootfs = bundle.join("rootfs");
    let image_bytes = disk_usage(&rootfs);
    let baseline = Baseline::new(work.path(), &rootfs, &envbox_seccomp(&rootfs, &env));
    let marker = home.join("ready");
    let mut builds = vec![ENVBOX.to_owned()];
    builds.extend(other.clone());
    // Untimed warm-up of each (containerd's metadata root made, binaries in the page cache).
    for build in &builds {
        envbox_run(build, &env, &state, &marker);
    }
    for variant in Variant::ALL {
        baseline.run(&format!("warmup-{variant:?}"), variant);
    }

    let name = match which {
        BenchImage::Busybox => format!("busybox + {mb} MiB"),
        BenchImage::Debian => "Debian + apt-get install (umoci repack layers)".to_owned(),
    };
    println!(
        "\nwarm start: {name} image ({:.1} MiB unpacked) in the cache, runc, {runs} runs each, order rotated",
        image_bytes as f64 / 1048576.0
    );
    let mut envbox: Vec<Vec<EnvboxRun>> = builds.iter().map(|_| Vec::new()).collect();
    let mut base: Vec<Vec<[Duration; 4]>> = Variant::ALL.iter().map(|_| Vec::new()).collect();
    let contenders = builds.len() + Variant::ALL.len();
    for run in 0..runs {
        // Each contender goes first in turn (the first after a pause finds colder caches).
        for turn in 0..contenders {
            match (run + turn) % contenders {
                b if b < Variant::ALL.len() => {
                    let variant = Variant::ALL[b];
                    base[b].push(baseline.run(&format!("{variant:?}-{run}"), variant));
                }
                b => {
                    let b = b - Variant::ALL.len();
                    envbox[b].push(envbox_run(&builds[b], &env, &state, &marker));
                }
            }
        }
    }
    let (e_min, e_median) = report_envbox("envbox docker (this build)", &envbox[0]);
    if let Some(other) = &other {
        report_envbox(&format!("envbox docker ({other})"), &envbox[1]);
    }
    let baselines: Vec<_> = Variant::ALL
        .iter()
        .zip(&base)
        .map(|(variant, runs)| (*variant, report_baseline(runs, *variant)))
        .collect();
    for (variant, (min, median)) in baselines {
        let goal = match variant {
            Variant::Plain => " (goal <= 1.5x)",
            _ => "",
        };
        println!(
            "ratio envbox / baseline ({}): min {:.2}x, median {:.2}x{goal}",
            variant.describe(),
            e_min.as_secs_f64() / min.as_secs_f64(),
            e_median.as_secs_f64() / median.as_secs_f64()
        );
    }
    report_no_copy(&envbox[0], image_bytes);
    cold::bench(
        ENVBOX,
        &env,
        work.path(),
        &marker,
        env_usize("ENVBOX_BENCH_COLD_RUNS", 3),
    );
    if std::env::var_os("ENVBOX_BENCH_NO_FALLBACK").is_none() {
        fallback::bench(&builds, &env, work.path(), &marker, runs.min(5));
    }
    nodecache::bench(
        ENVBOX,
        &env,
        work.path(),
        &marker,
        &registry,
        &reference,
        runs.min(5),
    );
}

/// The seccomp profile envbox's spec for `rootfs` carries (`envbox spec`'s `linux.seccomp`).
fn envbox_seccomp(rootfs: &Path, env: &[(String, String)]) -> serde_json::Value {
    let out = Command::new(ENVBOX)
        .args(["spec", "--username", "root", "--rootfs"])
        .arg(rootfs)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("envbox spec");
    assert!(
        out.status.success(),
        "envbox spec: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let spec: serde_json::Value = serde_json::from_slice(&out.stdout).expect("spec JSON");
    let seccomp = spec["linux"]["seccomp"].clone();
    assert!(seccomp.is_object(), "envbox's spec has no seccomp profile");
    seccomp
}

fn row(name: &str, times: &[Duration]) -> (Duration, Duration) {
    let (min, median) = min_median(times);
    println!(
        "  {name:<52} min {:7.1} ms   median {:7.1} ms",
        ms(min),
        ms(median)
    );
    (min, median)
}

fn report_envbox(name: &str, runs: &[EnvboxRun]) -> (Duration, Duration) {
    println!("{name}, spawn to the bootstrap's marker file:");
    let totals: Vec<Duration> = runs.iter().map(|r| r.total).collect();
    let result = row("total", &totals);
    for (i, milestone) in MILESTONES.iter().enumerate() {
        let times: Vec<Duration> = runs.iter().filter_map(|r| r.milestones[i]).collect();
        if times.len() == runs.len() {
            row(&format!("  progress line {milestone:?}"), &times);
        }
    }
    // envbox's own stage lines (ENVBOX_BENCH_STAGES), in the order of the first run.
    for (stage, _) in runs
        .first()
        .map(|r| r.stages.as_slice())
        .unwrap_or_default()
    {
        let times: Vec<Duration> = runs
            .iter()
            .filter_map(|r| r.stages.iter().find(|(s, _)| s == stage).map(|(_, t)| *t))
            .collect();
        if times.len() == runs.len() {
            row(&format!("  stage {stage:?}"), &times);
        }
    }
    let stops: Vec<Duration> = runs.iter().map(|r| r.stop).collect();
    row("(untimed: SIGTERM to exit 0)", &stops);
    result
}

fn report_baseline(base: &[[Duration; 4]], variant: Variant) -> (Duration, Duration) {
    println!(
        "baseline: containerd + ctr run -d (same image flattened, user namespace), {}, spawn to the marker:",
        variant.describe()
    );
    let column = |i: usize| base.iter().map(|b| b[i]).collect::<Vec<_>>();
    row("  containerd accepting on its socket", &column(0));
    row("  ctr run -d returned", &column(1));
    if variant.network() {
        row("  CNI ADD returned", &column(2));
    }
    row("total", &column(3))
}

fn report_no_copy(runs: &[EnvboxRun], image_bytes: u64) {
    let overlays = runs.iter().filter(|r| r.overlay).count();
    let growth = runs.iter().map(|r| r.state_growth).max().unwrap_or(0);
    let upper = runs.iter().map(|r| r.upper).max().unwrap_or(0);
    let kib = |b: u64| b as f64 / 1024.0;
    println!(
        "no image file copied at start: the rootfs was the overlay of the cached layers in {overlays}/{} runs; \
         the state dir grew by at most {:.0} KiB per start (upper dir at most {:.0} KiB; the image is {:.0} KiB unpacked)",
        runs.len(),
        kib(growth),
        kib(upper),
        kib(image_bytes)
    );
    if overlays != runs.len() || growth * 4 > image_bytes {
        println!("WARNING: the image was copied at start in some run (see above)");
    }
}
